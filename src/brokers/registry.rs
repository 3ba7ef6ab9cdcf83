//! Dispatch from an env's broker type to its backend module.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo, Connector, DesiredState,
    Scope,
};
use super::{kafka, pubsub, rabbitmq, redis, sqs};
use crate::Error;
use crate::api::{BrokerType, EnvSpec, TopicSpec};
use crate::secrets::ResolvedSecrets;

fn missing(env: &EnvSpec) -> Error {
    Error::InvalidSpec(format!(
        "env {:?}: type {} needs its settings block",
        env.slug, env.broker_type
    ))
}

pub(super) fn desired(
    scope: &Scope,
    env: &EnvSpec,
    topics: &[TopicSpec],
) -> Result<DesiredState, Error> {
    match env.broker_type {
        BrokerType::Kafka => kafka::desired(
            scope,
            env.kafka.as_ref().ok_or_else(|| missing(env))?,
            topics,
        ),
        BrokerType::Redis => redis::desired(
            scope,
            env.redis.as_ref().ok_or_else(|| missing(env))?,
            topics,
        ),
        BrokerType::RabbitMQ => rabbitmq::desired(
            scope,
            env.rabbitmq.as_ref().ok_or_else(|| missing(env))?,
            topics,
        ),
        BrokerType::GooglePubSub => pubsub::desired(
            scope,
            env.google_pub_sub.as_ref().ok_or_else(|| missing(env))?,
            topics,
        ),
        BrokerType::AwsSqs => sqs::desired(
            scope,
            env.aws_sqs.as_ref().ok_or_else(|| missing(env))?,
            topics,
        ),
    }
}

pub(super) fn capabilities(broker_type: BrokerType) -> Capabilities {
    match broker_type {
        BrokerType::Kafka => kafka::CAPABILITIES,
        BrokerType::Redis => redis::CAPABILITIES,
        BrokerType::RabbitMQ => rabbitmq::CAPABILITIES,
        BrokerType::GooglePubSub => pubsub::CAPABILITIES,
        BrokerType::AwsSqs => sqs::CAPABILITIES,
    }
}

pub(super) fn connection_info(
    env: &EnvSpec,
    secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, Error> {
    match env.broker_type {
        BrokerType::Kafka => {
            kafka::connection_info(env.kafka.as_ref().ok_or_else(|| missing(env))?, secrets)
        }
        BrokerType::Redis => {
            redis::connection_info(env.redis.as_ref().ok_or_else(|| missing(env))?, secrets)
        }
        BrokerType::RabbitMQ => {
            rabbitmq::connection_info(env.rabbitmq.as_ref().ok_or_else(|| missing(env))?, secrets)
        }
        BrokerType::GooglePubSub => pubsub::connection_info(
            env.google_pub_sub.as_ref().ok_or_else(|| missing(env))?,
            secrets,
        ),
        BrokerType::AwsSqs => {
            sqs::connection_info(env.aws_sqs.as_ref().ok_or_else(|| missing(env))?, secrets)
        }
    }
}

/// Settings shared by every backend a connector builds.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// How long one observation of an endpoint may answer later passes (Kafka; see
    /// `kafka::snapshot`). Zero reads the broker on every pass.
    pub observe_max_age: std::time::Duration,
    /// Where backends count the requests they send.
    pub requests: crate::metrics::BrokerRequests,
}

/// The production connector: builds the real client for the env's broker type.
#[derive(Clone, Debug, Default)]
pub struct RealConnector {
    /// Settings for the backends it builds.
    pub options: ConnectOptions,
}

impl RealConnector {
    /// A connector whose backends use `options`.
    pub fn new(options: ConnectOptions) -> Self {
        RealConnector { options }
    }
}

#[async_trait]
impl Connector for RealConnector {
    async fn connect(
        &self,
        env: &EnvSpec,
        secrets: &ResolvedSecrets,
    ) -> Result<Arc<dyn Backend>, BrokerError> {
        let invalid = || {
            BrokerError::new(
                BrokerErrorKind::Rejected,
                format!("env {:?} lacks its settings block", env.slug),
            )
        };
        match env.broker_type {
            BrokerType::Kafka => {
                kafka::connect(
                    env.kafka.as_ref().ok_or_else(invalid)?,
                    secrets,
                    &self.options,
                )
                .await
            }
            BrokerType::Redis => {
                redis::connect(env.redis.as_ref().ok_or_else(invalid)?, secrets).await
            }
            BrokerType::RabbitMQ => {
                rabbitmq::connect(env.rabbitmq.as_ref().ok_or_else(invalid)?, secrets).await
            }
            BrokerType::GooglePubSub => {
                pubsub::connect(env.google_pub_sub.as_ref().ok_or_else(invalid)?, secrets).await
            }
            BrokerType::AwsSqs => {
                sqs::connect(env.aws_sqs.as_ref().ok_or_else(invalid)?, secrets).await
            }
        }
    }
}

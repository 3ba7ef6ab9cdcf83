//! Switchyard: a Kubernetes operator that turns `MessageBroker` resources into topics, queues
//! and subscriptions on Kafka, Redis, RabbitMQ, Google Pub/Sub and AWS SQS, and publishes a
//! per-environment connection Secret that apps read.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "operator")]
pub mod api;
#[cfg(feature = "operator")]
pub mod binding;
#[cfg(feature = "operator")]
pub mod brokers;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "operator")]
pub mod controller;
#[cfg(feature = "operator")]
pub mod crd;
#[cfg(feature = "operator")]
pub mod error;
#[cfg(feature = "operator")]
pub mod failure;
#[cfg(feature = "operator")]
pub mod leader;
#[cfg(feature = "operator")]
pub mod metrics;
#[cfg(feature = "operator")]
pub mod preview;
#[cfg(feature = "operator")]
pub mod relay;
#[cfg(feature = "operator")]
pub mod secrets;
#[cfg(feature = "operator")]
pub mod server;
#[cfg(feature = "operator")]
pub mod telemetry;
#[cfg(feature = "operator")]
pub mod validation;

/// Without the operator, only each broker's data plane (`src/brokers/<broker>/data.rs`).
#[cfg(all(feature = "client", not(feature = "operator")))]
pub mod brokers {
    /// Kafka.
    pub mod kafka {
        pub mod data;
    }
    /// NATS JetStream.
    pub mod nats {
        pub mod data;
    }
    /// Google Pub/Sub.
    pub mod pubsub {
        pub mod data;
    }
    /// RabbitMQ.
    pub mod rabbitmq {
        pub mod data;
        mod pooled;
    }
    /// Redis.
    pub mod redis {
        pub mod data;
    }
    /// AWS SQS and SNS.
    pub mod sqs {
        pub mod data;
    }
}

#[cfg(feature = "operator")]
pub use error::{Error, Result};

#[cfg(all(test, feature = "operator"))]
mod proptests;

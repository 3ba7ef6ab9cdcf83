//! One driver per broker: everything the rest of Switchyard knows about a kind of broker sits in
//! that broker's folder, behind [`Driver`]. The rest of the code reaches a broker only through
//! [`driver`], whose one `match` is the single place a broker type meets its implementation.
//!
//! A new backend is: a folder `src/brokers/<broker>/` with a unit type implementing [`Driver`],
//! a variant of [`BrokerType`] and its settings block in the API, one arm in [`driver`], and its
//! tests.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::{
    Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo, Connector, DesiredState,
    Scope,
};
use super::{kafka, nats, pubsub, rabbitmq, redis, sqs};
use crate::Error;
use crate::api::{BrokerType, EnvSpec, LocalSecretRef, TopicSpec};
use crate::secrets::ResolvedSecrets;

/// What one kind of broker supplies. Every function is pure except `connect`, which builds a
/// (lazily connecting) client.
pub trait Driver: Send + Sync + 'static {
    /// The env's settings block for this broker (`kafka:`, `redis:`, …).
    type Spec: Serialize + Send + Sync + 'static;

    /// The API's name for this broker.
    const TYPE: BrokerType;
    /// The Service Binding `type` entry of its binding Secrets.
    const BINDING_TYPE: &'static str;
    /// What the broker can and cannot change in place.
    const CAPABILITIES: Capabilities;

    /// This broker's settings block of an env, if set.
    fn settings(env: &EnvSpec) -> Option<&Self::Spec>;

    /// The same, to change.
    fn settings_mut(env: &mut EnvSpec) -> Option<&mut Self::Spec>;

    /// The objects the spec means on this broker (pure).
    fn desired(
        scope: &Scope,
        spec: &Self::Spec,
        topics: &[TopicSpec],
    ) -> Result<DesiredState, Error>;

    /// The binding Secret's connection entries (pure).
    fn connection_info(
        spec: &Self::Spec,
        secrets: &ResolvedSecrets,
    ) -> Result<ConnectionInfo, Error>;

    /// What names the endpoint; when it changes, the env is swapped to a new side. Credentials
    /// and tuning are not part of it.
    fn endpoint(spec: &Self::Spec) -> serde_json::Value;

    /// The Secret keys the settings reference, as `(secret, key)`.
    fn secret_keys(spec: &Self::Spec) -> Vec<(String, String)>;

    /// Whether the binding built from these settings carries credentials (the operator's own,
    /// unless the env names the credentials apps get).
    fn binding_has_credentials(spec: &Self::Spec) -> bool;

    /// These settings as the binding describes them to apps: the credentials taken from the
    /// app credentials Secret `app` (under the keys `EnvSpec::app_credentials_secret_ref`
    /// documents), of the same kind the settings use.
    fn with_app_credentials(spec: &Self::Spec, app: &LocalSecretRef) -> Self::Spec;

    /// A client for the endpoint; only unusable settings fail here, never a broker that is down.
    fn connect(
        spec: &Self::Spec,
        secrets: &ResolvedSecrets,
        options: &ConnectOptions,
    ) -> impl Future<Output = Result<Arc<dyn Backend>, BrokerError>> + Send;
}

/// What every backend's [`Driver`] impl shares: its settings block (`$spec` in the env's
/// `$field`), and `CAPABILITIES`, `desired`, `connection_info` and `connect` as the folder
/// defines them under those names. A driver's impl then holds only what is particular to it.
macro_rules! forward_to_folder {
    ($spec:ty, $field:ident) => {
        type Spec = $spec;
        const CAPABILITIES: $crate::brokers::Capabilities = CAPABILITIES;

        fn settings(env: &$crate::api::EnvSpec) -> Option<&$spec> {
            env.$field.as_ref()
        }

        fn settings_mut(env: &mut $crate::api::EnvSpec) -> Option<&mut $spec> {
            env.$field.as_mut()
        }

        fn desired(
            scope: &$crate::brokers::Scope,
            spec: &$spec,
            topics: &[$crate::api::TopicSpec],
        ) -> Result<$crate::brokers::DesiredState, $crate::Error> {
            desired(scope, spec, topics)
        }

        fn connection_info(
            spec: &$spec,
            secrets: &$crate::secrets::ResolvedSecrets,
        ) -> Result<$crate::brokers::ConnectionInfo, $crate::Error> {
            connection_info(spec, secrets)
        }

        fn connect(
            spec: &$spec,
            secrets: &$crate::secrets::ResolvedSecrets,
            options: &$crate::brokers::ConnectOptions,
        ) -> impl std::future::Future<
            Output = Result<
                std::sync::Arc<dyn $crate::brokers::Backend>,
                $crate::brokers::BrokerError,
            >,
        > + Send {
            connect(spec, secrets, options)
        }
    };
}
pub(crate) use forward_to_folder;

/// The driver of a broker type, for code that holds an [`EnvSpec`].
#[async_trait]
pub trait EnvDriver: Send + Sync {
    /// The broker type.
    fn broker_type(&self) -> BrokerType;
    /// The Service Binding `type` entry.
    fn binding_type(&self) -> &'static str;
    /// What the broker can change in place.
    fn capabilities(&self) -> Capabilities;
    /// See [`Driver::desired`].
    fn desired(
        &self,
        scope: &Scope,
        env: &EnvSpec,
        topics: &[TopicSpec],
    ) -> Result<DesiredState, Error>;
    /// See [`Driver::connection_info`].
    fn connection_info(
        &self,
        env: &EnvSpec,
        secrets: &ResolvedSecrets,
    ) -> Result<ConnectionInfo, Error>;
    /// The endpoint identity (type and [`Driver::endpoint`]): a change is a swap.
    fn endpoint_identity(&self, env: &EnvSpec) -> serde_json::Value;
    /// Whether the env sets this broker's settings block.
    fn has_settings(&self, env: &EnvSpec) -> bool;
    /// The whole settings block, for keying pooled clients.
    fn settings_json(&self, env: &EnvSpec) -> serde_json::Value;
    /// See [`Driver::secret_keys`]; empty when the settings block is missing.
    fn secret_keys(&self, env: &EnvSpec) -> Vec<(String, String)>;
    /// See [`Driver::binding_has_credentials`].
    fn binding_has_credentials(&self, env: &EnvSpec) -> bool;
    /// The env as its binding describes it to apps: with the app credentials Secret in place
    /// of the operator's credentials (see [`Driver::with_app_credentials`]); `None` when the
    /// env names none.
    fn app_view(&self, env: &EnvSpec) -> Option<EnvSpec>;
    /// See [`Driver::connect`].
    async fn connect(
        &self,
        env: &EnvSpec,
        secrets: &ResolvedSecrets,
        options: &ConnectOptions,
    ) -> Result<Arc<dyn Backend>, BrokerError>;
}

struct Erased<D>(PhantomData<fn() -> D>);

impl<D: Driver> Erased<D> {
    fn spec<'a>(&self, env: &'a EnvSpec) -> Result<&'a D::Spec, Error> {
        D::settings(env).ok_or_else(|| {
            Error::InvalidSpec(format!(
                "env {:?}: type {} needs its settings block",
                env.slug, env.broker_type
            ))
        })
    }
}

#[async_trait]
impl<D: Driver> EnvDriver for Erased<D> {
    fn broker_type(&self) -> BrokerType {
        D::TYPE
    }

    fn binding_type(&self) -> &'static str {
        D::BINDING_TYPE
    }

    fn capabilities(&self) -> Capabilities {
        D::CAPABILITIES
    }

    fn desired(
        &self,
        scope: &Scope,
        env: &EnvSpec,
        topics: &[TopicSpec],
    ) -> Result<DesiredState, Error> {
        D::desired(scope, self.spec(env)?, topics)
    }

    fn connection_info(
        &self,
        env: &EnvSpec,
        secrets: &ResolvedSecrets,
    ) -> Result<ConnectionInfo, Error> {
        D::connection_info(self.spec(env)?, secrets)
    }

    fn endpoint_identity(&self, env: &EnvSpec) -> serde_json::Value {
        serde_json::json!({
            "type": D::TYPE,
            "endpoint": D::settings(env).map(D::endpoint),
        })
    }

    fn has_settings(&self, env: &EnvSpec) -> bool {
        D::settings(env).is_some()
    }

    fn settings_json(&self, env: &EnvSpec) -> serde_json::Value {
        serde_json::json!([D::TYPE, D::settings(env)])
    }

    fn secret_keys(&self, env: &EnvSpec) -> Vec<(String, String)> {
        D::settings(env).map(D::secret_keys).unwrap_or_default()
    }

    fn binding_has_credentials(&self, env: &EnvSpec) -> bool {
        D::settings(env).is_some_and(D::binding_has_credentials)
    }

    fn app_view(&self, env: &EnvSpec) -> Option<EnvSpec> {
        let app = env.app_credentials_secret_ref.as_ref()?;
        let spec = D::with_app_credentials(D::settings(env)?, app);
        let mut view = env.clone();
        *D::settings_mut(&mut view)? = spec;
        Some(view)
    }

    async fn connect(
        &self,
        env: &EnvSpec,
        secrets: &ResolvedSecrets,
        options: &ConnectOptions,
    ) -> Result<Arc<dyn Backend>, BrokerError> {
        let spec = self
            .spec(env)
            .map_err(|e| BrokerError::new(BrokerErrorKind::Rejected, e.to_string()))?;
        D::connect(spec, secrets, options).await
    }
}

/// Settings shared by every backend a connector builds.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// How long a connectivity check may take (`--check-timeout`).
    pub check_timeout: std::time::Duration,
    /// How long one observation of an endpoint may answer later passes (Kafka; see
    /// `kafka::snapshot`). Zero reads the broker on every pass.
    pub observe_max_age: std::time::Duration,
    /// How long one read of the message-flow figures of an endpoint (Kafka consumer-group lag)
    /// may answer later passes (`--flow-interval`). Zero reads on every pass.
    pub flow_max_age: std::time::Duration,
    /// Where backends count the requests they send.
    pub requests: crate::metrics::BrokerRequests,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            check_timeout: std::time::Duration::from_secs(5),
            observe_max_age: std::time::Duration::ZERO,
            flow_max_age: std::time::Duration::ZERO,
            requests: crate::metrics::BrokerRequests::default(),
        }
    }
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
        driver(env.broker_type)
            .connect(env, secrets, &self.options)
            .await
    }
}

/// The driver for a broker type: the one place a type meets its implementation.
pub fn driver(broker_type: BrokerType) -> &'static dyn EnvDriver {
    match broker_type {
        BrokerType::Kafka => &Erased::<kafka::Kafka>(PhantomData),
        BrokerType::Redis => &Erased::<redis::Redis>(PhantomData),
        BrokerType::RabbitMQ => &Erased::<rabbitmq::RabbitMq>(PhantomData),
        BrokerType::GooglePubSub => &Erased::<pubsub::GooglePubSub>(PhantomData),
        BrokerType::AwsSqs => &Erased::<sqs::AwsSqs>(PhantomData),
        BrokerType::NatsJetStream => &Erased::<nats::NatsJetStream>(PhantomData),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(yaml: &str) -> EnvSpec {
        serde_norway::from_str(yaml).expect("test env parses")
    }

    #[test]
    fn every_type_has_its_own_driver_and_binding_type() {
        let mut binding_types: Vec<_> = BrokerType::ALL
            .iter()
            .map(|t| {
                assert_eq!(driver(*t).broker_type(), *t);
                driver(*t).binding_type()
            })
            .collect();
        binding_types.sort();
        binding_types.dedup();
        assert_eq!(binding_types.len(), BrokerType::ALL.len());
    }

    #[test]
    fn the_endpoint_identity_follows_the_endpoint_not_the_credentials() {
        let a = env(
            r#"{slug: prd, type: Kafka, kafka: {bootstrapServers: ["k:9092"], sasl: {mechanism: SCRAM-SHA-512, credentialsSecretRef: {name: one}}}}"#,
        );
        let mut b = a.clone();
        if let Some(k) = b.kafka.as_mut() {
            k.sasl = None;
            k.replication_factor = Some(3);
        }
        let d = driver(BrokerType::Kafka);
        assert_eq!(d.endpoint_identity(&a), d.endpoint_identity(&b));
        assert_ne!(d.settings_json(&a), d.settings_json(&b), "pooled apart");
        if let Some(k) = b.kafka.as_mut() {
            k.bootstrap_servers = vec!["other:9092".into()];
        }
        assert_ne!(d.endpoint_identity(&a), d.endpoint_identity(&b));
        assert_eq!(
            d.secret_keys(&a),
            [
                ("one".to_string(), "username".to_string()),
                ("one".to_string(), "password".to_string())
            ]
        );
    }

    /// Each broker's settings with the operator's credentials in the Secret `op`, and the
    /// app's (`appCredentialsSecretRef`) in `app`.
    const WITH_APP_CREDENTIALS: [&str; 7] = [
        r#"{slug: p, type: Kafka, kafka: {bootstrapServers: ["k:9092"], sasl: {mechanism: PLAIN, credentialsSecretRef: {name: op}}}}"#,
        r#"{slug: p, type: Redis, redis: {url: "redis://r:6379", usernameSecretRef: {name: op, key: username}, passwordSecretRef: {name: op, key: password}}}"#,
        r#"{slug: p, type: RabbitMQ, rabbitmq: {url: "amqp://q:5672/", credentialsSecretRef: {name: op}}}"#,
        r#"{slug: p, type: AwsSqs, awsSqs: {region: eu-west-1, credentialsSecretRef: {name: op}}}"#,
        r#"{slug: p, type: NatsJetStream, natsJetStream: {servers: ["nats://n:4222"], credentialsSecretRef: {name: op}}}"#,
        r#"{slug: p, type: NatsJetStream, natsJetStream: {servers: ["nats://n:4222"], tokenSecretRef: {name: op, key: token}}}"#,
        r#"{slug: p, type: NatsJetStream, natsJetStream: {servers: ["nats://n:4222"], credsSecretRef: {name: op, key: creds}}}"#,
    ];

    fn both_secrets() -> ResolvedSecrets {
        let mut s = ResolvedSecrets::default();
        for (secret, who) in [("op", "OPERATOR"), ("app", "app")] {
            for key in [
                "username",
                "password",
                "token",
                "nkeySeed",
                "creds",
                "accessKeyId",
                "secretAccessKey",
            ] {
                s.insert(secret, key, format!("{who}-{key}"));
            }
        }
        s
    }

    #[test]
    fn with_app_credentials_the_binding_never_holds_the_operators() {
        let secrets = both_secrets();
        for yaml in WITH_APP_CREDENTIALS {
            let mut e = env(yaml);
            let scope = crate::brokers::Scope::new("shop", "bus");
            // Without the app Secret: the operator's credentials, and the note that says so.
            let info = crate::brokers::connection_info(&e, &secrets).expect("info");
            let content = crate::binding::content(e.broker_type, &info, &Default::default(), &[]);
            assert!(
                content.data.values().any(|v| v.starts_with("OPERATOR-")),
                "{yaml}: the operator's credentials are expected without an app Secret"
            );
            let desired =
                crate::brokers::desired(&scope, &e, &[], &Default::default()).expect("desired");
            assert!(
                desired
                    .notes
                    .iter()
                    .any(|n| n == crate::brokers::OPERATOR_CREDENTIALS_NOTE),
                "{yaml}: {:?}",
                desired.notes
            );

            e.app_credentials_secret_ref = Some(LocalSecretRef { name: "app".into() });
            let info = crate::brokers::connection_info(&e, &secrets).expect("info");
            let content = crate::binding::content(e.broker_type, &info, &Default::default(), &[]);
            let leaked: Vec<_> = content
                .data
                .iter()
                .filter(|(_, v)| v.contains("OPERATOR"))
                .map(|(k, _)| k)
                .collect();
            assert!(
                leaked.is_empty(),
                "{yaml}: operator credentials under {leaked:?}"
            );
            assert!(
                content
                    .data
                    .values()
                    .filter(|v| v.starts_with("app-"))
                    .count()
                    >= 1,
                "{yaml}: the app's credentials are missing: {:?}",
                content.data.keys().collect::<Vec<_>>()
            );
            // The operator still provisions with its own, and both Secrets are watched.
            let keys = crate::brokers::secret_keys(&e);
            assert!(keys.iter().any(|(n, _)| n == "op"), "{yaml}: {keys:?}");
            assert!(keys.iter().any(|(n, _)| n == "app"), "{yaml}: {keys:?}");
            assert_eq!(
                driver(e.broker_type).secret_keys(&e),
                driver(e.broker_type).secret_keys(&env(yaml)),
                "{yaml}: the operator's own settings are unchanged"
            );
            let desired =
                crate::brokers::desired(&scope, &e, &[], &Default::default()).expect("desired");
            assert!(
                !desired
                    .notes
                    .iter()
                    .any(|n| n == crate::brokers::OPERATOR_CREDENTIALS_NOTE),
                "{yaml}"
            );
        }
    }

    #[test]
    fn an_app_secret_fills_in_where_the_operator_uses_none() {
        let secrets = both_secrets();
        for (yaml, user_key) in [
            (
                r#"{slug: p, type: RabbitMQ, rabbitmq: {url: "amqp://q:5672/"}, appCredentialsSecretRef: {name: app}}"#,
                "username",
            ),
            (
                r#"{slug: p, type: AwsSqs, awsSqs: {region: eu-west-1}, appCredentialsSecretRef: {name: app}}"#,
                "AWS_ACCESS_KEY_ID",
            ),
            (
                r#"{slug: p, type: NatsJetStream, natsJetStream: {servers: ["nats://n:4222"]}, appCredentialsSecretRef: {name: app}}"#,
                "username",
            ),
        ] {
            let e = env(yaml);
            let info = crate::brokers::connection_info(&e, &secrets).expect("info");
            let content = crate::binding::content(e.broker_type, &info, &Default::default(), &[]);
            assert!(
                content
                    .data
                    .get(user_key)
                    .is_some_and(|v| v.starts_with("app-")),
                "{yaml}: {:?}",
                content.data.keys().collect::<Vec<_>>()
            );
        }
        // Pub/Sub bindings carry no credentials either way; an env without credentials gets no
        // note.
        let e = env(
            r#"{slug: p, type: GooglePubSub, googlePubSub: {projectId: my-project, credentialsSecretRef: {name: op, key: key.json}}}"#,
        );
        let scope = crate::brokers::Scope::new("shop", "bus");
        let desired =
            crate::brokers::desired(&scope, &e, &[], &Default::default()).expect("desired");
        assert!(desired.notes.is_empty(), "{:?}", desired.notes);
    }

    #[test]
    fn a_missing_settings_block_is_an_invalid_spec() {
        let e = env(r#"{slug: dev, type: Redis}"#);
        let d = driver(BrokerType::Redis);
        assert!(!d.has_settings(&e));
        assert!(d.secret_keys(&e).is_empty());
        let err = d
            .connection_info(&e, &ResolvedSecrets::default())
            .expect_err("no settings");
        assert!(err.to_string().contains("dev"), "{err}");
    }
}

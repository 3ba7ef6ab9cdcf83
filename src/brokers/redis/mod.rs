//! Redis backend: one stream per topic, one consumer group per subscription, a `<stream>:dlq`
//! stream for subscriptions that dead-letter, and retention enforced by trimming.
//!
//! Redis keys carry no metadata, so what the operator created is recorded in a registry hash in
//! the same database ([`OWNERS_KEY`]: object key → owning MessageBroker); keys that are not in
//! it are never changed or deleted. Settings Redis has no place for (the retention window, the
//! dead-letter settings of a group) are recorded next to it in [`CONFIG_KEY`].

use std::collections::BTreeMap;
use std::sync::Arc;

use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates};

use super::{
    Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo, DesiredObject,
    DesiredState, ObjectKey, ObjectKind, Scope, naming,
};
use crate::Error;
use crate::api::{RedisSpec, TopicSpec};
use crate::secrets::ResolvedSecrets;

mod backend;
pub mod data;
mod errors;

pub use backend::RedisBackend;

/// What this broker can change in place: everything we record (there are no partitions, and a
/// stream or group has no settings that are fixed at creation).
pub const CAPABILITIES: Capabilities = Capabilities {
    partitions: false,
    immutable_config: &[],
};

/// Registry hash: field `kind/name` (an [`ObjectKey`]) → owner (`namespace/name`).
pub const OWNERS_KEY: &str = "switchyard:owners";
/// Registry hash: field `kind/name` → JSON object of the settings recorded for it.
pub const CONFIG_KEY: &str = "switchyard:config";
/// Suffix of a topic's dead-letter stream.
pub const DLQ_SUFFIX: &str = ":dlq";
/// Config key: the retention window in milliseconds; entries older than it are trimmed.
pub const RETENTION_MS: &str = "retention-ms";
/// Config key of a subscription: the stream its dead letters go to.
pub const DEAD_LETTER_STREAM: &str = "dead-letter-stream";
/// Config key of a subscription: deliveries before a message is dead-lettered.
pub const MAX_DELIVERY_ATTEMPTS: &str = "max-delivery-attempts";

/// Separator between stream and group in a subscription's [`ObjectKey`] name
/// (`<stream>/<group>`); stream names never contain it (see [`naming::REDIS`]).
const GROUP_SEPARATOR: char = '/';

/// The [`ObjectKey`] name of consumer group `group` on `stream`.
pub fn group_key_name(stream: &str, group: &str) -> String {
    format!("{stream}{GROUP_SEPARATOR}{group}")
}

/// Split a subscription key name into stream and group.
fn split_group_key(name: &str) -> Option<(&str, &str)> {
    name.split_once(GROUP_SEPARATOR)
}

/// The objects the spec asks for on this broker.
pub fn desired(
    scope: &Scope,
    _spec: &RedisSpec,
    topics: &[TopicSpec],
) -> Result<DesiredState, Error> {
    let mut state = DesiredState::default();
    let mut with_partitions = Vec::new();
    let mut with_retention = Vec::new();
    let mut ordered = Vec::new();
    let mut dead_lettering = false;

    for topic in topics {
        // Room for the dead-letter suffix, so adding a dead letter later never renames the stream.
        let stream = naming::scoped(&naming::REDIS, scope, &[&topic.name], DLQ_SUFFIX.len());
        let mut config = BTreeMap::new();
        let retention = topic
            .retention_duration()
            .map_err(|e| Error::InvalidSpec(format!("topic {:?}: {e}", topic.name)))?;
        if let Some(retention) = retention {
            config.insert(RETENTION_MS.to_string(), retention.as_millis().to_string());
            with_retention.push(format!(
                "{} ({})",
                topic.name,
                topic.retention.as_deref().unwrap_or_default()
            ));
        }
        if topic.partitions.is_some() {
            with_partitions.push(topic.name.clone());
        }
        if topic.ordered {
            ordered.push(topic.name.clone());
        }
        state.objects.push(DesiredObject {
            key: ObjectKey::new(ObjectKind::Topic, stream.clone()),
            logical: topic.name.clone(),
            parent: None,
            partitions: None,
            config,
        });
        state.names.insert(topic.name.clone(), stream.clone());

        let dlq = format!("{stream}{DLQ_SUFFIX}");
        if topic.subscriptions.iter().any(|s| s.dead_letter.is_some()) {
            dead_lettering = true;
            state.objects.push(DesiredObject {
                key: ObjectKey::new(ObjectKind::DeadLetter, dlq.clone()),
                logical: format!("{}/dlq", topic.name),
                parent: Some(stream.clone()),
                partitions: None,
                config: BTreeMap::new(),
            });
        }
        for sub in &topic.subscriptions {
            let logical = format!("{}/{}", topic.name, sub.name);
            let mut config = BTreeMap::new();
            if let Some(dl) = &sub.dead_letter {
                config.insert(DEAD_LETTER_STREAM.to_string(), dlq.clone());
                config.insert(
                    MAX_DELIVERY_ATTEMPTS.to_string(),
                    dl.max_delivery_attempts.to_string(),
                );
                state.names.insert(format!("{logical}/dlq"), dlq.clone());
            }
            state.objects.push(DesiredObject {
                key: ObjectKey::new(ObjectKind::Subscription, group_key_name(&stream, &sub.name)),
                logical: logical.clone(),
                parent: Some(stream.clone()),
                partitions: None,
                config,
            });
            state.names.insert(logical, sub.name.clone());
        }
    }

    if !with_partitions.is_empty() {
        state.notes.push(format!(
            "Redis streams have no partitions; the partitions hint is ignored for: {}",
            with_partitions.join(", ")
        ));
    }
    if !ordered.is_empty() {
        state.notes.push(format!(
            "a Redis stream is always ordered; `ordered` needs nothing extra for: {}",
            ordered.join(", ")
        ));
    }
    if !with_retention.is_empty() {
        state.notes.push(format!(
            "Redis streams have no retention setting; entries older than the window are trimmed (XTRIM MINID) on every resync: {}",
            with_retention.join(", ")
        ));
    }
    if dead_lettering {
        state.notes.push(
            "Redis does not dead-letter by itself; consumers move entries delivered more than max-delivery-attempts times (XPENDING) to the <stream>:dlq stream"
                .to_string(),
        );
    }
    Ok(state)
}

/// The endpoint a spec names, parsed: host, port, database, TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
    db: i64,
    tls: bool,
}

impl Endpoint {
    /// The URI without credentials.
    fn uri(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/{}", self.port, self.db)
    }
}

/// The url with any user information replaced, fit for messages.
fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}<redacted>{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Parse the URL and apply the database override; refuse URLs that carry credentials.
fn endpoint(spec: &RedisSpec) -> Result<(Endpoint, redis::ConnectionInfo), String> {
    let info = spec
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("redis url {:?} is not usable: {e}", redacted_url(&spec.url)))?;
    if info.redis_settings().password().is_some() || info.redis_settings().username().is_some() {
        return Err(
            "the redis url must not carry credentials; use usernameSecretRef/passwordSecretRef"
                .to_string(),
        );
    }
    let (host, port, tls) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host.clone(), *port, false),
        ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
        _ => {
            return Err("only redis:// and rediss:// urls are supported".to_string());
        }
    };
    // A caSecretRef without a rediss:// url is refused by the schema (CEL).
    let db = spec.database.unwrap_or(info.redis_settings().db());
    Ok((
        Endpoint {
            host,
            port,
            db,
            tls,
        },
        info,
    ))
}

/// Connection details for the binding Secret.
pub fn connection_info(
    spec: &RedisSpec,
    secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, Error> {
    let (endpoint, _) = endpoint(spec).map_err(Error::InvalidSpec)?;
    let username = spec
        .username_secret_ref
        .as_ref()
        .map(|r| secrets.get(r).cloned())
        .transpose()?;
    let password = spec
        .password_secret_ref
        .as_ref()
        .map(|r| secrets.get(r).cloned())
        .transpose()?;
    // `host`, `port`, `username`, `password` and `database` are what Spring Cloud Bindings and
    // kube-service-bindings (redis, ioredis) read. No `ssl` entry: Spring Cloud Bindings copies
    // it to `spring.data.redis.ssl`, which Spring Boot 3.1+ cannot bind from a string, so the
    // app would not start. TLS shows in the `rediss://` scheme of `uri`.
    let extra = BTreeMap::from([("database".to_string(), endpoint.db.to_string())]);
    let credentials = super::ca_credentials(secrets, spec.ca_secret_ref.as_ref())?;
    Ok(ConnectionInfo {
        provider: "redis".into(),
        host: Some(endpoint.host.clone()),
        port: Some(endpoint.port),
        uri: Some(endpoint.uri()),
        username,
        password,
        extra,
        credentials,
    })
}

/// A client for this endpoint. Connects lazily: a broker that is down does not fail this call,
/// only unusable settings (a malformed url or CA bundle, a missing Secret key) do.
pub async fn connect(
    spec: &RedisSpec,
    secrets: &ResolvedSecrets,
    options: &super::ConnectOptions,
) -> Result<Arc<dyn Backend>, BrokerError> {
    Ok(Arc::new(
        build(spec, secrets)?.with_check_timeout(options.check_timeout),
    ))
}

/// Build the backend (no I/O).
fn build(spec: &RedisSpec, secrets: &ResolvedSecrets) -> Result<RedisBackend, BrokerError> {
    let rejected = |m: String| BrokerError::new(BrokerErrorKind::Rejected, m);
    let (endpoint, info) = endpoint(spec).map_err(rejected)?;
    let mut settings = info.redis_settings().clone().set_db(endpoint.db);
    if let Some(r) = &spec.username_secret_ref {
        let user = secrets.get(r).map_err(|e| rejected(e.to_string()))?;
        settings = settings.set_username(user.expose());
    }
    if let Some(r) = &spec.password_secret_ref {
        let password = secrets.get(r).map_err(|e| rejected(e.to_string()))?;
        settings = settings.set_password(password.expose());
    }
    let info = info.set_redis_settings(settings);
    let client = match &spec.ca_secret_ref {
        Some(r) => {
            let pem = secrets.get(r).map_err(|e| rejected(e.to_string()))?;
            if !pem.expose().contains("-----BEGIN CERTIFICATE-----") {
                return Err(BrokerError::new(
                    BrokerErrorKind::Tls,
                    format!(
                        "Secret {:?} key {:?} holds no PEM certificate",
                        r.name, r.key
                    ),
                ));
            }
            let certs = TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.expose().as_bytes().to_vec()),
            };
            redis::Client::build_with_tls(info, certs).map_err(|e| {
                BrokerError::new(
                    BrokerErrorKind::Tls,
                    format!("CA bundle in Secret {:?} key {:?}: {e}", r.name, r.key),
                )
            })?
        }
        None => redis::Client::open(info).map_err(|e| rejected(format!("redis client: {e}")))?,
    };
    Ok(RedisBackend::new(client, endpoint.uri()))
}

/// The Redis driver: what the rest of Switchyard knows about Redis.
pub struct Redis;

impl super::Driver for Redis {
    const TYPE: crate::api::BrokerType = crate::api::BrokerType::Redis;
    const BINDING_TYPE: &'static str = data::BINDING_TYPE;

    super::driver::forward_to_folder!(RedisSpec, redis);

    fn endpoint(spec: &RedisSpec) -> serde_json::Value {
        serde_json::json!((&spec.url, spec.database))
    }

    fn secret_keys(spec: &RedisSpec) -> Vec<(String, String)> {
        [
            &spec.username_secret_ref,
            &spec.password_secret_ref,
            &spec.ca_secret_ref,
        ]
        .into_iter()
        .flatten()
        .map(|r| r.secret_key())
        .collect()
    }

    fn binding_has_credentials(spec: &RedisSpec) -> bool {
        spec.username_secret_ref.is_some() || spec.password_secret_ref.is_some()
    }

    fn with_app_credentials(spec: &RedisSpec, app: &crate::api::LocalSecretRef) -> RedisSpec {
        RedisSpec {
            username_secret_ref: spec
                .username_secret_ref
                .as_ref()
                .map(|_| app.key("username")),
            password_secret_ref: Some(app.key("password")),
            ..spec.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecretKeyRef;
    use crate::brokers::spec_fixtures::{sub, topic};

    fn scope() -> Scope {
        Scope::new("shop", "bus")
    }

    fn spec(url: &str) -> RedisSpec {
        RedisSpec {
            url: url.into(),
            database: None,
            username_secret_ref: None,
            password_secret_ref: None,
            ca_secret_ref: None,
        }
    }

    #[tokio::test]
    async fn the_check_waits_as_long_as_configured() {
        let server = crate::brokers::SilentServer::start().await;
        let options = crate::brokers::ConnectOptions {
            check_timeout: std::time::Duration::from_millis(300),
            ..Default::default()
        };
        let url = format!("redis://127.0.0.1:{}", server.port());
        let backend = connect(&spec(&url), &ResolvedSecrets::default(), &options)
            .await
            .expect("lazy");
        let err = backend
            .check()
            .await
            .expect_err("a server that never answers");
        assert_eq!(err.kind, BrokerErrorKind::Timeout, "{err}");
        assert!(err.message.contains("0.3s"), "{}", err.message);
    }

    #[test]
    fn maps_topics_groups_and_dead_letters() {
        let mut t = topic("order-created");
        t.retention = Some("168h".into());
        t.partitions = Some(6);
        t.subscriptions = vec![sub("billing", None), sub("shipping", Some(5))];
        let d = desired(&scope(), &spec("redis://r:6379"), &[t, topic("plain")]).expect("maps");

        let keys: Vec<String> = d.objects.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            keys,
            vec![
                "topic/shop:bus:order-created",
                "deadLetter/shop:bus:order-created:dlq",
                "subscription/shop:bus:order-created/billing",
                "subscription/shop:bus:order-created/shipping",
                "topic/shop:bus:plain",
            ]
        );
        assert_eq!(d.objects[0].config[RETENTION_MS], "604800000");
        assert!(d.objects[2].config.is_empty());
        assert_eq!(
            d.objects[3].config[DEAD_LETTER_STREAM],
            "shop:bus:order-created:dlq"
        );
        assert_eq!(d.objects[3].config[MAX_DELIVERY_ATTEMPTS], "5");
        assert!(d.objects[4].config.is_empty());
        assert_eq!(d.names["order-created"], "shop:bus:order-created");
        assert_eq!(d.names["order-created/shipping"], "shipping");
        assert_eq!(
            d.names["order-created/shipping/dlq"],
            "shop:bus:order-created:dlq"
        );
        assert!(!d.names.contains_key("order-created/billing/dlq"));
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("partitions") && n.contains("order-created"))
        );
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("XTRIM MINID") && n.contains("168h"))
        );
    }

    #[test]
    fn long_names_leave_room_for_the_dead_letter_suffix() {
        let long = "t".repeat(100);
        let ns = "n".repeat(63);
        let name = "m".repeat(63);
        let mut t = topic(&long);
        t.subscriptions = vec![sub("s", Some(5))];
        let d = desired(&Scope::new(ns, name), &spec("redis://r:6379"), &[t]).expect("maps");
        let dlq = &d.objects[1].key.name;
        assert!(dlq.len() <= naming::REDIS.max_len, "{dlq}");
        assert!(dlq.ends_with(DLQ_SUFFIX));
        assert!(!d.objects[0].key.name.contains(GROUP_SEPARATOR));
    }

    #[test]
    fn group_keys_split_back() {
        let name = group_key_name("shop:bus:t", "billing");
        assert_eq!(split_group_key(&name), Some(("shop:bus:t", "billing")));
        let key = ObjectKey::new(ObjectKind::Subscription, name.clone());
        assert_eq!(ObjectKey::parse(&key.to_string()), Some(key));
    }

    #[test]
    fn connection_info_has_no_credentials_in_uri_and_copies_secrets() {
        let mut s = spec("redis://cache.dev.svc:6380/2");
        s.database = Some(3);
        s.username_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "username".into(),
        });
        s.password_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "password".into(),
        });
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("redis", "username", "app");
        secrets.insert("redis", "password", "hunter2-distinctive");
        let info = connection_info(&s, &secrets).expect("info");
        assert_eq!(info.provider, "redis");
        assert_eq!(info.host.as_deref(), Some("cache.dev.svc"));
        assert_eq!(info.port, Some(6380));
        assert_eq!(info.uri.as_deref(), Some("redis://cache.dev.svc:6380/3"));
        assert_eq!(info.extra["database"], "3");
        assert!(!info.extra.contains_key("ssl"), "breaks Spring Boot 3 apps");
        assert_eq!(info.username.as_ref().map(|v| v.expose()), Some("app"));
        assert_eq!(
            info.password.as_ref().map(|v| v.expose()),
            Some("hunter2-distinctive")
        );
        assert!(info.credentials.is_empty(), "no CA referenced");

        let tls = connection_info(&spec("rediss://cache:6379"), &ResolvedSecrets::default())
            .expect("info");
        assert_eq!(tls.uri.as_deref(), Some("rediss://cache:6379/0"));
        assert!(!tls.extra.contains_key("ssl"), "breaks Spring Boot 3 apps");
    }

    #[test]
    fn missing_secret_key_is_named_without_values() {
        let mut s = spec("redis://r:6379");
        s.password_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "password".into(),
        });
        let err = connection_info(&s, &ResolvedSecrets::default()).expect_err("missing");
        assert!(err.to_string().contains("redis") && err.to_string().contains("password"));
    }

    #[tokio::test]
    async fn connect_is_lazy_but_refuses_unusable_settings() {
        // Nothing listens on port 1: connect must still succeed (the broker may come up later).
        assert!(
            connect(
                &spec("redis://127.0.0.1:1"),
                &ResolvedSecrets::default(),
                &Default::default()
            )
            .await
            .is_ok()
        );

        let err = build(&spec("http://r:6379"), &ResolvedSecrets::default()).expect_err("bad url");
        assert_eq!(err.kind, BrokerErrorKind::Rejected);

        let mut s = spec("redis://r:6379");
        s.ca_secret_ref = Some(SecretKeyRef {
            name: "ca".into(),
            key: "ca.crt".into(),
        });
        let mut secrets = ResolvedSecrets::default();
        secrets.insert("ca", "ca.crt", "not a pem");
        s.url = "rediss://r:6379".into();
        let err = build(&s, &secrets).expect_err("malformed pem");
        assert_eq!(err.kind, BrokerErrorKind::Tls);
        assert!(err.message.contains("ca.crt"), "{}", err.message);

        let mut corrupt = ResolvedSecrets::default();
        corrupt.insert(
            "ca",
            "ca.crt",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let err = build(&s, &corrupt).expect_err("corrupt pem");
        assert_eq!(err.kind, BrokerErrorKind::Tls);
    }

    #[test]
    fn urls_in_messages_never_show_credentials() {
        assert_eq!(
            redacted_url("redis://u:pw-distinctive@h:6379/0"),
            "redis://<redacted>@h:6379/0"
        );
        assert_eq!(redacted_url("redis://h:6379"), "redis://h:6379");
        let err = build(
            &spec("redis://u:pw-distinctive@h:notaport"),
            &ResolvedSecrets::default(),
        )
        .expect_err("bad url");
        assert!(!err.message.contains("pw-distinctive"), "{}", err.message);
    }

    #[test]
    fn credentials_in_url_are_refused() {
        let err = build(
            &spec("redis://user:pw-distinctive@r:6379"),
            &ResolvedSecrets::default(),
        )
        .expect_err("credentials in url");
        assert_eq!(err.kind, BrokerErrorKind::Rejected);
        assert!(!err.message.contains("pw-distinctive"), "{}", err.message);
    }
}

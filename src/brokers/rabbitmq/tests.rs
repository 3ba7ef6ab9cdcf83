//! Unit tests for the pure parts: names, desired objects, config normalisation, endpoints.

use std::collections::BTreeMap;

use super::management::arg_string;
use super::*;
use crate::api::{
    CredentialsSecretRef, DeadLetterSpec, SecretKeyRef, SubscriptionSpec, TlsSpec, TopicSpec,
};

fn scope() -> Scope {
    Scope::new("shop", "bus")
}

fn spec() -> RabbitMqSpec {
    RabbitMqSpec {
        url: None,
        host: Some("rabbit.shop.svc".into()),
        port: None,
        vhost: None,
        tls: None,
        credentials_secret_ref: Some(CredentialsSecretRef {
            name: "rabbit".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        }),
        queue_type: QueueType::Quorum,
        management_url: Some("http://rabbit.shop.svc:15672".into()),
    }
}

fn topics() -> Vec<TopicSpec> {
    vec![TopicSpec {
        name: "order-created".into(),
        partitions: Some(6),
        retention: Some("168h".into()),
        ordered: false,
        subscriptions: vec![
            SubscriptionSpec {
                name: "billing".into(),
                dead_letter: None,
            },
            SubscriptionSpec {
                name: "shipping".into(),
                dead_letter: Some(DeadLetterSpec {
                    max_delivery_attempts: 5,
                }),
            },
        ],
    }]
}

fn config(d: &DesiredState, kind: ObjectKind, name: &str) -> BTreeMap<String, String> {
    d.objects
        .iter()
        .find(|o| o.key == ObjectKey::new(kind, name))
        .unwrap_or_else(|| panic!("{kind:?} {name} is desired"))
        .config
        .clone()
}

#[test]
fn maps_topics_subscriptions_and_dead_letters() {
    let d = desired(&scope(), &spec(), &topics()).expect("desired");
    let keys: Vec<String> = d.objects.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(
        keys,
        vec![
            "deadLetter/shop.bus.order-created.shipping.dlx",
            "deadLetter/shop.bus.order-created.shipping.dlq",
            "topic/shop.bus.order-created",
            "queue/shop.bus.order-created.billing",
            "queue/shop.bus.order-created.shipping",
            "binding/shop.bus.order-created->shop.bus.order-created.billing",
            "binding/shop.bus.order-created.shipping.dlx->shop.bus.order-created.shipping.dlq",
            "binding/shop.bus.order-created->shop.bus.order-created.shipping",
        ],
        "parents first"
    );
    assert_eq!(d.names["order-created"], "shop.bus.order-created");
    assert_eq!(
        d.names["order-created/billing"],
        "shop.bus.order-created.billing"
    );
    assert_eq!(
        d.names["order-created/shipping/dlq"],
        "shop.bus.order-created.shipping.dlq"
    );
    assert!(d.notes.iter().any(|n| n.contains("partitions")));
}

#[test]
fn queue_arguments_carry_retention_type_and_dead_lettering() {
    let d = desired(&scope(), &spec(), &topics()).expect("desired");
    let billing = config(&d, ObjectKind::Queue, "shop.bus.order-created.billing");
    assert_eq!(billing[ARG_QUEUE_TYPE], "quorum");
    assert_eq!(billing[ARG_MESSAGE_TTL], (168u64 * 3600 * 1000).to_string());
    assert_eq!(billing[ARG_DEAD_LETTER_EXCHANGE], UNSET);
    assert_eq!(billing[ARG_DELIVERY_LIMIT], UNSET);
    let shipping = config(&d, ObjectKind::Queue, "shop.bus.order-created.shipping");
    assert_eq!(
        shipping[ARG_DEAD_LETTER_EXCHANGE],
        "shop.bus.order-created.shipping.dlx"
    );
    assert_eq!(shipping[ARG_DELIVERY_LIMIT], "5");
    let dlx = config(
        &d,
        ObjectKind::DeadLetter,
        "shop.bus.order-created.shipping.dlx",
    );
    assert_eq!(dlx[CFG_EXCHANGE_TYPE], "fanout");
    let exchange = config(&d, ObjectKind::Topic, "shop.bus.order-created");
    assert_eq!(exchange[CFG_EXCHANGE_TYPE], "topic");
    assert_eq!(exchange[CFG_DURABLE], "true");
}

#[test]
fn every_converged_setting_is_immutable() {
    let d = desired(&scope(), &spec(), &topics()).expect("desired");
    for o in &d.objects {
        for key in o.config.keys() {
            assert!(
                CAPABILITIES
                    .immutable_config
                    .iter()
                    .any(|(k, r)| k == key && *r == crate::brokers::Immutable::QueueArguments),
                "{key} must be immutable"
            );
        }
    }
}

#[test]
fn classic_queues_have_no_delivery_limit_and_say_so() {
    let mut s = spec();
    s.queue_type = QueueType::Classic;
    let d = desired(&scope(), &s, &topics()).expect("desired");
    let shipping = config(&d, ObjectKind::Queue, "shop.bus.order-created.shipping");
    assert_eq!(shipping[ARG_QUEUE_TYPE], "classic");
    assert_eq!(shipping[ARG_DELIVERY_LIMIT], UNSET);
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("classic") && n.contains("delivery limit"))
    );
}

#[test]
fn keys_map_back_to_broker_entities() {
    assert_eq!(
        Entity::of(&binding_key("a.b-", "c.d")),
        Some(Entity::Binding {
            exchange: "a.b-".into(),
            queue: "c.d".into()
        })
    );
    assert_eq!(
        Entity::of(&ObjectKey::new(ObjectKind::DeadLetter, "x.dlx")),
        Some(Entity::Exchange("x.dlx".into()))
    );
    assert_eq!(
        Entity::of(&ObjectKey::new(ObjectKind::DeadLetter, "x.dlq")),
        Some(Entity::Queue("x.dlq".into()))
    );
    assert_eq!(
        Entity::of(&ObjectKey::new(ObjectKind::Subscription, "x")),
        None
    );
}

#[test]
fn long_names_stay_within_limits_and_keep_suffixes() {
    let mut t = topics();
    t[0].name = format!("t{}", "x".repeat(99));
    t[0].subscriptions[1].name = format!("s{}", "y".repeat(59));
    let long = Scope::new("n".repeat(63), "m".repeat(63));
    let d = desired(&long, &spec(), &t).expect("desired");
    for o in d
        .objects
        .iter()
        .filter(|o| o.key.kind != ObjectKind::Binding)
    {
        assert!(o.key.name.len() <= 255, "{}", o.key.name);
    }
    assert!(
        d.objects
            .iter()
            .any(|o| o.key.kind == ObjectKind::DeadLetter && o.key.name.ends_with(".dlq"))
    );
}

#[test]
fn endpoint_from_host_url_and_vhost() {
    let e = Endpoint::from_spec(&spec()).expect("endpoint");
    assert_eq!(
        e.uri_without_credentials(),
        "amqp://rabbit.shop.svc:5672/%2F"
    );

    let mut s = spec();
    s.host = None;
    s.url = Some("amqps://rabbit:5999/prod".into());
    let e = Endpoint::from_spec(&s).expect("endpoint");
    assert!(e.tls);
    assert_eq!((e.port, e.vhost.as_str()), (5999, "prod"));

    s.url = Some("amqps://rabbit".into());
    s.vhost = Some("team/a".into());
    let e = Endpoint::from_spec(&s).expect("endpoint");
    assert_eq!(e.port, 5671, "TLS default port");
    assert_eq!(e.uri_without_credentials(), "amqps://rabbit:5671/team%2Fa");

    s.url = Some("amqp://user:pw@rabbit/".into());
    assert!(Endpoint::from_spec(&s).is_err(), "credentials in the URL");
}

#[test]
fn connection_info_copies_credentials_without_putting_them_in_the_uri() {
    let mut secrets = ResolvedSecrets::default();
    secrets.insert("rabbit", "username", "app");
    secrets.insert("rabbit", "password", "distinctive-pw");
    let info = connection_info(&spec(), &secrets).expect("info");
    assert_eq!(info.provider, "rabbitmq");
    assert_eq!(info.host.as_deref(), Some("rabbit.shop.svc"));
    assert_eq!(info.port, Some(5672));
    assert!(!info.uri.as_deref().unwrap_or("").contains("distinctive-pw"));
    assert_eq!(
        info.password.as_ref().map(|p| p.expose()),
        Some("distinctive-pw")
    );
    assert_eq!(info.extra["vhost"], "/");
    // Spring Cloud Bindings' name for it.
    assert_eq!(info.extra["virtual-host"], "/");
    assert!(info.credentials.is_empty(), "no TLS CA referenced");
}

#[tokio::test]
async fn a_malformed_ca_is_a_tls_error_at_connect() {
    let mut s = spec();
    s.tls = Some(TlsSpec {
        enabled: true,
        ca_secret_ref: Some(SecretKeyRef {
            name: "ca".into(),
            key: "ca.crt".into(),
        }),
        cert_secret_ref: None,
        key_secret_ref: None,
    });
    let mut secrets = ResolvedSecrets::default();
    secrets.insert("rabbit", "username", "app");
    secrets.insert("rabbit", "password", "pw");
    secrets.insert("ca", "ca.crt", "not a certificate");
    let err = match connect(&s, &secrets, &Default::default()).await {
        Ok(_) => panic!("a malformed CA must be refused"),
        Err(e) => e,
    };
    assert_eq!(err.kind, BrokerErrorKind::Tls, "{err}");
    assert!(!err.message.contains("not a certificate"));
}

#[test]
fn management_values_print_like_desired_config() {
    assert_eq!(arg_string(&serde_json::json!(3600000)), "3600000");
    assert_eq!(arg_string(&serde_json::json!("quorum")), "quorum");
}

#[tokio::test]
async fn the_check_waits_as_long_as_configured() {
    let server = crate::brokers::SilentServer::start().await;
    let mut s = spec();
    s.host = Some("127.0.0.1".into());
    s.port = Some(i32::from(server.port()));
    s.management_url = None;
    let mut secrets = ResolvedSecrets::default();
    secrets.insert("rabbit", "username", "u");
    secrets.insert("rabbit", "password", "p");
    let options = crate::brokers::ConnectOptions {
        check_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let backend = connect(&s, &secrets, &options).await.expect("lazy");
    let err = backend
        .check()
        .await
        .expect_err("a server that never answers");
    assert_eq!(err.kind, BrokerErrorKind::Timeout, "{err}");
    assert!(err.message.contains("300ms"), "{}", err.message);
}

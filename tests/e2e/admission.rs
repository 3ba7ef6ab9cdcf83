//! The API server refuses malformed MessageBrokers at apply time, with a message a person
//! understands. Each case is one mistake on top of a valid manifest.

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, ValidationDirective};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::support::*;

fn valid() -> Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "MessageBroker",
        "metadata": {"name": "bus"},
        "spec": {
            "topics": [{"name": "order-created", "partitions": 3, "retention": "168h",
                        "subscriptions": [{"name": "billing"}]}],
            "envs": [{"slug": "prd", "type": "Kafka", "kafka": {"bootstrapServers": ["kafka:9092"]}}]
        }
    })
}

fn with(edit: impl Fn(&mut Value)) -> Value {
    let mut v = valid();
    edit(&mut v);
    v
}

async fn dry_run_apply(client: &kube::Client, ns: &str, obj: &Value) -> Result<(), String> {
    let ar = ApiResource {
        group: "switchyard.dev".into(),
        version: "v1alpha1".into(),
        api_version: "switchyard.dev/v1alpha1".into(),
        kind: "MessageBroker".into(),
        plural: "messagebrokers".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or("bus")
        .to_string();
    let mut pp = PatchParams::apply("switchyard-tests").force();
    pp.dry_run = true;
    pp.field_validation = Some(ValidationDirective::Strict);
    api.patch(&name, &pp, &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_clear_messages() {
    let (client, ns) = setup("admission").await;

    dry_run_apply(&client, &ns, &valid())
        .await
        .expect("the base manifest is valid");

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no envs",
            with(|v| v["spec"]["envs"] = json!([])),
            "spec.envs",
        ),
        (
            "unknown broker type",
            with(|v| v["spec"]["envs"][0]["type"] = json!("Nats")),
            "Unsupported value: \"Nats\"",
        ),
        (
            "type without its block",
            with(|v| {
                v["spec"]["envs"][0] = json!({"slug": "prd", "type": "Redis"});
            }),
            "type Redis needs exactly the `redis` settings block",
        ),
        (
            "two blocks",
            with(|v| {
                v["spec"]["envs"][0]["redis"] = json!({"url": "redis://r:6379"});
            }),
            "type Kafka needs exactly the `kafka` settings block",
        ),
        (
            "duplicate env slug",
            with(|v| {
                let e = v["spec"]["envs"][0].clone();
                v["spec"]["envs"] = json!([e.clone(), e]);
            }),
            "duplicate entries for key [slug=\"prd\"]",
        ),
        (
            "duplicate topic",
            with(|v| {
                let t = v["spec"]["topics"][0].clone();
                v["spec"]["topics"] = json!([t.clone(), t]);
            }),
            "duplicate entries for key [name=\"order-created\"]",
        ),
        (
            "duplicate subscription",
            with(|v| {
                v["spec"]["topics"][0]["subscriptions"] = json!([{"name": "a"}, {"name": "a"}]);
            }),
            "duplicate entries for key [name=\"a\"]",
        ),
        (
            "uppercase topic",
            with(|v| v["spec"]["topics"][0]["name"] = json!("Orders")),
            "spec.topics[0].name",
        ),
        (
            "topic name too long",
            with(|v| v["spec"]["topics"][0]["name"] = json!("a".repeat(101))),
            "may not be more than 100",
        ),
        (
            "slug with underscore",
            with(|v| v["spec"]["envs"][0]["slug"] = json!("prd_1")),
            "spec.envs[0].slug",
        ),
        (
            "zero partitions",
            with(|v| v["spec"]["topics"][0]["partitions"] = json!(0)),
            "should be greater than or equal to 1",
        ),
        (
            "too many partitions",
            with(|v| v["spec"]["topics"][0]["partitions"] = json!(5000)),
            "should be less than or equal to 1000",
        ),
        (
            "retention not a duration",
            with(|v| v["spec"]["topics"][0]["retention"] = json!("7 days")),
            "spec.topics[0].retention",
        ),
        (
            "retention in days",
            with(|v| v["spec"]["topics"][0]["retention"] = json!("7d")),
            "spec.topics[0].retention",
        ),
        (
            "retention too short",
            with(|v| v["spec"]["topics"][0]["retention"] = json!("10s")),
            "retention must be between 1m and 8760h",
        ),
        (
            "retention too long",
            with(|v| v["spec"]["topics"][0]["retention"] = json!("9000h")),
            "retention must be between 1m and 8760h",
        ),
        (
            "SQS retention over 14 days",
            with(|v| {
                v["spec"]["envs"] =
                    json!([{"slug": "prd", "type": "AwsSqs", "awsSqs": {"region": "eu-west-1"}}]);
                v["spec"]["topics"][0]["retention"] = json!("400h");
            }),
            "AWS SQS keeps messages at most 14 days",
        ),
        (
            "dead letter attempts too low",
            with(|v| {
                v["spec"]["topics"][0]["subscriptions"][0]["deadLetter"] =
                    json!({"maxDeliveryAttempts": 1});
            }),
            "should be greater than or equal to 5",
        ),
        (
            "bad deletion policy",
            with(|v| v["spec"]["deletionPolicy"] = json!("Purge")),
            "Unsupported value: \"Purge\"",
        ),
        (
            "bootstrap without port",
            with(|v| v["spec"]["envs"][0]["kafka"]["bootstrapServers"] = json!(["kafka"])),
            "bootstrapServers",
        ),
        (
            "no bootstrap servers",
            with(|v| v["spec"]["envs"][0]["kafka"]["bootstrapServers"] = json!([])),
            "bootstrapServers",
        ),
        (
            "inline password field",
            with(|v| v["spec"]["envs"][0]["kafka"]["password"] = json!("hunter2")),
            "kafka.password: field not declared in schema",
        ),
        (
            "cross-namespace secret ref",
            with(|v| {
                v["spec"]["envs"][0]["kafka"]["sasl"] = json!({"mechanism": "SCRAM-SHA-512",
                "credentialsSecretRef": {"name": "u", "namespace": "other"}});
            }),
            "credentialsSecretRef.namespace: field not declared in schema",
        ),
        (
            "bad SASL mechanism",
            with(|v| {
                v["spec"]["envs"][0]["kafka"]["sasl"] =
                    json!({"mechanism": "GSSAPI", "credentialsSecretRef": {"name": "u"}});
            }),
            "Unsupported value: \"GSSAPI\"",
        ),
        (
            "redis URL with credentials",
            with(|v| {
                v["spec"]["envs"] = json!([{"slug": "dev", "type": "Redis", "redis": {"url": "redis://user:pw@r:6379"}}]);
            }),
            "spec.envs[0].redis.url",
        ),
        (
            "rabbitmq url and host",
            with(|v| {
                v["spec"]["envs"] = json!([{"slug": "dev", "type": "RabbitMQ", "rabbitmq": {"url": "amqp://r:5672", "host": "r"}}]);
            }),
            "set either url or host",
        ),
        (
            "pubsub project id too short",
            with(|v| {
                v["spec"]["envs"] = json!([{"slug": "dev", "type": "GooglePubSub", "googlePubSub": {"projectId": "abc"}}]);
            }),
            "projectId",
        ),
        (
            "sqs region malformed",
            with(|v| {
                v["spec"]["envs"] =
                    json!([{"slug": "dev", "type": "AwsSqs", "awsSqs": {"region": "Europe"}}]);
            }),
            "region",
        ),
        (
            "client cert without key",
            with(|v| {
                v["spec"]["envs"][0]["kafka"]["tls"] =
                    json!({"certSecretRef": {"name": "c", "key": "tls.crt"}});
            }),
            "tls.certSecretRef and tls.keySecretRef go together",
        ),
        (
            "name too long for broker names",
            with(|v| v["metadata"]["name"] = json!("b".repeat(70))),
            "must be at most 63 characters",
        ),
        (
            "app credentials on a Kafka env without SASL",
            with(|v| v["spec"]["envs"][0]["appCredentialsSecretRef"] = json!({"name": "app"})),
            "appCredentialsSecretRef on Kafka needs kafka.sasl",
        ),
        (
            "app credentials on Google Pub/Sub",
            with(|v| {
                v["spec"]["envs"][0] = json!({"slug": "prd", "type": "GooglePubSub",
                    "googlePubSub": {"projectId": "shop-prd"},
                    "appCredentialsSecretRef": {"name": "app"}});
            }),
            "appCredentialsSecretRef is not used on Google Pub/Sub",
        ),
        (
            "app credentials Secret without a name",
            with(|v| {
                v["spec"]["envs"][0]["kafka"]["sasl"] = json!({"mechanism": "ScramSha512",
                    "credentialsSecretRef": {"name": "kafka-admin"}});
                v["spec"]["envs"][0]["appCredentialsSecretRef"] = json!({});
            }),
            "appCredentialsSecretRef.name",
        ),
    ];
    assert!(cases.len() >= 20);

    let mut failures = Vec::new();
    for (what, manifest, expected) in &cases {
        match dry_run_apply(&client, &ns, manifest).await {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(msg) if !msg.contains(expected) => {
                failures.push(format!("{what}: message {msg:?} lacks {expected:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn nats_jetstream_settings_are_checked_at_apply_time() {
    let (client, ns) = setup("admission-nats").await;
    let nats = |block: Value| {
        with(move |v| {
            v["spec"]["envs"] =
                json!([{"slug": "prd", "type": "NatsJetStream", "natsJetStream": block.clone()}]);
        })
    };
    let valid = nats(json!({
        "servers": ["nats://nats-0.nats:4222", "tls://nats-1.nats:4222"],
        "subjectPrefix": "shop.orders",
        "credentialsSecretRef": {"name": "nats"},
        "tls": {"caSecretRef": {"name": "nats-ca", "key": "ca.crt"}},
        "replicas": 3,
        "storage": "Memory",
    }));
    dry_run_apply(&client, &ns, &valid)
        .await
        .expect("a full NATS env is valid");

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "type without its block",
            with(|v| v["spec"]["envs"][0]["type"] = json!("NatsJetStream")),
            "type NatsJetStream needs exactly the `natsJetStream` settings block",
        ),
        (
            "another type with a NATS block",
            with(|v| v["spec"]["envs"][0]["natsJetStream"] = json!({"servers": ["nats://n:4222"]})),
            "type Kafka needs exactly the `kafka` settings block",
        ),
        ("no servers", nats(json!({"servers": []})), "servers"),
        (
            "credentials in a server url",
            nats(json!({"servers": ["nats://u:p@n:4222"]})),
            "servers[0]",
        ),
        (
            "not a nats url",
            nats(json!({"servers": ["http://n:4222"]})),
            "servers[0]",
        ),
        (
            "two ways to authenticate",
            nats(
                json!({"servers": ["nats://n:4222"], "credentialsSecretRef": {"name": "a"},
                        "tokenSecretRef": {"name": "b", "key": "token"}}),
            ),
            "set at most one of credentialsSecretRef",
        ),
        (
            "client certificate",
            nats(json!({"servers": ["nats://n:4222"],
                        "tls": {"certSecretRef": {"name": "c", "key": "tls.crt"}, "keySecretRef": {"name": "c", "key": "tls.key"}}})),
            "client certificates are not supported for NATS",
        ),
        (
            "too many replicas",
            nats(json!({"servers": ["nats://n:4222"], "replicas": 7})),
            "replicas",
        ),
        (
            "unknown storage",
            nats(json!({"servers": ["nats://n:4222"], "storage": "Disk"})),
            "storage",
        ),
        (
            "wildcard in the subject prefix",
            nats(json!({"servers": ["nats://n:4222"], "subjectPrefix": "shop.*"})),
            "subjectPrefix",
        ),
    ];
    let mut failures = Vec::new();
    for (what, manifest, expected) in &cases {
        match dry_run_apply(&client, &ns, manifest).await {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(msg) if !msg.contains(expected) => {
                failures.push(format!("{what}: message {msg:?} lacks {expected:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

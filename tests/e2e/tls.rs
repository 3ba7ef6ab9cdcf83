//! TLS towards every broker that has it, against the env's TLS listeners (a test CA, a server
//! certificate for 127.0.0.1 from it, and an unrelated CA): Kafka SSL and SASL_SSL, Redis
//! `rediss://`, RabbitMQ AMQPS with its management API over HTTPS.
//!
//! Each case starts with the unrelated CA in the referenced Secret: the env reports
//! `TLSHandshakeFailed` with a message that says what failed, and retries at the backoff's
//! pace, not in a loop. Rotating the Secret to the right CA is picked up without a restart:
//! the env becomes Ready, and an app reading the binding (which carries the CA) publishes and
//! consumes over TLS through the client library.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use switchyard::api::MessageBroker;
use switchyard::api::conditions::reasons;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn pem(var: &str) -> String {
    let path = env_var(var);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{var}={path}: {e}"))
}

/// The env's `Connected` condition: status, reason, message.
fn connected(mb: &MessageBroker) -> Option<(String, String, String)> {
    prd_condition(mb, "Connected")
}

fn manifest(env: &str) -> String {
    format!(
        "{}spec:\n  deletionPolicy: Delete\n  topics:\n    - name: orders\n      subscriptions: [{{name: billing}}]\n  envs:\n    - {env}\n",
        mb_header("bus")
    )
}

/// The CA Secret every case's env references.
const CA_REF: &str = "caSecretRef: {name: broker-ca, key: ca.crt}";

/// Run one backend's case: `env` is its env (one flow mapping) referencing [`CA_REF`];
/// `secrets` are the other Secrets it needs.
async fn wrong_ca_then_rotation(prefix: &str, env: &str, secrets: &[(&str, &[(&str, &str)])]) {
    let (client, ns) = setup(prefix).await;
    for (name, data) in secrets {
        put_secret(&client, &ns, name, data).await;
    }
    let (right, wrong) = (pem("SWITCHYARD_TLS_CA"), pem("SWITCHYARD_TLS_WRONG_CA"));
    put_secret(&client, &ns, "broker-ca", &[("ca.crt", &wrong)]).await;
    let ctl = start_real_controller(client.clone(), &ns);
    apply_mb(&client, &ns, &manifest(env)).await;
    let applied = Instant::now();

    // The wrong CA: TLSHandshakeFailed, saying what failed.
    let mb = wait_for_mb(&client, &ns, "bus", TIMEOUT, "TLSHandshakeFailed", |m| {
        connected(m).is_some_and(|(s, r, _)| s == "False" && r == reasons::TLS_FAILED)
    })
    .await;
    let (_, _, message) = connected(&mb).expect("Connected");
    eprintln!(
        "{prefix}: wrong CA → {message} (after {:?})",
        applied.elapsed()
    );
    assert!(
        message.starts_with("the broker's certificate is not signed by the CA the env references"),
        "the message says what to check: {message}"
    );
    assert!(!condition_true(&mb, "Ready"), "Ready with the wrong CA");
    assert!(
        condition_true(&mb, "Stalled"),
        "a CA that does not verify waits for a change (Stalled)"
    );
    assert!(
        !message.contains(&wrong[30..90]),
        "the message quotes the CA: {message}"
    );
    // The refused client is not kept (it would go on reconnecting in the background).
    assert_eq!(
        ctl.metrics.pooled_clients.get(),
        0,
        "a client the broker refused stays pooled"
    );
    // No hot loop: over 4 seconds, only backoff-paced retries (backoff 1s, 2s; resync 2s).
    assert_no_hot_loop(&ctl, &format!("{prefix} with the wrong CA"), 6).await;

    // Rotation through the Secret: picked up, Ready.
    put_secret(&client, &ns, "broker-ca", &[("ca.crt", &right)]).await;
    let rotated = Instant::now();
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    eprintln!("{prefix}: right CA → Ready in {:?}", rotated.elapsed());

    // The binding carries the CA, and an app verifying the broker with it gets a round trip.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let binding = secrets.get("bus-prd").await.expect("binding Secret");
    let ca = binding
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    assert_eq!(ca.as_deref(), Some(right.as_str()), "the binding's ca.crt");
    binding_round_trip(&client, &ns, &format!("{prefix}: over TLS")).await;

    let mbs: Api<MessageBroker> = Api::namespaced(client.clone(), &ns);
    mbs.delete("bus", &Default::default())
        .await
        .expect("delete");
    wait_gone(&mbs, "bus", TIMEOUT, "the MessageBroker is deleted").await;
    assert!(ctl.is_running(), "the controller died");
    ctl.stop().await;
}

#[tokio::test]
async fn kafka_ssl_verifies_the_broker_with_the_referenced_ca() {
    let env = format!(
        "{{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"], tls: {{{CA_REF}}}}}}}",
        env_var("SWITCHYARD_KAFKA_SSL_BOOTSTRAP")
    );
    wrong_ca_then_rotation("tls-kafka", &env, &[]).await;
}

#[tokio::test]
async fn kafka_sasl_ssl_verifies_the_broker_with_the_referenced_ca() {
    let (user, password) = (
        env_var("SWITCHYARD_KAFKA_SASL_USERNAME"),
        env_var("SWITCHYARD_KAFKA_SASL_PASSWORD"),
    );
    let env = format!(
        "{{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"], tls: {{{CA_REF}}}, sasl: {{mechanism: SCRAM-SHA-512, credentialsSecretRef: {{name: kafka-user}}}}}}}}",
        env_var("SWITCHYARD_KAFKA_SASL_SSL_BOOTSTRAP")
    );
    let user_secret: &[(&str, &str)] = &[("username", &user), ("password", &password)];
    wrong_ca_then_rotation("tls-kafka-sasl", &env, &[("kafka-user", user_secret)]).await;
}

#[tokio::test]
async fn redis_rediss_verifies_the_server_with_the_referenced_ca() {
    let env = format!(
        "{{slug: prd, type: Redis, redis: {{url: \"{}\", {CA_REF}}}}}",
        env_var("SWITCHYARD_REDIS_TLS_URL")
    );
    wrong_ca_then_rotation("tls-redis", &env, &[]).await;
}

#[tokio::test]
async fn rabbitmq_amqps_and_https_management_verify_with_the_referenced_ca() {
    let b = crate::rabbitmq::broker();
    let env = format!(
        "{{slug: prd, type: RabbitMQ, rabbitmq: {{host: \"{}\", port: {}, managementUrl: \"{}\", tls: {{{CA_REF}}}, credentialsSecretRef: {{name: rabbit}}}}}}",
        b.host,
        env_var("SWITCHYARD_RABBITMQ_TLS_PORT"),
        env_var("SWITCHYARD_RABBITMQ_MANAGEMENT_TLS_URL"),
    );
    let user: &[(&str, &str)] = &[("username", &b.username), ("password", &b.password)];
    wrong_ca_then_rotation("tls-rabbitmq", &env, &[("rabbit", user)]).await;
}

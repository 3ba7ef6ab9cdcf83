//! The binding readers apps use, run for real against bindings the operator wrote: Node's
//! kube-service-bindings (kafkajs, ioredis, redis, rhea), Spring Cloud Bindings with Spring
//! Boot's clients, and pyservicebinding with the AWS and Google Cloud SDKs configured from the
//! binding's environment keys. Each binding Secret is projected into a directory as the kubelet
//! does, the reader's app publishes a fresh token to the topic the binding names, and the test
//! finds that token on the broker through the subscription the operator provisioned.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use switchyard::brokers::RealConnector;
use tokio::process::Command;
use tokio::time::Instant;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);
/// The name the binding is projected under; the Spring app's properties refer to it.
const BINDING: &str = "bus";
/// How long one reader process may take (a JVM start included).
const READER_TIMEOUT: Duration = Duration::from_secs(120);

/// A MessageBroker with one topic (`orders`, subscription `billing`) made Ready by the real
/// operator, and its binding projected into a directory.
struct Bound {
    client: Client,
    ctl: RunningController,
    data: BTreeMap<String, String>,
    root: PathBuf,
}

impl Bound {
    async fn new(prefix: &str, env_block: &str, secrets: &[(&str, &[(&str, &str)])]) -> Bound {
        let (client, ns) = setup(prefix).await;
        for (name, data) in secrets {
            put_secret(&client, &ns, name, data).await;
        }
        let ctl = start_controller(
            client.clone(),
            &ns,
            Arc::new(RealConnector::default()),
            fast_config(),
        );
        let manifest = format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: bus}}\nspec:\n  topics:\n    - name: orders\n      partitions: 1\n      subscriptions: [{{name: billing}}]\n  envs:\n{env_block}\n"
        );
        apply_mb(&client, &ns, &manifest).await;
        let mb = wait_ready(&client, &ns, "bus", TIMEOUT).await;
        // The Provisioned Service duck type: a ServiceBinding naming the MessageBroker finds
        // the same Secret.
        assert_eq!(
            mb.status.and_then(|s| s.binding).map(|b| b.name).as_deref(),
            Some("bus-prd")
        );
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get("bus-prd")
            .await
            .expect("binding Secret bus-prd");
        let raw: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let root = std::env::temp_dir().join(unique("bindings"));
        project(&root.join(BINDING), &raw);
        let data = raw
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        Bound {
            client,
            ctl,
            data,
            root,
        }
    }

    fn get(&self, key: &str) -> &str {
        self.data
            .get(key)
            .unwrap_or_else(|| panic!("the binding has no {key}: {:?}", self.data.keys()))
    }

    fn topic(&self) -> &str {
        self.get("topic.orders")
    }

    fn subscription(&self) -> &str {
        self.get("subscription.orders.billing")
    }

    /// Run `node publish.js CLIENT orders TOKEN` with kube-service-bindings.
    async fn node(&self, reader_client: &str, token: &str) {
        let mut cmd = Command::new(env_var("SWITCHYARD_READERS_NODE"));
        cmd.arg(env_var("SWITCHYARD_READERS_NODE_SCRIPT"))
            .args([reader_client, "orders", token])
            .env("NODE_PATH", env_var("SWITCHYARD_READERS_NODE_PATH"))
            .env("SERVICE_BINDING_ROOT", &self.root);
        run(&format!("node {reader_client}"), cmd).await;
    }

    /// Run the Spring Boot app (Spring Cloud Bindings on the classpath) for one kind.
    async fn spring(&self, kind: &str, token: &str) {
        let mut cmd = Command::new("java");
        cmd.args([
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Xmx256m",
            "-cp",
        ])
        .arg(env_var("SWITCHYARD_READERS_SPRING_CP"))
        .args([
            "dev.switchyard.readers.BindingReaderApp",
            kind,
            BINDING,
            "orders",
            token,
        ])
        .env("SERVICE_BINDING_ROOT", &self.root);
        run(&format!("spring {kind}"), cmd).await;
    }

    /// Run the Python app with only what a pod would have: the binding Secret as environment
    /// variables (`envFrom`, which skips keys that are not variable names) and the projected files.
    async fn python(&self, kind: &str, token: &str) {
        let mut cmd = Command::new(env_var("SWITCHYARD_READERS_PYTHON"));
        cmd.arg(env_var("SWITCHYARD_READERS_PYTHON_SCRIPT"))
            .args([kind, "orders", token])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SERVICE_BINDING_ROOT", &self.root)
            .envs(self.data.iter().filter(|(k, _)| is_env_name(k)));
        run(&format!("python {kind}"), cmd).await;
    }

    async fn stop(self) {
        self.ctl.stop().await;
        let _ = std::fs::remove_dir_all(&self.root);
        drop(self.client);
    }
}

fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Run a reader to completion; fail with its output unless it exits 0.
async fn run(what: &str, mut cmd: Command) {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(READER_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {READER_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Poll `read` (which returns every payload seen so far) until all `tokens` are among them.
async fn expect_tokens<F, Fut>(what: &str, tokens: &[&str], mut read: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        seen.extend(read().await);
        let missing: Vec<_> = tokens
            .iter()
            .filter(|t| !seen.iter().any(|s| s.contains(**t)))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {missing:?} never arrived; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka

/// One consumer reading the topic's only partition from the beginning; each call returns what
/// arrived since the last one.
fn kafka_reader(topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env_var("SWITCHYARD_KAFKA_BOOTSTRAP"))
        .set("group.id", unique("readers-check"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    consumer
}

fn kafka_new_payloads(consumer: &BaseConsumer) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = consumer.poll(Duration::from_millis(200)) {
        let m = m.unwrap_or_else(|e| panic!("consuming: {e}"));
        out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    }
    out
}

async fn expect_on_kafka(topic: &str, tokens: &[&str]) {
    let consumer = Arc::new(kafka_reader(topic));
    expect_tokens(&format!("kafka topic {topic}"), tokens, || {
        let consumer = consumer.clone();
        async move {
            tokio::task::spawn_blocking(move || kafka_new_payloads(&consumer))
                .await
                .expect("consumer task")
        }
    })
    .await;
}

#[tokio::test]
async fn kafka_binding_feeds_kafkajs_and_spring() {
    let env = format!(
        "    - {{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"]}}}}",
        env_var("SWITCHYARD_KAFKA_BOOTSTRAP")
    );
    let b = Bound::new("readers-kafka", &env, &[]).await;
    assert_eq!(b.get("bootstrapServers"), b.get("bootstrap-servers"));
    assert_eq!(b.get("securityProtocol"), "PLAINTEXT");
    for absent in ["user", "password", "saslMechanism", "ca.crt"] {
        assert!(
            !b.data.contains_key(absent),
            "{absent} in a binding without SASL or TLS"
        );
    }
    let (node, spring) = (unique("kafkajs"), unique("spring-kafka"));
    b.node("kafkajs", &node).await;
    b.spring("kafka", &spring).await;
    expect_on_kafka(b.topic(), &[&node, &spring]).await;
    b.stop().await;
}

#[tokio::test]
async fn kafka_scram_binding_feeds_kafkajs_and_spring() {
    let env = format!(
        "    - {{slug: prd, type: Kafka, kafka: {{bootstrapServers: [\"{}\"], sasl: {{mechanism: SCRAM-SHA-512, credentialsSecretRef: {{name: kafka-user}}}}}}}}",
        env_var("SWITCHYARD_KAFKA_SASL_BOOTSTRAP")
    );
    let (user, password) = (
        env_var("SWITCHYARD_KAFKA_SASL_USERNAME"),
        env_var("SWITCHYARD_KAFKA_SASL_PASSWORD"),
    );
    let secrets: &[(&str, &[(&str, &str)])] = &[(
        "kafka-user",
        &[("username", user.as_str()), ("password", password.as_str())],
    )];
    let b = Bound::new("readers-scram", &env, secrets).await;
    assert_eq!(b.get("securityProtocol"), "SASL_PLAINTEXT");
    assert_eq!(b.get("saslMechanism"), "SCRAM-SHA-512");
    assert_eq!(b.get("user"), user);
    assert_eq!(b.get("password"), password);
    let (node, spring) = (unique("kafkajs-scram"), unique("spring-kafka-scram"));
    b.node("kafkajs", &node).await;
    b.spring("kafka", &spring).await;
    expect_on_kafka(b.topic(), &[&node, &spring]).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Redis

async fn expect_on_redis(url: &str, stream: &str, tokens: &[&str]) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    expect_tokens(&format!("redis stream {stream}"), tokens, || {
        let mut conn = conn.clone();
        let stream = stream.to_string();
        async move {
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .expect("XRANGE");
            reply
                .ids
                .iter()
                .flat_map(|id| id.map.values())
                .filter_map(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .collect()
        }
    })
    .await;
    let _: () = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("still connected");
}

#[tokio::test]
async fn password_redis_binding_feeds_ioredis_node_redis_and_spring() {
    let url = env_var("SWITCHYARD_REDIS_AUTH_URL");
    let password = env_var("SWITCHYARD_REDIS_AUTH_PASSWORD");
    let env = format!(
        "    - {{slug: prd, type: Redis, redis: {{url: \"{url}\", passwordSecretRef: {{name: redis, key: password}}}}}}"
    );
    let secrets: &[(&str, &[(&str, &str)])] = &[("redis", &[("password", password.as_str())])];
    let b = Bound::new("readers-redis", &env, secrets).await;
    assert_eq!(b.get("password"), password);
    assert!(
        !b.data.contains_key("username"),
        "no username was referenced"
    );
    let (io, nr, spring) = (
        unique("ioredis"),
        unique("node-redis"),
        unique("spring-redis"),
    );
    b.node("ioredis", &io).await;
    b.node("redis", &nr).await;
    b.spring("redis", &spring).await;
    let admin = url.replacen("redis://", &format!("redis://:{password}@"), 1);
    expect_on_redis(&admin, b.topic(), &[&io, &nr, &spring]).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

async fn expect_on_rabbitmq(queue: &str, tokens: &[&str]) {
    let conn = lapin::Connection::connect(
        &env_var("SWITCHYARD_AMQP_URL"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("AMQP connection");
    let channel = conn.create_channel().await.expect("channel");
    expect_tokens(&format!("rabbitmq queue {queue}"), tokens, || {
        let channel = channel.clone();
        let queue = queue.to_string();
        async move {
            let mut out = Vec::new();
            while let Some(m) = channel
                .basic_get(
                    queue.as_str().into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .expect("basic.get")
            {
                out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
            }
            out
        }
    })
    .await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn rabbitmq_binding_feeds_spring_and_rhea() {
    let r = crate::rabbitmq::broker();
    let env = format!("    - {}", crate::rabbitmq::env_yaml(&r));
    let secrets: &[(&str, &[(&str, &str)])] = &[(
        "rabbit",
        &[
            ("username", r.username.as_str()),
            ("password", r.password.as_str()),
        ],
    )];
    let b = Bound::new("readers-rabbit", &env, secrets).await;
    assert_eq!(b.get("virtual-host"), "/");
    assert_eq!(b.get("username"), r.username);
    let (spring, rhea) = (unique("spring-rabbit"), unique("rhea"));
    b.spring("rabbitmq", &spring).await;
    b.node("rhea", &rhea).await;
    expect_on_rabbitmq(b.subscription(), &[&spring, &rhea]).await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Google Pub/Sub and AWS SQS: the SDKs configure themselves from the binding's environment keys.

#[tokio::test]
async fn pubsub_binding_configures_the_google_sdk() {
    let endpoint = env_var("SWITCHYARD_PUBSUB_ENDPOINT");
    let env = format!(
        "    - {{slug: prd, type: GooglePubSub, googlePubSub: {{projectId: readers-test, endpoint: \"{endpoint}\"}}}}"
    );
    let b = Bound::new("readers-pubsub", &env, &[]).await;
    assert_eq!(b.get("GOOGLE_CLOUD_PROJECT"), "readers-test");
    assert_eq!(
        b.get("PUBSUB_EMULATOR_HOST"),
        endpoint.trim_start_matches("http://")
    );
    let token = unique("google-pubsub");
    b.python("google-pubsub", &token).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{endpoint}/v1/projects/readers-test/subscriptions/{}:pull",
        b.subscription()
    );
    expect_tokens("pubsub subscription", &[&token], || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let out: serde_json::Value = http
                .post(&url)
                .json(&serde_json::json!({"maxMessages": 10, "returnImmediately": true}))
                .send()
                .await
                .expect("pull")
                .json()
                .await
                .expect("pull answer");
            out["receivedMessages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["message"]["data"].as_str())
                .filter_map(|d| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.decode(d).ok()
                })
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .collect()
        }
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn sqs_binding_configures_the_aws_sdk() {
    let moto = Moto::new();
    let endpoint = moto.endpoint.clone();
    let secret = &moto.secret;
    let credentials = moto.credentials();
    let secrets: &[(&str, &[(&str, &str)])] = &[("aws", &credentials)];
    let b = Bound::new("readers-sqs", &format!("    - {}", moto.env), secrets).await;
    assert_eq!(b.get("AWS_ENDPOINT_URL_SQS"), endpoint);
    assert_eq!(b.get("AWS_SECRET_ACCESS_KEY"), secret);
    assert!(
        !b.data.contains_key("AWS_SESSION_TOKEN"),
        "no session token in the referenced Secret"
    );
    let token = unique("aws-sdk");
    b.python("aws-sqs", &token).await;
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let url = sqs
        .get_queue_url()
        .queue_name(b.subscription())
        .send()
        .await
        .expect("subscription queue")
        .queue_url
        .expect("queue url");
    expect_tokens("sqs subscription queue", &[&token], || {
        let (sqs, url) = (sqs.clone(), url.clone());
        async move {
            let out = sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            out.messages()
                .iter()
                .filter_map(|m| m.body().map(str::to_string))
                .collect()
        }
    })
    .await;
    b.stop().await;
}

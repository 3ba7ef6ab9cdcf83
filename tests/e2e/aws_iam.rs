//! Permission and credential errors on AWS, proven against a moto server that enforces IAM: a
//! private moto (`SWITCHYARD_MOTO_SERVER`) started with `INITIAL_NO_AUTH_ACTION_COUNT`, so the
//! IAM users and policies this test creates unsigned are the last requests it accepts without a
//! valid signature; from then on every SQS and SNS call is checked against those policies.
//!
//! Google Pub/Sub's emulator has no IAM: its `PERMISSION_DENIED` and `UNAUTHENTICATED` mappings
//! are covered at unit level only.

use std::process::Stdio;
use std::time::Duration;

use switchyard::api::MessageBroker;
use switchyard::api::conditions::reasons;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A moto server of its own that enforces IAM after `unsigned` requests.
struct Moto {
    port: u16,
    child: tokio::process::Child,
}

impl Moto {
    async fn start(unsigned: usize) -> Self {
        let port = free_port();
        let child = tokio::process::Command::new(env_var("SWITCHYARD_MOTO_SERVER"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", unsigned.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        // A TCP connect, not a request: every request counts against `unsigned`.
        wait_until(Duration::from_secs(30), "moto listens", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self { port, child }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One IAM query-API call, sent unsigned (accepted only within the first `unsigned`).
    async fn iam(&self, params: &[(&str, &str)]) -> String {
        let resp = reqwest::Client::new()
            .post(self.endpoint())
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=setup",
            )
            .form(&[params, &[("Version", "2010-05-08")]].concat())
            .send()
            .await
            .expect("IAM call sent");
        let status = resp.status();
        let body = resp.text().await.expect("IAM response");
        assert!(status.is_success(), "IAM {params:?}: {status} {body}");
        body
    }

    /// An IAM user with `policy`, and its access key `(id, secret)`. Three IAM calls.
    async fn user(&self, name: &str, policy: serde_json::Value) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", name)])
            .await;
        let key = self
            .iam(&[("Action", "CreateAccessKey"), ("UserName", name)])
            .await;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "switchyard"),
            ("PolicyDocument", &policy.to_string()),
        ])
        .await;
        let field = |tag: &str| {
            key.split_once(&format!("<{tag}>"))
                .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
                .map(|(v, _)| v.to_string())
                .unwrap_or_else(|| panic!("no {tag} in {key}"))
        };
        (field("AccessKeyId"), field("SecretAccessKey"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn manifest(endpoint: &str, secret: &str) -> String {
    format!(
        "apiVersion: switchyard.dev/v1alpha1\nkind: MessageBroker\nmetadata: {{name: bus}}\nspec:\n  topics:\n    - name: orders\n      subscriptions: [{{name: billing}}]\n  envs:\n    - {{slug: dev, type: AwsSqs, awsSqs: {{region: us-east-1, endpoint: \"{endpoint}\", credentialsSecretRef: {{name: {secret}}}}}}}\n"
    )
}

/// The env's first condition with `reason`, as its message.
fn env_reason(mb: &MessageBroker, reason: &str) -> Option<String> {
    mb.status
        .as_ref()?
        .envs
        .iter()
        .flat_map(|e| &e.conditions)
        .find(|c| c.reason == reason)
        .map(|c| c.message.clone())
}

#[tokio::test]
async fn sqs_access_denied_names_the_missing_action_and_a_bad_key_fails_authentication() {
    // Two users, three IAM calls each: then IAM is enforced.
    let moto = Moto::start(6).await;
    let (denied_id, denied_secret) = moto
        .user(
            "no-topics",
            serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["sqs:*", "sns:*"], "Resource": "*"},
                {"Effect": "Deny", "Action": "sns:CreateTopic", "Resource": "*"}]}),
        )
        .await;
    let (full_id, full_secret) = moto
        .user(
            "provisioner",
            serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["sqs:*", "sns:*"], "Resource": "*"}]}),
        )
        .await;

    let (client, ns) = setup("aws-iam").await;
    let creds = |id: &str, secret: &str| {
        [
            ("accessKeyId", id.to_string()),
            ("secretAccessKey", secret.to_string()),
        ]
    };
    let put = async |name: &str, c: [(&str, String); 2]| {
        let pairs: Vec<(&str, &str)> = c.iter().map(|(k, v)| (*k, v.as_str())).collect();
        put_secret(&client, &ns, name, &pairs).await;
    };
    put("aws", creds(&denied_id, &denied_secret)).await;
    let ctl = start_real_controller(client.clone(), &ns);

    // The policy denies sns:CreateTopic: PermissionDenied, naming it.
    apply_mb(&client, &ns, &manifest(&moto.endpoint(), "aws")).await;
    let mb = wait_for_mb(&client, &ns, "bus", TIMEOUT, "PermissionDenied", |mb| {
        env_reason(mb, reasons::PERMISSION_DENIED).is_some()
    })
    .await;
    let message = env_reason(&mb, reasons::PERMISSION_DENIED).unwrap_or_default();
    assert!(
        message.contains("sns:CreateTopic"),
        "the reason names the missing action: {message}"
    );
    assert!(!message.contains(&denied_secret), "{message}");
    assert!(condition_true(&mb, "Stalled"), "needs a change: Stalled");

    // An access key moto never issued: AuthenticationFailed.
    put("aws", creds("AKIAIOSFODNN7EXAMPLE", "not-a-real-secret")).await;
    let mb = wait_for_mb(&client, &ns, "bus", TIMEOUT, "AuthenticationFailed", |mb| {
        env_reason(mb, reasons::AUTHENTICATION_FAILED).is_some()
    })
    .await;
    assert!(condition_true(&mb, "Stalled"));

    // The user whose policy allows it: the rotation is picked up and the env provisions.
    put("aws", creds(&full_id, &full_secret)).await;
    wait_ready(&client, &ns, "bus", TIMEOUT).await;
    ctl.stop().await;
}

//! `switchyard plan` and `switchyard check` as a CI job runs them: the real binary against the
//! real API server and brokers. Plan and controller must agree: after the controller applies a
//! manifest, planning it again reports nothing to do.

use std::process::Output;
use std::time::Duration;

use crate::support::*;

fn manifest(name: &str, retention: &str, env_block: &str) -> String {
    format!(
        r#"apiVersion: switchyard.dev/v1alpha1
kind: MessageBroker
metadata: {{name: {name}}}
spec:
  topics:
    - name: order-created
      retention: {retention}
      subscriptions: [{{name: billing}}, {{name: shipping, deadLetter: {{maxDeliveryAttempts: 5}}}}]
  envs:
{env_block}
"#
    )
}

fn redis_env() -> String {
    format!(
        "    - {{slug: dev, type: Redis, redis: {{url: \"{}\"}}}}",
        env_var("SWITCHYARD_REDIS_URL")
    )
}

fn pubsub_env() -> String {
    format!(
        "    - {{slug: dev, type: GooglePubSub, googlePubSub: {{projectId: switchyard-test, endpoint: \"{}\"}}}}",
        env_var("SWITCHYARD_PUBSUB_ENDPOINT")
    )
}

pub(crate) fn write_manifest(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

pub(crate) mod tempfile_path {
    /// A manifest file removed on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("{}.yaml", crate::support::unique("manifest")));
            std::fs::write(&p, text).expect("write manifest");
            TempPath(p)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

pub(crate) async fn switchyard(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .await
        .expect("switchyard runs")
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn offline_plan_validates_with_the_api_servers_rules() {
    let good = write_manifest(&manifest("bus", "168h", &redis_env()));
    let out = switchyard(&["plan", "--offline", "-f", good.0.to_str().expect("path")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let bad = write_manifest(&manifest("bus", "7d", "    - {slug: dev, type: Redis}"));
    let out = switchyard(&["plan", "--offline", "-f", bad.0.to_str().expect("path")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("spec.topics[0].retention"), "{t}");
}

#[tokio::test]
async fn plan_create_apply_noop_change_and_swap_against_real_brokers() {
    let (client, ns) = setup("plan").await;
    let m1 = write_manifest(&manifest("bus", "168h", &redis_env()));
    let path = m1.0.to_str().expect("path").to_string();

    // Nothing exists yet: creates, exit 2, JSON that parses.
    let out = switchyard(&["plan", "-n", &ns, "-f", &path]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("+ create"), "{}", text(&out));
    let out = switchyard(&["plan", "-n", &ns, "-f", &path, "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan -o json parses");
    let actions = json["brokers"][0]["envs"][0]["plan"]["actions"]
        .as_array()
        .expect("actions")
        .len();
    assert!(
        actions >= 4,
        "stream, two groups and a dead-letter stream: {json}"
    );

    // The controller applies the same manifest; plan then has nothing to do.
    let ctl = start_real_controller(client.clone(), &ns);
    let yaml = std::fs::read_to_string(&path).expect("read");
    apply_mb(&client, &ns, &yaml).await;
    wait_ready(&client, &ns, "bus", Duration::from_secs(30)).await;
    let out = switchyard(&["plan", "-n", &ns, "-f", &path]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "plan after apply must be a no-op:\n{}",
        text(&out)
    );
    assert!(text(&out).contains("nothing to do"));

    // A change: another retention. Redis records it as a setting to update.
    let m2 = write_manifest(&manifest("bus", "24h", &redis_env()));
    let out = switchyard(&["plan", "-n", &ns, "-f", m2.0.to_str().expect("path")]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("~ update"), "{}", text(&out));

    // A swap to Pub/Sub: provisioning on the new broker and retirement on the old.
    let m3 = write_manifest(&manifest("bus", "168h", &pubsub_env()));
    let out = switchyard(&["plan", "-n", &ns, "-f", m3.0.to_str().expect("path")]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("swap Redis → GooglePubSub"), "{t}");
    assert!(
        t.contains("after the binding flips, on the old broker"),
        "{t}"
    );
    assert!(
        t.contains("= retain"),
        "Retain policy keeps the old side: {t}"
    );
    ctl.stop().await;
}

#[tokio::test]
async fn plan_refuses_a_conflict_and_check_reports_connectivity() {
    // A foreign stream with the derived name: refused with Conflict, exit 1.
    let ns = unique("plan-conflict");
    let url = env_var("SWITCHYARD_REDIS_URL");
    let redis = ::redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let stream = format!("{ns}:bus:order-created");
    let _: String = ::redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    // Marked as another MessageBroker's in the operator's Redis registry.
    let _: i64 = ::redis::cmd("HSET")
        .arg(switchyard::brokers::redis::OWNERS_KEY)
        .arg(format!("topic/{stream}"))
        .arg("elsewhere/other-bus")
        .query_async(&mut conn)
        .await
        .expect("hset");
    let m = write_manifest(&manifest("bus", "168h", &redis_env()).replace(
        "metadata: {name: bus}",
        &format!("metadata: {{name: bus, namespace: {ns}}}"),
    ));
    let out = switchyard(&[
        "plan",
        "--secrets-from-env",
        "-f",
        m.0.to_str().expect("path"),
    ])
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("! refused") && t.contains("Conflict") && t.contains("elsewhere/other-bus"),
        "{t}"
    );

    // check: Connected, then a wrong password on the protected server.
    let ok = write_manifest(&manifest("bus", "168h", &redis_env()));
    let out = switchyard(&[
        "check",
        "--secrets-from-env",
        "-f",
        ok.0.to_str().expect("path"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("Connected"));

    let auth_env = format!(
        "    - {{slug: dev, type: Redis, redis: {{url: \"{}\", passwordSecretRef: {{name: redis-cred, key: password}}}}}}",
        env_var("SWITCHYARD_REDIS_AUTH_URL")
    );
    let bad = write_manifest(&manifest("bus", "168h", &auth_env));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "check",
            "--secrets-from-env",
            "-f",
            bad.0.to_str().expect("path"),
        ])
        .env(
            "SWITCHYARD_SECRET_REDIS_CRED__PASSWORD",
            "wrong-password-distinctive",
        )
        .output()
        .await
        .expect("runs");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("AuthenticationFailed"), "{t}");
    assert!(
        !t.contains("wrong-password-distinctive"),
        "a secret value was printed: {t}"
    );
}

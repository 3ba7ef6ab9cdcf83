//! `switchyard publish` and `switchyard consume` as a user runs them: the real binary, a binding
//! projected into a directory as the kubelet does, a real broker, JSON lines out.

use crate::support::*;

async fn switchyard(args: &[&str]) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .await
        .expect("run switchyard");
    assert!(
        out.status.success(),
        "switchyard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn publish_and_consume_through_a_projected_binding() {
    let env = format!(
        "{{slug: prd, type: Redis, redis: {{url: \"{}\"}}}}",
        env_var("SWITCHYARD_REDIS_URL")
    );
    let (client, ctl) = crate::client::provisioned("cli-redis", &env).await;
    let dir = std::env::temp_dir().join(unique("sy-cli-binding"));
    project(&dir, client.binding().entries());
    let binding = dir.to_string_lossy().to_string();

    let published = switchyard(&[
        "publish",
        "--binding",
        &binding,
        "orders",
        "-m",
        "one",
        "-m",
        "two",
        "-k",
        "c-1",
        "-H",
        "trace=abc",
    ])
    .await;
    assert_eq!(published.len(), 2);
    let ids: Vec<&str> = published
        .iter()
        .map(|p| p["id"].as_str().expect("id"))
        .collect();

    let consumed = switchyard(&[
        "consume",
        "--binding",
        &binding,
        "orders",
        "shipping",
        "--count",
        "2",
    ])
    .await;
    assert_eq!(consumed.len(), 2, "{consumed:?}");
    for (c, (id, payload)) in consumed.iter().zip(ids.iter().zip(["one", "two"])) {
        assert_eq!(c["id"], *id);
        assert_eq!(c["payload"], payload);
        assert_eq!(c["key"], "c-1");
        assert_eq!(c["headers"]["trace"], "abc");
        assert_eq!(c["attempt"], 1);
    }
    // Acked: a second consumer finds nothing and stops after the idle wait.
    let again = switchyard(&[
        "consume",
        "--binding",
        &binding,
        "orders",
        "shipping",
        "--idle",
        "1s",
    ])
    .await;
    assert!(again.is_empty(), "{again:?}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
    ctl.stop().await;
}

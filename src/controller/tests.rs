//! Unit tests of the pure parts of the controller.

use super::Config;
use super::reconcile::{EVENT_NOTE_MAX, event_note, validate};
use super::status::{Verdict, env_summary, provisioned_binding, verdict};
use crate::api::conditions::{Desired, merge, reasons, types};
use crate::api::{BindingStatus, BrokerType, EnvStatus, MessageBrokerSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn spec(yaml: &str) -> MessageBrokerSpec {
    serde_norway::from_str(yaml).expect("test spec parses")
}

const TWO_ENVS: &str = r#"
topics: [{name: orders}]
envs:
  - {slug: prd, type: Kafka, kafka: {bootstrapServers: ["k:9092"]}}
  - {slug: dev, type: Redis, redis: {url: "redis://r:6379"}}
"#;

fn env_status(slug: &str, ready: bool) -> EnvStatus {
    let t = Time("2026-01-01T00:00:00Z".parse().expect("time"));
    let conds = [types::CONNECTED, types::TOPICS_READY, types::BINDING_READY].map(|c| {
        Desired::new(
            c,
            ready,
            if ready {
                reasons::RECONCILED
            } else {
                reasons::UNREACHABLE
            },
            "m",
        )
    });
    EnvStatus {
        slug: slug.into(),
        broker_type: Some(BrokerType::Kafka),
        conditions: merge(&[], &conds, Some(1), &t),
        ..Default::default()
    }
}

#[test]
fn ready_only_when_every_env_is_ready() {
    let s = spec(TWO_ENVS);
    assert!(matches!(
        verdict(
            &s,
            &[env_status("prd", true), env_status("dev", true)],
            None,
            None
        ),
        Verdict::Ready(_)
    ));
    match verdict(
        &s,
        &[env_status("prd", true), env_status("dev", false)],
        None,
        None,
    ) {
        Verdict::Progressing(reason, msg) => {
            assert_eq!(reason, reasons::UNREACHABLE);
            assert!(msg.starts_with("env dev"), "{msg}");
        }
        other => panic!("expected progressing, got {other:?}"),
    }
    assert!(matches!(
        verdict(&s, &[env_status("prd", true)], None, None),
        Verdict::Progressing(..)
    ));
}

#[test]
fn stalled_wins_over_progressing() {
    let s = spec(TWO_ENVS);
    let v = verdict(
        &s,
        &[env_status("prd", true)],
        Some((reasons::PARTITION_DECREASE.into(), "no".into())),
        Some("x".into()),
    );
    assert_eq!(
        v,
        Verdict::Stalled(reasons::PARTITION_DECREASE.into(), "no".into())
    );
}

#[test]
fn summary_uses_the_serving_type() {
    let s = spec(TWO_ENVS);
    let mut prd = env_status("prd", true);
    prd.broker_type = Some(BrokerType::RabbitMQ); // mid-swap: still served by RabbitMQ
    assert_eq!(env_summary(&s, &[prd]), "prd:RabbitMQ dev:Redis");
}

#[test]
fn the_provisioned_service_binding_is_the_first_env_with_a_binding() {
    let prd = env_status("prd", false);
    let mut dev = env_status("dev", true);
    assert_eq!(provisioned_binding(&[prd.clone(), dev.clone()]), None);
    dev.binding = Some(BindingStatus {
        name: "bus-dev".into(),
        hash: "h".into(),
    });
    let mut prd_bound = prd.clone();
    prd_bound.binding = Some(BindingStatus {
        name: "bus-prd".into(),
        hash: "h".into(),
    });
    let name = |envs: &[EnvStatus]| provisioned_binding(envs).map(|b| b.name);
    assert_eq!(name(&[prd, dev.clone()]).as_deref(), Some("bus-dev"));
    assert_eq!(name(&[prd_bound, dev]).as_deref(), Some("bus-prd"));
}

#[test]
fn event_notes_are_cut_to_the_api_limit_on_a_character_boundary() {
    assert_eq!(event_note("short".into()), "short");
    let exact = "a".repeat(EVENT_NOTE_MAX);
    assert_eq!(event_note(exact.clone()), exact);
    // Multi-byte characters straddle the limit: the cut must not split one.
    let long = "é".repeat(EVENT_NOTE_MAX);
    let cut = event_note(long);
    assert!(cut.len() <= EVENT_NOTE_MAX, "{} bytes", cut.len());
    assert!(cut.ends_with('…') && cut.trim_end_matches('…').chars().all(|c| c == 'é'));
}

#[test]
fn validate_rejects_an_env_without_its_block() {
    let mut s = spec(TWO_ENVS);
    s.envs[0].kafka = None;
    let err = validate(&s).expect_err("invalid");
    assert!(err.contains("prd") && err.contains("Kafka"), "{err}");
    assert!(validate(&spec(TWO_ENVS)).is_ok());
}

#[test]
fn an_env_selection_manages_only_its_envs() {
    let c = Config {
        envs: Some(["prd".to_string(), "dev".to_string()].into()),
        ..Config::default()
    };
    assert!(c.manages("prd") && !c.manages("stg"));
    assert!(Config::default().manages("stg"));
}

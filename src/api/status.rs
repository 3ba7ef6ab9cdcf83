//! Status of a MessageBroker, as the controller writes it.
//!
//! Conditions follow the kstatus conventions (`Ready`, `Reconciling`, `Stalled`) so kubectl,
//! Argo CD and Flux read health the same way; each env carries its own `Connected`,
//! `TopicsReady` and `BindingReady`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

use super::spec::BrokerType;

/// Observed state of a MessageBroker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageBrokerStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, following kstatus.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// One line per env, such as `prd:Kafka dev:Redis`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env_summary: String,
    /// Number of logical topics in the spec.
    #[serde(default)]
    pub topic_count: i32,
    /// The backlogs of every subscription of every env added up, where the brokers tell
    /// (`kubectl get mb -o wide`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub backlog: Option<u64>,
    /// Per-environment state.
    #[serde(default)]
    pub envs: Vec<EnvStatus>,
    /// The binding Secret of the first env (in spec order) that has one: this makes the
    /// MessageBroker a Provisioned Service of the Service Binding spec, so a `ServiceBinding`
    /// can name the MessageBroker itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<ProvisionedBinding>,
}

/// `status.binding` of the Service Binding spec's Provisioned Service duck type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct ProvisionedBinding {
    /// Name of the binding Secret, in the MessageBroker's namespace.
    pub name: String,
}

/// Observed state of one environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvStatus {
    /// The env's slug.
    pub slug: String,
    /// The broker type that currently serves this env (the binding points at it).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub broker_type: Option<BrokerType>,
    /// Connected, TopicsReady and BindingReady.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Each logical topic with its broker-side names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicStatus>,
    /// The connection Secret apps read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<BindingStatus>,
    /// Broker-side objects this resource created (or adopted) and therefore owns, as `kind/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owned: Vec<String>,
    /// Objects no longer in the spec that were left on the broker (Retain, or blocked retirement).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<String>,
    /// Remarks about the spec on this broker (e.g. partitions ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The endpoint that serves this env (non-secret settings), kept so a swap can retire it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub active: Option<serde_json::Value>,
    /// The current or last broker swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapStatus>,
}

/// One logical topic on one env.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Logical topic name.
    pub name: String,
    /// Broker-side name.
    pub physical_name: String,
    /// Provisioned and matching the spec.
    pub ready: bool,
    /// Why it is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Subscriptions with their broker-side names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionStatus>,
}

/// A subscription's broker-side names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// Logical subscription name.
    pub name: String,
    /// Broker-side name (queue, consumer group, subscription).
    pub physical_name: String,
    /// Broker-side dead-letter destination, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// Messages not acknowledged yet, where the broker tells. Rewritten only when it moves by a
    /// meaningful amount (see the README), so a steady backlog costs no status write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub backlog: Option<u64>,
    /// Messages in the dead-letter destination, where the broker tells; rewritten likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub dead_letters: Option<u64>,
}

/// The connection Secret of an env.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingStatus {
    /// Secret name (`<broker>-<slug>`).
    pub name: String,
    /// Hash of the Secret's content; also on the Secret as an annotation.
    pub hash: String,
}

/// Phases of a broker swap.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SwapPhase {
    /// The new broker is being provisioned; the binding still points at the old one.
    Provisioning,
    /// The new broker is ready; the binding is being flipped.
    Switching,
    /// The binding points at the new broker; the old side is being retired.
    Retiring,
    /// Done.
    Complete,
}

/// A broker swap of one env.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwapStatus {
    /// The type before the swap.
    pub from: BrokerType,
    /// The type after the swap.
    pub to: BrokerType,
    /// Where the swap is.
    pub phase: SwapPhase,
    /// When the swap started (RFC 3339).
    pub started_at: String,
    /// When the binding flipped (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<String>,
    /// Why the swap is waiting, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The old side's endpoint settings (non-secret), needed to retire it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub old: Option<serde_json::Value>,
    /// Objects the old side owned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub old_owned: Vec<String>,
    /// What the old side still holds for its subscriptions while retirement waits for apps to
    /// drain it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainingStatus>,
}

/// Messages an old side's object still holds for its subscribers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainingStatus {
    /// The logical name: `topic/subscription` where the broker keeps one object per
    /// subscription (RabbitMQ, Pub/Sub, SQS), else `topic`, counting what its slowest
    /// subscription has not consumed (Kafka, Redis).
    pub name: String,
    /// Messages not consumed yet.
    #[schemars(extend("format" = "int64"))]
    pub messages: u64,
}

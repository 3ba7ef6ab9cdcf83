//! Switchyard: a Kubernetes operator that turns `MessageBroker` resources into topics, queues
//! and subscriptions on Kafka, Redis, RabbitMQ, Google Pub/Sub and AWS SQS, and publishes a
//! per-environment connection Secret that apps read.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod binding;
pub mod brokers;
pub mod client;
pub mod controller;
pub mod crd;
pub mod error;
pub mod failure;
pub mod leader;
pub mod metrics;
pub mod preview;
pub mod secrets;
pub mod server;
pub mod telemetry;
pub mod validation;

pub use error::{Error, Result};

#[cfg(test)]
mod proptests;

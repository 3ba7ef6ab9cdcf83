//! RabbitMq backend (placeholder until the backend lands: maps topics only, cannot connect).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    Backend, BrokerError, BrokerErrorKind, Capabilities, ConnectionInfo, DesiredObject,
    DesiredState, ObjectKey, ObjectKind, Scope, naming,
};
use crate::Error;
use crate::api::{RabbitMqSpec, TopicSpec};
use crate::secrets::ResolvedSecrets;

/// What this broker can change in place.
pub const CAPABILITIES: Capabilities = Capabilities {
    partitions: false,
    immutable_config: &[],
};

/// The objects the spec asks for on this broker.
pub fn desired(
    scope: &Scope,
    _spec: &RabbitMqSpec,
    topics: &[TopicSpec],
) -> Result<DesiredState, Error> {
    let objects: Vec<DesiredObject> = topics
        .iter()
        .map(|t| DesiredObject {
            key: ObjectKey::new(
                ObjectKind::Topic,
                naming::physical(
                    &naming::RABBITMQ,
                    &[&scope.namespace, &scope.name, &t.name],
                    0,
                ),
            ),
            logical: t.name.clone(),
            parent: None,
            partitions: None,
            config: BTreeMap::new(),
        })
        .collect();
    let names = objects
        .iter()
        .map(|o| (o.logical.clone(), o.key.name.clone()))
        .collect();
    Ok(DesiredState {
        objects,
        notes: Vec::new(),
        names,
    })
}

/// Connection details for the binding Secret.
pub fn connection_info(
    _spec: &RabbitMqSpec,
    _secrets: &ResolvedSecrets,
) -> Result<ConnectionInfo, Error> {
    Ok(ConnectionInfo {
        provider: "rabbitmq".into(),
        ..Default::default()
    })
}

/// A client for this endpoint.
pub async fn connect(
    _spec: &RabbitMqSpec,
    _secrets: &ResolvedSecrets,
) -> Result<Arc<dyn Backend>, BrokerError> {
    Err(BrokerError::new(
        BrokerErrorKind::Rejected,
        "this broker type is not supported yet",
    ))
}

//! The [`Backend`] for one RabbitMQ endpoint + credentials: one pooled AMQP connection shared by
//! every MessageBroker that uses it, a fresh channel per lane of work (a channel error such as
//! PRECONDITION_FAILED closes only that channel), and the management API for observation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

use super::endpoint::{Access, Endpoint};
use super::management::{Management, arg_string};
use super::pooled::{ConnectFailure, Pooled};
use super::{
    ARG_DELIVERY_LIMIT, ARG_MESSAGE_TTL, ARG_OWNER, BINDING_KEY, CFG_DURABLE, CFG_EXCHANGE_TYPE,
    Entity, MANAGED_QUEUE_ARGS, UNSET, rejected,
};
use crate::api::{BrokerType, RabbitMqSpec};
use crate::brokers::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, DesiredObject, ObjectKey,
    Observed, ObservedObject, Scope,
};
use crate::secrets::ResolvedSecrets;

/// Time allowed to open the AMQP connection, and for `check` as a whole.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one AMQP operation (declares of quorum queues take a while under load).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Channels worked in parallel within one batch.
const LANES: usize = 8;

/// A RabbitMQ endpoint with one set of credentials.
pub(crate) struct RabbitMqBackend {
    endpoint: Endpoint,
    management: Option<Management>,
    connection: Pooled,
    /// Without the management API, arguments cannot be read back: remember what this process
    /// declared (or verified by a successful redeclare) so observe can report it.
    declared: Mutex<HashMap<ObjectKey, BTreeMap<String, String>>>,
    /// Bound on `check()` (`--check-timeout`).
    check_timeout: Duration,
}

/// One unit of broker work run on a lane.
enum Op<'a> {
    Declare {
        owner: &'a str,
        object: &'a DesiredObject,
    },
    Delete(&'a ObjectKey),
    ProbeExchange(&'a str),
    ProbeQueue(&'a str),
    Bind {
        exchange: &'a str,
        queue: &'a str,
    },
    Unsupported(&'static str),
}

/// What a probe found: `Some(ready messages)` when the object exists (0 for exchanges).
type Probe = Option<u64>;

/// A sequence of operations on one channel, reopened after a channel error.
struct Lane<'b> {
    backend: &'b RabbitMqBackend,
    channel: Option<Channel>,
}

impl Lane<'_> {
    async fn channel(&mut self) -> Result<&Channel, BrokerError> {
        if let Some(ch) = self.channel.take()
            && ch.status().connected()
        {
            return Ok(self.channel.insert(ch));
        }
        let ch = self.backend.channel().await?;
        Ok(self.channel.insert(ch))
    }

    async fn close(self) {
        if let Some(ch) = self.channel
            && ch.status().connected()
        {
            let _ = ch.close(200, "OK".into()).await;
        }
    }
}

impl RabbitMqBackend {
    pub(crate) fn new(spec: &RabbitMqSpec, secrets: &ResolvedSecrets) -> Result<Self, BrokerError> {
        let endpoint = Endpoint::from_spec(spec)?;
        let access = Access::resolve(spec, secrets)?;
        let management = spec
            .management_url
            .as_deref()
            .map(|url| {
                Management::new(
                    url,
                    &endpoint.vhost,
                    access.credentials.as_ref(),
                    access.ca_pem.as_deref(),
                )
            })
            .transpose()?;
        Ok(RabbitMqBackend {
            connection: Pooled::new(
                endpoint.amqp_uri(access.credentials.as_ref()),
                access.tls,
                "switchyard-operator",
            ),
            endpoint,
            management,
            declared: Mutex::new(HashMap::new()),
            check_timeout: CONNECT_TIMEOUT,
        })
    }

    /// How long [`Backend::check`] waits (`--check-timeout`).
    pub(crate) fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// The pooled connection, (re)connecting when there is none or it died.
    async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        self.connection
            .get(CONNECT_TIMEOUT)
            .await
            .map_err(|e| match e {
                ConnectFailure::Runtime(e) => {
                    BrokerError::new(BrokerErrorKind::Other, format!("AMQP runtime: {e}"))
                }
                ConnectFailure::Timeout(t) => BrokerError::new(
                    BrokerErrorKind::Timeout,
                    format!(
                        "no AMQP connection to {}:{} within {}s",
                        self.endpoint.host,
                        self.endpoint.port,
                        t.as_secs()
                    ),
                ),
                ConnectFailure::Refused(e) => classify_connect(&e, &self.endpoint),
            })
    }

    /// A fresh channel on the pooled connection; reconnects once if the connection turns out dead.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let conn = self.connection().await?;
        match conn.create_channel().await {
            Ok(ch) => Ok(ch),
            Err(first) => {
                if conn.status().connected() {
                    return Err(classify_operation(&first, "open channel"));
                }
                let conn = self.connection().await?;
                conn.create_channel()
                    .await
                    .map_err(|e| classify_operation(&e, "open channel"))
            }
        }
    }

    /// Run operations on up to [`LANES`] channels in parallel; results in input order.
    async fn run_ops(&self, ops: &[Op<'_>]) -> Vec<Result<Probe, BrokerError>> {
        let lanes = (0..LANES.min(ops.len())).map(|lane_no| async move {
            let mut lane = Lane {
                backend: self,
                channel: None,
            };
            let mut out = Vec::new();
            for i in (lane_no..ops.len()).step_by(LANES) {
                out.push((i, self.run_op(&mut lane, &ops[i]).await));
            }
            lane.close().await;
            out
        });
        let mut results: Vec<Option<Result<Probe, BrokerError>>> =
            (0..ops.len()).map(|_| None).collect();
        for (i, r) in futures::future::join_all(lanes).await.into_iter().flatten() {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BrokerError::new(BrokerErrorKind::Other, "not run"))))
            .collect()
    }

    async fn run_op(&self, lane: &mut Lane<'_>, op: &Op<'_>) -> Result<Probe, BrokerError> {
        let what = describe(op);
        let work = async {
            match op {
                Op::Declare { owner, object } => {
                    self.declare(lane, owner, object).await.map(|()| None)
                }
                Op::Delete(key) => self.delete(lane, key).await.map(|()| None),
                Op::ProbeExchange(name) => {
                    let ch = lane.channel().await?;
                    let passive = ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    match ch
                        .exchange_declare(
                            (*name).into(),
                            ExchangeKind::Topic,
                            passive,
                            FieldTable::default(),
                        )
                        .await
                    {
                        Ok(()) => Ok(Some(0)),
                        Err(e) => absent_if_not_found(classify_operation(&e, &what)),
                    }
                }
                Op::ProbeQueue(name) => {
                    let ch = lane.channel().await?;
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    match ch
                        .queue_declare((*name).into(), passive, FieldTable::default())
                        .await
                    {
                        Ok(q) => Ok(Some(u64::from(q.message_count()))),
                        Err(e) => absent_if_not_found(classify_operation(&e, &what)),
                    }
                }
                Op::Bind { exchange, queue } => {
                    let ch = lane.channel().await?;
                    ch.queue_bind(
                        (*queue).into(),
                        (*exchange).into(),
                        BINDING_KEY.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map(|()| Some(0))
                    .map_err(|e| classify_operation(&e, &what))
                }
                Op::Unsupported(why) => Err(rejected(*why)),
            }
        };
        tokio::time::timeout(OPERATION_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                // The channel may be stuck mid-operation: do not reuse it.
                lane.channel = None;
                Err(BrokerError::new(
                    BrokerErrorKind::Timeout,
                    format!("{what}: no answer within {}s", OPERATION_TIMEOUT.as_secs()),
                ))
            })
    }

    async fn declare(
        &self,
        lane: &mut Lane<'_>,
        owner: &str,
        object: &DesiredObject,
    ) -> Result<(), BrokerError> {
        let entity = Entity::of(&object.key)
            .ok_or_else(|| rejected(format!("{}: not a RabbitMQ object", object.key)))?;
        let what = format!("declare {}", object.key);
        let ch = lane.channel().await?;
        let result = match &entity {
            Entity::Exchange(name) => {
                let kind = match object.config.get(CFG_EXCHANGE_TYPE).map(String::as_str) {
                    Some("fanout") => ExchangeKind::Fanout,
                    Some("topic") | None => ExchangeKind::Topic,
                    Some(other) => ExchangeKind::Custom(other.to_string()),
                };
                let mut args = FieldTable::default();
                args.insert(ARG_OWNER.into(), AMQPValue::LongString(owner.into()));
                let options = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                ch.exchange_declare(name.as_str().into(), kind, options, args)
                    .await
            }
            Entity::Queue(name) => {
                let args = queue_arguments(owner, &object.config)?;
                let options = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                ch.queue_declare(name.as_str().into(), options, args)
                    .await
                    .map(|_| ())
            }
            Entity::Binding { exchange, queue } => {
                ch.queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    BINDING_KEY.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            }
        };
        result.map_err(|e| classify_operation(&e, &what))?;
        if let Ok(mut declared) = self.declared.lock() {
            declared.insert(object.key.clone(), object.config.clone());
        }
        Ok(())
    }

    async fn delete(&self, lane: &mut Lane<'_>, key: &ObjectKey) -> Result<(), BrokerError> {
        let entity =
            Entity::of(key).ok_or_else(|| rejected(format!("{key}: not a RabbitMQ object")))?;
        let what = format!("delete {key}");
        let ch = lane.channel().await?;
        let result = match &entity {
            Entity::Exchange(name) => {
                ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            }
            Entity::Queue(name) => {
                // Count again right before deleting: messages may have arrived since observe.
                // (Quorum queues do not support `if-empty` on queue.delete.)
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                match ch
                    .queue_declare(name.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    Ok(q) if q.message_count() > 0 => {
                        return Err(BrokerError::new(
                            BrokerErrorKind::Other,
                            format!(
                                "{key} still holds {} message(s); it is deleted once drained",
                                q.message_count()
                            ),
                        ));
                    }
                    Ok(_) => ch
                        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
            Entity::Binding { exchange, queue } => {
                ch.queue_unbind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    BINDING_KEY.into(),
                    FieldTable::default(),
                )
                .await
            }
        };
        match result.map_err(|e| classify_operation(&e, &what)) {
            Ok(()) => {}
            // Already gone (or its queue/exchange is): deleting it is done.
            Err(e) if e.kind == BrokerErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Ok(mut declared) = self.declared.lock() {
            declared.remove(key);
        }
        Ok(())
    }

    async fn observe_managed(
        &self,
        management: &Management,
        keys: &[ObjectKey],
    ) -> Result<Observed, BrokerError> {
        let entities: Vec<(&ObjectKey, Entity)> = keys
            .iter()
            .filter_map(|k| Entity::of(k).map(|e| (k, e)))
            .collect();
        let want_exchanges = entities
            .iter()
            .any(|(_, e)| matches!(e, Entity::Exchange(_)));
        let want_bindings = entities
            .iter()
            .any(|(_, e)| matches!(e, Entity::Binding { .. }));
        let want_queues = entities
            .iter()
            .any(|(_, e)| !matches!(e, Entity::Exchange(_)));
        let (queues, exchanges, bindings) = futures::try_join!(
            async {
                if want_queues {
                    management.queues().await
                } else {
                    Ok(Vec::new())
                }
            },
            async {
                if want_exchanges {
                    management.exchanges().await
                } else {
                    Ok(Vec::new())
                }
            },
            async {
                if want_bindings {
                    management.bindings().await
                } else {
                    Ok(Vec::new())
                }
            },
        )?;
        let queues: HashMap<&str, _> = queues.iter().map(|q| (q.name.as_str(), q)).collect();
        let exchanges: HashMap<&str, _> = exchanges.iter().map(|x| (x.name.as_str(), x)).collect();
        let bound: HashSet<(&str, &str)> = bindings
            .iter()
            .filter(|b| b.destination_type == "queue" && b.routing_key == BINDING_KEY)
            .map(|b| (b.source.as_str(), b.destination.as_str()))
            .collect();

        // Statistics lag by up to the stats interval: count ready messages over AMQP as well,
        // so a queue that just received messages is never reported empty.
        let queue_names: Vec<&str> = entities
            .iter()
            .filter_map(|(_, e)| match e {
                Entity::Queue(name) if queues.contains_key(name.as_str()) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let probes: Vec<Op<'_>> = queue_names.iter().map(|n| Op::ProbeQueue(n)).collect();
        let mut ready: HashMap<&str, u64> = HashMap::new();
        for (name, result) in queue_names.iter().zip(self.run_ops(&probes).await) {
            if let Some(count) = result? {
                ready.insert(name, count);
            }
        }

        let owner_of =
            |args: &serde_json::Map<String, serde_json::Value>| args.get(ARG_OWNER).map(arg_string);
        let mut observed = Observed::default();
        for (key, entity) in &entities {
            let object = match &entity {
                Entity::Exchange(name) => exchanges.get(name.as_str()).map(|x| ObservedObject {
                    partitions: None,
                    config: BTreeMap::from([
                        (CFG_EXCHANGE_TYPE.to_string(), x.kind.clone()),
                        (CFG_DURABLE.to_string(), x.durable.to_string()),
                    ]),
                    owner: owner_of(&x.arguments),
                    messages: None,
                }),
                Entity::Queue(name) => queues.get(name.as_str()).map(|q| {
                    let mut config: BTreeMap<String, String> = MANAGED_QUEUE_ARGS
                        .iter()
                        .map(|a| {
                            let v = q.arguments.get(*a).map(arg_string);
                            (a.to_string(), v.unwrap_or_else(|| UNSET.to_string()))
                        })
                        .collect();
                    config.insert(CFG_DURABLE.to_string(), q.durable.to_string());
                    let stats = q.messages.unwrap_or(
                        q.messages_ready.unwrap_or(0) + q.messages_unacknowledged.unwrap_or(0),
                    );
                    let amqp_ready = ready.get(name.as_str()).copied().unwrap_or(0);
                    ObservedObject {
                        partitions: None,
                        config,
                        owner: owner_of(&q.arguments),
                        messages: Some(stats.max(amqp_ready)),
                    }
                }),
                Entity::Binding { exchange, queue } => bound
                    .contains(&(exchange.as_str(), queue.as_str()))
                    .then(|| ObservedObject {
                        partitions: None,
                        config: BTreeMap::new(),
                        // A binding belongs to whoever owns the queue it feeds.
                        owner: queues
                            .get(queue.as_str())
                            .and_then(|q| owner_of(&q.arguments)),
                        messages: None,
                    }),
            };
            if let Some(object) = object {
                observed.objects.insert((*key).clone(), object);
            }
        }
        Ok(observed)
    }

    /// Without the management API: passive declares tell existence and ready counts; bindings
    /// whose ends exist are re-declared (idempotent), which also repairs a deleted one.
    async fn observe_passive(&self, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        let entities: Vec<(&ObjectKey, Entity)> = keys
            .iter()
            .filter_map(|k| Entity::of(k).map(|e| (k, e)))
            .collect();
        let mut exchange_names: Vec<&str> = Vec::new();
        let mut queue_names: Vec<&str> = Vec::new();
        for (_, e) in &entities {
            match e {
                Entity::Exchange(x) => exchange_names.push(x),
                Entity::Queue(q) => queue_names.push(q),
                Entity::Binding { exchange, queue } => {
                    exchange_names.push(exchange);
                    queue_names.push(queue);
                }
            }
        }
        exchange_names.sort_unstable();
        exchange_names.dedup();
        queue_names.sort_unstable();
        queue_names.dedup();
        let probes: Vec<Op<'_>> = exchange_names
            .iter()
            .map(|n| Op::ProbeExchange(n))
            .chain(queue_names.iter().map(|n| Op::ProbeQueue(n)))
            .collect();
        let results = self.run_ops(&probes).await;
        let mut exchanges: HashSet<&str> = HashSet::new();
        let mut queues: HashMap<&str, u64> = HashMap::new();
        for (op, result) in probes.iter().zip(results) {
            match (op, result?) {
                (Op::ProbeExchange(n), Some(_)) => {
                    exchanges.insert(n);
                }
                (Op::ProbeQueue(n), Some(count)) => {
                    queues.insert(n, count);
                }
                _ => {}
            }
        }
        let binds: Vec<Op<'_>> = entities
            .iter()
            .filter_map(|(_, e)| match e {
                Entity::Binding { exchange, queue }
                    if exchanges.contains(exchange.as_str())
                        && queues.contains_key(queue.as_str()) =>
                {
                    Some(Op::Bind { exchange, queue })
                }
                _ => None,
            })
            .collect();
        let mut bound: HashSet<(&str, &str)> = HashSet::new();
        for (op, result) in binds.iter().zip(self.run_ops(&binds).await) {
            if let (Op::Bind { exchange, queue }, Ok(_)) = (op, result) {
                bound.insert((exchange, queue));
            }
        }
        let declared = self.declared.lock().map(|d| d.clone()).unwrap_or_default();
        let mut observed = Observed::default();
        for (key, entity) in &entities {
            let exists = match entity {
                Entity::Exchange(x) => exchanges.contains(x.as_str()),
                Entity::Queue(q) => queues.contains_key(q.as_str()),
                Entity::Binding { exchange, queue } => {
                    bound.contains(&(exchange.as_str(), queue.as_str()))
                }
            };
            if !exists {
                continue;
            }
            let messages = match entity {
                Entity::Queue(q) => queues.get(q.as_str()).copied(),
                _ => None,
            };
            observed.objects.insert(
                (*key).clone(),
                ObservedObject {
                    partitions: None,
                    config: declared.get(key).cloned().unwrap_or_default(),
                    owner: None,
                    messages,
                },
            );
        }
        Ok(observed)
    }
}

#[async_trait]
impl Backend for RabbitMqBackend {
    fn broker_type(&self) -> BrokerType {
        BrokerType::RabbitMQ
    }

    async fn check(&self) -> Result<(), BrokerError> {
        let work = async {
            let ch = self.channel().await?;
            let _ = ch.close(200, "OK".into()).await;
            if let Some(m) = &self.management {
                m.check_vhost().await?;
            }
            Ok(())
        };
        tokio::time::timeout(self.check_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::new(
                    BrokerErrorKind::Timeout,
                    format!(
                        "RabbitMQ at {}:{} did not answer within {:?}",
                        self.endpoint.host, self.endpoint.port, self.check_timeout
                    ),
                ))
            })
    }

    async fn observe(&self, _scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        match &self.management {
            Some(m) => self.observe_managed(m, keys).await,
            None => self.observe_passive(keys).await,
        }
    }

    async fn apply(&self, scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome> {
        let owner = scope.owner();
        let ops: Vec<Op<'_>> = actions
            .iter()
            .map(|a| match a {
                Action::Create { object }
                | Action::Adopt { object }
                | Action::Update { object, .. } => Op::Declare {
                    owner: &owner,
                    object,
                },
                Action::AddPartitions { .. } => Op::Unsupported("RabbitMQ has no partitions"),
                Action::Delete { key } => Op::Delete(key),
            })
            .collect();
        // Parents before children: run each run of same-kind actions (a wave) in parallel,
        // waves in order.
        let mut outcomes = Vec::with_capacity(actions.len());
        let mut start = 0;
        while start < actions.len() {
            let wave = wave_of(&actions[start]);
            let end = actions[start..]
                .iter()
                .position(|a| wave_of(a) != wave)
                .map_or(actions.len(), |n| start + n);
            let results = self.run_ops(&ops[start..end]).await;
            for (action, result) in actions[start..end].iter().zip(results) {
                outcomes.push(ActionOutcome {
                    key: action.key().clone(),
                    result: result.map(|_| ()),
                });
            }
            start = end;
        }
        outcomes
    }
}

fn wave_of(action: &Action) -> (crate::brokers::ObjectKind, bool) {
    (action.key().kind, matches!(action, Action::Delete { .. }))
}

fn describe(op: &Op<'_>) -> String {
    match op {
        Op::Declare { object, .. } => format!("declare {}", object.key),
        Op::Delete(key) => format!("delete {key}"),
        Op::ProbeExchange(n) => format!("check exchange {n}"),
        Op::ProbeQueue(n) => format!("check queue {n}"),
        Op::Bind { exchange, queue } => format!("bind {exchange} to {queue}"),
        Op::Unsupported(why) => (*why).to_string(),
    }
}

fn absent_if_not_found(e: BrokerError) -> Result<Probe, BrokerError> {
    if e.kind == BrokerErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Declare arguments from the converged config: numbers as integers, everything else as text,
/// `unset` left out, plus the ownership marker.
fn queue_arguments(
    owner: &str,
    config: &BTreeMap<String, String>,
) -> Result<FieldTable, BrokerError> {
    let mut args = FieldTable::default();
    for name in MANAGED_QUEUE_ARGS {
        let Some(value) = config.get(name).filter(|v| v.as_str() != UNSET) else {
            continue;
        };
        let value = if name == ARG_MESSAGE_TTL || name == ARG_DELIVERY_LIMIT {
            AMQPValue::LongLongInt(
                value
                    .parse()
                    .map_err(|_| rejected(format!("{name} {value:?} is not an integer")))?,
            )
        } else {
            AMQPValue::LongString(value.as_str().into())
        };
        args.insert(ShortString::from(name), value);
    }
    args.insert(ARG_OWNER.into(), AMQPValue::LongString(owner.into()));
    Ok(args)
}

/// The AMQP error a lapin error carries, if any.
fn amqp_error(e: &lapin::Error) -> Option<&lapin::protocol::AMQPError> {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp),
        _ => None,
    }
}

/// Classify a failure to open the connection.
fn classify_connect(e: &lapin::Error, endpoint: &Endpoint) -> BrokerError {
    let at = format!("{}:{}", endpoint.host, endpoint.port);
    if let Some(amqp) = amqp_error(e) {
        let text = amqp.get_message().as_str().to_string();
        let kind = match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => BrokerErrorKind::Authentication,
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            | AMQPErrorKind::Hard(AMQPHardError::INVALIDPATH) => {
                if text.contains("not found") {
                    BrokerErrorKind::NotFound
                } else {
                    BrokerErrorKind::PermissionDenied
                }
            }
            _ => BrokerErrorKind::Other,
        };
        return BrokerError::new(
            kind,
            format!("RabbitMQ at {at} refused the connection: {text}"),
        );
    }
    if let ErrorKind::IOError(io) = e.kind() {
        use std::io::ErrorKind as Io;
        let text = io.to_string();
        let lower = text.to_lowercase();
        let kind = if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
            || lower.contains("unknownissuer")
            || lower.contains("invalid peer")
        {
            BrokerErrorKind::Tls
        } else {
            match io.kind() {
                Io::ConnectionRefused
                | Io::NotFound
                | Io::AddrNotAvailable
                | Io::HostUnreachable
                | Io::NetworkUnreachable
                | Io::ConnectionReset
                | Io::ConnectionAborted => BrokerErrorKind::Unreachable,
                Io::TimedOut => BrokerErrorKind::Timeout,
                Io::InvalidData => BrokerErrorKind::Tls,
                _ if lower.contains("lookup")
                    || lower.contains("resolve")
                    || lower.contains("dns") =>
                {
                    BrokerErrorKind::Unreachable
                }
                _ => BrokerErrorKind::Other,
            }
        };
        return BrokerError::new(kind, format!("cannot connect to RabbitMQ at {at}: {text}"));
    }
    BrokerError::new(
        BrokerErrorKind::Other,
        format!("cannot connect to RabbitMQ at {at}: {e}"),
    )
}

/// Classify a failed channel operation.
fn classify_operation(e: &lapin::Error, what: &str) -> BrokerError {
    if let Some(amqp) = amqp_error(e) {
        let text = amqp.get_message().as_str();
        let kind = match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => BrokerErrorKind::Rejected,
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => BrokerErrorKind::PermissionDenied,
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => BrokerErrorKind::NotFound,
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => BrokerErrorKind::PermissionDenied,
            _ => BrokerErrorKind::Other,
        };
        return BrokerError::new(kind, format!("{what}: {text}"));
    }
    let kind = if e.is_io_error() {
        BrokerErrorKind::Unreachable
    } else {
        BrokerErrorKind::Other
    };
    BrokerError::new(kind, format!("{what}: {e}"))
}

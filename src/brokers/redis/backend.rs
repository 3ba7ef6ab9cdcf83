//! The Redis client side: connectivity and permission checks, observation and apply.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamInfoGroup, StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply,
};
use redis::{Cmd, FromRedisValue, RedisError, RedisResult, Value};
use tokio::sync::Mutex;

use super::errors::{classify, is_allowed_refusal, kind_of};
use super::{CONFIG_KEY, OWNERS_KEY, RETENTION_MS, split_group_key};
use crate::api::BrokerType;
use crate::brokers::{
    Action, ActionOutcome, Backend, BrokerError, BrokerErrorKind, DesiredObject, ObjectKey,
    ObjectKind, Observed, ObservedObject, Scope,
};

/// Bound on `check` as a whole.
/// The check timeout of a backend built without options.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on establishing one connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one command's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A consumer group that exists only for an instant: `XGROUP CREATE … MKSTREAM` is the one
/// command that makes an empty stream without adding an entry, and this group is destroyed
/// right after. Subscription names cannot contain `:`, so it never collides with one.
const MKSTREAM_GROUP: &str = "switchyard:mkstream";

/// A pooled connection to one Redis endpoint with one set of credentials.
pub struct RedisBackend {
    client: redis::Client,
    /// `redis://host:port/db` (no credentials), for messages.
    endpoint: String,
    /// Connected on first use; dropped after an authentication failure so that the next call
    /// dials again instead of keeping a connection the server refused.
    conn: Mutex<Option<ConnectionManager>>,
    check_timeout: Duration,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    pub(super) fn new(client: redis::Client, endpoint: String) -> Self {
        RedisBackend {
            client,
            endpoint,
            conn: Mutex::new(None),
            check_timeout: CHECK_TIMEOUT,
        }
    }

    /// How long [`Backend::check`] waits (`--check-timeout`).
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// The endpoint, without credentials.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn connection(&self) -> Result<Session<'_>, BrokerError> {
        let mut slot = self.conn.lock().await;
        let conn = match slot.as_ref() {
            Some(conn) => conn.clone(),
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let conn = ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(|e| classify(&e, &self.endpoint, "connect"))?;
                *slot = Some(conn.clone());
                conn
            }
        };
        Ok(Session {
            conn,
            endpoint: &self.endpoint,
        })
    }

    /// Forget the connection after the server refused our credentials.
    async fn after(&self, error: Option<&BrokerError>) {
        if error.is_some_and(|e| e.kind == BrokerErrorKind::Authentication) {
            *self.conn.lock().await = None;
        }
    }

    async fn check_inner(&self) -> Result<(), BrokerError> {
        let mut s = self.connection().await?;
        s.query::<String>(&redis::cmd("PING"), "PING").await?;

        // Each probe is a command the operator needs, aimed at a key that does not exist, so it
        // changes nothing: the server answers NOPERM if the ACL forbids it, and otherwise
        // "no such key" or an empty result.
        let probe = format!("switchyard:probe:{}", unique_suffix());
        let mut probes: Vec<(&str, Cmd)> = Vec::new();
        let mut add = |name: &'static str, parts: &[&str]| {
            let mut c = redis::cmd(parts[0]);
            for p in &parts[1..] {
                c.arg(*p);
            }
            probes.push((name, c));
        };
        add("TIME", &["TIME"]);
        add("TYPE", &["TYPE", &probe]);
        add("XGROUP CREATE", &["XGROUP", "CREATE", &probe, "probe", "$"]);
        add("XGROUP DESTROY", &["XGROUP", "DESTROY", &probe, "probe"]);
        add("XINFO GROUPS", &["XINFO", "GROUPS", &probe]);
        add("XRANGE", &["XRANGE", &probe, "-", "+", "COUNT", "1"]);
        add("XLEN", &["XLEN", &probe]);
        add("XTRIM", &["XTRIM", &probe, "MINID", "0"]);
        add("DEL", &["DEL", &probe]);
        add("HMGET", &["HMGET", OWNERS_KEY, &probe]);
        add("HGET", &["HGET", OWNERS_KEY, &probe]);
        add("HDEL", &["HDEL", OWNERS_KEY, &probe]);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (_, c) in &probes {
            pipe.add_command(c.clone());
        }
        let results: Vec<RedisResult<Value>> = pipe
            .query_async(&mut s.conn)
            .await
            .map_err(|e| classify(&e, s.endpoint, "permission probes"))?;
        let mut denied = Vec::new();
        let mut first_detail = None;
        for ((name, _), result) in probes.iter().zip(results) {
            let Err(e) = result else { continue };
            match kind_of(&e) {
                BrokerErrorKind::PermissionDenied => {
                    denied.push(*name);
                    first_detail.get_or_insert_with(|| e.to_string());
                }
                _ if is_allowed_refusal(&e) => {}
                _ => return Err(classify(&e, s.endpoint, name)),
            }
        }
        if !denied.is_empty() {
            return Err(BrokerError::new(
                BrokerErrorKind::PermissionDenied,
                format!(
                    "redis {}: the user may not run {} ({}); it needs PING TIME TYPE DEL XGROUP XINFO XRANGE XLEN XTRIM HSET HMGET HGET HDEL on the keys switchyard:* and <namespace>:<name>:*",
                    s.endpoint,
                    denied.join(", "),
                    first_detail.unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    async fn observe_inner(&self, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        if keys.is_empty() {
            return Ok(Observed::default());
        }
        let mut s = self.connection().await?;
        let fields: Vec<String> = keys.iter().map(ToString::to_string).collect();
        let streams: Vec<&str> = keys
            .iter()
            .filter_map(|k| match k.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => Some(k.name.as_str()),
                ObjectKind::Subscription => split_group_key(&k.name).map(|(stream, _)| stream),
                ObjectKind::Queue | ObjectKind::Binding => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();

        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        pipe.cmd("HMGET").arg(OWNERS_KEY).arg(&fields);
        pipe.cmd("HMGET").arg(CONFIG_KEY).arg(&fields);
        for stream in &streams {
            pipe.cmd("TYPE").arg(*stream);
        }
        let mut replies: Vec<Value> = pipe
            .query_async::<Vec<Value>>(&mut s.conn)
            .await
            .map_err(|e| classify(&e, s.endpoint, "observe"))?;
        if replies.len() != 3 + streams.len() {
            return Err(BrokerError::new(
                BrokerErrorKind::Other,
                format!("redis {}: observe: unexpected reply length", s.endpoint),
            ));
        }
        let types: Vec<Value> = replies.split_off(3);
        let mut replies = replies.into_iter();
        let now_ms = time_ms(parse(replies.next(), "TIME")?);
        let owners: Vec<Option<String>> = parse(replies.next(), "HMGET owners")?;
        let configs: Vec<Option<String>> = parse(replies.next(), "HMGET config")?;
        let mut kinds: HashMap<&str, String> = HashMap::new();
        for (stream, t) in streams.iter().zip(types) {
            kinds.insert(stream, parse(Some(t), "TYPE")?);
        }

        let live: Vec<&str> = streams
            .iter()
            .copied()
            .filter(|st| kinds.get(st).map(String::as_str) == Some("stream"))
            .collect();
        let mut infos: HashMap<&str, StreamInfo> = HashMap::new();
        if !live.is_empty() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for stream in &live {
                pipe.cmd("XINFO").arg("GROUPS").arg(*stream);
                pipe.cmd("XRANGE")
                    .arg(*stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1);
                pipe.cmd("XLEN").arg(*stream);
            }
            let replies: Vec<RedisResult<Value>> = pipe
                .query_async(&mut s.conn)
                .await
                .map_err(|e| classify(&e, s.endpoint, "observe streams"))?;
            let mut replies = replies.into_iter();
            for stream in &live {
                let (groups, first, len) = (replies.next(), replies.next(), replies.next());
                // A stream deleted since TYPE answers "no such key": it is absent.
                let (Some(Ok(groups)), Some(Ok(first)), Some(Ok(len))) = (groups, first, len)
                else {
                    kinds.insert(stream, "none".to_string());
                    continue;
                };
                let groups: StreamInfoGroupsReply = parse(Some(groups), "XINFO GROUPS")?;
                let first: StreamRangeReply = parse(Some(first), "XRANGE")?;
                infos.insert(
                    stream,
                    StreamInfo {
                        groups: groups.groups,
                        oldest_ms: first.ids.first().and_then(|e| id_ms(&e.id)),
                        len: parse(Some(len), "XLEN")?,
                    },
                );
            }
        }

        let mut observed = Observed {
            oldest_unacked: oldest_unacked(&mut s, keys, &infos, now_ms).await?,
            ..Observed::default()
        };
        for (i, key) in keys.iter().enumerate() {
            let owner = owners.get(i).cloned().flatten();
            let recorded: BTreeMap<String, String> = configs
                .get(i)
                .cloned()
                .flatten()
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default();
            let object = match key.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => {
                    match kinds.get(key.name.as_str()).map(String::as_str) {
                        None | Some("none") => None,
                        Some("stream") => infos.get(key.name.as_str()).map(|info| {
                            let messages = if key.kind == ObjectKind::Topic {
                                info.pending()
                            } else {
                                info.len
                            };
                            ObservedObject {
                                partitions: None,
                                config: effective_config(recorded, info.oldest_ms, now_ms),
                                owner,
                                messages: Some(messages),
                            }
                        }),
                        // Some other type under our name: it exists, and is not a stream.
                        Some(_) => Some(ObservedObject {
                            owner,
                            ..Default::default()
                        }),
                    }
                }
                ObjectKind::Subscription => {
                    split_group_key(&key.name).and_then(|(stream, group)| {
                        let info = infos.get(stream)?;
                        let g = info.groups.iter().find(|g| g.name == group)?;
                        Some(ObservedObject {
                            partitions: None,
                            config: recorded,
                            owner,
                            messages: Some(unconsumed(g, info.len)),
                        })
                    })
                }
                ObjectKind::Queue | ObjectKind::Binding => None,
            };
            if let Some(object) = object {
                observed.objects.insert(key.clone(), object);
            }
        }
        Ok(observed)
    }

    async fn apply_one(
        &self,
        s: &mut Session<'_>,
        scope: &Scope,
        action: &Action,
    ) -> Result<(), BrokerError> {
        let owner = scope.owner();
        match action {
            Action::Create { object } => match object.key.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => {
                    s.create_stream(&object.key.name).await?;
                    s.record(object, &owner).await
                }
                ObjectKind::Subscription => {
                    let (stream, group) = group_parts(&object.key)?;
                    let made_stream = match s.stream_type(stream).await?.as_str() {
                        "none" => true,
                        "stream" => false,
                        other => return Err(not_a_stream(stream, other)),
                    };
                    s.create_group(stream, group).await?;
                    if made_stream {
                        // The topic's own create failed or it vanished meanwhile; MKSTREAM made
                        // the stream, so it is ours too.
                        let topic = ObjectKey::new(ObjectKind::Topic, stream);
                        s.record_owner(&topic, &owner).await?;
                    }
                    s.record(object, &owner).await
                }
                other => Err(unsupported(other)),
            },
            Action::Adopt { object } | Action::Update { object, .. } => match object.key.kind {
                ObjectKind::Topic | ObjectKind::DeadLetter => {
                    let name = &object.key.name;
                    match s.stream_type(name).await?.as_str() {
                        "stream" => {}
                        "none" => return Err(vanished(&object.key)),
                        other => return Err(not_a_stream(name, other)),
                    }
                    s.record(object, &owner).await?;
                    if let Some(ms) = retention_ms(object) {
                        s.trim(name, ms).await?;
                    }
                    Ok(())
                }
                ObjectKind::Subscription => {
                    let (stream, group) = group_parts(&object.key)?;
                    if s.group(stream, group).await?.is_none() {
                        return Err(vanished(&object.key));
                    }
                    s.record(object, &owner).await
                }
                other => Err(unsupported(other)),
            },
            Action::AddPartitions { object, .. } => Err(BrokerError::new(
                BrokerErrorKind::Rejected,
                format!("{}: Redis streams have no partitions", object.key),
            )),
            Action::Delete { key } => self.delete(s, &owner, key).await,
        }
    }

    async fn delete(
        &self,
        s: &mut Session<'_>,
        owner: &str,
        key: &ObjectKey,
    ) -> Result<(), BrokerError> {
        let recorded: Option<String> = s
            .query(
                redis::cmd("HGET").arg(OWNERS_KEY).arg(key.to_string()),
                "HGET owners",
            )
            .await?;
        let not_ours = || {
            BrokerError::new(
                BrokerErrorKind::Rejected,
                format!(
                    "{key} is not recorded in {OWNERS_KEY} as created by {owner} (recorded: {}); it is left in place",
                    recorded.as_deref().unwrap_or("nobody")
                ),
            )
        };
        match key.kind {
            ObjectKind::Topic | ObjectKind::DeadLetter => {
                let name = key.name.as_str();
                match s.stream_type(name).await?.as_str() {
                    "none" => return s.forget(key).await,
                    "stream" => {}
                    other => return Err(not_a_stream(name, other)),
                }
                if recorded.as_deref() != Some(owner) {
                    return Err(not_ours());
                }
                let groups = s.groups(name).await?.unwrap_or_default();
                if key.kind == ObjectKind::Topic {
                    let pending: usize = groups.iter().map(|g| g.pending).sum();
                    if pending > 0 {
                        return Err(BrokerError::new(
                            BrokerErrorKind::Other,
                            format!(
                                "{key} still has {pending} pending entries in its consumer groups; it is deleted once they are acknowledged"
                            ),
                        ));
                    }
                } else {
                    let len: u64 = s.query(redis::cmd("XLEN").arg(name), "XLEN").await?;
                    if len > 0 {
                        return Err(BrokerError::new(
                            BrokerErrorKind::Other,
                            format!(
                                "{key} still holds {len} dead letters; it is deleted once drained"
                            ),
                        ));
                    }
                }
                // Groups we did not create belong to someone: the stream stays with them.
                let mut foreign = Vec::new();
                for g in &groups {
                    let gk = ObjectKey::new(
                        ObjectKind::Subscription,
                        super::group_key_name(name, &g.name),
                    );
                    let o: Option<String> = s
                        .query(
                            redis::cmd("HGET").arg(OWNERS_KEY).arg(gk.to_string()),
                            "HGET owners",
                        )
                        .await?;
                    if o.as_deref() != Some(owner) {
                        foreign.push(g.name.clone());
                    }
                }
                if !foreign.is_empty() {
                    return Err(BrokerError::new(
                        BrokerErrorKind::Rejected,
                        format!(
                            "{key} has consumer groups not created by {owner} ({}); it is left in place",
                            foreign.join(", ")
                        ),
                    ));
                }
                s.query::<i64>(redis::cmd("DEL").arg(name), "DEL").await?;
                s.forget(key).await?;
                for g in &groups {
                    let gk = ObjectKey::new(
                        ObjectKind::Subscription,
                        super::group_key_name(name, &g.name),
                    );
                    s.forget(&gk).await?;
                }
                Ok(())
            }
            ObjectKind::Subscription => {
                let (stream, group) = group_parts(key)?;
                let Some(g) = s.group(stream, group).await? else {
                    return s.forget(key).await;
                };
                if recorded.as_deref() != Some(owner) {
                    return Err(not_ours());
                }
                if g.pending > 0 {
                    return Err(BrokerError::new(
                        BrokerErrorKind::Other,
                        format!(
                            "{key} still has {} pending entries; it is deleted once they are acknowledged",
                            g.pending
                        ),
                    ));
                }
                s.query::<i64>(
                    redis::cmd("XGROUP").arg("DESTROY").arg(stream).arg(group),
                    "XGROUP DESTROY",
                )
                .await?;
                s.forget(key).await
            }
            other => Err(unsupported(other)),
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn broker_type(&self) -> BrokerType {
        BrokerType::Redis
    }

    async fn check(&self) -> Result<(), BrokerError> {
        let result = tokio::time::timeout(self.check_timeout, self.check_inner())
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::new(
                    BrokerErrorKind::Timeout,
                    format!(
                        "redis {}: no answer within {}s",
                        self.endpoint,
                        self.check_timeout.as_secs_f64()
                    ),
                ))
            });
        self.after(result.as_ref().err()).await;
        result
    }

    async fn observe(&self, _scope: &Scope, keys: &[ObjectKey]) -> Result<Observed, BrokerError> {
        let result = self.observe_inner(keys).await;
        self.after(result.as_ref().err()).await;
        result
    }

    async fn apply(&self, scope: &Scope, actions: &[Action]) -> Vec<ActionOutcome> {
        let mut session = match self.connection().await {
            Ok(s) => s,
            Err(e) => {
                self.after(Some(&e)).await;
                return actions
                    .iter()
                    .map(|a| ActionOutcome {
                        key: a.key().clone(),
                        result: Err(e.clone()),
                    })
                    .collect();
            }
        };
        let mut outcomes = Vec::with_capacity(actions.len());
        for action in actions {
            let result = self.apply_one(&mut session, scope, action).await;
            if let Err(e) = &result {
                tracing::debug!(key = %action.key(), error = %e, "redis action failed");
            }
            self.after(result.as_ref().err()).await;
            outcomes.push(ActionOutcome {
                key: action.key().clone(),
                result,
            });
        }
        outcomes
    }
}

/// One connection in use, with the endpoint for messages.
struct Session<'a> {
    conn: ConnectionManager,
    endpoint: &'a str,
}

impl Session<'_> {
    async fn query<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        context: &str,
    ) -> Result<T, BrokerError> {
        cmd.query_async(&mut self.conn)
            .await
            .map_err(|e| classify(&e, self.endpoint, context))
    }

    async fn stream_type(&mut self, key: &str) -> Result<String, BrokerError> {
        self.query(redis::cmd("TYPE").arg(key), "TYPE").await
    }

    async fn groups(&mut self, stream: &str) -> Result<Option<Vec<StreamInfoGroup>>, BrokerError> {
        if self.stream_type(stream).await? != "stream" {
            return Ok(None);
        }
        let reply: StreamInfoGroupsReply = self
            .query(
                redis::cmd("XINFO").arg("GROUPS").arg(stream),
                "XINFO GROUPS",
            )
            .await?;
        Ok(Some(reply.groups))
    }

    async fn group(
        &mut self,
        stream: &str,
        group: &str,
    ) -> Result<Option<StreamInfoGroup>, BrokerError> {
        Ok(self
            .groups(stream)
            .await?
            .and_then(|gs| gs.into_iter().find(|g| g.name == group)))
    }

    /// Make an empty stream (there is no direct command: create a throwaway group with
    /// MKSTREAM, then destroy it).
    async fn create_stream(&mut self, name: &str) -> Result<(), BrokerError> {
        match self.stream_type(name).await?.as_str() {
            "none" => {}
            "stream" => {
                return Err(BrokerError::new(
                    BrokerErrorKind::Other,
                    format!(
                        "stream {name} appeared since it was observed; it is examined again on the next pass"
                    ),
                ));
            }
            other => return Err(not_a_stream(name, other)),
        }
        self.create_group(name, MKSTREAM_GROUP).await?;
        self.query::<i64>(
            redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(name)
                .arg(MKSTREAM_GROUP),
            "XGROUP DESTROY",
        )
        .await?;
        Ok(())
    }

    /// A consumer group that starts at the end of the stream (new entries only).
    async fn create_group(&mut self, stream: &str, group: &str) -> Result<(), BrokerError> {
        let result: RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut self.conn)
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Err(BrokerError::new(
                BrokerErrorKind::Other,
                format!(
                    "consumer group {group} on {stream} appeared since it was observed; it is examined again on the next pass"
                ),
            )),
            Err(e) => Err(classify(
                &e,
                self.endpoint,
                &format!("XGROUP CREATE {stream} {group}"),
            )),
        }
    }

    async fn record_owner(&mut self, key: &ObjectKey, owner: &str) -> Result<(), BrokerError> {
        self.query::<i64>(
            redis::cmd("HSET")
                .arg(OWNERS_KEY)
                .arg(key.to_string())
                .arg(owner),
            "HSET owners",
        )
        .await
        .map(drop)
    }

    /// Record ownership and the settings Redis has no place for.
    async fn record(&mut self, object: &DesiredObject, owner: &str) -> Result<(), BrokerError> {
        let field = object.key.to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(OWNERS_KEY)
            .arg(&field)
            .arg(owner)
            .ignore();
        if object.config.is_empty() {
            pipe.cmd("HDEL").arg(CONFIG_KEY).arg(&field).ignore();
        } else {
            let json = serde_json::to_string(&object.config).map_err(|e| {
                BrokerError::new(BrokerErrorKind::Other, format!("encode settings: {e}"))
            })?;
            pipe.cmd("HSET")
                .arg(CONFIG_KEY)
                .arg(&field)
                .arg(json)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| classify(&e, self.endpoint, "record in registry"))
    }

    async fn forget(&mut self, key: &ObjectKey) -> Result<(), BrokerError> {
        let field = key.to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(OWNERS_KEY).arg(&field).ignore();
        pipe.cmd("HDEL").arg(CONFIG_KEY).arg(&field).ignore();
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| classify(&e, self.endpoint, "remove from registry"))
    }

    /// Drop entries older than the window, by the server's clock (entry ids are its clock too).
    async fn trim(&mut self, stream: &str, retention_ms: u64) -> Result<u64, BrokerError> {
        let now: (u64, u64) = self.query(&redis::cmd("TIME"), "TIME").await?;
        let Some(min_ms) = time_ms(now).checked_sub(retention_ms) else {
            return Ok(0);
        };
        self.query(
            redis::cmd("XTRIM")
                .arg(stream)
                .arg("MINID")
                .arg(format!("{min_ms}-0")),
            "XTRIM",
        )
        .await
    }
}

/// What observation learns about one stream.
struct StreamInfo {
    groups: Vec<StreamInfoGroup>,
    /// Milliseconds part of the oldest entry's id.
    oldest_ms: Option<u64>,
    len: u64,
}

/// How long the oldest message each group of `keys` has not acknowledged has waited, by the
/// server's clock (`now_ms`, from TIME): the smallest pending id (XPENDING summary) if any
/// entry is delivered and unacknowledged, else the first entry after the group's
/// last-delivered id (XRANGE), else zero. An entry id's first part is the millisecond it was
/// added, so the age is exact for auto-generated ids and means nothing for ids an app chose.
/// Groups with nothing waiting cost no command; the others share one round trip.
async fn oldest_unacked(
    s: &mut Session<'_>,
    keys: &[ObjectKey],
    infos: &HashMap<&str, StreamInfo>,
    now_ms: u64,
) -> Result<BTreeMap<ObjectKey, Duration>, BrokerError> {
    let mut out = BTreeMap::new();
    let mut asked: Vec<(&ObjectKey, bool)> = Vec::new();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in keys.iter().filter(|k| k.kind == ObjectKind::Subscription) {
        let Some((stream, group)) = split_group_key(&key.name) else {
            continue;
        };
        let Some(g) = infos
            .get(stream)
            .and_then(|i| i.groups.iter().find(|g| g.name == group))
        else {
            continue;
        };
        if g.pending > 0 {
            pipe.cmd("XPENDING").arg(stream).arg(group);
            asked.push((key, true));
        } else if g.lag != Some(0) {
            let after = format!("({}", g.last_delivered_id);
            pipe.cmd("XRANGE")
                .arg(stream)
                .arg(after)
                .arg("+")
                .arg("COUNT")
                .arg(1);
            asked.push((key, false));
        } else {
            out.insert(key.clone(), Duration::ZERO);
        }
    }
    if asked.is_empty() {
        return Ok(out);
    }
    let replies: Vec<RedisResult<Value>> = pipe
        .query_async(&mut s.conn)
        .await
        .map_err(|e| classify(&e, s.endpoint, "observe pending entries"))?;
    for ((key, pending), reply) in asked.into_iter().zip(replies) {
        // A group or stream deleted meanwhile tells nothing.
        let Ok(reply) = reply else { continue };
        let oldest = if pending {
            match parse::<StreamPendingReply>(Some(reply), "XPENDING")? {
                StreamPendingReply::Data(d) => id_ms(&d.start_id),
                _ => None,
            }
        } else {
            let next: StreamRangeReply = parse(Some(reply), "XRANGE")?;
            match next.ids.first() {
                Some(e) => id_ms(&e.id),
                None => Some(now_ms),
            }
        };
        if let Some(ms) = oldest {
            out.insert(
                key.clone(),
                Duration::from_millis(now_ms.saturating_sub(ms)),
            );
        }
    }
    Ok(out)
}

impl StreamInfo {
    /// Messages some subscription has not consumed yet: the most any group holds.
    fn pending(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| unconsumed(g, self.len))
            .max()
            .unwrap_or(0)
    }
}

/// What a consumer group still holds: entries delivered and not acked, plus entries not yet
/// delivered (`lag`). When the server cannot tell the lag (entries deleted mid-stream, or a
/// Redis before 7), every entry of the stream counts: retiring must never guess low.
fn unconsumed(g: &StreamInfoGroup, len: u64) -> u64 {
    let lag = g.lag.map_or(len, |l| l as u64);
    (g.pending as u64).saturating_add(lag)
}

/// The recorded settings as they hold now: a retention window is only "as wanted" while no
/// entry is older than it, so an overdue trim shows up as a change for the planner to make.
fn effective_config(
    mut recorded: BTreeMap<String, String>,
    oldest_ms: Option<u64>,
    now_ms: u64,
) -> BTreeMap<String, String> {
    if let Some(window) = recorded
        .get(RETENTION_MS)
        .and_then(|v| v.parse::<u64>().ok())
        && let Some(oldest) = oldest_ms
        && oldest < now_ms.saturating_sub(window)
    {
        recorded.insert(
            RETENTION_MS.to_string(),
            format!("{window} (entries older than the window are due for trimming)"),
        );
    }
    recorded
}

fn retention_ms(object: &DesiredObject) -> Option<u64> {
    object
        .config
        .get(RETENTION_MS)
        .and_then(|v| v.parse::<u64>().ok())
}

/// `TIME` → milliseconds since the epoch.
fn time_ms((secs, micros): (u64, u64)) -> u64 {
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// The milliseconds part of a stream entry id `ms-seq`.
fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn parse<T: FromRedisValue>(value: Option<Value>, context: &str) -> Result<T, BrokerError> {
    let value = value.unwrap_or(Value::Nil);
    redis::from_redis_value(value).map_err(|e| {
        BrokerError::new(
            BrokerErrorKind::Other,
            format!("unexpected reply to {context}: {}", RedisError::from(e)),
        )
    })
}

fn group_parts(key: &ObjectKey) -> Result<(&str, &str), BrokerError> {
    super::split_group_key(&key.name).ok_or_else(|| {
        BrokerError::new(
            BrokerErrorKind::Rejected,
            format!("{key} does not name a consumer group as <stream>/<group>"),
        )
    })
}

fn not_a_stream(name: &str, actual: &str) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::Rejected,
        format!("key {name} exists as a {actual}, not a stream; it is left in place"),
    )
}

fn vanished(key: &ObjectKey) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::Other,
        format!("{key} disappeared since it was observed; it is examined again on the next pass"),
    )
}

fn unsupported(kind: ObjectKind) -> BrokerError {
    BrokerError::new(
        BrokerErrorKind::Rejected,
        format!("the Redis backend has no {}", kind.as_str()),
    )
}

/// A suffix that keeps concurrent probes apart.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_trims_show_as_a_changed_retention() {
        let recorded = BTreeMap::from([(RETENTION_MS.to_string(), "1000".to_string())]);
        let fresh = effective_config(recorded.clone(), Some(9_500), 10_000);
        assert_eq!(fresh, recorded);
        let empty = effective_config(recorded.clone(), None, 10_000);
        assert_eq!(empty, recorded);
        let overdue = effective_config(recorded.clone(), Some(8_000), 10_000);
        assert_ne!(overdue[RETENTION_MS], "1000");
        assert!(overdue[RETENTION_MS].starts_with("1000 "));
    }

    #[test]
    fn ids_and_time_parse() {
        assert_eq!(id_ms("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(id_ms("x-1"), None);
        assert_eq!(time_ms((1_700_000_000, 123_456)), 1_700_000_000_123);
    }
}

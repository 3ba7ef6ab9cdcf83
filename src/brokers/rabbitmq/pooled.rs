//! One AMQP connection kept open and reopened when it died, shared by the operator's client
//! and the app-side transport.

use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

/// Why no connection could be had.
#[derive(Debug)]
pub(super) enum ConnectFailure {
    /// The async runtime for lapin could not start.
    Runtime(String),
    /// No answer within the timeout.
    Timeout(Duration),
    /// The broker or the network refused.
    Refused(lapin::Error),
}

/// A connection slot: the live connection, or none until the next use dials.
pub(super) struct Pooled {
    uri: AMQPUri,
    tls: OwnedTLSConfig,
    name: &'static str,
    slot: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Pooled {
    /// A slot for `uri`; `name` is the connection name the broker shows.
    pub(super) fn new(uri: AMQPUri, tls: OwnedTLSConfig, name: &'static str) -> Self {
        Pooled {
            uri,
            tls,
            name,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The URI (with credentials: never print it whole).
    pub(super) fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// The live connection, dialling (within `timeout`) when there is none or it died.
    pub(super) async fn get(&self, timeout: Duration) -> Result<Arc<Connection>, ConnectFailure> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = slot.as_ref()
            && conn.status().connected()
        {
            return Ok(conn.clone());
        }
        *slot = None;
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| ConnectFailure::Runtime(e.to_string()))?;
        let properties = ConnectionProperties::default().with_connection_name(self.name.into());
        let connect = Connection::connect_uri_with_config(
            self.uri.clone(),
            properties,
            self.tls.clone(),
            runtime,
        );
        let conn = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ConnectFailure::Timeout(timeout))?
            .map_err(ConnectFailure::Refused)?;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

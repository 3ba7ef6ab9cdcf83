//! The RabbitMQ management HTTP API, used read-only to observe queue arguments, message counts,
//! exchanges and bindings (AMQP 0-9-1 cannot read arguments back).

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::endpoint::percent_encode;
use crate::brokers::{BrokerError, BrokerErrorKind};
use crate::secrets::SecretValue;

/// Connect timeout for the management API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout; listing a busy vhost can take longer than connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A queue as the management API lists it.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct QueueInfo {
    pub name: String,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// Ready + unacknowledged; absent until the first statistics are emitted.
    #[serde(default)]
    pub messages: Option<u64>,
    #[serde(default)]
    pub messages_ready: Option<u64>,
    #[serde(default)]
    pub messages_unacknowledged: Option<u64>,
}

/// An exchange as the management API lists it.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ExchangeInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// A binding as the management API lists it.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct BindingInfo {
    pub source: String,
    pub destination: String,
    pub destination_type: String,
    pub routing_key: String,
}

/// A management API client for one vhost.
pub(crate) struct Management {
    http: reqwest::Client,
    base: String,
    vhost: String,
    username: String,
    password: SecretValue,
}

impl Management {
    /// A client for `base` (e.g. `http://rabbit:15672`), trusting `ca_pem` for https when given.
    pub(crate) fn new(
        base: &str,
        vhost: &str,
        credentials: Option<&(SecretValue, SecretValue)>,
        ca_pem: Option<&str>,
    ) -> Result<Self, BrokerError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|_| {
                BrokerError::new(
                    BrokerErrorKind::Tls,
                    "the CA bundle is not a valid PEM certificate",
                )
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| {
            BrokerError::new(
                BrokerErrorKind::Rejected,
                format!("management API client: {e}"),
            )
        })?;
        let (username, password) = match credentials {
            Some((u, p)) => (u.expose().to_string(), p.clone()),
            None => ("guest".to_string(), SecretValue::new("guest")),
        };
        Ok(Management {
            http,
            base: base.trim_end_matches('/').to_string(),
            vhost: percent_encode(vhost),
            username,
            password,
        })
    }

    /// The vhost exists and these credentials may read it.
    pub(crate) async fn check_vhost(&self) -> Result<(), BrokerError> {
        // `amq.direct` exists in every vhost; reading it needs only the access observe needs.
        let _: serde_json::Value = self
            .get(&format!("/api/exchanges/{}/amq.direct", self.vhost))
            .await?;
        Ok(())
    }

    /// Every queue in the vhost (only the columns we read).
    pub(crate) async fn queues(&self) -> Result<Vec<QueueInfo>, BrokerError> {
        self.get(&format!(
            "/api/queues/{}?columns=name,durable,arguments,messages,messages_ready,messages_unacknowledged",
            self.vhost
        ))
        .await
    }

    /// Every exchange in the vhost.
    pub(crate) async fn exchanges(&self) -> Result<Vec<ExchangeInfo>, BrokerError> {
        self.get(&format!(
            "/api/exchanges/{}?columns=name,type,durable,arguments",
            self.vhost
        ))
        .await
    }

    /// Every binding in the vhost.
    pub(crate) async fn bindings(&self) -> Result<Vec<BindingInfo>, BrokerError> {
        self.get(&format!("/api/bindings/{}", self.vhost)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, BrokerError> {
        let what = path.split('?').next().unwrap_or(path);
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth(&self.username, Some(self.password.expose()))
            .send()
            .await
            .map_err(|e| transport_error(what, &e))?;
        let status = response.status();
        if !status.is_success() {
            let kind = match status.as_u16() {
                401 => BrokerErrorKind::Authentication,
                403 => BrokerErrorKind::PermissionDenied,
                404 => BrokerErrorKind::NotFound,
                400..=499 => BrokerErrorKind::Rejected,
                _ => BrokerErrorKind::Other,
            };
            let hint = match status.as_u16() {
                401 => " (the user needs valid credentials and the monitoring or management tag)",
                404 => " (does the vhost exist?)",
                _ => "",
            };
            return Err(BrokerError::new(
                kind,
                format!("management API GET {what}: HTTP {status}{hint}"),
            ));
        }
        response.json::<T>().await.map_err(|e| {
            BrokerError::new(
                BrokerErrorKind::Other,
                format!("management API GET {what}: unexpected answer: {e}"),
            )
        })
    }
}

fn transport_error(what: &str, e: &reqwest::Error) -> BrokerError {
    let kind = if e.is_timeout() {
        BrokerErrorKind::Timeout
    } else if e.is_connect() {
        BrokerErrorKind::Unreachable
    } else {
        BrokerErrorKind::Other
    };
    // reqwest's Display includes the URL, which never carries credentials here (basic auth
    // goes in a header).
    BrokerError::new(kind, format!("management API GET {what}: {e}"))
}

/// A JSON argument value as the planner compares it: strings bare, numbers and booleans printed.
pub(crate) fn arg_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

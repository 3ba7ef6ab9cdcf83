//! Where the broker is and how to log in: the spec's url or host/port, vhost, TLS and
//! credentials resolved into what lapin and the management client need.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPAuthority, AMQPScheme, AMQPUri, AMQPUserInfo};

use super::rejected;
use crate::api::RabbitMqSpec;
use crate::brokers::{BrokerError, BrokerErrorKind};
use crate::secrets::{ResolvedSecrets, SecretValue};

/// The broker endpoint without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// AMQP over TLS.
    pub tls: bool,
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Virtual host, decoded (`/` by default).
    pub vhost: String,
}

impl Endpoint {
    /// Resolve the spec's `url` or `host`/`port`, `vhost` and `tls`. A `vhost` field overrides
    /// the URL's path; TLS is on for `amqps://` or when `tls.enabled` is set.
    pub fn from_spec(spec: &RabbitMqSpec) -> Result<Self, BrokerError> {
        let tls_flag = spec.tls.as_ref().is_some_and(|t| t.enabled);
        let (mut endpoint, explicit_port) = match (&spec.url, &spec.host) {
            (Some(url), _) => {
                let parsed: AMQPUri = url
                    .parse()
                    .map_err(|e| rejected(format!("rabbitmq.url is not an AMQP URL: {e}")))?;
                if url.contains('@') {
                    return Err(rejected(
                        "rabbitmq.url must not hold credentials; use credentialsSecretRef",
                    ));
                }
                let tls = matches!(parsed.scheme, AMQPScheme::AMQPS) || tls_flag;
                let has_port = url_has_port(url);
                (
                    Endpoint {
                        tls,
                        host: parsed.authority.host,
                        port: parsed.authority.port,
                        vhost: parsed.vhost,
                    },
                    has_port,
                )
            }
            (None, Some(host)) => (
                Endpoint {
                    tls: tls_flag,
                    host: host.clone(),
                    port: 0,
                    vhost: "/".to_string(),
                },
                false,
            ),
            (None, None) => return Err(rejected("rabbitmq needs either url or host")),
        };
        if let Some(port) = spec.port {
            endpoint.port = u16::try_from(port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| rejected(format!("rabbitmq.port {port} is not a TCP port")))?;
        } else if !explicit_port {
            endpoint.port = if endpoint.tls { 5671 } else { 5672 };
        }
        if let Some(vhost) = &spec.vhost {
            endpoint.vhost = vhost.clone();
        }
        if endpoint.host.is_empty() {
            return Err(rejected("rabbitmq host is empty"));
        }
        Ok(endpoint)
    }

    /// `amqp[s]://host:port/<vhost percent-encoded>`, for the binding Secret.
    pub fn uri_without_credentials(&self) -> String {
        format!(
            "{}://{}:{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            self.host,
            self.port,
            percent_encode(&self.vhost)
        )
    }

    /// The lapin URI with credentials (guest/guest, RabbitMQ's default, when none are given).
    pub(crate) fn amqp_uri(&self, credentials: Option<&(SecretValue, SecretValue)>) -> AMQPUri {
        let mut uri = AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo::default(),
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: Default::default(),
        };
        if let Some((user, password)) = credentials {
            uri.authority.userinfo = AMQPUserInfo {
                username: user.expose().to_string(),
                password: password.expose().to_string(),
            };
        }
        uri
    }
}

/// Whether the URL names a port after the host (`amqp://h:1234/...`).
fn url_has_port(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    // IPv6 literals are bracketed; a port follows the closing bracket.
    let after_host = authority
        .rsplit_once(']')
        .map(|(_, p)| p)
        .unwrap_or(authority);
    after_host.contains(':')
}

/// Percent-encode everything but RFC 3986 unreserved characters (vhost in a URL path).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Credentials and TLS material, resolved from the referenced Secrets.
pub(crate) struct Access {
    /// Username and password, when a credentials Secret is referenced.
    pub credentials: Option<(SecretValue, SecretValue)>,
    /// TLS settings for lapin.
    pub tls: OwnedTLSConfig,
    /// CA bundle (PEM) for the management API over https.
    pub ca_pem: Option<String>,
}

impl Access {
    /// Read the referenced Secret keys. A CA or client certificate that is not PEM is a TLS
    /// configuration error; a missing key is rejected (the controller reports it before this).
    pub(crate) fn resolve(
        spec: &RabbitMqSpec,
        secrets: &ResolvedSecrets,
    ) -> Result<Self, BrokerError> {
        let credentials = match &spec.credentials_secret_ref {
            Some(r) => Some(
                secrets
                    .credentials(r)
                    .map_err(|e| rejected(e.to_string()))?,
            ),
            None => None,
        };
        let mut tls = OwnedTLSConfig::default();
        let mut ca_pem = None;
        if let Some(t) = spec.tls.as_ref().filter(|t| t.enabled) {
            if let Some(r) = &t.ca_secret_ref {
                let pem = secrets.get(r).map_err(|e| rejected(e.to_string()))?;
                require_pem(pem.expose(), "CERTIFICATE", &r.name, &r.key)?;
                tls.cert_chain = Some(pem.expose().to_string());
                ca_pem = Some(pem.expose().to_string());
            }
            match (&t.cert_secret_ref, &t.key_secret_ref) {
                (Some(c), Some(k)) => {
                    let cert = secrets.get(c).map_err(|e| rejected(e.to_string()))?;
                    let key = secrets.get(k).map_err(|e| rejected(e.to_string()))?;
                    require_pem(cert.expose(), "CERTIFICATE", &c.name, &c.key)?;
                    require_pem(key.expose(), "PRIVATE KEY", &k.name, &k.key)?;
                    tls.identity = Some(OwnedIdentity::PKCS8 {
                        pem: cert.expose().as_bytes().to_vec(),
                        key: key.expose().as_bytes().to_vec(),
                    });
                }
                (None, None) => {}
                _ => {
                    return Err(BrokerError::new(
                        BrokerErrorKind::Tls,
                        "tls.certSecretRef and tls.keySecretRef must be set together",
                    ));
                }
            }
        }
        Ok(Access {
            credentials,
            tls,
            ca_pem,
        })
    }
}

/// A PEM block of the given label must be present (`PRIVATE KEY` also matches `RSA PRIVATE KEY`
/// and `EC PRIVATE KEY`). Names the Secret and key, never the content.
fn require_pem(text: &str, label: &str, secret: &str, key: &str) -> Result<(), BrokerError> {
    let ok = text.contains("-----BEGIN ")
        && text.lines().any(|l| {
            l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----"))
        })
        && text.contains("-----END ");
    if ok {
        Ok(())
    } else {
        Err(BrokerError::new(
            BrokerErrorKind::Tls,
            format!("Secret {secret:?} key {key:?} does not hold a PEM {label}"),
        ))
    }
}

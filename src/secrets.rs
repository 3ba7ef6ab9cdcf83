//! Resolving Secret references, and a value type that never prints what it holds.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::api::{CredentialsSecretRef, EnvSpec, SecretKeyRef};
use crate::error::Error;

/// A secret value. `Debug` and `Display` print `<redacted>`, so it cannot leak through logs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }
    /// The value itself; call only where it goes to a broker client or into a Secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The referenced Secret keys of one env, read once per reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResolvedSecrets {
    values: BTreeMap<(String, String), SecretValue>,
}

impl ResolvedSecrets {
    /// Record a value (used by resolvers and tests).
    pub fn insert(&mut self, secret: &str, key: &str, value: impl Into<String>) {
        self.values.insert(
            (secret.to_string(), key.to_string()),
            SecretValue::new(value),
        );
    }

    /// The value of a key, or an error naming the Secret and key (never the value).
    pub fn get(&self, r: &SecretKeyRef) -> Result<&SecretValue, Error> {
        self.require(&r.name, &r.key)
    }

    /// An optional key: `None` when absent.
    pub fn get_opt(&self, secret: &str, key: &str) -> Option<&SecretValue> {
        self.values.get(&(secret.to_string(), key.to_string()))
    }

    /// Username and password from a credentials Secret.
    pub fn credentials(
        &self,
        r: &CredentialsSecretRef,
    ) -> Result<(SecretValue, SecretValue), Error> {
        Ok((
            self.require(&r.name, &r.username_key)?.clone(),
            self.require(&r.name, &r.password_key)?.clone(),
        ))
    }

    /// The value of a key, or an error naming the Secret and key (never the value).
    pub fn require(&self, secret: &str, key: &str) -> Result<&SecretValue, Error> {
        self.get_opt(secret, key)
            .ok_or_else(|| Error::SecretKeyMissing {
                secret: secret.to_string(),
                key: key.to_string(),
            })
    }

    /// A stable digest of every value, for pooling clients per endpoint + credentials
    /// without keeping the credentials themselves in the key.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for ((s, k), v) in &self.values {
            h.update(s.as_bytes());
            h.update([0]);
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.expose().as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }
}

/// Read the referenced keys from environment variables named
/// `SWITCHYARD_SECRET_<SECRET>__<KEY>` (upper case, other characters as `_`), for CI runners
/// without cluster access. Missing variables are simply absent.
pub fn from_env_vars(env: &EnvSpec) -> ResolvedSecrets {
    let mut resolved = ResolvedSecrets::default();
    for (name, key) in crate::brokers::secret_keys(env) {
        if let Ok(v) = std::env::var(env_var_name(&name, &key)) {
            resolved.insert(&name, &key, v);
        }
    }
    resolved
}

/// The environment variable that holds a Secret key for `--secrets-from-env`.
pub fn env_var_name(secret: &str, key: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("SWITCHYARD_SECRET_{}__{}", clean(secret), clean(key))
}

/// Read every Secret an env references (same namespace only; the API has no namespace field).
pub async fn resolve(
    client: &Client,
    namespace: &str,
    env: &EnvSpec,
) -> Result<ResolvedSecrets, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut resolved = ResolvedSecrets::default();
    for name in crate::brokers::secret_names(env) {
        let name = name.as_str();
        let secret = api
            .get_opt(name)
            .await
            .map_err(Error::kube("get referenced Secret"))?
            .ok_or_else(|| Error::SecretNotFound {
                secret: name.to_string(),
            })?;
        for (key, value) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(value.0).map_err(|_| Error::SecretNotUtf8 {
                secret: name.to_string(),
                key: key.clone(),
            })?;
            resolved.insert(name, &key, text);
        }
        for (key, value) in secret.string_data.unwrap_or_default() {
            resolved.insert(name, &key, value);
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_print() {
        let mut s = ResolvedSecrets::default();
        s.insert("db", "password", "hunter2-distinctive");
        let printed = format!("{s:?} {}", s.get_opt("db", "password").expect("present"));
        assert!(!printed.contains("hunter2"), "leaked: {printed}");
    }

    #[test]
    fn missing_key_names_secret_and_key() {
        let s = ResolvedSecrets::default();
        let err = s
            .get(&SecretKeyRef {
                name: "kafka-user".into(),
                key: "password".into(),
            })
            .expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("kafka-user") && msg.contains("password"),
            "{msg}"
        );
    }

    #[test]
    fn digest_changes_with_values() {
        let mut a = ResolvedSecrets::default();
        a.insert("s", "k", "one");
        let mut b = ResolvedSecrets::default();
        b.insert("s", "k", "two");
        assert_ne!(a.digest(), b.digest());
        assert!(!a.digest().contains("one"));
    }
}

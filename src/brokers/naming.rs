//! Broker-side names: derived from namespace, resource name and topic, sanitised to each
//! broker's character set and length limit, with a short hash when truncated so that distinct
//! inputs stay distinct.

use sha2::{Digest, Sha256};

/// The naming rules of one broker.
#[derive(Clone, Copy, Debug)]
pub struct NamingRules {
    /// Separator between parts.
    pub separator: char,
    /// Characters allowed besides ASCII letters and digits.
    pub extra_chars: &'static str,
    /// Maximum length in bytes.
    pub max_len: usize,
    /// Replacement for a disallowed character.
    pub replacement: char,
    /// Names must start with an ASCII letter.
    pub must_start_with_letter: bool,
}

/// Kafka topic names: `[a-zA-Z0-9._-]`, at most 249 characters.
pub const KAFKA: NamingRules = NamingRules {
    separator: '.',
    extra_chars: "._-",
    max_len: 249,
    replacement: '_',
    must_start_with_letter: false,
};

/// Redis keys: any bytes; kept readable and short.
pub const REDIS: NamingRules = NamingRules {
    separator: ':',
    extra_chars: ":._-",
    max_len: 200,
    replacement: '_',
    must_start_with_letter: false,
};

/// RabbitMQ exchanges and queues: up to 255 bytes; `amq.` is reserved (we never start with it).
pub const RABBITMQ: NamingRules = NamingRules {
    separator: '.',
    extra_chars: "._-",
    max_len: 255,
    replacement: '_',
    must_start_with_letter: false,
};

/// Google Pub/Sub ids: start with a letter, `[A-Za-z0-9-_.~+%]`, 3 to 255 characters.
pub const PUBSUB: NamingRules = NamingRules {
    separator: '.',
    extra_chars: "-_.~+%",
    max_len: 255,
    replacement: '-',
    must_start_with_letter: true,
};

/// SQS queue names: `[A-Za-z0-9_-]`, at most 80 characters (FIFO suffix included; callers
/// reserve room for `.fifo`).
pub const SQS: NamingRules = NamingRules {
    separator: '_',
    extra_chars: "_-",
    max_len: 80,
    replacement: '-',
    must_start_with_letter: false,
};

/// SNS topic names: `[A-Za-z0-9_-]`, at most 256 characters (FIFO suffix included).
pub const SNS: NamingRules = NamingRules {
    separator: '_',
    extra_chars: "_-",
    max_len: 256,
    replacement: '-',
    must_start_with_letter: false,
};

/// Join parts with the broker's separator, replace disallowed characters, and fit the length
/// limit (minus `reserve` bytes for a suffix the caller adds). When truncated, the name ends
/// with `-` and 8 hex characters of the SHA-256 of the untruncated name.
pub fn physical(rules: &NamingRules, parts: &[&str], reserve: usize) -> String {
    let joined: String = parts.join(&rules.separator.to_string());
    let mut name: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || rules.extra_chars.contains(c) {
                c
            } else {
                rules.replacement
            }
        })
        .collect();
    if rules.must_start_with_letter && !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert_str(0, "sy-");
    }
    let limit = rules.max_len.saturating_sub(reserve);
    if name.len() > limit {
        let digest = hex::encode(Sha256::digest(joined.as_bytes()));
        let keep = limit.saturating_sub(9);
        name.truncate(keep);
        name.push('-');
        name.push_str(&digest[..8]);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_sanitises() {
        assert_eq!(
            physical(&KAFKA, &["shop", "message-bus", "order-created"], 0),
            "shop.message-bus.order-created"
        );
        assert_eq!(physical(&SQS, &["shop", "bus", "a.b"], 0), "shop_bus_a-b");
        assert_eq!(physical(&PUBSUB, &["1ns", "bus", "t"], 0), "sy-1ns.bus.t");
    }

    #[test]
    fn truncates_with_a_distinguishing_hash() {
        let long_a = "a".repeat(100);
        let long_b = format!("{}b", "a".repeat(99));
        let a = physical(&SQS, &["ns", &long_a], 5);
        let b = physical(&SQS, &["ns", &long_b], 5);
        assert!(a.len() <= 75, "{a}");
        assert_ne!(a, b);
    }
}

//! Broker-side names: derived from namespace, resource name and topic, sanitised to each
//! broker's character set and length limit, with a short hash when truncated so that distinct
//! inputs stay distinct.

use sha2::{Digest, Sha256};

use super::Scope;

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
///
/// This is the scheme of names created before [`scoped`]; it is ambiguous when a part holds
/// the separator (`a.b` + `c` and `a` + `b.c` meet), so it is used for caller-given names
/// (a Kafka `topicPrefix`) and for objects that already exist under it.
pub fn physical(rules: &NamingRules, parts: &[&str], reserve: usize) -> String {
    let joined: String = parts.join(&rules.separator.to_string());
    let name: String = joined.chars().map(|c| sanitise(rules, c)).collect();
    fit(rules, name, &joined, "sy-", reserve)
}

/// The name of an object of the MessageBroker `scope`: its namespace and name, then `parts`
/// (the logical topic first, then e.g. the subscription), joined by the broker's separator.
///
/// Distinct MessageBrokers never meet on a name: a separator inside the namespace or name (and,
/// where the broker does not allow `.`, a dot) is written as a doubled separator, so the
/// MessageBroker part always ends at the first single separator (`shop.a..b.c` is MessageBroker
/// `a.b`, topic `c`; `shop.a.b.c` is MessageBroker `a`, topic `b.c`). Where a name must start
/// with a letter, `sy_` (never part of a Kubernetes name) is put in front. Two topics of one
/// MessageBroker that still meet (topic `t.dlq` and the dead letters of `t`) are refused by
/// [`super::desired`].
///
/// Topics listed in [`Scope::legacy_topics`] keep the names of [`physical`]: objects are never
/// renamed once they exist.
pub fn scoped(rules: &NamingRules, scope: &Scope, parts: &[&str], reserve: usize) -> String {
    let (ns, name) = (scope.namespace.as_str(), scope.name.as_str());
    if parts
        .first()
        .is_some_and(|t| scope.legacy_topics.contains(*t))
    {
        let mut all = vec![ns, name];
        all.extend_from_slice(parts);
        return physical(rules, &all, reserve);
    }
    let sep = rules.separator;
    // `unsanitised` is what the hash of a truncated name covers: for a MessageBroker whose
    // name holds no separator it is the joined parts, as in `physical`.
    let (mut out, mut unsanitised) = (String::new(), String::new());
    for part in [ns, name] {
        for c in part.chars() {
            if c == sep || (c == '.' && !allowed(rules, c)) {
                out.extend([sep, sep]);
                unsanitised.extend([sep, sep]);
            } else {
                out.push(sanitise(rules, c));
                unsanitised.push(c);
            }
        }
        out.push(sep);
        unsanitised.push(sep);
    }
    let rest: String = parts.join(&sep.to_string());
    out.extend(rest.chars().map(|c| sanitise(rules, c)));
    unsanitised.push_str(&rest);
    fit(rules, out, &unsanitised, "sy_", reserve)
}

fn allowed(rules: &NamingRules, c: char) -> bool {
    c.is_ascii_alphanumeric() || rules.extra_chars.contains(c)
}

fn sanitise(rules: &NamingRules, c: char) -> char {
    if allowed(rules, c) {
        c
    } else {
        rules.replacement
    }
}

/// Put `letter_prefix` in front where a name must start with a letter, and fit the length
/// limit with the hash of `full` (the untruncated name) to keep distinct names distinct.
fn fit(
    rules: &NamingRules,
    mut name: String,
    full: &str,
    letter_prefix: &str,
    reserve: usize,
) -> String {
    if rules.must_start_with_letter && !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert_str(0, letter_prefix);
    }
    let limit = rules.max_len.saturating_sub(reserve);
    if name.len() > limit {
        let digest = hex::encode(Sha256::digest(full.as_bytes()));
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

    #[test]
    fn scoped_names_keep_message_brokers_apart() {
        let dotted = Scope::new("shop", "orders.v1");
        let plain = Scope::new("shop", "orders");
        // The ambiguity of the joined scheme: both meet on one Kafka topic.
        assert_eq!(
            physical(&KAFKA, &["shop", "orders.v1", "created"], 0),
            physical(&KAFKA, &["shop", "orders", "v1.created"], 0)
        );
        assert_eq!(
            scoped(&KAFKA, &dotted, &["created"], 0),
            "shop.orders..v1.created"
        );
        assert_eq!(
            scoped(&KAFKA, &plain, &["v1.created"], 0),
            "shop.orders.v1.created"
        );
        // Where the broker has no dot, a dot in the name is a doubled separator and a dot in
        // the topic stays the broker's replacement.
        assert_eq!(
            scoped(&SQS, &dotted, &["created", "billing"], 0),
            "shop_orders__v1_created_billing"
        );
        assert_eq!(
            scoped(&SQS, &plain, &["v1.created", "billing"], 0),
            "shop_orders_v1-created_billing"
        );
        // A leading digit gets a prefix no namespace can have.
        assert_eq!(
            scoped(&PUBSUB, &Scope::new("1ns", "bus"), &["t"], 0),
            "sy_1ns.bus.t"
        );
        assert_ne!(
            scoped(&PUBSUB, &Scope::new("1ns", "bus"), &["t"], 0),
            scoped(&PUBSUB, &Scope::new("sy-1ns", "bus"), &["t"], 0)
        );
    }

    #[test]
    fn names_without_dots_are_what_they_always_were() {
        let scope = Scope::new("shop", "message-bus");
        for rules in [&KAFKA, &REDIS, &RABBITMQ, &PUBSUB, &SQS, &SNS] {
            for parts in [&["order-created"][..], &["order.created", "billing"][..]] {
                let mut all = vec!["shop", "message-bus"];
                all.extend_from_slice(parts);
                assert_eq!(scoped(rules, &scope, parts, 4), physical(rules, &all, 4));
            }
        }
        let long = format!("{}.x", "a".repeat(300));
        for rules in [&KAFKA, &SQS] {
            assert_eq!(
                scoped(rules, &scope, &[&long], 4),
                physical(rules, &["shop", "message-bus", &long], 4)
            );
        }
    }

    #[test]
    fn legacy_topics_keep_the_joined_names() {
        let mut scope = Scope::new("shop", "orders.v1");
        scope.legacy_topics.insert("created".into());
        assert_eq!(
            scoped(&KAFKA, &scope, &["created"], 0),
            "shop.orders.v1.created"
        );
        assert_eq!(
            scoped(&KAFKA, &scope, &["shipped"], 0),
            "shop.orders..v1.shipped"
        );
    }
}

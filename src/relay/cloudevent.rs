//! Dapr's envelope: what an app publishes (a raw body with its content type, or a CloudEvent
//! in structured mode) becomes a [`Message`] in each broker's binary mode, and a delivered
//! [`Message`] becomes the structured CloudEvent Dapr POSTs to the app's route.

use base64::Engine;
use serde_json::{Map, Value};

use crate::client::Message;

/// Content type of a structured CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// The header a message's data content type travels in (the CloudEvents Kafka, AMQP and HTTP
/// bindings' `content-type`).
pub const CONTENT_TYPE: &str = "content-type";
/// Dapr's `type` of an event it wrapped itself.
pub const DAPR_EVENT_TYPE: &str = "com.dapr.event.sent";

/// Attributes the envelope sets itself; an app's headers by these names are not copied into it.
const RESERVED: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "data",
    "data_base64",
    "topic",
    "pubsubname",
];

/// What was wrong with a published body.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvelopeError(pub String);

/// Publish options taken from the request's `metadata.*` query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The ordering / partition key (`partitionKey`, `orderingKey` or `key`).
    pub key: Option<String>,
    /// `cloudevent.id`, `cloudevent.source`, `cloudevent.type`: the wrapped event's attributes.
    pub id: Option<String>,
    /// See `id`.
    pub source: Option<String>,
    /// See `id`.
    pub type_: Option<String>,
}

impl PublishOptions {
    /// The options of `metadata.<name>` query parameters (already without the prefix). Names
    /// the relay has no use for are ignored, as Dapr's components ignore what they do not know.
    pub fn from_metadata<'a>(metadata: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut o = PublishOptions::default();
        for (k, v) in metadata {
            match k {
                "partitionKey" | "orderingKey" | "key" => o.key = Some(v.to_string()),
                "cloudevent.id" => o.id = Some(v.to_string()),
                "cloudevent.source" => o.source = Some(v.to_string()),
                "cloudevent.type" => o.type_ = Some(v.to_string()),
                _ => {}
            }
        }
        o
    }
}

/// The message an app's publish becomes. `content_type` is the request's (Dapr's default,
/// `text/plain`, when it sent none); `app_id` is the default `source`.
pub fn message_from_publish(
    body: &[u8],
    content_type: Option<&str>,
    options: &PublishOptions,
    app_id: &str,
) -> Result<Message, EnvelopeError> {
    let content_type = content_type.unwrap_or("text/plain");
    let mut m = if media_type(content_type) == CLOUDEVENTS_JSON {
        let event: Value = serde_json::from_slice(body)
            .map_err(|e| EnvelopeError(format!("the body is not a JSON CloudEvent: {e}")))?;
        from_structured(event, app_id)?
    } else {
        let mut m = Message::new(body.to_vec());
        m.source = app_id.to_string();
        m.type_ = DAPR_EVENT_TYPE.to_string();
        m.headers
            .insert(CONTENT_TYPE.to_string(), content_type.to_string());
        m
    };
    if let Some(id) = &options.id {
        m.id = id.clone();
    }
    if let Some(s) = &options.source {
        m.source = s.clone();
    }
    if let Some(t) = &options.type_ {
        m.type_ = t.clone();
    }
    m.key = options.key.clone();
    Ok(m)
}

/// The message of a bulk-publish entry: its `event` is a JSON value, the entry's own
/// `contentType` says how to read it.
pub fn message_from_bulk_entry(
    event: &Value,
    content_type: Option<&str>,
    options: &PublishOptions,
    app_id: &str,
) -> Result<Message, EnvelopeError> {
    let content_type = content_type.unwrap_or(if event.is_string() {
        "text/plain"
    } else {
        "application/json"
    });
    let body = match event {
        Value::String(s)
            if media_type(content_type) != CLOUDEVENTS_JSON && !is_json(content_type) =>
        {
            s.clone().into_bytes()
        }
        other => serde_json::to_vec(other).map_err(|e| EnvelopeError(e.to_string()))?,
    };
    message_from_publish(&body, Some(content_type), options, app_id)
}

/// A structured CloudEvent as the app sent it.
fn from_structured(event: Value, app_id: &str) -> Result<Message, EnvelopeError> {
    let Value::Object(mut fields) = event else {
        return Err(EnvelopeError("a CloudEvent must be a JSON object".into()));
    };
    let mut text = |name: &str| -> Result<Option<String>, EnvelopeError> {
        match fields.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(EnvelopeError(format!(
                "CloudEvent attribute {name:?} must be a string, not {other}"
            ))),
        }
    };
    if let Some(v) = text("specversion")?
        && v != "1.0"
    {
        return Err(EnvelopeError(format!(
            "CloudEvents specversion {v:?} is not supported (1.0 is)"
        )));
    }
    let id = text("id")?;
    let source = text("source")?;
    let type_ = text("type")?;
    let time = text("time")?;
    let data_content_type = text("datacontenttype")?;
    let data_base64 = text("data_base64")?;
    let data = fields.remove("data");
    let payload = match (data_base64, data) {
        (Some(b64), None) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| EnvelopeError(format!("data_base64 is not base64: {e}")))?,
        (Some(_), Some(_)) => {
            return Err(EnvelopeError(
                "a CloudEvent has either data or data_base64, not both".into(),
            ));
        }
        (None, Some(Value::String(s))) if !data_content_type.as_deref().is_some_and(is_json) => {
            s.into_bytes()
        }
        (None, Some(v)) => serde_json::to_vec(&v).map_err(|e| EnvelopeError(e.to_string()))?,
        (None, None) => Vec::new(),
    };
    let mut m = Message::new(payload);
    if let Some(id) = id {
        m.id = id;
    }
    m.source = source.unwrap_or_else(|| app_id.to_string());
    m.type_ = type_.unwrap_or_else(|| DAPR_EVENT_TYPE.to_string());
    m.time = time;
    m.headers.insert(
        CONTENT_TYPE.to_string(),
        data_content_type.unwrap_or_else(|| "application/json".to_string()),
    );
    // Extension attributes (subject, traceparent, …) travel as headers by their own names.
    for (k, v) in fields {
        if RESERVED.contains(&k.as_str()) {
            continue;
        }
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        m.headers.insert(k, v);
    }
    Ok(m)
}

/// The structured CloudEvent of a delivered message, as Dapr POSTs it to the app: `data` is
/// JSON when the content type says JSON (or, without one, when the payload parses as JSON),
/// text when the payload is UTF-8, `data_base64` otherwise. Headers that are valid CloudEvents
/// attribute names become extension attributes.
pub fn delivery_event(message: &Message, pubsub: &str, topic: &str) -> Value {
    let mut e = Map::new();
    for (k, v) in message.attributes() {
        e.insert(k.to_string(), Value::String(v.to_string()));
    }
    let declared = message.headers.get(CONTENT_TYPE).map(String::as_str);
    let (content_type, data_field, data) = encode_data(&message.payload, declared);
    e.insert("datacontenttype".into(), Value::String(content_type));
    e.insert(data_field.into(), data);
    e.insert("topic".into(), Value::String(topic.to_string()));
    e.insert("pubsubname".into(), Value::String(pubsub.to_string()));
    for (k, v) in &message.headers {
        if k != CONTENT_TYPE && is_attribute_name(k) && !RESERVED.contains(&k.as_str()) {
            e.insert(k.clone(), Value::String(v.clone()));
        }
    }
    if let Some(tp) = message.headers.get("traceparent") {
        e.insert("traceid".into(), Value::String(tp.clone()));
    }
    Value::Object(e)
}

/// The data content type, the field the data goes in, and the data.
fn encode_data(payload: &[u8], declared: Option<&str>) -> (String, &'static str, Value) {
    let text = std::str::from_utf8(payload).ok();
    match declared {
        Some(ct) if is_json(ct) => match serde_json::from_slice::<Value>(payload) {
            Ok(v) => (ct.to_string(), "data", v),
            Err(_) => fallback(payload, text, ct.to_string()),
        },
        Some(ct) => fallback(payload, text, ct.to_string()),
        None => match serde_json::from_slice::<Value>(payload) {
            Ok(v) if !payload.is_empty() => ("application/json".into(), "data", v),
            _ => fallback(
                payload,
                text,
                if text.is_some() {
                    "text/plain".into()
                } else {
                    "application/octet-stream".into()
                },
            ),
        },
    }
}

fn fallback(payload: &[u8], text: Option<&str>, ct: String) -> (String, &'static str, Value) {
    match text {
        Some(t) => (ct, "data", Value::String(t.to_string())),
        None => (
            ct,
            "data_base64",
            Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
        ),
    }
}

/// The media type of a content type, without parameters, lowercase.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a content type is JSON (`application/json`, `…+json`, `text/json`).
fn is_json(content_type: &str) -> bool {
    let m = media_type(content_type);
    m == "application/json" || m == "text/json" || m.ends_with("+json")
}

/// CloudEvents attribute names: lowercase letters and digits, at most 20 (recommended).
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_json_body_is_wrapped_and_delivered_as_json_data() {
        let m = message_from_publish(
            br#"{"orderId":7}"#,
            Some("application/json"),
            &PublishOptions::from_metadata([("partitionKey", "c-1"), ("ttlInSeconds", "9")]),
            "checkout",
        )
        .expect("message");
        assert_eq!(m.key.as_deref(), Some("c-1"));
        assert_eq!(m.source, "checkout");
        assert_eq!(m.type_, DAPR_EVENT_TYPE);
        let e = delivery_event(&m, "orders-bus", "orders");
        assert_eq!(e["data"], json!({"orderId": 7}));
        assert_eq!(e["datacontenttype"], "application/json");
        assert_eq!(e["id"], m.id.as_str());
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["topic"], "orders");
        assert_eq!(e["pubsubname"], "orders-bus");
    }

    #[test]
    fn text_and_binary_bodies_keep_their_bytes() {
        let m =
            message_from_publish(b"hello", None, &PublishOptions::default(), "a").expect("message");
        assert_eq!(m.payload, b"hello");
        let e = delivery_event(&m, "p", "t");
        assert_eq!(e["data"], "hello");
        assert_eq!(e["datacontenttype"], "text/plain");

        let bytes = vec![0xff, 0x00, 0x80];
        let m = message_from_publish(
            &bytes,
            Some("application/octet-stream"),
            &PublishOptions::default(),
            "a",
        )
        .expect("message");
        let e = delivery_event(&m, "p", "t");
        assert!(e.get("data").is_none());
        assert_eq!(e["data_base64"], "/wCA");
    }

    #[test]
    fn a_structured_cloudevent_keeps_its_attributes_and_extensions() {
        let body = json!({
            "specversion": "1.0", "id": "e-1", "source": "shop", "type": "order.created",
            "time": "2026-12-02T10:00:00Z", "datacontenttype": "application/json",
            "data": {"n": 1}, "subject": "order-1", "traceparent": "00-ab-cd-01"
        });
        let m = message_from_publish(
            &serde_json::to_vec(&body).expect("json"),
            Some("application/cloudevents+json; charset=utf-8"),
            &PublishOptions::default(),
            "app",
        )
        .expect("message");
        assert_eq!(
            (m.id.as_str(), m.source.as_str(), m.type_.as_str()),
            ("e-1", "shop", "order.created")
        );
        assert_eq!(m.time.as_deref(), Some("2026-12-02T10:00:00Z"));
        assert_eq!(m.payload, br#"{"n":1}"#);
        assert_eq!(m.headers["subject"], "order-1");
        let e = delivery_event(&m, "p", "t");
        assert_eq!(e["data"], json!({"n": 1}));
        assert_eq!(e["subject"], "order-1");
        assert_eq!(e["traceparent"], "00-ab-cd-01");
        assert_eq!(e["traceid"], "00-ab-cd-01");
    }

    #[test]
    fn data_base64_is_decoded_and_bad_events_are_refused() {
        let m = message_from_publish(
            br#"{"specversion":"1.0","id":"x","source":"s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAE="}"#,
            Some(CLOUDEVENTS_JSON),
            &PublishOptions::default(),
            "a",
        )
        .expect("message");
        assert_eq!(m.payload, vec![0, 1]);
        for (body, says) in [
            (&b"not json"[..], "not a JSON CloudEvent"),
            (br#"[1]"#, "JSON object"),
            (br#"{"specversion":"0.3"}"#, "specversion"),
            (br#"{"id":5}"#, "must be a string"),
            (br#"{"data":1,"data_base64":"AA=="}"#, "not both"),
        ] {
            let err = message_from_publish(
                body,
                Some(CLOUDEVENTS_JSON),
                &PublishOptions::default(),
                "a",
            )
            .expect_err("refused");
            assert!(err.0.contains(says), "{err} should say {says:?}");
        }
    }

    #[test]
    fn messages_from_the_library_are_delivered_by_their_payload() {
        let m = Message::new(br#"{"a":1}"#.to_vec()).with_header("trace", "t1");
        let e = delivery_event(&m, "p", "t");
        assert_eq!(e["data"], json!({"a": 1}));
        assert_eq!(e["trace"], "t1");
        assert_eq!(e["source"], "switchyard");
        let m = Message::new(b"plain".to_vec()).with_header("Not-An-Attribute", "x");
        let e = delivery_event(&m, "p", "t");
        assert_eq!(e["data"], "plain");
        assert!(e.get("Not-An-Attribute").is_none());
    }

    #[test]
    fn bulk_entries_are_read_by_their_content_type() {
        let o = PublishOptions::default();
        let m = message_from_bulk_entry(&json!({"k": 1}), None, &o, "a").expect("json");
        assert_eq!(m.payload, br#"{"k":1}"#);
        let m = message_from_bulk_entry(&json!("text"), None, &o, "a").expect("text");
        assert_eq!(m.payload, b"text");
        let m = message_from_bulk_entry(
            &json!({"specversion":"1.0","id":"b-1","source":"s","type":"t","data":"x","datacontenttype":"text/plain"}),
            Some(CLOUDEVENTS_JSON),
            &o,
            "a",
        )
        .expect("cloudevent");
        assert_eq!((m.id.as_str(), m.payload.as_slice()), ("b-1", &b"x"[..]));
    }
}

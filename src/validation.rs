//! Client-side validation of MessageBroker manifests with the same rules the API server applies:
//! the CRD's OpenAPI schema (types, required fields, patterns, bounds, list-map keys, unknown
//! fields) and its CEL rules (evaluated by kube's CEL engine). Used by `switchyard plan`, so a
//! pull request learns what `kubectl apply` would say before it is merged.

use std::collections::BTreeSet;

use kube::CustomResourceExt;
use serde_json::Value;

use crate::api::MessageBroker;

/// The CRD's openAPIV3Schema as JSON.
pub fn crd_schema() -> Value {
    let crd = MessageBroker::crd();
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

/// Every problem with a manifest, each naming the field; empty when valid.
pub fn validate(object: &Value) -> Vec<String> {
    let schema = crd_schema();
    let mut errors = Vec::new();
    check(&schema, object, "", &mut errors, true);
    if errors.is_empty() {
        // CEL rules assume a structurally valid object, as on the API server.
        if let Err(e) = kube::core::cel::Validator::new().validate(&schema, object, None) {
            for err in e.into_vec() {
                let path = if err.field_path.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", err.field_path)
                };
                errors.push(format!("{path}Invalid value: {}", err.message));
            }
        }
    }
    errors
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>, root: bool) {
    if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            errors.push(format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {t}"
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        errors.push(format!(
            "{path}: Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ));
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                errors.push(format!("{path}: Invalid value: {value}: {path} in body should be at least {min} chars long"));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                errors.push(format!(
                    "{path}: Too long: may not be more than {max} bytes"
                ));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(s) => errors.push(format!(
                        "{path}: Invalid value: {value}: {path} in body should match '{p}'"
                    )),
                    _ => {}
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                errors.push(format!("{path}: Invalid value: {n}: {path} in body should be greater than or equal to {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                errors.push(format!("{path}: Invalid value: {n}: {path} in body should be less than or equal to {max}"));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                errors.push(format!(
                    "{path}: Invalid value: {len}: {path} in body should have at least {min} items"
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                errors.push(format!(
                    "{path}: Too many: {len}: must have at most {max} items"
                ));
            }
            if let Some(keys) = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
            {
                let mut seen = BTreeSet::new();
                for item in items {
                    let key: Vec<String> = keys
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|k| format!("{k}={}", item.get(k).unwrap_or(&Value::Null)))
                        .collect();
                    if !seen.insert(key.clone()) {
                        errors.push(format!(
                            "{path}: duplicate entries for key [{}]",
                            key.join(",")
                        ));
                    }
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors, false);
                }
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        errors.push(format!("{}: Required value", join(path, r)));
                    }
                }
            }
            let preserve = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let additional = schema.get("additionalProperties");
            for (k, v) in map {
                // The root's apiVersion/kind/metadata are checked by the API machinery, not the schema.
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                    continue;
                }
                let child = join(path, k);
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) => check(s, v, &child, errors, false),
                    (None, Some(a)) if a.is_object() => check(a, v, &child, errors, false),
                    (None, _) if preserve => {}
                    (None, _) => errors.push(format!("{child}: field not declared in schema")),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "MessageBroker", "metadata": {"name": "bus"},
            "spec": {"topics": [{"name": "orders", "partitions": 3, "retention": "168h"}],
                     "envs": [{"slug": "prd", "type": "Kafka", "kafka": {"bootstrapServers": ["k:9092"]}}]}
        })
    }

    #[test]
    fn a_valid_manifest_has_no_errors() {
        assert_eq!(validate(&valid()), Vec::<String>::new());
    }

    #[test]
    fn schema_errors_name_the_field() {
        let mut v = valid();
        v["spec"]["topics"][0]["partitions"] = json!(0);
        v["spec"]["envs"][0]["kafka"]["password"] = json!("x");
        let errors = validate(&v);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.topics[0].partitions")
                    && e.contains("greater than or equal to 1")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("spec.envs[0].kafka.password: field not declared in schema")),
            "{errors:?}"
        );
    }

    #[test]
    fn duplicates_in_list_maps_are_refused() {
        let mut v = valid();
        let t = v["spec"]["topics"][0].clone();
        v["spec"]["topics"] = json!([t.clone(), t]);
        assert!(
            validate(&v)
                .iter()
                .any(|e| e.contains("duplicate entries for key [name=\"orders\"]"))
        );
    }

    #[test]
    fn replication_factor_is_not_a_topic_config() {
        let mut v = valid();
        v["spec"]["envs"][0]["kafka"]["topicConfig"] = json!({"replication.factor": "3"});
        let errors = validate(&v);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("replication.factor is not a topic config")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_redis_ca_needs_a_tls_url() {
        let mut v = valid();
        v["spec"]["envs"][0] = json!({"slug": "prd", "type": "Redis",
            "redis": {"url": "redis://r:6379", "caSecretRef": {"name": "ca", "key": "ca.crt"}}});
        let errors = validate(&v);
        assert!(errors.iter().any(|e| e.contains("rediss://")), "{errors:?}");
        v["spec"]["envs"][0]["redis"]["url"] = json!("rediss://r:6379");
        assert_eq!(validate(&v), Vec::<String>::new());
    }

    #[test]
    fn cel_rules_give_the_same_messages_as_the_api_server() {
        let mut v = valid();
        v["spec"]["envs"][0] = json!({"slug": "prd", "type": "Redis"});
        let errors = validate(&v);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("type Redis needs exactly the `redis` settings block")),
            "{errors:?}"
        );
    }
}

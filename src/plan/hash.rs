//! The snapshot hash: sha256 of the canonical JSON of an [`AgentDefinition`].
//!
//! Canonical JSON here is serde_json's encoding of the definition with every object's keys
//! sorted and no whitespace; absent optional fields are omitted, never written as null. Two
//! definitions that serialize to the same JSON value hash the same, whatever key order the
//! user wrote.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::{AgentDefinition, AgentVersionSpec};

/// Lowercase hex sha256 of the definition's canonical JSON.
pub fn snapshot_hash(definition: &AgentDefinition) -> String {
    let digest = Sha256::digest(canonical_json(definition).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Digest of a history: sha256 over each version's number, snapshot hash and making rollback,
/// in number order. Everything a decision reads from a version, apart from the snapshot that
/// the snapshot hash stands for.
pub fn versions_digest<'a>(versions: impl IntoIterator<Item = &'a AgentVersionSpec>) -> String {
    history_digest(versions.into_iter().map(|v| (v.version, v.snapshot_hash.as_str(), v.rollback_name.as_deref())))
}

/// [`versions_digest`] of (number, snapshot hash, making rollback) triples, in any order.
pub fn history_digest<'a>(versions: impl IntoIterator<Item = (i64, &'a str, Option<&'a str>)>) -> String {
    let mut entries: Vec<(i64, String)> = versions
        .into_iter()
        .map(|(number, hash, rollback)| (number, format!("{number}:{hash}:{}", rollback.unwrap_or(""))))
        .collect();
    entries.sort_by_key(|(number, _)| *number);
    let lines: Vec<String> = entries.into_iter().map(|(_, line)| line).collect();
    let digest = Sha256::digest(lines.join("\n").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The canonical JSON text of a definition.
pub fn canonical_json(definition: &AgentDefinition) -> String {
    // Cannot fail: every map in AgentDefinition has string keys.
    let value = serde_json::to_value(definition).expect("AgentDefinition serializes to JSON");
    let mut out = String::new();
    write_canonical(&value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(json: &str) -> AgentDefinition {
        serde_json::from_str(json).expect("test definition parses")
    }

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = definition(r#"{"model":"m","steps":[{"b":1,"a":{"y":2,"x":1}}]}"#);
        let b = definition(r#"{"steps":[{"a":{"x":1,"y":2},"b":1}],"model":"m"}"#);
        assert_eq!(snapshot_hash(&a), snapshot_hash(&b));
    }

    #[test]
    fn canonical_json_sorts_keys_and_omits_absent_fields() {
        let d = definition(r#"{"temperature":1,"displayName":"x","steps":[{"z":true,"a":null}]}"#);
        assert_eq!(canonical_json(&d), r#"{"displayName":"x","steps":[{"a":null,"z":true}],"temperature":1.0}"#);
    }

    #[test]
    fn any_change_changes_the_hash() {
        let a = definition(r#"{"instructions":"be kind"}"#);
        let b = definition(r#"{"instructions":"be kind."}"#);
        assert_ne!(snapshot_hash(&a), snapshot_hash(&b));
        assert_eq!(snapshot_hash(&a).len(), 64);
    }

    #[test]
    fn hash_is_sha256_of_the_canonical_json() {
        // sha256("{}"), computed independently.
        assert_eq!(
            snapshot_hash(&AgentDefinition::default()),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}

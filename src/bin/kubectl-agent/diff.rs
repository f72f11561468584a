//! A field-by-field diff of two snapshots, for people deciding whether to roll back.
//! Nested fields are named by path (`steps[1].prompt`); a list that changed length shows each
//! item added or removed.

use std::collections::BTreeMap;

use agent_operator::api::AgentDefinition;
use serde_json::Value;

use crate::terminal::escape;

/// One changed field.
#[derive(Debug, PartialEq)]
pub enum Change {
    Added(String, Value),
    Removed(String, Value),
    Changed(String, Value, Value),
}

/// The fields that differ from `from` to `to`, in path order.
pub fn changes(from: &AgentDefinition, to: &AgentDefinition) -> Vec<Change> {
    let (a, b) = (flatten(from), flatten(to));
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| match (a.get(path), b.get(path)) {
            (Some(x), Some(y)) if x == y => None,
            (Some(x), Some(y)) => Some(Change::Changed(path.clone(), x.clone(), y.clone())),
            (Some(x), None) => Some(Change::Removed(path.clone(), x.clone())),
            (None, Some(y)) => Some(Change::Added(path.clone(), y.clone())),
            (None, None) => None,
        })
        .collect()
}

/// The changes as text, one line each.
pub fn render(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "No differences.\n".into();
    }
    changes
        .iter()
        .map(|c| match c {
            Change::Added(path, v) => format!("+ {}: {v}\n", escape(path)),
            Change::Removed(path, v) => format!("- {}: {v}\n", escape(path)),
            Change::Changed(path, a, b) => format!("~ {}: {a} -> {b}\n", escape(path)),
        })
        .collect()
}

fn flatten(definition: &AgentDefinition) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Ok(value) = serde_json::to_value(definition) {
        walk(&value, String::new(), &mut out);
    }
    out
}

fn walk(value: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                let next = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                walk(item, next, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{path}[{i}]"), out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(value: Value) -> AgentDefinition {
        serde_json::from_value(value).expect("definition")
    }

    #[test]
    fn changed_added_and_removed_fields_are_named_by_path() {
        let a = definition(
            json!({"model": "auto", "temperature": 1.0, "steps": [{"name": "greet"}], "knowledgeBaseFiles": ["faq.md"]}),
        );
        let b = definition(
            json!({"model": "auto", "temperature": 0.3, "steps": [{"name": "greet"}, {"name": "refund", "x": 1}]}),
        );
        assert_eq!(
            render(&changes(&a, &b)),
            "- knowledgeBaseFiles[0]: \"faq.md\"\n+ steps[1].name: \"refund\"\n+ steps[1].x: 1\n~ temperature: 1.0 -> 0.3\n"
        );
    }

    #[test]
    fn equal_snapshots_have_no_differences() {
        let a = definition(json!({"instructions": "be kind"}));
        assert_eq!(render(&changes(&a, &a.clone())), "No differences.\n");
    }
}

//! The Agent's `InSync` condition: whether its spec holds the active version's definition.
//! After a rollback it does not, and nothing else would tell a GitOps user that git still
//! holds what was rolled back, to be published again by the next unrelated edit.

use serde_json::Value;

use super::Refusal;
use super::hash::snapshot_hash;
use super::status::ConditionSpec;
use crate::api::conditions::{IN_SYNC, reasons};
use crate::api::{Agent, AgentDefinition, AgentVersionSpec};

/// `InSync` for `agent` with `active` the active version; `rolled_back_by` names the rollback
/// that left it active, if one did; `refused` when the spec's definition is not published.
pub fn condition(
    agent: &Agent,
    active: Option<&AgentVersionSpec>,
    rolled_back_by: Option<&str>,
    refused: Option<&Refusal>,
) -> ConditionSpec<'static> {
    let name = agent.metadata.name.as_deref().unwrap_or_default();
    let differs =
        |reason: &'static str, message: String| ConditionSpec { type_: IN_SYNC, status: false, reason, message };
    let Some(active) = active else {
        return differs(reasons::NO_VERSION, "No version is active yet.".to_string());
    };
    let number = active.version;
    if let Some(refusal) = refused {
        let why = if refusal.reason == reasons::VERSION_REFUSED {
            "was refused by the API server"
        } else {
            "is too large to publish"
        };
        return differs(refusal.reason, format!("The spec's definition {why}; version {number} stays active."));
    }
    if snapshot_hash(&agent.spec.definition) == active.snapshot_hash {
        return ConditionSpec {
            type_: IN_SYNC,
            status: true,
            reason: reasons::MATCHES_ACTIVE_VERSION,
            message: format!("The spec holds version {number}'s definition."),
        };
    }
    let fields = differing_fields(&agent.spec.definition, &active.snapshot).join(", ");
    match rolled_back_by.or(active.rollback_name.as_deref()) {
        Some(rollback) => differs(
            reasons::ROLLED_BACK,
            format!(
                "AgentRollback {rollback} made version {number} active; the spec differs from it in: {fields}. \
                 `kubectl agent export {name}` prints the manifest that matches it."
            ),
        ),
        None => differs(reasons::SPEC_DIFFERS, format!("The spec differs from active version {number} in: {fields}.")),
    }
}

/// The definition's fields (as in the manifest) whose values differ, in name order.
pub fn differing_fields(a: &AgentDefinition, b: &AgentDefinition) -> Vec<String> {
    let object = |d: &AgentDefinition| match serde_json::to_value(d) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (object(a), object(b));
    let mut fields: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    fields.sort();
    fields.dedup();
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn agent(instructions: &str, model: &str) -> Agent {
        let definition = AgentDefinition { model: Some(model.into()), ..fixtures::definition(instructions) };
        fixtures::agent("support", definition)
    }

    fn version(number: i64, agent: &Agent, rollback: Option<&str>) -> AgentVersionSpec {
        fixtures::version(agent, number, agent.spec.definition.clone(), rollback).spec
    }

    #[test]
    fn a_spec_that_holds_the_active_definition_is_in_sync() {
        let a = agent("be kind", "m1");
        let c = condition(&a, Some(&version(2, &a, None)), None, None);
        assert!(c.status);
        assert_eq!(c.reason, reasons::MATCHES_ACTIVE_VERSION);
    }

    #[test]
    fn after_a_rollback_it_names_the_rollback_and_the_fields_that_differ() {
        let (old, spec) = (agent("be kind", "m1"), agent("be brief", "m2"));
        let made = version(3, &old, Some("undo-brief"));
        let c = condition(&spec, Some(&made), None, None);
        assert!(!c.status);
        assert_eq!(c.reason, reasons::ROLLED_BACK);
        assert!(c.message.contains("AgentRollback undo-brief made version 3 active"), "{}", c.message);
        assert!(c.message.contains("in: instructions, model."), "{}", c.message);
        // A Pop makes no version: the rollback is named by the caller.
        let c = condition(&spec, Some(&version(1, &old, None)), Some("pop-it"), None);
        assert_eq!(c.reason, reasons::ROLLED_BACK);
        assert!(c.message.contains("AgentRollback pop-it made version 1 active"), "{}", c.message);
    }

    #[test]
    fn a_difference_without_a_rollback_and_a_refused_definition_have_their_own_reasons() {
        let (old, spec) = (agent("be kind", "m1"), agent("be kind", "m2"));
        let c = condition(&spec, Some(&version(1, &old, None)), None, None);
        assert_eq!((c.status, c.reason), (false, reasons::SPEC_DIFFERS));
        assert!(c.message.ends_with("in: model."), "{}", c.message);
        for reason in [reasons::DEFINITION_TOO_LARGE, reasons::VERSION_REFUSED] {
            let refusal = Refusal { reason, message: String::new() };
            let c = condition(&spec, Some(&version(1, &old, None)), None, Some(&refusal));
            assert_eq!((c.status, c.reason), (false, reason));
            assert!(c.message.contains("version 1 stays active"), "{}", c.message);
        }
        let c = condition(&spec, None, None, None);
        assert_eq!((c.status, c.reason), (false, reasons::NO_VERSION));
    }
}

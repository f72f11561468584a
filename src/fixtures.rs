//! Objects for the unit and property tests, built as the API server returns them, in one
//! place. Every object lives in the namespace `ns`; uids are `uid-<name>`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{Agent, AgentDefinition, AgentRollback, AgentRollbackSpec, AgentSpec, AgentVersion, RollbackStrategy};
use crate::plan::hash::snapshot_hash;
use crate::plan::publish::{Provenance, RollbackOrigin, new_version};

/// A definition that holds only `instructions`.
pub fn definition(instructions: &str) -> AgentDefinition {
    AgentDefinition { instructions: Some(instructions.into()), ..AgentDefinition::default() }
}

/// The Agent `ns/name` at generation 1 and resourceVersion 1, holding `definition`, with a
/// history limit of 10 and no delivery spec.
pub fn agent(name: &str, definition: AgentDefinition) -> Agent {
    let mut agent = Agent::new(name, AgentSpec { definition, revision_history_limit: 10, delivery: None });
    agent.metadata.namespace = Some("ns".into());
    agent.metadata.uid = Some(format!("uid-{name}"));
    agent.metadata.generation = Some(1);
    agent.metadata.resource_version = Some("1".into());
    agent
}

/// Version `number` of `agent`, holding `snapshot`, as the operator makes it (made by the
/// rollback `rollback` if given), with the uid the API server gave it.
pub fn version(agent: &Agent, number: i64, snapshot: AgentDefinition, rollback: Option<&str>) -> AgentVersion {
    let hash = snapshot_hash(&snapshot);
    let origin = rollback.map(|rollback_name| RollbackOrigin { from_version: number - 1, rollback_name });
    let provenance = Provenance { rollback: origin, change_cause: None, published_by: None };
    let mut version = new_version(agent, number, snapshot, hash, provenance, None);
    version.metadata.uid = Some(format!("uid-{}", version.metadata.name.as_deref().unwrap_or_default()));
    version
}

/// The rollback `ns/name` of `agent`, new (no status), at resourceVersion 5.
pub fn rollback(name: &str, agent: &str, strategy: RollbackStrategy) -> AgentRollback {
    let spec = AgentRollbackSpec {
        agent_name: agent.into(),
        channel: None,
        strategy,
        target_version: None,
        expected_active_version: None,
        reason: None,
        requested_by: None,
    };
    let mut rollback = AgentRollback::new(name, spec);
    rollback.metadata.namespace = Some("ns".into());
    rollback.metadata.uid = Some(format!("uid-{name}"));
    rollback.metadata.resource_version = Some("5".into());
    rollback
}

/// A condition of `type_`, `status`, for `reason`.
pub fn condition(type_: &str, status: bool, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

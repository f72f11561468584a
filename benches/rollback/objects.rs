//! What the parts make in the cluster: Agents, their versions and rollbacks as the operator
//! would write them, and the operator they start.

use std::time::Duration;

use agent_operator::api::keys::ROLLBACK_RECORD_ANNOTATION;
use agent_operator::api::{Agent, AgentDefinition, AgentRollback, AgentRollbackStatus, AgentVersion};
use agent_operator::plan::durable::RollbackRecord;
use agent_operator::plan::hash::snapshot_hash;
use agent_operator::plan::publish::{Provenance, new_version};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::support::{Operator, control_plane, eventually};

pub(crate) const MANAGER: &str = "agentops.dev/agent-operator";

pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

pub(crate) fn agent_body(name: &str, instructions: &str, limit: i64) -> serde_json::Value {
    json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name},
           "spec": {"instructions": instructions, "model": "auto", "temperature": 0.7, "revisionHistoryLimit": limit,
                    "steps": [{"name": "greet", "prompt": "Greet the customer."}, {"name": "triage", "prompt": "Find out what they need."}]}})
}

pub(crate) fn definition(instructions: &str) -> AgentDefinition {
    serde_json::from_value(agent_body("x", instructions, 10)["spec"].clone()).unwrap()
}

pub(crate) async fn create_agent(api: &Api<Agent>, name: &str, instructions: &str, limit: i64) -> Agent {
    api.create(&PostParams::default(), &serde_json::from_value(agent_body(name, instructions, limit)).unwrap())
        .await
        .unwrap()
}

pub(crate) async fn create_rollback(
    api: &Api<AgentRollback>,
    name: &str,
    agent: &str,
    strategy: &str,
    target: Option<i64>,
) -> AgentRollback {
    let mut spec = json!({"agentName": agent, "strategy": strategy});
    if let Some(t) = target {
        spec["targetVersion"] = json!(t);
    }
    let body: AgentRollback = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &body).await.unwrap()
}

/// A rollback's record alone, on the resourceVersion it was read at; returns the rollback
/// with the resourceVersion the write left.
pub(crate) async fn write_record(
    api: &Api<AgentRollback>,
    rollback: &AgentRollback,
    record: &RollbackRecord,
) -> AgentRollback {
    let record = serde_json::to_string(record).unwrap();
    let body = json!({"metadata": {"resourceVersion": rollback.resource_version(),
                                   "annotations": {ROLLBACK_RECORD_ANNOTATION: record}}});
    let marked = api.patch_metadata(&rollback.name_any(), &PatchParams::default(), &Patch::Merge(body)).await.unwrap();
    let mut object = rollback.clone();
    object.metadata.resource_version = marked.metadata.resource_version;
    object.metadata.managed_fields = None;
    object
}

/// A rollback's status, replaced on its resourceVersion.
pub(crate) async fn write_status(
    api: &Api<AgentRollback>,
    rollback: &AgentRollback,
    status: &AgentRollbackStatus,
) -> AgentRollback {
    let mut object = rollback.clone();
    object.status = Some(status.clone());
    api.replace_status(&rollback.name_any(), &PostParams::default(), &object).await.unwrap()
}

pub(crate) fn start_operator(ns: &str, flags: &[&str]) -> Operator {
    let filter = std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into());
    Operator::start_logged(&control_plane().kubeconfig, ns, flags, &filter)
}

pub(crate) async fn settled(api: &Api<Agent>, name: &str) {
    eventually(Duration::from_secs(120), || async {
        let a = api.get(name).await.ok()?;
        (a.status.as_ref()?.observed_generation == a.metadata.generation).then_some(())
    })
    .await;
}

/// An Agent with versions 1 and 2, published by the operator (a created Agent, then an edit).
pub(crate) async fn published_twice(api: &Api<Agent>, name: &str) {
    create_agent(api, name, "v1", 10).await;
    settled(api, name).await;
    let edit = json!({"spec": {"instructions": "v2"}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(edit)).await.unwrap();
    settled(api, name).await;
}

/// Versions 1 and 2 of `agent`, written directly, as the operator would have published them.
pub(crate) async fn write_two_versions(versions: &Api<AgentVersion>, agent: &Agent) {
    for v in 1..=2 {
        let snapshot = definition(&format!("v{v}"));
        let hash = snapshot_hash(&snapshot);
        let provenance = Provenance { rollback: None, change_cause: None, published_by: None };
        versions
            .create(&PostParams::default(), &new_version(agent, v, snapshot, hash, provenance, None))
            .await
            .unwrap();
    }
}

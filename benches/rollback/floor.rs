//! The floor: a rollback's writes made directly, as the operator makes them, with no operator.

use agent_operator::api::{
    Agent, AgentRollback, AgentRollbackStatus, AgentVersion, DeliveryStatus, LastRollback, RollbackPhase,
};
use agent_operator::controller::apply::agent_status;
use agent_operator::plan::delivery::DeliveryState;
use agent_operator::plan::durable::{AgentMark, Handled, RollbackRecord};
use agent_operator::plan::hash::{snapshot_hash, versions_digest};
use agent_operator::plan::publish::{Provenance, new_version};
use agent_operator::plan::status::set_rollback_phase;
use agent_operator::plan::{Observed, StatusChange, VersionsAfter};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::figures::*;
use crate::objects::*;

/// The writes one Restore needs, made directly, as the operator makes them (the same objects,
/// with the same content): the rollback's Running record; its status beside the new version's
/// create; the Agent's status beside the rollback's Succeeded record; its status.
pub(crate) async fn direct_restore(client: &Client, ns: &str, agent: &Agent, rollback: &AgentRollback, number: i64) {
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), ns);
    let versions: Api<AgentVersion> = Api::namespaced(client.clone(), ns);
    let agents: Api<Agent> = Api::namespaced(client.clone(), ns);
    let t = now();
    let mut status = AgentRollbackStatus {
        from_version: Some(number - 1),
        restored_version: Some(1),
        new_version: Some(number),
        ..Default::default()
    };
    set_rollback_phase(&mut status, RollbackPhase::Running, None, "Rolling back.".into(), Some(1), &t);
    let handled = Handled { generation: 1, definition_hash: snapshot_hash(&agent.spec.definition) };
    let mark = AgentMark { uid: agent.uid().unwrap(), handled: Some(handled.clone()) };
    let record = |status: &AgentRollbackStatus| RollbackRecord {
        status: status.clone(),
        agent: Some(mark.clone()),
        channel: None,
    };
    let recorded = write_record(&rollbacks, rollback, &record(&status)).await;
    trace("floor-running", &rollback.name_any());

    let snapshot = definition("restored");
    let hash = snapshot_hash(&snapshot);
    let provenance = Provenance { rollback: None, change_cause: None, published_by: None };
    let version = new_version(agent, number, snapshot, hash, provenance, None);
    let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let (running, created) =
        tokio::join!(write_status(&rollbacks, &recorded, &status), versions.create(&params, &version));
    created.unwrap();
    trace("floor-created", &rollback.name_any());

    // The Agent's status as the operator computes and writes it for this step.
    let observed = Observed::new(ns.into(), agent.name_any(), Some(agent.clone()), Vec::new(), Vec::new());
    let change = StatusChange {
        versions: VersionsAfter { newest: Some(&version), count: number, digest: versions_digest([&version.spec]) },
        handled: Some(handled.clone()),
        last_rollback: Some(LastRollback { name: rollback.name_any(), time: t.clone() }),
        delivery_report: Some(Some(DeliveryStatus {
            config_map: Some(format!("{}-agent", agent.name_any())),
            version: Some(number - 1),
            workloads: Vec::new(),
        })),
        busy: None,
        delivery: &DeliveryState::Delivered,
    };
    let patch = agent_status(&observed.agent_status(agent, change, &t));
    let (apply, name) = (PatchParams::apply(MANAGER).force(), agent.name_any());
    status.active_version = Some(number);
    set_rollback_phase(&mut status, RollbackPhase::Succeeded, None, "Rolled back.".into(), Some(1), &t);
    let succeeded = record(&status);
    let (applied, recorded) =
        tokio::join!(agents.patch_status(&name, &apply, &patch), write_record(&rollbacks, &running, &succeeded));
    applied.unwrap();
    trace("floor-succeeded", &rollback.name_any());
    write_status(&rollbacks, &recorded, &status).await;
    trace("floor-status", &rollback.name_any());
}

/// Every write the operator makes for one Restore at the history limit, made directly: the
/// rollback's create, the writes of [`direct_restore`], then the pruned version's delete, the
/// delivery ConfigMap and the rollback's three Events.
/// What the throughput is measured against: the operator's own cost is then what it spends
/// beyond the writes it must make.
pub(crate) async fn direct_restore_in_full(
    client: &Client,
    ns: &str,
    agent: &Agent,
    rollback: &str,
    number: i64,
    limit: i64,
) {
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), ns);
    let created = create_rollback(&rollbacks, rollback, &agent.name_any(), "Previous", None).await;
    let prune = async {
        let versions: Api<AgentVersion> = Api::namespaced(client.clone(), ns);
        if number > limit {
            let oldest = agent_operator::plan::version_name(&agent.name_any(), number - limit);
            versions.delete(&oldest, &Default::default()).await.unwrap();
        }
    };
    // The operator prunes once the rollback's status is written.
    direct_restore(client, ns, agent, &created, number).await;
    prune.await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let config_map_name = format!("{}-agent", agent.name_any());
    let config_map = Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": config_map_name, "annotations": {"agentops.dev/active-version": number.to_string()}},
        "data": {"agent.json": serde_json::to_string(&definition("restored")).unwrap()}}));
    let apply = PatchParams::apply(MANAGER).force();
    let deliver = config_maps.patch(&config_map_name, &apply, &config_map);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let event = |kind: &str, name: &str, reason: &str| {
        let body: Event = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}.{}.{number}", reason.to_lowercase())},
            "eventTime": now().0, "reportingController": MANAGER, "reportingInstance": "bench",
            "action": "Rollback", "reason": reason, "type": "Normal", "note": format!("{reason} {number}"),
            "regarding": {"apiVersion": "agentops.dev/v1alpha1", "kind": kind, "name": name, "namespace": ns}
        }))
        .unwrap();
        let events = events.clone();
        async move { events.create(&PostParams::default(), &body).await.unwrap() }
    };
    let (delivered, ..) = tokio::join!(
        deliver,
        event("AgentRollback", rollback, "RollbackStarted"),
        event("AgentRollback", rollback, "RollbackSucceeded"),
        event("Agent", &agent.name_any(), "RolledBack"),
    );
    delivered.unwrap();
}

/// The floor, three ways, from the same repetitions.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Floor {
    /// Every write between the start and the end of the measured rollback latency: the
    /// AgentRollback's create, then the writes the operator makes (see `direct_restore`),
    /// until a watch shows the rollback Succeeded, as the rollback latency ends.
    pub(crate) writes: Percentiles,
    /// The same until the last write returned (how the floor ended until this round).
    pub(crate) returned: Percentiles,
    /// The same as `writes` without the AgentRollback's create.
    pub(crate) without_create: Percentiles,
}

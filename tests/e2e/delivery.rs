//! Delivery, with the operator as a process: every Agent's ConfigMap holds the active version
//! through publish, Restore, Previous and Pop; a ConfigMap the operator did not create is never
//! written, only reported; a ConfigMap deleted by hand comes back; a workload the operator may
//! not patch is reported. (Workloads that roll are shown on the node, in `in_cluster`.)

use std::time::Duration;

use agent_operator::api::{Agent, AgentDefinition};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::rollback::{Setup, setup};
use crate::support::{eventually, kubectl, kubectl_as, user_kubeconfig};

const WAIT: Duration = Duration::from_secs(60);

fn config_maps(s: &Setup) -> Api<ConfigMap> {
    Api::namespaced(s.client.clone(), &s.ns)
}

fn condition(agent: &Agent, type_: &str) -> Option<(String, String, String)> {
    let c = agent.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the ConfigMap holds `version` and the Agent reports it delivered, and checks
/// that its `agent.json` is that version's snapshot, byte for byte as the operator writes it.
async fn delivered(s: &Setup, version: i64, instructions: &str) -> ConfigMap {
    let cm = eventually(WAIT, || async {
        let cm = config_maps(s).get_opt("support-agent").await.ok()??;
        let agent = s.agents().get("support").await.ok()?;
        let ready = condition(&agent, "Ready")?.0 == "True";
        let status = agent.status?.delivery?;
        (cm.annotations().get("agentops.dev/active-version") == Some(&version.to_string())
            && status.version == Some(version)
            && ready)
            .then_some(cm)
    })
    .await;
    let data = cm.data.clone().unwrap();
    let snapshot: AgentDefinition = serde_json::from_str(&data["agent.json"]).unwrap();
    assert_eq!(snapshot.instructions.as_deref(), Some(instructions));
    assert_eq!(data["version"], version.to_string());
    let v = s.versions("support").await.into_iter().find(|v| v.spec.version == version).unwrap();
    assert_eq!(cm.annotations()["agentops.dev/snapshot-hash"], v.spec.snapshot_hash);
    assert_eq!(data["snapshot-hash"], v.spec.snapshot_hash);
    cm
}

#[tokio::test]
async fn the_config_map_follows_publish_restore_previous_and_pop_and_goes_with_the_agent() {
    let s = setup("delivery-follows").await;
    let agent = s.agent_with_versions("support", 2, 10).await;
    let cm = delivered(&s, 2, "i2").await;
    assert_eq!(cm.labels()["agentops.dev/agent"], "support");
    let owner = &cm.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Agent", agent.uid().unwrap().as_str(), Some(true))
    );

    s.create_rollback("restore", "support", "Restore", Some(1)).await;
    s.terminal("restore").await;
    delivered(&s, 3, "i1").await;
    s.create_rollback("previous", "support", "Previous", None).await;
    s.terminal("previous").await;
    delivered(&s, 4, "i2").await;
    s.create_rollback("pop", "support", "Pop", None).await;
    s.terminal("pop").await;
    delivered(&s, 3, "i1").await;

    // Deleted by hand: made again.
    config_maps(&s).delete("support-agent", &DeleteParams::default()).await.unwrap();
    delivered(&s, 3, "i1").await;

    // Deleted with its Agent (garbage collection follows the owner reference).
    s.agents().delete("support", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, || async { config_maps(&s).get_opt("support-agent").await.ok()?.is_none().then_some(()) }).await;
}

#[tokio::test]
async fn a_config_map_someone_else_made_is_reported_and_never_written() {
    let s = setup("delivery-foreign").await;
    let theirs: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "support-agent"}, "data": {"mine": "yes"}})).unwrap();
    let theirs = config_maps(&s).create(&PostParams::default(), &theirs).await.unwrap();
    s.apply_agent("support", json!({"instructions": "i1"})).await;

    let agent = eventually(WAIT, || async {
        let agent = s.agents().get("support").await.ok()?;
        (condition(&agent, "Stalled")?.1 == "ConfigMapConflict").then_some(agent)
    })
    .await;
    let (ready, reason, message) = condition(&agent, "Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "ConfigMapConflict"));
    assert!(message.contains("ConfigMap support-agent") && message.contains("configMapName"), "{message}");
    s.wait_events("support", "DeliveryBlocked", 1).await;
    let after = config_maps(&s).get("support-agent").await.unwrap();
    assert_eq!(after.resource_version(), theirs.resource_version(), "the operator wrote into someone else's ConfigMap");
    // `kubectl wait --for=condition=Ready` must not pass.
    assert_eq!(agent.status.unwrap().active_version, Some(1));

    // Once it is out of the way, the operator makes its own (it looks again with backoff).
    config_maps(&s).delete("support-agent", &DeleteParams::default()).await.unwrap();
    delivered(&s, 1, "i1").await;
}

#[tokio::test]
async fn a_workload_the_operator_may_not_patch_is_reported_with_its_reason() {
    // The tests' operator runs with the chart's default RBAC: no workload patches.
    let s = setup("delivery-forbidden").await;
    s.apply_agent(
        "support",
        json!({"instructions": "i1", "delivery": {"restart": [{"kind": "Deployment", "name": "runtime"}]}}),
    )
    .await;
    let agent = eventually(WAIT, || async {
        let agent = s.agents().get("support").await.ok()?;
        (condition(&agent, "Ready")?.1 == "WorkloadForbidden").then_some(agent)
    })
    .await;
    let (_, _, message) = condition(&agent, "Stalled").unwrap();
    assert!(message.contains("Deployment runtime") && message.contains("delivery.restartWorkloads"), "{message}");
    // Looked at again with backoff, not in a loop: a handful of reconciles in five seconds.
    let reconciles = || s.operator.as_ref().unwrap().metric_sum("agentops_reconciles_total{resource=\"agent\"");
    let before = reconciles().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = reconciles().await - before;
    assert!((1.0..=12.0).contains(&during), "{during} Agent reconciles in 5 s");
    // The ConfigMap is delivered all the same.
    let status = agent.status.unwrap().delivery.unwrap();
    assert_eq!(status.version, Some(1));
    assert_eq!(status.workloads.len(), 1);
    assert!(!status.workloads[0].rolled_out);
}

/// Two Agents that list one workload would write the same annotations in turn and roll it at
/// each other's every change. One owns its delivery; the other reports the conflict and writes
/// nothing to it, until the owner is gone.
#[tokio::test]
async fn a_workload_takes_one_agents_delivery_and_another_that_lists_it_reports_the_conflict() {
    let mut s = crate::rollback::setup_without_operator("delivery-conflict").await;
    // Rights to patch workloads, as the chart grants with delivery.restartWorkloads=true.
    s.operator = Some(crate::support::Operator::start_as(&crate::support::control_plane().kubeconfig, &s.ns));
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let web = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "agent-runtime:0.1.0"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(web).unwrap()).await.unwrap();
    let template = || async {
        let d = deployments.get("web").await.unwrap();
        d.spec.unwrap().template.metadata.unwrap().annotations.unwrap_or_default()
    };
    let restart = json!([{"kind": "Deployment", "name": "web"}]);

    s.apply_agent("first", json!({"instructions": "first", "delivery": {"restart": restart}})).await;
    s.settled_agent("first").await;
    let owned = template().await;
    assert_eq!(owned.get("agentops.dev/delivered-for").map(String::as_str), Some("first"), "{owned:?}");

    s.apply_agent("second", json!({"instructions": "second", "delivery": {"restart": restart}})).await;
    let agent = eventually(WAIT, || async {
        let agent = s.agents().get("second").await.ok()?;
        (condition(&agent, "Ready")?.1 == "WorkloadConflict").then_some(agent)
    })
    .await;
    let (_, _, message) = condition(&agent, "Stalled").unwrap();
    assert!(message.contains("Deployment web takes the delivery of Agent first"), "{message}");
    let workload = &agent.status.unwrap().delivery.unwrap().workloads[0];
    assert!(workload.version.is_none() && !workload.rolled_out, "{workload:?}");
    // A new version of the second changes nothing of the workload either.
    s.apply_agent("second", json!({"instructions": "second, v2", "delivery": {"restart": restart}})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(template().await, owned, "the second Agent wrote to the first's workload");

    // Its owner gone, the workload is the second's to take.
    s.agents().delete("first", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, || async {
        let annotations = template().await;
        (annotations.get("agentops.dev/delivered-for").map(String::as_str) == Some("second")
            && annotations.get("agentops.dev/active-version").map(String::as_str) == Some("2"))
        .then_some(())
    })
    .await;
    s.settled_agent("second").await;
}

/// The delivered definition edited by hand, as a namespace editor may (`kubectl patch`): its
/// annotations still say it holds the active version, yet the runtime would serve text that
/// was never published. The operator writes the active version back and tells the Agent.
#[tokio::test]
async fn a_config_map_edited_by_hand_is_written_back_and_reported() {
    let s = setup("delivery-edited").await;
    s.agent_with_versions("support", 2, 10).await;
    delivered(&s, 2, "i2").await;
    let editor = user_kubeconfig("mallory", &["test-users"]);
    let out =
        kubectl(&["-n", &s.ns, "create", "rolebinding", "mallory-edit", "--clusterrole=edit", "--user=mallory"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let forged = json!({"data": {"agent.json": "{\"instructions\":\"never published\"}"}}).to_string();
    let out =
        kubectl_as(&editor, &["-n", &s.ns, "patch", "configmap", "support-agent", "--type=merge", "-p", &forged], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = s.wait_events("support", "DeliveryRepaired", 1).await;
    let (_, note) = events.iter().find(|(reason, _)| reason == "DeliveryRepaired").expect("the Event");
    assert!(note.contains("changed by kubectl-patch") && note.contains("version 2"), "{note}");
    delivered(&s, 2, "i2").await;

    // The version it says it is, too; and a key removed.
    let out = kubectl_as(
        &editor,
        &[
            "-n",
            &s.ns,
            "patch",
            "configmap",
            "support-agent",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/data/version"}]"#,
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (Its Event joins the first one's series: same reason, same Agent.)
    eventually(WAIT, || async {
        let cm = config_maps(&s).get("support-agent").await.ok()?;
        cm.data?.contains_key("version").then_some(())
    })
    .await;
    delivered(&s, 2, "i2").await;
}

//! The tools users would pick instead, measured on the same control plane as the operator:
//! `helm rollback` of a release whose ConfigMap holds the agent's definition, and `kubectl
//! rollout undo` of a Deployment until the deployment controller has observed it. Each as the
//! whole command a person types, and at the API level (the requests the tool makes, sent
//! directly); against `kubectl agent rollback --previous` (whole command, to Succeeded, Events
//! printed) and an AgentRollback's create to Succeeded.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::figures::{Percentiles, percentiles};
use crate::support::{control_plane, eventually, namespace};

#[derive(Debug, serde::Serialize)]
pub struct Peers {
    pub helm_command: Percentiles,
    pub helm_api: Percentiles,
    pub undo_command: Percentiles,
    pub undo_api: Percentiles,
    pub plugin_command: Percentiles,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Pause after each sample, for every tool alike, as the latency samples do: a person runs one
/// command on a quiet server, not one on the heels of the last one's trailing work (the
/// operator's delivery and Events, the deployment controller's status writes).
const QUIET: Duration = crate::figures::SETTLE;

/// Runs a command with the control plane's kubeconfig; panics if it fails.
fn run(program: &Path, args: &[&str]) {
    let out = Command::new(program).env("KUBECONFIG", &control_plane().kubeconfig).args(args).output().unwrap();
    assert!(out.status.success(), "{} {args:?}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
}

pub async fn peers(client: &Client, n: usize) -> Peers {
    let cp = control_plane();
    let kubectl = cp.bin.join("kubectl");
    let ns = namespace(client, "bench-peers").await;
    let chart = crate::support::repo().join("benches/peer-chart");
    let chart = chart.to_str().unwrap();

    // Helm: a release with two revisions, so that each rollback goes back to the other one.
    for definition in ["v1", "v2"] {
        let value = format!("definition.instructions={definition}");
        run(&cp.helm, &["upgrade", "--install", "agent", chart, "-n", &ns, "--set-string", &value]);
    }
    let mut helm_command = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        run(&cp.helm, &["rollback", "agent", "-n", &ns]);
        helm_command.push(ms(start));
        tokio::time::sleep(QUIET).await;
    }
    let helm_api = helm_requests(client, &ns, n).await;

    // A Deployment with two revisions (no replicas: the controller's observation is what is
    // timed, not Pods).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "agent"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}, "annotations": {"definition": "v1"}},
                              "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}}}
    });
    deployments.create(&PostParams::default(), &serde_json::from_value(deployment).unwrap()).await.unwrap();
    observed(&deployments).await;
    let edit = json!({"spec": {"template": {"metadata": {"annotations": {"definition": "v2"}}}}});
    deployments.patch("agent", &PatchParams::default(), &Patch::Merge(edit)).await.unwrap();
    observed(&deployments).await;
    eventually(Duration::from_secs(30), || async {
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
        (sets.list(&ListParams::default()).await.ok()?.items.len() == 2).then_some(())
    })
    .await;
    let mut undo_command = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        run(&kubectl, &["rollout", "undo", "deployment/agent", "-n", &ns]);
        observed(&deployments).await;
        undo_command.push(ms(start));
        tokio::time::sleep(QUIET).await;
    }
    let undo_api = undo_requests(client, &ns, n).await;

    // The operator: an Agent with two versions, rolled back with the plugin.
    let agents_ns = namespace(client, "bench-plugin").await;
    let _operator = crate::objects::start_operator(&agents_ns, &[]);
    let agents: Api<agent_operator::api::Agent> = Api::namespaced(client.clone(), &agents_ns);
    crate::objects::create_agent(&agents, "agent", "v1", 10).await;
    crate::objects::settled(&agents, "agent").await;
    let edit = json!({"spec": {"instructions": "v2"}});
    agents.patch("agent", &PatchParams::default(), &Patch::Merge(edit)).await.unwrap();
    crate::objects::settled(&agents, "agent").await;
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-agent"));
    let mut plugin_command = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        run(plugin, &["-n", &agents_ns, "rollback", "agent", "--previous"]);
        plugin_command.push(ms(start));
        tokio::time::sleep(QUIET).await;
    }
    Peers {
        helm_command: percentiles(helm_command),
        helm_api: percentiles(helm_api),
        undo_command: percentiles(undo_command),
        undo_api: percentiles(undo_api),
        plugin_command: percentiles(plugin_command),
    }
}

/// Until the deployment controller has observed the Deployment's latest generation.
async fn observed(deployments: &Api<Deployment>) {
    eventually(Duration::from_secs(30), || async {
        let d = deployments.get("agent").await.ok()?;
        (d.status?.observed_generation == d.metadata.generation).then_some(())
    })
    .await;
}

/// What `helm rollback` asks of the API server, sent directly: the release's revisions
/// (Secrets), the ConfigMap replaced with the previous revision's, a Secret for the new
/// revision, the old one marked superseded.
async fn helm_requests(client: &Client, ns: &str, n: usize) -> Vec<f64> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let releases = ListParams::default().labels("owner=helm,name=agent");
    let mut samples = Vec::new();
    for i in 0..n {
        let start = Instant::now();
        let listed = secrets.list(&releases).await.unwrap();
        let newest = listed.items.iter().max_by_key(|s| s.labels().get("version").cloned()).unwrap().clone();
        let mut config_map = config_maps.get("agent-agent").await.unwrap();
        let instructions = if i % 2 == 0 { "v1" } else { "v2" };
        config_map.data = Some([("agent.json".to_string(), json!({"instructions": instructions}).to_string())].into());
        config_maps.replace("agent-agent", &PostParams::default(), &config_map).await.unwrap();
        let mut release = newest.clone();
        let version = format!("direct-{i}");
        release.metadata = kube::api::ObjectMeta {
            name: Some(format!("sh.helm.release.v1.agent.{version}")),
            labels: Some(
                [("owner", "helm-direct"), ("name", "agent"), ("version", &version)]
                    .map(|(k, v)| (k.into(), v.into()))
                    .into(),
            ),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &release).await.unwrap();
        let superseded = json!({"metadata": {"labels": {"status": "superseded"}}});
        secrets.patch(&newest.name_any(), &PatchParams::default(), &Patch::Merge(superseded)).await.unwrap();
        samples.push(ms(start));
        tokio::time::sleep(QUIET).await;
    }
    samples
}

/// What `kubectl rollout undo` asks of the API server, sent directly: the Deployment, its
/// ReplicaSets, the template patched back to the previous one's; then until the controller
/// has observed it.
async fn undo_requests(client: &Client, ns: &str, n: usize) -> Vec<f64> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let mut samples = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let current = deployments.get("agent").await.unwrap();
        sets.list(&ListParams::default().labels("app=agent")).await.unwrap();
        let annotations = current.spec.and_then(|s| s.template.metadata).and_then(|m| m.annotations);
        let now = annotations.and_then(|a| a.get("definition").cloned()).unwrap_or_default();
        let definition = if now == "v1" { "v2" } else { "v1" };
        let edit = json!({"spec": {"template": {"metadata": {"annotations": {"definition": definition}}}}});
        deployments.patch("agent", &PatchParams::default(), &Patch::Merge(edit)).await.unwrap();
        observed(&deployments).await;
        samples.push(ms(start));
        tokio::time::sleep(QUIET).await;
    }
    samples
}

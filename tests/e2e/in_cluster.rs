//! The operator as its users run it: `helm install` of the chart with its defaults (two
//! replicas, leader election) on the real node, from the image `scripts/image.sh` builds. One
//! test, in phases, because they share one release: install; rollbacks through the in-cluster
//! operator while the install runs for ten lease durations without a restart or a change of
//! leader; the leader Pod deleted (handover time, a rollback made meanwhile ends exactly once);
//! `helm upgrade` (a rollback made meanwhile ends exactly once); `helm uninstall` (CRDs and data
//! stay). Needs a node: `scripts/test.sh` runs it after the other tests, alone, since the
//! chart's operator watches every namespace.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agent_operator::api::{AgentRollback, RollbackPhase};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};

use crate::rollback::{Setup, setup_without_operator};
use crate::support::{control_plane, eventually, kubectl, repo};

const NS: &str = "agent-operator-system";
const RELEASE: &str = "agent-operator";
/// The chart's default lease duration, in seconds.
const LEASE_SECONDS: u64 = 15;

fn helm(args: &[&str]) -> Output {
    let cp = control_plane();
    Command::new(&cp.helm).env("KUBECONFIG", &cp.kubeconfig).args(args).output().expect("helm runs")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chart() -> String {
    repo().join("charts/agent-operator").display().to_string()
}

/// Imports the operator's image into the node's containerd, as a registry pull would.
fn import_image() {
    let image = std::env::var("AGENT_OPERATOR_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(format!("target/images/agent-operator-{}.tar", env!("CARGO_PKG_VERSION"))));
    assert!(image.exists(), "{} is missing: run scripts/image.sh first", image.display());
    let out = Command::new("bash")
        .arg(repo().join("tests/control-plane/node.sh"))
        .arg("import")
        .arg(&control_plane().dir)
        .arg(&image)
        .output()
        .unwrap();
    ok(&out, "image import");
}

async fn operator_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let mut items = pods.list(&ListParams::default().labels(&selector)).await.unwrap().items;
    items.retain(|p| p.metadata.deletion_timestamp.is_none());
    items
}

fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(pod: &Pod) -> i32 {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    statuses.map(|cs| cs.iter().map(|c| c.restart_count).sum()).unwrap_or(0)
}

/// Waits for `count` Ready operator Pods and returns them.
async fn ready_pods(client: &Client, count: usize, timeout: Duration) -> Vec<Pod> {
    eventually(timeout, || async {
        let pods = operator_pods(client).await;
        (pods.len() == count && pods.iter().all(is_ready)).then_some(pods)
    })
    .await
}

/// The Lease's holder and its number of transitions.
async fn lease(client: &Client) -> Option<(String, i32)> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let spec = leases.get(RELEASE).await.ok()?.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

fn logs(pod: &str) -> String {
    let out = kubectl(&["logs", "-n", NS, pod], None);
    ok(&out, "kubectl logs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for the rollback to end and checks it succeeded, with the version it made carrying
/// its name: the mark of a rollback run exactly once (its version's name is deterministic).
async fn succeeded_once(s: &Setup, name: &str, expected: &[(i64, &str)]) {
    let rb: AgentRollback = s.terminal(name).await;
    let status = rb.status.unwrap();
    assert_eq!(status.phase, Some(RollbackPhase::Succeeded), "{name}: {:?}", status.message);
    let history: Vec<(i64, String)> = s.history("support").await.into_iter().collect();
    let expected: Vec<(i64, String)> = expected.iter().map(|(v, i)| (*v, i.to_string())).collect();
    assert_eq!(history, expected, "{name}");
    if let Some(made) = status.new_version {
        let made_by: Vec<_> =
            s.versions("support").await.into_iter().filter(|v| v.spec.rollback_name.as_deref() == Some(name)).collect();
        assert_eq!(made_by.len(), 1, "{name} made {} versions", made_by.len());
        assert_eq!(made_by[0].spec.version, made);
    }
}

#[tokio::test]
async fn the_charts_default_install_runs_hands_over_upgrades_and_uninstalls() {
    let cp = control_plane();
    assert!(cp.node, "the in-cluster tests need a node: run them through scripts/test.sh (run.sh --node)");
    import_image();
    let admin = crate::support::client().await;

    // --- install, with the chart's defaults ---
    let started = Instant::now();
    let out = helm(&["install", RELEASE, &chart(), "-n", NS, "--create-namespace", "--wait", "--timeout", "180s"]);
    ok(&out, "helm install");
    let pods = ready_pods(&admin, 2, Duration::from_secs(120)).await;
    println!("helm install to both replicas Ready: {:.1?}", started.elapsed());
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let (leader, transitions) = eventually(Duration::from_secs(30), || async {
        lease(&admin).await.filter(|(holder, _)| names.contains(holder))
    })
    .await;
    let acquired = Instant::now();
    println!("leader {leader}, {:.1?} after helm install started", started.elapsed());

    // --- rollbacks through the in-cluster operator ---
    let s = setup_without_operator("in-cluster").await;
    s.agent_with_versions("support", 2, 10).await;
    s.create_rollback("restore-v1", "support", "Restore", Some(1)).await;
    succeeded_once(&s, "restore-v1", &[(1, "i1"), (2, "i2"), (3, "i1")]).await;
    s.create_rollback("previous", "support", "Previous", None).await;
    succeeded_once(&s, "previous", &[(1, "i1"), (2, "i2"), (3, "i1"), (4, "i2")]).await;
    s.create_rollback("pop", "support", "Pop", None).await;
    succeeded_once(&s, "pop", &[(1, "i1"), (2, "i2"), (3, "i1")]).await;
    s.create_rollback("restore-v99", "support", "Restore", Some(99)).await;
    let failed = s.terminal("restore-v99").await.status.unwrap();
    assert_eq!(failed.phase, Some(RollbackPhase::Failed));
    assert_eq!(failed.reason.as_deref(), Some("VersionNotFound"));

    // --- steady state: ten lease durations, no restart, one leader throughout ---
    let soak = Duration::from_secs(10 * LEASE_SECONDS);
    while acquired.elapsed() < soak {
        let pods = operator_pods(&admin).await;
        assert_eq!(pods.len(), 2);
        for pod in &pods {
            assert!(is_ready(pod), "{} not Ready after {:.0?}", pod.name_any(), acquired.elapsed());
            assert_eq!(restarts(pod), 0, "{} restarted after {:.0?}", pod.name_any(), acquired.elapsed());
        }
        assert_eq!(lease(&admin).await, Some((leader.clone(), transitions)), "the Lease changed hands");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let leading: Vec<&String> = names.iter().filter(|n| logs(n).contains("Acquired the leader Lease")).collect();
    assert_eq!(leading, [&leader], "exactly one replica led");
    for name in &names {
        assert!(!logs(name).contains("lost the leader Lease"), "{name} lost the Lease");
    }
    println!("soak: {:.0?} ({} lease durations), 0 restarts, 1 leader", acquired.elapsed(), 10);

    // --- the leader Pod deleted: the standby takes over; a rollback made meanwhile runs once ---
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let deleted = Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await.unwrap();
    s.create_rollback("during-handover", "support", "Previous", None).await;
    let (new_leader, _) = eventually(Duration::from_secs(2 * LEASE_SECONDS), || async {
        lease(&admin).await.filter(|(holder, _)| holder != &leader)
    })
    .await;
    let handover = deleted.elapsed();
    println!("handover: {new_leader} leads {handover:.1?} after {leader} was deleted (lease {LEASE_SECONDS} s)");
    assert!(handover < Duration::from_secs(LEASE_SECONDS), "handover took {handover:?}");
    succeeded_once(&s, "during-handover", &[(1, "i1"), (2, "i2"), (3, "i1"), (4, "i2")]).await;
    let pods_now = ready_pods(&admin, 2, Duration::from_secs(60)).await;
    assert!(pods_now.iter().all(|p| restarts(p) == 0));

    // --- helm upgrade to a changed value rolls the Pods; a rollback made meanwhile runs once ---
    let before: Vec<String> = pods_now.iter().map(|p| p.name_any()).collect();
    let upgrade = Command::new(&cp.helm)
        .env("KUBECONFIG", &cp.kubeconfig)
        .args(["upgrade", RELEASE, &chart(), "-n", NS, "--set", "logLevel=debug", "--wait", "--timeout", "180s"])
        .spawn()
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    eventually(Duration::from_secs(30), || async {
        let d = deployments.get(RELEASE).await.ok()?;
        (d.metadata.generation? > 1).then_some(())
    })
    .await;
    s.create_rollback("during-upgrade", "support", "Restore", Some(1)).await;
    let out = upgrade.wait_with_output().unwrap();
    ok(&out, "helm upgrade");
    succeeded_once(&s, "during-upgrade", &[(1, "i1"), (2, "i2"), (3, "i1"), (4, "i2"), (5, "i1")]).await;
    let upgraded = ready_pods(&admin, 2, Duration::from_secs(120)).await;
    for pod in &upgraded {
        assert!(!before.contains(&pod.name_any()), "{} was not replaced by the upgrade", pod.name_any());
        let env = pod.spec.as_ref().unwrap().containers[0].env.clone().unwrap_or_default();
        assert!(env.iter().any(|e| e.name == "AGENT_OPERATOR_LOG" && e.value.as_deref() == Some("debug")));
    }

    // --- helm uninstall: the operator goes; the CRDs and every Agent's data stay ---
    ok(&helm(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s"]), "helm uninstall");
    eventually(Duration::from_secs(60), || async { operator_pods(&admin).await.is_empty().then_some(()) }).await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in ["agents.agentops.dev", "agentversions.agentops.dev", "agentrollbacks.agentops.dev"] {
        assert!(crds.get(crd).await.is_ok(), "{crd} removed by helm uninstall");
    }
    assert!(s.agents().get("support").await.is_ok());
    assert_eq!(s.history("support").await.len(), 5);
    assert_eq!(s.rollbacks().list(&ListParams::default()).await.unwrap().items.len(), 6);
    println!("in-cluster phases took {:.0?}", started.elapsed());
}

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

use agent_operator::api::{AgentChannel, AgentPromotion, AgentRollback, RollbackPhase};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::rollback::{Setup, setup_without_operator};
use crate::support::{control_plane, eventually, http_get, kubectl, repo};

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

/// Imports an image that `scripts/image.sh` built (`agent-operator`, `agent-runtime`) into the
/// node's containerd, as a registry pull would.
fn import_image(name: &str) {
    let dir = std::env::var("AGENT_OPERATOR_TEST_IMAGES").map_or_else(|_| repo().join("target/images"), PathBuf::from);
    let image = dir.join(format!("{name}-{}.tar", env!("CARGO_PKG_VERSION")));
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

/// One holding of the Lease: who holds it and since when. Taking the Lease sets both in one
/// write, so any new holding (the same replica's too) shows as a new `acquired`. The Lease's
/// `leaseTransitions` does not tell: it is written by a second request after the Lease is taken,
/// so a read between the two sees the new holder with the previous holding's count.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holding {
    holder: String,
    acquired: MicroTime,
}

/// The Lease's current holding and when it was last renewed.
async fn lease(client: &Client) -> Option<(Holding, MicroTime)> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let spec = leases.get(RELEASE).await.ok()?.spec?;
    Some((Holding { holder: spec.holder_identity?, acquired: spec.acquire_time? }, spec.renew_time?))
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
    import_image("agent-operator");
    let admin = crate::support::client().await;

    // --- install, with the chart's defaults ---
    let started = Instant::now();
    let out = helm(&["install", RELEASE, &chart(), "-n", NS, "--create-namespace", "--wait", "--timeout", "180s"]);
    ok(&out, "helm install");
    let pods = ready_pods(&admin, 2, Duration::from_secs(120)).await;
    println!("helm install to both replicas Ready: {:.1?}", started.elapsed());
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let (holding, first_renewal) = eventually(Duration::from_secs(30), || async {
        lease(&admin).await.filter(|(holding, _)| names.contains(&holding.holder))
    })
    .await;
    let leader = holding.holder.clone();
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

    // --- steady state: ten lease durations, no restart, one holding throughout, renewed ---
    let soak = Duration::from_secs(10 * LEASE_SECONDS);
    let mut renewals = 0;
    let mut last_renewal = first_renewal;
    while acquired.elapsed() < soak {
        let pods = operator_pods(&admin).await;
        assert_eq!(pods.len(), 2);
        for pod in &pods {
            assert!(is_ready(pod), "{} not Ready after {:.0?}", pod.name_any(), acquired.elapsed());
            assert_eq!(restarts(pod), 0, "{} restarted after {:.0?}", pod.name_any(), acquired.elapsed());
        }
        let (now, renewed) = lease(&admin).await.expect("the Lease has a holder");
        assert_eq!(now, holding, "the Lease changed hands after {:.0?}", acquired.elapsed());
        if renewed != last_renewal {
            renewals += 1;
            last_renewal = renewed;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let leading: Vec<&String> = names.iter().filter(|n| logs(n).contains("Acquired the leader Lease")).collect();
    assert_eq!(leading, [&leader], "exactly one replica led");
    for name in &names {
        assert!(!logs(name).contains("lost the leader Lease"), "{name} lost the Lease");
    }
    // The leader renews `grace` (10 s) before expiry, so about every 5 s: 30 renewals in the soak.
    assert!(renewals >= 10, "the Lease was renewed {renewals} times in {:.0?}", acquired.elapsed());
    println!("soak: {:.0?} ({} lease durations), 0 restarts, 1 leader, {renewals} renewals", acquired.elapsed(), 10);

    // --- the leader Pod deleted: the standby takes over; a rollback made meanwhile runs once ---
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let deleted = Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await.unwrap();
    s.create_rollback("during-handover", "support", "Previous", None).await;
    let new_leader = eventually(Duration::from_secs(2 * LEASE_SECONDS), || async {
        lease(&admin).await.map(|(holding, _)| holding.holder).filter(|holder| holder != &leader)
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
    for (_, crd) in agent_operator::crds::all() {
        let crd = crd.metadata.name.unwrap();
        assert!(crds.get(&crd).await.is_ok(), "{crd} removed by helm uninstall");
    }
    assert!(s.agents().get("support").await.is_ok());
    assert_eq!(s.history("support").await.len(), 5);
    assert_eq!(s.rollbacks().list(&ListParams::default()).await.unwrap().items.len(), 6);
    println!("in-cluster phases took {:.0?}", started.elapsed());
}

/// The runtime Deployment of `examples/runtime.yaml`, for the Agent `agent`.
fn runtime(agent: &str) -> Deployment {
    let text = std::fs::read_to_string(repo().join("examples/runtime.yaml")).unwrap();
    let text = text
        .replace("support-runtime", &format!("{agent}-runtime"))
        .replace("support-agent", &format!("{agent}-agent"));
    serde_saphyr::from_str(&text).unwrap()
}

/// GETs the runtime on a pod: the version it serves and the definition.
async fn serve(ip: &str) -> Option<(String, serde_json::Value)> {
    let response = http_get(ip, 8080, "/").await?;
    let version = response.head.lines().find_map(|l| l.strip_prefix("X-Agent-Version: "))?.to_string();
    Some((version, serde_json::from_str(&response.body).ok()?))
}

/// The instructions every Ready pod of the runtime serves, when they all serve `version`.
async fn served(client: &Client, ns: &str, agent: &str, version: i64) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels(&format!("app={agent}-runtime"))).await.ok()?;
    let ips: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let mut instructions = None;
    for ip in ips {
        let (v, definition) = serve(&ip).await?;
        if v != version.to_string() {
            return None;
        }
        instructions = Some(definition["instructions"].as_str()?.to_string());
    }
    instructions
}

/// Creates a rollback and times it from its create to every runtime pod serving the new active
/// version; checks the definition served is that version's.
async fn roll_back_and_time(s: &Setup, agent: &str, name: String, strategy: &str, target: Option<i64>) -> Duration {
    let name = name.as_str();
    let started = Instant::now();
    let mut spec = serde_json::json!({"agentName": agent, "strategy": strategy});
    if let Some(t) = target {
        spec["targetVersion"] = serde_json::json!(t);
    }
    let rollback: AgentRollback =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    s.rollbacks().create(&Default::default(), &rollback).await.unwrap();
    let status = s.terminal(name).await.status.unwrap();
    assert_eq!(status.phase, Some(RollbackPhase::Succeeded), "{name}: {:?}", status.message);
    let active = status.active_version.unwrap();
    let expected = s
        .versions(agent)
        .await
        .into_iter()
        .find(|v| v.spec.version == active)
        .and_then(|v| v.spec.snapshot.instructions)
        .unwrap();
    let got = eventually(Duration::from_secs(90), || served(&s.client, &s.ns, agent, active)).await;
    assert_eq!(got, expected, "{name}: the runtime serves another definition than version {active}'s");
    started.elapsed()
}

/// The runtime Deployment of `examples/runtime.yaml` for channel `channel`: its own name, its
/// channel's ConfigMap.
fn channel_runtime(channel: &str) -> Deployment {
    let text = std::fs::read_to_string(repo().join("examples/runtime.yaml")).unwrap();
    let text = text
        .replace("support-runtime", &format!("{channel}-runtime"))
        .replace("support-agent", &format!("{channel}-channel"));
    serde_saphyr::from_str(&text).unwrap()
}

/// Applies channel `name` of Agent `rolled`, pinned to `version`, rolling its own runtime.
async fn apply_channel(s: &Setup, name: &str, version: i64) {
    let body = serde_json::json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel",
        "metadata": {"name": name}, "spec": {"agentName": "rolled", "version": version,
        "delivery": {"restart": [{"kind": "Deployment", "name": format!("{name}-runtime")}]}}});
    let api: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    api.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.unwrap();
}

/// Moves channel `channel` to `version` by a promotion or a rollback named `name`, and times it
/// from the create to every runtime pod of the channel serving that version's definition.
async fn move_and_time(
    s: &Setup,
    channel: &str,
    name: &str,
    promotion: bool,
    version: i64,
    expected: &str,
) -> Duration {
    let started = Instant::now();
    if promotion {
        let body = serde_json::json!({"metadata": {"name": name}, "spec": {"channel": channel, "version": version}});
        let api: Api<AgentPromotion> = Api::namespaced(s.client.clone(), &s.ns);
        api.create(&Default::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
    } else {
        let spec = serde_json::json!({"agentName": "rolled", "channel": channel, "strategy": "Restore", "targetVersion": version});
        let body = serde_json::json!({"metadata": {"name": name}, "spec": spec});
        s.rollbacks().create(&Default::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
    }
    let got = eventually(Duration::from_secs(90), || served(&s.client, &s.ns, channel, version)).await;
    assert_eq!(got, expected, "{name}: the channel's runtime serves another definition than version {version}'s");
    started.elapsed()
}

/// A channel of Agent `rolled` on the node: during a rollout each pod serves its own version's
/// key of the channel's ConfigMap (old pods the old version, new pods the new one), the replaced
/// key goes once the rollout ends; then promotions and rollbacks of a channel, timed from their
/// create to the runtime serving the version.
async fn channels_on_the_node(s: &Setup) {
    let versions = s.versions("rolled").await;
    let (old, new) = (&versions[versions.len() - 2], &versions[versions.len() - 1]);
    let (a, b) = (old.spec.version, new.spec.version);
    let (text_a, text_b) =
        (old.spec.snapshot.instructions.clone().unwrap(), new.spec.snapshot.instructions.clone().unwrap());
    assert_ne!(text_a, text_b);

    // Two replicas that replace each other one at a time, each kept 5 s before the next: old
    // and new pods serve side by side for a while.
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let mut slow = channel_runtime("slow");
    let spec = slow.spec.as_mut().unwrap();
    spec.replicas = Some(2);
    spec.min_ready_seconds = Some(5);
    spec.strategy = Some(
        serde_json::from_value(serde_json::json!(
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}))
        .unwrap(),
    );
    deployments.create(&Default::default(), &slow).await.unwrap();
    apply_channel(s, "slow", a).await;
    assert_eq!(eventually(Duration::from_secs(120), || served(&s.client, &s.ns, "slow", a)).await, text_a);
    // The pods from before the channel first rolled the Deployment serve agent.json, and may
    // do so before the rollout to version a ends: wait for it to end, every pod running a, so
    // that the next rollout replaces pods of a.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(Duration::from_secs(120), || async {
        let list = pods.list(&ListParams::default().labels("app=slow-runtime")).await.ok()?;
        let own = |p: &Pod| p.annotations().get("agentops.dev/active-version").cloned();
        let all_a = list.items.iter().all(|p| is_ready(p) && own(p) == Some(a.to_string()));
        (list.items.len() == 2 && all_a).then_some(())
    })
    .await;

    apply_channel(s, "slow", b).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    // A moment with pods of both versions Ready: each serves its own.
    let (both, keys) = eventually(Duration::from_secs(120), || async {
        let list = pods.list(&ListParams::default().labels("app=slow-runtime")).await.ok()?;
        let mut seen = Vec::new();
        for pod in list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p)) {
            // A pod from before the channel first rolled the Deployment has no version of its
            // own (it serves agent.json), and may still be Ready while that rollout goes on.
            let Some(own) = pod.annotations().get("agentops.dev/active-version").cloned() else { continue };
            let (version, definition) = serve(pod.status.as_ref()?.pod_ip.as_deref()?).await?;
            seen.push((own, version, definition["instructions"].as_str()?.to_string()));
        }
        let versions: std::collections::BTreeSet<&str> = seen.iter().map(|(own, _, _)| own.as_str()).collect();
        let data = config_maps.get("slow-channel").await.ok()?.data?;
        (versions.len() == 2).then_some((seen, data.keys().cloned().collect::<Vec<_>>()))
    })
    .await;
    for (own, version, instructions) in &both {
        assert_eq!(own, version, "a pod serves another version than its own: {both:?}");
        let expected = if *own == a.to_string() { &text_a } else { &text_b };
        assert_eq!(instructions, expected, "{both:?}");
    }
    assert!(keys.contains(&format!("agent-v{a}.json")) && keys.contains(&format!("agent-v{b}.json")), "{keys:?}");
    println!("during the rollout, pods of versions {a} and {b} each served their own: {both:?}");
    assert_eq!(eventually(Duration::from_secs(120), || served(&s.client, &s.ns, "slow", b)).await, text_b);
    let keys = eventually(Duration::from_secs(60), || async {
        let data = config_maps.get("slow-channel").await.ok()?.data?;
        (!data.contains_key(&format!("agent-v{a}.json"))).then_some(data.into_keys().collect::<Vec<_>>())
    })
    .await;
    assert!(keys.contains(&format!("agent-v{b}.json")), "{keys:?}");

    // Twenty promotions and twenty rollbacks of a channel with one replica, each from its create
    // to the runtime serving the version.
    deployments.create(&Default::default(), &channel_runtime("live")).await.unwrap();
    apply_channel(s, "live", a).await;
    assert_eq!(eventually(Duration::from_secs(120), || served(&s.client, &s.ns, "live", a)).await, text_a);
    let (mut promotions, mut rollbacks) = (Vec::new(), Vec::new());
    for i in 0..20 {
        promotions.push(move_and_time(s, "live", &format!("live-up-{i}"), true, b, &text_b).await);
        rollbacks.push(move_and_time(s, "live", &format!("live-back-{i}"), false, a, &text_a).await);
    }
    let (p50, max) = p50_max(promotions);
    println!("promotion create to served, with restart (20): p50 {p50:.2?}, max {max:.2?}");
    let (p50, max) = p50_max(rollbacks);
    println!("channel rollback create to served, with restart (20): p50 {p50:.2?}, max {max:.2?}");
}

/// A version whose runtime container restarts while it bakes is Failed in its channel, and the
/// operator's rollback to the channel's last known good has the runtime serve that again.
async fn a_restart_fails_the_version_that_baked(s: &Setup) {
    let crashy = |instructions: &str, exit_after: Option<&str>| {
        let mut spec = serde_json::json!({"instructions": instructions});
        if let Some(seconds) = exit_after {
            spec["advancedSettings"] = serde_json::json!({"runtime.exitAfterSeconds": seconds});
        }
        spec
    };
    s.apply_agent("crashy", crashy("crashy i1", None)).await;
    s.settled_agent("crashy").await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    deployments.create(&Default::default(), &channel_runtime("canary")).await.unwrap();
    let body = serde_json::json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel",
        "metadata": {"name": "canary"}, "spec": {"agentName": "crashy",
        "analysis": {"bakeSeconds": 10, "progressDeadlineSeconds": 120},
        "delivery": {"restart": [{"kind": "Deployment", "name": "canary-runtime"}]}}});
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    channels.patch("canary", &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.unwrap();
    let verdict = |number: i64| async move {
        let versions = s.versions("crashy").await;
        let version = versions.into_iter().find(|v| v.spec.version == number)?;
        let verdict = version.labels().get("health.agentops.dev/canary")?.clone();
        Some((verdict, version.annotations().get("health.agentops.dev/canary").cloned().unwrap_or_default()))
    };
    let (healthy, _) = eventually(Duration::from_secs(120), || verdict(1)).await;
    assert_eq!(healthy, "Healthy");

    // Version 2 has the runtime exit 3 s after it starts: it rolls out, then its container restarts.
    let started = Instant::now();
    s.apply_agent("crashy", crashy("crashy i2", Some("3"))).await;
    let (failed, why) = eventually(Duration::from_secs(120), || verdict(2)).await;
    assert_eq!(failed, "Failed", "{why}");
    assert!(why.contains("a container restarted at"), "{why}");
    println!("a version whose container restarts while it bakes: Failed {:.1?} after its publish", started.elapsed());
    // The operator rolls the canary back to its last known good by itself (onFailure defaults
    // to Rollback), and the runtime serves that again.
    s.expect_outcome("canary-auto-v2", Ok(1), "version 1 is the canary's last known good").await;
    let got = eventually(Duration::from_secs(120), || served(&s.client, &s.ns, "canary", 1)).await;
    assert_eq!(got, "crashy i1");
    let channel = channels.get("canary").await.unwrap();
    assert_eq!(channel.status.unwrap().last_known_good_version, Some(1));
}

/// Prometheus scrapes a channel's runtime; a version whose runtime answers every request with an
/// error fails the channel's error check, and the operator rolls the channel back to its last
/// known good. Ten times, each timed from the test seeing the verdict (the failing measurement's
/// sync writes it) and from the bad version's publish to the runtime serving the good one again.
async fn errors_roll_the_channel_back(s: &Setup) {
    let prometheus = std::env::var("PROMETHEUS_URL").expect("PROMETHEUS_URL");
    let spec = |i: usize, bad: bool| {
        let mut spec = serde_json::json!({"instructions": format!("judged i{i}"), "revisionHistoryLimit": 4});
        if bad {
            spec["advancedSettings"] = serde_json::json!({"runtime.failRequests": "true"});
        }
        spec
    };
    s.apply_agent("judged", spec(0, false)).await;
    s.settled_agent("judged").await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    deployments.create(&Default::default(), &channel_runtime("errors")).await.unwrap();
    let query = r#"sum(agent_errors_total{app="$channel-runtime",version="$version"})"#;
    let body = serde_json::json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel",
        "metadata": {"name": "errors"}, "spec": {"agentName": "judged",
        "analysis": {"bakeSeconds": 2, "progressDeadlineSeconds": 120, "checks": [{"name": "errors",
            "prometheus": {"address": prometheus, "query": query}, "intervalSeconds": 1, "successRange": {"max": 0}}]},
        "delivery": {"restart": [{"kind": "Deployment", "name": "errors-runtime"}]}}});
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    channels.patch("errors", &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.unwrap();

    // Users: a request to each Ready pod of the runtime every 200 ms.
    let (client, ns) = (s.client.clone(), s.ns.clone());
    let traffic = tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        loop {
            if let Ok(list) = pods.list(&ListParams::default().labels("app=errors-runtime")).await {
                for pod in list.items.iter().filter(|p| is_ready(p)) {
                    if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                        let _ = http_get(ip, 8080, "/").await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let verdict = |number: i64| async move {
        let versions = s.versions("judged").await;
        let version = versions.into_iter().find(|v| v.spec.version == number)?;
        version.labels().get("health.agentops.dev/errors").cloned()
    };
    let newest = || async { s.versions("judged").await.last().map(|v| v.spec.version).unwrap() };
    assert_eq!(eventually(Duration::from_secs(120), || verdict(1)).await, "Healthy");

    let (mut from_verdict, mut from_publish) = (Vec::new(), Vec::new());
    for run in 1..=10 {
        let good = newest().await;
        let published = Instant::now();
        s.apply_agent("judged", spec(run, true)).await;
        let bad =
            eventually(Duration::from_secs(30), || async { (newest().await > good).then_some(newest().await) }).await;
        let failed = eventually(Duration::from_secs(120), || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            verdict(bad).await.filter(|v| v == "Failed")
        })
        .await;
        let seen = Instant::now();
        let text = format!("judged i{}", run - 1);
        let got = eventually(Duration::from_secs(120), || served(&s.client, &s.ns, "errors", good)).await;
        assert_eq!((failed.as_str(), got.as_str()), ("Failed", text.as_str()), "run {run}");
        s.expect_outcome(&format!("errors-auto-v{bad}"), Ok(good), "the automatic rollback").await;
        from_verdict.push(seen.elapsed());
        from_publish.push(published.elapsed());
        // A good version next, Healthy: the last known good of the next run.
        s.apply_agent("judged", spec(run, false)).await;
        let next =
            eventually(Duration::from_secs(30), || async { (newest().await > bad).then_some(newest().await) }).await;
        assert_eq!(eventually(Duration::from_secs(120), || verdict(next)).await, "Healthy", "run {run}");
    }
    traffic.abort();
    let (p50, max) = p50_max(from_verdict);
    println!("failing check's verdict to the runtime serving the last known good (10): p50 {p50:.2?}, max {max:.2?}");
    let (p50, max) = p50_max(from_publish);
    println!("bad version's publish to the runtime serving the last known good (10): p50 {p50:.2?}, max {max:.2?}");
}

/// A channel's job check on the node: the example runtime's evaluation mode runs as a Job per
/// version against the version's snapshot; it passes a good version, fails one whose
/// definition asks it to (the operator then rolls the channel back), and a Job whose image
/// cannot be had judges nothing.
async fn evaluation_jobs_judge_versions(s: &Setup) {
    let job = |image: &str| {
        serde_json::json!({"name": "golden", "job": {"template": {"spec": {
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "eval", "image": image, "imagePullPolicy": "Never", "args": ["evaluate"]}]}}}})
    };
    let apply = |name: &'static str, image: &'static str| async move {
        let body = serde_json::json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel",
            "metadata": {"name": name}, "spec": {"agentName": "evaluated",
            "analysis": {"bakeSeconds": 2, "progressDeadlineSeconds": 120, "checks": [job(image)]}}});
        let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
        channels.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.unwrap();
    };
    let verdict = |number: i64, channel: &'static str| async move {
        let versions = s.versions("evaluated").await;
        let version = versions.into_iter().find(|v| v.spec.version == number)?;
        let key = format!("health.agentops.dev/{channel}");
        Some((version.labels().get(&key)?.clone(), version.annotations().get(&key).cloned().unwrap_or_default()))
    };
    s.apply_agent("evaluated", serde_json::json!({"instructions": "evaluated i1"})).await;
    s.settled_agent("evaluated").await;
    apply("eval", "agent-runtime:0.1.0").await;
    apply("no-image", "agent-runtime:no-such-tag").await;

    let (healthy, why) = eventually(Duration::from_secs(120), || verdict(1, "eval")).await;
    assert_eq!(healthy, "Healthy", "{why}");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(s.client.clone(), &s.ns);
    let ran = jobs.get("eval-golden-v1").await.unwrap().spec.unwrap().template.spec.unwrap();
    assert_eq!(ran.automount_service_account_token, Some(false), "the Job has no token it did not ask for");
    assert_ne!(ran.service_account_name.as_deref(), Some(crate::support::chart_identity().service_account.as_str()));

    let started = Instant::now();
    let spec =
        serde_json::json!({"instructions": "evaluated i2", "advancedSettings": {"runtime.failEvaluation": "true"}});
    s.apply_agent("evaluated", spec).await;
    let (failed, why) = eventually(Duration::from_secs(120), || verdict(2, "eval")).await;
    assert_eq!(failed, "Failed", "{why}");
    assert!(why.contains("golden cases failed: it does not ask to fail"), "{why}");
    s.expect_outcome("eval-auto-v2", Ok(1), "the failed evaluation rolls the channel back").await;
    println!("a version failing its evaluation Job: rolled back {:.1?} after its publish", started.elapsed());

    // The Job that cannot start: no verdict, Healthy Unknown, the check saying why.
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    let unknown = eventually(Duration::from_secs(120), || async {
        let channel = channels.get("no-image").await.ok()?;
        let status = channel.status?;
        let check = status.analysis.as_ref()?.checks.first()?.clone();
        let healthy = status.conditions.iter().find(|c| c.type_ == "Healthy")?.clone();
        (healthy.reason == "SignalUnavailable").then_some((check, status.analysis.unwrap().version))
    })
    .await;
    assert!(unknown.0.message.as_deref().unwrap_or_default().contains("ErrImageNeverPull"), "{:?}", unknown.0);
    assert_eq!(verdict(unknown.1, "no-image").await, None, "a Job that cannot start judged the version");
}

fn p50_max(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], *samples.last().unwrap())
}

#[tokio::test]
async fn a_rollback_changes_what_the_running_agent_serves_with_and_without_restarts() {
    let cp = control_plane();
    assert!(cp.node, "the in-cluster tests need a node: run them through scripts/test.sh (run.sh --node)");
    import_image("agent-operator");
    import_image("agent-runtime");
    let out = helm(&[
        "install",
        RELEASE,
        &chart(),
        "-n",
        NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
        "--set",
        "delivery.restartWorkloads=true",
        "--set",
        "analysis.evaluationJobs=true",
    ]);
    ok(&out, "helm install");

    // Two Agents, each with a runtime Deployment that mounts its ConfigMap: `rolled` lists its
    // Deployment in spec.delivery.restart, `refreshed` relies on the kubelet's refresh alone.
    let s = setup_without_operator("delivery-node").await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    for (agent, restart) in [("rolled", true), ("refreshed", false)] {
        for i in 1..=2 {
            let mut spec = serde_json::json!({"instructions": format!("{agent} i{i}")});
            if restart {
                spec["delivery"] = serde_json::json!({"restart": [{"kind": "Deployment", "name": "rolled-runtime"}]});
            }
            s.apply_agent(agent, spec).await;
            // Each generation handled before the next: one the operator never saw is not published.
            eventually(Duration::from_secs(60), || async {
                let a = s.agents().get(agent).await.ok()?;
                (a.status?.observed_generation == a.metadata.generation).then_some(())
            })
            .await;
            if i == 1 {
                deployments.create(&Default::default(), &runtime(agent)).await.unwrap();
            }
        }
    }
    for agent in ["rolled", "refreshed"] {
        let got = eventually(Duration::from_secs(120), || served(&s.client, &s.ns, agent, 2)).await;
        assert_eq!(got, format!("{agent} i2"));
    }
    let agent = s.settled_agent("rolled").await;
    let delivery = agent.status.unwrap().delivery.unwrap();
    assert_eq!(delivery.version, Some(2));
    assert!(delivery.workloads.iter().all(|w| w.rolled_out && w.version == Some(2)), "{delivery:?}");

    // The operator owns its template annotations and nothing else of the Deployment.
    let d = deployments.get("rolled-runtime").await.unwrap();
    let ours = d
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("agentops.dev/agent-operator-delivery"))
        .unwrap();
    let fields = serde_json::to_string(&ours.fields_v1).unwrap();
    assert!(
        fields.contains("agentops.dev/active-version")
            && !fields.contains("f:containers")
            && !fields.contains("f:replicas"),
        "{fields}"
    );

    // What stands in the way is reported, with its reason: a workload that does not exist, and
    // a rollout that cannot progress (its image is nowhere, its deadline 2 s).
    let mut stuck = runtime("stuck");
    let spec = stuck.spec.as_mut().unwrap();
    spec.progress_deadline_seconds = Some(2);
    spec.template.spec.as_mut().unwrap().containers[0].image = Some("agent-runtime:missing".into());
    spec.template.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("Never".into());
    deployments.create(&Default::default(), &stuck).await.unwrap();
    for (agent, workload, reason) in
        [("stuck", "stuck-runtime", "RolloutStuck"), ("lost", "nowhere", "WorkloadNotFound")]
    {
        let restart = serde_json::json!([{"kind": "Deployment", "name": workload}]);
        s.apply_agent(agent, serde_json::json!({"instructions": "i1", "delivery": {"restart": restart}})).await;
        let message = eventually(Duration::from_secs(120), || async {
            let a = s.agents().get(agent).await.ok()?;
            let c = a.status?.conditions.into_iter().find(|c| c.type_ == "Stalled" && c.status == "True")?;
            (c.reason == reason).then_some(c.message)
        })
        .await;
        assert!(message.contains(workload), "{agent}: {message}");
    }

    // Restore, Previous and Pop, each served by both runtimes.
    for (name, strategy, target) in
        [("restore", "Restore", Some(1)), ("previous", "Previous", None), ("pop", "Pop", None)]
    {
        let (a, b) = tokio::join!(
            roll_back_and_time(&s, "rolled", format!("rolled-{name}"), strategy, target),
            roll_back_and_time(&s, "refreshed", format!("refreshed-{name}"), strategy, target),
        );
        println!("{strategy}: served after {a:.1?} with restart, {b:.1?} without");
    }

    // Twenty rollbacks each (Previous flips between two versions): create to served.
    let (mut rolled, mut refreshed) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let (a, b) = tokio::join!(
            roll_back_and_time(&s, "rolled", format!("rolled-flip-{i}"), "Previous", None),
            roll_back_and_time(&s, "refreshed", format!("refreshed-flip-{i}"), "Previous", None),
        );
        rolled.push(a);
        refreshed.push(b);
    }
    let (p50, max) = p50_max(rolled);
    println!("rollback create to served, with restart (20): p50 {p50:.2?}, max {max:.2?}");
    let (p50, max) = p50_max(refreshed);
    println!("rollback create to served, kubelet refresh only (20): p50 {p50:.2?}, max {max:.2?}");
    let agent = s.settled_agent("rolled").await;
    assert!(agent.status.unwrap().conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));

    channels_on_the_node(&s).await;
    a_restart_fails_the_version_that_baked(&s).await;
    errors_roll_the_channel_back(&s).await;
    evaluation_jobs_judge_versions(&s).await;

    ok(&helm(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s"]), "helm uninstall");
    eventually(Duration::from_secs(60), || async { operator_pods(&s.client).await.is_empty().then_some(()) }).await;
}

#[test]
fn the_cluster_listens_on_no_wildcard_address_and_the_kubelet_refuses_anonymous_requests() {
    let cp = control_plane();
    assert!(cp.node, "the in-cluster tests need a node: run them through scripts/test.sh (run.sh --node)");
    let out = Command::new("ss").args(["-Hltnp"]).output().expect("ss (iproute2) runs");
    let listening = String::from_utf8_lossy(&out.stdout);
    // Process names as the kernel keeps them (15 characters).
    let ours = ["etcd", "kube-apiserver", "kube-controller", "kubelet", "kube-proxy", "kube-scheduler", "containerd"];
    let wildcard: Vec<&str> = listening
        .lines()
        .filter(|line| {
            let local = line.split_whitespace().nth(3).unwrap_or_default();
            ["0.0.0.0:", "*:", "[::]:"].iter().any(|w| local.starts_with(w))
                && ours.iter().any(|p| line.contains(&format!("((\"{p}\"")))
        })
        .collect();
    assert!(wildcard.is_empty(), "listening on every address: {wildcard:?}");

    // The kubelet's API, asked with no credentials at all.
    let kubeconfig = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: https://")).unwrap();
    let node = server.rsplit_once(':').unwrap().0;
    // Python's client, because kubectl with no credentials asks for a password.
    let script = format!(
        "import ssl, urllib.request, urllib.error\n\
         try:\n    urllib.request.urlopen('https://{node}:10250/pods', context=ssl._create_unverified_context(), timeout=5)\n    print('answered')\n\
         except urllib.error.HTTPError as e:\n    print(e.code)"
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "401", "anonymous kubelet request: {stdout}{}", String::from_utf8_lossy(&out.stderr));
}

//! Running like a production controller: two replicas share a Lease and the standby takes
//! over from a killed leader; /metrics, /healthz and /readyz are served; SIGTERM stops cleanly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_operator::api::{AgentRollback, RollbackPhase};
use agent_operator::controller::index::AgentIndex;
use agent_operator::controller::lean_meta::LeanMeta;
use agent_operator::controller::{Context, Settings, Stores, agent_rollback};
use agent_operator::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::{reflector, watcher};
use serde_json::json;

use crate::rollback::{Setup, setup};
use crate::support::{Operator, RELEASE, RELEASE_NAMESPACE, chart_identity, eventually};

/// The value of one metric line (name with labels, exactly as exposed), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().split(' ').next()?.parse().ok()))
}

async fn scrape(operator: &Operator) -> String {
    operator.get("/metrics").await.map(|(_, body)| body).unwrap_or_default()
}

/// A replica with leader election, as the chart runs it: its Lease in the release namespace.
fn replica(s: &Setup, lease: &str, name: &str) -> Operator {
    let flags = ["--leader-elect", "--lease-name", lease, "--lease-namespace", RELEASE_NAMESPACE];
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["--lease-duration", "4", "--lease-grace", "2", "--instance", name]);
    Operator::start_with(&chart_identity().kubeconfig, &s.ns, &args)
}

#[tokio::test]
async fn two_replicas_share_a_lease_and_the_standby_takes_over_when_the_leader_is_killed() {
    let mut s = setup("ops-lease").await;
    s.operator = None; // this test runs its own two replicas
    // The chart's leader Lease: its identity may take no other.
    let lease = RELEASE.to_string();
    let mut leader = replica(&s, &lease, "replica-a");
    eventually(Duration::from_secs(30), || async {
        (metric(&scrape(&leader).await, "agentops_leader") == Some(1.0)).then_some(())
    })
    .await;
    let standby = replica(&s, &lease, "replica-b");
    eventually(Duration::from_secs(30), || async {
        let (code, body) = standby.get("/readyz").await?;
        (code == 200 && body.starts_with("standby")).then_some(())
    })
    .await;

    s.agent_with_versions("support", 2, 10).await;

    // Steady state: a healthy leader keeps the Lease, renewal after renewal, and the standby
    // stays a standby. Watched for three lease durations.
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), RELEASE_NAMESPACE);
    let holder =
        |l: &Lease| l.spec.as_ref().and_then(|s| Some((s.holder_identity.clone()?, s.lease_transitions.unwrap_or(0))));
    let before = holder(&leases.get(&lease).await.unwrap()).unwrap();
    assert_eq!(before.0, "replica-a");
    let mut renewals = std::collections::BTreeSet::new();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3 * 4) {
        assert!(leader.exited().is_none(), "the healthy leader exited: {:?}", leader.exited());
        let current = leases.get(&lease).await.unwrap();
        assert_eq!(holder(&current).unwrap(), before, "the Lease changed hands with a healthy leader");
        renewals.extend(current.spec.and_then(|s| s.renew_time).map(|t| t.0.to_string()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(metric(&scrape(&leader).await, "agentops_leader"), Some(1.0));
    assert!(renewals.len() >= 4, "the leader renewed only {} times in three lease durations", renewals.len());
    // Only the leader reconciled: the standby never ran a reconcile.
    let standby_metrics = scrape(&standby).await;
    assert_eq!(metric(&standby_metrics, "agentops_leader"), Some(0.0));
    let standby_reconciles: f64 = standby_metrics
        .lines()
        .filter(|l| l.starts_with("agentops_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(standby_reconciles, 0.0, "{standby_metrics}");
    assert!(
        metric(&scrape(&leader).await, "agentops_reconciles_total{resource=\"agent\",result=\"success\"}")
            .unwrap_or(0.0)
            > 0.0
    );

    // Kill the leader; rollbacks created meanwhile wait, then the standby finishes them.
    leader.kill();
    let killed = Instant::now();
    s.create_rollback("after-kill-1", "support", "Previous", None).await;
    s.create_rollback("after-kill-2", "support", "Pop", None).await;
    eventually(Duration::from_secs(30), || async {
        (metric(&scrape(&standby).await, "agentops_leader") == Some(1.0)).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    println!("standby took over {takeover:?} after the leader was killed (lease duration 4 s)");
    assert!(takeover < Duration::from_secs(4 + 3), "takeover took {takeover:?}");
    for name in ["after-kill-1", "after-kill-2"] {
        let rb = s.terminal(name).await;
        assert_eq!(rb.status.and_then(|st| st.phase), Some(RollbackPhase::Succeeded), "{name}");
    }
    assert_eq!(s.history("support").await.into_values().collect::<Vec<_>>(), ["i1", "i2"]);
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let s = setup("ops-http").await;
    let op = s.operator.as_ref().unwrap();
    eventually(Duration::from_secs(30), || async {
        (op.get("/readyz").await? == (200, "ready\n".into())).then_some(())
    })
    .await;
    assert_eq!(op.get("/healthz").await, Some((200, "ok\n".into())));

    s.agent_with_versions("support", 2, 10).await;
    s.create_rollback("back", "support", "Restore", Some(1)).await;
    s.terminal("back").await;
    s.create_rollback("too-far", "support", "Restore", Some(9)).await;
    s.terminal("too-far").await;
    s.apply_agent("support", json!({"instructions": "i3", "revisionHistoryLimit": 10})).await;
    s.settled_agent("support").await;

    // One delivery per active version: v1, v2, the Restore's v3 and v4 (no restart listed, so
    // each completes with its ConfigMap write). A delivery is counted once the sync that wrote
    // its status ends, just after the Agent reads Ready.
    let delivered = |text: &str| metric(text, "agentops_delivery_duration_seconds_count");
    let text = eventually(Duration::from_secs(10), || async {
        let text = scrape(op).await;
        let published = metric(&text, "agentops_versions_published_total");
        (published == Some(3.0) && delivered(&text) >= Some(4.0)).then_some(text)
    })
    .await;
    assert_eq!(delivered(&text), Some(4.0), "{text}");
    assert_eq!(
        metric(&text, "agentops_rollbacks_total{strategy=\"Restore\",outcome=\"Succeeded\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "agentops_rollbacks_total{strategy=\"Restore\",outcome=\"VersionNotFound\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "agentops_reconciles_total{resource=\"agentrollback\",result=\"success\"}").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "agentops_reconcile_duration_seconds_count{resource=\"agent\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "agentops_leader"), Some(1.0), "{text}");
}

#[tokio::test]
async fn sigterm_stops_the_operator_cleanly() {
    let mut s = setup("ops-sigterm").await;
    s.agent_with_versions("support", 1, 10).await;
    let status =
        s.operator.as_mut().unwrap().terminate(Duration::from_secs(10)).expect("exited within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_finishes_every_sync_in_flight_including_those_started_from_the_watch() {
    let mut s = setup("ops-sigterm-busy").await;
    let agents: Vec<String> = (0..12).map(|i| format!("a{i}")).collect();
    for agent in &agents {
        s.agent_with_versions(agent, 2, 50).await;
    }
    // Queues of rollbacks on every Agent, then SIGTERM as soon as any of them runs: the syncs
    // in flight then are mostly ones started straight from the watch.
    for round in 0..4 {
        for agent in &agents {
            s.create_rollback(&format!("{agent}-{round}"), agent, "Previous", None).await;
        }
    }
    eventually(Duration::from_secs(30), || async {
        let list = s.rollbacks().list(&Default::default()).await.ok()?;
        list.items.iter().any(|r| r.status.as_ref().and_then(|st| st.phase).is_some()).then_some(())
    })
    .await;
    let status = s.operator.as_mut().unwrap().terminate(Duration::from_secs(30)).expect("exited within 30 s");
    assert!(status.success(), "exit status {status:?}");
    // Nothing was cut off mid-way: no rollback was left Running, by its status or by its
    // record (the durable state, which a move to Running writes first).
    let list = s.rollbacks().list(&Default::default()).await.unwrap();
    let running: Vec<String> = list
        .items
        .iter()
        .filter(|r| {
            let recorded = agent_operator::plan::durable::record_of(r).and_then(|record| record.status.phase);
            let status = r.status.as_ref().and_then(|st| st.phase);
            [recorded, status].contains(&Some(RollbackPhase::Running))
        })
        .map(|r| r.metadata.name.clone().unwrap_or_default())
        .collect();
    assert!(running.is_empty(), "left Running by the stopped operator: {running:?}");
}

/// The step behind the test above, on its own: a sync started from the watch is not one of the
/// controllers' reconciles, so only the wait at shutdown (`finish_early_starts`) keeps the
/// process from exiting in the middle of it. Run in this process, against the real API server,
/// with the caches filled as the operator's first lists fill them.
#[tokio::test]
async fn shutdown_waits_for_a_sync_started_from_the_watch_and_starts_no_more() {
    let mut s = setup("ops-early-start").await;
    s.agent_with_versions("support", 2, 10).await;
    s.operator = None;
    let first = s.create_rollback("first", "support", "Previous", None).await;
    let (rollback_store, mut rollback_writer) = reflector::store();
    let index = Arc::new(AgentIndex::new(true, Default::default()));
    let seen = |writer: &mut reflector::store::Writer<AgentRollback>, rollback: &AgentRollback| {
        let event = watcher::Event::Apply(rollback.clone());
        writer.apply_watcher_event(&event);
        index.apply(&event);
    };
    seen(&mut rollback_writer, &first);
    let (agents, mut agent_cache) = reflector::store();
    for agent in s.agents().list(&Default::default()).await.unwrap() {
        let event = watcher::Event::Apply(agent);
        agent_cache.apply_watcher_event(&event);
        index.apply(&event);
    }
    let (config_maps, mut config_map_cache) = reflector::store();
    let config_map_api: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    for config_map in config_map_api.list_metadata(&Default::default()).await.unwrap() {
        config_map_cache.apply_watcher_event(&watcher::Event::Apply(LeanMeta::new(config_map.metadata)));
    }
    let ctx = Arc::new(Context::new(
        s.client.clone(),
        Settings { namespace: Some(s.ns.clone()), ..Settings::default() },
        index.clone(),
        // No channel: an empty cache.
        Stores {
            rollbacks: rollback_store,
            agents,
            channels: reflector::store().0,
            promotions: reflector::store().0,
            config_maps,
        },
        Arc::new(Metrics::default()),
    ));

    agent_rollback::start_early(&first, &ctx);
    ctx.finish_early_starts().await;
    // The sync takes several round trips; had the wait not waited, it would still be running.
    let phase = |r: &AgentRollback| r.status.as_ref().and_then(|st| st.phase);
    let first = s.rollbacks().get("first").await.unwrap();
    assert_eq!(phase(&first), Some(RollbackPhase::Succeeded), "{:?}", first.status);

    // Once it has waited, nothing starts: a rollback seen after that is left to the next leader.
    let second = s.create_rollback("second", "support", "Previous", None).await;
    seen(&mut rollback_writer, &second);
    agent_rollback::start_early(&second, &ctx);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = s.rollbacks().get("second").await.unwrap();
    assert_eq!(phase(&second), None, "{:?}", second.status);
}

/// The gauge `agentops_admission_policies_installed`, once the operator serves it.
async fn installed(operator: &Operator) -> f64 {
    eventually(Duration::from_secs(30), || async {
        metric(&scrape(operator).await, "agentops_admission_policies_installed ")
    })
    .await
}

/// The operator says at start whether the chart's admission policies are there: without them
/// `requestedBy`, `changed-by` and the rollbacks' records are whatever clients write, and an
/// admin must hear of it (a warning in the log, and a gauge at 0).
#[tokio::test]
async fn the_operator_says_at_start_whether_the_admission_policies_are_installed() {
    let s = crate::rollback::setup_without_operator("policies").await;
    let identity = chart_identity();
    let named = format!("{RELEASE}-rollback-record");
    let with = Operator::start_with(&identity.kubeconfig, &s.ns, &["--admission-policy", &named]);
    assert_eq!(installed(&with).await, 1.0, "the chart's policy is found");
    drop(with);
    let without = Operator::start_with(&identity.kubeconfig, &s.ns, &[]);
    assert_eq!(installed(&without).await, 0.0, "none named");
    drop(without);
    let log = std::env::temp_dir().join(format!("agent-operator-{}.log", s.ns));
    let text = std::fs::read_to_string(&log).expect("the operator's log");
    assert!(text.contains("The admission policies that stamp who did what are installed"), "{text}");
    assert!(text.contains("Running without admission policies"), "{text}");
    assert!(text.contains("admissionPolicies.enabled=true"), "{text}");
}

//! Scale: the first start, a restart and a rollback during it over thousands of Agents.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_operator::api::conditions::READY;
use agent_operator::api::{Agent, AgentRollback, AgentStatus, AgentVersion};
use agent_operator::plan::delivery::DeliveryState;
use agent_operator::plan::hash::snapshot_hash;
use agent_operator::plan::in_sync;
use agent_operator::plan::publish::{Provenance, new_version};
use agent_operator::plan::status::{AgentState, agent_conditions};
use futures::StreamExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::figures::*;
use crate::latency::*;
use crate::objects::*;
use crate::support::{Operator, eventually, namespace};
use crate::throughput::{Counters, Load};

#[derive(Debug, serde::Serialize)]
pub(crate) struct Scale {
    pub(crate) agents: usize,
    pub(crate) versions_per_agent: i64,
    pub(crate) instructions_bytes: usize,
    /// The operator's first start on Agents whose status it did not write (no versions digest,
    /// no delivery ConfigMap): the time until each has had its full sync.
    pub(crate) first_start_seconds: f64,
    /// A Restore created once the first start has reconciled its first Agent: create to
    /// Succeeded.
    pub(crate) rollback_during_first_start_ms: f64,
    /// What the first start cost, per Agent.
    pub(crate) first_start_load: Load,
    /// Its restart once it had reconciled them: the time until it has reconciled every Agent
    /// and gone quiet.
    pub(crate) reconcile_all_seconds: f64,
    /// A Restore created once the restarted operator has reconciled its first Agent: create
    /// to Succeeded, and how many Agents had been reconciled when it was created.
    pub(crate) rollback_during_resync_ms: f64,
    pub(crate) reconciled_before_rollback: usize,
    pub(crate) rss_mib: f64,
    pub(crate) cpu_seconds: f64,
    /// The status of every Agent and of its rollback wiped (see [`Wipe`]).
    pub(crate) wipe: Wipe,
}

/// What a restore that drops status (Velero, a storage migration) leaves the operator: every
/// Agent, each with one finished rollback, its status and its rollback's wiped while the
/// operator runs.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Wipe {
    /// The wipe's own writes, one per object, 64 in flight.
    pub(crate) wipe_seconds: f64,
    /// From the last wipe write until every Agent is Ready with its versions digest again and
    /// every rollback's status says Succeeded.
    pub(crate) rebuilt_seconds: f64,
    /// Versions made or deleted, and rollbacks the operator counted as finished, meanwhile:
    /// all must be 0.
    pub(crate) versions_changed: usize,
    pub(crate) rollbacks_run_again: f64,
    pub(crate) versions_published: f64,
}

/// Versions per Agent in the scale runs.
pub(crate) const SCALE_VERSIONS: i64 = 10;

/// Instructions of the realistic scale runs: real prompts are kilobytes.
pub(crate) const REALISTIC_INSTRUCTIONS: usize = 4096;

/// Instructions of about `bytes` bytes, distinct per `seed` (real prompts are kilobytes).
pub(crate) fn instructions_of(seed: &str, bytes: usize) -> String {
    let mut text = seed.to_string();
    let filler = " Answer politely, cite the knowledge files, and hand over to a person when unsure.";
    while text.len() + filler.len() <= bytes {
        text.push_str(filler);
    }
    text
}

/// Writes versions `1..=to` of each agent directly, and a status that says so, as the operator
/// would have left them: so a restarted operator has only to read and confirm.
pub(crate) async fn grow_history(client: &Client, ns: &str, agents: &[Agent], to: i64, bytes: usize) {
    futures::stream::iter(agents.iter())
        .for_each_concurrent(32, |agent| async move {
            let versions: Api<AgentVersion> = Api::namespaced(client.clone(), ns);
            let mut last = None;
            for v in 1..=to {
                let snapshot = if v == to {
                    agent.spec.definition.clone()
                } else {
                    definition(&instructions_of(&format!("{}-v{v}", agent.name_any()), bytes))
                };
                let hash = snapshot_hash(&snapshot);
                let provenance =
                    Provenance { rollback: None, change_cause: Some(format!("edit {v}")), published_by: None };
                let version = new_version(agent, v, snapshot, hash, provenance, None);
                versions
                    .create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &version)
                    .await
                    .unwrap();
                last = Some(version);
            }
            let t = now();
            let status = AgentStatus {
                active_version: Some(to),
                version_count: Some(to),
                observed_generation: agent.metadata.generation,
                observed_definition_hash: Some(snapshot_hash(&agent.spec.definition)),
                conditions: agent_conditions(
                    &[],
                    AgentState {
                        generation: agent.metadata.generation,
                        active: Some(to),
                        busy: None,
                        delivery: &DeliveryState::Delivered,
                        in_sync: in_sync::condition(agent, last.as_ref().map(|v| &v.spec), None, None),
                    },
                    &t,
                ),
                ..Default::default()
            };
            let body = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "status": status});
            let agents: Api<Agent> = Api::namespaced(client.clone(), ns);
            agents
                .patch_status(&agent.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(body))
                .await
                .unwrap();
        })
        .await;
}

/// How long after `start` the operator's Agent reconciles reached `n` and then stopped: the
/// time of the last one before two quiet seconds. A restart reconciles an Agent once for it
/// and once for each version its watch lists, so a count of `n` alone is not every Agent.
/// Only for a start that ends within the resync interval (see `first_synced_all`).
pub(crate) async fn reconciled_all(operator: &Operator, n: usize, start: Instant) -> f64 {
    const QUIET: Duration = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(1200);
    let (mut last, mut changed) = (-1.0, start);
    loop {
        // None until the operator serves its metrics.
        let body = operator.get("/metrics").await.map(|(_, body)| body).unwrap_or_default();
        let count = metric(&body, AGENT_RECONCILES).unwrap_or(0.0);
        if count != last {
            (last, changed) = (count, Instant::now());
        } else if count >= n as f64 && changed.elapsed() >= QUIET {
            return changed.duration_since(start).as_secs_f64();
        }
        assert!(Instant::now() < deadline, "{n} Agents not reconciled within 20 minutes ({count} reconciles)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long after `start` each of the `n` Agents had a versions digest in its status (what an
/// Agent's first sync writes; the status `grow_history` writes has none) and was Ready for its
/// generation: what a restarted operator confirms without a sync. Counted from the
/// Agents, not from the reconciles: a first start over 10,000 Agents outlasts the operator's
/// resync interval (600 s), whose reconciles then come at about n/600 a second and never leave
/// the two quiet seconds `reconciled_all` waits for. At 10,000 Agents with tiny instructions it
/// took 27 minutes, hence the hour.
pub(crate) async fn first_synced_all(api: &Api<Agent>, n: usize, start: Instant) -> f64 {
    let deadline = tokio::time::Instant::from_std(start + Duration::from_secs(3600));
    let mut agents = watcher(api.clone(), watcher::Config::default()).applied_objects().boxed();
    let mut synced = std::collections::HashSet::new();
    while synced.len() < n {
        match tokio::time::timeout_at(deadline, agents.next()).await {
            Ok(Some(Ok(agent))) if first_synced(&agent) => {
                synced.insert(agent.name_any());
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("{} of {n} Agents first-synced within an hour", synced.len()),
        }
    }
    start.elapsed().as_secs_f64()
}

pub(crate) fn first_synced(agent: &Agent) -> bool {
    let Some(status) = agent.status.as_ref() else { return false };
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True" && c.observed_generation == agent.metadata.generation);
    status.versions_digest.is_some() && status.observed_generation == agent.metadata.generation && ready
}

pub(crate) const AGENT_RECONCILES: &str = "agentops_reconciles_total{resource=\"agent\",result=\"success\"}";

/// `n` settled Agents with `versions` versions each, whose instructions are about `bytes`
/// bytes, in a namespace of their own; then the operator started on them once, until it has
/// reconciled them, and restarted: the time until the restarted one has reconciled each, a
/// rollback made while it does, then its memory and CPU.
pub(crate) async fn scale(client: &Client, n: usize, versions: i64, bytes: usize) -> Scale {
    let ns = namespace(client, "bench-scale").await;
    let api: Api<Agent> = Api::namespaced(client.clone(), &ns);
    let agents: Vec<Agent> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move { create_agent(&api, &format!("sc-{i}"), &instructions_of(&format!("sc-{i}"), bytes), 25).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    grow_history(client, &ns, &agents, versions, bytes).await;

    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
    let mut events = watcher(rollbacks.clone(), watcher::Config::default()).applied_objects().boxed();
    let counters = Counters::read(client).await;
    let start = Instant::now();
    let first = start_operator(&ns, &[]);
    let first_synced = tokio::spawn({
        let api = api.clone();
        async move { first_synced_all(&api, n, start).await }
    });
    let (_, rollback_during_first_start_ms) =
        rollback_once_reconciling(&first, &rollbacks, &mut events, "during-first-start", n / 2, versions - 1).await;
    let first_start_seconds = first_synced.await.unwrap();
    let first_start_load = counters.load(&Counters::read(client).await, n, first.usage().unwrap().1);
    drop(first);

    let start = Instant::now();
    let operator = start_operator(&ns, &[]);
    let (reconciled_before_rollback, rollback_during_resync_ms) =
        rollback_once_reconciling(&operator, &rollbacks, &mut events, "during-resync", n - 1, versions - 1).await;

    let reconcile_all_seconds = reconciled_all(&operator, n, start).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, cpu_seconds) = operator.usage().unwrap();
    let wipe = status_wipe(client, &ns, n, versions, &operator).await;
    Scale {
        agents: n,
        versions_per_agent: versions,
        instructions_bytes: bytes,
        first_start_seconds,
        rollback_during_first_start_ms,
        first_start_load,
        reconcile_all_seconds,
        rollback_during_resync_ms,
        reconciled_before_rollback,
        rss_mib: rss as f64 / (1024.0 * 1024.0),
        cpu_seconds,
        wipe,
    }
}

/// A Restore of Agent `sc-<agent>` to `target`, created once `operator` has reconciled its
/// first Agent: how many it had reconciled then, and the time from the create to Succeeded.
async fn rollback_once_reconciling(
    operator: &Operator,
    rollbacks: &Api<AgentRollback>,
    events: &mut (impl futures::Stream<Item = Result<AgentRollback, watcher::Error>> + Unpin),
    name: &str,
    agent: usize,
    target: i64,
) -> (usize, f64) {
    let reconciled = || async {
        let (_, body) = operator.get("/metrics").await?;
        metric(&body, AGENT_RECONCILES)
    };
    let reconciled_before =
        eventually(Duration::from_secs(600), || async { reconciled().await.filter(|r| *r >= 1.0).map(|r| r as usize) })
            .await;
    let created = Instant::now();
    create_rollback(rollbacks, name, &format!("sc-{agent}"), "Restore", Some(target)).await;
    let mut waiting = HashMap::from([(name.to_string(), None)]);
    wait_terminal(events, &mut waiting).await;
    let ended = waiting.into_values().next().flatten().unwrap();
    (reconciled_before, ended.duration_since(created).as_secs_f64() * 1000.0)
}

/// Gives each of the `n` Agents a finished Restore, then wipes the status of every Agent and
/// rollback while `operator` runs, as a restore that drops status does, and times its
/// rebuild; then checks that the rebuild published, deleted and ran nothing.
async fn status_wipe(client: &Client, ns: &str, n: usize, versions: i64, operator: &Operator) -> Wipe {
    let agents: Api<Agent> = Api::namespaced(client.clone(), ns);
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = (0..n).map(|i| format!("wipe-{i}")).collect();
    let mut events = watcher(rollbacks.clone(), watcher::Config::default()).applied_objects().boxed();
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let rollbacks = rollbacks.clone();
            async move {
                create_rollback(&rollbacks, &format!("wipe-{i}"), &format!("sc-{i}"), "Restore", Some(versions - 1))
                    .await;
            }
        })
        .await;
    let mut waiting: HashMap<String, Option<Instant>> = names.iter().map(|n| (n.clone(), None)).collect();
    wait_terminal(&mut events, &mut waiting).await;
    drop(events);
    // The rollbacks' statuses trail their records: every one written before the wipe.
    eventually(Duration::from_secs(600), || async {
        let listed = rollbacks.list(&Default::default()).await.ok()?;
        listed
            .items
            .iter()
            .all(|r| r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_terminal()))
            .then_some(())
    })
    .await;
    let before = (version_uids(client, ns).await, counters(operator).await);

    let wiped = Instant::now();
    let wipe = json!({"status": null});
    let agent_names = (0..n).map(|i| format!("sc-{i}"));
    futures::stream::iter(agent_names.map(|a| (a, true)).chain(names.iter().cloned().map(|r| (r, false))))
        .for_each_concurrent(64, |(name, agent)| {
            let (agents, rollbacks, wipe) = (agents.clone(), rollbacks.clone(), wipe.clone());
            async move {
                let params = PatchParams::default();
                if agent {
                    agents.patch_status(&name, &params, &Patch::Merge(&wipe)).await.unwrap();
                } else {
                    rollbacks.patch_status(&name, &params, &Patch::Merge(&wipe)).await.unwrap();
                }
            }
        })
        .await;
    let wipe_seconds = wiped.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut events = watcher(rollbacks.clone(), watcher::Config::default()).applied_objects().boxed();
    let agents_rebuilt = first_synced_all(&agents, n, start);
    let mut waiting: HashMap<String, Option<Instant>> = names.iter().map(|n| (n.clone(), None)).collect();
    let (_, ()) = tokio::join!(agents_rebuilt, wait_terminal(&mut events, &mut waiting));
    let rebuilt_seconds = start.elapsed().as_secs_f64();

    // What the rebuild did, once its trailing writes are in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (version_uids(client, ns).await, counters(operator).await);
    let versions_changed = before.0.symmetric_difference(&after.0).count();
    Wipe {
        wipe_seconds,
        rebuilt_seconds,
        versions_changed,
        rollbacks_run_again: after.1.0 - before.1.0,
        versions_published: after.1.1 - before.1.1,
    }
}

/// Every version in `ns`, as name and uid, from a metadata list in pages.
async fn version_uids(client: &Client, ns: &str) -> std::collections::HashSet<(String, String)> {
    let api: Api<AgentVersion> = Api::namespaced(client.clone(), ns);
    let mut uids = std::collections::HashSet::new();
    let mut params = kube::api::ListParams::default().limit(5000);
    loop {
        let page = api.list_metadata(&params).await.unwrap();
        uids.extend(page.items.into_iter().map(|v| (v.name_any(), v.metadata.uid.unwrap_or_default())));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(next) => params = params.continue_token(&next),
            None => return uids,
        }
    }
}

/// The operator's count of finished rollbacks (every strategy and outcome) and of versions
/// published from edits.
async fn counters(operator: &Operator) -> (f64, f64) {
    let finished = operator.metric_sum("agentops_rollbacks_total{").await;
    (finished, operator.metric_sum("agentops_versions_published_total").await)
}

/// Each size (a tenth of `n`, then `n`) with tiny and with realistic instructions, so that what
/// the snapshots' size costs shows apart from what the number of Agents does. In the order run:
/// the smaller size tiny, then realistic; the larger the same.
pub(crate) async fn scale_runs(client: &Client, n: usize) -> Vec<Scale> {
    let mut runs = Vec::new();
    for n in [(n / 10).max(1), n] {
        for bytes in [0, REALISTIC_INSTRUCTIONS] {
            eprintln!("scale: {n} agents x {SCALE_VERSIONS} versions, instructions of {bytes} bytes ...");
            let run = scale(client, n, SCALE_VERSIONS, bytes).await;
            // Each as it ends: a run cut short still leaves the figures it reached.
            print_run(&run);
            runs.push(run);
        }
    }
    runs
}

/// One run's figures.
fn print_run(s: &Scale) {
    println!(
        "scale: {} agents x {} versions, {} B instructions: first start {:.1} s, a Restore during it {:.0} ms; reconcile all after restart {:.1} s, a Restore during it {:.0} ms (created after {} reconciles), RSS {:.1} MiB, CPU {:.1} s",
        s.agents,
        s.versions_per_agent,
        s.instructions_bytes,
        s.first_start_seconds,
        s.rollback_during_first_start_ms,
        s.reconcile_all_seconds,
        s.rollback_during_resync_ms,
        s.reconciled_before_rollback,
        s.rss_mib,
        s.cpu_seconds
    );
    let load = &s.first_start_load;
    println!(
        "  the first start per Agent: API server CPU {:.2} ms, etcd {:.2} ms, operator {:.2} ms, watch events {:.1}; requests {}",
        load.apiserver_cpu_ms,
        load.etcd_cpu_ms,
        load.operator_cpu_ms,
        load.watch_events,
        load.requests.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ")
    );
    let w = &s.wipe;
    println!(
        "  status wipe of {} Agents and their {} rollbacks: wiped in {:.1} s, rebuilt {:.1} s after; versions made or deleted {}, rollbacks run again {}, versions published {}",
        s.agents,
        s.agents,
        w.wipe_seconds,
        w.rebuilt_seconds,
        w.versions_changed,
        w.rollbacks_run_again,
        w.versions_published
    );
}

/// What the runs show together (each run's own figures are printed as it ends).
pub(crate) fn print_scale(runs: &[Scale]) {
    let (small_tiny, small, large_tiny, large) = (&runs[0], &runs[1], &runs[2], &runs[3]);
    let growth = |f: fn(&Scale) -> f64| f(large) / f(small);
    println!(
        "from {} to {} agents ({:.0}x), realistic instructions: RSS {:.2}x, reconcile all {:.2}x, the Restore during it {:.2}x",
        small.agents,
        large.agents,
        large.agents as f64 / small.agents as f64,
        growth(|s| s.rss_mib),
        growth(|s| s.reconcile_all_seconds),
        growth(|s| s.rollback_during_resync_ms)
    );
    println!(
        "  first start {:.2}x, the Restore during it {:.2}x, the status wipe's rebuild {:.2}x",
        growth(|s| s.first_start_seconds),
        growth(|s| s.rollback_during_first_start_ms),
        growth(|s| s.wipe.rebuilt_seconds)
    );
    println!(
        "  with tiny instructions: RSS {:.2}x, reconcile all {:.2}x",
        large_tiny.rss_mib / small_tiny.rss_mib,
        large_tiny.reconcile_all_seconds / small_tiny.reconcile_all_seconds
    );
}

pub(crate) fn print_scale_targets(runs: &[Scale]) {
    let (large_tiny, large) = (&runs[2], &runs[3]);
    let snapshot_cost = large.rss_mib / large_tiny.rss_mib;
    println!(
        "  RSS < 128 MiB at {} x {} with {} B instructions: {:.1} MiB {}",
        large.agents,
        large.versions_per_agent,
        large.instructions_bytes,
        large.rss_mib,
        verdict(large.rss_mib < 128.0)
    );
    println!(
        "  RSS with realistic instructions within 20% of tiny ones: {:.1} / {:.1} MiB = {snapshot_cost:.2}x {}",
        large.rss_mib,
        large_tiny.rss_mib,
        verdict(snapshot_cost <= 1.2)
    );
    println!(
        "  first start < 60 s: {:.1} s {}; a rollback during it ends within 1 s: {:.0} ms {}",
        large.first_start_seconds,
        verdict(large.first_start_seconds < 60.0),
        large.rollback_during_first_start_ms,
        verdict(large.rollback_during_first_start_ms <= 1000.0)
    );
    let w = &large.wipe;
    let untouched = w.versions_changed == 0 && w.rollbacks_run_again == 0.0 && w.versions_published == 0.0;
    println!(
        "  status wipe rebuilt < 60 s, nothing published, deleted or run again: {:.1} s {}, {}",
        w.rebuilt_seconds,
        verdict(w.rebuilt_seconds < 60.0),
        verdict(untouched)
    );
    let growth = |f: fn(&Scale) -> f64| f(large) / f(&runs[1]);
    let grown = [
        growth(|s| s.first_start_seconds),
        growth(|s| s.reconcile_all_seconds),
        growth(|s| s.rss_mib),
        growth(|s| s.rollback_during_first_start_ms),
        growth(|s| s.rollback_during_resync_ms),
    ];
    println!(
        "  from {} to {} Agents each figure grows at most 12x: first start, restart, RSS, the two Restores {:.1}x {:.1}x {:.1}x {:.1}x {:.1}x {}",
        runs[1].agents,
        large.agents,
        grown[0],
        grown[1],
        grown[2],
        grown[3],
        grown[4],
        verdict(grown.iter().all(|g| *g <= 12.0))
    );
    println!(
        "  reconcile all after a restart < 30 s: {:.1} s {}",
        large.reconcile_all_seconds,
        verdict(large.reconcile_all_seconds < 30.0)
    );
    println!(
        "  a rollback created during that resync ends within 1 s: {:.0} ms {}",
        large.rollback_during_resync_ms,
        verdict(large.rollback_during_resync_ms <= 1000.0)
    );
}

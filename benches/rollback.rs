//! Rollback latency, throughput and memory against the raw API floor, on the real control
//! plane with the release-built operator. Run it with `scripts/bench.sh`; it prints one table
//! and writes the figures as JSON under `target/bench/`. Every ratio compares figures taken in
//! the same run, since the machine is shared and absolute times drift.
//!
//! Sizes can be lowered for a quick look: BENCH_LATENCY_N (default 200), BENCH_THROUGHPUT_AGENTS
//! (100), BENCH_THROUGHPUT_PER_AGENT (10), BENCH_SCALE_AGENTS (10000; a tenth of it is run too).
//! BENCH_ONLY=scale runs only the scale runs; BENCH_ONLY=rollback everything but them (the
//! floor, latency, throughput and peers); BENCH_ONLY=churn only the churn of
//! BENCH_CHURN_AGENTS (5000) in BENCH_CHURN_WAVES (5). BENCH_LOG sets the
//! operator's log filter (default `warn`); BENCH_TRACE prints the latency samples' timeline.

#![allow(clippy::unwrap_used)] // A benchmark fails by panicking.

#[path = "../tests/support/mod.rs"]
mod support;

mod peers;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_operator::api::conditions::READY;
use agent_operator::api::keys::ROLLBACK_RECORD_ANNOTATION;
use agent_operator::api::{
    Agent, AgentDefinition, AgentRollback, AgentRollbackStatus, AgentStatus, AgentVersion, DeliveryStatus,
    LastRollback, RollbackPhase,
};
use agent_operator::plan::delivery::DeliveryState;
use agent_operator::plan::durable::{AgentMark, Handled, RollbackRecord};
use agent_operator::plan::hash::{snapshot_hash, versions_digest};
use agent_operator::plan::in_sync;
use agent_operator::plan::publish::{Provenance, new_version};
use agent_operator::plan::status::{AgentState, agent_conditions, set_rollback_phase};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use support::{Operator, client, control_plane, eventually, install_crds, namespace};

const MANAGER: &str = "agentops.dev/agent-operator";

fn env_size(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now() -> Time {
    Time(Timestamp::now())
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Percentiles {
    n: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Percentiles { n: samples.len(), p50_ms: at(0.50), p95_ms: at(0.95), p99_ms: at(0.99) }
}

fn agent_body(name: &str, instructions: &str, limit: i64) -> serde_json::Value {
    json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name},
           "spec": {"instructions": instructions, "model": "auto", "temperature": 0.7, "revisionHistoryLimit": limit,
                    "steps": [{"name": "greet", "prompt": "Greet the customer."}, {"name": "triage", "prompt": "Find out what they need."}]}})
}

fn definition(instructions: &str) -> AgentDefinition {
    serde_json::from_value(agent_body("x", instructions, 10)["spec"].clone()).unwrap()
}

async fn create_agent(api: &Api<Agent>, name: &str, instructions: &str, limit: i64) -> Agent {
    api.create(&PostParams::default(), &serde_json::from_value(agent_body(name, instructions, limit)).unwrap())
        .await
        .unwrap()
}

async fn create_rollback(
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
async fn write_record(api: &Api<AgentRollback>, rollback: &AgentRollback, record: &RollbackRecord) -> AgentRollback {
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
async fn write_status(
    api: &Api<AgentRollback>,
    rollback: &AgentRollback,
    status: &AgentRollbackStatus,
) -> AgentRollback {
    let mut object = rollback.clone();
    object.status = Some(status.clone());
    api.replace_status(&rollback.name_any(), &PostParams::default(), &object).await.unwrap()
}

/// The writes one Restore needs, made directly, as the operator makes them (the same objects,
/// with the same content): the rollback's Running record; its status beside the new version's
/// create; the Agent's status beside the rollback's Succeeded record; its status.
async fn direct_restore(client: &Client, ns: &str, agent: &Agent, rollback: &AgentRollback, number: i64) {
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
    let record = |status: &AgentRollbackStatus| RollbackRecord { status: status.clone(), agent: Some(mark.clone()) };
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

    let agent_status = AgentStatus {
        active_version: Some(number),
        version_count: Some(number),
        observed_generation: Some(handled.generation),
        observed_definition_hash: Some(handled.definition_hash),
        versions_digest: Some(versions_digest([&version.spec])),
        last_rollback: Some(LastRollback { name: rollback.name_any(), time: t.clone() }),
        delivery: Some(DeliveryStatus {
            config_map: Some(format!("{}-agent", agent.name_any())),
            version: Some(number - 1),
            workloads: Vec::new(),
        }),
        conditions: agent_conditions(
            &[],
            AgentState {
                generation: Some(1),
                active: Some(number),
                busy: None,
                delivery: &DeliveryState::Delivered,
                in_sync: in_sync::condition(agent, Some(&version.spec), None, None),
            },
            &t,
        ),
    };
    let body = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "status": agent_status});
    let (apply, patch, name) = (PatchParams::apply(MANAGER).force(), Patch::Apply(body), agent.name_any());
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
async fn direct_restore_in_full(client: &Client, ns: &str, agent: &Agent, rollback: &str, number: i64, limit: i64) {
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
struct Floor {
    /// Every write between the start and the end of the measured rollback latency: the
    /// AgentRollback's create, then the writes the operator makes (see `direct_restore`),
    /// until a watch shows the rollback Succeeded, as the rollback latency ends.
    writes: Percentiles,
    /// The same until the last write returned (how the floor ended until this round).
    returned: Percentiles,
    /// The same as `writes` without the AgentRollback's create.
    without_create: Percentiles,
}

/// Pause after each sample, so that the next starts on a quiet server: one Restore at a time
/// means one, not one on the heels of the last one's trailing work (its delivery ConfigMap and
/// the Agent's status that reports it, its Events, the API server's watch fan-out: 10 to 20
/// ms on this project's machines, so a pause of 20 ms left the next sample, often the floor's,
/// beside some of it).
const SETTLE: Duration = Duration::from_millis(100);

/// One operator and the Agent it rolls back, for latency samples.
struct Lane {
    _operator: Operator,
    rollbacks: Api<AgentRollback>,
    events: futures::stream::BoxStream<'static, Result<AgentRollback, watcher::Error>>,
    samples: Vec<f64>,
}

impl Lane {
    /// An operator (with `flags`) watching a namespace of its own, with an Agent `lat` at
    /// version 2.
    async fn start(client: &Client, prefix: &str, flags: &[&str]) -> Self {
        let ns = namespace(client, prefix).await;
        let operator = start_operator(&ns, flags);
        let agents: Api<Agent> = Api::namespaced(client.clone(), &ns);
        let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
        published_twice(&agents, "lat").await;
        let events = watcher(rollbacks.clone(), watcher::Config::default()).applied_objects().boxed();
        Self { _operator: operator, rollbacks, events, samples: Vec::new() }
    }

    /// One Restore of the version below `active`, from its create to the watch showing it
    /// Succeeded.
    async fn sample(&mut self, name: &str, active: i64) {
        let start = Instant::now();
        trace("create", name);
        create_rollback(&self.rollbacks, name, "lat", "Restore", Some(active - 1)).await;
        trace("created", name);
        let mut waiting = HashMap::from([(name.to_string(), None)]);
        wait_terminal(&mut self.events, &mut waiting).await;
        trace("observed", name);
        self.samples.push(waiting.into_values().next().flatten().unwrap().duration_since(start).as_secs_f64() * 1000.0);
        tokio::time::sleep(SETTLE).await;
    }
}

/// The floor and the rollback latency, sample by sample in turn (one direct Restore, one
/// through the operator, one through an operator without the hot path's fast paths), so that
/// all see the same machine: on a shared one, load drifts between phases run one after the
/// other.
async fn latency_against_floor(client: &Client, n: usize) -> (Floor, Percentiles, Percentiles) {
    let floor_ns = namespace(client, "bench-floor").await;
    let floor_agent = create_agent(&Api::namespaced(client.clone(), &floor_ns), "floor", "v1", 10_000).await;
    let floor_rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &floor_ns);
    // Each operator watches only its own namespace: the direct writes do not reach them.
    let mut operator = Lane::start(client, "bench-latency", &[]).await;
    let mut simple = Lane::start(client, "bench-simple", &["--simple-hot-path"]).await;

    let mut floor_watch = watcher(floor_rollbacks.clone(), watcher::Config::default()).applied_objects().boxed();
    let (mut writes, mut returned, mut without_create) = (Vec::new(), Vec::new(), Vec::new());
    let since = |start: Instant, end: Instant| end.duration_since(start).as_secs_f64() * 1000.0;
    for (i, active) in (0..n).zip(2i64..) {
        let name = format!("rb-{i}");
        let start = Instant::now();
        trace("floor-create", &name);
        let rollback = create_rollback(&floor_rollbacks, &name, "floor", "Restore", Some(1)).await;
        let created = Instant::now();
        trace("floor-made", &name);
        // The watch is read while the writes are made, so that what it shows is timed when it
        // arrives.
        let mut waiting = HashMap::from([(name.clone(), None)]);
        let write = async {
            direct_restore(client, &floor_ns, &floor_agent, &rollback, i as i64 + 2).await;
            Instant::now()
        };
        let (last_returned, ()) = tokio::join!(write, wait_terminal(&mut floor_watch, &mut waiting));
        let seen = waiting.into_values().next().flatten().unwrap();
        writes.push(since(start, seen));
        returned.push(since(start, last_returned));
        without_create.push(since(created, seen));
        tokio::time::sleep(SETTLE).await;
        operator.sample(&name, active).await;
        simple.sample(&name, active).await;
    }
    let floor = Floor {
        writes: percentiles(writes),
        returned: percentiles(returned),
        without_create: percentiles(without_create),
    };
    (floor, percentiles(operator.samples), percentiles(simple.samples))
}

/// Waits on a rollback watch until each of `names` is terminal; returns when each finished.
async fn wait_terminal(
    events: &mut (impl futures::Stream<Item = Result<AgentRollback, watcher::Error>> + Unpin),
    names: &mut HashMap<String, Option<Instant>>,
) {
    while names.values().any(Option::is_none) {
        let rollback = events.try_next().await.unwrap().expect("watch open");
        if rollback.status.as_ref().and_then(|s| s.phase).is_some_and(RollbackPhase::is_terminal)
            && let Some(slot @ None) = names.get_mut(&rollback.name_any())
        {
            *slot = Some(Instant::now());
        }
    }
}

fn start_operator(ns: &str, flags: &[&str]) -> Operator {
    let filter = std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into());
    Operator::start_logged(&control_plane().kubeconfig, ns, flags, &filter)
}

async fn settled(api: &Api<Agent>, name: &str) {
    eventually(Duration::from_secs(120), || async {
        let a = api.get(name).await.ok()?;
        (a.status.as_ref()?.observed_generation == a.metadata.generation).then_some(())
    })
    .await;
}

/// An Agent with versions 1 and 2, published by the operator (a created Agent, then an edit).
async fn published_twice(api: &Api<Agent>, name: &str) {
    create_agent(api, name, "v1", 10).await;
    settled(api, name).await;
    let edit = json!({"spec": {"instructions": "v2"}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(edit)).await.unwrap();
    settled(api, name).await;
}

/// Versions 1 and 2 of `agent`, written directly, as the operator would have published them.
async fn write_two_versions(versions: &Api<AgentVersion>, agent: &Agent) {
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

/// With BENCH_TRACE set, prints when each latency sample's steps happened, to match against the
/// operator's debug log (BENCH_LOG=agent_operator=debug) and see where the time goes.
fn trace(what: &str, rollback: &str) {
    if std::env::var_os("BENCH_TRACE").is_some() {
        eprintln!("TRACE {} {what} {rollback}", Timestamp::now());
    }
}

#[derive(Debug, serde::Serialize)]
struct Throughput {
    rollbacks: usize,
    agents: usize,
    operator_seconds: f64,
    operator_per_second: f64,
    /// Until the operator had also published every Event it queued for them.
    events_published_seconds: f64,
    /// Only the floor's writes of each Restore, the rollbacks created beforehand.
    direct_seconds: f64,
    direct_per_second: f64,
    /// Every write the operator makes for each (see `direct_restore_in_full`).
    all_writes_seconds: f64,
    all_writes_per_second: f64,
    /// What each rollback cost the API server, etcd and the operator, through the operator
    /// and made directly in full: where the difference in throughput goes.
    operator_load: Load,
    all_writes_load: Load,
}

/// The cost of one rollback, from counters read before and after a phase.
#[derive(Debug, Default, serde::Serialize)]
struct Load {
    /// Requests the API server served, by verb and resource (`verb resource[/subresource]`).
    requests: std::collections::BTreeMap<String, f64>,
    /// Events the API server sent to watchers.
    watch_events: f64,
    /// CPU of the API server, of etcd and of the operator, in milliseconds.
    apiserver_cpu_ms: f64,
    etcd_cpu_ms: f64,
    operator_cpu_ms: f64,
}

/// The counters [`Load`] is the difference of.
struct Counters {
    requests: HashMap<String, f64>,
    watch_events: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
}

impl Counters {
    async fn read(client: &Client) -> Self {
        let request = axum::http::Request::get("/metrics").body(Vec::new()).unwrap();
        let text = client.request_text(request).await.unwrap();
        let mut requests = HashMap::new();
        let mut watch_events = 0.0;
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            if let Some(labels) = series.strip_prefix("apiserver_request_total{") {
                let label = |key: &str| {
                    labels
                        .split(',')
                        .find_map(|l| l.strip_prefix(&format!("{key}=\"")).map(|v| v.trim_end_matches(['"', '}'])))
                };
                let resource = match label("subresource").filter(|s| !s.is_empty()) {
                    Some(sub) => format!("{}/{sub}", label("resource").unwrap_or_default()),
                    None => label("resource").unwrap_or_default().to_string(),
                };
                *requests.entry(format!("{} {resource}", label("verb").unwrap_or_default())).or_default() += value;
            } else if series.starts_with("apiserver_watch_events_total{") {
                watch_events += value;
            }
        }
        Self { requests, watch_events, apiserver_cpu: cpu_of("kube-apiserver"), etcd_cpu: cpu_of("etcd") }
    }

    /// What happened from `self` to `after`, per rollback of `n`.
    fn load(&self, after: &Self, n: usize, operator_cpu_seconds: f64) -> Load {
        let n = n as f64;
        let requests = after
            .requests
            .iter()
            .filter_map(|(key, value)| {
                let made = value - self.requests.get(key).copied().unwrap_or(0.0);
                (made > 0.0).then(|| (key.clone(), made / n))
            })
            .collect();
        Load {
            requests,
            watch_events: (after.watch_events - self.watch_events) / n,
            apiserver_cpu_ms: (after.apiserver_cpu - self.apiserver_cpu) * 1000.0 / n,
            etcd_cpu_ms: (after.etcd_cpu - self.etcd_cpu) * 1000.0 / n,
            operator_cpu_ms: operator_cpu_seconds * 1000.0 / n,
        }
    }
}

/// CPU seconds used so far by the processes named `name` (the control plane runs one of each).
fn cpu_of(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| support::cpu_seconds(&stat).filter(|(comm, _)| *comm == name).map(|(_, cpu)| cpu))
        .sum()
}

/// Throughput: many rollbacks over many agents at once, against the same writes made directly
/// by one worker per agent (the concurrency the operator has: one Agent's work is serial).
async fn throughput(client: &Client, agents_n: usize, per_agent: usize) -> Throughput {
    let ns = namespace(client, "bench-throughput").await;
    let mut operator = start_operator(&ns, &[]);
    let agents: Api<Agent> = Api::namespaced(client.clone(), &ns);
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
    futures::stream::iter(0..agents_n)
        .for_each_concurrent(16, |a| {
            let agents = agents.clone();
            async move {
                published_twice(&agents, &format!("tp-{a}")).await;
            }
        })
        .await;
    let total = agents_n * per_agent;
    let before = Counters::read(client).await;
    let operator_cpu_before = operator.usage().unwrap().1;
    let start = Instant::now();
    futures::stream::iter(0..total)
        .for_each_concurrent(64, |i| {
            let rollbacks = rollbacks.clone();
            async move {
                create_rollback(&rollbacks, &format!("rb-{i}"), &format!("tp-{}", i % agents_n), "Previous", None)
                    .await;
            }
        })
        .await;
    // Until the operator has counted every rollback finished, read from its own /metrics: a
    // watch of the rollbacks would cost the API server an event per write in this phase only
    // (the direct phases have no watcher), and charge the operator for the benchmark's reading.
    let deadline = Instant::now() + Duration::from_secs(600);
    while operator.metric_sum("agentops_rollbacks_total{").await < total as f64 {
        assert!(Instant::now() < deadline, "{total} rollbacks not finished within 10 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let operator_seconds = start.elapsed().as_secs_f64();
    let operator_load =
        before.load(&Counters::read(client).await, total, operator.usage().unwrap().1 - operator_cpu_before);
    let listed = rollbacks.list(&Default::default()).await.unwrap().items;
    let terminal =
        listed.iter().filter(|r| r.status.as_ref().and_then(|s| s.phase).is_some_and(RollbackPhase::is_terminal));
    assert_eq!(terminal.count(), total, "every rollback the operator counted is terminal");
    // The operator publishes Events off the rollbacks' path, so some trail the last rollback.
    // Stopped, it publishes every one it queued before it exits: the direct phases then start
    // on a quiet server, and the time the trail took is reported.
    let stopped = operator.terminate(Duration::from_secs(600)).expect("the operator exits");
    assert!(stopped.success(), "the operator stopped cleanly: {stopped:?}");
    let events_published_seconds = start.elapsed().as_secs_f64();

    // The same writes, directly, one worker per agent: the floor's (the rollbacks created
    // beforehand), and every write the operator makes (see `direct_restore_in_full`).
    let (direct_seconds, _) = direct_throughput(client, agents_n, per_agent, false).await;
    let (full_seconds, all_writes_load) = direct_throughput(client, agents_n, per_agent, true).await;
    Throughput {
        rollbacks: total,
        agents: agents_n,
        operator_seconds,
        operator_per_second: total as f64 / operator_seconds,
        events_published_seconds,
        direct_seconds,
        direct_per_second: total as f64 / direct_seconds,
        all_writes_seconds: full_seconds,
        all_writes_per_second: total as f64 / full_seconds,
        operator_load,
        all_writes_load,
    }
}

/// `per_agent` Restores of each of `agents_n` Agents made directly, one worker per Agent; the
/// seconds they took and what each cost. `in_full`: every write the operator makes, on Agents
/// at the operator's history limit with the two versions the operator's Agents start with;
/// else only the floor's writes, with the rollbacks created beforehand.
async fn direct_throughput(client: &Client, agents_n: usize, per_agent: usize, in_full: bool) -> (f64, Load) {
    const LIMIT: i64 = 10;
    let ns = namespace(client, if in_full { "bench-direct-full" } else { "bench-direct" }).await;
    let agents_api: Api<Agent> = Api::namespaced(client.clone(), &ns);
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
    let versions: Api<AgentVersion> = Api::namespaced(client.clone(), &ns);
    let mut work = Vec::new();
    for a in 0..agents_n {
        let agent = create_agent(&agents_api, &format!("tp-{a}"), "v1", if in_full { LIMIT } else { 10_000 }).await;
        let mut mine = Vec::new();
        if in_full {
            write_two_versions(&versions, &agent).await;
        } else {
            for k in 0..per_agent {
                mine.push(
                    create_rollback(&rollbacks, &format!("rb-{a}-{k}"), &agent.name_any(), "Previous", None).await,
                );
            }
        }
        work.push((agent, mine));
    }
    let before = Counters::read(client).await;
    let start = Instant::now();
    futures::future::join_all(work.iter().map(|(agent, mine)| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            for k in 0..per_agent {
                let number = k as i64 + 3;
                match mine.get(k) {
                    Some(rollback) => direct_restore(&client, &ns, agent, rollback, number).await,
                    None => {
                        let name = format!("rb-{}-{k}", agent.name_any());
                        direct_restore_in_full(&client, &ns, agent, &name, number, LIMIT).await
                    }
                }
            }
        }
    }))
    .await;
    let seconds = start.elapsed().as_secs_f64();
    (seconds, before.load(&Counters::read(client).await, agents_n * per_agent, 0.0))
}

#[derive(Debug, serde::Serialize)]
struct Scale {
    agents: usize,
    versions_per_agent: i64,
    instructions_bytes: usize,
    /// The operator's first start on Agents whose status it did not write (no versions digest,
    /// no delivery ConfigMap): the time until each has had its full sync.
    first_start_seconds: f64,
    /// Its restart once it had reconciled them: the time until it has reconciled every Agent
    /// and gone quiet.
    reconcile_all_seconds: f64,
    /// A Restore created once the restarted operator has reconciled its first Agent: create
    /// to Succeeded, and how many Agents had been reconciled when it was created.
    rollback_during_resync_ms: f64,
    reconciled_before_rollback: usize,
    rss_mib: f64,
    cpu_seconds: f64,
}

/// Versions per Agent in the scale runs.
const SCALE_VERSIONS: i64 = 10;
/// Instructions of the realistic scale runs: real prompts are kilobytes.
const REALISTIC_INSTRUCTIONS: usize = 4096;

/// Instructions of about `bytes` bytes, distinct per `seed` (real prompts are kilobytes).
fn instructions_of(seed: &str, bytes: usize) -> String {
    let mut text = seed.to_string();
    let filler = " Answer politely, cite the knowledge files, and hand over to a person when unsure.";
    while text.len() + filler.len() <= bytes {
        text.push_str(filler);
    }
    text
}

/// Writes versions `1..=to` of each agent directly, and a status that says so, as the operator
/// would have left them: so a restarted operator has only to read and confirm.
async fn grow_history(client: &Client, ns: &str, agents: &[Agent], to: i64, bytes: usize) {
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

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().split(' ').next()?.parse().ok()))
}

/// How long after `start` the operator's Agent reconciles reached `n` and then stopped: the
/// time of the last one before two quiet seconds. A restart reconciles an Agent once for it
/// and once for each version its watch lists, so a count of `n` alone is not every Agent.
/// Only for a start that ends within the resync interval (see `first_synced_all`).
async fn reconciled_all(operator: &Operator, n: usize, start: Instant) -> f64 {
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
async fn first_synced_all(api: &Api<Agent>, n: usize, start: Instant) -> f64 {
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

fn first_synced(agent: &Agent) -> bool {
    let Some(status) = agent.status.as_ref() else { return false };
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True" && c.observed_generation == agent.metadata.generation);
    status.versions_digest.is_some() && status.observed_generation == agent.metadata.generation && ready
}

const AGENT_RECONCILES: &str = "agentops_reconciles_total{resource=\"agent\",result=\"success\"}";

/// `n` settled Agents with `versions` versions each, whose instructions are about `bytes`
/// bytes, in a namespace of their own; then the operator started on them once, until it has
/// reconciled them, and restarted: the time until the restarted one has reconciled each, a
/// rollback made while it does, then its memory and CPU.
async fn scale(client: &Client, n: usize, versions: i64, bytes: usize) -> Scale {
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

    let start = Instant::now();
    let first = start_operator(&ns, &[]);
    let first_start_seconds = first_synced_all(&api, n, start).await;
    drop(first);

    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
    let mut events = watcher(rollbacks.clone(), watcher::Config::default()).applied_objects().boxed();
    let start = Instant::now();
    let operator = start_operator(&ns, &[]);
    let reconciled = || async {
        let (_, body) = operator.get("/metrics").await?;
        metric(&body, AGENT_RECONCILES)
    };
    let reconciled_before_rollback =
        eventually(Duration::from_secs(600), || async { reconciled().await.filter(|r| *r >= 1.0).map(|r| r as usize) })
            .await;
    let created = Instant::now();
    let target = format!("sc-{}", n - 1);
    create_rollback(&rollbacks, "during-resync", &target, "Restore", Some(versions - 1)).await;
    let mut waiting = HashMap::from([("during-resync".to_string(), None)]);
    wait_terminal(&mut events, &mut waiting).await;
    let ended = waiting.into_values().next().flatten().unwrap();
    let rollback_during_resync_ms = ended.duration_since(created).as_secs_f64() * 1000.0;

    let reconcile_all_seconds = reconciled_all(&operator, n, start).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, cpu_seconds) = operator.usage().unwrap();
    Scale {
        agents: n,
        versions_per_agent: versions,
        instructions_bytes: bytes,
        first_start_seconds,
        reconcile_all_seconds,
        rollback_during_resync_ms,
        reconciled_before_rollback,
        rss_mib: rss as f64 / (1024.0 * 1024.0),
        cpu_seconds,
    }
}

#[derive(Debug, serde::Serialize)]
struct Churn {
    agents: usize,
    waves: usize,
    /// The operator's RSS once each wave's Agents were made, rolled back and deleted.
    rss_mib: Vec<f64>,
    /// Its RSS once the first and the last wave had settled: past the pruning and the
    /// Event recorder's cache (kube keeps each Event 6 minutes, to make series of repeats).
    settled_first_mib: f64,
    settled_last_mib: f64,
    /// Agents it keeps state for, after the pruning that follows the last wave.
    tracked_after: f64,
}

/// Agents made, edited, rolled back and deleted in waves, under one operator: its memory after
/// each wave, and what it still keeps once they are all gone.
async fn churn(client: &Client, total: usize, waves: usize) -> Churn {
    let ns = namespace(client, "bench-churn").await;
    let operator = start_operator(&ns, &[]);
    let agents: Api<Agent> = Api::namespaced(client.clone(), &ns);
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
    let versions: Api<AgentVersion> = Api::namespaced(client.clone(), &ns);
    let per_wave = (total / waves.max(1)).max(1);
    let mut rss_mib = Vec::new();
    let mut settled = Vec::new();
    // Past kube's Event recorder cache (6 minutes) and the operator's pruning (every minute).
    const SETTLE: Duration = Duration::from_secs(400);
    for wave in 0..waves {
        let names: Vec<String> = (0..per_wave).map(|i| format!("w{wave}-{i}")).collect();
        let mut events = watcher(rollbacks.clone(), watcher::Config::default()).applied_objects().boxed();
        futures::stream::iter(names.clone())
            .map(|name| {
                let (agents, rollbacks) = (agents.clone(), rollbacks.clone());
                async move {
                    create_agent(&agents, &name, &format!("{name} v1"), 10).await;
                    let edit = json!({"spec": {"instructions": format!("{name} v2")}});
                    agents.patch(&name, &PatchParams::default(), &Patch::Merge(edit)).await.unwrap();
                    create_rollback(&rollbacks, &name, &name, "Previous", None).await;
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let mut pending: HashMap<String, Option<Instant>> = names.iter().map(|n| (n.clone(), None)).collect();
        wait_terminal(&mut events, &mut pending).await;
        drop(events);
        futures::stream::iter(names.clone())
            .map(|name| {
                let (agents, rollbacks) = (agents.clone(), rollbacks.clone());
                async move {
                    agents.delete(&name, &Default::default()).await.unwrap();
                    rollbacks.delete(&name, &Default::default()).await.unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        // Gone, with what garbage collection takes with them.
        eventually(Duration::from_secs(600), || async {
            let left = versions.list(&kube::api::ListParams::default().limit(1)).await.ok()?;
            left.items.is_empty().then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = || operator.usage().unwrap().0 as f64 / (1024.0 * 1024.0);
        rss_mib.push(rss());
        eprintln!("  wave {}: {per_wave} agents made, rolled back, deleted; RSS {:.1} MiB", wave + 1, rss_mib[wave]);
        if wave == 0 || wave + 1 == waves {
            tokio::time::sleep(SETTLE).await;
            settled.push(rss());
            eprintln!("  settled: RSS {:.1} MiB", settled[settled.len() - 1]);
        }
    }
    let (_, body) = operator.get("/metrics").await.unwrap();
    let tracked_after = metric(&body, "agentops_tracked_agents").unwrap_or(f64::NAN);
    let (settled_first_mib, settled_last_mib) = (settled[0], settled[settled.len() - 1]);
    Churn { agents: per_wave * waves, waves, rss_mib, settled_first_mib, settled_last_mib, tracked_after }
}

fn print_churn(churn: &Churn) {
    let growth = churn.settled_last_mib / churn.settled_first_mib;
    println!(
        "churn: {} agents in {} waves, each made, edited, rolled back, deleted: RSS after each wave {:?} MiB",
        churn.agents,
        churn.waves,
        churn.rss_mib.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>()
    );
    println!(
        "  settled RSS after the last wave within 15% of after the first: {:.1} / {:.1} MiB = {growth:.2}x {}",
        churn.settled_last_mib,
        churn.settled_first_mib,
        verdict(growth <= 1.15)
    );
    println!(
        "  Agents kept state for once all are gone and pruned: {} {}",
        churn.tracked_after,
        verdict(churn.tracked_after == 0.0)
    );
}

/// Each size (a tenth of `n`, then `n`) with tiny and with realistic instructions, so that what
/// the snapshots' size costs shows apart from what the number of Agents does. In the order run:
/// the smaller size tiny, then realistic; the larger the same.
async fn scale_runs(client: &Client, n: usize) -> Vec<Scale> {
    let mut runs = Vec::new();
    for n in [(n / 10).max(1), n] {
        for bytes in [0, REALISTIC_INSTRUCTIONS] {
            eprintln!("scale: {n} agents x {SCALE_VERSIONS} versions, instructions of {bytes} bytes ...");
            runs.push(scale(client, n, SCALE_VERSIONS, bytes).await);
        }
    }
    runs
}

/// Each rollback's cost through the operator beside the same writes made directly.
fn print_load(operator: &Load, direct: &Load) {
    println!("  per rollback{:>36} {:>10}", "operator", "direct");
    for (label, o, d) in [
        ("API server CPU ms", operator.apiserver_cpu_ms, direct.apiserver_cpu_ms),
        ("etcd CPU ms", operator.etcd_cpu_ms, direct.etcd_cpu_ms),
        ("operator CPU ms", operator.operator_cpu_ms, direct.operator_cpu_ms),
        ("watch events sent", operator.watch_events, direct.watch_events),
    ] {
        println!("  {label:<40} {o:>10.2} {d:>10.2}");
    }
    let mut kinds: Vec<&String> = operator.requests.keys().chain(direct.requests.keys()).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let (o, d) = (operator.requests.get(kind).copied(), direct.requests.get(kind).copied());
        println!("  requests: {kind:<30} {:>10.2} {:>10.2}", o.unwrap_or(0.0), d.unwrap_or(0.0));
    }
}

fn print_scale(runs: &[Scale]) {
    let (small_tiny, small, large_tiny, large) = (&runs[0], &runs[1], &runs[2], &runs[3]);
    for s in runs {
        println!(
            "scale: {} agents x {} versions, {} B instructions: first start {:.1} s; reconcile all after restart {:.1} s, a Restore during it {:.0} ms (created after {} reconciles), RSS {:.1} MiB, CPU {:.1} s",
            s.agents,
            s.versions_per_agent,
            s.instructions_bytes,
            s.first_start_seconds,
            s.reconcile_all_seconds,
            s.rollback_during_resync_ms,
            s.reconciled_before_rollback,
            s.rss_mib,
            s.cpu_seconds
        );
    }
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
        "  with tiny instructions: RSS {:.2}x, reconcile all {:.2}x",
        large_tiny.rss_mib / small_tiny.rss_mib,
        large_tiny.reconcile_all_seconds / small_tiny.reconcile_all_seconds
    );
}

fn print_scale_targets(runs: &[Scale]) {
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

/// One Agent's queue against another Agent's rollbacks: their latency with nothing else to do,
/// then while `queued` rollbacks of another Agent, all created at once, wait their turn.
#[derive(serde::Serialize)]
struct Fairness {
    queued: usize,
    quiet: Percentiles,
    /// Beside the writes the operator makes for such a queue, made directly by one client,
    /// one rollback after another: what sharing the API server costs by itself.
    beside_direct_writes: Percentiles,
    beside_the_queue: Percentiles,
    /// Rollbacks of the busy Agent still to run when the last sample beside the queue ended.
    left_in_the_queue: usize,
}

async fn fairness(client: &Client, queued: usize, n: usize) -> Fairness {
    let ns = namespace(client, "bench-fairness").await;
    let _operator = start_operator(&ns, &[]);
    let agents: Api<Agent> = Api::namespaced(client.clone(), &ns);
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
    for name in ["busy", "quiet"] {
        published_twice(&agents, name).await;
    }
    let config = watcher::Config::default().fields("spec.agentName=quiet");
    let mut quiet_watch = watcher(rollbacks.clone(), config).applied_objects().boxed();
    let sample = |i: usize| {
        let rollbacks = rollbacks.clone();
        async move {
            let name = format!("quiet-{i}");
            let start = Instant::now();
            create_rollback(&rollbacks, &name, "quiet", "Previous", None).await;
            (name, start)
        }
    };
    let measure = async |i: usize, watch: &mut _| {
        let (name, start) = sample(i).await;
        let mut waiting = HashMap::from([(name, None)]);
        wait_terminal(watch, &mut waiting).await;
        let end = waiting.into_values().next().flatten().unwrap();
        tokio::time::sleep(SETTLE).await;
        end.duration_since(start).as_secs_f64() * 1000.0
    };
    let mut quiet = Vec::new();
    for i in 0..n {
        quiet.push(measure(i, &mut quiet_watch).await);
    }

    // The same writes as the queue's, made directly, in a namespace the operator does not watch.
    let direct_ns = namespace(client, "bench-fairness-direct").await;
    let busy = create_agent(&Api::namespaced(client.clone(), &direct_ns), "busy", "v1", 10).await;
    let versions: Api<AgentVersion> = Api::namespaced(client.clone(), &direct_ns);
    write_two_versions(&versions, &busy).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut number = 3;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                direct_restore_in_full(&client, &direct_ns, &busy, &format!("busy-{number}"), number, 10).await;
                number += 1;
            }
        })
    };
    let mut beside_direct = Vec::new();
    for i in n..2 * n {
        beside_direct.push(measure(i, &mut quiet_watch).await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    // The whole queue first (the operator starts on it at once), then a sample at a time while
    // it runs: what is measured is the queue, not the API server busy with its creates.
    futures::stream::iter(0..queued)
        .for_each_concurrent(64, |i| {
            let rollbacks = rollbacks.clone();
            async move {
                create_rollback(&rollbacks, &format!("busy-{i}"), "busy", "Previous", None).await;
            }
        })
        .await;
    let mut beside = Vec::new();
    for i in 2 * n..3 * n {
        beside.push(measure(i, &mut quiet_watch).await);
    }
    let busy = rollbacks.list(&ListParams::default().fields("spec.agentName=busy")).await.unwrap().items;
    let done = busy.iter().filter(|r| r.status.as_ref().and_then(|s| s.phase).is_some_and(RollbackPhase::is_terminal));
    let left_in_the_queue = queued - done.count();
    assert!(left_in_the_queue > 0, "the queue drained before the samples beside it ended: queue more");
    Fairness {
        queued,
        quiet: percentiles(quiet),
        beside_direct_writes: percentiles(beside_direct),
        beside_the_queue: percentiles(beside),
        left_in_the_queue,
    }
}

fn print_fairness(f: &Fairness) {
    let ratio = f.beside_the_queue.p50_ms / f.quiet.p50_ms;
    println!(
        "fairness: another Agent's rollback p50 {:.2} ms quiet, {:.2} ms beside {} queued on one Agent ({} still queued at the last sample); p99 {:.2} / {:.2} ms",
        f.quiet.p50_ms,
        f.beside_the_queue.p50_ms,
        f.queued,
        f.left_in_the_queue,
        f.quiet.p99_ms,
        f.beside_the_queue.p99_ms
    );
    let direct = f.beside_direct_writes.p50_ms / f.quiet.p50_ms;
    println!(
        "  beside the same writes made directly, one rollback after another: p50 {:.2} ms ({direct:.2}x quiet), p99 {:.2} ms",
        f.beside_direct_writes.p50_ms, f.beside_direct_writes.p99_ms
    );
    println!("  beside the queue <= 1.5x quiet (p50): {ratio:.2}x {}", verdict(ratio <= 1.5));
}

/// What the operator keeps of rollbacks whose annotations are large (anyone may write up to
/// 256 KiB of them): its RSS with `count` rollbacks carrying `bytes` of annotations each.
#[derive(serde::Serialize)]
struct AnnotationMemory {
    count: usize,
    bytes: usize,
    rss_before_mib: f64,
    rss_after_mib: f64,
}

async fn annotation_memory(client: &Client, count: usize, bytes: usize) -> AnnotationMemory {
    let ns = namespace(client, "bench-memory").await;
    let agents: Api<Agent> = Api::namespaced(client.clone(), &ns);
    create_agent(&agents, "support", "v1", 10).await;
    let operator = start_operator(&ns, &[]);
    settled(&agents, "support").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_mib = operator.usage().unwrap().0 as f64 / (1024.0 * 1024.0);
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
    let note = "n".repeat(bytes);
    futures::stream::iter(0..count)
        .for_each_concurrent(16, |i| {
            let (rollbacks, note) = (rollbacks.clone(), note.clone());
            async move {
                // A Restore of a version that does not exist: it fails at once, as cheap to run as
                // a rollback gets, so what stays is what the caches keep.
                let body: AgentRollback = serde_json::from_value(json!({
                    "metadata": {"name": format!("noted-{i}"), "annotations": {"ticket-notes": note}},
                    "spec": {"agentName": "support", "strategy": "Restore", "targetVersion": 99}
                }))
                .unwrap();
                rollbacks.create(&PostParams::default(), &body).await.unwrap();
            }
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while operator.metric_sum("agentops_rollbacks_total{").await < count as f64 {
        assert!(Instant::now() < deadline, "{count} rollbacks not finished within 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after_mib = operator.usage().unwrap().0 as f64 / (1024.0 * 1024.0);
    AnnotationMemory { count, bytes, rss_before_mib, rss_after_mib }
}

fn print_annotation_memory(m: &AnnotationMemory) {
    println!(
        "memory: {} rollbacks with {} KB of annotations each ({:.0} MiB in all): operator RSS {:.1} MiB before, {:.1} MiB after",
        m.count,
        m.bytes / 1000,
        (m.count * m.bytes) as f64 / (1024.0 * 1024.0),
        m.rss_before_mib,
        m.rss_after_mib
    );
    println!("  RSS under the chart's 256 MiB limit: {}", verdict(m.rss_after_mib < 256.0));
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

#[tokio::main]
async fn main() {
    let client = client().await;
    install_crds(&client).await;
    let version = client.apiserver_version().await.map(|v| v.git_version).unwrap_or_default();
    let only = std::env::var("BENCH_ONLY");
    if only.as_deref() == Ok("churn") {
        let (total, waves) = (env_size("BENCH_CHURN_AGENTS", 5000), env_size("BENCH_CHURN_WAVES", 5));
        eprintln!("churn: {total} agents in {waves} waves ...");
        let churn = churn(&client, total, waves).await;
        print_churn(&churn);
        return;
    }
    if only.as_deref() == Ok("fairness") {
        let (queued, n) = (env_size("BENCH_FAIRNESS_QUEUED", 5000), env_size("BENCH_FAIRNESS_N", 30));
        eprintln!("fairness: {n} rollbacks of one Agent, quiet and beside {queued} queued on another ...");
        print_fairness(&fairness(&client, queued, n).await);
        return;
    }
    if only.as_deref() == Ok("memory") {
        let (count, bytes) = (env_size("BENCH_MEMORY_ROLLBACKS", 1500), env_size("BENCH_MEMORY_BYTES", 200_000));
        eprintln!("memory: {count} rollbacks with {bytes} bytes of annotations ...");
        print_annotation_memory(&annotation_memory(&client, count, bytes).await);
        return;
    }
    if only.as_deref() == Ok("scale") {
        let runs = scale_runs(&client, env_size("BENCH_SCALE_AGENTS", 10_000)).await;
        print_scale(&runs);
        print_scale_targets(&runs);
        return;
    }
    let (lat_n, tp_agents, tp_each, scale_n) = (
        env_size("BENCH_LATENCY_N", 200),
        env_size("BENCH_THROUGHPUT_AGENTS", 100),
        env_size("BENCH_THROUGHPUT_PER_AGENT", 10),
        env_size("BENCH_SCALE_AGENTS", 10_000),
    );
    let peers_n = env_size("BENCH_PEERS_N", 30);
    // One part alone, for a quick look at it.
    if only.as_deref() == Ok("throughput") {
        let throughput = throughput(&client, tp_agents, tp_each).await;
        let ratio = throughput.operator_per_second / throughput.all_writes_per_second;
        println!(
            "throughput: {:.1}/s ({:.1} s, its Events all published at {:.1} s); the same writes direct {:.1}/s ({:.1} s), ratio {ratio:.2}",
            throughput.operator_per_second,
            throughput.operator_seconds,
            throughput.events_published_seconds,
            throughput.all_writes_per_second,
            throughput.all_writes_seconds
        );
        print_load(&throughput.operator_load, &throughput.all_writes_load);
        return;
    }
    if only.as_deref() == Ok("latency") {
        let (floor, latency, simple) = latency_against_floor(&client, lat_n).await;
        println!(
            "p50 ms: floor {:.2} (to its last write's return {:.2}), rollback {:.2}, without the fast paths {:.2}; p99 ms: floor {:.2}, rollback {:.2}",
            floor.writes.p50_ms,
            floor.returned.p50_ms,
            latency.p50_ms,
            simple.p50_ms,
            floor.writes.p99_ms,
            latency.p99_ms
        );
        return;
    }
    if only.as_deref() == Ok("peers") {
        let peers = peers::peers(&client, peers_n).await;
        let (plugin, helm, undo) = (peers.plugin_command.p50_ms, peers.helm_command.p50_ms, peers.undo_command.p50_ms);
        println!("p50 ms: kubectl agent rollback {plugin:.1}, helm rollback {helm:.1}, kubectl rollout undo {undo:.1}");
        println!("kubectl agent rollback / helm rollback: {:.2}x", plugin / helm);
        return;
    }

    eprintln!("floor and latency: {lat_n} Restores made directly and {lat_n} through the operator, in turn ...");
    let (floor, latency, simple) = latency_against_floor(&client, lat_n).await;
    eprintln!("throughput: {} rollbacks over {tp_agents} agents ...", tp_agents * tp_each);
    let throughput = throughput(&client, tp_agents, tp_each).await;
    eprintln!("peers: helm rollback, kubectl rollout undo and kubectl agent rollback, {peers_n} each ...");
    let peers = peers::peers(&client, peers_n).await;
    let runs = if only.as_deref() == Ok("rollback") { Vec::new() } else { scale_runs(&client, scale_n).await };

    let p50_ratio = latency.p50_ms / floor.writes.p50_ms;
    let p99_ratio = latency.p99_ms / floor.writes.p99_ms;
    let (p50_ratio_without_create, p99_ratio_without_create) =
        (latency.p50_ms / floor.without_create.p50_ms, latency.p99_ms / floor.without_create.p99_ms);
    let tp_ratio = throughput.operator_per_second / throughput.all_writes_per_second;
    let tp_floor_ratio = throughput.operator_per_second / throughput.direct_per_second;
    let snapshot_cost = (runs.len() == 4).then(|| runs[3].rss_mib / runs[2].rss_mib);

    println!(
        "agent-operator benchmark on Kubernetes {version} (127.0.0.1, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<44} {:>10} {:>10} {:>10}", "", "p50 ms", "p95 ms", "p99 ms");
    for (label, figures) in [
        ("floor: one Restore's writes, direct", &floor.writes),
        ("  until its last write returned", &floor.returned),
        ("  without the rollback's create", &floor.without_create),
    ] {
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>10.2}",
            format!("{label} (n={})", figures.n),
            figures.p50_ms,
            figures.p95_ms,
            figures.p99_ms
        );
    }
    println!(
        "{:<44} {:>10.2} {:>10.2} {:>10.2}",
        format!("rollback: create to Succeeded (n={})", latency.n),
        latency.p50_ms,
        latency.p95_ms,
        latency.p99_ms
    );
    println!(
        "{:<44} {:>10.2} {:>10.2} {:>10.2}",
        format!("  without the fast paths (n={})", simple.n),
        simple.p50_ms,
        simple.p95_ms,
        simple.p99_ms
    );
    for (label, figures) in [
        ("helm rollback (whole command)", &peers.helm_command),
        ("  its requests, sent directly", &peers.helm_api),
        ("kubectl rollout undo, until observed", &peers.undo_command),
        ("  its requests, sent directly", &peers.undo_api),
        ("kubectl agent rollback --previous", &peers.plugin_command),
    ] {
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>10.2}",
            format!("{label} (n={})", figures.n),
            figures.p50_ms,
            figures.p95_ms,
            figures.p99_ms
        );
    }
    println!("{:<44} {:>10.2} {:>21.2}", "ratio rollback/floor (p50, p99)", p50_ratio, p99_ratio);
    println!(
        "{:<44} {:>10.2} {:>21.2}",
        "  against the floor without the create", p50_ratio_without_create, p99_ratio_without_create
    );
    println!(
        "throughput: {} rollbacks over {} agents: {:.1}/s ({:.1} s; its Events all published at {:.1} s); the same writes direct {:.1}/s ({:.1} s), ratio {:.2}; only the floor's writes direct {:.1}/s ({:.1} s), ratio {:.2}",
        throughput.rollbacks,
        throughput.agents,
        throughput.operator_per_second,
        throughput.operator_seconds,
        throughput.events_published_seconds,
        throughput.all_writes_per_second,
        throughput.all_writes_seconds,
        tp_ratio,
        throughput.direct_per_second,
        throughput.direct_seconds,
        tp_floor_ratio
    );
    print_load(&throughput.operator_load, &throughput.all_writes_load);
    if !runs.is_empty() {
        print_scale(&runs);
    }
    println!("targets (ratios from this run):");
    let (plugin, helm, undo) = (peers.plugin_command.p50_ms, peers.helm_command.p50_ms, peers.undo_command.p50_ms);
    println!(
        "  kubectl agent rollback p50 <= 0.5x helm rollback's: {:.2}x {}",
        plugin / helm,
        verdict(plugin <= 0.5 * helm)
    );
    println!(
        "  kubectl agent rollback p50 below kubectl rollout undo's: {plugin:.1} vs {undo:.1} ms {}",
        verdict(plugin < undo)
    );
    println!(
        "  at the API level, AgentRollback p50 against helm's and rollout undo's requests: {:.2}x, {:.2}x",
        latency.p50_ms / peers.helm_api.p50_ms,
        latency.p50_ms / peers.undo_api.p50_ms
    );
    println!("  rollback p50 <= 1.3x floor p50: {p50_ratio:.2}x {}", verdict(p50_ratio <= 1.3));
    println!("  rollback p99 <= 1.5x floor p99: {p99_ratio:.2}x {}", verdict(p99_ratio <= 1.5));
    println!("  throughput >= 0.8x the same writes made directly: {tp_ratio:.2}x {}", verdict(tp_ratio >= 0.8));
    println!(
        "    (against only the floor's writes, without the create, the pruning, the ConfigMap and the Events: {tp_floor_ratio:.2}x {})",
        verdict(tp_floor_ratio >= 0.8)
    );
    let fast_gain = simple.p50_ms - latency.p50_ms;
    println!(
        "  the fast paths (settled resume, echo registry) gain >= 1 ms of p50: {fast_gain:.2} ms {}",
        verdict(fast_gain >= 1.0)
    );
    if !runs.is_empty() {
        print_scale_targets(&runs);
    }

    let report = json!({
        "kubernetes": version, "floor": floor, "latency": latency, "latency_simple_hot_path": simple, "ratio_p50": p50_ratio, "ratio_p99": p99_ratio,
        "ratio_p50_without_create": p50_ratio_without_create, "ratio_p99_without_create": p99_ratio_without_create,
        "throughput": throughput, "throughput_ratio": tp_ratio, "peers": peers, "scale": runs, "snapshot_cost": snapshot_cost,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(dir.join(format!("rollback-{}.json", report["unix_time"])), &text).unwrap();
    std::fs::write(dir.join("rollback-latest.json"), &text).unwrap();
    println!("figures written to {}", dir.join("rollback-latest.json").display());
}

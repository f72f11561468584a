//! Throughput: rollbacks over many Agents through the operator, against the same writes made
//! directly, with what each costs the API server, etcd and the operator.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_operator::api::{Agent, AgentRollback, AgentVersion, RollbackPhase};
use futures::StreamExt;
use kube::{Api, Client, ResourceExt};

use crate::floor::*;
use crate::objects::*;
use crate::support::namespace;

#[derive(Debug, serde::Serialize)]
pub(crate) struct Throughput {
    pub(crate) rollbacks: usize,
    pub(crate) agents: usize,
    pub(crate) operator_seconds: f64,
    pub(crate) operator_per_second: f64,
    /// Until the operator had also published every Event it queued for them.
    pub(crate) events_published_seconds: f64,
    /// Only the floor's writes of each Restore, the rollbacks created beforehand.
    pub(crate) direct_seconds: f64,
    pub(crate) direct_per_second: f64,
    /// Every write the operator makes for each (see `direct_restore_in_full`).
    pub(crate) all_writes_seconds: f64,
    pub(crate) all_writes_per_second: f64,
    /// What each rollback cost the API server, etcd and the operator, through the operator
    /// and made directly in full: where the difference in throughput goes.
    pub(crate) operator_load: Load,
    pub(crate) all_writes_load: Load,
}

/// The cost of one rollback, from counters read before and after a phase.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Load {
    /// Requests the API server served, by verb and resource (`verb resource[/subresource]`).
    pub(crate) requests: std::collections::BTreeMap<String, f64>,
    /// Events the API server sent to watchers.
    pub(crate) watch_events: f64,
    /// CPU of the API server, of etcd and of the operator, in milliseconds.
    pub(crate) apiserver_cpu_ms: f64,
    pub(crate) etcd_cpu_ms: f64,
    pub(crate) operator_cpu_ms: f64,
}

/// The counters [`Load`] is the difference of.
pub(crate) struct Counters {
    pub(crate) requests: HashMap<String, f64>,
    pub(crate) watch_events: f64,
    pub(crate) apiserver_cpu: f64,
    pub(crate) etcd_cpu: f64,
}

impl Counters {
    pub(crate) async fn read(client: &Client) -> Self {
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
    pub(crate) fn load(&self, after: &Self, n: usize, operator_cpu_seconds: f64) -> Load {
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
pub(crate) fn cpu_of(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| crate::support::cpu_seconds(&stat).filter(|(comm, _)| *comm == name).map(|(_, cpu)| cpu))
        .sum()
}

/// Throughput: many rollbacks over many agents at once, against the same writes made directly
/// by one worker per agent (the concurrency the operator has: one Agent's work is serial).
pub(crate) async fn throughput(client: &Client, agents_n: usize, per_agent: usize) -> Throughput {
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
pub(crate) async fn direct_throughput(
    client: &Client,
    agents_n: usize,
    per_agent: usize,
    in_full: bool,
) -> (f64, Load) {
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

/// Each rollback's cost through the operator beside the same writes made directly.
pub(crate) fn print_load(operator: &Load, direct: &Load) {
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

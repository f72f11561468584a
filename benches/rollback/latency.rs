//! Rollback latency: samples through the operator, in turn with the floor's, so that all see
//! the same machine.

use std::collections::HashMap;
use std::time::Instant;

use agent_operator::api::{Agent, AgentRollback, RollbackPhase};
use futures::{StreamExt, TryStreamExt};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::figures::*;
use crate::floor::*;
use crate::objects::*;
use crate::support::{Operator, namespace};

/// One operator and the Agent it rolls back, for latency samples.
pub(crate) struct Lane {
    pub(crate) _operator: Operator,
    pub(crate) rollbacks: Api<AgentRollback>,
    pub(crate) events: futures::stream::BoxStream<'static, Result<AgentRollback, watcher::Error>>,
    pub(crate) samples: Vec<f64>,
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

/// The floor and the rollback latency, in one run.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Latency {
    pub(crate) floor: Floor,
    /// Through the operator as it ships.
    pub(crate) operator: Percentiles,
    /// Through an operator without the hot path's two fast paths (`--simple-hot-path`).
    pub(crate) simple_hot_path: Percentiles,
    /// Through an operator that starts no sync from the rollback watch
    /// (`--without-early-start`).
    pub(crate) without_early_start: Percentiles,
}

/// The floor and the rollback latency, sample by sample in turn (one direct Restore, then one
/// through each operator), so that all see the same machine: on a shared one, load drifts
/// between phases run one after the other.
pub(crate) async fn latency_against_floor(client: &Client, n: usize) -> Latency {
    let floor_ns = namespace(client, "bench-floor").await;
    let floor_agent = create_agent(&Api::namespaced(client.clone(), &floor_ns), "floor", "v1", 10_000).await;
    let floor_rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &floor_ns);
    // Each operator watches only its own namespace: the direct writes do not reach them.
    let mut operator = Lane::start(client, "bench-latency", &[]).await;
    let mut simple = Lane::start(client, "bench-simple", &["--simple-hot-path"]).await;
    let mut late = Lane::start(client, "bench-late", &["--without-early-start"]).await;

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
        late.sample(&name, active).await;
    }
    Latency {
        floor: Floor {
            writes: percentiles(writes),
            returned: percentiles(returned),
            without_create: percentiles(without_create),
        },
        operator: percentiles(operator.samples),
        simple_hot_path: percentiles(simple.samples),
        without_early_start: percentiles(late.samples),
    }
}

/// Waits on a rollback watch until each of `names` is terminal; returns when each finished.
pub(crate) async fn wait_terminal(
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

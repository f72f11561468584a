//! Fairness: one Agent's rollbacks beside a long queue of another's.

use std::collections::HashMap;
use std::time::Instant;

use agent_operator::api::{Agent, AgentRollback, AgentVersion, RollbackPhase};
use futures::StreamExt;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::figures::*;
use crate::floor::*;
use crate::latency::*;
use crate::objects::*;
use crate::support::namespace;

/// One Agent's queue against another Agent's rollbacks: their latency with nothing else to do,
/// then while `queued` rollbacks of another Agent, all created at once, wait their turn.
#[derive(serde::Serialize)]
pub(crate) struct Fairness {
    pub(crate) queued: usize,
    pub(crate) quiet: Percentiles,
    /// Beside the writes the operator makes for such a queue, made directly by one client,
    /// one rollback after another: what sharing the API server costs by itself.
    pub(crate) beside_direct_writes: Percentiles,
    pub(crate) beside_the_queue: Percentiles,
    /// Rollbacks of the busy Agent still to run when the last sample beside the queue ended.
    pub(crate) left_in_the_queue: usize,
}

pub(crate) async fn fairness(client: &Client, queued: usize, n: usize) -> Fairness {
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

pub(crate) fn print_fairness(f: &Fairness) {
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

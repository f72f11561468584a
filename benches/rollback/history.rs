//! A long-lived Agent: its next rollback after thousands it has finished (audit records are
//! kept), against a fresh Agent's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_operator::api::{Agent, AgentRollback};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::figures::*;
use crate::latency::*;
use crate::objects::*;
use crate::support::{eventually, namespace};

#[derive(serde::Serialize)]
pub(crate) struct LongLived {
    /// Rollbacks the old Agent had finished before the samples.
    pub(crate) finished: usize,
    /// How long those took, created at once: create of the first to the last terminal.
    pub(crate) finished_seconds: f64,
    pub(crate) fresh: Percentiles,
    pub(crate) old: Percentiles,
}

/// Agents `fresh` and `old`; `finished` rollbacks (Previous) of `old` run to the end, then `n`
/// rollbacks of each, in turn (one of `fresh`, a pause, one of `old`, a pause), so both see
/// the same machine.
pub(crate) async fn long_lived(client: &Client, finished: usize, n: usize) -> LongLived {
    let ns = namespace(client, "bench-long-lived").await;
    let operator = start_operator(&ns, &[]);
    let agents: Api<Agent> = Api::namespaced(client.clone(), &ns);
    let rollbacks: Api<AgentRollback> = Api::namespaced(client.clone(), &ns);
    for name in ["fresh", "old"] {
        published_twice(&agents, name).await;
    }
    let start = Instant::now();
    futures::stream::iter(0..finished)
        .for_each_concurrent(64, |i| {
            let rollbacks = rollbacks.clone();
            async move {
                create_rollback(&rollbacks, &format!("old-{i}"), "old", "Previous", None).await;
            }
        })
        .await;
    // The operator's own count of finished rollbacks: a list of thousands every poll would
    // load the server the queue runs on.
    eventually(Duration::from_secs(3600), || async {
        (operator.metric_sum("agentops_rollbacks_total{").await >= finished as f64).then_some(())
    })
    .await;
    let finished_seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut watch = watcher(rollbacks.clone(), watcher::Config::default()).applied_objects().boxed();
    let mut measure = async |name: String, agent: &str| {
        let start = Instant::now();
        create_rollback(&rollbacks, &name, agent, "Previous", None).await;
        let mut waiting = HashMap::from([(name, None)]);
        wait_terminal(&mut watch, &mut waiting).await;
        let end = waiting.into_values().next().flatten().unwrap();
        tokio::time::sleep(SETTLE).await;
        end.duration_since(start).as_secs_f64() * 1000.0
    };
    let (mut fresh, mut old) = (Vec::new(), Vec::new());
    for i in 0..n {
        fresh.push(measure(format!("fresh-sample-{i}"), "fresh").await);
        old.push(measure(format!("old-sample-{i}"), "old").await);
    }
    LongLived { finished, finished_seconds, fresh: percentiles(fresh), old: percentiles(old) }
}

pub(crate) fn print_long_lived(l: &LongLived) {
    let ratio = l.old.p50_ms / l.fresh.p50_ms;
    println!(
        "long-lived: after {} finished rollbacks of one Agent ({:.1} s to run them), its next rollback p50 {:.2} ms, a fresh Agent's {:.2} ms; p99 {:.2} / {:.2} ms",
        l.finished, l.finished_seconds, l.old.p50_ms, l.fresh.p50_ms, l.old.p99_ms, l.fresh.p99_ms
    );
    println!("  within 1.5x of a fresh Agent's (p50): {ratio:.2}x {}", verdict(ratio <= 1.5));
}

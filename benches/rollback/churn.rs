//! Churn: memory while Agents are made, rolled back and deleted in waves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_operator::api::{Agent, AgentRollback, AgentVersion};
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

use crate::figures::*;
use crate::latency::*;
use crate::objects::*;
use crate::support::{eventually, namespace};

#[derive(Debug, serde::Serialize)]
pub(crate) struct Churn {
    pub(crate) agents: usize,
    pub(crate) waves: usize,
    /// The operator's RSS once each wave's Agents were made, rolled back and deleted.
    pub(crate) rss_mib: Vec<f64>,
    /// Its RSS once the first and the last wave had settled: past the pruning and the
    /// Event recorder's cache (kube keeps each Event 6 minutes, to make series of repeats).
    pub(crate) settled_first_mib: f64,
    pub(crate) settled_last_mib: f64,
    /// Agents it keeps state for, after the pruning that follows the last wave.
    pub(crate) tracked_after: f64,
}

/// Agents made, edited, rolled back and deleted in waves, under one operator: its memory after
/// each wave, and what it still keeps once they are all gone.
pub(crate) async fn churn(client: &Client, total: usize, waves: usize) -> Churn {
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

pub(crate) fn print_churn(churn: &Churn) {
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

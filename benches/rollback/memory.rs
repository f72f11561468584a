//! Memory with large annotations on many rollbacks.

use std::time::{Duration, Instant};

use agent_operator::api::{Agent, AgentRollback};
use futures::StreamExt;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use crate::figures::*;
use crate::objects::*;
use crate::support::namespace;

/// What the operator keeps of rollbacks whose annotations are large (anyone may write up to
/// 256 KiB of them): its RSS with `count` rollbacks carrying `bytes` of annotations each.
#[derive(serde::Serialize)]
pub(crate) struct AnnotationMemory {
    pub(crate) count: usize,
    pub(crate) bytes: usize,
    pub(crate) rss_before_mib: f64,
    pub(crate) rss_after_mib: f64,
}

pub(crate) async fn annotation_memory(client: &Client, count: usize, bytes: usize) -> AnnotationMemory {
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

pub(crate) fn print_annotation_memory(m: &AnnotationMemory) {
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

//! Rollback latency, throughput and memory against the raw API floor, on the real control
//! plane with the release-built operator. Run it with `scripts/bench.sh`; it prints one table
//! and writes the figures as JSON under `target/bench/`. Every ratio compares figures taken in
//! the same run, since the machine is shared and absolute times drift.
//!
//! Sizes can be lowered for a quick look: BENCH_LATENCY_N (default 200), BENCH_THROUGHPUT_AGENTS
//! (100), BENCH_THROUGHPUT_PER_AGENT (10), BENCH_SCALE_AGENTS (10000; a tenth of it is run too).
//! BENCH_ONLY=rollback runs everything but the scale runs (the floor, latency, throughput and
//! peers); BENCH_ONLY=scale, latency, throughput or peers one part alone; BENCH_ONLY=churn the
//! churn of BENCH_CHURN_AGENTS (5000) in BENCH_CHURN_WAVES (5); BENCH_ONLY=fairness and
//! BENCH_ONLY=memory the figures of one Agent's long queue and of large annotations;
//! BENCH_ONLY=history one Agent's next rollback after BENCH_HISTORY_FINISHED (5000). BENCH_LOG
//! sets the operator's log filter (default `warn`); BENCH_TRACE prints the latency samples'
//! timeline.
//!
//! One module per part: `floor` (the writes made directly), `latency`, `throughput`, `peers`,
//! `scale`, `churn`, `fairness`, `memory`, `history`; `objects` makes what they need in the cluster,
//! `figures` holds what they measure with, `report` prints the complete run.

#![allow(clippy::unwrap_used)] // A benchmark fails by panicking.

#[path = "../../tests/support/mod.rs"]
mod support;

mod churn;
mod fairness;
mod figures;
mod floor;
mod history;
mod latency;
mod memory;
mod objects;
mod peers;
mod report;
mod scale;
mod throughput;

use crate::churn::*;
use crate::fairness::*;
use crate::figures::*;
use crate::history::*;
use crate::latency::*;
use crate::memory::*;
use crate::scale::*;
use crate::support::{client, install_crds};
use crate::throughput::*;

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
    if only.as_deref() == Ok("history") {
        let (finished, n) = (env_size("BENCH_HISTORY_FINISHED", 5000), env_size("BENCH_HISTORY_N", 30));
        eprintln!("history: {n} rollbacks of a fresh Agent and of one with {finished} finished ...");
        print_long_lived(&long_lived(&client, finished, n).await);
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
        let Latency { floor, operator, simple_hot_path, without_early_start } =
            latency_against_floor(&client, lat_n).await;
        println!(
            "p50 ms: floor {:.2} (to its last write's return {:.2}), rollback {:.2}, without the fast paths {:.2}, without the early start {:.2}; p99 ms: floor {:.2}, rollback {:.2}",
            floor.writes.p50_ms,
            floor.returned.p50_ms,
            operator.p50_ms,
            simple_hot_path.p50_ms,
            without_early_start.p50_ms,
            floor.writes.p99_ms,
            operator.p99_ms
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

    eprintln!("floor and latency: {lat_n} Restores made directly and {lat_n} through each operator, in turn ...");
    let latency = latency_against_floor(&client, lat_n).await;
    eprintln!("throughput: {} rollbacks over {tp_agents} agents ...", tp_agents * tp_each);
    let throughput = throughput(&client, tp_agents, tp_each).await;
    eprintln!("peers: helm rollback, kubectl rollout undo and kubectl agent rollback, {peers_n} each ...");
    let peers = peers::peers(&client, peers_n).await;
    let scale = if only.as_deref() == Ok("rollback") { Vec::new() } else { scale_runs(&client, scale_n).await };
    let run = report::Run { kubernetes: version, latency, throughput, peers, scale };
    run.print();
    run.write();
}

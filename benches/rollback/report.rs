//! The complete run's report: one table, the targets with their verdicts, and the figures as
//! JSON under `target/bench/`.

use crate::figures::{Percentiles, verdict};
use crate::latency::Latency;
use crate::peers::Peers;
use crate::scale::{Scale, print_scale, print_scale_targets};
use crate::throughput::{Throughput, print_load};

/// Every figure of one complete run.
#[derive(serde::Serialize)]
pub(crate) struct Run {
    pub(crate) kubernetes: String,
    pub(crate) latency: Latency,
    pub(crate) throughput: Throughput,
    pub(crate) peers: Peers,
    pub(crate) scale: Vec<Scale>,
}

/// The ratios the targets are judged by.
#[derive(serde::Serialize)]
struct Ratios {
    p50: f64,
    p99: f64,
    p50_without_create: f64,
    p99_without_create: f64,
    throughput: f64,
    throughput_against_floor_writes: f64,
    /// The p50 gained by the settled resume and the echo registry together, in ms.
    fast_paths_gain_ms: f64,
    /// The p50 gained by starting a new rollback's sync from the watch, in ms.
    early_start_gain_ms: f64,
    /// RSS with realistic instructions against tiny ones, at the larger scale.
    snapshot_cost: Option<f64>,
}

fn row(label: String, figures: &Percentiles) {
    println!("{label:<44} {:>10.2} {:>10.2} {:>10.2}", figures.p50_ms, figures.p95_ms, figures.p99_ms);
}

impl Run {
    fn ratios(&self) -> Ratios {
        let (floor, operator) = (&self.latency.floor, &self.latency.operator);
        Ratios {
            p50: operator.p50_ms / floor.writes.p50_ms,
            p99: operator.p99_ms / floor.writes.p99_ms,
            p50_without_create: operator.p50_ms / floor.without_create.p50_ms,
            p99_without_create: operator.p99_ms / floor.without_create.p99_ms,
            throughput: self.throughput.operator_per_second / self.throughput.all_writes_per_second,
            throughput_against_floor_writes: self.throughput.operator_per_second / self.throughput.direct_per_second,
            fast_paths_gain_ms: self.latency.simple_hot_path.p50_ms - operator.p50_ms,
            early_start_gain_ms: self.latency.without_early_start.p50_ms - operator.p50_ms,
            snapshot_cost: (self.scale.len() == 4).then(|| self.scale[3].rss_mib / self.scale[2].rss_mib),
        }
    }

    pub(crate) fn print(&self) {
        let (latency, peers, throughput, ratios) = (&self.latency, &self.peers, &self.throughput, self.ratios());
        println!(
            "agent-operator benchmark on Kubernetes {} (127.0.0.1, {} cores)",
            self.kubernetes,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("{:<44} {:>10} {:>10} {:>10}", "", "p50 ms", "p95 ms", "p99 ms");
        for (label, figures) in [
            ("floor: one Restore's writes, direct", &latency.floor.writes),
            ("  until its last write returned", &latency.floor.returned),
            ("  without the rollback's create", &latency.floor.without_create),
            ("rollback: create to Succeeded", &latency.operator),
            ("  without the fast paths", &latency.simple_hot_path),
            ("  without the early start", &latency.without_early_start),
            ("helm rollback (whole command)", &peers.helm_command),
            ("  its requests, sent directly", &peers.helm_api),
            ("kubectl rollout undo, until observed", &peers.undo_command),
            ("  its requests, sent directly", &peers.undo_api),
            ("kubectl agent rollback --previous", &peers.plugin_command),
        ] {
            row(format!("{label} (n={})", figures.n), figures);
        }
        println!("{:<44} {:>10.2} {:>21.2}", "ratio rollback/floor (p50, p99)", ratios.p50, ratios.p99);
        println!(
            "{:<44} {:>10.2} {:>21.2}",
            "  against the floor without the create", ratios.p50_without_create, ratios.p99_without_create
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
            ratios.throughput,
            throughput.direct_per_second,
            throughput.direct_seconds,
            ratios.throughput_against_floor_writes
        );
        print_load(&throughput.operator_load, &throughput.all_writes_load);
        if !self.scale.is_empty() {
            print_scale(&self.scale);
        }
        self.print_targets(&ratios);
    }

    fn print_targets(&self, ratios: &Ratios) {
        let (latency, peers) = (&self.latency, &self.peers);
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
            latency.operator.p50_ms / peers.helm_api.p50_ms,
            latency.operator.p50_ms / peers.undo_api.p50_ms
        );
        println!("  rollback p50 <= 1.3x floor p50: {:.2}x {}", ratios.p50, verdict(ratios.p50 <= 1.3));
        println!("  rollback p99 <= 1.5x floor p99: {:.2}x {}", ratios.p99, verdict(ratios.p99 <= 1.5));
        println!(
            "  throughput >= 0.8x the same writes made directly: {:.2}x {}",
            ratios.throughput,
            verdict(ratios.throughput >= 0.8)
        );
        println!(
            "    (against only the floor's writes, without the create, the pruning, the ConfigMap and the Events: {:.2}x {})",
            ratios.throughput_against_floor_writes,
            verdict(ratios.throughput_against_floor_writes >= 0.8)
        );
        println!(
            "  the fast paths (settled resume, echo registry) gain >= 1 ms of p50: {:.2} ms {}",
            ratios.fast_paths_gain_ms,
            verdict(ratios.fast_paths_gain_ms >= 1.0)
        );
        println!(
            "  the early start from the rollback watch gains >= 1 ms of p50: {:.2} ms {}",
            ratios.early_start_gain_ms,
            verdict(ratios.early_start_gain_ms >= 1.0)
        );
        if !self.scale.is_empty() {
            print_scale_targets(&self.scale);
        }
    }

    /// Writes the figures as `target/bench/rollback-<unix time>.json` and `rollback-latest.json`.
    pub(crate) fn write(&self) {
        let unix_time =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let report = serde_json::json!({ "run": self, "ratios": self.ratios(), "unix_time": unix_time });
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir).unwrap();
        let text = serde_json::to_string_pretty(&report).unwrap();
        std::fs::write(dir.join(format!("rollback-{unix_time}.json")), &text).unwrap();
        std::fs::write(dir.join("rollback-latest.json"), &text).unwrap();
        println!("figures written to {}", dir.join("rollback-latest.json").display());
    }
}

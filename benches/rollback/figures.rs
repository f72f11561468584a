//! The figures: sizes asked for, percentiles, metrics read, verdicts, and the samples' pace.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

pub(crate) fn env_size(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Percentiles {
    pub(crate) n: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
}

pub(crate) fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Percentiles { n: samples.len(), p50_ms: at(0.50), p95_ms: at(0.95), p99_ms: at(0.99) }
}

/// Pause after each sample, so that the next starts on a quiet server: one Restore at a time
/// means one, not one on the heels of the last one's trailing work (its delivery ConfigMap and
/// the Agent's status that reports it, its Events, the API server's watch fan-out: 10 to 20
/// ms on this project's machines, so a pause of 20 ms left the next sample, often the floor's,
/// beside some of it).
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// With BENCH_TRACE set, prints when each latency sample's steps happened, to match against the
/// operator's debug log (BENCH_LOG=agent_operator=debug) and see where the time goes.
pub(crate) fn trace(what: &str, rollback: &str) {
    if std::env::var_os("BENCH_TRACE").is_some() {
        eprintln!("TRACE {} {what} {rollback}", Timestamp::now());
    }
}

pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().split(' ').next()?.parse().ok()))
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

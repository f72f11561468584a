//! Prometheus metrics. Every label has a bounded set of values: resource kinds, results,
//! strategies, failure reasons and error operations, never object names.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::RollbackStrategy;
use crate::plan::FailureReason;

/// The `resource` label's values: the two controllers.
pub const AGENT: &str = "agent";
pub const AGENT_ROLLBACK: &str = "agentrollback";
pub const AGENT_PROMOTION: &str = "agentpromotion";
const RESOURCES: [&str; 3] = [AGENT, AGENT_ROLLBACK, AGENT_PROMOTION];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub resource: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RollbackLabels {
    pub strategy: &'static str,
    /// `Succeeded`, or the failure reason.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub operation: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Family<ResourceLabels, Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    pub rollbacks: Family<RollbackLabels, Counter>,
    pub versions_published: Counter,
    pub automatic_rollbacks: Counter,
    pub delivery_duration: Histogram,
    pub leader: Gauge,
    pub tracked_agents: Gauge,
    pub agents_out_of_sync: Gauge,
    pub admission_policies_installed: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("agentops");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by resource and result", reconciles.clone());
        let reconcile_duration = Family::<ResourceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("reconcile_duration_seconds", "Time one reconcile took", reconcile_duration.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("reconcile_errors", "Failed reconciles by the operation that failed", errors.clone());
        let rollbacks = Family::<RollbackLabels, Counter>::default();
        registry.register("rollbacks", "Finished rollbacks by strategy and outcome", rollbacks.clone());
        let versions_published = Counter::default();
        registry.register("versions_published", "Versions published from Agent edits", versions_published.clone());
        let automatic_rollbacks = Counter::default();
        registry.register(
            "automatic_rollbacks",
            "AgentRollbacks the operator created, a version having failed in the channel it served",
            automatic_rollbacks.clone(),
        );
        // 0.25 s to about 17 min.
        let delivery_duration = Histogram::new(exponential_buckets(0.25, 2.0, 13));
        registry.register(
            "delivery_duration_seconds",
            "Time from an active version change to its delivery (ConfigMap written, listed workloads rolled out); \
             measured from the version's or the rollback's timestamp, so to the second",
            delivery_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        let tracked_agents = Gauge::default();
        registry.register(
            "tracked_agents",
            "Agents the controller keeps state for: those that exist, or that a version or rollback still names",
            tracked_agents.clone(),
        );
        let agents_out_of_sync = Gauge::default();
        registry.register(
            "agents_out_of_sync",
            "Agents whose spec does not hold the active version's definition (InSync False), as their watch \
             last showed them",
            agents_out_of_sync.clone(),
        );
        let admission_policies_installed = Gauge::default();
        registry.register(
            "admission_policies_installed",
            "1 when the chart's admission policies (who did what, the rollbacks' records) were found at start",
            admission_policies_installed.clone(),
        );
        // Every series that can appear is served from the start, at zero, so that `rate` and
        // `increase` see the first event and the docs can be checked against what is served.
        for resource in RESOURCES {
            let _ = reconcile_duration.get_or_create(&ResourceLabels { resource });
            for result in ["success", "error"] {
                let _ = reconciles.get_or_create(&ReconcileLabels { resource, result });
            }
        }
        for operation in crate::error::OPERATIONS {
            let _ = errors.get_or_create(&ErrorLabels { operation });
        }
        let outcomes = std::iter::once("Succeeded").chain(FailureReason::ALL.map(FailureReason::as_str));
        for outcome in outcomes {
            for strategy in RollbackStrategy::ALL {
                let _ = rollbacks.get_or_create(&RollbackLabels { strategy: strategy.as_str(), outcome });
            }
        }
        Self {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            rollbacks,
            versions_published,
            automatic_rollbacks,
            delivery_duration,
            leader,
            tracked_agents,
            agents_out_of_sync,
            admission_policies_installed,
        }
    }
}

impl Metrics {
    /// Starts timing a reconcile; the result is recorded when the guard is finished or dropped.
    pub fn reconcile(&self, resource: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer { metrics: self, resource, start: Instant::now(), result: "error" }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records one reconcile's duration and result when dropped; a reconcile that returns early
/// with an error (or panics) counts as an error.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    resource: &'static str,
    start: Instant,
    result: &'static str,
}

impl ReconcileTimer<'_> {
    pub fn succeeded(mut self) {
        self.result = "success";
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let labels = ResourceLabels { resource: self.resource };
        self.metrics.reconcile_duration.get_or_create(&labels).observe(self.start.elapsed().as_secs_f64());
        self.metrics.reconciles.get_or_create(&ReconcileLabels { resource: self.resource, result: self.result }).inc();
    }
}

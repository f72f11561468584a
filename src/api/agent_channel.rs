//! The AgentChannel resource: a movable pointer over an Agent's immutable versions, serving one
//! version to one audience (production serves version 7 while staging tries 9).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::agent::{DeliverySpec, DeliveryStatus};

/// Default for `spec.analysis.bakeSeconds`.
pub const DEFAULT_BAKE_SECONDS: i64 = 300;
/// Default for `spec.analysis.progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i64 = 600;
/// Default for a check's `intervalSeconds`.
pub const DEFAULT_INTERVAL_SECONDS: i64 = 60;

/// A channel of an Agent: the version one audience gets, through its own ConfigMap and
/// workloads. It serves `spec.version`, or follows the Agent's active version; rollbacks and
/// promotions move it in `status.override`, never in `spec`.
// Several printcolumn(...) entries repeat the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "agentops.dev",
    version = "v1alpha1",
    kind = "AgentChannel",
    namespaced,
    derive = "PartialEq",
    status = "AgentChannelStatus",
    shortname = "agch",
    category = "agentops",
    selectable = ".spec.agentName",
    doc = "A channel of an Agent: the version one audience gets (pinned, or following the Agent's active version), through its own ConfigMap and workloads. Rollbacks and promotions move it without touching its spec.",
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agentName"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredVersion",
        description = "The version the spec asks for: spec.version, or the Agent's active version"
    ),
    printcolumn(
        name = "Serving",
        type_ = "integer",
        json_path = ".status.version",
        description = "The version the channel serves"
    ),
    printcolumn(
        name = "Last-Known-Good",
        type_ = "integer",
        json_path = ".status.lastKnownGoodVersion",
        description = "The newest version Healthy in this channel"
    ),
    printcolumn(name = "Healthy", type_ = "string", json_path = ".status.conditions[?(@.type==\"Healthy\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // The channel's automatic rollbacks are named `<channel>-auto-v<N>`, and a rollback's name
    // labels the version it makes: at most 63 characters.
    validation = Rule::new("self.metadata.name.size() <= 50").message("metadata.name: at most 50 characters (the names of its automatic rollbacks must fit 63)")
)]
#[x_kube(validation = Rule::new("self.agentName == oldSelf.agentName").message("spec.agentName is immutable: a channel belongs to one Agent; create another channel instead").field_path(".agentName"))]
#[serde(rename_all = "camelCase")]
pub struct AgentChannelSpec {
    /// The Agent whose versions this channel serves, in the channel's namespace. Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub agent_name: String,

    /// The version to serve (a pin). Absent, the channel follows the Agent's active version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<i64>,

    /// How the served version reaches this channel's runtime: its ConfigMap (default
    /// `<channel>-channel`) and the workloads to roll when the served version changes, with the
    /// same rules as an Agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,

    /// How a version is judged in this channel. Absent, the rollout check alone judges it, with
    /// the defaults below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
}

/// How a version is judged in a channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// How long every check must pass after the version is delivered before it is Healthy in
    /// this channel (default 300).
    #[serde(default = "default_bake_seconds")]
    #[schemars(range(min = 1))]
    pub bake_seconds: i64,

    /// How long the channel's workloads may take to roll out to a version before it fails the
    /// rollout check (default 600).
    #[serde(default = "default_progress_deadline_seconds")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: i64,

    /// What the operator does when a version it serves fails here: `Rollback` (the default)
    /// creates an AgentRollback to the channel's last known good; `Hold` keeps serving it.
    #[serde(default)]
    pub on_failure: OnFailure,

    /// Checks beside the built-in rollout check, each with a unique name and one provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub checks: Vec<AnalysisCheck>,
}

/// What a channel without `analysis` is judged by: the same defaults the API server fills in.
impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            bake_seconds: DEFAULT_BAKE_SECONDS,
            progress_deadline_seconds: DEFAULT_PROGRESS_DEADLINE_SECONDS,
            on_failure: OnFailure::default(),
            checks: Vec::new(),
        }
    }
}

/// What the operator does when the version a channel serves fails there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OnFailure {
    /// Create an AgentRollback (`LastKnownGood`) of the channel, named `<channel>-auto-v<N>`.
    #[default]
    Rollback,
    /// Keep serving the failed version until a person or a declared change moves the channel.
    Hold,
}

/// One check of a channel's analysis: a name and one provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.prometheus) != has(self.job)").message("a check needs exactly one provider: prometheus or job"))]
#[x_kube(validation = Rule::new("!has(self.successRange) || has(self.prometheus)").message("successRange is for a prometheus check"))]
pub struct AnalysisCheck {
    /// The check's name, unique in the channel: it names the check in status, Events and the
    /// reason of an automatic rollback.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// An instant query of the Prometheus HTTP API that yields one sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,

    /// An evaluation run once per version as a Job: Complete passes, Failed fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobCheck>,

    /// Seconds between two measurements (default 60).
    #[serde(default = "default_interval_seconds")]
    #[schemars(range(min = 1))]
    pub interval_seconds: i64,

    /// The values a measurement passes with (`min` and/or `max`, both included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_range: Option<SuccessRange>,

    /// Failed measurements tolerated before the version fails (default 0).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub failure_limit: i64,
}

fn default_interval_seconds() -> i64 {
    DEFAULT_INTERVAL_SECONDS
}

/// A Prometheus instant query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusCheck {
    /// The Prometheus server's base URL, http or https (its `/api/v1/query` is asked).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"))]
    pub address: String,

    /// The query; `$agent`, `$channel` and `$version` are replaced by the Agent's name, the
    /// channel's and the version's number.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
}

/// An evaluation Job's pod template. The version's snapshot is mounted at
/// `/etc/agent/agent.json`, and `AGENT_NAME`, `AGENT_CHANNEL`, `AGENT_VERSION` and
/// `AGENT_SNAPSHOT_HASH` are set in each container; it runs once (`backoffLimit: 0`, restart
/// policy `Never`), within `progressDeadlineSeconds`, as the ServiceAccount it names (else the
/// namespace's default), with no token mounted unless it asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobCheck {
    /// A pod template (`metadata`, `spec`), as a Job's.
    #[schemars(schema_with = "pod_template")]
    pub template: serde_json::Value,
}

/// Any object: the operator reads it as a pod template, and says on the channel when it is not
/// one (the full PodTemplateSpec schema would make the CRD several times larger).
fn pod_template(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// The values a measurement passes with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.min) || has(self.max)").message("successRange needs min, max or both"))]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("successRange: min is above max"))]
pub struct SuccessRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

fn default_bake_seconds() -> i64 {
    DEFAULT_BAKE_SECONDS
}

fn default_progress_deadline_seconds() -> i64 {
    DEFAULT_PROGRESS_DEADLINE_SECONDS
}

/// What a channel serves, and why, written by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentChannelStatus {
    /// The version the channel serves now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,

    /// The version its spec asks for: `spec.version`, or the Agent's active version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_version: Option<i64>,

    /// While a rollback or promotion holds the channel on another version than the desired one:
    /// which, and by whom. It ends when the desired version next changes.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<ChannelOverride>,

    /// The newest version Healthy in this channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_good_version: Option<i64>,

    /// The judgement of the served version in this channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,

    /// What the runtime has of the served version: the ConfigMap and each workload to roll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (delivered and rolled out), `Healthy` (the served version's verdict), `InSync`
    /// (whether it serves what its spec declares), `Reconciling` and `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// A channel held on a version by a rollback or a promotion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelOverride {
    /// The version it holds the channel on.
    pub version: i64,
    /// The version the channel served before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacing: Option<i64>,
    /// The AgentRollback that moved the channel, when a rollback did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<String>,
    /// The AgentPromotion that moved the channel, when a promotion did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
}

/// The judgement of one version in a channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// The version under judgement.
    pub version: i64,
    /// `Running`, `Healthy`, `Failed` or `Unknown`.
    pub phase: AnalysisPhase,
    /// When the judgement began: once the channel began serving the version (its rollout is
    /// held to `progressDeadlineSeconds` from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the version was delivered (rolled out): its bake began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_time: Option<Time>,
    /// What stands in the way, or what decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Each listed check's measurements of the version (they start again after a status
    /// loss; only verdicts are durable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
}

/// One check's measurements of the version under judgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    pub name: String,
    /// `Running` (measuring), `Healthy` (passed for the bake), `Failed`, or `Unknown` (its
    /// last measurement had no signal).
    pub phase: AnalysisPhase,
    /// Measurements taken, and how many of them failed.
    #[serde(default)]
    pub measurements: i64,
    #[serde(default)]
    pub failures: i64,
    /// The last value measured, as the provider gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_value: Option<String>,
    /// When it was last measured: the next measurement is due `intervalSeconds` later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a version's judgement in a channel stands. `Healthy` and `Failed` are verdicts, kept
/// durably on the version (label `health.agentops.dev/<channel>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AnalysisPhase {
    Running,
    Healthy,
    Failed,
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_without_analysis_gets_the_defaults_an_empty_analysis_is_given() {
        let empty: AnalysisSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(AnalysisSpec::default(), empty);
        assert_eq!((empty.bake_seconds, empty.progress_deadline_seconds), (300, 600));
    }
}

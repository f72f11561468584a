//! The AgentVersion resource: one immutable snapshot of an Agent's definition.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::agent::AgentDefinition;

/// One immutable snapshot of an Agent's definition, named `<agent>-v<N>`. The API server
/// refuses any change to `spec`, so immutability does not depend on the controller.
// Several printcolumn(...) entries repeat the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "agentops.dev",
    version = "v1alpha1",
    kind = "AgentVersion",
    namespaced,
    derive = "PartialEq",
    shortname = "agv",
    category = "agentops",
    selectable = ".spec.agentName",
    doc = "One immutable snapshot of an Agent's definition, named <agent>-v<N>.",
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agentName"),
    printcolumn(name = "Version", type_ = "integer", json_path = ".spec.version"),
    printcolumn(
        name = "Rollback-From",
        type_ = "integer",
        json_path = ".spec.rollbackFromVersion",
        description = "The version this one copies, when a rollback made it"
    ),
    printcolumn(name = "Published-By", type_ = "string", json_path = ".spec.publishedBy", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("AgentVersion spec is immutable"))]
#[serde(rename_all = "camelCase")]
pub struct AgentVersionSpec {
    /// The Agent this version belongs to (same namespace).
    #[schemars(length(min = 1, max = 63))]
    pub agent_name: String,

    /// The version number, from 1 up.
    #[schemars(range(min = 1))]
    pub version: i64,

    /// The Agent's definition as it was at this version.
    pub snapshot: AgentDefinition,

    /// sha256 (lowercase hex) of the canonical JSON of `snapshot`.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub snapshot_hash: String,

    /// The version whose snapshot this one copies; set only on versions made by a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rollback_from_version: Option<i64>,

    /// The AgentRollback that made this version; set only on versions made by a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_name: Option<String>,

    /// Why this version exists: the Agent's `agentops.dev/change-cause` annotation when it was
    /// published, or the rollback's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,

    /// Who caused this version: the `requestedBy` of the rollback that made it, or the
    /// identity the API server recorded for the Agent's spec change it was published from
    /// (where the chart's admission policy records it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_by: Option<String>,
}

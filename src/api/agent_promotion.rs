//! The AgentPromotion resource: a one-shot, audited move of what a channel serves, the forward
//! twin of a channel rollback.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::agent_rollback::RollbackPhase;

/// A request to move a channel to a version, run exactly once; afterwards the audit record of
/// what it did. It holds the channel in `status.override` and never writes the channel's spec.
// Several printcolumn(...) entries repeat the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "agentops.dev",
    version = "v1alpha1",
    kind = "AgentPromotion",
    namespaced,
    derive = "PartialEq",
    status = "AgentPromotionStatus",
    shortname = "agpr",
    category = "agentops",
    selectable = ".spec.channel",
    doc = "A request to move a channel to a version (given, or what another channel serves), run exactly once; afterwards the audit record of what it did.",
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channel"),
    printcolumn(
        name = "From",
        type_ = "integer",
        json_path = ".status.fromVersion",
        description = "The version the channel served before"
    ),
    printcolumn(
        name = "To",
        type_ = "integer",
        json_path = ".status.version",
        description = "The version the channel serves after"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Requested-By", type_ = "string", json_path = ".spec.requestedBy", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("AgentPromotion spec is immutable; create a new AgentPromotion instead"))]
#[x_kube(validation = Rule::new("has(self.version) != has(self.fromChannel)").message("exactly one of version and fromChannel is required").field_path(".version"))]
#[x_kube(validation = Rule::new("!has(self.fromChannel) || self.fromChannel != self.channel").message("fromChannel must be another channel than channel").field_path(".fromChannel"))]
#[serde(rename_all = "camelCase")]
pub struct AgentPromotionSpec {
    /// The channel to move, in this promotion's namespace.
    #[schemars(length(min = 1, max = 50), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub channel: String,

    /// The version to serve in the channel. Exactly one of `version` and `fromChannel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<i64>,

    /// Another channel of the same Agent: the channel gets what that one serves, only if it is
    /// Healthy there (otherwise the promotion fails with `NotHealthyInSource`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub from_channel: Option<String>,

    /// Run only if the channel still serves this version when the promotion starts; otherwise
    /// fail with `ActiveVersionChanged` and change nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub expected_version: Option<i64>,

    /// Serve the version even if it Failed in this channel (it is otherwise quarantined there):
    /// the one deliberate way back to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_failed: bool,

    /// Why the promotion was made; kept for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,

    /// Who asked for the promotion: the username the API server authenticated for the create,
    /// set by the chart's admission policy, as on AgentRollbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub requested_by: Option<String>,
}

/// What a promotion did, written by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPromotionStatus {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RollbackPhase>,

    /// The Agent whose channel it moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,

    /// The version the channel served when the promotion started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<i64>,

    /// The version the channel serves after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,

    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Why it failed, for machines: ChannelNotFound, VersionNotFound, NotHealthyInSource,
    /// VersionQuarantined, ActiveVersionChanged or AlreadyActive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// When the controller started the promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the promotion reached `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// The `metadata.resourceVersion` the promotion had before the controller first wrote its
    /// status. One channel's promotions and rollbacks run in creation order; this orders those
    /// created within the same second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_revision: Option<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled`, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

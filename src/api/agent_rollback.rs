//! The AgentRollback resource: a one-shot request to move an Agent's active version, and the
//! audit record of what it did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::agent::AgentDefinition;

/// A request to roll an Agent back, run exactly once. Not owned by its Agent: it is the audit
/// record and outlives it. The API server refuses any change to `spec` after creation.
// Several printcolumn(...) entries repeat the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "agentops.dev",
    version = "v1alpha1",
    kind = "AgentRollback",
    namespaced,
    derive = "PartialEq",
    status = "AgentRollbackStatus",
    shortname = "agrb",
    category = "agentops",
    selectable = ".spec.agentName",
    doc = "A request to roll an Agent back (Restore, Previous or Pop), run exactly once; afterwards the audit record of what it did.",
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agentName"),
    printcolumn(name = "Strategy", type_ = "string", json_path = ".spec.strategy"),
    printcolumn(
        name = "From",
        type_ = "integer",
        json_path = ".status.fromVersion",
        description = "Active version before"
    ),
    printcolumn(
        name = "To",
        type_ = "integer",
        json_path = ".status.activeVersion",
        description = "Active version after"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Requested-By", type_ = "string", json_path = ".spec.requestedBy", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // The name becomes the label agentops.dev/rollback of the version a rollback makes.
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: at most 63 characters (it labels the version the rollback makes)")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("AgentRollback spec is immutable; create a new AgentRollback instead"))]
#[x_kube(validation = Rule::new("self.strategy != 'Restore' || has(self.targetVersion)").message("targetVersion is required when strategy is Restore").field_path(".targetVersion"))]
#[x_kube(validation = Rule::new("self.strategy == 'Restore' || !has(self.targetVersion)").message("targetVersion is only allowed when strategy is Restore").field_path(".targetVersion"))]
#[x_kube(validation = Rule::new("!has(self.channel) || self.strategy == 'Restore' || self.strategy == 'LastKnownGood'").message("with a channel, strategy is Restore or LastKnownGood (a channel is a pointer: nothing to pop, and no previous version of its own)").field_path(".strategy"))]
#[x_kube(validation = Rule::new("self.strategy != 'LastKnownGood' || has(self.channel)").message("LastKnownGood needs a channel: the version Healthy there").field_path(".channel"))]
#[serde(rename_all = "camelCase")]
pub struct AgentRollbackSpec {
    /// The Agent to roll back, in this rollback's namespace (an Agent's name: at most 63
    /// characters).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub agent_name: String,

    /// `Restore` publishes a copy of `targetVersion` as a new version; `Previous` restores the
    /// newest version below the active one; `Pop` deletes the latest version, so the one before
    /// it becomes active. With a channel: `Restore` serves `targetVersion` in the channel, and
    /// `LastKnownGood` the newest version Healthy there other than the one it serves.
    pub strategy: RollbackStrategy,

    /// The channel of the Agent to roll back instead of the Agent: what the channel serves
    /// moves (in its status), no version is published, and the Agent is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub channel: Option<String>,

    /// The version to restore. Required for `Restore`, refused for the other strategies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_version: Option<i64>,

    /// Run only if this is still the active version (with a channel: the version the channel
    /// serves) when the rollback starts; otherwise fail with `ActiveVersionChanged` and change
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub expected_active_version: Option<i64>,

    /// Why the rollback was made; kept for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,

    /// Who asked for the rollback: the username the API server authenticated for the create.
    /// The chart's admission policy sets it, whatever the client sent (or, where the cluster
    /// cannot mutate, refuses any value but the caller's, and none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub requested_by: Option<String>,
}

/// How a rollback chooses the version to go back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RollbackStrategy {
    Restore,
    Previous,
    Pop,
    LastKnownGood,
}

impl RollbackStrategy {
    pub const ALL: [RollbackStrategy; 4] = [Self::Restore, Self::Previous, Self::Pop, Self::LastKnownGood];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restore => "Restore",
            Self::Previous => "Previous",
            Self::Pop => "Pop",
            Self::LastKnownGood => "LastKnownGood",
        }
    }
}

/// Where a rollback is in its life. `Succeeded` and `Failed` are terminal and never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RollbackPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl RollbackPhase {
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Pending | Self::Running => false,
            Self::Succeeded | Self::Failed => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }
}

/// What a rollback did, written by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRollbackStatus {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RollbackPhase>,

    /// The active version when the rollback started (with a channel: the version it served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<i64>,

    /// The version whose snapshot was restored (Restore, Previous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_version: Option<i64>,

    /// The version this rollback published (Restore, Previous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_version: Option<i64>,

    /// The version this rollback deleted (Pop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub popped_version: Option<i64>,

    /// The deleted version's snapshot (Pop), so nothing is lost and a pop can be undone by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub popped_snapshot: Option<AgentDefinition>,

    /// sha256 of `poppedSnapshot`'s canonical JSON (Pop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub popped_snapshot_hash: Option<String>,

    /// The active version after the rollback (with a channel: the version the channel serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_version: Option<i64>,

    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Why it failed, for machines: AgentNotFound, VersionNotFound, AlreadyActive,
    /// NoPreviousVersion, AtFirstVersion, ActiveVersionChanged, VersionInUse, VersionRefused,
    /// InvalidRecord, SnapshotNotKept, and for a channel ChannelNotFound, VersionQuarantined or
    /// NoKnownGoodVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// When the controller started the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the rollback reached `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// The `metadata.resourceVersion` the rollback had before the controller first wrote its
    /// status. Rollbacks of one Agent run in creation order; this orders those created within
    /// the same second.
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

//! The Agent resource: an AI agent's definition, and the pointer to its active version.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default for `spec.revisionHistoryLimit`.
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// An agent's definition: everything a version snapshots. `revisionHistoryLimit` is policy and
/// lives beside it in [`AgentSpec`], so that changing it publishes nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentDefinition {
    /// Name shown to the agent's users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// System instructions (prompt) the agent runs with: at most 256 KiB (UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "bytes(self).size() <= 262144",
        "message": "spec.instructions: at most 262144 bytes (UTF-8)",
    }]))]
    pub instructions: Option<String>,

    /// Kind of agent, for example `chat`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub type_: Option<String>,

    /// Refinement of `type`, for example `All LLM Models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub subtype: Option<String>,

    /// Model the agent calls, for example `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model: Option<String>,

    /// Sampling temperature, from 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2))]
    pub temperature: Option<f64>,

    /// Ordered steps the agent follows. Each step is an object; fields the operator does not know
    /// are kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::agent::preserved_object_list")]
    pub steps: Option<Vec<serde_json::Map<String, serde_json::Value>>>,

    /// Questions the agent asks its user before it starts. Each item is an object; fields the
    /// operator does not know are kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::agent::preserved_object_list")]
    pub ask_user_questions: Option<Vec<serde_json::Map<String, serde_json::Value>>>,

    /// Files (names or URIs) the agent may consult: at most 100, each at most 2048 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100), inner(length(max = 2048)))]
    pub knowledge_base_files: Option<Vec<String>>,

    /// Who may use the agent: `private`, `workspace` or `public`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,

    /// Further settings, as string keys and values: at most 64, each value at most 4096
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::agent::settings_map")]
    pub advanced_settings: Option<BTreeMap<String, String>>,
}

/// Who may use an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Private,
    Workspace,
    Public,
}

/// A list of objects whose fields the API server keeps as written (structural schemas would
/// otherwise drop every field the schema does not name).
/// At most 100 items of at most 64 fields each; what the fields hold is bounded by the size
/// of the whole definition, checked when it is published.
pub(crate) fn preserved_object_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 100,
        "items": {
            "type": "object",
            "maxProperties": 64,
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}

/// String keys and values: at most 64 entries, keys at most 253 characters, values at most 4096.
pub(crate) fn settings_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 4096},
        "x-kubernetes-validations": [{
            "rule": "self.all(k, k.size() <= 253)",
            "message": "spec.advancedSettings: keys are at most 253 characters",
        }],
    })
}

/// What `instructions`, `knowledgeBaseFiles` and `advancedSettings` may take together, in
/// bytes of JSON (their text, and the quotes and separators of each entry): the whole
/// definition's bound (`plan::publish::MAX_DEFINITION_BYTES`, 320 KiB) less what its small
/// fields can take at most. So a definition made only of fields the API server can measure is
/// refused at apply, never accepted and then left unpublished. `steps` and `askUserQuestions`
/// keep fields of any shape, which CEL cannot measure: they count only at publish.
pub const TYPED_FIELDS_BUDGET: usize = 323_584;

/// The rule, on the spec (`self`): the bytes of JSON those fields take, at most the budget.
const TYPED_FIELDS_SIZE_RULE: &str = "(has(self.instructions) ? bytes(self.instructions).size() : 0) + \
    (has(self.knowledgeBaseFiles) ? self.knowledgeBaseFiles.map(f, bytes(f).size() + 3).sum() \
    : 0) + (has(self.advancedSettings) ? self.advancedSettings.map(k, bytes(k).size() + \
    bytes(self.advancedSettings[k]).size() + 6).sum() : 0) <= 323584";

/// An AI agent's definition. Every change of the definition is published as a new
/// AgentVersion; AgentRollbacks move the active version without touching this spec.
// Several printcolumn(...) entries repeat the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agentops.dev",
    version = "v1alpha1",
    kind = "Agent",
    namespaced,
    derive = "PartialEq",
    status = "AgentStatus",
    shortname = "ag",
    category = "agentops",
    doc = "An AI agent's definition. Each change of the definition is kept as an immutable AgentVersion; AgentRollbacks move the active version.",
    printcolumn(
        name = "Active",
        type_ = "integer",
        json_path = ".status.activeVersion",
        description = "The active version"
    ),
    printcolumn(
        name = "Versions",
        type_ = "integer",
        json_path = ".status.versionCount",
        description = "Versions kept"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("metadata.name: at most 63 characters, as its versions and ConfigMap carry it in the agentops.dev/agent label")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": TYPED_FIELDS_SIZE_RULE,
    // A messageExpression that said how many bytes they take would cost more than CEL allows.
    "message": "spec: instructions, knowledgeBaseFiles and advancedSettings take more than 323584 bytes together as JSON (the whole definition may take 327680)",
}]))]
pub struct AgentSpec {
    #[serde(flatten)]
    pub definition: AgentDefinition,

    /// How many versions to keep (at least 1). Older versions are deleted, oldest first; the
    /// active version is never deleted. Changing only this field publishes no version.
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 1))]
    pub revision_history_limit: i32,

    /// How the active version reaches the agent's runtime: the ConfigMap that holds it, and the
    /// workloads to roll when it changes. Policy: changing it publishes no version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// Where the active version is delivered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Name of the ConfigMap whose `agent.json` is the delivered version's snapshot (an Agent
    /// delivers its active version; default `<agent>-agent`, and `<channel>-channel` for a
    /// channel). The operator creates and owns it; it never writes into a ConfigMap it did not
    /// create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub config_map_name: Option<String>,

    /// Workloads in the same namespace to roll out when the delivered version changes: the
    /// operator sets three annotations on their pod template (the version, its snapshot hash,
    /// whose delivery it takes) and touches nothing else. A workload another Agent or channel
    /// already rolls is left alone and reported (`WorkloadConflict`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub restart: Vec<WorkloadRef>,
}

/// A workload in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// `Deployment` or `StatefulSet`.
    pub kind: WorkloadKind,
    /// Its name.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}

/// Kinds of workload the operator can roll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
        }
    }
}

/// What the runtime has of the active version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// The ConfigMap that holds the active version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// The version the ConfigMap holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The workloads of `spec.delivery.restart`, and what their pod template carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadDelivery>,
}

/// One workload's delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadDelivery {
    pub kind: WorkloadKind,
    pub name: String,
    /// The version its pod template carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Whether its rollout of that template has finished.
    pub rolled_out: bool,
    /// What stands in the way, when something does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn default_revision_history_limit() -> i32 {
    DEFAULT_REVISION_HISTORY_LIMIT
}

/// What the controller last observed and did for an Agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The active version: always the newest existing version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_version: Option<i64>,

    /// How many versions exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_count: Option<i64>,

    /// The newest `metadata.generation` whose spec has been published (or found equal to the
    /// active version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// sha256 of the spec's definition at `observedGeneration`. A new generation with the same
    /// definition (a change of `revisionHistoryLimit` only) publishes nothing, even when a
    /// rollback has made the active version differ from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_definition_hash: Option<String>,

    /// Digest of the versions when this status was written (each one's number, snapshot hash
    /// and making rollback). The controller trusts its cached list of versions only while the
    /// list matches it, and reads them from the API server otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions_digest: Option<String>,

    /// The last AgentRollback that succeeded on this Agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<LastRollback>,

    /// What the runtime has of the active version: the ConfigMap and each workload to roll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,

    /// `Ready`, `Reconciling` and `Stalled`, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// A rollback that changed an Agent's active version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRollback {
    /// Name of the AgentRollback.
    pub name: String,
    /// When it completed.
    pub time: Time,
}

//! Names the operator writes into the cluster: group, labels, annotations, field managers.
//! Field managers are never renamed: a new name would orphan the fields the old one owns.

pub const GROUP: &str = "agentops.dev";
pub const VERSION: &str = "v1alpha1";

/// Label on every AgentVersion: the Agent it belongs to.
pub const AGENT_LABEL: &str = "agentops.dev/agent";
/// Label on every AgentVersion: its version number.
pub const VERSION_LABEL: &str = "agentops.dev/version";
/// Label on versions made by a rollback: the AgentRollback that made them.
pub const ROLLBACK_LABEL: &str = "agentops.dev/rollback";
/// Annotation on an Agent, copied into `changeCause` of the version it publishes.
pub const CHANGE_CAUSE_ANNOTATION: &str = "agentops.dev/change-cause";

/// Field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "agentops.dev/agent-operator";
/// `reportingController` of the controller's Events.
pub const EVENT_CONTROLLER: &str = "agentops.dev/agent-operator";

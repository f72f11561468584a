//! The library's error type. Each variant names the operation that failed; the cause comes
//! through `source()`. Permanent rollback outcomes are not errors (see `plan::FailureReason`).

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error("failed to read Agent {namespace}/{name}")]
    GetAgent {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to list the versions of Agent {namespace}/{name}")]
    ListVersions {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to list the rollbacks of Agent {namespace}/{name}")]
    ListRollbacks {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to read AgentRollback {namespace}/{name}")]
    GetRollback {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to create AgentVersion {namespace}/{name}")]
    CreateVersion {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to delete AgentVersion {namespace}/{name}")]
    DeleteVersion {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write the status of Agent {namespace}/{name}")]
    PatchAgentStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write the record of AgentRollback {namespace}/{name}")]
    WriteRollback {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write the status of AgentRollback {namespace}/{name}")]
    PatchRollbackStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write the delivery ConfigMap {namespace}/{name}")]
    WriteConfigMap {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to read workload {namespace}/{name}")]
    ReadWorkload {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to roll workload {namespace}/{name}")]
    RollWorkload {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("object has no {0}")]
    MissingObjectKey(&'static str),

    #[error("Agent {namespace}/{name} did not settle after {steps} units of work")]
    NotSettled { namespace: String, name: String, steps: usize },

    #[error("Agent {namespace}/{name} cannot be decoded: {why}")]
    UnreadableAgent { namespace: String, name: String, why: String },
}

/// Every value of [`Error::metric_label`], so that each series is served from the start.
pub const OPERATIONS: [&str; 15] = [
    "get_agent",
    "list_versions",
    "list_rollbacks",
    "get_rollback",
    "create_version",
    "delete_version",
    "patch_agent_status",
    "write_rollback",
    "patch_rollback_status",
    "write_config_map",
    "read_workload",
    "roll_workload",
    "missing_object_key",
    "not_settled",
    "unreadable_agent",
];

impl Error {
    /// A bounded label for metrics: one of [`OPERATIONS`].
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::GetAgent { .. } => "get_agent",
            Self::ListVersions { .. } => "list_versions",
            Self::ListRollbacks { .. } => "list_rollbacks",
            Self::GetRollback { .. } => "get_rollback",
            Self::CreateVersion { .. } => "create_version",
            Self::DeleteVersion { .. } => "delete_version",
            Self::PatchAgentStatus { .. } => "patch_agent_status",
            Self::WriteRollback { .. } => "write_rollback",
            Self::PatchRollbackStatus { .. } => "patch_rollback_status",
            Self::WriteConfigMap { .. } => "write_config_map",
            Self::ReadWorkload { .. } => "read_workload",
            Self::RollWorkload { .. } => "roll_workload",
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::NotSettled { .. } => "not_settled",
            Self::UnreadableAgent { .. } => "unreadable_agent",
        }
    }
}

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

    #[error("failed to write the status of AgentChannel {namespace}/{name}")]
    PatchChannelStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to record the verdict on AgentVersion {namespace}/{name}")]
    JudgeVersion {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to create the evaluation Job {namespace}/{name}")]
    CreateJob {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to set the finalizers of AgentVersion {namespace}/{name}")]
    SetVersionFinalizers {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to read the pods of {namespace}/{name}")]
    ReadPods {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to read AgentChannel {namespace}/{name}")]
    GetChannel {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("failed to write AgentPromotion {namespace}/{name}")]
    WritePromotion {
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

    #[error("failed to keep or read the snapshot that AgentRollback {namespace}/{name} pops")]
    PoppedSnapshot {
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
pub const OPERATIONS: [&str; 21] = [
    "get_agent",
    "list_versions",
    "list_rollbacks",
    "get_rollback",
    "create_version",
    "delete_version",
    "patch_agent_status",
    "patch_channel_status",
    "write_promotion",
    "get_channel",
    "judge_version",
    "read_pods",
    "write_rollback",
    "patch_rollback_status",
    "write_config_map",
    "popped_snapshot",
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
            Self::PatchChannelStatus { .. } => "patch_channel_status",
            Self::WritePromotion { .. } => "write_promotion",
            Self::GetChannel { .. } => "get_channel",
            Self::JudgeVersion { .. } => "judge_version",
            Self::SetVersionFinalizers { .. } => "set_version_finalizers",
            Self::CreateJob { .. } => "create_job",
            Self::ReadPods { .. } => "read_pods",
            Self::WriteRollback { .. } => "write_rollback",
            Self::PatchRollbackStatus { .. } => "patch_rollback_status",
            Self::WriteConfigMap { .. } => "write_config_map",
            Self::PoppedSnapshot { .. } => "popped_snapshot",
            Self::ReadWorkload { .. } => "read_workload",
            Self::RollWorkload { .. } => "roll_workload",
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::NotSettled { .. } => "not_settled",
            Self::UnreadableAgent { .. } => "unreadable_agent",
        }
    }
}

/// The error and its causes on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The HTTP status of an error the API server answered.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// A client error that no retry changes: not 404 (a namespace on its way out), 409 (a name
/// taken: look again) or 429 (too many requests: later).
pub fn is_permanent(code: u16) -> bool {
    (400..500).contains(&code) && !matches!(code, 404 | 409 | 429)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_every_cause_in_order() {
        let api = kube::Error::Api(kube::core::Status::failure("version refused", "Invalid").with_code(422).boxed());
        let error = Error::CreateVersion { namespace: "ns".into(), name: "a-v2".into(), source: api };
        let text = error_chain(&error);
        assert!(text.starts_with("failed to create AgentVersion ns/a-v2: "), "{text}");
        assert!(text.contains("version refused"), "{text}");
        assert_eq!(error_chain(&Error::MissingObjectKey("metadata.namespace")), "object has no metadata.namespace");
    }

    #[test]
    fn only_the_api_servers_answers_have_a_status_code() {
        let api = kube::Error::Api(kube::core::Status::failure("gone", "NotFound").with_code(404).boxed());
        assert_eq!(status_code(&api), Some(404));
        let decode = kube::Error::SerdeError(serde_json::from_str::<u8>("x").expect_err("not a number"));
        assert_eq!(status_code(&decode), None);
    }

    #[test]
    fn client_errors_are_permanent_but_those_a_retry_changes() {
        let cases = [
            (400, true),
            (403, true),
            (404, false),
            (409, false),
            (413, true),
            (422, true),
            (429, false),
            (500, false),
            (503, false),
            (200, false),
        ];
        for (code, permanent) in cases {
            assert_eq!(is_permanent(code), permanent, "{code}");
        }
    }
}

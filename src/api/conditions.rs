//! Condition types and reasons written to status, and Event reasons: one place for every
//! PascalCase string the controller reports, so names stay consistent and bounded.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The object is in its desired state (`kubectl wait --for=condition=Ready`).
pub const READY: &str = "Ready";
/// The controller is working on the object (kstatus: in progress).
pub const RECONCILING: &str = "Reconciling";
/// The object will not progress without a change from outside (kstatus: failed).
pub const STALLED: &str = "Stalled";
/// The Agent's spec holds the active version's definition: False after a rollback, until the
/// spec (in git) is brought to what is active.
pub const IN_SYNC: &str = "InSync";
/// A channel's served version passed its analysis (True), failed it (False), or is judged.
pub const HEALTHY: &str = "Healthy";

/// Condition reasons.
pub mod reasons {
    pub const VERSION_ACTIVE: &str = "VersionActive";
    pub const PUBLISHING: &str = "Publishing";
    pub const ROLLBACK_IN_PROGRESS: &str = "RollbackInProgress";
    pub const QUEUED: &str = "Queued";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const AS_EXPECTED: &str = "AsExpected";
    /// The active version is on its way to the runtime (ConfigMap, workload rollouts).
    pub const DELIVERING: &str = "Delivering";
    /// The delivery ConfigMap's name is taken by a ConfigMap the operator did not create.
    pub const CONFIG_MAP_CONFLICT: &str = "ConfigMapConflict";
    /// A workload of `spec.delivery.restart` does not exist.
    pub const WORKLOAD_NOT_FOUND: &str = "WorkloadNotFound";
    /// The operator may not read or patch a workload of `spec.delivery.restart`.
    pub const WORKLOAD_FORBIDDEN: &str = "WorkloadForbidden";
    /// A workload listed by this Agent takes another Agent's delivery.
    pub const WORKLOAD_CONFLICT: &str = "WorkloadConflict";
    /// A workload's rollout stopped progressing.
    pub const ROLLOUT_STUCK: &str = "RolloutStuck";
    /// The spec's definition is larger than a version may be; it is not published.
    pub const DEFINITION_TOO_LARGE: &str = "DefinitionTooLarge";
    /// The API server refused to create the version of the spec's definition (an admission
    /// policy, a validation rule): no retry would change its answer, so it is not published.
    pub const VERSION_REFUSED: &str = "VersionRefused";
    /// The spec's definition cannot be decoded (it nests deeper than the operator's JSON decoder
    /// reads): nothing is published until it changes.
    pub const DEFINITION_UNREADABLE: &str = "DefinitionUnreadable";
    /// InSync: the spec's definition is the active version's.
    pub const MATCHES_ACTIVE_VERSION: &str = "MatchesActiveVersion";
    /// InSync: a rollback made a version active whose definition the spec does not hold.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// InSync: the spec differs from the active version for another reason (not yet
    /// published, or the newest version deleted by hand).
    pub const SPEC_DIFFERS: &str = "SpecDiffers";
    /// InSync: nothing is published yet.
    pub const NO_VERSION: &str = "NoVersion";
    /// A channel's desired version does not exist (never made, popped or pruned).
    pub const VERSION_NOT_FOUND: &str = "VersionNotFound";
    /// A channel's Agent does not exist, or has no version yet.
    pub const AGENT_NOT_FOUND: &str = "AgentNotFound";
    /// Ready on a channel: it serves its version, delivered.
    pub const VERSION_SERVED: &str = "VersionServed";
    /// Healthy on a channel: the served version passed its analysis.
    pub const ANALYSIS_PASSED: &str = "AnalysisPassed";
    /// Healthy on a channel: the served version failed its analysis.
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    /// Healthy on a channel: the served version is being judged.
    pub const ANALYSING: &str = "Analysing";
    /// Healthy on a channel: a signal the analysis needs cannot be read.
    pub const SIGNAL_UNAVAILABLE: &str = "SignalUnavailable";
    /// Stalled: the channel's desired version Failed in it, and it left that version.
    pub const VERSION_QUARANTINED: &str = "VersionQuarantined";
    /// InSync on a channel: it serves the version its spec declares.
    pub const MATCHES_SPEC: &str = "MatchesSpec";
    /// InSync on a channel: a promotion or rollback holds it on another version than its spec
    /// declares.
    pub const OVERRIDDEN: &str = "Overridden";
}

/// Event reasons.
pub mod events {
    pub const VERSION_PUBLISHED: &str = "VersionPublished";
    pub const VERSIONS_PRUNED: &str = "VersionsPruned";
    pub const ROLLBACK_STARTED: &str = "RollbackStarted";
    pub const ROLLBACK_SUCCEEDED: &str = "RollbackSucceeded";
    pub const ROLLBACK_FAILED: &str = "RollbackFailed";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const DELIVERY_BLOCKED: &str = "DeliveryBlocked";
    /// The delivered definition was changed by hand, and the active version written back.
    pub const DELIVERY_REPAIRED: &str = "DeliveryRepaired";
    pub const PROMOTION_STARTED: &str = "PromotionStarted";
    pub const PROMOTION_SUCCEEDED: &str = "PromotionSucceeded";
    pub const PROMOTION_FAILED: &str = "PromotionFailed";
    /// On a channel: the operator created an AgentRollback of it, its served version having
    /// failed there.
    pub const AUTOMATIC_ROLLBACK: &str = "AutomaticRollback";
}

/// Lookups of a status's conditions by type.
pub trait HasConditions {
    fn conditions(&self) -> &[Condition];

    /// The condition of this type, if set.
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions().iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of this type is set and "True".
    fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    /// Whether the condition of this type is set and "False".
    fn is_false(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "False")
    }
}

impl HasConditions for crate::api::AgentStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl HasConditions for crate::api::AgentRollbackStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl HasConditions for crate::api::AgentChannelStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl HasConditions for crate::api::AgentPromotionStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

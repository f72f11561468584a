//! The custom resource types of group `agentops.dev`, version `v1alpha1`, and the keys
//! (labels, annotations, field managers) shared by every layer. Types only: no behaviour.

pub mod agent;
pub mod agent_channel;
pub mod agent_promotion;
pub mod agent_rollback;
pub mod agent_version;
pub mod conditions;
pub mod keys;

pub use agent::{
    Agent, AgentDefinition, AgentSpec, AgentStatus, DeliverySpec, DeliveryStatus, LastRollback, Visibility,
    WorkloadDelivery, WorkloadKind, WorkloadRef,
};
pub use agent_channel::{
    AgentChannel, AgentChannelSpec, AgentChannelStatus, AnalysisCheck, AnalysisPhase, AnalysisSpec, AnalysisStatus,
    ChannelOverride, CheckStatus, JobCheck, OnFailure, PrometheusCheck, SuccessRange,
};
pub use agent_promotion::{AgentPromotion, AgentPromotionSpec, AgentPromotionStatus};
pub use agent_rollback::{AgentRollback, AgentRollbackSpec, AgentRollbackStatus, RollbackPhase, RollbackStrategy};
pub use agent_version::{AgentVersion, AgentVersionSpec};

//! agent-operator: keeps every change to an Agent's definition as an immutable AgentVersion
//! and performs AgentRollbacks (Restore, Previous, Pop) exactly once, in order, crash-safe.
//!
//! Layers point one way: [`api`] (types) ← [`plan`] (pure decisions) ← [`controller`]
//! (Kubernetes I/O) ← the binary.

pub mod api;
pub mod api_check;
pub mod client;
pub mod controller;
pub mod crds;
pub mod error;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod policy_check;
pub mod telemetry;

pub use error::{Error, Result};

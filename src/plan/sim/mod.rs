//! The planner's tests, against a model of the API server that the operator's own sync loop
//! runs on. Read `examples.rs` first: one behaviour each. Then `properties.rs`: random edits
//! and rollbacks, with crashes, stale caches and lost statuses, judged by the contract's rules
//! (`reference.rs`, which the end-to-end tests share). `cluster.rs` is the model.

mod cluster;
mod examples;
mod properties;
pub(crate) mod reference;

pub(crate) use cluster::{Cluster, Outcome, content};
pub(crate) use properties::{Op, Rules, check_invariants, expected, op, submit};

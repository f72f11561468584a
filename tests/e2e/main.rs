//! Tests against a real API server (see `tests/support`). One binary, so the 2-core build links
//! once; each test works in its own namespace.

// Tests fail by panicking; unwrap says so most briefly.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod analysis;
mod channels;
mod chart;
mod control_plane;
mod crash;
mod delivery;
mod docs;
mod fuzz;
mod hostile;
mod identity;
mod in_cluster;
mod operations;
mod outage;
mod plugin;
mod rollback;
mod size;
mod status_loss;
mod transient_refusals;

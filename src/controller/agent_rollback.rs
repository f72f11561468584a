//! The AgentRollback controller: a rollback that is not yet terminal runs the sync of the Agent
//! it names, which starts, resumes or finishes it in turn with that Agent's other rollbacks.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{instrument, warn};

use super::Context;
use super::sync::sync_agent;
use crate::api::AgentRollback;
use crate::metrics::ErrorLabels;
use crate::plan::phase_of;
use crate::{Error, Result};

#[instrument(skip_all, fields(namespace = rollback.namespace(), rollback = rollback.name_any()))]
pub async fn reconcile(rollback: Arc<AgentRollback>, ctx: Arc<Context>) -> Result<Action> {
    // Terminal phases never change again.
    if phase_of(&rollback).is_some_and(|p| p.is_terminal()) {
        return Ok(Action::await_change());
    }
    let timer = ctx.metrics.reconcile("agentrollback");
    let namespace = rollback.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    // A sync that ran while this one waited for its turn may have finished the rollback. Most
    // triggers are echoes of that sync's own writes: the rollback's status, the Agent's.
    let reference = ObjectRef::from_obj(&*rollback);
    let finished = || {
        let current = ctx.rollbacks.get(&reference).unwrap_or(rollback.clone());
        phase_of(&current).is_some_and(|p| p.is_terminal()) || ctx.settled.handled(&namespace, &current)
    };
    sync_agent(&ctx, &namespace, &rollback.spec.agent_name, finished).await?;
    ctx.reset_backoff(&rollback.uid().unwrap_or_default());
    timer.succeeded();
    Ok(Action::await_change())
}

pub fn error_policy(rollback: Arc<AgentRollback>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.get_or_create(&ErrorLabels { operation: error.metric_label() }).inc();
    let delay = ctx.next_backoff(&rollback.uid().unwrap_or_default());
    warn!(namespace = rollback.namespace(), rollback = rollback.name_any(), error = %super::error_chain(error), retry_in = ?delay, "AgentRollback sync failed");
    Action::requeue(delay)
}

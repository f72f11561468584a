//! The AgentRollback controller: a rollback that is not yet terminal runs the sync of the Agent
//! it names, which starts, resumes or finishes it in turn with that Agent's other rollbacks.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, instrument, warn};

use super::context::Context;
use super::index::{AgentKey, Retry};
use super::sync::sync_agent;
use crate::api::AgentRollback;
use crate::api::keys::ROLLBACK_RECORD_ANNOTATION;
use crate::error::error_chain;
use crate::metrics::ErrorLabels;
use crate::plan::phase_of;
use crate::{Error, Result};

#[instrument(skip_all, fields(namespace = rollback.namespace(), rollback = rollback.name_any()))]
pub async fn reconcile(rollback: Arc<AgentRollback>, ctx: Arc<Context>) -> Result<Action> {
    // Terminal phases never change again.
    if phase_of(&rollback).is_some_and(|p| p.is_terminal()) {
        return Ok(Action::await_change());
    }
    let timer = ctx.metrics.reconcile(crate::metrics::AGENT_ROLLBACK);
    rollback.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    // `None` is a sync handed to the one of the Agent that runs, which passes again and runs
    // this rollback too; should it fail, its own retry does (see `turns`).
    sync_agent(&ctx, &agent_of(&rollback), || finished(&ctx, &rollback)).await?;
    ctx.index.reset_retry(&agent_of(&rollback), &Retry::Rollback(rollback.name_any()));
    timer.succeeded();
    Ok(Action::await_change())
}

fn agent_of(rollback: &AgentRollback) -> AgentKey {
    AgentKey::new(&rollback.namespace().unwrap_or_default(), &rollback.spec.agent_name)
}

/// Whether a sync that ran while this one waited for its turn finished the rollback. Most
/// triggers are echoes of that sync's own writes: the rollback's status, the Agent's.
fn finished(ctx: &Context, rollback: &Arc<AgentRollback>) -> bool {
    let current = ctx.rollbacks.get(&ObjectRef::from_obj(&**rollback)).unwrap_or_else(|| rollback.clone());
    phase_of(&current).is_some_and(|p| p.is_terminal()) || ctx.index.handled(&current)
}

/// Starts the sync of a rollback new to the watch at once, in its own task: the controller's
/// queue, which runs the reconcile next, holds every object until the next tick of its timer,
/// about a millisecond, on the path of every rollback. The reconcile then finds the rollback
/// finished, or runs (and retries) it if this sync failed. At most `CONCURRENCY` (16) run
/// at once; beyond that, new rollbacks wait for the reconcile.
pub fn start_early(rollback: &AgentRollback, ctx: &Arc<Context>) {
    // Written by a sync already (its record may be ahead of its status): not new.
    if phase_of(rollback).is_some() || rollback.annotations().contains_key(ROLLBACK_RECORD_ANNOTATION) {
        return;
    }
    let (Some(_), Ok(permit)) = (rollback.namespace(), ctx.early_starts.clone().try_acquire_owned()) else {
        return;
    };
    let (ctx, rollback) = (ctx.clone(), Arc::new(rollback.clone()));
    tokio::spawn(async move {
        let _permit = permit;
        // Counted as a reconcile of the rollback: it is where the rollback's work is done.
        let timer = ctx.metrics.reconcile(crate::metrics::AGENT_ROLLBACK);
        match sync_agent(&ctx, &agent_of(&rollback), || finished(&ctx, &rollback)).await {
            Ok(_) => timer.succeeded(),
            Err(error) => {
                ctx.metrics.errors.get_or_create(&ErrorLabels { operation: error.metric_label() }).inc();
                debug!(namespace = rollback.namespace(), rollback = rollback.name_any(), error = %error_chain(&error), "Early start failed; the reconcile retries");
                // Its reconcile may have been handed to this sync already.
                ctx.retry_early_start(ObjectRef::from_obj(&*rollback));
            }
        }
    });
}

pub fn error_policy(rollback: Arc<AgentRollback>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.get_or_create(&ErrorLabels { operation: error.metric_label() }).inc();
    let delay = ctx.index.next_retry(&agent_of(&rollback), Retry::Rollback(rollback.name_any()));
    warn!(namespace = rollback.namespace(), rollback = rollback.name_any(), error = %error_chain(error), retry_in = ?delay, "AgentRollback sync failed");
    Action::requeue(delay)
}

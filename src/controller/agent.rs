//! The Agent controller: runs the sync of an Agent when the Agent or one of its versions
//! changes (publish, prune, status).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::{instrument, warn};

use super::Context;
use super::sync::sync_agent;
use crate::api::Agent;
use crate::metrics::ErrorLabels;
use crate::{Error, Result};

/// A periodic re-check, in case an event was missed.
const RESYNC: Duration = Duration::from_secs(600);

#[instrument(skip_all, fields(namespace = agent.namespace(), agent = agent.name_any()))]
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile("agent");
    let namespace = agent.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    sync_agent(&ctx, &namespace, &agent.name_any()).await?;
    ctx.reset_backoff(&agent.uid().unwrap_or_default());
    timer.succeeded();
    Ok(Action::requeue(RESYNC))
}

pub fn error_policy(agent: Arc<Agent>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.get_or_create(&ErrorLabels { operation: error.metric_label() }).inc();
    let delay = ctx.next_backoff(&agent.uid().unwrap_or_default());
    warn!(namespace = agent.namespace(), agent = agent.name_any(), error = %super::error_chain(error), retry_in = ?delay, "Agent sync failed");
    Action::requeue(delay)
}

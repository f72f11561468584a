//! The Agent controller: runs the sync of an Agent when the Agent or one of its versions
//! changes (publish, prune, status).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::{instrument, warn};

use super::Context;
use super::observe::fetch_versions;
use super::sync::sync_agent;
use crate::api::Agent;
use crate::api::conditions::READY;
use crate::metrics::ErrorLabels;
use crate::plan::Observed;
use crate::{Error, Result};

/// A periodic re-check, in case an event was missed.
const RESYNC: Duration = Duration::from_secs(600);

#[instrument(skip_all, fields(namespace = agent.namespace(), agent = agent.name_any()))]
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile("agent");
    let namespace = agent.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = agent.name_any();
    // The echo of a recent clean sync's last write: that sync left nothing to do.
    let covered = || ctx.settled.covers(&agent);
    if covered() {
        // Nothing to do.
    } else if ctx.syncing(&namespace, &name) {
        // Most likely an echo of the sync in progress: wait for it to end, then look again.
        sync_agent(&ctx, &namespace, &name, covered).await?;
    } else if !up_to_date(&ctx, &agent, &namespace).await? {
        sync_agent(&ctx, &namespace, &name, || false).await?;
    }
    ctx.reset_backoff(&agent.uid().unwrap_or_default());
    timer.succeeded();
    Ok(Action::requeue(RESYNC))
}

/// True when nothing can be left for the Agent controller to do: the Agent's generation is
/// handled and its versions (from the API server's cache) are the ones its status records.
/// Pending rollbacks are left to the AgentRollback controller, which is triggered by each of
/// them. Most Agent reconciles are echoes of the controller's own writes; this check costs one
/// cached list and no lock, where a sync would wait its turn and read everything again.
async fn up_to_date(ctx: &Context, agent: &Agent, namespace: &str) -> Result<bool> {
    let Some(status) = agent.status.as_ref() else { return Ok(false) };
    let Some(recorded) = status.versions_digest.as_ref() else { return Ok(false) };
    let name = agent.name_any();
    let versions = fetch_versions(ctx, namespace, &name, true).await?;
    let observed = Observed::new(namespace.into(), name.clone(), Some(agent.clone()), versions, Vec::new());
    if !observed.foreign_versions.is_empty() || &observed.versions_digest() != recorded {
        // Versions changed behind the controller's back (or it is mid-way): the next sync
        // reads them with a consistent list.
        ctx.settled.unsettle(namespace, &name);
        return Ok(false);
    }
    // A status written while work was in flight still says so: the sync must replace it.
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True" && c.observed_generation == agent.metadata.generation);
    Ok(ready && status.observed_generation == agent.metadata.generation)
}

pub fn error_policy(agent: Arc<Agent>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.get_or_create(&ErrorLabels { operation: error.metric_label() }).inc();
    let delay = ctx.next_backoff(&agent.uid().unwrap_or_default());
    warn!(namespace = agent.namespace(), agent = agent.name_any(), error = %super::error_chain(error), retry_in = ?delay, "Agent sync failed");
    Action::requeue(delay)
}

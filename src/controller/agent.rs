//! The Agent controller: runs the sync of an Agent when the Agent or one of its versions
//! changes (publish, prune, status).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{instrument, warn};

use super::context::Context;
use super::index::{AgentKey, Retry};
use super::lean_meta::LeanMeta;
use super::observe::fetch_versions;
use super::sync::sync_agent;
use crate::api::Agent;
use crate::api::conditions::{HasConditions, IN_SYNC, READY, STALLED};
use crate::error::error_chain;
use crate::metrics::ErrorLabels;
use crate::plan::Observed;
use crate::plan::channel::config_map_name as channel_config_map_name;
use crate::plan::delivery::{ConfigMapState, config_map_name};
use crate::{Error, Result};

/// A periodic re-check, in case an event was missed.
const RESYNC: Duration = Duration::from_secs(600);

/// When an Agent reconcile whose sync was handed to the one running (see `turns`) looks
/// again, in case that sync leaves the Agent waiting for its delivery, which only the Agent
/// controller polls.
const HANDED_RECHECK: Duration = Duration::from_secs(1);

#[instrument(skip_all, fields(namespace = agent.namespace(), agent = agent.name_any()))]
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile(crate::metrics::AGENT);
    let namespace = agent.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = agent.name_any();
    let key = AgentKey::new(&namespace, &name);
    ctx.caches_listed().await;
    // The echo of a recent clean sync's last write: that sync left nothing to do.
    let intact = delivery_intact(&ctx, &agent) && channels_intact(&ctx, &agent, &key);
    let covered = || intact && ctx.index.covers(&agent);
    let synced = if covered() {
        Some(false)
    } else if ctx.turns.running(&key) {
        // Most likely an echo of the sync in progress, which passes once more for it.
        sync_agent(&ctx, &key, covered).await?
    } else if !intact || !up_to_date(&ctx, &agent, &namespace).await? {
        sync_agent(&ctx, &key, || false).await?
    } else {
        Some(false)
    };
    ctx.index.reset_retry(&key, &Retry::Agent);
    timer.succeeded();
    let Some(delivering) = synced else {
        // Handed to the sync that runs: look again once it has likely ended, in case it leaves
        // the Agent waiting for its delivery (a failure is retried by that sync's own caller).
        return Ok(Action::requeue(HANDED_RECHECK));
    };
    if delivering {
        return Ok(Action::requeue(ctx.index.next_retry(&key, Retry::Delivery)));
    }
    ctx.index.reset_retry(&key, &Retry::Delivery);
    Ok(Action::requeue(RESYNC))
}

/// Whether the delivery the Agent's status records still stands: the active version delivered
/// to every listed workload, and the cached ConfigMap, owned by the Agent, holding it as the
/// operator wrote it. A ConfigMap deleted or changed by someone else fails this, and the Agent
/// is synced.
fn delivery_intact(ctx: &Context, agent: &Agent) -> bool {
    let Some(status) = agent.status.as_ref() else { return false };
    let Some(delivery) = status.delivery.as_ref() else { return false };
    let name = config_map_name(agent);
    let listed = agent.spec.delivery.as_ref().map(|d| d.restart.as_slice()).unwrap_or_default();
    let workloads_hold =
        delivery.workloads.len() == listed.len()
            && delivery.workloads.iter().zip(listed).all(|(w, l)| {
                w.kind == l.kind && w.name == l.name && w.rolled_out && w.version == status.active_version
            });
    if delivery.config_map.as_ref() != Some(&name) || delivery.version != status.active_version || !workloads_hold {
        return false;
    }
    let namespace = agent.namespace().unwrap_or_default();
    let reference = ObjectRef::<LeanMeta<ConfigMap>>::new(&name).within(&namespace);
    ctx.config_maps.get(&reference).is_some_and(|c| {
        let state = ConfigMapState::from_meta(&c.metadata);
        state.owned_by(agent)
            && state.held.map(|h| h.version) == status.active_version
            && state.edited_by.is_none()
            && state.replacing.is_none()
    })
}

/// Whether every channel of the Agent, as cached, says it serves its desired version at its
/// generation, delivered (its cached ConfigMap holding it), or is stalled there: a channel
/// changed, a following channel whose Agent has a new active version, or a channel's
/// ConfigMap changed by someone else fails this, and the Agent is synced.
fn channels_intact(ctx: &Context, agent: &Agent, key: &AgentKey) -> bool {
    let active = agent.status.as_ref().and_then(|s| s.active_version);
    ctx.channels.of_agent(key).iter().all(|channel| {
        let Some(status) = channel.status.as_ref() else { return false };
        let desired = channel.spec.version.or(active);
        if status.observed_generation != channel.metadata.generation || status.desired_version != desired {
            return false;
        }
        if status.is_true(STALLED) {
            return true;
        }
        // A version being judged is looked at again until its verdict.
        if status.analysis.as_ref().is_some_and(|a| crate::plan::analysis::judging(a.phase)) {
            return false;
        }
        let reference = ObjectRef::<LeanMeta<ConfigMap>>::new(&channel_config_map_name(channel))
            .within(&channel.namespace().unwrap_or_default());
        // What its status says holds it, by a promotion or rollback, else its desired version.
        let serving = status.override_.as_ref().map(|o| o.version).or(desired);
        let holds = ctx.config_maps.get(&reference).is_some_and(|c| {
            let state = ConfigMapState::from_meta(&c.metadata);
            state.owner_uid == channel.metadata.uid
                && state.held.map(|h| h.version) == serving
                && state.edited_by.is_none()
                && state.replacing.is_none()
        });
        status.is_true(READY) && status.version == serving && holds
    })
}

/// True when nothing can be left for the Agent controller to do: the Agent's generation is
/// handled and its versions are the ones its status records. Pending rollbacks are left to the
/// AgentRollback controller, which is triggered by each of them. Most Agent reconciles are
/// echoes of the controller's own writes, and a restart reconciles every Agent: this check
/// takes no lock and, when the versions watch's index confirms the digest, makes no request,
/// where a sync would wait its turn and read everything again.
async fn up_to_date(ctx: &Context, agent: &Agent, namespace: &str) -> Result<bool> {
    let Some(status) = agent.status.as_ref() else { return Ok(false) };
    let Some(recorded) = status.versions_digest.as_ref() else { return Ok(false) };
    let key = AgentKey::new(namespace, &agent.name_any());
    let uid = agent.metadata.uid.as_deref().unwrap_or_default();
    if !ctx.index.confirms(&key, uid, recorded) && !listed_versions_match(ctx, agent, recorded).await? {
        // Versions changed behind the controller's back (or it is mid-way): the next sync
        // reads them again.
        ctx.index.unsettle(&key);
        return Ok(false);
    }
    // A status written while work was in flight still says so: the sync must replace it.
    let ready = status
        .condition(READY)
        .is_some_and(|c| c.status == "True" && c.observed_generation == agent.metadata.generation);
    // A status written before `InSync` existed gets it.
    let in_sync_known = status.condition(IN_SYNC).is_some();
    Ok(ready && in_sync_known && status.observed_generation == agent.metadata.generation)
}

/// The check the index stands in for: the Agent's versions, listed from the API server's
/// watch cache, are all its own and have the recorded digest. Asked when the index does not
/// confirm: versions from an older build, or an index that lags the API server's cache.
async fn listed_versions_match(ctx: &Context, agent: &Agent, recorded: &str) -> Result<bool> {
    let (namespace, name) = (agent.namespace().unwrap_or_default(), agent.name_any());
    let versions = fetch_versions(ctx, &namespace, &name, true).await?;
    let observed = Observed::new(namespace, name, Some(agent.clone()), versions, Vec::new());
    Ok(observed.foreign_versions.is_empty() && observed.versions_digest() == recorded)
}

pub fn error_policy(agent: Arc<Agent>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.get_or_create(&ErrorLabels { operation: error.metric_label() }).inc();
    let key = AgentKey::new(&agent.namespace().unwrap_or_default(), &agent.name_any());
    let delay = ctx.index.next_retry(&key, Retry::Agent);
    warn!(namespace = agent.namespace(), agent = agent.name_any(), error = %error_chain(error), retry_in = ?delay, "Agent sync failed");
    Action::requeue(delay)
}

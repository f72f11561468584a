//! Observe: every read of one sync. A sync that follows a clean one of this process starts from
//! the state that one left ([`resume_from`]), with no reads. Otherwise the Agent is read from
//! the API server (a stale Agent could republish a generation a rollback replaced). Its
//! versions come from the API server's watch cache when that list matches the digest the
//! Agent's status recorded and this process's last sync of the Agent ended cleanly; otherwise
//! (after a restart, an error, a write that met a newer state, or a change made by someone
//! else) they are read with a consistent list, which waits for the cache to catch up with etcd
//! and so costs tens of milliseconds after a write. Rollbacks come from the watch cache: a
//! stale one is harmless, because every rollback status write is conditional on the
//! resourceVersion it was read at, and a Running rollback is read live before it is resumed.

use std::sync::Arc;

use kube::Api;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use super::index::AgentKey;
use crate::api::keys::AGENT_LABEL;
use crate::api::{Agent, AgentRollback, AgentVersion};
use crate::plan::{Observed, revision};
use crate::{Error, Result};

/// How far the versions may come from the watch cache.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The cached list, if it matches the Agent's recorded digest.
    CacheIfConfirmed,
    /// A consistent list.
    Consistent,
}

pub async fn observe(ctx: &Context, namespace: &str, name: &str, freshness: Freshness) -> Result<Observed> {
    let agents: Api<Agent> = Api::namespaced(ctx.client.clone(), namespace);
    let get_agent = async {
        agents.get_opt(name).await.map_err(|source| match source {
            // Reported on the Agent by the sync (see `sync::report_unreadable`), never retried
            // as if it were the API server's fault.
            kube::Error::SerdeError(error) => {
                Error::UnreadableAgent { namespace: namespace.into(), name: name.into(), why: error.to_string() }
            }
            source => Error::GetAgent { namespace: namespace.into(), name: name.into(), source },
        })
    };
    // Both reads at once: the versions are checked against the Agent afterwards.
    let from_cache = freshness == Freshness::CacheIfConfirmed;
    let (agent, versions) = tokio::try_join!(get_agent, fetch_versions(ctx, namespace, name, from_cache))?;
    let rollbacks = cached_rollbacks(ctx, namespace, name);
    let recorded = agent.as_ref().and_then(|a| a.status.as_ref()).and_then(|s| s.versions_digest.clone());
    let observed = Observed::new(namespace.into(), name.into(), agent, versions, rollbacks);
    let confirmed = observed.foreign_versions.is_empty() && recorded == Some(observed.versions_digest());
    if !from_cache || confirmed {
        return Ok(observed);
    }
    let versions = fetch_versions(ctx, namespace, name, false).await?;
    Ok(Observed::new(namespace.into(), name.into(), observed.agent, versions, observed.rollbacks))
}

pub async fn fetch_versions(ctx: &Context, namespace: &str, name: &str, from_cache: bool) -> Result<Vec<AgentVersion>> {
    let api: Api<AgentVersion> = Api::namespaced(ctx.client.clone(), namespace);
    let mut params = ListParams::default().labels(&format!("{AGENT_LABEL}={name}"));
    if from_cache {
        // resourceVersion=0: whatever the API server's watch cache holds, without waiting.
        params = params.match_any();
    }
    let list = api.list(&params).await.map_err(|source| Error::ListVersions {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    Ok(list.items)
}

/// The state the Agent's last clean sync left, brought up to date with the watch caches: each
/// rollback as the newer of the two (a cache can lag behind the sync's own writes, and the sync
/// knows nothing of later changes by others), rollbacks new to the cache added, those gone from
/// it dropped. `None` when the cache has no Agent, another one of that name, or a newer one:
/// the cache keeps no definition, so a changed Agent is read live.
pub fn resume_from(ctx: &Context, state: &Observed) -> Option<Observed> {
    let reference = ObjectRef::<Agent>::new(&state.agent_name).within(&state.namespace);
    let cached = ctx.agents.get(&reference)?;
    resume(state, &cached, ctx.rollbacks.of_agent(&AgentKey::new(&state.namespace, &state.agent_name)))
}

/// [`resume_from`], given what the caches hold of the Agent and its rollbacks.
pub fn resume(state: &Observed, cached: &Agent, cached_rollbacks: Vec<Arc<AgentRollback>>) -> Option<Observed> {
    let left = state.agent.as_ref().filter(|left| left.metadata.uid == cached.metadata.uid)?;
    if revision(left) < revision(cached) {
        return None;
    }
    let agent = left.clone();
    let rollbacks = cached_rollbacks
        .into_iter()
        .map(|cached| match state.rollbacks.iter().find(|r| r.metadata.uid == cached.metadata.uid) {
            Some(left) if revision(left) >= revision(&*cached) => left.clone(),
            _ => (*cached).clone(),
        })
        .collect();
    let versions = state.versions.iter().chain(&state.foreign_versions).cloned().collect();
    let mut observed =
        Observed::new(state.namespace.clone(), state.agent_name.clone(), Some(agent), versions, rollbacks);
    // Each channel and promotion is taken as the newer of this and its cache's (see
    // `delivery::observe`).
    observed.channels = state.channels.clone();
    observed.promotions = state.promotions.clone();
    Some(observed)
}

fn cached_rollbacks(ctx: &Context, namespace: &str, name: &str) -> Vec<AgentRollback> {
    ctx.rollbacks.of_agent(&AgentKey::new(namespace, name)).into_iter().map(|r| (*r).clone()).collect()
}

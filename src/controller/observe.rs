//! Observe: every read of one sync. A sync that follows a clean one of this process starts from
//! the state that one left ([`resume_from`]), with no reads. Otherwise the Agent is read from
//! the API server (a stale Agent could republish a generation a rollback replaced), and its
//! versions one by one, by the names the versions watch's index knows ([`Freshness::Indexed`]):
//! the API server answers a list by label by scanning every version in the namespace, which is
//! quadratic over a first start of thousands of Agents. Each read is consistent; the set of
//! names is the watch's, as fresh as a list made a moment earlier, and never lacks a version
//! this process wrote (see `AgentIndex::version_names`). A version made meanwhile by someone
//! else wakes another sync, as after a list; one the names miss makes a create meet 409, and
//! the sync reads again with a consistent list ([`Freshness::Consistent`]), as it does after
//! any write that met a newer state. Rollbacks come from the watch cache: a stale one is
//! harmless, because every rollback status write is conditional on the resourceVersion it was
//! read at, and a Running rollback is read live before it is resumed.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::context::Context;
use super::index::AgentKey;
use crate::api::keys::AGENT_LABEL;
use crate::api::{Agent, AgentRollback, AgentVersion};
use crate::plan::{Observed, Resumed, revision};
use crate::{Error, Result};

/// Reads one sync makes at once: an Agent's versions need not wait for each other, and the
/// workers' count bounds the total.
const READS_IN_FLIGHT: usize = 10;

/// Past this many versions an Agent's versions are listed, not read one by one: a list of the
/// whole namespace then costs less than that many requests. (The default history keeps 10.)
const MAX_READS: usize = 100;

/// How a sync reads the Agent's versions.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Each version the index names, by name; a consistent list when it cannot name them.
    Indexed,
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
    let names = match freshness {
        Freshness::Indexed => ctx.index.version_names(&AgentKey::new(namespace, name)).filter(|n| n.len() <= MAX_READS),
        Freshness::Consistent => None,
    };
    let versions = async {
        match names {
            Some(names) => read_versions(ctx, namespace, name, names).await,
            None => fetch_versions(ctx, namespace, name, false).await,
        }
    };
    let (agent, versions) = tokio::try_join!(get_agent, versions)?;
    let rollbacks = cached_rollbacks(ctx, namespace, name);
    Ok(Observed::new(namespace.into(), name.into(), agent, versions, rollbacks))
}

/// The versions of these names that are still labelled with the Agent `name` (what a list by
/// label would return of them), each read consistently.
async fn read_versions(ctx: &Context, namespace: &str, name: &str, names: Vec<String>) -> Result<Vec<AgentVersion>> {
    let failed = |source| Error::ListVersions { namespace: namespace.into(), name: name.into(), source };
    let versions = read_each(&Api::namespaced(ctx.client.clone(), namespace), names).await.map_err(failed)?;
    let labelled = |v: &AgentVersion| v.labels().get(AGENT_LABEL).map(String::as_str) == Some(name);
    Ok(versions.into_iter().filter(labelled).collect())
}

/// Every rollback of the Agent `name`, read consistently: one by one, by the names the
/// rollbacks' index knows, where they are few; else a list, which the API server answers by
/// scanning every rollback in the namespace. Asked when the Agent's status is lost, to rebuild
/// it from the rollbacks' records: one the names miss was created a moment ago, has run
/// nothing yet, and has a reconcile of its own to come.
pub async fn read_rollbacks(ctx: &Context, namespace: &str, name: &str) -> Result<Vec<AgentRollback>> {
    let failed = |source| Error::ListRollbacks { namespace: namespace.into(), name: name.into(), source };
    let api: Api<AgentRollback> = Api::namespaced(ctx.client.clone(), namespace);
    let names = ctx.rollbacks.names(&AgentKey::new(namespace, name)).filter(|n| n.len() <= MAX_READS);
    let rollbacks = match names {
        Some(names) => read_each(&api, names).await.map_err(failed)?,
        None => {
            let params = ListParams::default().fields(&format!("spec.agentName={name}"));
            api.list(&params).await.map_err(failed)?.items
        }
    };
    Ok(rollbacks.into_iter().filter(|r| r.spec.agent_name == name).collect())
}

/// The objects of these names that exist, each read consistently, a few at once.
async fn read_each<K>(api: &Api<K>, names: Vec<String>) -> kube::Result<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let read = |name: String| {
        let api = api.clone();
        async move { api.get_opt(&name).await }
    };
    let objects: Vec<Option<K>> =
        futures::stream::iter(names).map(read).buffer_unordered(READS_IN_FLIGHT).try_collect().await?;
    Ok(objects.into_iter().flatten().collect())
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
pub fn resume_from(ctx: &Context, state: Arc<Observed>) -> Option<Observed> {
    let reference = ObjectRef::<Agent>::new(&state.agent_name).within(&state.namespace);
    let cached = ctx.agents.get(&reference)?;
    let rollbacks = ctx.rollbacks.of_agent(&AgentKey::new(&state.namespace, &state.agent_name));
    // The index handed its only copy over (see `AgentIndex::take`): taken whole, not copied.
    resume(Arc::unwrap_or_clone(state), &cached, rollbacks)
}

/// [`resume_from`], given what the caches hold of the Agent and its rollbacks.
pub fn resume(mut state: Observed, cached: &Agent, cached_rollbacks: Vec<Arc<AgentRollback>>) -> Option<Observed> {
    let left = state.agent.take().filter(|left| left.metadata.uid == cached.metadata.uid)?;
    if revision(&left) < revision(cached) {
        return None;
    }
    // By uid: a long-lived Agent has thousands of finished rollbacks, taken over, not copied.
    let mut lefts: HashMap<String, AgentRollback> =
        std::mem::take(&mut state.rollbacks).into_iter().filter_map(|r| Some((r.metadata.uid.clone()?, r))).collect();
    let rollbacks = cached_rollbacks
        .into_iter()
        .map(|cached| match cached.metadata.uid.as_deref().and_then(|uid| lefts.remove(uid)) {
            Some(left) if revision(&left) >= revision(&*cached) => Resumed::Kept(left),
            _ => Resumed::Read(Arc::unwrap_or_clone(cached)),
        })
        .collect();
    let mut observed = Observed::resumed(&mut state, left, rollbacks);
    // Each channel and promotion is taken as the newer of this and its cache's (see
    // `delivery::observe`).
    observed.channels = std::mem::take(&mut state.channels);
    observed.promotions = std::mem::take(&mut state.promotions);
    Some(observed)
}

fn cached_rollbacks(ctx: &Context, namespace: &str, name: &str) -> Vec<AgentRollback> {
    ctx.rollbacks.of_agent(&AgentKey::new(namespace, name)).into_iter().map(|r| (*r).clone()).collect()
}

//! Observe: every read of one sync. The Agent and its versions are read from the API server
//! (a stale Agent could republish a generation a rollback replaced; a stale version list could
//! restore a pruned version). Rollbacks come from the watch cache: a stale one is harmless,
//! because every rollback status write is conditional on the resourceVersion it was read at.

use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Context;
use crate::api::keys::AGENT_LABEL;
use crate::api::{Agent, AgentRollback, AgentVersion};
use crate::plan::Observed;
use crate::{Error, Result};

pub async fn observe(ctx: &Context, namespace: &str, name: &str) -> Result<Observed> {
    let agents: Api<Agent> = Api::namespaced(ctx.client.clone(), namespace);
    let agent = agents.get_opt(name).await.map_err(|source| Error::GetAgent {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    let versions = fetch_versions(ctx, namespace, name).await?;
    let rollbacks = cached_rollbacks(ctx, namespace, name);
    Ok(Observed::new(namespace.into(), name.into(), agent, versions, rollbacks))
}

async fn fetch_versions(ctx: &Context, namespace: &str, name: &str) -> Result<Vec<AgentVersion>> {
    let api: Api<AgentVersion> = Api::namespaced(ctx.client.clone(), namespace);
    let params = ListParams::default().labels(&format!("{AGENT_LABEL}={name}"));
    let list = api.list(&params).await.map_err(|source| Error::ListVersions {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    Ok(list.items)
}

fn cached_rollbacks(ctx: &Context, namespace: &str, name: &str) -> Vec<AgentRollback> {
    ctx.rollbacks
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace) && r.spec.agent_name == name)
        .map(|r| (*r).clone())
        .collect()
}

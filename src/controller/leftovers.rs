//! Versions of a deleted Agent that a channel kept: the garbage collector deletes them with
//! their Agent (owner references), and they wait on the operator's `agentops.dev/in-use`
//! finalizer. The Agent controller runs only for Agents that exist, so a version's watch event
//! runs the sync of its gone Agent here; the sync reads the Agent live, finds none, and
//! releases the finalizer (see `plan::protection`).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::warn;

use super::context::Context;
use super::index::AgentKey;
use super::lean_meta::LeanMeta;
use super::sync::sync_agent;
use crate::api::keys::{AGENT_LABEL, IN_USE_FINALIZER};
use crate::api::{Agent, AgentVersion};
use crate::error::error_chain;

/// Tries of one release before it waits for the version's next event (or the next relist).
const TRIES: u32 = 6;

/// Runs the sync of the Agent of `version` when the version is being deleted, carries the
/// operator's finalizer, and its Agent is not in the cache.
pub fn release_if_orphaned(version: &LeanMeta<AgentVersion>, ctx: &Arc<Context>) {
    let meta = &version.metadata;
    let waits = meta.deletion_timestamp.is_some()
        && meta.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == IN_USE_FINALIZER));
    let (Some(namespace), Some(agent)) =
        (meta.namespace.clone(), meta.labels.as_ref().and_then(|l| l.get(AGENT_LABEL)))
    else {
        return;
    };
    // An Agent in the cache has its own controller, which deletes what is not its own.
    if !waits || ctx.agents.get(&ObjectRef::<Agent>::new(agent).within(&namespace)).is_some() {
        return;
    }
    let (ctx, key, name) = (ctx.clone(), AgentKey::new(&namespace, agent), version.name_any());
    tokio::spawn(async move {
        // Counted among the early starts, so that shutdown waits for it and starts no more.
        let Ok(_permit) = ctx.early_starts.clone().acquire_owned().await else { return };
        let mut delay = Duration::from_secs(1);
        for _ in 0..TRIES {
            match sync_agent(&ctx, &key, || false).await {
                Ok(_) => return,
                Err(error) => {
                    warn!(namespace = key.namespace, version = name, error = %error_chain(&error), retry_in = ?delay, "Releasing a deleted Agent's version failed");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    });
}

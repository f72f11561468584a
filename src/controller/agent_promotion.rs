//! The AgentPromotion controller: a promotion that is not yet terminal runs the sync of its
//! channel's Agent, which starts or finishes it in turn with that channel's other promotions.
//! A promotion whose channel does not exist has no Agent to sync: it fails here, with
//! `ChannelNotFound`, once the channel is not found on the API server either (the channel's
//! watch may not show one created just before).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{instrument, warn};

use super::apply::apply;
use super::context::Context;
use super::index::AgentKey;
use super::sync::sync_agent;
use crate::api::{AgentChannel, AgentPromotion, RollbackPhase};
use crate::error::error_chain;
use crate::metrics::ErrorLabels;
use crate::plan::moves::{Promotions, channel_not_found};
use crate::plan::{Observed, Step};
use crate::{Error, Result};

#[instrument(skip_all, fields(namespace = promotion.namespace(), promotion = promotion.name_any()))]
pub async fn reconcile(promotion: Arc<AgentPromotion>, ctx: Arc<Context>) -> Result<Action> {
    // Terminal phases never change again.
    if promotion.status.as_ref().and_then(|s| s.phase).is_some_and(RollbackPhase::is_terminal) {
        return Ok(Action::await_change());
    }
    let timer = ctx.metrics.reconcile(crate::metrics::AGENT_PROMOTION);
    let namespace = promotion.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    ctx.caches_listed().await;
    let channel = &promotion.spec.channel;
    let cached = ctx.channels.get(&ObjectRef::new(channel).within(&namespace)).map(|c| c.spec.agent_name.clone());
    let agent = match cached {
        Some(agent) => Some(agent),
        None => {
            let api: Api<AgentChannel> = Api::namespaced(ctx.client.clone(), &namespace);
            let read = api.get_opt(channel).await.map_err(|source| Error::GetChannel {
                namespace: namespace.clone(),
                name: channel.clone(),
                source,
            })?;
            read.map(|c| c.spec.agent_name)
        }
    };
    match agent {
        Some(agent) => {
            sync_agent(&ctx, &AgentKey::new(&namespace, &agent), || false).await?;
        }
        None => {
            let mut observed = Observed::new(namespace.clone(), String::new(), None, Vec::new(), Vec::new());
            observed.promotions = Promotions::new(vec![(*promotion).clone()]);
            let write = channel_not_found(&observed, &promotion, &Time(Timestamp::now()));
            apply(&ctx, &observed, Step::One(write)).await?;
        }
    }
    timer.succeeded();
    Ok(Action::await_change())
}

/// A failed reconcile is tried again after a while. The sync it ran has retries of its own,
/// through the Agent and its channels' watch; this one is for what fails before it.
const RETRY: Duration = Duration::from_secs(10);

pub fn error_policy(promotion: Arc<AgentPromotion>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.get_or_create(&ErrorLabels { operation: error.metric_label() }).inc();
    let delay = RETRY;
    warn!(namespace = promotion.namespace(), promotion = promotion.name_any(), error = %error_chain(error), retry_in = ?delay, "AgentPromotion sync failed");
    Action::requeue(delay)
}

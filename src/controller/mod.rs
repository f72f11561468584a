//! Kubernetes I/O: two controllers (Agent, AgentRollback) that both drive one per-Agent sync
//! loop ([`sync::sync_agent`]): observe → plan → apply, until the plan is empty.
//!
//! The Agent controller runs it when an Agent changes, or one of its versions is changed by
//! someone else (the operator's own version writes are recognised, [`index::settled`]). The
//! AgentRollback controller runs it for the Agent a new rollback names, from its own store,
//! which is why a rollback is never missed by a store that lags; a new rollback's sync is also
//! started straight from the watch, ahead of the controller's queue. One sync of an Agent runs
//! at a time, and one asked for meanwhile is a further pass of it, so one Agent's work is
//! serialized and different Agents run in parallel. A sync starts from the state the Agent's
//! last clean sync left, when it can. What the watches tell of each Agent, and what its syncs
//! left, is kept in one index ([`index`]).

pub mod agent;
pub mod agent_promotion;
pub mod agent_rollback;
pub mod apply;
pub mod context;
pub mod delivery;
pub mod evaluation;
pub mod events;
pub mod index;
pub mod lean_agent;
pub mod lean_meta;
pub mod leftovers;
pub mod observe;
pub mod prometheus;
pub mod sync;
pub mod turns;
pub mod watches;

pub use context::{Context, Settings, Stores};

use std::future::Future;
use std::sync::Arc;

use futures::future::Shared;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, warn};

use crate::api::keys::AGENT_LABEL;
use crate::api::{Agent, AgentChannel, AgentPromotion, AgentRollback, AgentVersion};
use crate::client::scoped;
use crate::error::error_chain;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::plan::phase_of;
use context::CONCURRENCY;
use index::{AgentIndex, AgentKey, Gauges, Kind};
use lean_agent::LeanAgent;
use lean_meta::LeanMeta;
use watches::{WatchBackoff, slim_agent, slim_channel, slim_promotion, slim_rollback, watch_config};

/// Runs both controllers, over every namespace or over each of `namespaces`, until `shutdown`
/// resolves; work in flight is finished first. Ready once every namespace's caches have their
/// first full list.
///
/// A list of namespaces runs one set of watches and controllers per namespace, each as when
/// the operator watches one namespace: a watch lists one namespace or all, and a relist of one
/// namespace must not replace what another's watch keeps. Their gauges add up; each namespace
/// has its own workers, a few namespaces being what a list is for.
pub async fn run<F>(
    client: Client,
    namespaces: &[String],
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shared<F>,
) -> crate::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    if namespaces.is_empty() {
        return run_one(client, settings, metrics, move || health.set_ready(), shutdown).await;
    }
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(namespaces.len()));
    let runs = namespaces.iter().map(|namespace| {
        let settings = Settings { namespace: Some(namespace.clone()), ..settings.clone() };
        let (health, waiting) = (health.clone(), waiting.clone());
        let ready = move || {
            if waiting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                health.set_ready();
            }
        };
        run_one(client.clone(), settings, metrics.clone(), ready, shutdown.clone())
    });
    futures::future::try_join_all(runs).await?;
    Ok(())
}

/// Runs both controllers over `settings.namespace` (all when `None`); `ready` is called once
/// every cache has its first full list.
async fn run_one<F>(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    ready: impl FnOnce(),
    shutdown: Shared<F>,
) -> crate::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let watching = watch_config(&client, settings.namespace.as_deref()).await;
    // Decoded without their definitions (see `lean_agent`).
    let agents: Api<LeanAgent> = scoped(&client, settings.namespace.as_deref());
    let agent_names: Api<LeanMeta<Agent>> = scoped(&client, settings.namespace.as_deref());
    // Only the versions' metadata: what wakes an Agent needs no snapshot, and at 10,000 Agents
    // with kilobytes of instructions the full objects' list after a restart is most of a GiB.
    let versions: Api<LeanMeta<AgentVersion>> = scoped(&client, settings.namespace.as_deref());
    let rollbacks: Api<AgentRollback> = scoped(&client, settings.namespace.as_deref());
    let channels: Api<AgentChannel> = scoped(&client, settings.namespace.as_deref());
    let promotions: Api<AgentPromotion> = scoped(&client, settings.namespace.as_deref());

    // Api<LeanMeta<_>> makes metadata-only requests (see `lean_meta`).
    let config_maps: Api<LeanMeta<ConfigMap>> = scoped(&client, settings.namespace.as_deref());

    let gauges = Gauges { tracked: metrics.tracked_agents.clone(), out_of_sync: metrics.agents_out_of_sync.clone() };
    let index = Arc::new(AgentIndex::new(!settings.simple_hot_path, gauges));
    let (rollback_store, rollback_writer) = reflector::store();
    let (agent_store, agent_writer) = reflector::store();
    let agent_watch = watcher(agents, watching.clone()).map_ok(LeanAgent::event).modify(slim_agent);
    let agent_events = reflector(agent_writer, agent_watch).inspect_ok(indexed(&index)).applied_objects();
    let agent_controller = Controller::for_stream(agent_events, agent_store.clone());
    // Only the ConfigMaps the operator labels, and only their metadata: what delivery needs
    // to know (owner, the version they hold) without holding every snapshot in memory.
    let (config_map_store, config_map_writer) = reflector::store();
    let config_map_events =
        reflector(config_map_writer, watcher(config_maps, watching.clone().labels(AGENT_LABEL))).touched_objects();
    let (channel_store, channel_writer) = reflector::store();
    let channel_events = reflector(channel_writer, watcher(channels, watching.clone()).modify(slim_channel))
        .inspect_ok(indexed(&index))
        .touched_objects();
    let (promotion_store, promotion_writer) = reflector::store();
    let promotion_events =
        reflector(promotion_writer, watcher(promotions, watching.clone()).modify(slim_promotion)).applied_objects();
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        index.clone(),
        Stores {
            rollbacks: rollback_store.clone(),
            agents: agent_store.clone(),
            channels: channel_store.clone(),
            promotions: promotion_store.clone(),
            config_maps: config_map_store.clone(),
        },
        metrics,
    ));
    let rollback_controller = run_rollback_controller(
        Controller::for_stream(rollback_events(rollbacks, rollback_writer, &watching, &ctx), rollback_store.clone()),
        agent_names,
        &watching,
        &ctx,
        shutdown.clone(),
    );
    let orphans = ctx.clone();
    let version_events = watcher(versions, watching.clone())
        .inspect_ok(indexed(&index))
        .touched_objects()
        .inspect_ok(move |version| leftovers::release_if_orphaned(version, &orphans));
    let agent_controller = run_agent_controller(
        agent_controller,
        AgentTriggers { versions: version_events, config_maps: config_map_events, channels: channel_events },
        &ctx,
        shutdown.clone(),
    );

    let promotion_controller = Controller::for_stream(promotion_events, promotion_store.clone())
        .with_config(controller_config())
        .trigger_backoff(WatchBackoff::default())
        .graceful_shutdown_on(shutdown)
        .run(agent_promotion::reconcile, agent_promotion::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(promotion = %object, "Reconciled AgentPromotion"),
                Err(error) => log_controller_error("AgentPromotion", &error),
            }
        });

    let readiness = async {
        // Ready once every cache has its first full list.
        if rollback_store.wait_until_ready().await.is_ok()
            && agent_store.wait_until_ready().await.is_ok()
            && config_map_store.wait_until_ready().await.is_ok()
            && channel_store.wait_until_ready().await.is_ok()
            && promotion_store.wait_until_ready().await.is_ok()
        {
            ctx.index.listed(Kind::Version).await;
            ctx.set_listed();
            ready();
        }
        futures::future::pending::<()>().await
    };
    tokio::select! {
        _ = futures::future::join3(rollback_controller, agent_controller, promotion_controller) => {}
        _ = readiness => {}
    }
    ctx.finish_early_starts().await;
    ctx.events.flush().await;
    Ok(())
}

/// Feeds a watch's events to the index.
fn indexed<K: index::Indexed>(index: &Arc<AgentIndex>) -> impl Fn(&watcher::Event<K>) + Send + 'static {
    let index = index.clone();
    move |event| index.apply(event)
}

/// The rollback watch as the controller would build it, with the index fed each Agent's
/// rollbacks beside its cache, and an early start for each new rollback (see
/// `agent_rollback::start_early`).
fn rollback_events(
    rollbacks: Api<AgentRollback>,
    writer: reflector::store::Writer<AgentRollback>,
    watching: &watcher::Config,
    ctx: &Arc<Context>,
) -> impl Stream<Item = Result<AgentRollback, watcher::Error>> + Send + 'static {
    let early = ctx.clone();
    reflector(writer, watcher(rollbacks, watching.clone()).modify(slim_rollback))
        .inspect_ok(indexed(&ctx.index))
        .applied_objects()
        .inspect_ok(move |rollback| {
            if !early.settings.without_early_start {
                agent_rollback::start_early(rollback, &early);
            }
        })
}

/// The AgentRollback controller. An Agent's deletion (or any change) wakes the rollbacks still
/// waiting on it, so those of a deleted Agent end as AgentNotFound.
fn run_rollback_controller<F>(
    controller: Controller<AgentRollback>,
    // Metadata only: which Agent changed is all the mapping needs.
    agents: Api<LeanMeta<Agent>>,
    watching: &watcher::Config,
    ctx: &Arc<Context>,
    shutdown: Shared<F>,
) -> impl Future<Output = ()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (waiting, index) = (ctx.rollbacks.clone(), ctx.index.clone());
    controller
        .reconcile_on(ctx.early_start_retries())
        .with_config(controller_config())
        .trigger_backoff(WatchBackoff::default())
        // A change to the Agent (its deletion above all) wakes the first of its unfinished
        // rollbacks: that one's sync runs the Agent's whole queue. Waking each of them woke
        // a queue of thousands on every status write of the Agent, quadratic in the queue.
        // One a sync has finished, though the cache has yet to show it, would run nothing.
        .watches(agents, watching.clone(), move |agent: LeanMeta<Agent>| {
            waiting
                .of_agent(&AgentKey::new(&agent.namespace().unwrap_or_default(), &agent.name_any()))
                .into_iter()
                .filter(|r| !phase_of(r).is_some_and(|p| p.is_terminal()) && !index.handled(r))
                .min_by_key(|r| crate::plan::rollback::queue_key(r))
                .map(|r| ObjectRef::from_obj(&*r))
        })
        .graceful_shutdown_on(shutdown)
        .run(agent_rollback::reconcile, agent_rollback::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(rollback = %object, "Reconciled AgentRollback"),
                Err(error) => log_controller_error("AgentRollback", &error),
            }
        })
}

/// What wakes an Agent besides the Agent itself, each stream past its cache and the index.
struct AgentTriggers<V, C, H> {
    versions: V,
    config_maps: C,
    channels: H,
}

/// The Agent controller. A change to a version wakes its Agent, unless it is the echo of this
/// process's own write; so does a change to its delivery ConfigMap or a channel's, or to one
/// of its channels.
fn run_agent_controller<F, V, C, H>(
    controller: Controller<Agent>,
    triggers: AgentTriggers<V, C, H>,
    ctx: &Arc<Context>,
    shutdown: Shared<F>,
) -> impl Future<Output = ()>
where
    F: Future<Output = ()> + Send + 'static,
    V: Stream<Item = Result<LeanMeta<AgentVersion>, watcher::Error>> + Send + 'static,
    C: Stream<Item = Result<LeanMeta<ConfigMap>, watcher::Error>> + Send + 'static,
    H: Stream<Item = Result<AgentChannel, watcher::Error>> + Send + 'static,
{
    let index = ctx.index.clone();
    controller
        .with_config(controller_config())
        .trigger_backoff(WatchBackoff::default())
        .watches_stream(triggers.versions, move |version: LeanMeta<AgentVersion>| index.wakes(&version))
        // A delivery ConfigMap changed or deleted by someone else wakes its Agent; the echoes of
        // the operator's own writes find the Agent's delivery intact and return at once. A
        // channel's ConfigMap names its Agent in its label.
        .watches_stream(triggers.config_maps, |config_map: LeanMeta<ConfigMap>| {
            let namespace = config_map.namespace()?;
            let owner = config_map.owner_references().iter().find(|o| o.controller == Some(true))?;
            let agent = match owner.kind.as_str() {
                "Agent" => owner.name.clone(),
                "AgentChannel" => config_map.labels().get(AGENT_LABEL)?.clone(),
                _ => return None,
            };
            Some(ObjectRef::<Agent>::new(&agent).within(&namespace))
        })
        .watches_stream(triggers.channels, |channel: AgentChannel| {
            Some(ObjectRef::<Agent>::new(&channel.spec.agent_name).within(&channel.namespace()?))
        })
        .graceful_shutdown_on(shutdown)
        .run(agent::reconcile, agent::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(agent = %object, "Reconciled Agent"),
                Err(error) => log_controller_error("Agent", &error),
            }
        })
}

fn controller_config() -> controller::Config {
    controller::Config::default().concurrency(CONCURRENCY)
}

fn log_controller_error(kind: &str, error: &controller::Error<crate::Error, watcher::Error>) {
    match error {
        // A trigger for an object that no longer exists is normal (a rollback naming a deleted
        // Agent); a failed reconcile was already logged by the error policy.
        controller::Error::ObjectNotFound(_) | controller::Error::ReconcilerFailed(..) => {
            debug!(kind, error = %error_chain(error), "Reconcile skipped or failed")
        }
        controller::Error::QueueError(_) | controller::Error::RunnerError(_) => {
            warn!(kind, error = %error_chain(error), "Controller stream failed")
        }
    }
}

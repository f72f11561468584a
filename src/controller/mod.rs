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
pub mod agent_rollback;
pub mod apply;
pub mod context;
pub mod delivery;
pub mod events;
pub mod index;
pub mod lean_agent;
pub mod lean_meta;
pub mod observe;
pub mod sync;
pub mod turns;

pub use context::{Context, Settings};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Shared;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{WatchEvent, WatchParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, warn};

use crate::api::keys::{AGENT_LABEL, CHANGE_CAUSE_ANNOTATION, CHANGED_BY_ANNOTATION, ROLLBACK_RECORD_ANNOTATION};
use crate::api::{Agent, AgentRollback, AgentVersion};
use crate::client::scoped;
use crate::error::error_chain;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::plan::phase_of;
use index::{AgentIndex, AgentKey, Kind};
use lean_agent::LeanAgent;
use lean_meta::LeanMeta;

/// Runs both controllers until `shutdown` resolves; work in flight is finished first.
pub async fn run<F>(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
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

    // Api<LeanMeta<_>> makes metadata-only requests (see `lean_meta`).
    let config_maps: Api<LeanMeta<ConfigMap>> = scoped(&client, settings.namespace.as_deref());

    let index = Arc::new(AgentIndex::new(!settings.simple_hot_path));
    let (rollback_store, rollback_writer) = reflector::store();
    let (agent_store, agent_writer) = reflector::store();
    let agent_watch = watcher(agents, watching.clone()).map_ok(LeanAgent::event).modify(slim_agent);
    let agent_events = reflector(agent_writer, agent_watch).inspect_ok(indexed(&index, &metrics)).applied_objects();
    let agent_controller = Controller::for_stream(agent_events, agent_store.clone());
    // Only the ConfigMaps the operator labels, and only their metadata: what delivery needs
    // to know (owner, the version they hold) without holding every snapshot in memory.
    let (config_map_store, config_map_writer) = reflector::store();
    let config_map_events =
        reflector(config_map_writer, watcher(config_maps, watching.clone().labels(AGENT_LABEL))).touched_objects();
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        index.clone(),
        rollback_store.clone(),
        agent_store.clone(),
        config_map_store.clone(),
        metrics,
    ));
    let rollback_controller = run_rollback_controller(
        Controller::for_stream(rollback_events(rollbacks, rollback_writer, &watching, &ctx), rollback_store.clone()),
        agent_names,
        &watching,
        &ctx,
        shutdown.clone(),
    );
    let version_events =
        watcher(versions, watching.clone()).inspect_ok(indexed(&index, &ctx.metrics)).touched_objects();
    let agent_controller = run_agent_controller(agent_controller, version_events, config_map_events, &ctx, shutdown);

    let readiness = async {
        // Ready once every cache has its first full list.
        if rollback_store.wait_until_ready().await.is_ok()
            && agent_store.wait_until_ready().await.is_ok()
            && config_map_store.wait_until_ready().await.is_ok()
        {
            ctx.index.listed(Kind::Version).await;
            ctx.set_listed();
            health.set_ready();
        }
        futures::future::pending::<()>().await
    };
    tokio::select! {
        _ = futures::future::join(rollback_controller, agent_controller) => {}
        _ = readiness => {}
    }
    ctx.finish_early_starts().await;
    ctx.events.flush().await;
    Ok(())
}

/// Feeds a watch's events to the index, and its gauges of what it holds.
fn indexed<K: index::Indexed>(
    index: &Arc<AgentIndex>,
    metrics: &Arc<Metrics>,
) -> impl Fn(&watcher::Event<K>) + Send + 'static {
    let (index, metrics) = (index.clone(), metrics.clone());
    move |event| {
        index.apply(event);
        metrics.tracked_agents.set(i64::try_from(index.tracked()).unwrap_or(i64::MAX));
        metrics.agents_out_of_sync.set(i64::try_from(index.out_of_sync()).unwrap_or(i64::MAX));
    }
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
        .inspect_ok(indexed(&ctx.index, &ctx.metrics))
        .applied_objects()
        .inspect_ok(move |rollback| agent_rollback::start_early(rollback, &early))
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
    let waiting = ctx.rollbacks.clone();
    controller
        .reconcile_on(ctx.early_start_retries())
        .with_config(controller_config())
        .trigger_backoff(WatchBackoff::default())
        .watches(agents, watching.clone(), move |agent: LeanMeta<Agent>| {
            waiting
                .of_agent(&AgentKey::new(&agent.namespace().unwrap_or_default(), &agent.name_any()))
                .into_iter()
                .filter(|r| !phase_of(r).is_some_and(|p| p.is_terminal()))
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
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

/// The Agent controller. A change to a version wakes its Agent, unless it is the echo of this
/// process's own write; so does a change to its delivery ConfigMap. `version_events` have
/// passed the index first.
fn run_agent_controller<F>(
    controller: Controller<Agent>,
    version_events: impl Stream<Item = Result<LeanMeta<AgentVersion>, watcher::Error>> + Send + 'static,
    config_map_events: impl Stream<Item = Result<LeanMeta<ConfigMap>, watcher::Error>> + Send + 'static,
    ctx: &Arc<Context>,
    shutdown: Shared<F>,
) -> impl Future<Output = ()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let index = ctx.index.clone();
    controller
        .with_config(controller_config())
        .trigger_backoff(WatchBackoff::default())
        .watches_stream(version_events, move |version: LeanMeta<AgentVersion>| index.wakes(&version))
        // A delivery ConfigMap changed or deleted by someone else wakes its Agent; the echoes of
        // the operator's own writes find the Agent's delivery intact and return at once.
        .watches_stream(config_map_events, |config_map: LeanMeta<ConfigMap>| {
            let namespace = config_map.namespace()?;
            let agent = config_map.owner_references().iter().find(|o| o.kind == "Agent")?.name.clone();
            Some(ObjectRef::<Agent>::new(&agent).within(&namespace))
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

/// The watch caches keep objects without their managed fields: nothing here reads them, and at
/// thousands of Agents they are much of the caches' memory.
fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// The Agent cache keeps no definition either (the watch never decodes one, see `lean_agent`):
/// the cached Agent wakes syncs and answers checks of its metadata and status, and a sync reads
/// the Agent live whenever it decides anything from its spec (see `observe::resume_from`).
/// With instructions of kilobytes, the definitions were most of the operator's memory at
/// thousands of Agents.
fn slim_agent(agent: &mut Agent) {
    drop_managed_fields(agent);
    keep_annotations(agent, &[CHANGE_CAUSE_ANNOTATION, CHANGED_BY_ANNOTATION]);
}

/// Of a rollback's annotations the cache keeps its record, the only one the operator reads:
/// annotations are anyone's to write, up to 256 KiB an object, and one namespace's rollbacks
/// (or an Agent's `kubectl.kubernetes.io/last-applied-configuration`) could otherwise fill the
/// memory of an operator shared by every namespace.
pub(crate) fn slim_rollback(rollback: &mut AgentRollback) {
    drop_managed_fields(rollback);
    keep_annotations(rollback, &[ROLLBACK_RECORD_ANNOTATION]);
}

fn keep_annotations<K: Resource>(object: &mut K, keep: &[&str]) {
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.retain(|key, _| keep.contains(&key.as_str()));
    }
}

/// How every watch gets its first state: streamed from the API server's watch cache where the
/// server streams lists by default (Kubernetes 1.34 on; 1.33 refuses the request) and has not
/// had the feature turned off, else as a list in pages. At 100,000 versions the paged list of
/// their metadata took 26-88 s after a restart, each page read from storage; streamed, the same
/// state comes in seconds. The streamed state is the watch cache's, which may trail storage by
/// moments, as every later event may: nothing decides a write from a cache alone (see
/// `observe`).
async fn watch_config(client: &Client, namespace: Option<&str>) -> watcher::Config {
    let streams = match client.apiserver_version().await {
        Ok(info) => streams_lists(&info.major, &info.minor) && serves_streaming_lists(client, namespace).await,
        Err(error) => {
            warn!(error = %error_chain(&error), "Cannot read the API server's version; listing in pages");
            false
        }
    };
    debug!(streams, "Initial lists");
    let config = watcher::Config::default();
    if streams { config.streaming_lists() } else { config }
}

/// Whether the API server serves a streaming list: one with the WatchList feature turned off
/// (a beta feature; its administrator may) refuses the request, and a watch that asks for one
/// would never get its first state. Asked with a watch that selects nothing (no object is named
/// `-`), whose answer is the end of an empty list; a server that gives none within 10 s is
/// taken not to stream, an error that is not a refusal to follow the version.
async fn serves_streaming_lists(client: &Client, namespace: Option<&str>) -> bool {
    let api: Api<AgentRollback> = scoped(client, namespace);
    let params = WatchParams::streaming_lists().fields("metadata.name=-").timeout(10);
    let first = async {
        let events = match api.watch(&params, "0").await {
            Ok(events) => events,
            Err(kube::Error::Api(status)) => return !(400..500).contains(&status.code),
            Err(_) => return true,
        };
        let mut events = std::pin::pin!(events);
        matches!(events.next().await, Some(Ok(WatchEvent::Bookmark(_))))
    };
    let serves = tokio::time::timeout(Duration::from_secs(10), first).await.unwrap_or(false);
    if !serves {
        warn!("The API server does not serve streaming lists (WatchList off); listing in pages");
    }
    serves
}

/// Whether a server of this version serves streaming lists by default (the WatchList feature).
fn streams_lists(major: &str, minor: &str) -> bool {
    let number = |text: &str| text.trim_end_matches('+').parse::<u32>().ok();
    match (number(major), number(minor)) {
        (Some(1), Some(minor)) => minor >= 34,
        (Some(major), _) => major > 1,
        _ => false,
    }
}

/// Reconciles in flight per controller. Unbounded, a restart over a thousand Agents starts a
/// thousand syncs at once, each holding its reads in memory while they wait on the API server.
const CONCURRENCY: u16 = 16;

/// When an Agent reconcile whose sync was handed to the one running (see `turns`)
/// looks again, in case that sync leaves the Agent waiting for its delivery, which only the
/// Agent controller polls.
const HANDED_RECHECK: Duration = Duration::from_secs(1);

fn controller_config() -> controller::Config {
    controller::Config::default().concurrency(CONCURRENCY)
}

/// Retries of the watches: from 100 ms, doubling, at most a second apart. kube's default (up to
/// 30 s, reset only after two quiet minutes) left rollbacks unseen for most of a minute after an
/// API server restart; one retry a second is nothing to an API server that is back.
#[derive(Default)]
struct WatchBackoff {
    last: Option<Duration>,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.last.map_or(Self::FIRST, |last| (last * 2).min(Self::MAX));
        self.last = Some(delay);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.last = None;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_streamed_from_kubernetes_1_34_on() {
        assert!(!streams_lists("1", "30"));
        assert!(!streams_lists("1", "33"), "1.33 refuses sendInitialEvents by default");
        assert!(streams_lists("1", "34"));
        assert!(streams_lists("1", "37+"));
        assert!(streams_lists("2", "0"));
        assert!(!streams_lists("", ""));
    }

    #[test]
    fn the_caches_keep_only_the_annotations_the_operator_reads() {
        let big = "x".repeat(200_000);
        let mut rollback: AgentRollback = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentops.dev/v1alpha1", "kind": "AgentRollback",
            "metadata": {"name": "r", "annotations": {ROLLBACK_RECORD_ANNOTATION: "{}", "ticket": big}},
            "spec": {"agentName": "support", "strategy": "Pop"}}))
        .unwrap();
        slim_rollback(&mut rollback);
        let kept: Vec<&String> = rollback.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(kept, [ROLLBACK_RECORD_ANNOTATION]);

        let LeanAgent(mut agent) = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentops.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "a", "annotations": {
                CHANGE_CAUSE_ANNOTATION: "why", CHANGED_BY_ANNOTATION: "who",
                "kubectl.kubernetes.io/last-applied-configuration": big}},
            "spec": {"instructions": "long"}}))
        .unwrap();
        slim_agent(&mut agent);
        let kept: Vec<&String> = agent.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(kept, [CHANGE_CAUSE_ANNOTATION, CHANGED_BY_ANNOTATION]);
        assert_eq!(agent.spec.definition, crate::api::AgentDefinition::default());
    }

    #[test]
    fn watch_retries_double_to_a_second_and_start_over_after_a_reset() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u128> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(100)));
    }
}

//! What the controllers share: the API client, the watch caches, the index of what is known of
//! each Agent, whose turn it is to sync each Agent, and the Event and metric sinks.

use std::sync::{Arc, Mutex};

use futures::Stream;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;

use super::events::EventSink;
use super::index::{AgentIndex, ChannelCache, RollbackCache};
use super::lean_meta::LeanMeta;
use super::turns::Turns;
use crate::api::{Agent, AgentChannel, AgentPromotion, AgentRollback};
use crate::metrics::Metrics;

/// Reconciles in flight per controller, and syncs started early beside them. Unbounded, a
/// restart over a thousand Agents starts a thousand syncs at once, each holding its reads in
/// memory while they wait on the API server.
pub const CONCURRENCY: u16 = 16;

/// How the controllers were asked to run.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// `reportingInstance` of Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// Without the two fast paths of the hot path: syncs never resume from the state the
    /// Agent's last sync left and the operator's own version writes are not told apart on the
    /// watch ([`super::index::settled`]). For measuring what they gain.
    pub simple_hot_path: bool,
    /// Without the early start of a new rollback's sync from the watch
    /// ([`super::agent_rollback::start_early`]): the controller's queue runs it. For measuring
    /// what it gains.
    pub without_early_start: bool,
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    /// Every AgentRollback, as last seen by the AgentRollback controller's watch.
    pub rollbacks: RollbackCache,
    /// Every Agent, as last seen by the Agent controller's watch.
    pub agents: Store<Agent>,
    /// Every AgentChannel, as last seen by its watch.
    pub channels: ChannelCache,
    /// Every AgentPromotion, as last seen by its watch. An Agent's are found by a scan of its
    /// namespace's (see `delivery::observe`), made only for Agents with channels.
    pub promotions: Store<AgentPromotion>,
    /// The delivery ConfigMaps (those labelled with an Agent), metadata only.
    pub config_maps: Store<LeanMeta<ConfigMap>>,
    /// What the watches tell, and the syncs left, of each Agent.
    pub index: Arc<AgentIndex>,
    /// Permits for syncs started straight from the rollback watch.
    pub early_starts: Arc<tokio::sync::Semaphore>,
    /// Rollbacks whose early start failed, for their controller to reconcile again: the only
    /// sync with no retry of its own, which others may have handed their work to (see
    /// `turns`).
    early_failures: mpsc::UnboundedSender<ObjectRef<AgentRollback>>,
    early_failures_rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<AgentRollback>>>>,
    pub events: EventSink,
    pub metrics: Arc<Metrics>,
    /// Whose turn it is to sync each Agent.
    pub turns: Turns,
    /// True once every cache has its first full list.
    listed: tokio::sync::watch::Sender<bool>,
    /// The HTTP client of the channels' prometheus checks.
    pub http: reqwest::Client,
    /// The username the API server knows the operator by, asked once (see [`Self::identity`]).
    identity: tokio::sync::OnceCell<String>,
}

/// The watch caches a [`Context`] reads.
pub struct Stores {
    pub rollbacks: Store<AgentRollback>,
    pub agents: Store<Agent>,
    pub channels: Store<AgentChannel>,
    pub promotions: Store<AgentPromotion>,
    pub config_maps: Store<LeanMeta<ConfigMap>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        index: Arc<AgentIndex>,
        stores: Stores,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Stores { rollbacks, agents, channels, promotions, config_maps } = stores;
        let events = EventSink::start(client.clone(), settings.instance.clone());
        let (early_failures, early_failures_rx) = mpsc::unbounded_channel();
        Self {
            client,
            settings,
            rollbacks: RollbackCache::new(rollbacks, index.clone()),
            agents,
            channels: ChannelCache::new(channels, index.clone()),
            promotions,
            config_maps,
            index,
            early_starts: Arc::new(tokio::sync::Semaphore::new(usize::from(CONCURRENCY))),
            early_failures,
            early_failures_rx: Mutex::new(Some(early_failures_rx)),
            events,
            metrics,
            turns: Turns::default(),
            listed: tokio::sync::watch::channel(false).0,
            http: super::prometheus::client(),
            identity: tokio::sync::OnceCell::new(),
        }
    }

    /// The operator's own username, as the API server authenticates it (a SelfSubjectReview,
    /// which every authenticated user may make): the `requestedBy` of its automatic rollbacks,
    /// which a cluster without mutating admission policies checks against the caller.
    pub async fn identity(&self) -> Result<String, kube::Error> {
        use k8s_openapi::api::authentication::v1::SelfSubjectReview;
        let review = || async {
            let api: kube::Api<SelfSubjectReview> = kube::Api::all(self.client.clone());
            let answer = api.create(&Default::default(), &SelfSubjectReview::default()).await?;
            Ok(answer.status.and_then(|s| s.user_info).and_then(|u| u.username).unwrap_or_default())
        };
        self.identity.get_or_try_init(review).await.cloned()
    }

    /// Waits until every cache has its first full list (see [`Self::set_listed`]): before, a
    /// delivery would seem gone and the versions missing, and a restart over thousands of
    /// Agents would sync every one of them.
    pub async fn caches_listed(&self) {
        // Err only if the sender is gone, which it is not while `self` holds it.
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }

    /// Says every cache has its first full list. Told once, by the one task that waits on the
    /// stores for it: kube's `Store::wait_until_ready` wakes only the last of several tasks
    /// waiting at once, and the others wait for ever.
    pub fn set_listed(&self) {
        self.listed.send_replace(true);
    }

    /// Has the AgentRollback controller reconcile `rollback` again: its early start failed.
    pub fn retry_early_start(&self, rollback: ObjectRef<AgentRollback>) {
        let _ = self.early_failures.send(rollback);
    }

    /// The rollbacks to reconcile again (see [`Self::retry_early_start`]), for the controller
    /// to follow; empty for a second caller.
    pub fn early_start_retries(&self) -> impl Stream<Item = ObjectRef<AgentRollback>> + Send + 'static {
        let rx = self.early_failures_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        futures::stream::unfold(rx, |rx| async move {
            let mut rx = rx?;
            let next = rx.recv().await?;
            Some((next, Some(rx)))
        })
    }

    /// Waits for every sync started early from the watch, and lets no more start. They run in
    /// tasks of their own, which the controllers' graceful shutdown does not wait for; once
    /// every permit is taken (and kept), none runs and none can start.
    pub async fn finish_early_starts(&self) {
        if let Ok(all) = self.early_starts.acquire_many(u32::from(CONCURRENCY)).await {
            all.forget();
        }
    }
}

//! State shared by the controllers: cheap-to-clone handles only.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use super::echoes::Echoes;
use super::events::EventSink;
use super::lean_meta::LeanMeta;
use super::rollback_index::RollbackCache;
use super::settled::SettledAgents;
use super::turns::Turns;
use super::version_index::VersionIndex;
use crate::api::conditions::IN_SYNC;
use crate::api::{Agent, AgentRollback};
use crate::metrics::Metrics;

/// How the controllers were asked to run.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// `reportingInstance` of Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// Without the two fast paths of the hot path: syncs never resume from the state the
    /// Agent's last sync left ([`super::settled`]) and the operator's own version writes are
    /// not told apart on the watch ([`super::echoes`]). For measuring what they gain.
    pub simple_hot_path: bool,
}

/// Namespace and name of an Agent.
type AgentKey = (String, String);

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    /// Every AgentRollback, as last seen by the AgentRollback controller's watch.
    pub rollbacks: RollbackCache,
    /// Every Agent, as last seen by the Agent controller's watch.
    pub agents: Store<Agent>,
    /// The delivery ConfigMaps (those labelled with an Agent), metadata only.
    pub config_maps: Store<LeanMeta<ConfigMap>>,
    /// Every version's metadata, by Agent, as the versions watch last showed it.
    pub versions: VersionIndex,
    /// What each Agent's last clean sync left.
    pub settled: SettledAgents,
    /// Version writes of this process not yet seen on the versions watch.
    pub echoes: Echoes,
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
    backoff: Mutex<HashMap<String, u32>>,
    /// Agents whose `InSync` condition was False when last seen.
    out_of_sync: Mutex<HashSet<AgentKey>>,
    /// True once every cache has its first full list.
    listed: tokio::sync::watch::Sender<bool>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        rollbacks: RollbackCache,
        agents: Store<Agent>,
        config_maps: Store<LeanMeta<ConfigMap>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let events = EventSink::start(client.clone(), settings.instance.clone());
        let (early_failures, early_failures_rx) = mpsc::unbounded_channel();
        let fast_paths = !settings.simple_hot_path;
        Self {
            client,
            settings,
            rollbacks,
            agents,
            config_maps,
            versions: VersionIndex::default(),
            settled: SettledAgents::new(fast_paths),
            echoes: Echoes::new(fast_paths),
            early_starts: Arc::new(tokio::sync::Semaphore::new(usize::from(super::CONCURRENCY))),
            early_failures,
            early_failures_rx: Mutex::new(Some(early_failures_rx)),
            events,
            metrics,
            turns: Turns::default(),
            backoff: Mutex::default(),
            out_of_sync: Mutex::default(),
            listed: tokio::sync::watch::channel(false).0,
        }
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

    /// Takes the Agent's lock: one sync per Agent at a time, whichever controller asks.
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
        if let Ok(all) = self.early_starts.acquire_many(u32::from(super::CONCURRENCY)).await {
            all.forget();
        }
    }

    /// Notes whether the Agent, as the watch delivered it, is out of sync (its `InSync`
    /// condition False), for the `agents_out_of_sync` gauge. Every change to an Agent,
    /// status included, comes through here.
    pub fn note_in_sync(&self, agent: &Agent) {
        let key = (agent.namespace().unwrap_or_default(), agent.name_any());
        let out = agent
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == IN_SYNC && c.status == "False"));
        let mut set = self.out_of_sync.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if out {
            set.insert(key);
        } else {
            set.remove(&key);
        }
        self.metrics.agents_out_of_sync.set(i64::try_from(set.len()).unwrap_or(i64::MAX));
    }

    /// Whether a sync of the Agent runs now.
    pub fn syncing(&self, namespace: &str, name: &str) -> bool {
        self.turns.running(namespace, name)
    }

    /// Forgets what it keeps per Agent and per rollback for those gone from the watch caches:
    /// memory follows the objects that exist, not every one ever seen.
    pub fn prune(&self) {
        let agents: HashSet<AgentKey> =
            self.agents.state().iter().map(|a| (a.namespace().unwrap_or_default(), a.name_any())).collect();
        let uids: HashSet<String> = self
            .agents
            .state()
            .iter()
            .filter_map(|a| a.uid())
            .chain(self.rollbacks.state().iter().filter_map(|r| r.uid()))
            .collect();
        let key = |ns: &str, name: &str| (ns.to_string(), name.to_string());
        self.settled.retain(|ns, name| agents.contains(&key(ns, name)), |ns, name| self.syncing(ns, name));
        self.metrics.tracked_agents.set(i64::try_from(self.settled.tracked()).unwrap_or(i64::MAX));
        let mut out_of_sync = self.out_of_sync.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        out_of_sync.retain(|key| agents.contains(key));
        self.metrics.agents_out_of_sync.set(i64::try_from(out_of_sync.len()).unwrap_or(i64::MAX));
        drop(out_of_sync);
        let mut backoff = self.backoff.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        backoff.retain(|k, _| uids.contains(k.strip_prefix("delivery/").unwrap_or(k)));
    }

    /// The delay before retrying an object that failed `attempts` times in a row: 0.2 s
    /// doubling up to 60 s.
    pub fn next_backoff(&self, uid: &str) -> Duration {
        let mut backoff = self.backoff.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let attempts = backoff.entry(uid.to_string()).or_insert(0);
        *attempts = attempts.saturating_add(1);
        let millis = 200u64.saturating_mul(1 << (*attempts - 1).min(9));
        Duration::from_millis(millis.min(60_000))
    }

    pub fn reset_backoff(&self, uid: &str) {
        self.backoff.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(uid);
    }

    pub fn reset_delivery_poll(&self, uid: &str) {
        self.reset_backoff(&format!("delivery/{uid}"));
    }

    /// The delay before looking again at an Agent that waits for its delivery: 0.2 s doubling
    /// up to 10 s, so a rollout is seen to finish soon after it does, and a blocked delivery
    /// costs a read every 10 s.
    pub fn next_delivery_poll(&self, uid: &str) -> Duration {
        self.next_backoff(&format!("delivery/{uid}")).min(Duration::from_secs(10))
    }
}

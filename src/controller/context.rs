//! State shared by the controllers: cheap-to-clone handles only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tokio::sync::OwnedMutexGuard;

use super::events::EventSink;
use crate::api::AgentRollback;
use crate::metrics::Metrics;
use crate::plan::phase_of;

/// How the controllers were asked to run.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// `reportingInstance` of Events (the pod name in a cluster).
    pub instance: Option<String>,
}

/// The rollbacks in `store` that name the Agent `namespace/name`.
pub fn rollbacks_of(store: &Store<AgentRollback>, namespace: &str, name: &str) -> Vec<Arc<AgentRollback>> {
    store
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace) && r.spec.agent_name == name)
        .collect()
}

/// Namespace and name of an Agent.
type AgentKey = (String, String);

/// What an Agent's last clean sync left behind.
struct Settled {
    /// The resourceVersion at which the sync last saw each of the Agent's rollbacks, by uid.
    rollbacks: HashMap<String, u64>,
}

/// An object's resourceVersion as a number: etcd revisions, which grow with every write (the
/// same assumption that orders rollbacks by creation).
fn revision(rollback: &AgentRollback) -> Option<u64> {
    rollback.metadata.resource_version.as_deref()?.parse().ok()
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    /// Every AgentRollback, as last seen by the AgentRollback controller's watch.
    pub rollbacks: Store<AgentRollback>,
    pub events: EventSink,
    pub metrics: Arc<Metrics>,
    locks: Mutex<HashMap<AgentKey, Arc<tokio::sync::Mutex<()>>>>,
    backoff: Mutex<HashMap<String, u32>>,
    /// Agents whose last sync in this process ended cleanly, with what it left.
    settled: Mutex<HashMap<AgentKey, Settled>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, rollbacks: Store<AgentRollback>, metrics: Arc<Metrics>) -> Self {
        let events = EventSink::start(client.clone(), settings.instance.clone());
        Self {
            client,
            settings,
            rollbacks,
            events,
            metrics,
            locks: Mutex::default(),
            backoff: Mutex::default(),
            settled: Mutex::default(),
        }
    }

    /// The rollbacks in the watch cache that name this Agent, in any phase.
    pub fn rollbacks_of(&self, namespace: &str, name: &str) -> Vec<Arc<AgentRollback>> {
        rollbacks_of(&self.rollbacks, namespace, name)
    }

    /// Takes the Agent's lock: one sync per Agent at a time, whichever controller asks.
    pub async fn lock_agent(&self, namespace: &str, name: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Drop the locks nobody holds or waits for, so the map does not grow with every
            // Agent ever seen.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry((namespace.to_string(), name.to_string())).or_default().clone()
        };
        lock.lock_owned().await
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

    /// Whether the Agent's last sync in this process ended cleanly; forgets it, so a sync that
    /// fails part-way leaves the Agent unsettled.
    pub fn take_settled(&self, namespace: &str, name: &str) -> bool {
        let mut settled = self.settled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        settled.remove(&(namespace.to_string(), name.to_string())).is_some()
    }

    /// Records that a sync of the Agent ended cleanly, leaving these rollbacks as they are.
    pub fn mark_settled<'a>(&self, namespace: &str, name: &str, rollbacks: impl IntoIterator<Item = &'a AgentRollback>) {
        let rollbacks = rollbacks
            .into_iter()
            .filter(|r| phase_of(r).is_some_and(|p| p.is_terminal()))
            .filter_map(|r| Some((r.metadata.uid.clone()?, revision(r)?)))
            .collect();
        let mut settled = self.settled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        settled.insert((namespace.to_string(), name.to_string()), Settled { rollbacks });
    }

    /// Whether the last clean sync of the rollback's Agent left it terminal at this
    /// resourceVersion or a newer one: the watch cache has yet to show the end.
    pub fn handled(&self, namespace: &str, rollback: &AgentRollback) -> bool {
        let (Some(uid), Some(seen)) = (rollback.metadata.uid.as_deref(), revision(rollback)) else { return false };
        let settled = self.settled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        settled
            .get(&(namespace.to_string(), rollback.spec.agent_name.clone()))
            .and_then(|s| s.rollbacks.get(uid))
            .is_some_and(|handled| *handled >= seen)
    }

    pub fn reset_backoff(&self, uid: &str) {
        self.backoff.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(uid);
    }
}

//! The AgentRollbacks' watch cache, with the rollbacks of each Agent found through an index
//! rather than by scanning every rollback (a sync asks on every run; at thousands of Agents the
//! scan was the sync's largest cost in memory reads).
//!
//! Invariant: for every Agent, the index names every rollback the store holds for it. It is fed
//! the watch events the store was fed, in the same order, just after the store (see
//! `controller::run`), and a relist replaces it whole at its end as it replaces the store. An
//! entry never moves between Agents: a rollback's spec is immutable. Lookups read each rollback
//! from the store and check its Agent, so a name the store no longer has is skipped.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::api::AgentRollback;

/// Namespace and name of an Agent.
type AgentKey = (String, String);

#[derive(Clone)]
pub struct RollbackCache {
    store: Store<AgentRollback>,
    index: Arc<Mutex<Index>>,
}

#[derive(Default)]
struct Index {
    by_agent: HashMap<AgentKey, BTreeSet<String>>,
    /// The relist under way: what the index becomes at its end (as the store's buffer).
    relist: HashMap<AgentKey, BTreeSet<String>>,
}

fn agent_of(rollback: &AgentRollback) -> AgentKey {
    (rollback.namespace().unwrap_or_default(), rollback.spec.agent_name.clone())
}

impl RollbackCache {
    pub fn new(store: Store<AgentRollback>) -> Self {
        Self { store, index: Arc::default() }
    }

    /// Follows one event of the watch that fills the store, once the store has applied it.
    pub fn apply(&self, event: &watcher::Event<AgentRollback>) {
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Apply(rollback) => {
                index.by_agent.entry(agent_of(rollback)).or_default().insert(rollback.name_any());
            }
            watcher::Event::Delete(rollback) => {
                let key = agent_of(rollback);
                if let Some(names) = index.by_agent.get_mut(&key) {
                    names.remove(&rollback.name_any());
                    if names.is_empty() {
                        index.by_agent.remove(&key);
                    }
                }
            }
            watcher::Event::Init => index.relist = HashMap::new(),
            watcher::Event::InitApply(rollback) => {
                index.relist.entry(agent_of(rollback)).or_default().insert(rollback.name_any());
            }
            watcher::Event::InitDone => index.by_agent = std::mem::take(&mut index.relist),
        }
    }

    /// The cached rollbacks that name the Agent `namespace/name`, in any phase.
    pub fn of_agent(&self, namespace: &str, name: &str) -> Vec<Arc<AgentRollback>> {
        let names: Vec<String> = {
            let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (namespace.to_string(), name.to_string());
            index.by_agent.get(&key).map(|names| names.iter().cloned().collect()).unwrap_or_default()
        };
        names
            .iter()
            .filter_map(|rollback| self.store.get(&ObjectRef::new(rollback).within(namespace)))
            .filter(|r| r.spec.agent_name == name)
            .collect()
    }

    pub fn get(&self, key: &ObjectRef<AgentRollback>) -> Option<Arc<AgentRollback>> {
        self.store.get(key)
    }

    pub fn state(&self) -> Vec<Arc<AgentRollback>> {
        self.store.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentRollbackSpec, RollbackStrategy};
    use kube::runtime::reflector;
    use proptest::prelude::*;

    fn rollback(namespace: &str, name: &str, agent: &str) -> AgentRollback {
        let mut r = AgentRollback::new(
            name,
            AgentRollbackSpec {
                agent_name: agent.into(),
                strategy: RollbackStrategy::Previous,
                target_version: None,
                expected_active_version: None,
                reason: None,
                requested_by: None,
            },
        );
        r.metadata.namespace = Some(namespace.into());
        r
    }

    /// The events a watch could deliver, over a few namespaces, names and Agents.
    fn events() -> impl Strategy<Value = Vec<watcher::Event<AgentRollback>>> {
        let object = (0..2usize, 0..4usize, 0..3usize)
            .prop_map(|(ns, name, agent)| rollback(&format!("ns{ns}"), &format!("r{name}"), &format!("a{agent}")));
        let event = prop_oneof![
            4 => object.clone().prop_map(watcher::Event::Apply),
            2 => object.clone().prop_map(watcher::Event::Delete),
            1 => Just(watcher::Event::Init),
            2 => object.prop_map(watcher::Event::InitApply),
            1 => Just(watcher::Event::InitDone),
        ];
        proptest::collection::vec(event, 0..40)
    }

    proptest! {
        /// Fed what the store is fed, the index finds for every Agent exactly what a scan of
        /// the store finds.
        #[test]
        fn finds_what_a_scan_of_the_store_finds(events in events()) {
            let (store, mut writer) = reflector::store();
            let cache = RollbackCache::new(store.clone());
            for event in &events {
                writer.apply_watcher_event(event);
                cache.apply(event);
            }
            for ns in ["ns0", "ns1"] {
                for agent in ["a0", "a1", "a2"] {
                    let mut found: Vec<String> = cache.of_agent(ns, agent).iter().map(|r| r.name_any()).collect();
                    let mut scanned: Vec<String> = store
                        .state()
                        .iter()
                        .filter(|r| r.namespace().as_deref() == Some(ns) && r.spec.agent_name == agent)
                        .map(|r| r.name_any())
                        .collect();
                    found.sort();
                    scanned.sort();
                    prop_assert_eq!(found, scanned);
                }
            }
        }
    }
}

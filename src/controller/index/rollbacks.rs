//! The rollbacks' part of the index: the names of each Agent's rollbacks, so that a sync (which
//! asks on every run) finds them without scanning every rollback in the watch cache; at
//! thousands of Agents the scan was the sync's largest cost in memory reads.
//!
//! Invariant: for every Agent, its part names every rollback the watch cache holds for it (fed
//! just after the cache, see the index's invariants). A name never moves between Agents: a
//! rollback's spec is immutable. Lookups read each rollback from the cache and check its Agent,
//! so a name the cache no longer has is skipped.

use std::collections::{BTreeSet, HashMap};

use kube::ResourceExt;

use super::{AgentKey, Entry, Indexed, Kind, Parts, Relists};
use crate::api::AgentRollback;

fn key(rollback: &AgentRollback) -> AgentKey {
    AgentKey { namespace: rollback.namespace().unwrap_or_default(), name: rollback.spec.agent_name.clone() }
}

impl Indexed for AgentRollback {
    type Part = BTreeSet<String>;
    const KIND: Kind = Kind::Rollback;

    fn part(entry: &mut Entry) -> &mut Self::Part {
        &mut entry.rollbacks
    }

    fn relist(relists: &mut Relists) -> &mut Option<HashMap<AgentKey, Self::Part>> {
        &mut relists.rollbacks
    }

    fn applied(&self, parts: &mut impl Parts<Self::Part>) {
        parts.part(&key(self)).insert(self.name_any());
    }

    fn deleted(&self, parts: &mut impl Parts<Self::Part>) {
        if let Some(names) = parts.existing(&key(self)) {
            names.remove(&self.name_any());
        }
    }
}

impl super::OfAgent for AgentRollback {
    fn agent_name(&self) -> &str {
        &self.spec.agent_name
    }

    fn names(entry: &Entry) -> &BTreeSet<String> {
        &entry.rollbacks
    }
}

/// The AgentRollbacks' watch cache, with each Agent's rollbacks found through the index.
pub type RollbackCache = super::AgentCache<AgentRollback>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RollbackStrategy;
    use crate::controller::index::AgentIndex;
    use crate::fixtures;
    use kube::runtime::{reflector, watcher};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn rollback(namespace: &str, name: &str, agent: &str) -> AgentRollback {
        let mut rollback = fixtures::rollback(name, agent, RollbackStrategy::Previous);
        rollback.metadata.namespace = Some(namespace.into());
        rollback
    }

    /// The events a watch could deliver, over a few namespaces, names and Agents; a name always
    /// names one Agent, as a rollback's spec is immutable.
    fn events() -> impl Strategy<Value = Vec<watcher::Event<AgentRollback>>> {
        let object = (0..2usize, 0..4usize)
            .prop_map(|(ns, name)| rollback(&format!("ns{ns}"), &format!("r{name}"), &format!("a{}", (ns + name) % 3)));
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
        /// the store finds, and keeps an entry only for the Agents some rollback names.
        #[test]
        fn finds_what_a_scan_of_the_store_finds(events in events()) {
            let (store, mut writer) = reflector::store();
            let index = Arc::new(AgentIndex::new(true, Default::default()));
            let cache = RollbackCache::new(store.clone(), index.clone());
            for event in &events {
                writer.apply_watcher_event(event);
                index.apply(event);
            }
            let mut named = 0;
            for ns in ["ns0", "ns1"] {
                for agent in ["a0", "a1", "a2"] {
                    let mut found: Vec<String> =
                        cache.of_agent(&AgentKey::new(ns, agent)).iter().map(|r| r.name_any()).collect();
                    let mut scanned: Vec<String> = store
                        .state()
                        .iter()
                        .filter(|r| r.namespace().as_deref() == Some(ns) && r.spec.agent_name == agent)
                        .map(|r| r.name_any())
                        .collect();
                    found.sort();
                    scanned.sort();
                    named += usize::from(!scanned.is_empty());
                    prop_assert_eq!(found, scanned);
                }
            }
            prop_assert_eq!(index.tracked(), named, "an entry leaves with the last rollback naming it");
        }
    }
}

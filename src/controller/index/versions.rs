//! The versions' part of the index: each version's metadata, kept by Agent, enough to confirm
//! an Agent's recorded versions digest with no request. The check it stands in for lists the
//! Agent's versions by label, and the API server answers such a list by scanning every version
//! in the namespace: after a restart over 10,000 Agents, 10,000 scans of 100,000 versions.
//!
//! Invariants:
//! - For every Agent, its part is the versions labelled with its name (what the list selects),
//!   each as its last event showed it. An edited label moves a version from the Agent that owns
//!   it. (One edit that changes both a version's label and its owner, to another Agent than
//!   either names, leaves its old entry until the next relist: finding it would take a map of
//!   every version's name, as large again as the index.)
//! - It only ever confirms. A version it cannot describe (made by an older build, without the
//!   snapshot-hash annotation), a version owned by another uid, or a digest that differs from
//!   the recorded one leaves the decision to the list.
//!
//! A version's metadata can be edited; its spec cannot. A confirmation from edited labels or
//! annotations is a confirmation by whoever can also write a version's spec at its creation,
//! snapshot hash included, so it trusts nobody the list does not.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::{AgentIndex, AgentKey, Entry, Indexed, Kind, Parts, Relists};
use crate::api::keys::{AGENT_LABEL, ROLLBACK_LABEL, SNAPSHOT_HASH_ANNOTATION, VERSION_LABEL};
use crate::plan::hash::history_digest;
use crate::plan::owning_agent_uid;

/// One version, in about 100 bytes: at 100,000 versions the index is about 10 MiB.
pub struct VersionEntry {
    name: Box<str>,
    facts: Option<Facts>,
}

/// What a versions digest covers, and whose version it is. `None` when any of it is missing
/// or malformed.
struct Facts {
    number: i64,
    snapshot_hash: [u8; 32],
    owner: u128,
    rollback: Option<Box<str>>,
}

/// Versions are watched as metadata (see `lean_meta`); any kind whose metadata is a version's
/// is indexed as one.
impl<K: Resource<DynamicType = ()> + VersionMeta> Indexed for K {
    type Part = Vec<VersionEntry>;
    const KIND: Kind = Kind::Version;

    fn part(entry: &mut Entry) -> &mut Self::Part {
        &mut entry.versions
    }

    fn relist(relists: &mut Relists) -> &mut Option<HashMap<AgentKey, Self::Part>> {
        &mut relists.versions
    }

    fn applied(&self, parts: &mut impl Parts<Self::Part>) {
        let meta = self.meta();
        let name = meta.name.as_deref().unwrap_or_default();
        if let Some(owner) = owner_key(meta) {
            remove(parts, &owner, name);
        }
        if let Some(key) = label_key(meta) {
            let part = parts.part(&key);
            // A list names each object once; a later copy of a name replaces the first.
            part.retain(|e| &*e.name != name);
            part.push(VersionEntry::of(meta));
        }
    }

    fn deleted(&self, parts: &mut impl Parts<Self::Part>) {
        let meta = self.meta();
        let name = meta.name.as_deref().unwrap_or_default();
        for key in [label_key(meta), owner_key(meta)].into_iter().flatten() {
            remove(parts, &key, name);
        }
    }

    /// Lists grow by doubling: at 100,000 versions the slack is megabytes.
    fn finish(part: &mut Self::Part) {
        part.shrink_to_fit();
    }
}

/// Marks the kinds that carry a version's metadata.
pub trait VersionMeta {}

impl VersionMeta for crate::api::AgentVersion {}
impl VersionMeta for crate::controller::lean_meta::LeanMeta<crate::api::AgentVersion> {}

impl AgentIndex {
    /// Whether the versions labelled with the Agent `namespace/name` are all owned by `uid`,
    /// all described, and their digest is `recorded`.
    pub fn confirms(&self, agent: &AgentKey, uid: &str, recorded: &str) -> bool {
        let Some(uid) = parse_uid(uid) else { return false };
        let inner = self.lock();
        let Some(entries) = inner.entries.get(agent).map(|e| &e.versions).filter(|v| !v.is_empty()) else {
            return false;
        };
        let mut triples = Vec::with_capacity(entries.len());
        for entry in entries {
            match &entry.facts {
                Some(facts) if facts.owner == uid => triples.push((facts.number, hex(&facts.snapshot_hash), facts)),
                _ => return false,
            }
        }
        let digest = history_digest(triples.iter().map(|(n, h, f)| (*n, h.as_str(), f.rollback.as_deref())));
        digest == recorded
    }
}

impl AgentIndex {
    /// The names of the versions labelled with the Agent `agent` (what a list by label would
    /// return), for a sync to read one by one: a list by label is answered by a scan of every
    /// version in the namespace. `None` until the versions' first list is in, and while a
    /// version write of this process has yet to show on the watch: the names could lack a
    /// version it made, and that version's event, being its echo, would wake no sync to mend
    /// a status written without it.
    pub fn version_names(&self, agent: &AgentKey) -> Option<Vec<String>> {
        if !self.listed.borrow().contains(&Kind::Version) {
            return None;
        }
        let inner = self.lock();
        let Some(entry) = inner.entries.get(agent) else { return Some(Vec::new()) };
        if entry.synced.awaits_echoes() {
            return None;
        }
        Some(entry.versions.iter().map(|e| e.name.to_string()).collect())
    }
}

impl VersionEntry {
    fn of(meta: &ObjectMeta) -> Self {
        Self { name: meta.name.as_deref().unwrap_or_default().into(), facts: Facts::of(meta) }
    }
}

impl Facts {
    fn of(meta: &ObjectMeta) -> Option<Self> {
        let labels = meta.labels.as_ref()?;
        Some(Self {
            number: labels.get(VERSION_LABEL)?.parse().ok()?,
            snapshot_hash: parse_hash(meta.annotations.as_ref()?.get(SNAPSHOT_HASH_ANNOTATION)?)?,
            owner: parse_uid(owning_agent_uid(meta)?)?,
            rollback: labels.get(ROLLBACK_LABEL).map(|r| r.as_str().into()),
        })
    }
}

fn remove(parts: &mut impl Parts<Vec<VersionEntry>>, key: &AgentKey, name: &str) {
    if let Some(part) = parts.existing(key) {
        part.retain(|e| &*e.name != name);
    }
}

/// The Agent whose versions the list by label would return this one with.
fn label_key(meta: &ObjectMeta) -> Option<AgentKey> {
    Some(AgentKey { namespace: meta.namespace.clone()?, name: meta.labels.as_ref()?.get(AGENT_LABEL)?.clone() })
}

/// The Agent that owns the version, by name.
fn owner_key(meta: &ObjectMeta) -> Option<AgentKey> {
    let owner = meta.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true) && o.kind == "Agent")?;
    Some(AgentKey { namespace: meta.namespace.clone()?, name: owner.name.clone() })
}

/// A uid as the number its UUID spells; `None` for one that is not a UUID.
fn parse_uid(uid: &str) -> Option<u128> {
    let digits: String = uid.chars().filter(|c| *c != '-').collect();
    (digits.len() == 32).then(|| u128::from_str_radix(&digits, 16).ok()).flatten()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Agent, AgentVersion};
    use crate::fixtures;
    use crate::plan::Observed;
    use kube::ResourceExt;
    use kube::runtime::watcher;
    use proptest::prelude::*;

    const UIDS: [&str; 2] = ["6f1c2a3e-0000-4000-8000-000000000001", "6f1c2a3e-0000-4000-8000-000000000002"];

    fn agent(name: &str, uid: &str) -> Agent {
        let mut agent = fixtures::agent(name, fixtures::definition(name));
        agent.metadata.uid = Some(uid.into());
        agent
    }

    /// A version as the operator makes it; `legacy`: without the snapshot-hash annotation, as
    /// older builds made them.
    fn version(agent_name: &str, owner: &str, number: i64, rollback: bool, legacy: bool) -> AgentVersion {
        let snapshot = fixtures::definition(&format!("{agent_name} at {number}"));
        let mut version = fixtures::version(&agent(agent_name, owner), number, snapshot, rollback.then_some("rb"));
        if legacy {
            version.metadata.annotations = None;
        }
        version
    }

    /// The events a versions watch could deliver: two Agents' names, each version owned by one
    /// of two uids, some made by a rollback, some by an older build, with relists between.
    fn events() -> impl Strategy<Value = Vec<watcher::Event<AgentVersion>>> {
        let object = (0..2usize, 0..2usize, 1..5i64, any::<bool>(), prop::bool::weighted(0.1)).prop_map(
            |(agent, owner, number, rollback, legacy)| {
                version(&format!("a{agent}"), UIDS[owner], number, rollback, legacy)
            },
        );
        let event = prop_oneof![
            6 => object.clone().prop_map(watcher::Event::Apply),
            2 => object.clone().prop_map(watcher::Event::Delete),
            1 => Just(watcher::Event::Init),
            3 => object.prop_map(watcher::Event::InitApply),
            1 => Just(watcher::Event::InitDone),
        ];
        proptest::collection::vec(event, 0..40)
    }

    /// What the list by label would return, from a store fed the same events.
    fn listed(store: &kube::runtime::reflector::Store<AgentVersion>, agent: &str) -> Vec<AgentVersion> {
        store
            .state()
            .iter()
            .filter(|v| v.labels().get(AGENT_LABEL).map(String::as_str) == Some(agent))
            .map(|v| (**v).clone())
            .collect()
    }

    proptest! {
        /// Fed what a store is fed, the index confirms an Agent's digest exactly when the check
        /// on the listed versions would (no foreign version, the same digest), unless a version
        /// from an older build makes it defer to that check.
        #[test]
        fn confirms_what_the_list_confirms(events in events()) {
            let (store, mut writer) = kube::runtime::reflector::store();
            let index = AgentIndex::new(true, Default::default());
            for event in &events {
                writer.apply_watcher_event(event);
                index.apply(event);
            }
            for name in ["a0", "a1"] {
                for uid in UIDS {
                    let versions = listed(&store, name);
                    let legacy = versions.iter().any(|v| v.annotations().get(SNAPSHOT_HASH_ANNOTATION).is_none());
                    let observed = Observed::new("ns".into(), name.into(), Some(agent(name, uid)), versions, Vec::new());
                    let digest = observed.versions_digest();
                    let by_list = observed.foreign_versions.is_empty() && !observed.versions.is_empty();
                    let confirmed = index.confirms(&AgentKey::new("ns", name), uid, &digest);
                    if legacy {
                        prop_assert!(!confirmed, "a version without the annotation defers to the list");
                    } else {
                        prop_assert_eq!(confirmed, by_list);
                    }
                    prop_assert!(!index.confirms(&AgentKey::new("ns", name), uid, "another digest"));
                }
            }
        }
    }

    #[test]
    fn an_edited_label_moves_the_version_off_its_owner() {
        let index = AgentIndex::new(true, Default::default());
        let v1 = version("a0", UIDS[0], 1, false, false);
        index.apply(&watcher::Event::Apply(v1.clone()));
        let observed =
            Observed::new("ns".into(), "a0".into(), Some(agent("a0", UIDS[0])), vec![v1.clone()], Vec::new());
        assert!(index.confirms(&AgentKey::new("ns", "a0"), UIDS[0], &observed.versions_digest()));
        let mut moved = v1;
        moved.labels_mut().insert(AGENT_LABEL.into(), "a1".into());
        index.apply(&watcher::Event::Apply(moved));
        assert!(!index.confirms(&AgentKey::new("ns", "a0"), UIDS[0], &observed.versions_digest()));
        assert!(
            !index.confirms(&AgentKey::new("ns", "a1"), UIDS[1], &observed.versions_digest()),
            "a1 owns none of them"
        );
    }

    #[tokio::test]
    async fn listed_waits_for_the_first_list() {
        let index = std::sync::Arc::new(AgentIndex::new(true, Default::default()));
        let waiting = tokio::spawn({
            let index = index.clone();
            async move { index.listed(Kind::Version).await }
        });
        index.apply::<AgentVersion>(&watcher::Event::Init);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a list under way is not a list");
        index.apply::<AgentVersion>(&watcher::Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting).await.expect("listed").expect("joins");
    }
}

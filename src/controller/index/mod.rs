//! What this process knows of each Agent, in one map under one lock: what the watches tell
//! (the Agent's own facts, its versions' facts, the names of its rollbacks) and what its syncs
//! leave (the state of its last clean sync, the echoes of its own writes still to come, its
//! retry delays). Each watched kind feeds its part of the entries through [`Indexed`], and a
//! relist of any kind goes through one path ([`AgentIndex::apply`]).
//!
//! Invariants, each kept here and nowhere else:
//! - It is fed each watch's events in order, just after the watch cache that kind has (if any)
//!   and before they wake anything (see `controller::run`): a reconcile woken by an event
//!   finds that event here, and a name found here is in the cache, or was deleted since.
//! - A relist replaces one kind's part of every entry at its end, as it replaces a store; until
//!   then the index answers from the previous list.
//! - An entry leaves as soon as the watches show neither its Agent, nor a version labelled
//!   with or owned by it, nor a rollback or channel that names it: memory follows the objects that exist,
//!   with no pruning. What syncs left goes with it; an Agent's deletion takes what its syncs
//!   left at once (see `Inner::tidy`).
//! - Epochs come from one clock for all entries, so an Agent that leaves and comes back never
//!   meets an epoch a sync took before it left (see [`settled`]).

mod agents;
mod backoff;
mod channels;
mod rollbacks;
pub mod settled;
mod versions;

pub use backoff::{Backoff, Retry};
pub use channels::ChannelCache;
pub use rollbacks::RollbackCache;
pub use settled::{Echo, Start};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// Namespace and name of an Agent: the one key of everything kept per Agent.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct AgentKey {
    pub namespace: String,
    pub name: String,
}

impl AgentKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.to_string(), name: name.to_string() }
    }
}

/// The kinds the index is fed, each with its first full list to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Agent,
    Version,
    Rollback,
    Channel,
}

/// One Agent's entry.
#[derive(Default)]
pub struct Entry {
    /// The Agent, as its watch last showed it; `None` when the watch shows none.
    agent: Option<agents::AgentFacts>,
    /// The versions labelled with the Agent's name (what a list by label returns).
    versions: Vec<versions::VersionEntry>,
    /// The names of the rollbacks that name the Agent.
    rollbacks: BTreeSet<String>,
    /// The names of the Agent's channels.
    channels: BTreeSet<String>,
    /// What the syncs of this process left (see [`settled`]).
    synced: settled::Synced,
    /// Failed attempts in a row, per retried thing (see [`backoff`]).
    retries: HashMap<Retry, Backoff>,
    /// Whether the `out_of_sync` gauge counts this entry.
    counted_out_of_sync: bool,
}

impl Entry {
    /// Whether any watch still shows something of this Agent.
    fn is_empty(&self) -> bool {
        self.agent.is_none() && self.versions.is_empty() && self.rollbacks.is_empty() && self.channels.is_empty()
    }
}

/// A watched kind: which entries an object belongs to, and its part of each.
pub trait Indexed: Sized {
    type Part: Default;
    const KIND: Kind;

    /// This kind's part of an entry.
    fn part(entry: &mut Entry) -> &mut Self::Part;

    /// This kind's relist under way, if one is.
    fn relist(relists: &mut Relists) -> &mut Option<HashMap<AgentKey, Self::Part>>;

    /// The object, as its watch shows it now, into the parts it belongs to: the one rule for a
    /// live event and for an object of a relist.
    fn applied(&self, parts: &mut impl Parts<Self::Part>);

    /// The object, gone.
    fn deleted(&self, parts: &mut impl Parts<Self::Part>);

    /// A part, once its relist is complete.
    fn finish(_part: &mut Self::Part) {}
}

/// Access to one kind's parts, by Agent: those of the live entries, or those a relist builds.
pub trait Parts<P> {
    /// The Agent's part, made if there is none.
    fn part(&mut self, key: &AgentKey) -> &mut P;
    /// The Agent's part, if there is one.
    fn existing(&mut self, key: &AgentKey) -> Option<&mut P>;
}

/// The parts a relist builds.
impl<P: Default> Parts<P> for HashMap<AgentKey, P> {
    fn part(&mut self, key: &AgentKey) -> &mut P {
        self.entry(key.clone()).or_default()
    }

    fn existing(&mut self, key: &AgentKey) -> Option<&mut P> {
        self.get_mut(key)
    }
}

/// The live entries' parts of kind `K`, and the entries touched, to tidy after.
struct Live<'a, K> {
    inner: &'a mut Inner,
    touched: Vec<AgentKey>,
    kind: PhantomData<K>,
}

impl<K: Indexed> Parts<K::Part> for Live<'_, K> {
    fn part(&mut self, key: &AgentKey) -> &mut K::Part {
        self.touched.push(key.clone());
        K::part(self.inner.entry(key))
    }

    fn existing(&mut self, key: &AgentKey) -> Option<&mut K::Part> {
        self.touched.push(key.clone());
        self.inner.entries.get_mut(key).map(K::part)
    }
}

/// The relists under way, by kind: each kind's parts as they will be at its end.
#[derive(Default)]
pub struct Relists {
    agents: Option<HashMap<AgentKey, <crate::api::Agent as Indexed>::Part>>,
    versions: Option<HashMap<AgentKey, Vec<versions::VersionEntry>>>,
    rollbacks: Option<HashMap<AgentKey, BTreeSet<String>>>,
    channels: Option<HashMap<AgentKey, BTreeSet<String>>>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<AgentKey, Entry>,
    relists: Relists,
    /// Epochs, and the order of kept states (see [`settled`]).
    clock: u64,
    /// The entries whose sync state is kept, by age, with what their definitions weigh (see
    /// [`settled`]).
    kept: BTreeMap<u64, (AgentKey, usize)>,
    /// What the kept states' definitions weigh together.
    kept_bytes: usize,
    gauges: Gauges,
}

/// The gauges that follow the index: several indexes (one per watched namespace) add up.
#[derive(Clone, Default)]
pub struct Gauges {
    /// Entries: Agents that exist, or that a version or rollback still names.
    pub tracked: Gauge,
    /// Agents whose `InSync` condition was False when their watch last showed them.
    pub out_of_sync: Gauge,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The Agent's entry, made if there is none, with a fresh epoch.
    fn entry(&mut self, key: &AgentKey) -> &mut Entry {
        if !self.entries.contains_key(key) {
            let epoch = self.tick();
            self.entries.insert(key.clone(), Entry { synced: settled::Synced::at(epoch), ..Entry::default() });
            self.gauges.tracked.inc();
        }
        self.entries.get_mut(key).expect("made above")
    }

    /// After a change to an entry: with its Agent gone, nothing its syncs left stands for the
    /// next Agent of that name; the count of Agents out of sync follows; an empty entry leaves.
    fn tidy(&mut self, key: &AgentKey) {
        let Some(entry) = self.entries.get_mut(key) else { return };
        if entry.agent.is_none() {
            if let Some(stamp) = entry.synced.forget()
                && let Some((_, weight)) = self.kept.remove(&stamp)
            {
                self.kept_bytes -= weight;
            }
            entry.retries.retain(|retry, _| matches!(retry, Retry::Rollback(_)));
        }
        let rollbacks = &entry.rollbacks;
        entry.retries.retain(|retry, _| !matches!(retry, Retry::Rollback(name) if !rollbacks.contains(name)));
        let out_of_sync = agents::out_of_sync(entry);
        if out_of_sync != entry.counted_out_of_sync {
            entry.counted_out_of_sync = out_of_sync;
            if out_of_sync {
                self.gauges.out_of_sync.inc();
            } else {
                self.gauges.out_of_sync.dec();
            }
        }
        if entry.is_empty() {
            self.entries.remove(key);
            self.gauges.tracked.dec();
        }
    }

    /// Ends a relist of `K`: every entry's part of `K` becomes the relist's, and entries left
    /// empty leave.
    fn replace<K: Indexed>(&mut self, mut parts: HashMap<AgentKey, K::Part>) {
        parts.values_mut().for_each(K::finish);
        let mut keys: Vec<AgentKey> = self.entries.keys().cloned().collect();
        for key in &keys {
            *K::part(self.entries.get_mut(key).expect("listed above")) = parts.remove(key).unwrap_or_default();
        }
        for (key, part) in parts {
            *K::part(self.entry(&key)) = part;
            keys.push(key);
        }
        for key in &keys {
            self.tidy(key);
        }
        self.entries.shrink_to_fit();
    }
}

pub struct AgentIndex {
    inner: Mutex<Inner>,
    /// The kinds whose first full list is in.
    listed: watch::Sender<BTreeSet<Kind>>,
    /// Off, syncs keep no state to resume from and no echo is expected (see [`settled`]).
    fast_paths: bool,
}

impl AgentIndex {
    pub fn new(fast_paths: bool, gauges: Gauges) -> Self {
        let inner = Inner { gauges, ..Inner::default() };
        Self { inner: Mutex::new(inner), listed: watch::channel(BTreeSet::new()).0, fast_paths }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows one event of the watch of `K`: the one path of every kind's events and relists.
    pub fn apply<K: Indexed>(&self, event: &watcher::Event<K>) {
        let mut inner = self.lock();
        match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                let mut live = Live::<K> { inner: &mut inner, touched: Vec::new(), kind: PhantomData };
                if matches!(event, watcher::Event::Apply(_)) {
                    object.applied(&mut live);
                } else {
                    object.deleted(&mut live);
                }
                for key in std::mem::take(&mut live.touched) {
                    live.inner.tidy(&key);
                }
            }
            watcher::Event::Init => *K::relist(&mut inner.relists) = Some(HashMap::new()),
            // As a store does, a relist's objects are gathered even without its `Init`.
            watcher::Event::InitApply(object) => {
                object.applied(K::relist(&mut inner.relists).get_or_insert_with(HashMap::new));
            }
            watcher::Event::InitDone => {
                let parts = K::relist(&mut inner.relists).take().unwrap_or_default();
                inner.replace::<K>(parts);
                drop(inner);
                self.listed.send_modify(|listed| {
                    listed.insert(K::KIND);
                });
            }
        }
    }

    /// Waits until the first full list of `kind` is in: before it, the index knows nothing of
    /// that kind.
    pub async fn listed(&self, kind: Kind) {
        // Err only if the sender is gone, which it is not while `self` holds it.
        let _ = self.listed.subscribe().wait_for(|listed| listed.contains(&kind)).await;
    }

    /// How many Agents it keeps an entry for (what its `tracked` gauge adds).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }

    /// How many Agents' `InSync` condition was False when their watch last showed them (what
    /// its `out_of_sync` gauge adds).
    #[cfg(test)]
    pub fn out_of_sync(&self) -> usize {
        self.lock().entries.values().filter(|e| e.counted_out_of_sync).count()
    }

    /// The delay before retrying `what` of the Agent after one more failure (see [`Backoff`]).
    pub fn next_retry(&self, agent: &AgentKey, what: Retry) -> Duration {
        let schedule = what.schedule();
        let mut inner = self.lock();
        match inner.entries.get_mut(agent) {
            Some(entry) => entry.retries.entry(what).or_default().next(schedule),
            // Nothing the watches show: no entry to count attempts in.
            None => Backoff::default().next(schedule),
        }
    }

    /// Forgets the failures of `what`: it succeeded.
    pub fn reset_retry(&self, agent: &AgentKey, what: &Retry) {
        if let Some(entry) = self.lock().entries.get_mut(agent) {
            entry.retries.remove(what);
        }
    }
}

/// A kind whose objects each name one Agent (rollbacks, channels), found per Agent through the
/// names the index keeps.
pub trait OfAgent: kube::Resource<DynamicType = ()> + Clone + 'static {
    fn agent_name(&self) -> &str;
    /// The names of this kind the entry keeps.
    fn names(entry: &Entry) -> &BTreeSet<String>;
}

/// A watch cache of a kind that names Agents, with each Agent's objects found through the
/// index.
pub struct AgentCache<K: OfAgent> {
    store: Store<K>,
    index: Arc<AgentIndex>,
}

impl<K: OfAgent> Clone for AgentCache<K> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), index: self.index.clone() }
    }
}

impl<K: OfAgent> AgentCache<K> {
    pub fn new(store: Store<K>, index: Arc<AgentIndex>) -> Self {
        Self { store, index }
    }

    /// The cached objects that name the Agent.
    pub fn of_agent(&self, agent: &AgentKey) -> Vec<Arc<K>> {
        let names: Vec<String> = {
            let inner = self.index.lock();
            inner.entries.get(agent).map(|e| K::names(e).iter().cloned().collect()).unwrap_or_default()
        };
        names
            .iter()
            .filter_map(|name| self.store.get(&ObjectRef::new(name).within(&agent.namespace)))
            .filter(|object| object.agent_name() == agent.name)
            .collect()
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.store.get(key)
    }

    /// The names of the objects that name the Agent, for a sync to read one by one (see
    /// `observe`); `None` until the first list of `K` is in.
    pub fn names(&self, agent: &AgentKey) -> Option<Vec<String>>
    where
        K: Indexed,
    {
        if !self.index.listed.borrow().contains(&K::KIND) {
            return None;
        }
        let inner = self.index.lock();
        Some(inner.entries.get(agent).map(|e| K::names(e).iter().cloned().collect()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests;

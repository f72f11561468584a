//! What this process knows an Agent was left as: the end state of its last sync that ended
//! cleanly. A sync that starts from it needs no reads (the Agent's next rollback starts with
//! its first write), and reconciles that are only echoes of the sync's own writes return
//! without reading anything.
//!
//! The record is trusted only while nothing this process did not write has touched the Agent's
//! versions: every such change (see [`super::echoes`]) moves the Agent's epoch, and a record
//! from another epoch is not used. Changes to the Agent and its rollbacks need no epoch: both
//! are in watch caches, and whichever of the record and the cache is newer wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::api::{Agent, AgentRollback};
use crate::plan::{Observed, phase_of};

/// Agents whose end state, with every version body, is kept in memory: the most recently
/// synced ones, which are the ones likely to see the next rollback. The rest keep only what
/// `handled` needs, so memory does not grow with the number of Agents times versions.
const KEPT_STATES: usize = 64;

/// How long a clean sync's end state stands for the Agent without a read.
const COVER_FOR: Duration = Duration::from_secs(60);

/// Namespace and name of an Agent.
type AgentKey = (String, String);

pub struct SettledAgents {
    inner: Mutex<Inner>,
    /// Off, a clean sync leaves only the fact that it ended cleanly: no state to resume from,
    /// no rollbacks it left terminal, so every sync reads and no echo is recognised here.
    resume: bool,
}

impl Default for SettledAgents {
    fn default() -> Self {
        Self::new(true)
    }
}

#[derive(Default)]
struct Inner {
    records: HashMap<AgentKey, Record>,
    /// Moved by every change to an Agent's versions that this process did not make.
    epochs: HashMap<AgentKey, u64>,
    /// Orders records by age, to drop the oldest kept states.
    clock: u64,
}

impl Inner {
    /// How many records keep their state.
    fn kept(&self) -> usize {
        self.records.values().filter(|r| r.state.is_some()).count()
    }
}

struct Record {
    epoch: u64,
    /// When the sync ended: `covers` trusts only recent records, so that the Agent
    /// controller's periodic re-check still reads.
    ended: Instant,
    stamp: u64,
    /// The resourceVersion at which the sync left each of the Agent's rollbacks terminal, by uid.
    terminal: HashMap<String, u64>,
    state: Option<Arc<Observed>>,
}

/// What a sync may start from.
pub enum Start {
    /// The last sync failed, or none ran in this process: read with a consistent list.
    Unsettled,
    /// The last sync ended cleanly; its end state, if kept and still current.
    Settled(Option<Arc<Observed>>),
}

/// An object's resourceVersion as a number: etcd revisions, which grow with every write (the
/// same assumption that orders rollbacks by creation).
pub fn revision<K: kube::Resource>(object: &K) -> Option<u64> {
    object.meta().resource_version.as_deref()?.parse().ok()
}

fn key(namespace: &str, name: &str) -> AgentKey {
    (namespace.to_string(), name.to_string())
}

impl SettledAgents {
    pub fn new(resume: bool) -> Self {
        Self { inner: Mutex::default(), resume }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The Agent's current versions epoch, to hand back to [`Self::settle`].
    pub fn epoch(&self, namespace: &str, name: &str) -> u64 {
        self.lock().epochs.get(&key(namespace, name)).copied().unwrap_or(0)
    }

    /// Notes a change to the Agent's versions that this process did not make.
    pub fn versions_changed(&self, namespace: &str, name: &str) {
        let mut inner = self.lock();
        *inner.epochs.entry(key(namespace, name)).or_insert(0) += 1;
    }

    /// Takes the record for a sync that starts: a sync that then fails leaves the Agent
    /// unsettled.
    pub fn take(&self, namespace: &str, name: &str) -> Start {
        let mut inner = self.lock();
        let key = key(namespace, name);
        let epoch = inner.epochs.get(&key).copied().unwrap_or(0);
        let Some(record) = inner.records.remove(&key) else { return Start::Unsettled };
        Start::Settled(record.state.filter(|_| record.epoch == epoch))
    }

    /// Records the state a sync ended with; `epoch` is the Agent's epoch when the sync started.
    pub fn settle(&self, namespace: &str, name: &str, epoch: u64, mut state: Observed) {
        if !self.resume {
            let record = Record { epoch, ended: Instant::now(), stamp: 0, terminal: HashMap::new(), state: None };
            self.lock().records.insert(key(namespace, name), record);
            return;
        }
        let terminal = state
            .rollbacks
            .iter()
            .filter(|r| phase_of(r).is_some_and(|p| p.is_terminal()))
            .filter_map(|r| Some((r.metadata.uid.clone()?, revision(r)?)))
            .collect();
        state.confirmed.clear();
        // Managed fields are the bulk of a small object's metadata, and no decision reads them.
        for meta in state
            .agent
            .iter_mut()
            .map(|a| &mut a.metadata)
            .chain(state.versions.iter_mut().chain(state.foreign_versions.iter_mut()).map(|v| &mut v.metadata))
        {
            meta.managed_fields = None;
        }
        for rollback in &mut state.rollbacks {
            rollback.metadata.managed_fields = None;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let stamp = inner.clock;
        inner.records.insert(
            key(namespace, name),
            Record { epoch, ended: Instant::now(), stamp, terminal, state: Some(Arc::new(state)) },
        );
        if inner.kept() > KEPT_STATES {
            let oldest = inner.records.values_mut().filter(|r| r.state.is_some()).min_by_key(|r| r.stamp);
            if let Some(oldest) = oldest {
                oldest.state = None;
            }
        }
    }

    /// Forgets the records and epochs of the Agents `keep` says no, unless a sync of theirs
    /// runs (`syncing`): it holds an epoch, which must not go back to where it started. Holding
    /// this lock while asking means no sync can take an epoch meanwhile.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool, syncing: impl Fn(&str, &str) -> bool) {
        let mut inner = self.lock();
        let stays = |(ns, name): &AgentKey| keep(ns, name) || syncing(ns, name);
        inner.records.retain(|key, _| stays(key));
        inner.epochs.retain(|key, _| stays(key));
    }

    /// How many Agents it keeps anything for.
    pub fn tracked(&self) -> usize {
        let inner = self.lock();
        inner.records.keys().chain(inner.epochs.keys()).collect::<std::collections::HashSet<_>>().len()
    }

    /// Forgets the Agent's record: the next sync reads with a consistent list.
    pub fn unsettle(&self, namespace: &str, name: &str) {
        self.lock().records.remove(&key(namespace, name));
    }

    /// Whether the last clean sync of the rollback's Agent left it terminal at this
    /// resourceVersion or a newer one: the watch cache has yet to show the end.
    pub fn handled(&self, namespace: &str, rollback: &AgentRollback) -> bool {
        let (Some(uid), Some(seen)) = (rollback.metadata.uid.as_deref(), revision(rollback)) else { return false };
        let inner = self.lock();
        inner
            .records
            .get(&key(namespace, &rollback.spec.agent_name))
            .and_then(|r| r.terminal.get(uid))
            .is_some_and(|handled| *handled >= seen)
    }

    /// Whether `agent` (from the watch cache) is no newer than the current end state of the
    /// Agent's last clean sync, which left nothing to do, and that sync ended recently.
    pub fn covers(&self, agent: &Agent) -> bool {
        let (Some(namespace), Some(seen)) = (agent.namespace(), revision(agent)) else { return false };
        let inner = self.lock();
        let key = key(&namespace, &agent.name_any());
        let epoch = inner.epochs.get(&key).copied().unwrap_or(0);
        inner
            .records
            .get(&key)
            .filter(|r| r.epoch == epoch && r.ended.elapsed() < COVER_FOR)
            .and_then(|r| r.state.as_ref())
            .and_then(|s| s.agent.as_ref())
            .and_then(revision)
            .is_some_and(|left| left >= seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(rv: &str) -> Agent {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "agentops.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": rv, "uid": "u"},
            "spec": {"instructions": "x"}
        }))
        .unwrap()
    }

    fn state(rv: &str) -> Observed {
        Observed::new("ns".into(), "a".into(), Some(agent(rv)), Vec::new(), Vec::new())
    }

    #[test]
    fn a_foreign_change_to_versions_voids_the_kept_state_but_not_the_settling() {
        let settled = SettledAgents::default();
        let epoch = settled.epoch("ns", "a");
        settled.settle("ns", "a", epoch, state("10"));
        assert!(settled.covers(&agent("10")));
        assert!(!settled.covers(&agent("11")), "a newer Agent is not covered");
        settled.versions_changed("ns", "a");
        assert!(!settled.covers(&agent("10")));
        assert!(matches!(settled.take("ns", "a"), Start::Settled(None)));
        assert!(matches!(settled.take("ns", "a"), Start::Unsettled), "taking forgets");
    }

    #[test]
    fn a_change_during_the_sync_voids_the_state_it_ends_with() {
        let settled = SettledAgents::default();
        let epoch = settled.epoch("ns", "a");
        settled.versions_changed("ns", "a");
        settled.settle("ns", "a", epoch, state("10"));
        assert!(matches!(settled.take("ns", "a"), Start::Settled(None)));
    }

    #[test]
    fn agents_that_are_gone_are_forgotten_unless_a_sync_of_theirs_runs() {
        let settled = SettledAgents::default();
        for name in ["kept", "gone", "busy"] {
            settled.settle("ns", name, 0, state("1"));
            settled.versions_changed("ns", name);
        }
        settled.retain(|_, name| name == "kept", |_, name| name == "busy");
        assert_eq!(settled.tracked(), 2);
        assert!(matches!(settled.take("ns", "gone"), Start::Unsettled));
        assert_eq!(settled.epoch("ns", "busy"), 1, "a running sync's epoch stays");
    }

    #[test]
    fn only_the_most_recent_states_are_kept() {
        let settled = SettledAgents::default();
        for i in 0..KEPT_STATES + 10 {
            settled.settle("ns", &format!("a{i}"), 0, state("1"));
        }
        assert_eq!(settled.lock().kept(), KEPT_STATES);
        assert!(matches!(settled.take("ns", "a0"), Start::Settled(None)), "the oldest state was dropped");
        let newest = format!("a{}", KEPT_STATES + 9);
        assert!(matches!(settled.take("ns", &newest), Start::Settled(Some(_))));
        assert_eq!(settled.lock().kept(), KEPT_STATES - 1);
    }
}

/// The fast path against the contract: syncs that resume from the kept state, while versions
/// are deleted by hand and the watch's notice of it comes late, during a sync, or never (until
/// a relist, which wakes every Agent that has versions and so moves its epoch).
#[cfg(test)]
mod resume_model {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::{SettledAgents, Start};
    use crate::controller::observe::resume;
    use crate::plan::sim::{Cluster, Op, Reference, check_invariants, content, op, submit};

    #[derive(Clone, Copy, Debug)]
    enum Notice {
        /// Delivered before the sync this many rollbacks later starts.
        Before(usize),
        /// Delivered while the next sync runs, after it took the kept state.
        During,
        /// Never delivered; the next relist moves the epoch.
        Lost,
    }

    #[derive(Clone, Debug)]
    enum Change {
        Rollback(Op),
        DeleteByHand { pick: usize, notice: Notice },
        Relist,
    }

    fn change() -> impl Strategy<Value = Change> {
        let notice = prop_oneof![(0usize..3).prop_map(Notice::Before), Just(Notice::During), Just(Notice::Lost)];
        prop_oneof![
            5 => op().prop_filter("rollbacks", |o| matches!(o, Op::Rollback { .. })).prop_map(Change::Rollback),
            2 => (any::<usize>(), notice).prop_map(|(pick, notice)| Change::DeleteByHand { pick, notice }),
            1 => Just(Change::Relist),
        ]
    }

    /// One process's syncs of the model's Agent, as `sync::sync_agent` makes them: from the
    /// kept state where the record allows (merged with the caches by `observe::resume`), else
    /// from a fresh read. The caches are current; the notices are what come late.
    struct Process {
        settled: SettledAgents,
        /// Notices to deliver, by the number of syncs still to start first.
        due: Vec<usize>,
        during: usize,
        lost: usize,
    }

    impl Process {
        fn notice(&self) {
            self.settled.versions_changed("ns", "a");
        }

        /// Whether the sync read the cluster (and saw every change made so far).
        fn sync(&mut self, cluster: &mut Cluster) -> bool {
            let arrived = self.due.iter().filter(|d| **d == 0).count();
            self.due.retain(|d| *d > 0);
            self.due.iter_mut().for_each(|d| *d -= 1);
            (0..arrived).for_each(|_| self.notice());
            let epoch = self.settled.epoch("ns", "a");
            let kept = match self.settled.take("ns", "a") {
                Start::Settled(Some(state)) => {
                    let cached: Vec<_> = cluster.rollbacks.iter().cloned().map(Arc::new).collect();
                    cluster.agent.as_ref().and_then(|agent| resume(&state, agent, cached))
                }
                _ => None,
            };
            let read = kept.is_none();
            let observed = match kept {
                Some(mut observed) => {
                    observed.config_map = cluster.config_map.as_ref().map(|(state, _)| state.clone());
                    observed
                }
                None => cluster.observe(),
            };
            (0..std::mem::take(&mut self.during)).for_each(|_| self.notice());
            let (end, observed_again) = cluster.sync_from(observed);
            self.settled.settle("ns", "a", epoch, end);
            read || observed_again
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Each rollback ends as the reference says, where a version deleted by hand counts
        /// from the first sync that read the cluster after it (until then the process acts on
        /// the history it kept, whose writes are all still valid: new names, deletes on uid);
        /// once every notice is in, the cluster is the reference's and its status describes it.
        #[test]
        fn resumed_syncs_end_as_the_reference_with_late_or_lost_notices(
            setup in proptest::collection::vec(0u8..6, 2..6),
            changes in proptest::collection::vec(change(), 1..20),
            limit in 3i32..8,
        ) {
            let mut cluster = Cluster::new(content(0), limit);
            let mut reference = Reference::new(content(0), limit);
            let mut process = Process { settled: SettledAgents::default(), due: Vec::new(), during: 0, lost: 0 };
            process.sync(&mut cluster);
            for d in setup {
                cluster.edit(Some(content(d)), None);
                reference.edit(Some(content(d)), None);
                process.sync(&mut cluster);
            }
            // Deleted by hand, not yet seen by a sync that read the cluster.
            let mut unseen: Vec<i64> = Vec::new();
            for (i, change) in changes.iter().enumerate() {
                match change {
                    Change::DeleteByHand { pick, notice } => {
                        // Never the active version: which number the next version gets then
                        // depends on whether the Agent's status was written in between (an
                        // end-to-end test covers that case).
                        let mut numbers: Vec<i64> = cluster.history().iter().map(|(n, _)| *n).collect();
                        numbers.pop();
                        let Some(number) = numbers.get(pick % numbers.len().max(1)).copied() else { continue };
                        cluster.delete_by_hand(number);
                        unseen.push(number);
                        match notice {
                            Notice::Before(k) => process.due.push(*k),
                            Notice::During => process.during += 1,
                            Notice::Lost => process.lost += 1,
                        }
                    }
                    Change::Relist => {
                        if std::mem::take(&mut process.lost) > 0 {
                            process.notice();
                        }
                    }
                    Change::Rollback(op) => {
                        let name = format!("rb-{i:02}");
                        submit(&mut cluster, op, &name);
                        if process.sync(&mut cluster) {
                            for number in unseen.drain(..) {
                                // A hand deletion the kept history outlived, of what has since
                                // become the active version there: the case set aside above.
                                prop_assume!(number != reference.active());
                                reference.delete_by_hand(number);
                            }
                        }
                        let want = reference.rollback(op);
                        prop_assert_eq!(cluster.outcome(&name), want, "rollback {} {:?}", i, op);
                        // A version the kept history popped or pruned meanwhile is gone in the
                        // reference too: a later version of that number (a Pop frees it) is
                        // another one, which the hand deletion never touched.
                        let kept: Vec<i64> = reference.history().iter().map(|(n, _)| *n).collect();
                        unseen.retain(|number| kept.contains(number));
                    }
                }
            }
            // A relist at last: every notice is in.
            process.notice();
            prop_assert!(process.sync(&mut cluster), "a moved epoch makes the sync read");
            for number in unseen.drain(..) {
                prop_assume!(number != reference.active());
                reference.delete_by_hand(number);
            }
            check_invariants(&cluster)?;
            prop_assert_eq!(cluster.history(), reference.history());
        }
    }

    /// The path the property test is about is taken: a rollback after a hand deletion whose
    /// notice is late resumes from the kept history, and acts as if the deletion came after it.
    #[test]
    fn a_late_notice_means_a_resumed_sync_on_the_kept_history() {
        let mut cluster = Cluster::new(content(0), 5);
        let mut process = Process { settled: SettledAgents::default(), due: Vec::new(), during: 0, lost: 0 };
        process.sync(&mut cluster);
        for d in 1..=3 {
            cluster.edit(Some(content(d)), None);
            process.sync(&mut cluster);
        }
        cluster.delete_by_hand(2);
        process.due.push(1);
        let restore = Op::Rollback { strategy: crate::api::RollbackStrategy::Restore, target: Some(2), expected: None };
        submit(&mut cluster, &restore, "rb");
        assert!(!process.sync(&mut cluster), "resumed from the kept state");
        assert_eq!(cluster.outcome("rb"), crate::plan::sim::Outcome::Succeeded(5));
        let numbers: Vec<i64> = cluster.history().iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 3, 4, 5], "version 5 copies the kept version 2");
        assert!(process.sync(&mut cluster), "the notice arrived: the next sync reads");
        check_invariants(&cluster).expect("consistent once read");
    }
}

//! What this process's syncs left of each Agent: the end state of its last sync that ended
//! cleanly, and the echoes of its own version writes still to come. A sync that starts from the
//! end state needs no reads (the Agent's next rollback starts with its first write), and
//! reconciles that are only echoes of the sync's own writes return without reading anything.
//!
//! The end state is trusted only while nothing this process did not write has touched the
//! Agent's versions: every version event that is not the echo of one of its own writes moves
//! the Agent's epoch, and a state from another epoch is not used. A write is expected before it
//! is sent, because its watch event can arrive before its answer; it is forgotten if the write
//! fails. Changes to the Agent and its rollbacks need no epoch: both are in watch caches, and
//! whichever of the state and the cache is newer wins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::{AgentIndex, AgentKey, Inner};
use crate::api::{Agent, AgentRollback};
use crate::plan::{Observed, phase_of, revision};

/// Agents whose end state, with every version body, is kept in memory: the most recently
/// synced ones, which are the ones likely to see the next rollback. The rest keep only what
/// `handled` needs, so memory does not grow with the number of Agents times versions.
pub(super) const KEPT_STATES: usize = 64;

/// What the kept states' definitions may weigh together, as JSON. Definitions of up to 320 KiB
/// and ten versions an Agent would make 64 states 200 MiB; within this bound such Agents keep
/// 15 states, and the kept states stay well within the chart's memory limit whatever the
/// definitions' size.
pub(super) const KEPT_BYTES: usize = 48 << 20;

/// How long a clean sync's end state stands for the Agent without a read.
const COVER_FOR: Duration = Duration::from_secs(60);

/// Echoes expected of one Agent at most: one lost to a watch restart must not stay for ever.
const MAX_ECHOES: usize = 64;
/// Age past which an echo is dropped once the Agent has `MAX_ECHOES`.
const ECHO_AGE: Duration = Duration::from_secs(60);

/// An Agent's part of the index that its syncs write.
#[derive(Default)]
pub struct Synced {
    /// Moved by every change to the Agent's versions that this process did not make.
    pub(super) epoch: u64,
    record: Option<Record>,
    echoes: Vec<(Echo, Instant)>,
}

impl Synced {
    /// A new entry's, at a fresh epoch.
    pub(super) fn at(epoch: u64) -> Self {
        Self { epoch, ..Self::default() }
    }

    /// The stamp of its kept state, if it keeps one.
    pub(super) fn kept_stamp(&self) -> Option<u64> {
        self.record.as_ref().filter(|r| r.state.is_some()).map(|r| r.stamp)
    }

    /// Whether a version write of this process has yet to show on the versions watch.
    pub(super) fn awaits_echoes(&self) -> bool {
        !self.echoes.is_empty()
    }

    /// Forgets what the syncs left; the stamp of the state it kept, if any.
    pub(super) fn forget(&mut self) -> Option<u64> {
        let stamp = self.kept_stamp();
        self.record = None;
        self.echoes.clear();
        stamp
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

/// What the definitions a state holds weigh, as JSON: its versions' and its Pops' snapshots.
fn weight(state: &Observed) -> usize {
    struct Counted(usize);
    impl std::io::Write for Counted {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let versions = state.versions.iter().chain(&state.foreign_versions).map(|v| &v.spec.snapshot);
    let popped = state.rollbacks.iter().filter_map(|r| r.status.as_ref()?.popped_snapshot.as_ref());
    let mut counted = Counted(0);
    for definition in versions.chain(popped) {
        // Writing to a counter cannot fail.
        let _ = serde_json::to_writer(&mut counted, definition);
    }
    counted.0
}

/// What a sync may start from.
pub enum Start {
    /// The last sync failed, or none ran in this process: read everything.
    Unsettled,
    /// The last sync ended cleanly; its end state, if kept and still current.
    Settled(Option<Arc<Observed>>),
}

/// A version write of this process, expected back on the versions watch.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Echo {
    /// A create of the version of this name.
    Created { name: String },
    /// A delete of the version with this uid.
    Deleted { uid: String },
}

impl Inner {
    /// No longer counts the state of this stamp as kept.
    fn unkeep(&mut self, stamp: u64) -> Option<AgentKey> {
        let (key, weight) = self.kept.remove(&stamp)?;
        self.kept_bytes -= weight;
        Some(key)
    }

    /// Drops the kept state of the entry with this stamp, if it still keeps it.
    fn drop_kept(&mut self, stamp: u64) {
        let Some(key) = self.unkeep(stamp) else { return };
        if let Some(record) = self.entries.get_mut(&key).and_then(|e| e.synced.record.as_mut())
            && record.stamp == stamp
        {
            record.state = None;
        }
    }

    fn take_record(&mut self, agent: &AgentKey) -> Option<Record> {
        let record = self.entries.get_mut(agent)?.synced.record.take()?;
        if record.state.is_some() {
            self.unkeep(record.stamp);
        }
        Some(record)
    }
}

impl AgentIndex {
    /// The Agent's current versions epoch, to hand back to [`Self::settle`].
    pub fn epoch(&self, agent: &AgentKey) -> u64 {
        self.lock().entries.get(agent).map_or(0, |e| e.synced.epoch)
    }

    /// Takes the record for a sync that starts: a sync that then fails leaves the Agent
    /// unsettled.
    pub fn take(&self, agent: &AgentKey) -> Start {
        let mut inner = self.lock();
        let epoch = inner.entries.get(agent).map_or(0, |e| e.synced.epoch);
        let Some(record) = inner.take_record(agent) else { return Start::Unsettled };
        Start::Settled(record.state.filter(|_| record.epoch == epoch))
    }

    /// Records the state a sync ended with; `epoch` is the Agent's epoch when the sync started.
    /// Kept only for an Agent the watches show: what is kept leaves with its entry.
    pub fn settle(&self, agent: &AgentKey, epoch: u64, mut state: Observed) {
        if !self.fast_paths {
            let mut inner = self.lock();
            if let Some(entry) = inner.entries.get_mut(agent).filter(|e| e.agent.is_some()) {
                let record = Record { epoch, ended: Instant::now(), stamp: 0, terminal: HashMap::new(), state: None };
                entry.synced.record = Some(record);
            }
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
        let weight = weight(&state);
        let mut inner = self.lock();
        if inner.entries.get(agent).is_none_or(|e| e.agent.is_none()) {
            return;
        }
        let stamp = inner.tick();
        inner.take_record(agent);
        let record = Record { epoch, ended: Instant::now(), stamp, terminal, state: Some(Arc::new(state)) };
        inner.entries.get_mut(agent).expect("present above").synced.record = Some(record);
        inner.kept.insert(stamp, (agent.clone(), weight));
        inner.kept_bytes += weight;
        while inner.kept.len() > KEPT_STATES || (inner.kept_bytes > KEPT_BYTES && inner.kept.len() > 1) {
            let oldest = *inner.kept.keys().next().expect("more than one");
            inner.drop_kept(oldest);
        }
    }

    /// Forgets the Agent's record: the next sync reads everything.
    pub fn unsettle(&self, agent: &AgentKey) {
        self.lock().take_record(agent);
    }

    /// Whether the last clean sync of the rollback's Agent left it terminal at this
    /// resourceVersion or a newer one: the watch cache has yet to show the end.
    pub fn handled(&self, rollback: &AgentRollback) -> bool {
        let (Some(uid), Some(seen)) = (rollback.metadata.uid.as_deref(), revision(rollback)) else { return false };
        let agent =
            AgentKey { namespace: rollback.namespace().unwrap_or_default(), name: rollback.spec.agent_name.clone() };
        let inner = self.lock();
        inner
            .entries
            .get(&agent)
            .and_then(|e| e.synced.record.as_ref())
            .and_then(|r| r.terminal.get(uid))
            .is_some_and(|handled| *handled >= seen)
    }

    /// Whether `agent` (from the watch cache) is no newer than the current end state of the
    /// Agent's last clean sync, which left nothing to do, and that sync ended recently.
    pub fn covers(&self, agent: &Agent) -> bool {
        let (Some(namespace), Some(seen)) = (agent.namespace(), revision(agent)) else { return false };
        let key = AgentKey { namespace, name: agent.name_any() };
        let inner = self.lock();
        let Some(synced) = inner.entries.get(&key).map(|e| &e.synced) else { return false };
        synced
            .record
            .as_ref()
            .filter(|r| r.epoch == synced.epoch && r.ended.elapsed() < COVER_FOR)
            .and_then(|r| r.state.as_ref())
            .and_then(|s| s.agent.as_ref())
            .and_then(revision)
            .is_some_and(|left| left >= seen)
    }

    /// Expects the echo of a version write of the Agent's sync, before it is sent.
    pub fn expect_echo(&self, agent: &AgentKey, echo: Echo) {
        if !self.fast_paths {
            return;
        }
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(agent) else { return };
        let echoes = &mut entry.synced.echoes;
        if echoes.len() >= MAX_ECHOES {
            echoes.retain(|(_, at)| at.elapsed() < ECHO_AGE);
        }
        echoes.push((echo, Instant::now()));
    }

    /// Forgets an expected echo: its write failed.
    pub fn forget_echo(&self, agent: &AgentKey, echo: &Echo) {
        if let Some(entry) = self.lock().entries.get_mut(agent) {
            entry.synced.echoes.retain(|(e, _)| e != echo);
        }
    }

    /// The Agent a version event (its metadata) should wake: its owner, unless the event is
    /// the echo of one of this process's writes (each expected echo matches once). Any other
    /// event is a change by someone else, and moves the owner's epoch.
    pub fn wakes(&self, version: &impl ResourceExt) -> Option<ObjectRef<Agent>> {
        let namespace = version.namespace()?;
        let owner = version.owner_references().iter().find(|o| o.kind == "Agent")?.name.clone();
        let key = AgentKey { namespace, name: owner };
        let mut inner = self.lock();
        let epoch = inner.tick();
        if let Some(entry) = inner.entries.get_mut(&key) {
            let echoes = &mut entry.synced.echoes;
            let deleted = version.uid().map(|uid| Echo::Deleted { uid });
            let created = Echo::Created { name: version.name_any() };
            let echo = echoes.iter().position(|(e, _)| Some(e) == deleted.as_ref() || *e == created);
            if let Some(echo) = echo {
                echoes.remove(echo);
                return None;
            }
            entry.synced.epoch = epoch;
        }
        Some(ObjectRef::<Agent>::new(&key.name).within(&key.namespace))
    }
}

/// The fast path against the contract: syncs that resume from the kept state, while versions
/// are deleted by hand and the watch's notice of it comes late, during a sync, or never (until
/// a relist, which wakes every Agent that has versions and so moves its epoch).
#[cfg(test)]
mod resume_model {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::Start;
    use crate::controller::index::AgentIndex;
    use crate::controller::index::tests::{foreign_version, key, with_agent};
    use crate::controller::observe::resume;
    use crate::plan::sim::{Cluster, Op, Rules, check_invariants, content, expected, op, submit};

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
        settled: AgentIndex,
        /// Notices to deliver, by the number of syncs still to start first.
        due: Vec<usize>,
        during: usize,
        lost: usize,
    }

    impl Process {
        fn notice(&self) {
            assert!(self.settled.wakes(&foreign_version("a")).is_some(), "not an echo");
        }

        /// Whether the sync read the cluster (and saw every change made so far).
        fn sync(&mut self, cluster: &mut Cluster) -> bool {
            let arrived = self.due.iter().filter(|d| **d == 0).count();
            self.due.retain(|d| *d > 0);
            self.due.iter_mut().for_each(|d| *d -= 1);
            (0..arrived).for_each(|_| self.notice());
            let epoch = self.settled.epoch(&key("a"));
            let kept = match self.settled.take(&key("a")) {
                Start::Settled(Some(state)) => {
                    let cached: Vec<_> = cluster.rollbacks.iter().cloned().map(Arc::new).collect();
                    cluster.agent.as_ref().and_then(|agent| resume(Arc::unwrap_or_clone(state), agent, cached))
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
            self.settled.settle(&key("a"), epoch, end);
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
            let mut reference = Rules::new(content(0), limit);
            let mut process = Process { settled: with_agent("a"), due: Vec::new(), during: 0, lost: 0 };
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
                        let want = expected(&mut reference, op);
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
        let mut process = Process { settled: with_agent("a"), due: Vec::new(), during: 0, lost: 0 };
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

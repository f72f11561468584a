//! Pure decisions: given what was observed of one Agent (the Agent, its versions, its
//! rollbacks), what is the next unit of work? No I/O, no clock, no randomness: `now` is a
//! parameter and the answer is data ([`Step`]s) that the controller applies in order.
//!
//! Each call to [`sync::decide`] returns one unit of progress (publish a version, start or
//! continue or finish one rollback, prune history, refresh status). The controller applies it,
//! folds the API server's answers back into [`Observed`], and asks again until the answer is
//! empty. Every unit is safe to cut short at any step: the next observation shows what was
//! done and the decision carries on from there.

pub mod analysis;
pub mod automatic;
pub mod channel;
pub mod checks;
pub mod delivery;
pub mod driver;
pub mod durable;
pub mod evaluation;
pub mod hash;
pub mod history;
pub mod in_sync;
pub mod moves;
pub mod popped;
pub mod protection;
pub mod publish;
pub mod rollback;
pub mod rollout;
pub mod status;
pub mod sync;

#[cfg(test)]
pub(crate) mod sim;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::{Resource, ResourceExt};

use crate::api::conditions::{HasConditions, STALLED, reasons};
use crate::api::{
    Agent, AgentDefinition, AgentRollback, AgentRollbackStatus, AgentStatus, AgentVersion, DeliveryStatus,
    LastRollback, RollbackPhase, WorkloadRef,
};
use channel::ChannelObserved;
use delivery::{ConfigMapState, Held, Recipient, WorkloadState};
use durable::{AgentMark, Handled, RollbackRecord};

pub use rollback::FailureReason;

/// What a step leaves of an Agent's versions.
pub struct VersionsAfter<'a> {
    /// The newest, which is the active one.
    pub newest: Option<&'a AgentVersion>,
    pub count: i64,
    /// See [`hash::versions_digest`].
    pub digest: String,
}

/// What a step changes of an Agent's status; see [`Observed::agent_status`].
pub struct StatusChange<'a> {
    pub versions: VersionsAfter<'a>,
    /// The spec state the step handled, if it handled one.
    pub handled: Option<Handled>,
    /// The rollback that left the active version, if the step learned of one.
    pub last_rollback: Option<LastRollback>,
    /// What the runtime has of the active version, if the step looked; else what the status
    /// says stays.
    pub delivery_report: Option<Option<DeliveryStatus>>,
    /// Why the Agent stays busy after the step (a publish or rollbacks still to run).
    pub busy: Option<&'a str>,
    pub delivery: &'a delivery::DeliveryState,
}

/// Everything one decision needs to know about one Agent, as last read or written.
#[derive(Clone, Debug)]
pub struct Observed {
    pub namespace: String,
    pub agent_name: String,
    /// `None` when no Agent of that name exists.
    pub agent: Option<Agent>,
    /// This Agent's versions (owned by its uid), sorted by version number.
    pub versions: Vec<AgentVersion>,
    /// Versions labelled with this Agent's name but owned by another uid: left over from a
    /// deleted Agent of the same name, and in the way of the names this one will use. With no
    /// Agent, its versions that wait on the operator's finalizer (see [`protection`]).
    pub foreign_versions: Vec<AgentVersion>,
    /// Every rollback that names this Agent, in any phase, with the status its record holds
    /// (see [`durable`]): the record is the truth, the status on the API server its copy.
    pub rollbacks: Vec<AgentRollback>,
    /// The Agent each rollback's record was written for, by rollback name.
    pub marks: BTreeMap<String, AgentMark>,
    /// The channel each channel rollback's record was written for, by rollback name.
    pub channel_marks: BTreeMap<String, moves::ChannelMark>,
    /// Channels that moves name and that the API server, read live, does not have.
    pub absent_channels: BTreeSet<String>,
    /// Rollbacks whose status on the API server is not their record's copy (lost, edited),
    /// or which have a status from before records and no record yet.
    pub unsynced: BTreeSet<String>,
    /// Rollbacks read or written on the API server during this sync, as opposed to taken from
    /// the watch cache, which may lag. Only these are resumed.
    pub confirmed: BTreeSet<String>,
    /// Whether the rollbacks were listed from the API server during this sync, so none the
    /// watch cache has yet to show is missing.
    pub rollbacks_listed: bool,
    /// Whether the promotions were listed from the API server during this sync (see
    /// `moves`: two caches that lag apart could otherwise show a newer move of one kind before
    /// an older one of the other).
    pub promotions_listed: bool,
    /// The ConfigMap of the delivery ConfigMap's name, if one exists.
    pub config_map: Option<ConfigMapState>,
    /// The workloads of `spec.delivery.restart` that were read.
    pub workloads: Vec<WorkloadState>,
    /// The Agent's channels, by name, with what was observed of their delivery.
    pub channels: Vec<ChannelObserved>,
    /// The promotions of the Agent's channels, with the statuses their records hold.
    pub promotions: moves::Promotions,
    /// Versions whose create the API server refused during this sync with an answer no retry
    /// changes (see [`RefusedVersion`]).
    pub refused: Vec<RefusedVersion>,
    /// Where a Pop keeps the snapshot it deletes (see [`popped`]), as learnt during this sync:
    /// the ConfigMap of each rollback named here holds it.
    pub popped_kept: BTreeSet<String>,
    /// Pops that could not keep their snapshot (the ConfigMap's name is taken by one not
    /// theirs, or the API server refused it): why. They delete nothing.
    pub popped_refused: BTreeMap<String, String>,
    /// Pops whose status is to show a snapshot found neither on their version (deleted) nor in
    /// their status (lost): their ConfigMap is to be read back.
    pub popped_unread: BTreeSet<String>,
    /// The snapshots read back from the Pops' ConfigMaps; `None`: there was none to be found.
    pub popped_read: BTreeMap<String, Option<AgentDefinition>>,
    /// The size of the Agent's definition as canonical JSON, and the generation it was
    /// measured at (measuring is costly; the spec changes only with the generation).
    definition_size: Option<(Option<i64>, usize)>,
}

/// A rollback of a resumed state (see [`Observed::resumed`]).
pub enum Resumed {
    /// As the state adopted it.
    Kept(AgentRollback),
    /// As read since, to be adopted.
    Read(AgentRollback),
}

impl Observed {
    /// Sorts and classifies what was read.
    pub fn new(
        namespace: String,
        agent_name: String,
        agent: Option<Agent>,
        versions: Vec<AgentVersion>,
        rollbacks: Vec<AgentRollback>,
    ) -> Self {
        let uid = agent.as_ref().and_then(|a| a.metadata.uid.clone());
        let (mut versions, foreign_versions): (Vec<_>, Vec<_>) =
            versions.into_iter().partition(|v| uid.is_some() && owner_uid(v) == uid.as_deref());
        versions.sort_by_key(|v| v.spec.version);
        // Without an Agent, its versions go with it (owner references); only those a channel kept
        // wait on the operator, to release its finalizer (see `protection`).
        let foreign_versions = if agent.is_some() {
            foreign_versions
        } else {
            foreign_versions.into_iter().filter(protection::is_protected).collect()
        };
        let mut observed = Self {
            namespace,
            agent_name,
            agent,
            versions,
            foreign_versions,
            rollbacks: Vec::with_capacity(rollbacks.len()),
            marks: BTreeMap::new(),
            channel_marks: BTreeMap::new(),
            absent_channels: BTreeSet::new(),
            unsynced: BTreeSet::new(),
            confirmed: BTreeSet::new(),
            rollbacks_listed: false,
            promotions_listed: false,
            config_map: None,
            workloads: Vec::new(),
            channels: Vec::new(),
            promotions: moves::Promotions::default(),
            refused: Vec::new(),
            popped_kept: BTreeSet::new(),
            popped_refused: BTreeMap::new(),
            popped_unread: BTreeSet::new(),
            popped_read: BTreeMap::new(),
            definition_size: None,
        };
        observed.measure_definition();
        for rollback in rollbacks {
            let rollback = observed.adopt(rollback);
            observed.rollbacks.push(rollback);
        }
        observed
    }

    /// The state `left` (a sync's end) with `agent` and these rollbacks: each either kept as
    /// `left` adopted it, its record not read again (a long-lived Agent has thousands of
    /// finished rollbacks, and reading their records again was most of each sync's time), or
    /// newer and adopted now. What `left` noted of rollbacks that are gone is dropped.
    pub fn resumed(left: &mut Observed, agent: Agent, rollbacks: Vec<Resumed>) -> Self {
        let versions = std::mem::take(&mut left.versions).into_iter().chain(std::mem::take(&mut left.foreign_versions));
        let namespace = left.namespace.clone();
        let mut observed = Self::new(namespace, left.agent_name.clone(), Some(agent), versions.collect(), Vec::new());
        // Taken over: the state is this sync's own (see `controller::observe::resume`).
        observed.marks = std::mem::take(&mut left.marks);
        observed.channel_marks = std::mem::take(&mut left.channel_marks);
        observed.unsynced = std::mem::take(&mut left.unsynced);
        observed.popped_unread = std::mem::take(&mut left.popped_unread);
        observed.popped_read = std::mem::take(&mut left.popped_read);
        observed.rollbacks.reserve(rollbacks.len());
        for rollback in rollbacks {
            let rollback = match rollback {
                Resumed::Kept(rollback) => rollback,
                Resumed::Read(rollback) => observed.adopt(rollback),
            };
            observed.rollbacks.push(rollback);
        }
        let names: std::collections::HashSet<&str> =
            observed.rollbacks.iter().filter_map(|r| r.metadata.name.as_deref()).collect();
        observed.marks.retain(|name, _| names.contains(name.as_str()));
        observed.channel_marks.retain(|name, _| names.contains(name.as_str()));
        observed.unsynced.retain(|name| names.contains(name.as_str()));
        observed.popped_unread.retain(|name| names.contains(name.as_str()));
        observed.popped_read.retain(|name, _| names.contains(name.as_str()));
        observed
    }

    /// Takes a rollback as read: its record's status replaces the one read, which is noted
    /// when it differs. A status without a record (written before records) stands for one.
    fn adopt(&mut self, mut rollback: AgentRollback) -> AgentRollback {
        let name = rollback.name_any();
        self.marks.remove(&name);
        self.channel_marks.remove(&name);
        self.unsynced.remove(&name);
        self.popped_unread.remove(&name);
        match durable::record_of(&rollback) {
            Some(mut record) => {
                self.find_popped(&name, rollback.status.as_ref(), &mut record.status);
                if rollback.status.as_ref() != Some(&record.status) {
                    self.unsynced.insert(name.clone());
                }
                if let Some(mark) = record.channel {
                    self.channel_marks.insert(name.clone(), mark);
                }
                if let Some(mark) = record.agent {
                    self.marks.insert(name, mark);
                }
                rollback.status = Some(record.status);
            }
            None if phase_of(&rollback).is_some() => {
                self.unsynced.insert(name);
            }
            None => rollback.status = None,
        }
        rollback
    }

    /// Puts back into a Pop's status, as its record holds it, the snapshot the record leaves
    /// out (see [`durable::record_text`]): from the version while it exists, else from the
    /// status read (if it is that snapshot), else as read back from the Pop's ConfigMap; or
    /// notes that the ConfigMap is to be read.
    fn find_popped(&mut self, name: &str, read: Option<&AgentRollbackStatus>, status: &mut AgentRollbackStatus) {
        let (Some(number), Some(hash), None) =
            (status.popped_version, status.popped_snapshot_hash.as_deref(), status.popped_snapshot.as_ref())
        else {
            return;
        };
        let from_version = self.version(number).filter(|v| v.spec.snapshot_hash == hash).map(|v| &v.spec.snapshot);
        let from_status = || read.and_then(|r| r.popped_snapshot.as_ref()).filter(|s| hash::snapshot_hash(s) == hash);
        if let Some(snapshot) = from_version.or_else(from_status) {
            status.popped_snapshot = Some(snapshot.clone());
            return;
        }
        match self.popped_read.get(name) {
            Some(read) => status.popped_snapshot.clone_from(read),
            // A status that is the record's in all but the snapshot was written when the
            // snapshot was nowhere to be found (its ConfigMap deleted by hand): nothing to read.
            None if read == Some(&*status) => {}
            None => {
                self.popped_unread.insert(name.to_string());
            }
        }
    }

    fn measure_definition(&mut self) {
        let Some(agent) = &self.agent else { return };
        if self.definition_size.is_some_and(|(generation, _)| generation == agent.metadata.generation) {
            return;
        }
        let size = hash::canonical_json(&agent.spec.definition).len();
        self.definition_size = Some((agent.metadata.generation, size));
    }

    /// Why the Agent's spec is not published, if it is not: its definition is too large, or
    /// the API server refused its version, in this sync or (as the Agent's status says) in an
    /// earlier one at the same generation. A status lost meanwhile is rebuilt by one more try.
    pub fn refusal(&self) -> Option<Refusal> {
        if let Some((_, size)) = self.definition_size
            && size > publish::MAX_DEFINITION_BYTES
        {
            let message = format!(
                "spec: the definition is {size} bytes as canonical JSON, more than the {} a version may hold; it is not published.",
                publish::MAX_DEFINITION_BYTES
            );
            return Some(Refusal { reason: reasons::DEFINITION_TOO_LARGE, message });
        }
        let agent = self.agent.as_ref()?;
        let generation = agent.metadata.generation;
        let refused_now = self.refused.iter().find(|r| r.rollback.is_none() && r.generation == generation);
        if let Some(refused) = refused_now {
            let message = format!(
                "The API server refused version {} of generation {}: {} It is not published until the spec changes.",
                refused.number,
                generation.unwrap_or_default(),
                refused.message
            );
            return Some(Refusal { reason: reasons::VERSION_REFUSED, message });
        }
        let status = agent.status.as_ref()?;
        status
            .condition(STALLED)
            .filter(|c| {
                c.status == "True" && c.reason == reasons::VERSION_REFUSED && c.observed_generation == generation
            })
            .map(|c| Refusal { reason: reasons::VERSION_REFUSED, message: c.message.clone() })
    }

    /// The versions as observed, for a status that changes none of them.
    pub fn versions_now(&self) -> VersionsAfter<'_> {
        VersionsAfter { newest: self.newest(), count: self.versions.len() as i64, digest: self.versions_digest() }
    }

    /// The Agent's status once a step's writes are done. Every Agent status the operator writes
    /// is built here: the status as it was, with what the step changed, its versions as the
    /// step leaves them, and the conditions that follow (refused, see [`Self::refusal`], or as
    /// [`status::agent_conditions`] says).
    pub fn agent_status(&self, agent: &Agent, change: StatusChange<'_>, now: &Time) -> AgentStatus {
        let mut status = agent.status.clone().unwrap_or_default();
        if let Some(handled) = change.handled {
            status.observed_generation = Some(handled.generation);
            status.observed_definition_hash = Some(handled.definition_hash);
        }
        if change.last_rollback.is_some() {
            status.last_rollback = change.last_rollback;
        }
        if let Some(report) = change.delivery_report {
            status.delivery = report;
        }
        let active = change.versions.newest.map(|v| &v.spec);
        status.active_version = active.map(|v| v.version);
        status.version_count = Some(change.versions.count);
        status.versions_digest = Some(change.versions.digest);

        let (existing, generation) = (&status.conditions, agent.metadata.generation);
        let refusal = self.refusal();
        let in_sync =
            in_sync::condition(agent, active, status.last_rollback.as_ref().map(|r| r.name.as_str()), refusal.as_ref());
        let active = status.active_version;
        status.conditions = match refusal {
            Some(refusal) => status::refused_conditions(existing, generation, active, &refusal, in_sync, now),
            None => {
                let state =
                    status::AgentState { generation, active, busy: change.busy, delivery: change.delivery, in_sync };
                status::agent_conditions(existing, state, now)
            }
        };
        status
    }

    /// The record a rollback write leaves: `status`, for this Agent as handled now.
    pub fn record(&self, status: AgentRollbackStatus) -> RollbackRecord {
        let agent = self
            .agent
            .as_ref()
            .and_then(|a| a.metadata.uid.clone())
            .map(|uid| AgentMark { uid, handled: self.handled() });
        RollbackRecord { status, agent, channel: None }
    }

    /// The rollback's record as it stands, to write again where its status lags.
    pub fn record_of(&self, rollback: &AgentRollback) -> RollbackRecord {
        let name = rollback.name_any();
        RollbackRecord {
            status: status_of(rollback),
            agent: self.marks.get(&name).cloned(),
            channel: self.channel_marks.get(&name).cloned(),
        }
    }

    /// Whether a rollback's record was written for this Agent (not a deleted one of its name).
    fn ran_here(&self, rollback: &AgentRollback) -> bool {
        let uid = self.agent.as_ref().and_then(|a| a.metadata.uid.as_deref());
        let name = rollback.metadata.name.as_deref().unwrap_or_default();
        uid.is_some() && self.marks.get(name).map(|m| m.uid.as_str()) == uid
    }

    /// The newest spec state of the Agent that was handled: from its status, or, when that is
    /// lost, from what its versions and rollbacks recorded (see [`durable`]).
    pub fn handled(&self) -> Option<Handled> {
        let agent = self.agent.as_ref()?;
        let status = agent.status.as_ref().and_then(|s| {
            Some(Handled { generation: s.observed_generation?, definition_hash: s.observed_definition_hash.clone()? })
        });
        let versions = self.versions.iter().filter_map(durable::handled_of);
        // No record may claim a generation the Agent has not reached.
        let reached = |h: &Handled| agent.metadata.generation.is_none_or(|g| h.generation <= g);
        // The rollbacks' newest first, by reference: a long-lived Agent has thousands.
        let rollbacks = self
            .rollbacks
            .iter()
            .filter(|r| self.ran_here(r))
            .filter_map(|r| self.marks.get(r.metadata.name.as_deref().unwrap_or_default())?.handled.as_ref())
            .filter(|h| reached(h))
            .max_by_key(|h| h.generation)
            .cloned();
        durable::newest(status.into_iter().chain(versions).filter(reached).chain(rollbacks))
    }

    /// The last rollback that succeeded on this Agent, as its records tell.
    pub fn last_rollback(&self) -> Option<LastRollback> {
        self.rollbacks
            .iter()
            .filter(|r| phase_of(r) == Some(RollbackPhase::Succeeded) && self.ran_here(r))
            .filter_map(|r| Some((r.status.as_ref()?.completion_time.as_ref()?, r)))
            .max_by(|(a, ra), (b, rb)| {
                a.0.cmp(&b.0).then_with(|| rollback::queue_key(ra).cmp(&rollback::queue_key(rb)))
            })
            .map(|(time, r)| LastRollback { name: r.name_any(), time: time.clone() })
    }

    /// The newest existing version, which is always the active one.
    pub fn newest(&self) -> Option<&AgentVersion> {
        self.versions.last()
    }

    pub fn active_number(&self) -> Option<i64> {
        self.newest().map(|v| v.spec.version)
    }

    pub fn version(&self, number: i64) -> Option<&AgentVersion> {
        self.versions.iter().find(|v| v.spec.version == number)
    }

    /// Digest of the versions as observed (see [`hash::versions_digest`]).
    pub fn versions_digest(&self) -> String {
        hash::versions_digest(self.versions.iter().map(|v| &v.spec))
    }

    pub fn version_numbers(&self) -> Vec<i64> {
        self.versions.iter().map(|v| v.spec.version).collect()
    }

    /// The number the next published version gets. After a Pop the popped number is free
    /// again; otherwise numbers only grow, even when every version was deleted by hand.
    pub fn next_version_number(&self) -> i64 {
        let newest = self.active_number().unwrap_or(0);
        let recorded = self.agent.as_ref().and_then(|a| a.status.as_ref()).and_then(|s| s.active_version).unwrap_or(0);
        newest.max(recorded) + 1
    }

    /// The Agent's rollbacks not yet terminal, in the order they must run; a channel's are its
    /// channel's moves (see `moves`).
    pub fn pending_rollbacks(&self) -> Vec<&AgentRollback> {
        let mut pending: Vec<&AgentRollback> =
            self.unfinished_rollbacks().into_iter().filter(|r| r.spec.channel.is_none()).collect();
        // Each key once: a queue can hold thousands, and a key allocates.
        pending.sort_by_cached_key(|r| rollback::queue_key(r));
        pending
    }

    /// Every rollback not yet terminal, the Agent's and its channels'.
    pub fn unfinished_rollbacks(&self) -> Vec<&AgentRollback> {
        self.rollbacks.iter().filter(|r| !phase_of(r).is_some_and(RollbackPhase::is_terminal)).collect()
    }

    pub fn rollback(&self, name: &str) -> Option<&AgentRollback> {
        // Compared in place: a long-lived Agent has thousands of rollbacks.
        self.rollbacks.iter().find(|r| r.metadata.name.as_deref() == Some(name))
    }

    /// Folds in what the API server answered to one applied step.
    pub fn fold(&mut self, applied: Applied) {
        match applied {
            Applied::VersionCreated(version) => {
                self.versions.retain(|v| v.name_any() != version.name_any());
                self.versions.push(*version);
                self.versions.sort_by_key(|v| v.spec.version);
            }
            Applied::VersionDeleted(name) => {
                self.versions.retain(|v| v.name_any() != name);
                self.foreign_versions.retain(|v| v.name_any() != name);
            }
            Applied::Agent(agent) => {
                self.agent = Some(*agent);
                self.measure_definition();
            }
            Applied::Rollback(updated) => {
                self.confirmed.insert(updated.name_any());
                let updated = self.adopt(*updated);
                match self.rollbacks.iter_mut().find(|r| r.metadata.name == updated.metadata.name) {
                    Some(slot) => *slot = updated,
                    None => self.rollbacks.push(updated),
                }
            }
            Applied::Rollbacks(listed) => {
                self.rollbacks.clear();
                self.marks.clear();
                self.channel_marks.clear();
                self.unsynced.clear();
                for rollback in listed {
                    self.confirmed.insert(rollback.name_any());
                    let rollback = self.adopt(rollback);
                    self.rollbacks.push(rollback);
                }
                self.rollbacks_listed = true;
            }
            Applied::PoppedKept(name) => {
                self.popped_kept.insert(name);
            }
            Applied::PoppedRefused(name, message) => {
                self.popped_refused.insert(name, message);
            }
            Applied::PoppedRead(name, snapshot) => {
                self.popped_unread.remove(&name);
                if snapshot.is_some() {
                    self.popped_kept.insert(name.clone());
                }
                if let Some(status) =
                    self.rollbacks.iter_mut().find(|r| r.name_any() == name).and_then(|r| r.status.as_mut())
                    && snapshot.is_some()
                {
                    status.popped_snapshot.clone_from(&snapshot);
                    self.unsynced.insert(name.clone());
                }
                self.popped_read.insert(name, snapshot);
            }
            Applied::RollbackDeleted(name) => {
                self.rollbacks.retain(|r| r.name_any() != name);
                self.marks.remove(&name);
                self.channel_marks.remove(&name);
                self.unsynced.remove(&name);
            }
            Applied::ConfigMap(Recipient::Agent, state) => self.config_map = state,
            Applied::ConfigMap(Recipient::Channel(name), state) => {
                if let Some(channel) = self.channel_mut(&name) {
                    channel.config_map = state;
                }
            }
            Applied::VersionRefused(refused) => self.refused.push(refused),
            Applied::Workload(recipient, state) => {
                let workloads = match &recipient {
                    Recipient::Agent => Some(&mut self.workloads),
                    Recipient::Channel(name) => self.channel_mut(name).map(|c| &mut c.workloads),
                };
                if let Some(workloads) = workloads {
                    match workloads.iter_mut().find(|w| w.workload == state.workload) {
                        Some(slot) => *slot = state,
                        None => workloads.push(state),
                    }
                }
            }
            Applied::Promotion(promotion) => self.promotions.fold(*promotion),
            Applied::Promotions(listed) => {
                let names: Vec<String> = self.channels.iter().map(|c| c.channel.name_any()).collect();
                self.promotions =
                    moves::Promotions::new(listed.into_iter().filter(|p| names.contains(&p.spec.channel)).collect());
                self.promotions_listed = true;
            }
            Applied::PromotionDeleted(name) => self.promotions.remove(&name),
            Applied::VersionPatched(version) => {
                if let Some(slot) = self.versions.iter_mut().find(|v| v.metadata.uid == version.metadata.uid) {
                    *slot = *version;
                }
            }
            Applied::ChannelRead(name, found) => match found {
                Some(channel) => {
                    self.absent_channels.remove(&name);
                    if self.channel_mut(&name).is_none() {
                        let observed = ChannelObserved::unobserved(*channel);
                        self.channels.push(observed);
                        self.channels.sort_by_key(|c| c.channel.name_any());
                    }
                }
                None => {
                    self.absent_channels.insert(name);
                }
            },
            Applied::ChannelGone(name) => self.channels.retain(|c| c.channel.name_any() != name),
            Applied::Channel(channel) => {
                if let Some(slot) = self.channel_mut(&channel.name_any()) {
                    slot.channel = *channel;
                }
            }
            Applied::Nothing => {}
            Applied::JobMade { channel, check } => {
                if let Some(channel) = self.channel_mut(&channel) {
                    channel.jobs_to_make.retain(|c| *c != check);
                }
            }
        }
    }
}

impl Observed {
    fn channel_mut(&mut self, name: &str) -> Option<&mut ChannelObserved> {
        self.channels.iter_mut().find(|c| c.channel.name_any() == name)
    }
}

/// Why an Agent's spec is not published: a condition reason, and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// A version whose create the API server refused with a client error other than 404 (the
/// namespace is going), 409 (the name is taken: look again) and 429 (too many requests): an
/// admission policy, a validation rule, a quota. Retrying would meet the same answer, so the
/// publish or rollback that made it ends (see [`Observed::refusal`] and `rollback`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedVersion {
    pub number: i64,
    /// The Agent's generation the version was made at.
    pub generation: Option<i64>,
    /// The rollback that made it, if one did.
    pub rollback: Option<String>,
    /// What the API server said.
    pub message: String,
}

/// The API server's answer to one applied [`Step`], as far as later decisions care.
#[derive(Clone, Debug)]
pub enum Applied {
    VersionCreated(Box<AgentVersion>),
    VersionDeleted(String),
    Agent(Box<Agent>),
    Rollback(Box<AgentRollback>),
    /// Every rollback of the Agent, listed from the API server.
    Rollbacks(Vec<AgentRollback>),
    RollbackDeleted(String),
    /// The API server refused a version's create with an answer no retry changes.
    VersionRefused(RefusedVersion),
    /// A delivery ConfigMap as written or read back; `None`: there is none.
    ConfigMap(Recipient, Option<ConfigMapState>),
    Workload(Recipient, WorkloadState),
    /// A channel as written.
    Channel(Box<crate::api::AgentChannel>),
    /// A channel found deleted.
    ChannelGone(String),
    /// A job check's Job made (or found made): it is no longer to make in this sync.
    JobMade {
        channel: String,
        check: String,
    },
    /// A version as a patch of its metadata (verdict, finalizers) left it.
    VersionPatched(Box<AgentVersion>),
    /// A channel read live: the Agent's, or none (absent, or another Agent's).
    ChannelRead(String, Option<Box<crate::api::AgentChannel>>),
    /// A promotion as written or read back.
    Promotion(Box<crate::api::AgentPromotion>),
    /// The promotions of the namespace, listed from the API server.
    Promotions(Vec<crate::api::AgentPromotion>),
    /// A promotion found deleted.
    PromotionDeleted(String),
    /// The Pop's ConfigMap keeps the snapshot it deletes (made, or found made).
    PoppedKept(String),
    /// The Pop's ConfigMap could not be made (see [`Observed::popped_refused`]): why.
    PoppedRefused(String, String),
    /// The snapshot read back from a Pop's ConfigMap; `None`: none to be found.
    PoppedRead(String, Option<AgentDefinition>),
    Nothing,
}

/// One step of a unit of work: a write, or writes made together. The steps of one unit are
/// applied in order; one that meets a newer state than planned ends the unit, and the
/// controller decides again (see [`driver`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    One(Write),
    /// Writes with no order between them, made at once; the unit goes on when all are done.
    /// Each must be safe to happen without the others, as after a crash.
    Together(Vec<Write>),
}

impl From<Write> for Step {
    fn from(write: Write) -> Self {
        Step::One(write)
    }
}

/// One write (or read) the controller makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create this version. AlreadyExists means the name is taken: observe again.
    CreateVersion(Box<AgentVersion>),
    /// Delete a version, on condition that its uid is still this one.
    DeleteVersion { name: String, uid: String },
    /// Replace the Agent's status.
    PatchAgentStatus(Box<AgentStatus>),
    /// Write a rollback's record (see [`durable`]), on condition that the rollback is still at
    /// `resource_version`: this compare-and-swap is what makes each rollback run exactly once.
    /// Then its status, the record's copy, on condition that nothing changed in between;
    /// unless `copy_status` is false, when the next unit writes the copy beside its own write
    /// ([`Write::CopyRollbackStatus`]). `announce`: the Events that tell of the record,
    /// published once it is written (it is the durable state; the status is its copy), beside
    /// the status write; none if the record is refused.
    WriteRollback {
        name: String,
        resource_version: Option<String>,
        record: Box<RollbackRecord>,
        copy_status: bool,
        announce: Vec<EventNote>,
    },
    /// Write a rollback's status as its record says, on condition that the rollback is still at
    /// the resourceVersion the sync last saw it at (its record's write, folded in before).
    CopyRollbackStatus { name: String },
    /// Read a rollback from the API server: its cached copy is about to be resumed, and a
    /// stale copy (a Running state long since finished) must not make a version again.
    ReadRollback { name: String },
    /// List the Agent's rollbacks from the API server: its status is lost, and is rebuilt from
    /// their records, of which a cached list could miss the newest.
    ListRollbacks,
    /// Create a delivery ConfigMap (`resource_version` None), or merge its annotations and
    /// data into it and remove the data keys `remove`, on condition that it is still at
    /// `resource_version`, as last seen owned by the recipient: a ConfigMap someone else made
    /// in between is never written. Its operator annotations that `config_map` lacks go.
    ApplyConfigMap {
        recipient: Recipient,
        config_map: Box<k8s_openapi::api::core::v1::ConfigMap>,
        resource_version: Option<String>,
        remove: Vec<String>,
    },
    /// Set the pod-template annotations of a workload to `held` (its own field manager, those
    /// fields only), which rolls it out.
    RollWorkload { recipient: Recipient, workload: WorkloadRef, held: Held },
    /// Record a version's verdict in a channel: the label `health.agentops.dev/<channel>` and
    /// the annotation of the same key with `message`, on condition that the version is still
    /// the one of `uid`.
    JudgeVersion { name: String, uid: String, channel: String, verdict: &'static str, message: String },
    /// Replace a version's finalizers (adding or releasing `agentops.dev/in-use`, see
    /// [`protection`]), on condition that it is still at `resource_version`.
    SetVersionFinalizers { name: String, resource_version: String, finalizers: Vec<String> },
    /// List the namespace's promotions from the API server.
    ListPromotions,
    /// Create the evaluation Job of channel `channel`'s job check `check` (see [`evaluation`]);
    /// its name taken, it was made before.
    CreateJob { channel: String, check: String, job: Box<k8s_openapi::api::batch::v1::Job> },
    /// Create an automatic rollback (see [`automatic`]); its name taken, read it back: it was
    /// created before.
    CreateRollback(Box<AgentRollback>),
    /// Read a channel live: moves name it that the watch does not show, and fail with
    /// `ChannelNotFound` only if the API server has none either.
    ReadChannel { name: String },
    /// Replace a channel's status (server-side apply).
    PatchChannelStatus { name: String, status: Box<crate::api::AgentChannelStatus> },
    /// Write a promotion's record (see `promotion`), on condition that the promotion is still
    /// at `resource_version`: the compare-and-swap that runs each promotion exactly once. Then,
    /// if `copy_status`, its status as the record says. `announce`: the Events that tell of
    /// the record, published once it is written.
    WritePromotion {
        name: String,
        resource_version: Option<String>,
        record: Box<moves::PromotionRecord>,
        copy_status: bool,
        announce: Vec<EventNote>,
    },
    /// Create the ConfigMap in which the Pop `rollback` keeps the snapshot it is about to
    /// delete (see [`popped`]); its name taken, read it: it is the rollback's if the rollback
    /// owns it and it holds that snapshot.
    KeepPopped { rollback: String, config_map: Box<k8s_openapi::api::core::v1::ConfigMap> },
    /// Read back the snapshot the Pop `rollback` kept (of the hash its record holds).
    ReadPopped { rollback: String },
    /// Record an Event.
    Event(EventNote),
}

/// An Event to record; best effort, never a reason to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub on: EventTarget,
    /// The other object the Event concerns. It also keeps Events apart: the API's Event
    /// series would otherwise fold two publishes of one Agent into one Event.
    pub related: Option<RelatedObject>,
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// The secondary object of an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelatedObject {
    Version(String),
    Rollback(String),
}

/// The object an Event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventTarget {
    Agent,
    Rollback(String),
    Channel(String),
    Promotion(String),
}

pub(crate) fn phase_of(rollback: &AgentRollback) -> Option<RollbackPhase> {
    rollback.status.as_ref().and_then(|s| s.phase)
}

pub(crate) fn status_of(rollback: &AgentRollback) -> AgentRollbackStatus {
    rollback.status.clone().unwrap_or_default()
}

fn owner_uid(version: &AgentVersion) -> Option<&str> {
    owning_agent_uid(&version.metadata)
}

/// A resourceVersion as a number: with etcd storage, the store's revision, which grows with
/// every write. Kubernetes calls resourceVersions opaque; the operator orders rollbacks by
/// creation and its own state against the caches' by them, and a revision it cannot read
/// (`None`) never counts as newer.
pub fn parse_revision(resource_version: Option<&str>) -> Option<u64> {
    resource_version?.parse().ok()
}

/// An object's resourceVersion as a number (see [`parse_revision`]).
pub fn revision<K: Resource>(object: &K) -> Option<u64> {
    parse_revision(object.meta().resource_version.as_deref())
}

/// The uid of the Agent that controls an object (a version), by its owner references: whose
/// version it is, whatever its labels say.
pub fn owning_agent_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Agent")
        .map(|o| o.uid.as_str())
}

/// The controller owner reference an object the operator makes carries to its owner (a
/// version to its Agent, a delivery ConfigMap to its Agent or channel, a Pop's ConfigMap to the
/// Pop), so that deleting the owner deletes it.
pub(crate) fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        // Not blocking: that would need `update` on the owner's finalizers where
        // owner-reference permissions are enforced, for no gain (it goes with its owner either
        // way).
        block_owner_deletion: None,
    }
}

/// The name of an Agent's version `number`.
pub fn version_name(agent_name: &str, number: i64) -> String {
    format!("{agent_name}-v{number}")
}

#[cfg(test)]
mod tests {
    use super::parse_revision;

    #[test]
    fn a_revision_is_a_number_or_nothing_and_nothing_is_never_newer() {
        let cases = [(Some("42"), Some(42)), (Some("0"), Some(0)), (Some(""), None), (Some("12a"), None), (None, None)];
        for (text, want) in cases {
            assert_eq!(parse_revision(text), want, "{text:?}");
        }
        assert!(parse_revision(None) < parse_revision(Some("1")), "an unreadable revision is older than any");
    }
}

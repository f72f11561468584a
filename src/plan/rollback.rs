//! The rollback state machine: which rollback runs next, what it does, and how it ends.
//!
//! A rollback moves Pending → Running → Succeeded, or straight to Failed when its request
//! cannot be met (then nothing changes). The move to Running records the whole plan in status
//! (the version to restore and the number of the new version, or the version to pop and its
//! snapshot) before anything else is written, so a crash at any later point resumes the same
//! plan, and a stale read cannot start a rollback twice: every status write is a
//! compare-and-swap on the rollback's resourceVersion.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::publish::{Provenance, RollbackOrigin, new_version};
use super::status::set_rollback_phase;
use super::{EventNote, EventTarget, Observed, RelatedObject, StatusChange, Step, VersionsAfter, Write, status_of};
use crate::api::conditions::events;
use crate::api::{Agent, AgentRollback, AgentVersion, LastRollback, RollbackPhase, RollbackStrategy};

/// Why a rollback failed. Each is permanent: the rollback is `Failed` and nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// No Agent of that name in the rollback's namespace.
    AgentNotFound,
    /// The Restore target does not exist (never made, popped or pruned).
    VersionNotFound,
    /// The Restore target is the active version.
    AlreadyActive,
    /// Previous with only one version left.
    NoPreviousVersion,
    /// Pop with only one version left.
    AtFirstVersion,
    /// `expectedActiveVersion` is no longer the active version.
    ActiveVersionChanged,
    /// Pop of a version that a channel pins or holds by an override.
    VersionInUse,
    /// A channel rollback names a channel that does not exist.
    ChannelNotFound,
    /// A channel Restore to a version that Failed in that channel.
    VersionQuarantined,
    /// `LastKnownGood` with no other version Healthy in the channel.
    NoKnownGoodVersion,
    /// The API server refused to create the version the rollback makes (see
    /// `plan::RefusedVersion`).
    VersionRefused,
    /// The rollback's record asks for what its spec and the history do not allow (a version
    /// to delete that is not the newest, a version to make that is not the next, a target
    /// other than the spec's): the operator did not write it.
    InvalidRecord,
    /// A Pop could not keep the snapshot it deletes (see `popped`): its ConfigMap's name is
    /// taken by one not its own, or the API server refused it. Nothing was deleted.
    SnapshotNotKept,
}

impl FailureReason {
    pub const ALL: [FailureReason; 13] = [
        Self::AgentNotFound,
        Self::VersionNotFound,
        Self::AlreadyActive,
        Self::NoPreviousVersion,
        Self::AtFirstVersion,
        Self::ActiveVersionChanged,
        Self::VersionInUse,
        Self::ChannelNotFound,
        Self::VersionQuarantined,
        Self::NoKnownGoodVersion,
        Self::VersionRefused,
        Self::InvalidRecord,
        Self::SnapshotNotKept,
    ];

    /// The machine-readable name: status.reason, the Event reason and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentNotFound => "AgentNotFound",
            Self::VersionNotFound => "VersionNotFound",
            Self::AlreadyActive => "AlreadyActive",
            Self::NoPreviousVersion => "NoPreviousVersion",
            Self::AtFirstVersion => "AtFirstVersion",
            Self::ActiveVersionChanged => "ActiveVersionChanged",
            Self::VersionInUse => "VersionInUse",
            Self::ChannelNotFound => "ChannelNotFound",
            Self::VersionQuarantined => "VersionQuarantined",
            Self::NoKnownGoodVersion => "NoKnownGoodVersion",
            Self::VersionRefused => "VersionRefused",
            Self::InvalidRecord => "InvalidRecord",
            Self::SnapshotNotKept => "SnapshotNotKept",
        }
    }
}

/// A rollback that cannot run, and the message that says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
}

/// What a rollback will do, chosen when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Publish version `new` as a copy of version `target`.
    Restore { target: i64, new: i64 },
    /// Delete version `version`, the latest.
    Pop { version: i64 },
}

/// Chooses what a rollback does, given the existing version numbers (ascending, non-empty in
/// practice) and the active (newest) version.
pub fn choose(
    agent_name: &str,
    strategy: RollbackStrategy,
    target: Option<i64>,
    expected_active: Option<i64>,
    numbers: &[i64],
) -> Result<Choice, Failure> {
    let fail = |reason, message: String| Err(Failure { reason, message });
    let Some(&active) = numbers.iter().max() else {
        return fail(FailureReason::VersionNotFound, format!("Agent {agent_name} has no versions yet."));
    };
    if let Some(expected) = expected_active
        && expected != active
    {
        return fail(
            FailureReason::ActiveVersionChanged,
            format!(
                "expectedActiveVersion is {expected} but the active version of Agent {agent_name} is {active}; nothing was changed."
            ),
        );
    }
    match strategy {
        RollbackStrategy::Restore => {
            let Some(target) = target else {
                return fail(
                    FailureReason::VersionNotFound,
                    "targetVersion is required when strategy is Restore.".into(),
                );
            };
            if target == active {
                return fail(
                    FailureReason::AlreadyActive,
                    format!("Cannot roll back to the current active version ({target})."),
                );
            }
            if !numbers.contains(&target) {
                return fail(
                    FailureReason::VersionNotFound,
                    format!(
                        "Version {target} of Agent {agent_name} does not exist (never made, popped or pruned); existing versions: {}.",
                        list(numbers)
                    ),
                );
            }
            Ok(Choice::Restore { target, new: active + 1 })
        }
        RollbackStrategy::Previous => match numbers.iter().copied().filter(|n| *n < active).max() {
            Some(target) => Ok(Choice::Restore { target, new: active + 1 }),
            None => fail(
                FailureReason::NoPreviousVersion,
                format!("Agent {agent_name} has only one version ({active}); there is no previous version."),
            ),
        },
        // Refused at apply without a channel; a channel's rollbacks are not chosen here.
        RollbackStrategy::LastKnownGood => fail(
            FailureReason::NoKnownGoodVersion,
            "LastKnownGood needs spec.channel: the version Healthy in that channel.".into(),
        ),
        RollbackStrategy::Pop => {
            if numbers.len() < 2 {
                return fail(
                    FailureReason::AtFirstVersion,
                    format!("Agent {agent_name} has only one version ({active}); the last version cannot be popped."),
                );
            }
            Ok(Choice::Pop { version: active })
        }
    }
}

fn list(numbers: &[i64]) -> String {
    numbers.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

/// Sort key that puts rollbacks in creation order: the resourceVersion a rollback had when it
/// was created (its current one while the controller has not written to it, else the one
/// recorded in status). Creation timestamps have one-second resolution and are taken before the
/// write commits, so they only break ties when a revision is unreadable. (Kubernetes calls
/// resourceVersions opaque; with etcd storage they are the store's revision numbers.)
pub fn queue_key(rollback: &AgentRollback) -> (u64, Option<Time>, String) {
    let recorded = rollback.status.as_ref().and_then(|s| s.creation_revision.clone());
    let revision =
        super::parse_revision(recorded.or_else(|| rollback.resource_version()).as_deref()).unwrap_or(u64::MAX);
    (revision, rollback.metadata.creation_timestamp.clone(), rollback.name_any())
}

/// A write of `rollback`'s record, conditional on its current resourceVersion, the Events that
/// tell of it, and its status copy unless `copy_status` is false (the rollback's next write
/// takes the copy along, see [`Write::WriteRollback`]).
fn cas(
    observed: &Observed,
    rollback: &AgentRollback,
    status: crate::api::AgentRollbackStatus,
    copy_status: bool,
    announce: Vec<EventNote>,
) -> Write {
    Write::WriteRollback {
        name: rollback.name_any(),
        resource_version: rollback.resource_version(),
        record: Box::new(observed.record(status)),
        copy_status,
        announce,
    }
}

/// `step`, the next write of the Running rollback `running`, and beside it the copy of its
/// Running record into its status if that is still to be written: the move to Running writes
/// its record alone, so that the copy costs the rollback no round trip of its own.
fn with_status_copy(observed: &Observed, running: &AgentRollback, step: Write) -> Vec<Step> {
    let name = running.name_any();
    if !observed.unsynced.contains(&name) {
        return vec![step.into()];
    }
    let copy = Write::CopyRollbackStatus { name };
    vec![Step::Together(vec![copy, step])]
}

/// An Event on a rollback.
fn event(on: EventTarget, warning: bool, reason: &'static str, action: &'static str, note: String) -> EventNote {
    EventNote { on, related: None, warning, reason, action, note }
}

/// An Event's note about `rollback`, naming who asked for it (the audit trail in `kubectl
/// describe` and in the Events API, beside the rollback's own `spec.requestedBy`).
fn noted(rollback: &AgentRollback, note: String) -> String {
    match &rollback.spec.requested_by {
        Some(who) => format!("{note} Requested by {who}."),
        None => note,
    }
}

/// An Event on the Agent, naming the rollback it is about.
fn agent_event(rollback: &str, warning: bool, reason: &'static str, note: String) -> EventNote {
    let related = Some(RelatedObject::Rollback(rollback.to_string()));
    EventNote { on: EventTarget::Agent, related, warning, reason, action: "Rollback", note }
}

/// The status a rollback gets on its first write: records its creation revision.
fn first_status(rollback: &AgentRollback) -> crate::api::AgentRollbackStatus {
    let mut status = status_of(rollback);
    if status.creation_revision.is_none() {
        status.creation_revision = rollback.resource_version();
    }
    status
}

/// Fails `rollback` with `failure`, with an Event on the Agent if there is one.
pub fn fail(observed: &Observed, rollback: &AgentRollback, failure: Failure, now: &Time) -> Vec<Step> {
    let active = observed.active_number();
    let agent_exists = observed.agent.is_some();
    let mut status = first_status(rollback);
    status.from_version = status.from_version.or(active);
    status.active_version = active;
    status.start_time = status.start_time.or_else(|| Some(now.clone()));
    set_rollback_phase(
        &mut status,
        RollbackPhase::Failed,
        Some(failure.reason.as_str()),
        failure.message.clone(),
        rollback.metadata.generation,
        now,
    );
    let name = rollback.name_any();
    let note = noted(rollback, failure.message.clone());
    let mut announce =
        vec![event(EventTarget::Rollback(name.clone()), true, events::ROLLBACK_FAILED, "Rollback", note)];
    if agent_exists {
        announce.push(agent_event(
            &name,
            true,
            events::ROLLBACK_FAILED,
            noted(rollback, format!("AgentRollback {name} failed ({}): {}", failure.reason.as_str(), failure.message)),
        ));
    }
    vec![cas(observed, rollback, status, true, announce).into()]
}

/// Starts the head of the queue: fails it, or records its plan and moves it to Running.
pub fn start(observed: &Observed, agent: &Agent, head: &AgentRollback, now: &Time) -> Vec<Step> {
    let numbers = observed.version_numbers();
    let active = observed.active_number();
    let spec = &head.spec;
    let chosen = choose(&agent.name_any(), spec.strategy, spec.target_version, spec.expected_active_version, &numbers)
        .and_then(|choice| match choice {
            Choice::Pop { version } => match super::channel::holder(observed, version) {
                Some(channel) => Err(Failure {
                    reason: FailureReason::VersionInUse,
                    message: format!(
                        "Version {version} of Agent {} is in use by channel {channel} (pinned, or held by a rollback or promotion); it is not deleted.",
                        agent.name_any()
                    ),
                }),
                None => Ok(choice),
            },
            choice => Ok(choice),
        });
    match chosen {
        Err(failure) => fail(observed, head, failure, now),
        Ok(choice) => {
            let mut status = first_status(head);
            status.from_version = active;
            status.start_time = Some(now.clone());
            let message = match &choice {
                Choice::Restore { target, new } => {
                    status.restored_version = Some(*target);
                    status.new_version = Some(*new);
                    format!("Rolling Agent {} back to version {target} as new version {new}.", agent.name_any())
                }
                Choice::Pop { version } => {
                    let popped = observed.version(*version);
                    status.popped_version = Some(*version);
                    status.popped_snapshot = popped.map(|v| v.spec.snapshot.clone());
                    status.popped_snapshot_hash = popped.map(|v| v.spec.snapshot_hash.clone());
                    format!("Deleting version {version} of Agent {}.", agent.name_any())
                }
            };
            set_rollback_phase(
                &mut status,
                RollbackPhase::Running,
                None,
                message.clone(),
                head.metadata.generation,
                now,
            );
            // The Agent hears of the rollback when it ends: one Event fewer on every
            // rollback's path, and the start is on the AgentRollback.
            let started = event(
                EventTarget::Rollback(head.name_any()),
                false,
                events::ROLLBACK_STARTED,
                "Rollback",
                noted(head, message),
            );
            // The record alone: its status copy goes with the rollback's next write.
            vec![cas(observed, head, status, false, vec![started]).into()]
        }
    }
}

/// What a sync that stops early (it failed) writes so that the rollbacks' statuses say where
/// they stand: the status copies their records are ahead of (a Running record, whose copy
/// goes with the rollback's next write), and Pending for the rollbacks waiting behind the
/// head of the queue with no phase yet. The sync that runs a queue starts each rollback it saw
/// in turn, so it writes no Pending that its next write would replace (two writes a rollback,
/// in a burst of rollbacks on one Agent): a rollback waiting without a phase is one whose
/// sync is running or about to run.
pub fn stopped(observed: &Observed, now: &Time) -> Vec<Write> {
    // Those with a record (the rest, with a status from before records, wait for the resync).
    let copies = observed
        .unsynced
        .iter()
        .filter(|name| observed.rollback(name).and_then(super::durable::record_of).is_some())
        .map(|name| Write::CopyRollbackStatus { name: name.clone() });
    let pending = observed.pending_rollbacks();
    let Some((head, queued)) = pending.split_first() else { return copies.collect() };
    let marks = queued.iter().filter(|r| super::phase_of(r).is_none()).map(|rollback| {
        let mut status = first_status(rollback);
        let message = format!("Waiting for AgentRollback {} to finish.", head.name_any());
        set_rollback_phase(&mut status, RollbackPhase::Pending, None, message, rollback.metadata.generation, now);
        cas(observed, rollback, status, true, Vec::new())
    });
    copies.chain(marks).collect()
}

/// Carries a Running rollback on from wherever it stopped.
pub fn resume(
    observed: &Observed,
    agent: &Agent,
    running: &AgentRollback,
    busy_after: Option<&str>,
    now: &Time,
) -> Vec<Step> {
    match running.spec.strategy {
        // A LastKnownGood of the Agent never runs (see `choose`): its record is refused there.
        RollbackStrategy::Restore | RollbackStrategy::Previous | RollbackStrategy::LastKnownGood => {
            resume_restore(observed, agent, running, busy_after, now)
        }
        RollbackStrategy::Pop => resume_pop(observed, agent, running, busy_after, now),
    }
}

/// A Restore or Previous: its copy of the target is made, then it finishes.
fn resume_restore(
    observed: &Observed,
    agent: &Agent,
    running: &AgentRollback,
    busy_after: Option<&str>,
    now: &Time,
) -> Vec<Step> {
    let status = status_of(running);
    let name = running.name_any();
    let (Some(target), Some(new)) = (status.restored_version, status.new_version) else {
        // A Running status without its plan was not written by this controller.
        return start(observed, agent, running, now);
    };
    // Where no admission policy guards it, a record is whatever the client wrote: act on it
    // only as far as the spec and the history allow what it says.
    let spec_target = running.spec.strategy != RollbackStrategy::Restore || running.spec.target_version == Some(target);
    let next = observed.active_number().unwrap_or(0) + 1;
    let exists = observed.version(new).is_some();
    if !spec_target || (!exists && new != next && new != observed.next_version_number()) {
        let message = format!(
            "Its record asks to restore version {target} as new version {new}, which its spec and the history \
             (the next version is {next}) do not allow; the operator did not write it. Nothing was changed."
        );
        return fail(observed, running, Failure { reason: FailureReason::InvalidRecord, message }, now);
    }
    match (observed.version(new), observed.version(target)) {
        (Some(made), _) if made.spec.rollback_name.as_deref() == Some(name.as_str()) => {
            finish(observed, agent, running, busy_after, now)
        }
        (Some(_), _) => fail(
            observed,
            running,
            Failure {
                reason: FailureReason::ActiveVersionChanged,
                message: format!(
                    "Version {new} was created by something else while this rollback ran; nothing was changed."
                ),
            },
            now,
        ),
        (None, Some(_))
            if let Some(refused) =
                observed.refused.iter().find(|r| r.number == new && r.rollback.as_deref() == Some(name.as_str())) =>
        {
            fail(
                observed,
                running,
                Failure {
                    reason: FailureReason::VersionRefused,
                    message: format!("The API server refused version {new}: {} Nothing was changed.", refused.message),
                },
                now,
            )
        }
        (None, Some(source)) => {
            let create = Write::CreateVersion(Box::new(restored_copy(observed, agent, running, source, new)));
            with_status_copy(observed, running, create)
        }
        (None, None) => fail(
            observed,
            running,
            Failure {
                reason: FailureReason::VersionNotFound,
                message: format!("Version {target} was deleted before it could be restored; nothing was changed."),
            },
            now,
        ),
    }
}

/// Version `new`: a copy of `source` made by the rollback `running`.
fn restored_copy(
    observed: &Observed,
    agent: &Agent,
    running: &AgentRollback,
    source: &AgentVersion,
    new: i64,
) -> AgentVersion {
    let (name, target) = (running.name_any(), source.spec.version);
    let provenance = Provenance {
        rollback: Some(RollbackOrigin { from_version: target, rollback_name: &name }),
        change_cause: running
            .spec
            .reason
            .clone()
            .or_else(|| Some(format!("Rolled back to version {target} by AgentRollback {name}"))),
        published_by: running.spec.requested_by.clone(),
    };
    new_version(
        agent,
        new,
        source.spec.snapshot.clone(),
        source.spec.snapshot_hash.clone(),
        provenance,
        observed.handled(),
    )
}

/// A Pop: the version it recorded is deleted (unless it is gone, replaced or the last one),
/// then it finishes.
fn resume_pop(
    observed: &Observed,
    agent: &Agent,
    running: &AgentRollback,
    busy_after: Option<&str>,
    now: &Time,
) -> Vec<Step> {
    let status = status_of(running);
    let Some(popped) = status.popped_version else {
        return start(observed, agent, running, now);
    };
    match observed.version(popped) {
        // Only the newest version is ever popped, whatever a record says (see `resume_restore`).
        Some(_) if observed.active_number() != Some(popped) => {
            let message = format!(
                "Its record asks to delete version {popped}, which is not the newest version ({}); the operator \
                 did not write it. Nothing was changed.",
                observed.active_number().unwrap_or_default()
            );
            fail(observed, running, Failure { reason: FailureReason::InvalidRecord, message }, now)
        }
        Some(version)
            if Some(&version.spec.snapshot_hash) == status.popped_snapshot_hash.as_ref()
                && observed.versions.len() > 1 =>
        {
            let name = running.name_any();
            // The snapshot is kept before its version goes (see `popped`).
            if let Some(why) = observed.popped_refused.get(&name) {
                let message = format!(
                    "Version {popped} was not deleted: the ConfigMap {} that keeps its snapshot could not be made \
                     ({why}). Nothing was changed.",
                    super::popped::config_map_name(&name)
                );
                return fail(observed, running, Failure { reason: FailureReason::SnapshotNotKept, message }, now);
            }
            if !observed.popped_kept.contains(&name) {
                let config_map = super::popped::config_map(&observed.namespace, running, version);
                let keep = Write::KeepPopped { rollback: name, config_map: Box::new(config_map) };
                return with_status_copy(observed, running, keep);
            }
            let delete = Write::DeleteVersion {
                name: version.name_any(),
                uid: version.metadata.uid.clone().unwrap_or_default(),
            };
            with_status_copy(observed, running, delete)
        }
        _ => finish(observed, agent, running, busy_after, now),
    }
}

/// Ends a rollback whose writes are all done: at once, the Agent's status and the rollback's
/// terminal record (the version it made or deleted is in place, so neither waits for the
/// other); then the rollback's status, the record's copy, so that a reader who waits for the
/// rollback's status sees the new active version on the Agent; then the history pruning the
/// change calls for. The pruning comes last so that the rollback's end does not share the API
/// server with it (1.8 to 2.7 ms of its p50 in the benchmark); it is still done before the
/// next unit, so the next rollback in the queue sees the history pruned. The Agent's status
/// already counts the versions kept (one status write for both, the Agent's Event tells of
/// both); should the deletes not happen (a crash), its versions digest no longer describes
/// the versions and the next sync prunes them.
fn finish(
    observed: &Observed,
    agent: &Agent,
    rollback: &AgentRollback,
    busy_after: Option<&str>,
    now: &Time,
) -> Vec<Step> {
    let name = rollback.name_any();
    let active = observed.active_number();
    let pruning = super::history::pruning(observed, agent);
    let delivery = super::delivery::state_after(observed, agent, observed.newest());
    let change = StatusChange {
        versions: VersionsAfter { newest: observed.newest(), count: pruning.count, digest: pruning.digest.clone() },
        handled: None,
        last_rollback: Some(LastRollback { name: name.clone(), time: now.clone() }),
        delivery_report: None,
        busy: busy_after,
        delivery: &delivery,
    };
    let agent_status = observed.agent_status(agent, change, now);

    let mut status = status_of(rollback);
    status.active_version = active;
    let active_text = active.map_or_else(|| "none".to_string(), |a| a.to_string());
    let message = match (rollback.spec.strategy, status.restored_version, status.popped_version) {
        (RollbackStrategy::Pop, _, Some(popped)) => {
            format!("Version {popped} was deleted. Version {active_text} is now active.")
        }
        (_, Some(target), _) => {
            format!("Agent rolled back to version {target}. New version {active_text} is now active.")
        }
        _ => format!("Version {active_text} is now active."),
    };
    set_rollback_phase(&mut status, RollbackPhase::Succeeded, None, message.clone(), rollback.metadata.generation, now);
    let agent_note = match pruning.note() {
        Some(pruned) => format!("AgentRollback {name}: {message} {pruned}."),
        None => format!("AgentRollback {name}: {message}"),
    };
    let agent_status = Write::PatchAgentStatus(Box::new(agent_status));
    let announce = vec![
        event(
            EventTarget::Rollback(name.clone()),
            false,
            events::ROLLBACK_SUCCEEDED,
            "Rollback",
            noted(rollback, message),
        ),
        agent_event(&name, false, events::ROLLED_BACK, noted(rollback, agent_note)),
    ];
    let record = cas(observed, rollback, status, false, announce);
    let mut steps = vec![Step::Together(vec![agent_status, record]), Write::CopyRollbackStatus { name }.into()];
    if !pruning.deletes.is_empty() {
        steps.push(Step::Together(pruning.deletes));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore(target: i64) -> (RollbackStrategy, Option<i64>) {
        (RollbackStrategy::Restore, Some(target))
    }

    /// Name, (strategy, target), expectedActiveVersion, existing versions, expected choice.
    type Case = (&'static str, (RollbackStrategy, Option<i64>), Option<i64>, Vec<i64>, Result<Choice, FailureReason>);

    /// One row per rule of Restore, Previous and Pop, and per failure reason.
    #[test]
    fn choose_follows_every_rule_of_the_contract() {
        let cases: Vec<Case> = vec![
            ("restore publishes latest+1", restore(2), None, vec![1, 2, 3], Ok(Choice::Restore { target: 2, new: 4 })),
            (
                "restore of an old version",
                restore(1),
                None,
                vec![1, 2, 3, 4],
                Ok(Choice::Restore { target: 1, new: 5 }),
            ),
            ("restore of the active version", restore(3), None, vec![1, 2, 3], Err(FailureReason::AlreadyActive)),
            ("restore of a never-made version", restore(9), None, vec![1, 2, 3], Err(FailureReason::VersionNotFound)),
            ("restore of a pruned version", restore(1), None, vec![4, 5, 6], Err(FailureReason::VersionNotFound)),
            (
                "previous is the newest below active",
                (RollbackStrategy::Previous, None),
                None,
                vec![1, 3, 5],
                Ok(Choice::Restore { target: 3, new: 6 }),
            ),
            (
                "previous with one version",
                (RollbackStrategy::Previous, None),
                None,
                vec![4],
                Err(FailureReason::NoPreviousVersion),
            ),
            (
                "pop deletes the latest",
                (RollbackStrategy::Pop, None),
                None,
                vec![1, 2, 3],
                Ok(Choice::Pop { version: 3 }),
            ),
            ("pop at one version", (RollbackStrategy::Pop, None), None, vec![1], Err(FailureReason::AtFirstVersion)),
            ("expected active matches", restore(1), Some(3), vec![1, 2, 3], Ok(Choice::Restore { target: 1, new: 4 })),
            ("expected active changed", restore(1), Some(2), vec![1, 2, 3], Err(FailureReason::ActiveVersionChanged)),
            (
                "expected active is checked before the strategy",
                (RollbackStrategy::Pop, None),
                Some(5),
                vec![1],
                Err(FailureReason::ActiveVersionChanged),
            ),
        ];
        for (name, (strategy, target), expected, numbers, want) in cases {
            let got = choose("a", strategy, target, expected, &numbers).map_err(|f| f.reason);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn restore_message_is_worded_as_the_contract_says() {
        let err = choose("a", RollbackStrategy::Restore, Some(3), None, &[1, 2, 3]).expect_err("active");
        assert_eq!(err.message, "Cannot roll back to the current active version (3).");
    }

    #[test]
    fn every_failure_reason_has_a_distinct_pascal_case_name() {
        let names: std::collections::HashSet<_> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), FailureReason::ALL.len());
        assert!(names.iter().all(|n| n.chars().next().is_some_and(char::is_uppercase) && !n.contains(' ')));
    }
}

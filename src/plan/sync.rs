//! The per-Agent decision: which unit of work comes next. Units, in priority order:
//!
//! 1. delete versions left over from a deleted Agent of the same name (they block names);
//! 2. Agent gone: fail every pending rollback with `AgentNotFound`;
//! 3. list the rollbacks from the API server if the Agent's status is lost (it is rebuilt
//!    from their records; see `durable`), then carry on the Running rollback, if any, once it
//!    has been read live (the cache may show a Running state that has long since finished);
//! 4. publish a new generation;
//! 5. prune history beyond `revisionHistoryLimit`;
//! 6. start the oldest pending rollback;
//! 7. deliver the active version (ConfigMap, workload rollouts) and bring the Agent's status
//!    up to date;
//! 8. protect the versions the channels use from deletion by hand, and release those they no
//!    longer use (see `protection`);
//! 9. deliver each channel's version and bring its status up to date (see `channel`).
//!
//! Pruning comes before the next rollback so that a queue of rollbacks ends exactly as if each
//! had been applied alone, in creation order. An empty answer means nothing is left to do.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::channel;
use super::delivery::{self, DeliveryState};
use super::history::Pruning;
use super::rollback::{Failure, FailureReason};
use super::{
    EventNote, EventTarget, Observed, StatusChange, Step, VersionsAfter, Write, history, phase_of, protection, publish,
    rollback,
};
use crate::api::conditions::{HasConditions, STALLED, events};
use crate::api::{Agent, RollbackPhase};

/// The next unit of work for one Agent, or nothing.
pub fn decide(observed: &Observed, now: &Time) -> Vec<Step> {
    if !observed.foreign_versions.is_empty() {
        return observed
            .foreign_versions
            .iter()
            .map(|v| {
                Write::DeleteVersion { name: v.name_any(), uid: v.metadata.uid.clone().unwrap_or_default() }.into()
            })
            .collect();
    }

    // Before any status of a Pop is written: what it shows of the snapshot it deleted.
    if !observed.popped_unread.is_empty() {
        let reads = observed.popped_unread.iter().map(|name| Write::ReadPopped { rollback: name.clone() });
        return vec![Step::Together(reads.collect())];
    }

    let pending = observed.pending_rollbacks();
    let Some(agent) = &observed.agent else {
        return agent_gone(observed, now);
    };

    let status_lost = agent.status.as_ref().is_none_or(|s| s.observed_generation.is_none());
    if status_lost && !observed.versions.is_empty() && !observed.rollbacks_listed {
        return vec![Write::ListRollbacks.into()];
    }

    let publish_pending = publish::needed(agent, observed);
    if let Some(running) = pending.iter().find(|r| phase_of(r) == Some(RollbackPhase::Running)) {
        if !observed.confirmed.contains(&running.name_any()) {
            return vec![Write::ReadRollback { name: running.name_any() }.into()];
        }
        let busy_after = publish::busy_reason(publish_pending, pending.len() > 1);
        return rollback::resume(observed, agent, running, busy_after, now);
    }

    if publish_pending {
        return publish::steps(observed, agent, publish::busy_reason(false, !pending.is_empty()), now);
    }

    let pruning = history::pruning(observed, agent);
    if !pruning.deletes.is_empty() {
        return prune(observed, agent, pruning, publish::busy_reason(false, !pending.is_empty()), now);
    }

    if let Some(resync) = resync_rollbacks(observed, false) {
        return vec![resync];
    }

    if let Some(head) = pending.first() {
        return rollback::start(observed, agent, head, now);
    }

    // Delivery last: the active version is settled by now; the channels' after the Agent's,
    // as a following channel serves the active version.
    let steps = deliver(observed, agent, now);
    if !steps.is_empty() {
        return steps;
    }
    // Before the channels move: a version is protected before a channel serves it.
    let steps = protection::decide(observed);
    if !steps.is_empty() {
        return steps;
    }
    channel::decide(observed, now)
}

/// The Agent is gone: every pending rollback, the Agent's and its channels', fails with
/// `AgentNotFound`.
fn agent_gone(observed: &Observed, now: &Time) -> Vec<Step> {
    let pending = observed.unfinished_rollbacks();
    let message = format!("Agent {} not found in namespace {}.", observed.agent_name, observed.namespace);
    pending
        .iter()
        .flat_map(|r| {
            rollback::fail(observed, r, Failure { reason: FailureReason::AgentNotFound, message: message.clone() }, now)
        })
        .chain(resync_rollbacks(observed, true))
        .chain(channel::decide(observed, now))
        .collect()
}

/// Deletes the versions beyond the history limit, with the status that counts those kept.
fn prune(observed: &Observed, agent: &Agent, pruning: Pruning, busy: Option<&str>, now: &Time) -> Vec<Step> {
    let delivery = delivery::state_after(observed, agent, observed.newest());
    let change = StatusChange {
        versions: VersionsAfter { newest: observed.newest(), count: pruning.count, digest: pruning.digest.clone() },
        handled: None,
        last_rollback: None,
        delivery_report: None,
        busy,
        delivery: &delivery,
    };
    let agent_status = observed.agent_status(agent, change, now);
    let event = pruning.event();
    let mut steps: Vec<Step> = pruning.deletes.into_iter().map(Step::from).collect();
    steps.push(Write::PatchAgentStatus(Box::new(agent_status)).into());
    steps.extend(event.map(Step::from));
    steps
}

/// Delivers the active version (ConfigMap, workload rollouts) and brings the Agent's status up
/// to date, rebuilding from durable records what it lost.
fn deliver(observed: &Observed, agent: &Agent, now: &Time) -> Vec<Step> {
    let delivery = delivery::plan(observed, agent);
    let last_rollback =
        agent.status.as_ref().and_then(|s| s.last_rollback.as_ref()).is_none().then(|| observed.last_rollback());
    let change = StatusChange {
        versions: observed.versions_now(),
        handled: observed.handled(),
        last_rollback: last_rollback.flatten(),
        delivery_report: Some(delivery.status),
        busy: None,
        delivery: &delivery.state,
    };
    let desired = observed.agent_status(agent, change, now);
    let mut steps = delivery.steps;
    if agent.status.as_ref() != Some(&desired) {
        let newly_blocked = match &delivery.state {
            DeliveryState::Blocked { reason, message } if !stalled_for(agent, reason) => Some(message.clone()),
            _ => None,
        };
        steps.push(Write::PatchAgentStatus(Box::new(desired)).into());
        steps.extend(newly_blocked.map(|note| {
            Step::from(Write::Event(EventNote {
                on: EventTarget::Agent,
                related: None,
                warning: true,
                reason: events::DELIVERY_BLOCKED,
                action: "Deliver",
                note,
            }))
        }));
    }
    steps
}

/// Writes again the status of every rollback whose status is not its record's copy, and the
/// record of those that have a status from before records (of the terminal ones only, if
/// `terminal_only`).
fn resync_rollbacks(observed: &Observed, terminal_only: bool) -> Option<Step> {
    let writes: Vec<Write> = observed
        .unsynced
        .iter()
        .filter_map(|name| observed.rollback(name))
        .filter(|r| !terminal_only || phase_of(r).is_some_and(RollbackPhase::is_terminal))
        .map(|r| Write::WriteRollback {
            name: r.name_any(),
            resource_version: r.resource_version(),
            record: Box::new(observed.record_of(r)),
            copy_status: true,
            announce: Vec::new(),
        })
        .collect();
    (!writes.is_empty()).then_some(Step::Together(writes))
}

/// Whether the Agent's status already reports it stalled for `reason` (its Event was sent).
fn stalled_for(agent: &Agent, reason: &str) -> bool {
    let stalled = agent.status.as_ref().and_then(|s| s.condition(STALLED));
    stalled.is_some_and(|c| c.status == "True" && c.reason == reason)
}

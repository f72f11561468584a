//! Builds the status conditions (`Ready`, `Reconciling`, `Stalled`) of Agents and rollbacks.
//! A condition keeps its `lastTransitionTime` while its status stays the same, so an unchanged
//! state produces an identical status and therefore no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::Refusal;
use super::delivery::DeliveryState;
use crate::api::conditions::{HEALTHY, HasConditions, IN_SYNC, READY, RECONCILING, STALLED, reasons};
use crate::api::{Agent, AgentPromotionStatus, AgentRollbackStatus, AgentStatus, RollbackPhase};

/// What a condition should say; the builder fills in generation and transition time.
pub struct ConditionSpec<'a> {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// The conditions in a fixed order, keeping `lastTransitionTime` from `existing` for every
/// condition whose status did not change.
pub fn conditions<const N: usize>(
    existing: &[Condition],
    specs: [ConditionSpec<'_>; N],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    specs
        .into_iter()
        .map(|spec| {
            let status = if spec.status { "True" } else { "False" }.to_string();
            let last_transition_time = existing
                .iter()
                .find(|c| c.type_ == spec.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: spec.type_.to_string(),
                status,
                reason: spec.reason.to_string(),
                message: spec.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Where an Agent stands, as its conditions tell it.
pub struct AgentState<'a> {
    /// The generation handled.
    pub generation: Option<i64>,
    /// The active version.
    pub active: Option<i64>,
    /// The reason of a publish or rollback in flight.
    pub busy: Option<&'a str>,
    pub delivery: &'a DeliveryState,
    /// `InSync` (see [`super::in_sync`]).
    pub in_sync: ConditionSpec<'a>,
}

/// The conditions of an Agent: busy while a publish or rollback is in flight; otherwise
/// `Ready` once the active version is delivered; and `InSync`.
pub fn agent_conditions(existing: &[Condition], state: AgentState<'_>, now: &Time) -> Vec<Condition> {
    let AgentState { generation, active, busy, delivery, in_sync } = state;
    let ready_message = match active {
        Some(v) => format!("Version {v} is active"),
        None => "No version published yet".to_string(),
    };
    let not_stalled =
        || ConditionSpec { type_: STALLED, status: false, reason: reasons::AS_EXPECTED, message: String::new() };
    let (ready, reconciling, stalled) = match (busy, delivery) {
        (Some(reason), _) => (
            ConditionSpec { type_: READY, status: false, reason, message: ready_message.clone() },
            ConditionSpec { type_: RECONCILING, status: true, reason, message: ready_message },
            not_stalled(),
        ),
        (None, DeliveryState::InProgress(progress)) if active.is_some() => {
            let message = format!("{ready_message}; delivering it: {progress}");
            (
                ConditionSpec { type_: READY, status: false, reason: reasons::DELIVERING, message: message.clone() },
                ConditionSpec { type_: RECONCILING, status: true, reason: reasons::DELIVERING, message },
                not_stalled(),
            )
        }
        (None, DeliveryState::Blocked { reason, message }) if active.is_some() => {
            let message = format!("{ready_message} but not delivered: {message}");
            (
                ConditionSpec { type_: READY, status: false, reason, message: message.clone() },
                ConditionSpec {
                    type_: RECONCILING,
                    status: false,
                    reason: reasons::AS_EXPECTED,
                    message: String::new(),
                },
                ConditionSpec { type_: STALLED, status: true, reason, message },
            )
        }
        (None, _) => (
            ConditionSpec {
                type_: READY,
                status: active.is_some(),
                reason: reasons::VERSION_ACTIVE,
                message: ready_message,
            },
            ConditionSpec { type_: RECONCILING, status: false, reason: reasons::AS_EXPECTED, message: String::new() },
            not_stalled(),
        ),
    };
    conditions(existing, [ready, reconciling, stalled, in_sync], generation, now)
}

/// Where a channel stands, as its conditions tell it.
pub struct ChannelState<'a> {
    /// The generation handled.
    pub generation: Option<i64>,
    /// The version it serves.
    pub serving: Option<i64>,
    pub delivery: &'a DeliveryState,
    /// What keeps it from its desired version, if something does: a reason and a message.
    pub problem: Option<(&'a str, &'a str)>,
    pub in_sync: ConditionSpec<'a>,
    /// `Healthy`: True, False or Unknown (`None`), a reason and a message.
    pub healthy: (Option<bool>, &'a str, String),
}

/// The conditions of a channel (`Ready`, `Reconciling`, `Stalled`, and `InSync` and `Healthy`
/// as given):
/// Ready once it serves a version, delivered; Stalled while `problem` (a reason and message)
/// keeps it from its desired version, or its delivery is blocked.
pub fn channel_conditions(existing: &[Condition], state: ChannelState<'_>, now: &Time) -> Vec<Condition> {
    let ChannelState { generation, serving, delivery, problem, in_sync, healthy } = state;
    let serving_message = match serving {
        Some(v) => format!("Serving version {v}"),
        None => "Serving no version yet".to_string(),
    };
    let not_reconciling =
        || ConditionSpec { type_: RECONCILING, status: false, reason: reasons::AS_EXPECTED, message: String::new() };
    let not_stalled =
        || ConditionSpec { type_: STALLED, status: false, reason: reasons::AS_EXPECTED, message: String::new() };
    let stalled = |reason, message: String| {
        (
            ConditionSpec { type_: READY, status: false, reason, message: message.clone() },
            not_reconciling(),
            ConditionSpec { type_: STALLED, status: true, reason, message },
        )
    };
    let (ready, reconciling, stalled) = match (problem, delivery) {
        (Some((reason, message)), _) => stalled(reason, message.to_string()),
        (None, DeliveryState::Blocked { reason, message }) => {
            stalled(reason, format!("{serving_message} but not delivered: {message}"))
        }
        (None, DeliveryState::InProgress(progress)) => {
            let message = format!("{serving_message}; delivering it: {progress}");
            (
                ConditionSpec { type_: READY, status: false, reason: reasons::DELIVERING, message: message.clone() },
                ConditionSpec { type_: RECONCILING, status: true, reason: reasons::DELIVERING, message },
                not_stalled(),
            )
        }
        (None, DeliveryState::Delivered) => (
            ConditionSpec {
                type_: READY,
                status: serving.is_some(),
                reason: reasons::VERSION_SERVED,
                message: serving_message,
            },
            not_reconciling(),
            not_stalled(),
        ),
    };
    let mut built = conditions(existing, [ready, reconciling, stalled, in_sync], generation, now);
    let (status, reason, message) = healthy;
    let status = match status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
    .to_string();
    let last_transition_time = existing
        .iter()
        .find(|c| c.type_ == HEALTHY && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    built.push(Condition {
        type_: HEALTHY.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    });
    built
}

/// The conditions of an Agent whose spec is not published (see `Observed::refusal`): not
/// Ready and Stalled with the refusal's reason, until the spec changes; the active version
/// stays. Stalled holds the refusal's own message, which a later sync carries on.
pub fn refused_conditions(
    existing: &[Condition],
    generation: Option<i64>,
    active: Option<i64>,
    refusal: &Refusal,
    in_sync: ConditionSpec<'_>,
    now: &Time,
) -> Vec<Condition> {
    let message = &refusal.message;
    let ready_message = match active {
        Some(v) => format!("{message} Version {v} stays active."),
        None => message.clone(),
    };
    let reason = refusal.reason;
    let specs = [
        ConditionSpec { type_: READY, status: false, reason, message: ready_message },
        ConditionSpec { type_: RECONCILING, status: false, reason: reasons::AS_EXPECTED, message: String::new() },
        ConditionSpec { type_: STALLED, status: true, reason, message: message.clone() },
        in_sync,
    ];
    conditions(existing, specs, generation, now)
}

/// The status of an Agent whose spec the operator cannot decode (`why` says where it stopped):
/// as it was, with not Ready and Stalled for the reason; nothing else of it is touched, since
/// nothing was decided. `None` when it says so already for this generation.
pub fn unreadable_status(agent: &Agent, why: &str, now: &Time) -> Option<AgentStatus> {
    let generation = agent.metadata.generation;
    let mut status = agent.status.clone().unwrap_or_default();
    let reason = reasons::DEFINITION_UNREADABLE;
    let reported = status
        .condition(STALLED)
        .is_some_and(|c| c.status == "True" && c.reason == reason && c.observed_generation == generation);
    if reported {
        return None;
    }
    let message = format!(
        "spec: the definition cannot be read ({why}); the items of steps and askUserQuestions may nest at most 32 \
         levels. Nothing is published until the spec changes."
    );
    let refusal = Refusal { reason, message };
    let in_sync = ConditionSpec {
        type_: IN_SYNC,
        status: false,
        reason,
        message: "The spec's definition cannot be read.".to_string(),
    };
    status.conditions =
        refused_conditions(&status.conditions, generation, status.active_version, &refusal, in_sync, now);
    Some(status)
}

/// Sets `phase`, `message`, `reason` and the matching conditions on a rollback status.
pub fn set_rollback_phase(
    status: &mut AgentRollbackStatus,
    phase: RollbackPhase,
    reason: Option<&str>,
    message: String,
    generation: Option<i64>,
    now: &Time,
) {
    status.conditions = phase_conditions(&status.conditions, phase, reason, &message, generation, now);
    status.phase = Some(phase);
    status.reason = reason.map(str::to_string);
    status.message = Some(message);
    status.observed_generation = generation;
    if phase.is_terminal() {
        status.completion_time = Some(now.clone());
    }
}

/// Sets `phase`, `message`, `reason` and the matching conditions on a promotion status.
pub fn set_promotion_phase(
    status: &mut AgentPromotionStatus,
    phase: RollbackPhase,
    reason: Option<&str>,
    message: String,
    generation: Option<i64>,
    now: &Time,
) {
    status.conditions = phase_conditions(&status.conditions, phase, reason, &message, generation, now);
    status.phase = Some(phase);
    status.reason = reason.map(str::to_string);
    status.message = Some(message);
    status.observed_generation = generation;
    if phase.is_terminal() {
        status.completion_time = Some(now.clone());
    }
}

/// The conditions of a one-shot request (a rollback, a promotion) in `phase`.
fn phase_conditions(
    existing: &[Condition],
    phase: RollbackPhase,
    reason: Option<&str>,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let message = message.to_string();
    let (ready, reconciling, stalled) = match phase {
        RollbackPhase::Pending => (
            ConditionSpec { type_: READY, status: false, reason: reasons::QUEUED, message: message.clone() },
            ConditionSpec { type_: RECONCILING, status: true, reason: reasons::QUEUED, message },
            ConditionSpec { type_: STALLED, status: false, reason: reasons::AS_EXPECTED, message: String::new() },
        ),
        RollbackPhase::Running => (
            ConditionSpec { type_: READY, status: false, reason: reasons::RUNNING, message: message.clone() },
            ConditionSpec { type_: RECONCILING, status: true, reason: reasons::RUNNING, message },
            ConditionSpec { type_: STALLED, status: false, reason: reasons::AS_EXPECTED, message: String::new() },
        ),
        RollbackPhase::Succeeded => (
            ConditionSpec { type_: READY, status: true, reason: reasons::SUCCEEDED, message },
            ConditionSpec { type_: RECONCILING, status: false, reason: reasons::SUCCEEDED, message: String::new() },
            ConditionSpec { type_: STALLED, status: false, reason: reasons::AS_EXPECTED, message: String::new() },
        ),
        RollbackPhase::Failed => {
            let reason = reason.unwrap_or(reasons::FAILED);
            (
                ConditionSpec { type_: READY, status: false, reason, message: message.clone() },
                ConditionSpec { type_: RECONCILING, status: false, reason: reasons::FAILED, message: String::new() },
                ConditionSpec { type_: STALLED, status: true, reason, message },
            )
        }
    };
    conditions(existing, [ready, reconciling, stalled], generation, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    fn in_sync() -> ConditionSpec<'static> {
        ConditionSpec { type_: "InSync", status: true, reason: reasons::MATCHES_ACTIVE_VERSION, message: String::new() }
    }

    /// Version 1 active and delivered, at `generation`, `busy` or not.
    fn delivered(generation: Option<i64>, busy: Option<&str>) -> AgentState<'_> {
        AgentState { generation, active: Some(1), busy, delivery: &DeliveryState::Delivered, in_sync: in_sync() }
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let first = agent_conditions(&[], delivered(Some(1), None), &at(10));
        let second = agent_conditions(&first, delivered(Some(1), None), &at(20));
        assert_eq!(first, second);
    }

    #[test]
    fn changed_condition_gets_a_new_transition_time() {
        let first = agent_conditions(&[], delivered(Some(1), None), &at(10));
        let second = agent_conditions(&first, delivered(Some(2), Some(reasons::PUBLISHING)), &at(20));
        let ready = second.iter().find(|c| c.type_ == READY).expect("Ready is set");
        assert_eq!((ready.status.as_str(), &ready.last_transition_time), ("False", &at(20)));
        let stalled = second.iter().find(|c| c.type_ == STALLED).expect("Stalled is set");
        assert_eq!(stalled.last_transition_time, at(10));
    }

    #[test]
    fn failed_rollback_is_stalled_with_its_reason() {
        let mut status = AgentRollbackStatus::default();
        set_rollback_phase(&mut status, RollbackPhase::Failed, Some("AtFirstVersion"), "no".into(), Some(1), &at(5));
        let by_type =
            |t: &str| status.conditions.iter().find(|c| c.type_ == t).map(|c| (c.status.clone(), c.reason.clone()));
        assert_eq!(by_type(STALLED), Some(("True".into(), "AtFirstVersion".into())));
        assert_eq!(by_type(READY), Some(("False".into(), "AtFirstVersion".into())));
        assert_eq!(by_type(RECONCILING), Some(("False".into(), "Failed".into())));
        assert_eq!(status.completion_time, Some(at(5)));
    }
}

//! The loop that carries the planner's decisions out, through a [`Port`]: decide a unit, apply
//! its steps, fold each answer in, observe again where a write met a newer state than planned,
//! and decide again, until the planner has nothing left to do. The operator's port is the API
//! server (`controller::sync`); the property tests' port is a model of it that also crashes
//! and loses statuses (`plan::sim`). Both run this loop, so the rules that make a unit safe to
//! cut short are tested as they run.

use std::future::Future;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::sync::decide;
use super::{Applied, Observed, Step};
use crate::api::RollbackPhase;

/// What became of one write.
#[derive(Debug)]
pub enum Outcome {
    /// Done; fold the answer in and go on with the unit.
    Done(Applied),
    /// The write met a newer state than the plan assumed. Fold in `Some` answer (the fresh
    /// object) or observe everything again on `None`, then decide anew.
    Stale(Option<Applied>),
}

/// Where the loop's writes and reads go.
pub trait Port {
    type Error;

    /// Applies one step: a single write, or writes made together, in any order, each of which
    /// is attempted; what became of each.
    fn apply(&mut self, observed: &Observed, step: Step) -> impl Future<Output = Result<Vec<Outcome>, Self::Error>>;

    /// Reads everything afresh.
    fn observe(&mut self) -> impl Future<Output = Result<Observed, Self::Error>>;

    /// The time of the next decision.
    fn now(&mut self) -> Time;

    /// Before each unit; `queue` says whether rollbacks wait behind the one in flight.
    fn before_unit(&mut self, _queue: bool) -> impl Future<Output = ()> {
        async {}
    }

    /// A write the API server confirmed, before it is folded into `before`.
    fn confirmed(&mut self, _before: &Observed, _applied: &Applied) {}
}

/// How the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Worked {
    /// The planner has nothing left to do.
    Settled,
    /// `max_units` units were done and rollbacks finished meanwhile: a long queue, which a
    /// next pass goes on with.
    MoreToDo,
    /// `max_units` units were done and no rollback finished: a planner that fails to settle.
    NotSettled,
}

/// Decides and applies units of work on `observed` until the planner has nothing left to do,
/// or for at most `max_units` units.
pub async fn work<P: Port>(port: &mut P, observed: &mut Observed, max_units: usize) -> Result<Worked, P::Error> {
    let pending_before = observed.pending_rollbacks().len();
    for _ in 0..max_units {
        let unfinished =
            observed.rollbacks.iter().filter(|r| !super::phase_of(r).is_some_and(RollbackPhase::is_terminal));
        port.before_unit(unfinished.count() > 1).await;
        let now = port.now();
        let steps = decide(observed, &now);
        if steps.is_empty() {
            return Ok(Worked::Settled);
        }
        for step in steps {
            let outcomes = port.apply(observed, step).await?;
            let stale = outcomes.iter().any(|o| matches!(o, Outcome::Stale(_)));
            let mut observe_again = false;
            for outcome in outcomes {
                match outcome {
                    Outcome::Done(applied) => {
                        port.confirmed(observed, &applied);
                        observed.fold(applied);
                    }
                    Outcome::Stale(Some(fresh)) => observed.fold(fresh),
                    Outcome::Stale(None) => observe_again = true,
                }
            }
            if observe_again {
                *observed = port.observe().await?;
            }
            if stale {
                break;
            }
        }
    }
    Ok(if observed.pending_rollbacks().len() < pending_before { Worked::MoreToDo } else { Worked::NotSettled })
}

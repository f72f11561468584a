//! The per-Agent sync loop: observe once, then decide and apply one unit at a time, folding
//! the API server's answers in, until the planner has nothing left to do.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::ResourceExt;
use kube::api::PatchParams;
use tracing::{debug, warn};

use super::apply::{agent_status, apply};
use super::context::Context;
use super::index::{AgentKey, Start};
use super::lean_agent::LeanAgent;
use super::observe::{Freshness, observe, resume_from};
use super::turns::Turn;
use crate::api::RollbackPhase;
use crate::api::conditions::{HasConditions, READY, STALLED, reasons};
use crate::api::keys::FIELD_MANAGER;
use crate::metrics::RollbackLabels;
use crate::plan::delivery::{awaits, awaits_delivery};
use crate::plan::driver::{self, Outcome, Port, Worked};
use crate::plan::rollback::stopped;
use crate::plan::status::unreadable_status;
use crate::plan::{Applied, EventNote, EventTarget, FailureReason, Observed, Step, Write, phase_of};
use crate::{Error, Result};

/// Units of work one pass of a sync may do: a long queue of rollbacks goes on in the next pass,
/// read afresh; the bound is an error only where no rollback finished, should the planner ever
/// fail to settle.
const MAX_UNITS: usize = 2000;

/// Runs the sync of one Agent, unless `done` (asked once the Agent's turn is taken) says the
/// work that asked for it has been done by a sync that ran meanwhile; passes again for as long
/// as others ask for one while it runs. `None` when a sync of the Agent runs already: it passes
/// once more for this caller, who need not wait (see `turns`). Else true when the
/// Agent is left waiting for its delivery (a rollout, or something to report): nothing watches
/// workloads, so the Agent controller looks again after a while.
pub async fn sync_agent(ctx: &Context, agent: &AgentKey, done: impl FnOnce() -> bool) -> Result<Option<bool>> {
    let (namespace, name) = (agent.namespace.as_str(), agent.name.as_str());
    debug!(namespace, agent = name, "Sync requested");
    let Some(mut turn) = ctx.turns.take(agent) else {
        debug!(namespace, agent = name, "Sync handed to the one running");
        return Ok(None);
    };
    if done() {
        // Still the turn's end: a pass asked for meanwhile is made.
        if !turn.again() {
            return Ok(Some(false));
        }
    }
    loop {
        debug!(namespace, agent = name, "Sync started");
        match sync_once(ctx, agent, &turn).await? {
            Pass::MoreToDo => continue,
            Pass::Done { delivering } if !turn.again() => return Ok(Some(delivering)),
            Pass::Done { .. } => {}
        }
    }
}

/// How a pass of a sync ended.
enum Pass {
    /// Nothing left to do; `delivering` as [`sync_agent`] says.
    Done { delivering: bool },
    /// It did `MAX_UNITS` units and rollbacks are still finishing: a long queue, which the next
    /// pass goes on with.
    MoreToDo,
}

/// One pass of an Agent's sync.
async fn sync_once(ctx: &Context, agent: &AgentKey, turn: &Turn<'_>) -> Result<Pass> {
    let (namespace, name) = (agent.namespace.as_str(), agent.name.as_str());
    // Taken before the first read: a change to the versions by someone else from here on voids
    // the state this sync ends with.
    let epoch = ctx.index.epoch(agent);
    let start = ctx.index.take(agent);
    let (observed, settled) = match run_units(ctx, namespace, name, start, turn).await {
        Err(Error::UnreadableAgent { why, .. }) => {
            report_unreadable(ctx, namespace, name, &why).await?;
            return Ok(Pass::Done { delivering: false });
        }
        result => result?,
    };
    if !settled {
        // Not a settled state to resume from: the next pass reads everything again.
        return Ok(Pass::MoreToDo);
    }
    // A channel waits for its delivery, or for its version's bake to end: nothing watches the
    // workloads or the clock.
    let channels_delivering = observed.channels.iter().any(|c| {
        let status = c.channel.status.as_ref();
        awaits(status.and_then(|s| s.condition(READY))) || status.is_some_and(baking)
    });
    let delivering = observed.agent.as_ref().is_some_and(awaits_delivery) || channels_delivering;
    ctx.index.settle(agent, epoch, observed);
    Ok(Pass::Done { delivering })
}

/// Whether the channel's status says its served version is being judged.
fn baking(status: &crate::api::AgentChannelStatus) -> bool {
    status.analysis.as_ref().is_some_and(|a| crate::plan::analysis::judging(a.phase))
}

/// An Agent whose spec cannot be decoded is told so in its status and an Event, and nothing
/// else is done for it: its rollbacks wait, and the next change of its spec is read again.
/// Its status and policy are read without the definition (see `lean_agent`).
async fn report_unreadable(ctx: &Context, namespace: &str, name: &str, why: &str) -> Result<()> {
    warn!(namespace, agent = name, why, "Cannot decode the Agent's spec");
    let api: Api<LeanAgent> = Api::namespaced(ctx.client.clone(), namespace);
    let read = api.get_opt(name).await.map_err(|source| Error::GetAgent {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    let Some(LeanAgent(agent)) = read else { return Ok(()) };
    let Some(status) = unreadable_status(&agent, why, &Time(Timestamp::now())) else { return Ok(()) };
    let note = status.condition(STALLED).map(|c| c.message.clone()).unwrap_or_default();
    let event = Write::Event(EventNote {
        on: EventTarget::Agent,
        related: None,
        warning: true,
        reason: reasons::DEFINITION_UNREADABLE,
        action: "Publish",
        note,
    });
    // As `apply` writes an Agent's status, but the answer is decoded as a lean Agent too.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &agent_status(&status)).await.map_err(|source| Error::PatchAgentStatus {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    let observed = Observed::new(namespace.into(), name.into(), Some(agent), Vec::new(), Vec::new());
    apply(ctx, &observed, event.into()).await?;
    Ok(())
}

/// Works until the planner has nothing left to do, or for `MAX_UNITS` units of a long queue;
/// returns the state it left, and whether the planner had nothing left to do.
async fn run_units(
    ctx: &Context,
    namespace: &str,
    name: &str,
    start: Start,
    turn: &Turn<'_>,
) -> Result<(Observed, bool)> {
    let settled = matches!(start, Start::Settled(_));
    let kept = match start {
        Start::Settled(Some(state)) => resume_from(ctx, state),
        _ => None,
    };
    let mut observed = match kept {
        Some(observed) => observed,
        None => observe(ctx, namespace, name, Freshness::Indexed).await?,
    };
    super::delivery::observe(ctx, &mut observed).await?;
    debug!(namespace, agent = name, settled, "Observed");
    match work(ctx, &mut observed, turn).await {
        Ok(settled) => Ok((observed, settled)),
        Err(error) => {
            mark_stopped(ctx, &observed).await;
            Err(error)
        }
    }
}

/// Decides and applies units of work on `observed` until the planner has nothing left to do
/// (true), or for `MAX_UNITS` units if rollbacks finished meanwhile (false: a long queue, not a
/// planner that fails to settle, which is an error).
async fn work(ctx: &Context, observed: &mut Observed, turn: &Turn<'_>) -> Result<bool> {
    let delivered_before = delivered(observed);
    let mut port = ApiServer { ctx, turn, namespace: observed.namespace.clone(), name: observed.agent_name.clone() };
    match driver::work(&mut port, observed, MAX_UNITS).await? {
        Worked::Settled => {
            let delivered_after = delivered(observed);
            if delivered_after.is_some() && delivered_after != delivered_before {
                record_delivery(ctx, observed);
            }
            Ok(true)
        }
        Worked::MoreToDo => Ok(false),
        Worked::NotSettled => Err(Error::NotSettled {
            namespace: observed.namespace.clone(),
            name: observed.agent_name.clone(),
            steps: MAX_UNITS,
        }),
    }
}

/// The sync loop's port in production: the API server, through one Agent's turn.
struct ApiServer<'a> {
    ctx: &'a Context,
    turn: &'a Turn<'a>,
    namespace: String,
    name: String,
}

impl Port for ApiServer<'_> {
    type Error = Error;

    async fn apply(&mut self, observed: &Observed, step: Step) -> Result<Vec<Outcome>> {
        let label = step_label(&step);
        let outcomes = apply(self.ctx, observed, step).await?;
        let stale = outcomes.iter().any(|o| matches!(o, Outcome::Stale(_)));
        debug!(namespace = self.namespace, agent = self.name, step = %label, stale, "Applied step");
        Ok(outcomes)
    }

    async fn observe(&mut self) -> Result<Observed> {
        let mut observed = observe(self.ctx, &self.namespace, &self.name, Freshness::Consistent).await?;
        super::delivery::observe(self.ctx, &mut observed).await?;
        Ok(observed)
    }

    fn now(&mut self) -> Time {
        Time(Timestamp::now())
    }

    /// A queue of rollbacks lets the syncs of other Agents go first (see `turns`).
    async fn before_unit(&mut self, queue: bool) {
        self.turn.give_way(queue).await;
    }

    fn confirmed(&mut self, before: &Observed, applied: &Applied) {
        count(self.ctx, before, applied);
    }
}

/// After a failed sync, brings the statuses of its Agent's rollbacks up to their records and
/// marks Pending those waiting behind another (see `plan::rollback::stopped`); best effort:
/// the retry writes them if these writes fail too.
async fn mark_stopped(ctx: &Context, observed: &Observed) {
    let steps = stopped(observed, &Time(Timestamp::now()));
    if steps.is_empty() {
        return;
    }
    if let Err(error) = apply(ctx, observed, Step::Together(steps)).await {
        debug!(namespace = observed.namespace, agent = observed.agent_name, error = %error, "Could not write the rollbacks' statuses after a failed sync");
    }
}

/// The active version, if the Agent's status says it is delivered (and the Agent Ready).
fn delivered(observed: &Observed) -> Option<i64> {
    let status = observed.agent.as_ref()?.status.as_ref()?;
    let holds = status.delivery.as_ref().is_some_and(|d| d.version.is_some() && d.version == status.active_version);
    let ready = status.is_true(READY);
    (holds && ready).then_some(status.active_version?)
}

/// Records the time a delivery took, by the sync that completed it: from the
/// active version's creation, or the rollback that made it active (Pop), to now.
fn record_delivery(ctx: &Context, observed: &Observed) {
    let Some(status) = observed.agent.as_ref().and_then(|a| a.status.as_ref()) else { return };
    let now = Timestamp::now();
    let Some(active) = observed.newest() else { return };
    let changed =
        [active.metadata.creation_timestamp.as_ref().map(|t| t.0), status.last_rollback.as_ref().map(|r| r.time.0)]
            .into_iter()
            .flatten()
            .max();
    if let Some(changed) = changed {
        let seconds = now.duration_since(changed).as_secs_f64().max(0.0);
        ctx.metrics.delivery_duration.observe(seconds);
    }
}

/// Counts what the API server confirmed: rollbacks that finished (not those whose status was
/// only written again) and published versions.
fn count(ctx: &Context, before: &Observed, applied: &Applied) {
    match applied {
        Applied::Rollback(rollback) => {
            let finished_before =
                before.rollback(&rollback.name_any()).and_then(phase_of).is_some_and(|p| p.is_terminal());
            if finished_before {
                return;
            }
            // The record, where written: the state it says is the rollback's, even before the
            // status copies it.
            let recorded = crate::plan::durable::record_of(rollback).map(|r| r.status);
            let status = recorded.as_ref().or(rollback.status.as_ref());
            let outcome = match status.and_then(|s| s.phase) {
                Some(RollbackPhase::Succeeded) => "Succeeded",
                Some(RollbackPhase::Failed) => {
                    let reason = status.and_then(|s| s.reason.as_deref());
                    FailureReason::ALL.iter().map(|r| r.as_str()).find(|r| Some(*r) == reason).unwrap_or("Failed")
                }
                _ => return,
            };
            let labels = RollbackLabels { strategy: rollback.spec.strategy.as_str(), outcome };
            ctx.metrics.rollbacks.get_or_create(&labels).inc();
        }
        Applied::VersionCreated(version) if version.spec.rollback_name.is_none() => {
            ctx.metrics.versions_published.inc();
        }
        _ => {}
    }
}

fn step_label(step: &Step) -> String {
    match step {
        Step::One(write) => write_label(write),
        Step::Together(writes) => writes.iter().map(write_label).collect::<Vec<_>>().join(" + "),
    }
}

fn write_label(write: &Write) -> String {
    match write {
        Write::CreateVersion(v) => format!("create {}", v.spec.version),
        Write::DeleteVersion { name, .. } => format!("delete {name}"),
        Write::PatchAgentStatus(s) => format!("agent status active={:?}", s.active_version),
        Write::WriteRollback { name, record, .. } => format!("rollback {name} {:?}", record.status.phase),
        Write::CopyRollbackStatus { name } => format!("rollback {name} status"),
        Write::ReadRollback { name } => format!("read rollback {name}"),
        Write::KeepPopped { rollback, .. } => format!("keep the snapshot rollback {rollback} pops"),
        Write::ReadPopped { rollback } => format!("read the snapshot rollback {rollback} popped"),
        Write::ListRollbacks => "list rollbacks".into(),
        Write::Event(e) => format!("event {}", e.reason),
        Write::ApplyConfigMap { config_map, .. } => {
            format!("config map {}", config_map.metadata.name.as_deref().unwrap_or_default())
        }
        Write::RollWorkload { workload, held, .. } => format!("roll {} to {}", workload.name, held.version),
        Write::ReadChannel { name } => format!("read channel {name}"),
        Write::ListPromotions => "list promotions".into(),
        Write::CreateRollback(r) => format!("create rollback {}", r.name_any()),
        Write::CreateJob { job, .. } => format!("create job {}", job.name_any()),
        Write::JudgeVersion { name, channel, verdict, .. } => format!("{name} {verdict} in {channel}"),
        Write::SetVersionFinalizers { name, finalizers, .. } => format!("{name} finalizers {finalizers:?}"),
        Write::WritePromotion { name, record, .. } => format!("promotion {name} {:?}", record.status.phase),
        Write::PatchChannelStatus { name, status } => format!("channel {name} status version={:?}", status.version),
    }
}

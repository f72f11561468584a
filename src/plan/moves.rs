//! Channel moves: promotions (`AgentPromotion`) and channel rollbacks (`AgentRollback` with
//! `spec.channel`), one-shot, audited moves of what a channel serves. A move holds its channel
//! on a version in the channel's `status.override`, never in its spec, until the channel's
//! desired version next changes. One channel's moves run one at a time, in creation order.
//!
//! Exactly once, and status a cache, as for the Agent's rollbacks (see `durable`): every move
//! the controller writes carries its record (`agentops.dev/record`): the status it wrote, and
//! the channel it moved with the desired version that channel had then. The record is written
//! first, with a compare-and-swap on the move's resourceVersion; the status is its copy. A move
//! goes Pending → Running (the decision: which version, recorded before anything else) →
//! Succeeded once the channel's ConfigMap holds the version; or straight to Failed, changing
//! nothing.
//!
//! The override is stored nowhere but in those records: a channel's override is its newest
//! Running or Succeeded move, unless the channel's desired version is no longer the one that
//! move recorded. When it changes, the move's record is marked ended, so that the override
//! never comes back should the desired version return to what it was. So a channel's status,
//! lost, is rebuilt with nothing run again.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::channel::ChannelObserved;
use super::durable::RollbackRecord;
use super::rollback::FailureReason;
use super::status::{set_promotion_phase, set_rollback_phase};
use super::{EventNote, EventTarget, Observed, Step, Write};
use crate::api::conditions::events;
use crate::api::keys::{HEALTH_LABEL_PREFIX, ROLLBACK_RECORD_ANNOTATION};
use crate::api::{
    AgentPromotion, AgentPromotionStatus, AgentRollback, ChannelOverride, RollbackPhase, RollbackStrategy,
};

/// The durable record of a promotion: the status the controller wrote, and the channel it
/// moved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotionRecord {
    pub status: AgentPromotionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelMark>,
}

/// The channel a move moved (this uid, not just this name), the desired version it had then
/// (its number and the uid of that version), and whether the override has ended since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelMark {
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_uid: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

/// The record on a promotion, if the controller wrote one; one that does not parse counts as
/// none.
pub fn record_of(promotion: &AgentPromotion) -> Option<PromotionRecord> {
    let text = promotion.metadata.annotations.as_ref()?.get(ROLLBACK_RECORD_ANNOTATION)?;
    serde_json::from_str(text).ok()
}

/// The promotions of an Agent's channels, each with the status its record holds.
#[derive(Clone, Debug, Default)]
pub struct Promotions {
    pub items: Vec<AgentPromotion>,
    /// The channel each promotion's record was written for, by promotion name.
    pub marks: BTreeMap<String, ChannelMark>,
    /// Promotions whose status on the API server is not their record's copy.
    pub unsynced: BTreeSet<String>,
}

impl Promotions {
    pub fn new(promotions: Vec<AgentPromotion>) -> Self {
        let mut all = Self::default();
        for promotion in promotions {
            all.fold(promotion);
        }
        all
    }

    /// Takes a promotion as read or written: its record's status replaces the one read.
    pub fn fold(&mut self, mut promotion: AgentPromotion) {
        let name = promotion.name_any();
        self.marks.remove(&name);
        self.unsynced.remove(&name);
        match record_of(&promotion) {
            Some(record) => {
                if promotion.status.as_ref() != Some(&record.status) {
                    self.unsynced.insert(name.clone());
                }
                if let Some(mark) = record.channel {
                    self.marks.insert(name.clone(), mark);
                }
                promotion.status = Some(record.status);
            }
            None => promotion.status = None,
        }
        match self.items.iter_mut().find(|p| p.name_any() == name) {
            Some(slot) => *slot = promotion,
            None => self.items.push(promotion),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.items.retain(|p| p.name_any() != name);
        self.marks.remove(name);
        self.unsynced.remove(name);
    }

    pub fn get(&self, name: &str) -> Option<&AgentPromotion> {
        self.items.iter().find(|p| p.name_any() == name)
    }
}

/// Creation order, as for rollbacks (see `rollback::queue_key`).
pub fn queue_key(promotion: &AgentPromotion) -> (u64, Option<Time>, String) {
    let recorded = promotion.status.as_ref().and_then(|s| s.creation_revision.clone());
    let revision =
        super::parse_revision(recorded.or_else(|| promotion.resource_version()).as_deref()).unwrap_or(u64::MAX);
    (revision, promotion.metadata.creation_timestamp.clone(), promotion.name_any())
}

/// One move of a channel: a promotion or a channel rollback.
#[derive(Clone, Copy, Debug)]
pub enum Move<'a> {
    Promotion(&'a AgentPromotion),
    Rollback(&'a AgentRollback),
}

impl<'a> Move<'a> {
    fn name(&self) -> String {
        match self {
            Self::Promotion(p) => p.name_any(),
            Self::Rollback(r) => r.name_any(),
        }
    }

    fn phase(&self) -> Option<RollbackPhase> {
        match self {
            Self::Promotion(p) => p.status.as_ref().and_then(|s| s.phase),
            Self::Rollback(r) => r.status.as_ref().and_then(|s| s.phase),
        }
    }

    fn queue_key(&self) -> (u64, Option<Time>, String) {
        match self {
            Self::Promotion(p) => queue_key(p),
            Self::Rollback(r) => super::rollback::queue_key(r),
        }
    }

    fn mark(&self, observed: &'a Observed) -> Option<&'a ChannelMark> {
        match self {
            Self::Promotion(p) => observed.promotions.marks.get(&p.name_any()),
            Self::Rollback(r) => observed.channel_marks.get(&r.name_any()),
        }
    }

    /// The version it moves (moved) the channel to, and the one it served before.
    fn versions(&self) -> (Option<i64>, Option<i64>) {
        match self {
            Self::Promotion(p) => p.status.as_ref().map_or((None, None), |s| (s.version, s.from_version)),
            Self::Rollback(r) => r.status.as_ref().map_or((None, None), |s| (s.active_version, s.from_version)),
        }
    }

    fn expected(&self) -> Option<i64> {
        match self {
            Self::Promotion(p) => p.spec.expected_version,
            Self::Rollback(r) => r.spec.expected_active_version,
        }
    }

    fn requested_by(&self) -> Option<&'a str> {
        match self {
            Self::Promotion(p) => p.spec.requested_by.as_deref(),
            Self::Rollback(r) => r.spec.requested_by.as_deref(),
        }
    }

    fn generation(&self) -> Option<i64> {
        match self {
            Self::Promotion(p) => p.metadata.generation,
            Self::Rollback(r) => r.metadata.generation,
        }
    }

    fn resource_version(&self) -> Option<String> {
        match self {
            Self::Promotion(p) => p.resource_version(),
            Self::Rollback(r) => r.resource_version(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Promotion(_) => "AgentPromotion",
            Self::Rollback(_) => "AgentRollback",
        }
    }

    fn event_target(&self) -> EventTarget {
        match self {
            Self::Promotion(p) => EventTarget::Promotion(p.name_any()),
            Self::Rollback(r) => EventTarget::Rollback(r.name_any()),
        }
    }

    /// An Event on the move, naming who asked for it.
    fn event(&self, warning: bool, what: Phase, note: String) -> EventNote {
        let note = match self.requested_by() {
            Some(who) => format!("{note} Requested by {who}."),
            None => note,
        };
        let (reason, action) = match (self, what) {
            (Self::Promotion(_), Phase::Started) => (events::PROMOTION_STARTED, "Promote"),
            (Self::Promotion(_), Phase::Succeeded) => (events::PROMOTION_SUCCEEDED, "Promote"),
            (Self::Promotion(_), Phase::Failed) => (events::PROMOTION_FAILED, "Promote"),
            (Self::Rollback(_), Phase::Started) => (events::ROLLBACK_STARTED, "Rollback"),
            (Self::Rollback(_), Phase::Succeeded) => (events::ROLLBACK_SUCCEEDED, "Rollback"),
            (Self::Rollback(_), Phase::Failed) => (events::ROLLBACK_FAILED, "Rollback"),
        };
        EventNote { on: self.event_target(), related: None, warning, reason, action, note }
    }

    /// The write of its record with `phase` and what it records; its channel mark as given.
    fn write(
        &self,
        observed: &Observed,
        change: Change<'_>,
        mark: Option<ChannelMark>,
        copy_status: bool,
        announce: Vec<EventNote>,
        now: &Time,
    ) -> Write {
        let (name, resource_version) = (self.name(), self.resource_version());
        match self {
            Self::Promotion(p) => {
                let mut status = p.status.clone().unwrap_or_default();
                if status.creation_revision.is_none() {
                    status.creation_revision = p.resource_version();
                }
                if let Some((phase, reason, message)) = change.phase {
                    status.agent_name = Some(observed.agent_name.clone());
                    if let Some((to, from)) = change.moved {
                        (status.version, status.from_version) = (to, from);
                        status.start_time = Some(now.clone());
                    }
                    set_promotion_phase(&mut status, phase, reason, message, self.generation(), now);
                }
                let record = PromotionRecord { status, channel: mark };
                Write::WritePromotion { name, resource_version, record: Box::new(record), copy_status, announce }
            }
            Self::Rollback(r) => {
                let mut status = r.status.clone().unwrap_or_default();
                if status.creation_revision.is_none() {
                    status.creation_revision = r.resource_version();
                }
                if let Some((phase, reason, message)) = change.phase {
                    if let Some((to, from)) = change.moved {
                        (status.active_version, status.from_version, status.restored_version) = (to, from, to);
                        status.start_time = Some(now.clone());
                    }
                    set_rollback_phase(&mut status, phase, reason, message, self.generation(), now);
                }
                let record = RollbackRecord { status, agent: observed.marks.get(&name).cloned(), channel: mark };
                Write::WriteRollback { name, resource_version, record: Box::new(record), copy_status, announce }
            }
        }
    }
}

/// Which Event a move gets.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Started,
    Succeeded,
    Failed,
}

/// What a write of a move's record changes: its phase (with reason and message), and, when
/// it decides, the version it moves to and the one served before.
#[derive(Default)]
struct Change<'a> {
    phase: Option<(RollbackPhase, Option<&'a str>, String)>,
    moved: Option<(Option<i64>, Option<i64>)>,
}

/// The moves of channel `name`, in creation order.
pub fn moves_of<'a>(observed: &'a Observed, name: &str) -> Vec<Move<'a>> {
    let promotions = observed.promotions.items.iter().filter(|p| p.spec.channel == name).map(Move::Promotion);
    let rollbacks = observed.rollbacks.iter().filter(|r| r.spec.channel.as_deref() == Some(name)).map(Move::Rollback);
    let mut moves: Vec<Move<'a>> = promotions.chain(rollbacks).collect();
    moves.sort_by_cached_key(|m| m.queue_key());
    moves
}

/// A channel's desired version, as a move records it: its number and that version's uid (a
/// number made again after a Pop is another version).
fn baseline(observed: &Observed, channel: &ChannelObserved) -> (Option<i64>, Option<String>) {
    let desired = super::channel::desired(&channel.channel, observed);
    let uid = desired.and_then(|n| observed.version(n)).and_then(|v| v.metadata.uid.clone());
    (desired, uid)
}

/// Where a channel's override stands, by its moves' records.
#[derive(Clone, Debug, PartialEq)]
pub enum Hold {
    /// No move holds the channel.
    None,
    /// Move `by` holds the channel on `to.version`.
    Held { by: String, to: ChannelOverride },
    /// Move `by` held it, but the channel's desired version has changed since: its record is
    /// to be marked ended.
    Ended { by: String },
}

/// The override of a channel: its newest Running or Succeeded move, if its record says it was
/// made for this channel at the desired version the channel still has, and not ended.
pub fn hold(observed: &Observed, channel: &ChannelObserved) -> Hold {
    let uid = channel.channel.metadata.uid.as_deref();
    let newest = moves_of(observed, &channel.channel.name_any()).into_iter().rfind(|m| {
        matches!(m.phase(), Some(RollbackPhase::Running | RollbackPhase::Succeeded))
            && uid.is_some()
            && m.mark(observed).map(|mark| mark.uid.as_str()) == uid
    });
    let Some(newest) = newest else { return Hold::None };
    let by = newest.name();
    let Some(mark) = newest.mark(observed) else { return Hold::None };
    if mark.ended {
        return Hold::None;
    }
    if (mark.desired, mark.desired_uid.clone()) != baseline(observed, channel) {
        return Hold::Ended { by };
    }
    let (Some(version), replacing) = newest.versions() else { return Hold::None };
    let (promotion, rollback) = match newest {
        Move::Promotion(_) => (Some(by.clone()), None),
        Move::Rollback(_) => (None, Some(by.clone())),
    };
    Hold::Held { by, to: ChannelOverride { version, replacing, rollback, promotion } }
}

/// A version's verdict in a channel, as its label says: `Healthy` or `Failed`.
pub fn verdict<'a>(observed: &'a Observed, number: i64, channel: &str) -> Option<&'a str> {
    let version = observed.version(number)?;
    version.metadata.labels.as_ref()?.get(&health_key(channel)).map(String::as_str)
}

/// The key of a version's verdict in `channel`: its label (the verdict) and its annotation
/// (the reason).
pub fn health_key(channel: &str) -> String {
    format!("{HEALTH_LABEL_PREFIX}{channel}")
}

/// Why a promotion fails. Each is permanent: the promotion is `Failed` and nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromotionFailure {
    ChannelNotFound,
    VersionNotFound,
    NotHealthyInSource,
    VersionQuarantined,
    ActiveVersionChanged,
    AlreadyActive,
}

impl PromotionFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChannelNotFound => "ChannelNotFound",
            Self::VersionNotFound => "VersionNotFound",
            Self::NotHealthyInSource => "NotHealthyInSource",
            Self::VersionQuarantined => "VersionQuarantined",
            Self::ActiveVersionChanged => "ActiveVersionChanged",
            Self::AlreadyActive => "AlreadyActive",
        }
    }
}

/// The version a channel serves: its override's, else its desired version, unless that is
/// quarantined there, when it keeps what it served.
pub fn serving(observed: &Observed, channel: &ChannelObserved) -> Option<i64> {
    match hold(observed, channel) {
        Hold::Held { to, .. } => Some(to.version),
        _ => match super::channel::desired(&channel.channel, observed) {
            Some(number) if super::channel::quarantined(observed, channel, number) => {
                super::channel::served_before(channel)
            }
            desired => desired,
        },
    }
}

/// Why a move cannot run: its reason (as `status.reason` says it) and message.
type Refusal = (&'static str, String);

/// What a move would move its channel to, or why it cannot: the planner's answer, also for
/// the kubectl plugin's `--dry-run`.
pub fn choose(observed: &Observed, channel: &ChannelObserved, change: Move<'_>) -> Result<i64, Refusal> {
    let name = channel.channel.name_any();
    let agent = &observed.agent_name;
    let served = serving(observed, channel);
    if observed.agent.is_none() {
        let message = format!("Agent {agent} not found in namespace {}.", observed.namespace);
        return Err((FailureReason::AgentNotFound.as_str(), message));
    }
    let (target, allow_failed) = match change {
        Move::Promotion(p) => (promotion_target(observed, p)?, p.spec.allow_failed),
        Move::Rollback(r) => match r.spec.strategy {
            RollbackStrategy::LastKnownGood => {
                let good = observed
                    .versions
                    .iter()
                    .rev()
                    .map(|v| v.spec.version)
                    .find(|n| Some(*n) != served && verdict(observed, *n, &name) == Some("Healthy"));
                let Some(good) = good else {
                    return Err((
                        FailureReason::NoKnownGoodVersion.as_str(),
                        format!(
                            "No version other than the one it serves is Healthy in channel {name}; nothing was changed."
                        ),
                    ));
                };
                (good, false)
            }
            _ => (r.spec.target_version.unwrap_or_default(), false),
        },
    };
    if let Some(expected) = change.expected()
        && Some(expected) != served
    {
        let served = served.map_or_else(|| "no version".to_string(), |v| format!("version {v}"));
        return Err((
            PromotionFailure::ActiveVersionChanged.as_str(),
            format!("The expected version is {expected} but channel {name} serves {served}; nothing was changed."),
        ));
    }
    if observed.version(target).is_none() {
        return Err((
            PromotionFailure::VersionNotFound.as_str(),
            format!("Version {target} of Agent {agent} does not exist (never made, popped or pruned)."),
        ));
    }
    if Some(target) == served {
        return Err((
            PromotionFailure::AlreadyActive.as_str(),
            format!("Channel {name} already serves version {target}."),
        ));
    }
    if verdict(observed, target, &name) == Some("Failed") && !allow_failed {
        let how = match change {
            Move::Promotion(_) => "a promotion with allowFailed serves it there anyway",
            Move::Rollback(_) => "an AgentPromotion with allowFailed is the deliberate way back to it",
        };
        return Err((
            PromotionFailure::VersionQuarantined.as_str(),
            format!("Version {target} Failed in channel {name}; {how}."),
        ));
    }
    Ok(target)
}

/// The version a promotion asks for: given, or what its source channel serves if Healthy there.
fn promotion_target(observed: &Observed, promotion: &AgentPromotion) -> Result<i64, Refusal> {
    let spec = &promotion.spec;
    let agent = &observed.agent_name;
    match (&spec.version, &spec.from_channel) {
        (Some(version), _) => Ok(*version),
        (None, Some(source)) => {
            let Some(from) = observed.channels.iter().find(|c| &c.channel.name_any() == source) else {
                return Err((
                    PromotionFailure::ChannelNotFound.as_str(),
                    format!("Channel {source} of Agent {agent} not found in namespace {}.", observed.namespace),
                ));
            };
            let Some(version) = serving(observed, from) else {
                return Err((
                    PromotionFailure::NotHealthyInSource.as_str(),
                    format!("Channel {source} serves no version yet."),
                ));
            };
            if verdict(observed, version, source) != Some("Healthy") {
                return Err((
                    PromotionFailure::NotHealthyInSource.as_str(),
                    format!(
                        "Version {version}, which channel {source} serves, is not Healthy there; nothing was changed."
                    ),
                ));
            }
            Ok(version)
        }
        (None, None) => {
            Err((PromotionFailure::VersionNotFound.as_str(), "one of version and fromChannel is required.".into()))
        }
    }
}

/// Whether a channel the moves name is to be read live before they fail with
/// `ChannelNotFound`: the channel watch may not show one created just before them.
fn unconfirmed(observed: &Observed, name: &str) -> bool {
    !observed.absent_channels.contains(name)
}

/// The next unit of the Agent's channel rollbacks whose channel does not exist: the channel
/// read live, then each failed with `ChannelNotFound`.
pub fn decide_orphans(observed: &Observed, now: &Time) -> Vec<Step> {
    let orphans: Vec<&AgentRollback> = observed
        .rollbacks
        .iter()
        .filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(RollbackPhase::is_terminal))
        .filter(|r| {
            r.spec.channel.as_ref().is_some_and(|c| !observed.channels.iter().any(|o| &o.channel.name_any() == c))
        })
        .collect();
    let mut steps = Vec::new();
    for rollback in orphans {
        let channel = rollback.spec.channel.clone().unwrap_or_default();
        if unconfirmed(observed, &channel) {
            steps.push(Write::ReadChannel { name: channel }.into());
            continue;
        }
        let change = Move::Rollback(rollback);
        let message = format!("Channel {channel} not found in namespace {}.", observed.namespace);
        let reason = FailureReason::ChannelNotFound.as_str();
        let event =
            change.event(true, Phase::Failed, format!("AgentRollback {} failed ({reason}): {message}", change.name()));
        let failed = Change { phase: Some((RollbackPhase::Failed, Some(reason), message)), moved: None };
        steps.push(change.write(observed, failed, None, true, vec![event], now).into());
    }
    steps.truncate(1);
    steps
}

/// The next unit of a channel's moves, before its delivery: the promotions' statuses brought
/// up to their records (the rollbacks' are, by the Agent's units), an ended override marked,
/// the Running move finished once the channel's ConfigMap holds its version, or the oldest
/// pending one started.
pub fn decide(observed: &Observed, channel: &ChannelObserved, now: &Time) -> Vec<Step> {
    let name = channel.channel.name_any();
    let moves = moves_of(observed, &name);
    let resync: Vec<Write> = moves
        .iter()
        .filter(|m| matches!(m, Move::Promotion(p) if observed.promotions.unsynced.contains(&p.name_any())))
        .map(|m| m.write(observed, Change::default(), m.mark(observed).cloned(), true, Vec::new(), now))
        .collect();
    if !resync.is_empty() {
        return vec![Step::Together(resync)];
    }
    let hold = hold(observed, channel);
    if let Hold::Ended { by } = &hold
        && let Some(ended) = moves.iter().find(|m| &m.name() == by)
    {
        let mark = ended.mark(observed).cloned().map(|mark| ChannelMark { ended: true, ..mark });
        return vec![ended.write(observed, Change::default(), mark, false, Vec::new(), now).into()];
    }
    let Some(head) = moves.iter().find(|m| !m.phase().is_some_and(RollbackPhase::is_terminal)) else {
        return Vec::new();
    };
    // Rollbacks and promotions come from two watch caches, which may lag apart: one could show
    // a move the other has older ones than. Both are listed live before a move is decided.
    let lists: Vec<Write> = [
        (!observed.rollbacks_listed).then_some(Write::ListRollbacks),
        (!observed.promotions_listed).then_some(Write::ListPromotions),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !lists.is_empty() {
        return vec![Step::Together(lists)];
    }
    if head.phase() == Some(RollbackPhase::Running) {
        return finish(observed, channel, *head, &hold, now);
    }
    start(observed, channel, *head, now)
}

/// Starts the oldest pending move: fails it, or records its decision and moves it to Running,
/// which holds the channel on its version from that write on.
fn start(observed: &Observed, channel: &ChannelObserved, change: Move<'_>, now: &Time) -> Vec<Step> {
    let served = serving(observed, channel);
    let (kind, name, channel_name) = (change.kind(), change.name(), channel.channel.name_any());
    match choose(observed, channel, change) {
        Err((reason, message)) => {
            // A channel the watch may lag behind is read live before it is found missing.
            if reason == PromotionFailure::ChannelNotFound.as_str() {
                let source = match change {
                    Move::Promotion(p) => p.spec.from_channel.clone().unwrap_or_default(),
                    Move::Rollback(_) => channel_name,
                };
                if unconfirmed(observed, &source) {
                    return vec![Write::ReadChannel { name: source }.into()];
                }
            }
            fail(observed, change, served, reason, message, now)
        }
        Ok(version) => {
            let message = format!("Moving channel {channel_name} from {} to version {version}.", describe(served));
            let (desired, desired_uid) = baseline(observed, channel);
            let uid = channel.channel.metadata.uid.clone().unwrap_or_default();
            let mark = ChannelMark { uid, desired, desired_uid, ended: false };
            let event = change.event(false, Phase::Started, format!("{kind} {name}: {message}"));
            let running =
                Change { phase: Some((RollbackPhase::Running, None, message)), moved: Some((Some(version), served)) };
            vec![change.write(observed, running, Some(mark), true, vec![event], now).into()]
        }
    }
}

fn fail(
    observed: &Observed,
    change: Move<'_>,
    served: Option<i64>,
    reason: &str,
    message: String,
    now: &Time,
) -> Vec<Step> {
    let note = format!("{} {} failed ({reason}): {message}", change.kind(), change.name());
    let event = change.event(true, Phase::Failed, note);
    let failed = Change { phase: Some((RollbackPhase::Failed, Some(reason), message)), moved: Some((served, served)) };
    vec![change.write(observed, failed, None, true, vec![event], now).into()]
}

/// Finishes the Running move once the channel's ConfigMap holds its version, or once the
/// channel's desired version has changed since (it held the channel until then).
fn finish(observed: &Observed, channel: &ChannelObserved, change: Move<'_>, hold: &Hold, now: &Time) -> Vec<Step> {
    let name = change.name();
    let (version, _) = change.versions();
    let channel_name = channel.channel.name_any();
    let held_by_it = matches!(hold, Hold::Held { by, .. } if *by == name);
    let delivered = channel.config_map.as_ref().is_some_and(|c| {
        c.owner_uid.is_some()
            && c.owner_uid == channel.channel.metadata.uid
            && c.held.as_ref().map(|h| h.version) == version
    });
    let message = match (held_by_it, delivered) {
        (true, true) => format!("Channel {channel_name} serves version {}.", describe(version)),
        (false, _) => {
            format!("Channel {channel_name} served version {} until its desired version changed.", describe(version))
        }
        (true, false) => return Vec::new(),
    };
    let event = change.event(false, Phase::Succeeded, format!("{} {name}: {message}", change.kind()));
    let succeeded = Change { phase: Some((RollbackPhase::Succeeded, None, message)), moved: None };
    vec![change.write(observed, succeeded, change.mark(observed).cloned(), true, vec![event], now).into()]
}

fn describe(version: Option<i64>) -> String {
    version.map_or_else(|| "no version".to_string(), |v| v.to_string())
}

/// The failure of a promotion whose channel does not exist: written by the controller, which
/// finds no Agent to sync for it.
pub fn channel_not_found(observed: &Observed, promotion: &AgentPromotion, now: &Time) -> Write {
    let change = Move::Promotion(promotion);
    let message = format!(
        "Channel {} not found in namespace {}.",
        promotion.spec.channel,
        promotion.namespace().unwrap_or_default()
    );
    let reason = PromotionFailure::ChannelNotFound.as_str();
    let event =
        change.event(true, Phase::Failed, format!("AgentPromotion {} failed ({reason}): {message}", change.name()));
    let failed = Change { phase: Some((RollbackPhase::Failed, Some(reason), message)), moved: None };
    change.write(observed, failed, None, true, vec![event], now)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::conditions::{HasConditions, IN_SYNC, reasons};
    use crate::api::{AgentChannel, AgentChannelSpec, AgentDefinition, AgentPromotionSpec};
    use crate::fixtures;
    use crate::plan::delivery::ConfigMapState;
    use crate::plan::{Applied, channel};

    fn now() -> Time {
        Time(Timestamp::from_second(1_000).unwrap())
    }

    /// Agent `support` at versions 1..=`newest`, with channel `prod` following it.
    fn observed(newest: i64) -> Observed {
        let agent = fixtures::agent("support", AgentDefinition::default());
        let versions = (1..=newest).map(|n| fixtures::version(&agent, n, AgentDefinition::default(), None)).collect();
        let mut observed = Observed::new("ns".into(), "support".into(), Some(agent), versions, vec![]);
        let mut prod = AgentChannel::new(
            "prod",
            AgentChannelSpec { agent_name: "support".into(), version: None, delivery: None, analysis: None },
        );
        prod.metadata.namespace = Some("ns".into());
        prod.metadata.uid = Some("uid-prod".into());
        prod.metadata.generation = Some(1);
        observed.channels = vec![ChannelObserved::unobserved(prod)];
        observed
    }

    fn promotion(name: &str, revision: u64, spec: AgentPromotionSpec) -> AgentPromotion {
        let mut promotion = AgentPromotion::new(name, spec);
        promotion.metadata.namespace = Some("ns".into());
        promotion.metadata.uid = Some(format!("uid-{name}"));
        promotion.metadata.resource_version = Some(revision.to_string());
        promotion
    }

    fn to(version: i64) -> AgentPromotionSpec {
        AgentPromotionSpec {
            channel: "prod".into(),
            version: Some(version),
            from_channel: None,
            expected_version: None,
            allow_failed: false,
            reason: None,
            requested_by: None,
        }
    }

    /// The API server, as far as these writes go: each is folded in as its answer would be.
    /// Returns the writes made, by label, for the count of each promotion's records.
    struct Server {
        revision: u64,
        records: Vec<(String, Option<RollbackPhase>)>,
    }

    impl Server {
        fn apply(&mut self, observed: &mut Observed, write: Write) {
            self.revision += 1;
            let revision = Some(self.revision.to_string());
            let applied = match write {
                Write::WritePromotion { name, resource_version, record, copy_status, .. } => {
                    let mut promotion = observed.promotions.get(&name).expect("promotion").clone();
                    assert_eq!(promotion.metadata.resource_version, resource_version, "a stale write");
                    // A record written again as it was (a status copied anew) decides nothing.
                    if record_of(&promotion).as_ref() != Some(&*record) {
                        self.records.push((name, record.status.phase));
                    }
                    let text = serde_json::to_string(&record).unwrap();
                    promotion.metadata.annotations = Some(BTreeMap::from([(ROLLBACK_RECORD_ANNOTATION.into(), text)]));
                    promotion.metadata.resource_version = revision;
                    if copy_status {
                        promotion.status = Some(record.status.clone());
                    }
                    Applied::Promotion(Box::new(promotion))
                }
                Write::ApplyConfigMap { recipient, config_map, .. } => {
                    let mut state = ConfigMapState::from_meta(&config_map.metadata);
                    state.uid = Some("cm".into());
                    state.resource_version = revision;
                    Applied::ConfigMap(recipient, Some(state))
                }
                Write::PatchChannelStatus { name, status } => {
                    let mut channel =
                        observed.channels.iter().find(|c| c.channel.name_any() == name).unwrap().channel.clone();
                    channel.status = Some(*status);
                    Applied::Channel(Box::new(channel))
                }
                Write::Event(_) => Applied::Nothing,
                // Only the channels the test made exist.
                Write::ReadChannel { name } => Applied::ChannelRead(name, None),
                Write::WriteRollback { name, resource_version, record, copy_status, .. } => {
                    let mut rollback = observed.rollback(&name).expect("rollback").clone();
                    assert_eq!(rollback.metadata.resource_version, resource_version, "a stale write");
                    if crate::plan::durable::record_of(&rollback).as_ref() != Some(&*record) {
                        self.records.push((name, record.status.phase));
                    }
                    let text = serde_json::to_string(&record).unwrap();
                    rollback.metadata.annotations = Some(BTreeMap::from([(ROLLBACK_RECORD_ANNOTATION.into(), text)]));
                    rollback.metadata.resource_version = revision;
                    if copy_status {
                        rollback.status = Some(record.status.clone());
                    }
                    Applied::Rollback(Box::new(rollback))
                }
                Write::ListRollbacks => Applied::Rollbacks(observed.rollbacks.clone()),
                Write::ListPromotions => Applied::Promotions(observed.promotions.items.clone()),
                Write::PatchAgentStatus(status) => {
                    let mut agent = observed.agent.clone().unwrap();
                    agent.status = Some(*status);
                    Applied::Agent(Box::new(agent))
                }
                Write::CreateRollback(rollback) => {
                    let mut rollback = *rollback;
                    rollback.metadata.uid = Some(format!("uid-{}", rollback.name_any()));
                    rollback.metadata.resource_version = revision;
                    rollback.metadata.creation_timestamp = Some(now());
                    self.records.push((rollback.name_any(), None));
                    Applied::Rollback(Box::new(rollback))
                }
                Write::SetVersionFinalizers { name, finalizers, .. } => {
                    let mut version = observed.versions.iter().find(|v| v.name_any() == name).unwrap().clone();
                    version.metadata.finalizers = Some(finalizers);
                    Applied::VersionPatched(Box::new(version))
                }
                other => panic!("unexpected write {other:?}"),
            };
            observed.fold(applied);
        }

        /// Decides and applies until nothing is left, or `cut` writes were made (a crash).
        fn run(&mut self, observed: &mut Observed, cut: Option<usize>) -> bool {
            let mut made = 0;
            for _ in 0..100 {
                let steps = crate::plan::sync::decide(observed, &now());
                if steps.is_empty() {
                    return true;
                }
                for step in steps {
                    let writes = match step {
                        Step::One(write) => vec![write],
                        Step::Together(writes) => writes,
                    };
                    for write in writes {
                        if cut == Some(made) {
                            return false;
                        }
                        made += 1;
                        self.apply(observed, write);
                    }
                }
            }
            panic!("did not settle")
        }
    }

    fn new_server() -> Server {
        Server { revision: 100, records: Vec::new() }
    }

    fn prod(observed: &Observed) -> &ChannelObserved {
        &observed.channels[0]
    }

    /// Labels version `number` with `verdict` in channel `prod`, as a verdict's write does.
    fn judged(observed: &mut Observed, number: i64, verdict: &str) {
        let mut version = observed.version(number).unwrap().clone();
        version.metadata.labels.get_or_insert_default().insert(health_key("prod"), verdict.into());
        let why =
            format!("Version {number} failed in channel prod: Check error-rate failed: 0.5 is outside [-inf, 0.02].");
        version.metadata.annotations.get_or_insert_default().insert(health_key("prod"), why);
        observed.fold(Applied::VersionPatched(Box::new(version)));
    }

    #[test]
    fn a_version_failed_where_it_is_served_is_rolled_back_once_to_the_last_known_good_and_never_flipped() {
        let mut observed = observed(2);
        let mut server = new_server();
        server.run(&mut observed, None);
        judged(&mut observed, 1, "Healthy");
        judged(&mut observed, 2, "Failed");
        server.run(&mut observed, None);

        let auto = observed.rollback("prod-auto-v2").expect("the automatic rollback").clone();
        assert_eq!(
            (auto.spec.strategy, auto.spec.channel.as_deref(), auto.spec.expected_active_version),
            (RollbackStrategy::LastKnownGood, Some("prod"), Some(2))
        );
        assert!(auto.spec.reason.as_deref().unwrap().contains("error-rate"), "{:?}", auto.spec.reason);
        let status = prod(&observed).channel.status.clone().unwrap();
        assert_eq!((status.version, status.desired_version), (Some(1), Some(2)));
        assert_eq!(status.override_.unwrap().rollback.as_deref(), Some("prod-auto-v2"));
        assert_eq!(auto.status.unwrap().phase, Some(RollbackPhase::Succeeded));
        let created = server.records.iter().filter(|(name, _)| name == "prod-auto-v2").count();

        // Nothing more: the name is the guard.
        server.run(&mut observed, None);
        assert_eq!(server.records.iter().filter(|(name, _)| name == "prod-auto-v2").count(), created);

        // The version it went back to fails too: held, not flipped back.
        judged(&mut observed, 1, "Failed");
        server.run(&mut observed, None);
        assert!(observed.rollback("prod-auto-v1").is_none());
        let status = prod(&observed).channel.status.clone().unwrap();
        assert_eq!(status.version, Some(1));
        let healthy = status.condition(crate::api::conditions::HEALTHY).unwrap();
        assert!(healthy.message.contains("Held: AgentRollback prod-auto-v2 went back to it"), "{}", healthy.message);
    }

    #[test]
    fn a_promotion_holds_the_channel_until_its_desired_version_changes() {
        let mut observed = observed(3);
        let mut server = new_server();
        server.run(&mut observed, None);
        assert_eq!(prod(&observed).channel.status.as_ref().unwrap().version, Some(3));

        observed.fold(Applied::Promotion(Box::new(promotion("back", 50, to(1)))));
        server.run(&mut observed, None);
        let status = prod(&observed).channel.status.clone().unwrap();
        assert_eq!((status.version, status.desired_version), (Some(1), Some(3)));
        let held = status.override_.clone().unwrap();
        assert_eq!((held.version, held.replacing, held.promotion.as_deref()), (1, Some(3), Some("back")));
        let in_sync = status.condition(IN_SYNC).unwrap();
        assert_eq!((in_sync.status.as_str(), in_sync.reason.as_str()), ("False", reasons::OVERRIDDEN));
        assert!(in_sync.message.contains("commit spec.version: 1"), "{}", in_sync.message);
        assert_eq!(prod(&observed).config_map.as_ref().unwrap().held.as_ref().unwrap().version, 1);
        let done = observed.promotions.get("back").unwrap().status.clone().unwrap();
        assert_eq!((done.phase, done.from_version, done.version), (Some(RollbackPhase::Succeeded), Some(3), Some(1)));
        assert_eq!(
            server.records.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            [Some(RollbackPhase::Running), Some(RollbackPhase::Succeeded)]
        );
        assert!(channel::in_use(&observed).contains(&1), "the held version is kept from pruning");
        assert_eq!(channel::holder(&observed, 1).as_deref(), Some("prod"), "and from a Pop");

        // A new active version ends it: the record is marked, the channel follows again, and
        // the mark keeps it ended.
        let agent = observed.agent.clone().unwrap();
        observed.fold(Applied::VersionCreated(Box::new(fixtures::version(
            &agent,
            4,
            AgentDefinition::default(),
            None,
        ))));
        server.run(&mut observed, None);
        let status = prod(&observed).channel.status.clone().unwrap();
        assert_eq!((status.version, status.override_), (Some(4), None));
        assert!(observed.promotions.marks["back"].ended);
        assert_eq!(hold(&observed, prod(&observed)), Hold::None);
    }

    #[test]
    fn a_crash_at_any_write_and_a_lost_status_run_nothing_twice_and_end_the_same() {
        let settled = |observed: &mut Observed| {
            observed.fold(Applied::Promotion(Box::new(promotion("first", 50, to(1)))));
            observed.fold(Applied::Promotion(Box::new(promotion("second", 51, to(2)))));
            let back = channel_rollback("third", 52, RollbackStrategy::Restore, Some(3));
            observed.fold(Applied::Rollback(Box::new(back)));
        };
        let mut reference = observed(3);
        let mut server = new_server();
        server.run(&mut reference, None);
        settled(&mut reference);
        server.run(&mut reference, None);
        let end = prod(&reference).channel.status.clone().unwrap();
        let held = end.override_.as_ref().and_then(|o| o.rollback.as_deref());
        assert_eq!((end.version, held), (Some(3), Some("third")));
        let total = server.records.len();
        assert_eq!(total, 6, "each move's record written Running, then Succeeded: {:?}", server.records);

        let mut crashed = 0;
        for cut in 0..total * 3 {
            let mut observed = observed(3);
            let mut server = new_server();
            server.run(&mut observed, None);
            settled(&mut observed);
            if server.run(&mut observed, Some(cut)) {
                continue;
            }
            crashed += 1;
            // The restart: every status lost, the records kept.
            observed.channels[0].channel.status = None;
            for promotion in observed.promotions.items.clone() {
                observed.fold(Applied::Promotion(Box::new(AgentPromotion { status: None, ..promotion })));
            }
            for rollback in observed.rollbacks.clone() {
                observed.fold(Applied::Rollback(Box::new(AgentRollback { status: None, ..rollback })));
            }
            server.run(&mut observed, None);
            assert_eq!(prod(&observed).channel.status.as_ref(), Some(&end), "cut at {cut}");
            for name in ["first", "second", "third"] {
                let written: Vec<_> = server.records.iter().filter(|(n, _)| n == name).map(|(_, p)| *p).collect();
                let started = written.iter().filter(|p| **p == Some(RollbackPhase::Running)).count();
                assert!(started <= 1, "{name} started twice (cut {cut}): {written:?}");
                let phase = match observed.promotions.get(name) {
                    Some(p) => p.status.as_ref().and_then(|s| s.phase),
                    None => observed.rollback(name).and_then(|r| r.status.as_ref()).and_then(|s| s.phase),
                };
                assert_eq!(phase, Some(RollbackPhase::Succeeded), "{name}, cut at {cut}");
            }
        }
        assert!(crashed >= total, "only {crashed} cut points crashed");
    }

    #[test]
    fn promotions_run_in_creation_order_and_each_sees_the_last_ones_result() {
        let mut observed = observed(3);
        let mut server = new_server();
        server.run(&mut observed, None);
        // Created in this order: the second expects what the first leaves.
        observed.fold(Applied::Promotion(Box::new(promotion(
            "b",
            61,
            AgentPromotionSpec { expected_version: Some(1), ..to(2) },
        ))));
        observed.fold(Applied::Promotion(Box::new(promotion("a", 60, to(1)))));
        server.run(&mut observed, None);
        let names: Vec<&str> = server.records.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "a", "b", "b"]);
        assert_eq!(prod(&observed).channel.status.as_ref().unwrap().version, Some(2));
    }

    #[test]
    fn a_promotion_that_cannot_run_fails_with_its_reason_and_changes_nothing() {
        let failing = |spec: AgentPromotionSpec, label: Option<&str>| {
            let mut observed = observed(3);
            if let Some(label) = label {
                let version = observed.versions.iter_mut().find(|v| v.spec.version == 2).unwrap();
                version
                    .metadata
                    .labels
                    .get_or_insert_default()
                    .insert(format!("{HEALTH_LABEL_PREFIX}prod"), label.into());
            }
            let mut server = new_server();
            server.run(&mut observed, None);
            let before = prod(&observed).channel.status.clone();
            observed.fold(Applied::Promotion(Box::new(promotion("p", 50, spec))));
            server.run(&mut observed, None);
            let status = observed.promotions.get("p").unwrap().status.clone().unwrap();
            if status.phase == Some(RollbackPhase::Failed) {
                assert_eq!(prod(&observed).channel.status, before, "{:?}", status.reason);
            }
            status
        };
        let cases = [
            (to(9), None, "VersionNotFound"),
            (to(3), None, "AlreadyActive"),
            (AgentPromotionSpec { expected_version: Some(2), ..to(1) }, None, "ActiveVersionChanged"),
            (to(2), Some("Failed"), "VersionQuarantined"),
            (
                AgentPromotionSpec { version: None, from_channel: Some("staging".into()), ..to(1) },
                None,
                "ChannelNotFound",
            ),
        ];
        for (spec, label, reason) in cases {
            let status = failing(spec, label);
            assert_eq!((status.phase, status.reason.as_deref()), (Some(RollbackPhase::Failed), Some(reason)));
        }
        // allowFailed is the deliberate way to a quarantined version.
        let status = failing(AgentPromotionSpec { allow_failed: true, ..to(2) }, Some("Failed"));
        assert_eq!(status.phase, Some(RollbackPhase::Succeeded));
    }

    #[test]
    fn a_promotion_from_another_channel_takes_only_a_version_healthy_there() {
        let with_staging = |label: Option<&str>| {
            let mut observed = observed(3);
            let mut staging = observed.channels[0].clone();
            staging.channel.metadata.name = Some("staging".into());
            staging.channel.metadata.uid = Some("uid-staging".into());
            observed.channels[0].channel.spec.version = Some(1);
            observed.channels.push(staging);
            if let Some(label) = label {
                let version = observed.versions.iter_mut().find(|v| v.spec.version == 3).unwrap();
                version
                    .metadata
                    .labels
                    .get_or_insert_default()
                    .insert(format!("{HEALTH_LABEL_PREFIX}staging"), label.into());
            }
            let mut server = new_server();
            server.run(&mut observed, None);
            let spec = AgentPromotionSpec { version: None, from_channel: Some("staging".into()), ..to(1) };
            observed.fold(Applied::Promotion(Box::new(promotion("p", 50, spec))));
            server.run(&mut observed, None);
            let status = observed.promotions.get("p").unwrap().status.clone().unwrap();
            (status.reason, prod(&observed).channel.status.as_ref().unwrap().version)
        };
        assert_eq!(with_staging(None), (Some("NotHealthyInSource".into()), Some(1)));
        assert_eq!(with_staging(Some("Healthy")), (None, Some(3)));
    }

    /// A channel rollback of `prod`, created at `revision`.
    fn channel_rollback(name: &str, revision: u64, strategy: RollbackStrategy, target: Option<i64>) -> AgentRollback {
        let mut rollback = fixtures::rollback(name, "support", strategy);
        rollback.spec.channel = Some("prod".into());
        rollback.spec.target_version = target;
        rollback.metadata.resource_version = Some(revision.to_string());
        rollback
    }

    fn healthy(observed: &mut Observed, number: i64, verdict: &str) {
        let version = observed.versions.iter_mut().find(|v| v.spec.version == number).unwrap();
        version.metadata.labels.get_or_insert_default().insert(format!("{HEALTH_LABEL_PREFIX}prod"), verdict.into());
    }

    #[test]
    fn a_channel_rollback_moves_the_channel_not_the_agent_and_queues_with_its_promotions() {
        let mut observed = observed(4);
        healthy(&mut observed, 2, "Healthy");
        let mut server = new_server();
        server.run(&mut observed, None);
        observed.fold(Applied::Promotion(Box::new(promotion("up", 60, to(3)))));
        observed.fold(Applied::Rollback(Box::new(channel_rollback("back", 61, RollbackStrategy::LastKnownGood, None))));
        server.run(&mut observed, None);
        let names: Vec<&str> = server.records.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["up", "up", "back", "back"], "in creation order, one at a time");
        let status = observed.rollback("back").unwrap().status.clone().unwrap();
        assert_eq!(
            (status.phase, status.from_version, status.active_version, status.restored_version),
            (Some(RollbackPhase::Succeeded), Some(3), Some(2), Some(2))
        );
        let channel = prod(&observed).channel.status.clone().unwrap();
        let held = channel.override_.unwrap();
        assert_eq!((channel.version, held.rollback.as_deref(), held.promotion), (Some(2), Some("back"), None));
        // The Agent itself is unchanged: no version made, the newest still active.
        assert_eq!(observed.version_numbers(), [1, 2, 3, 4]);
        assert_eq!(observed.agent.as_ref().unwrap().status.as_ref().unwrap().last_rollback, None);
    }

    #[test]
    fn a_channel_rollback_that_cannot_run_fails_with_its_reason() {
        let run = |rollback: AgentRollback, quarantined: Option<i64>| {
            let mut observed = observed(3);
            if let Some(number) = quarantined {
                healthy(&mut observed, number, "Failed");
            }
            let mut server = new_server();
            server.run(&mut observed, None);
            let name = rollback.name_any();
            observed.fold(Applied::Rollback(Box::new(rollback)));
            server.run(&mut observed, None);
            assert_eq!(prod(&observed).channel.status.as_ref().unwrap().version, Some(3), "{name} moved the channel");
            observed.rollback(&name).unwrap().status.clone().unwrap().reason
        };
        let mut elsewhere = channel_rollback("elsewhere", 50, RollbackStrategy::Restore, Some(1));
        elsewhere.spec.channel = Some("preview".into());
        let cases = [
            (channel_rollback("lkg", 50, RollbackStrategy::LastKnownGood, None), None, "NoKnownGoodVersion"),
            (channel_rollback("bad", 50, RollbackStrategy::Restore, Some(1)), Some(1), "VersionQuarantined"),
            (channel_rollback("gone", 50, RollbackStrategy::Restore, Some(8)), None, "VersionNotFound"),
            (channel_rollback("same", 50, RollbackStrategy::Restore, Some(3)), None, "AlreadyActive"),
            (elsewhere, None, "ChannelNotFound"),
        ];
        for (rollback, quarantined, reason) in cases {
            assert_eq!(run(rollback, quarantined).as_deref(), Some(reason));
        }
    }
}

//! Promotions: one-shot, audited moves of what a channel serves. A promotion holds its channel
//! on a version in the channel's `status.override`, never in its spec, until the channel's
//! desired version next changes.
//!
//! Exactly once, and status a cache, as for rollbacks (see `durable`): every promotion the
//! controller writes carries its record (`agentops.dev/record`): the status it wrote, and the
//! channel it moved with the desired version that channel had then. The record is written
//! first, with a compare-and-swap on the promotion's resourceVersion; the status is its copy.
//! A promotion moves Pending → Running (the decision: which version, recorded before anything
//! else) → Succeeded once the channel's ConfigMap holds the version; or straight to Failed,
//! changing nothing.
//!
//! The override is never stored anywhere but in those records: a channel's override is the
//! newest Running or Succeeded promotion of that channel, unless the channel's desired version
//! is no longer the one that promotion recorded. When it changes, the promotion's record is
//! marked ended, so that the override never comes back should the desired version return to
//! what it was. So a channel's status, lost, is rebuilt with nothing run again.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::channel::ChannelObserved;
use super::status::set_promotion_phase;
use super::{EventNote, EventTarget, Observed, Step, Write};
use crate::api::conditions::events;
use crate::api::keys::{HEALTH_LABEL_PREFIX, ROLLBACK_RECORD_ANNOTATION};
use crate::api::{AgentPromotion, AgentPromotionStatus, ChannelOverride, RollbackPhase};

/// The durable record of a promotion: the status the controller wrote, and the channel it
/// moved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotionRecord {
    pub status: AgentPromotionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelMark>,
}

/// The channel a promotion moved (this uid, not just this name), the desired version it had
/// then (its number and the uid of that version), and whether the override has ended since.
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

    /// The promotions of channel `name`, in creation order.
    fn of_channel(&self, name: &str) -> Vec<&AgentPromotion> {
        let mut of: Vec<&AgentPromotion> = self.items.iter().filter(|p| p.spec.channel == name).collect();
        of.sort_by_key(|p| queue_key(p));
        of
    }
}

fn phase_of(promotion: &AgentPromotion) -> Option<RollbackPhase> {
    promotion.status.as_ref().and_then(|s| s.phase)
}

/// Creation order, as for rollbacks (see `rollback::queue_key`).
pub fn queue_key(promotion: &AgentPromotion) -> (u64, Option<Time>, String) {
    let recorded = promotion.status.as_ref().and_then(|s| s.creation_revision.clone());
    let revision =
        super::parse_revision(recorded.or_else(|| promotion.resource_version()).as_deref()).unwrap_or(u64::MAX);
    (revision, promotion.metadata.creation_timestamp.clone(), promotion.name_any())
}

/// A channel's desired version, as a promotion records it: its number and that version's uid
/// (a number made again after a Pop is another version).
fn baseline(observed: &Observed, channel: &ChannelObserved) -> (Option<i64>, Option<String>) {
    let desired = super::channel::desired(&channel.channel, observed);
    let uid = desired.and_then(|n| observed.version(n)).and_then(|v| v.metadata.uid.clone());
    (desired, uid)
}

/// Where a channel's override stands, by its promotions' records.
#[derive(Clone, Debug, PartialEq)]
pub enum Hold {
    /// No promotion holds the channel.
    None,
    /// Promotion `by` holds the channel on `to.version`.
    Held { by: String, to: ChannelOverride },
    /// Promotion `by` held it, but the channel's desired version has changed since: its record
    /// is to be marked ended.
    Ended { by: String },
}

/// The override of a channel: its newest Running or Succeeded promotion, if its record says it
/// was made for this channel at the desired version the channel still has, and not ended.
pub fn hold(observed: &Observed, channel: &ChannelObserved) -> Hold {
    let name = channel.channel.name_any();
    let uid = channel.channel.metadata.uid.as_deref();
    let promotions = &observed.promotions;
    let newest = promotions.of_channel(&name).into_iter().rfind(|p| {
        matches!(phase_of(p), Some(RollbackPhase::Running | RollbackPhase::Succeeded))
            && uid.is_some()
            && promotions.marks.get(&p.name_any()).map(|m| m.uid.as_str()) == uid
    });
    let Some(newest) = newest else { return Hold::None };
    let by = newest.name_any();
    let mark = &promotions.marks[&by];
    if mark.ended {
        return Hold::None;
    }
    if (mark.desired, mark.desired_uid.clone()) != baseline(observed, channel) {
        return Hold::Ended { by };
    }
    let status = newest.status.clone().unwrap_or_default();
    let Some(version) = status.version else { return Hold::None };
    Hold::Held {
        by: by.clone(),
        to: ChannelOverride { version, replacing: status.from_version, rollback: None, promotion: Some(by) },
    }
}

/// A version's verdict in a channel, as its label says: `Healthy` or `Failed`.
pub fn verdict<'a>(observed: &'a Observed, number: i64, channel: &str) -> Option<&'a str> {
    let version = observed.version(number)?;
    version.metadata.labels.as_ref()?.get(&format!("{HEALTH_LABEL_PREFIX}{channel}")).map(String::as_str)
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

/// The version a channel serves: its override's, else its desired version.
pub fn serving(observed: &Observed, channel: &ChannelObserved) -> Option<i64> {
    match hold(observed, channel) {
        Hold::Held { to, .. } => Some(to.version),
        _ => super::channel::desired(&channel.channel, observed),
    }
}

/// What a promotion would move its channel to, or why it cannot: the planner's answer, also
/// for `kubectl agent promote --dry-run`.
pub fn choose(
    observed: &Observed,
    channel: &ChannelObserved,
    promotion: &AgentPromotion,
) -> Result<i64, (PromotionFailure, String)> {
    let spec = &promotion.spec;
    let (name, agent) = (&spec.channel, &observed.agent_name);
    let served = serving(observed, channel);
    let target = match (&spec.version, &spec.from_channel) {
        (Some(version), _) => *version,
        (None, Some(source)) => {
            let Some(from) = observed.channels.iter().find(|c| &c.channel.name_any() == source) else {
                return Err((
                    PromotionFailure::ChannelNotFound,
                    format!("Channel {source} of Agent {agent} not found in namespace {}.", observed.namespace),
                ));
            };
            let Some(version) = serving(observed, from) else {
                return Err((PromotionFailure::NotHealthyInSource, format!("Channel {source} serves no version yet.")));
            };
            if verdict(observed, version, source) != Some("Healthy") {
                return Err((
                    PromotionFailure::NotHealthyInSource,
                    format!(
                        "Version {version}, which channel {source} serves, is not Healthy there; nothing was changed."
                    ),
                ));
            }
            version
        }
        (None, None) => {
            return Err((PromotionFailure::VersionNotFound, "one of version and fromChannel is required.".into()));
        }
    };
    if let Some(expected) = spec.expected_version
        && Some(expected) != served
    {
        let served = served.map_or_else(|| "no version".to_string(), |v| format!("version {v}"));
        return Err((
            PromotionFailure::ActiveVersionChanged,
            format!("expectedVersion is {expected} but channel {name} serves {served}; nothing was changed."),
        ));
    }
    if observed.version(target).is_none() {
        return Err((
            PromotionFailure::VersionNotFound,
            format!("Version {target} of Agent {agent} does not exist (never made, popped or pruned)."),
        ));
    }
    if Some(target) == served {
        return Err((PromotionFailure::AlreadyActive, format!("Channel {name} already serves version {target}.")));
    }
    if verdict(observed, target, name) == Some("Failed") && !spec.allow_failed {
        return Err((
            PromotionFailure::VersionQuarantined,
            format!("Version {target} Failed in channel {name}; set allowFailed to serve it there anyway."),
        ));
    }
    Ok(target)
}

/// The next unit of a channel's promotions, before its delivery: their statuses brought up to
/// their records, an ended override marked, the Running one finished once the channel's
/// ConfigMap holds its version, or the oldest pending one started.
pub fn decide(observed: &Observed, channel: &ChannelObserved, now: &Time) -> Vec<Step> {
    let name = channel.channel.name_any();
    let promotions = observed.promotions.of_channel(&name);
    let resync: Vec<Write> = promotions
        .iter()
        .filter(|p| observed.promotions.unsynced.contains(&p.name_any()))
        .map(|p| write(observed, p, record_of_status(observed, p, status_of(p)), true, Vec::new()))
        .collect();
    if !resync.is_empty() {
        return vec![Step::Together(resync)];
    }
    let hold = hold(observed, channel);
    if let Hold::Ended { by } = &hold
        && let Some(promotion) = observed.promotions.get(by)
    {
        let mut record = record_of_status(observed, promotion, status_of(promotion));
        if let Some(mark) = record.channel.as_mut() {
            mark.ended = true;
        }
        return vec![write(observed, promotion, record, false, Vec::new()).into()];
    }
    let pending: Vec<&AgentPromotion> =
        promotions.into_iter().filter(|p| !phase_of(p).is_some_and(RollbackPhase::is_terminal)).collect();
    let Some(head) = pending.first() else { return Vec::new() };
    if phase_of(head) == Some(RollbackPhase::Running) {
        return finish(observed, channel, head, &hold, now);
    }
    start(observed, channel, head, now)
}

/// Starts the oldest pending promotion: fails it, or records its decision and moves it to
/// Running, which holds the channel on its version from that write on.
fn start(observed: &Observed, channel: &ChannelObserved, promotion: &AgentPromotion, now: &Time) -> Vec<Step> {
    let served = serving(observed, channel);
    let mut status = first_status(promotion);
    status.agent_name = Some(observed.agent_name.clone());
    status.from_version = served;
    status.start_time = Some(now.clone());
    let name = promotion.name_any();
    match choose(observed, channel, promotion) {
        Err((failure, message)) => {
            set_promotion_phase(
                &mut status,
                RollbackPhase::Failed,
                Some(failure.as_str()),
                message.clone(),
                promotion.metadata.generation,
                now,
            );
            let note = noted(promotion, format!("AgentPromotion {name} failed ({}): {message}", failure.as_str()));
            let event = EventNote {
                on: EventTarget::Promotion(name),
                related: None,
                warning: true,
                reason: events::PROMOTION_FAILED,
                action: "Promote",
                note,
            };
            let record = record_of_status(observed, promotion, status);
            vec![write(observed, promotion, record, true, vec![event]).into()]
        }
        Ok(version) => {
            status.version = Some(version);
            let message =
                format!("Moving channel {} from {} to version {version}.", promotion.spec.channel, describe(served));
            set_promotion_phase(
                &mut status,
                RollbackPhase::Running,
                None,
                message.clone(),
                promotion.metadata.generation,
                now,
            );
            let (desired, desired_uid) = baseline(observed, channel);
            let uid = channel.channel.metadata.uid.clone().unwrap_or_default();
            let record =
                PromotionRecord { status, channel: Some(ChannelMark { uid, desired, desired_uid, ended: false }) };
            let event = EventNote {
                on: EventTarget::Promotion(name),
                related: None,
                warning: false,
                reason: events::PROMOTION_STARTED,
                action: "Promote",
                note: noted(promotion, message),
            };
            vec![write(observed, promotion, record, true, vec![event]).into()]
        }
    }
}

/// Finishes the Running promotion once the channel's ConfigMap holds its version, or once the
/// channel's desired version has changed since (it held the channel until then).
fn finish(
    observed: &Observed,
    channel: &ChannelObserved,
    promotion: &AgentPromotion,
    hold: &Hold,
    now: &Time,
) -> Vec<Step> {
    let name = promotion.name_any();
    let version = promotion.status.as_ref().and_then(|s| s.version);
    let held_by_it = matches!(hold, Hold::Held { by, .. } if *by == name);
    let delivered = channel.config_map.as_ref().is_some_and(|c| {
        c.owner_uid.is_some()
            && c.owner_uid == channel.channel.metadata.uid
            && c.held.as_ref().map(|h| h.version) == version
    });
    let message = match (held_by_it, delivered) {
        (true, true) => format!("Channel {} serves version {}.", promotion.spec.channel, describe(version)),
        (false, _) => format!(
            "Channel {} served version {} until its desired version changed.",
            promotion.spec.channel,
            describe(version)
        ),
        (true, false) => return Vec::new(),
    };
    let mut status = status_of(promotion);
    set_promotion_phase(
        &mut status,
        RollbackPhase::Succeeded,
        None,
        message.clone(),
        promotion.metadata.generation,
        now,
    );
    let record = record_of_status(observed, promotion, status);
    let event = EventNote {
        on: EventTarget::Promotion(name),
        related: None,
        warning: false,
        reason: events::PROMOTION_SUCCEEDED,
        action: "Promote",
        note: noted(promotion, message),
    };
    vec![write(observed, promotion, record, true, vec![event]).into()]
}

fn describe(version: Option<i64>) -> String {
    version.map_or_else(|| "no version".to_string(), |v| v.to_string())
}

fn status_of(promotion: &AgentPromotion) -> AgentPromotionStatus {
    promotion.status.clone().unwrap_or_default()
}

/// The status a promotion gets on its first write: records its creation revision.
fn first_status(promotion: &AgentPromotion) -> AgentPromotionStatus {
    let mut status = status_of(promotion);
    if status.creation_revision.is_none() {
        status.creation_revision = promotion.resource_version();
    }
    status
}

/// The promotion's record with `status`, and the channel mark it has.
fn record_of_status(observed: &Observed, promotion: &AgentPromotion, status: AgentPromotionStatus) -> PromotionRecord {
    PromotionRecord { status, channel: observed.promotions.marks.get(&promotion.name_any()).cloned() }
}

/// A write of the promotion's record on condition that it is still at the resourceVersion
/// read, then of its status as the record says unless `copy_status` is false.
fn write(
    _observed: &Observed,
    promotion: &AgentPromotion,
    record: PromotionRecord,
    copy_status: bool,
    announce: Vec<EventNote>,
) -> Write {
    Write::WritePromotion {
        name: promotion.name_any(),
        resource_version: promotion.resource_version(),
        record: Box::new(record),
        copy_status,
        announce,
    }
}

/// An Event's note naming who asked for the promotion.
fn noted(promotion: &AgentPromotion, note: String) -> String {
    match &promotion.spec.requested_by {
        Some(who) => format!("{note} Requested by {who}."),
        None => note,
    }
}

/// The failure of a promotion whose channel does not exist: written by the controller, which
/// finds no Agent to sync for it.
pub fn channel_not_found(promotion: &AgentPromotion, now: &Time) -> Write {
    let mut status = first_status(promotion);
    status.start_time = Some(now.clone());
    let message = format!(
        "Channel {} not found in namespace {}.",
        promotion.spec.channel,
        promotion.namespace().unwrap_or_default()
    );
    let reason = PromotionFailure::ChannelNotFound.as_str();
    set_promotion_phase(
        &mut status,
        RollbackPhase::Failed,
        Some(reason),
        message.clone(),
        promotion.metadata.generation,
        now,
    );
    let name = promotion.name_any();
    let event = EventNote {
        on: EventTarget::Promotion(name.clone()),
        related: None,
        warning: true,
        reason: events::PROMOTION_FAILED,
        action: "Promote",
        note: noted(promotion, format!("AgentPromotion {name} failed ({reason}): {message}")),
    };
    Write::WritePromotion {
        name,
        resource_version: promotion.resource_version(),
        record: Box::new(PromotionRecord { status, channel: None }),
        copy_status: true,
        announce: vec![event],
    }
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
        observed.channels = vec![ChannelObserved { channel: prod, config_map: None, workloads: vec![] }];
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
                Write::ListRollbacks => Applied::Rollbacks(observed.rollbacks.clone()),
                Write::PatchAgentStatus(status) => {
                    let mut agent = observed.agent.clone().unwrap();
                    agent.status = Some(*status);
                    Applied::Agent(Box::new(agent))
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
        };
        let mut reference = observed(3);
        let mut server = new_server();
        server.run(&mut reference, None);
        settled(&mut reference);
        server.run(&mut reference, None);
        let end = prod(&reference).channel.status.clone().unwrap();
        assert_eq!(
            (end.version, end.override_.as_ref().and_then(|o| o.promotion.as_deref())),
            (Some(2), Some("second"))
        );
        let total = server.records.len();
        assert_eq!(total, 4, "each promotion's record written Running, then Succeeded: {:?}", server.records);

        for cut in 0..12 {
            let mut observed = observed(3);
            let mut server = new_server();
            server.run(&mut observed, None);
            settled(&mut observed);
            if server.run(&mut observed, Some(cut)) {
                continue;
            }
            // The restart: every status lost, the records kept.
            observed.channels[0].channel.status = None;
            for promotion in &mut observed.promotions.items.clone() {
                let mut lost = promotion.clone();
                lost.status = None;
                observed.fold(Applied::Promotion(Box::new(lost)));
            }
            server.run(&mut observed, None);
            assert_eq!(prod(&observed).channel.status.as_ref(), Some(&end), "cut at {cut}");
            for name in ["first", "second"] {
                let written: Vec<_> = server.records.iter().filter(|(n, _)| n == name).map(|(_, p)| *p).collect();
                assert!(
                    written.iter().filter(|p| **p == Some(RollbackPhase::Running)).count() <= 1,
                    "{name} started twice (cut {cut}): {written:?}"
                );
                assert_eq!(
                    observed.promotions.get(name).unwrap().status.as_ref().and_then(|s| s.phase),
                    Some(RollbackPhase::Succeeded),
                    "cut at {cut}"
                );
            }
        }
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
}

//! Channels: which version each audience of an Agent gets. A channel serves its desired
//! version (`spec.version`, or the Agent's active version when it follows the Agent) through
//! its own ConfigMap and workloads, delivered as the Agent's own delivery is (see
//! [`super::delivery`]). A channel's state is decided in its Agent's sync, after the Agent's
//! own units: one Agent's versions and channels change one unit at a time, so pruning and Pop
//! see every version a channel uses.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::delivery::{self, ConfigMapState, DeliveryState, Recipient, Target, WorkloadState};
use super::moves::{self, Hold};
use super::status::{ChannelState, ConditionSpec, channel_conditions};
use super::{EventNote, EventTarget, Observed, Step, Write, owner_reference};
use super::{analysis, automatic};
use crate::api::conditions::{HasConditions, IN_SYNC, STALLED, events, reasons};
use crate::api::{AgentChannel, AgentChannelStatus, AnalysisPhase, AnalysisStatus, ChannelOverride};

/// One channel of the Agent, with what was observed of its delivery.
#[derive(Clone, Debug)]
pub struct ChannelObserved {
    pub channel: AgentChannel,
    /// The ConfigMap of its delivery's name, if one exists.
    pub config_map: Option<ConfigMapState>,
    /// The workloads of its `spec.delivery.restart` that were read.
    pub workloads: Vec<WorkloadState>,
    /// When a container of its workloads' pods last restarted, if one did and they were read
    /// (only while a version bakes, see `analysis`).
    pub last_restart: Option<Time>,
    /// Its checks' measurements taken for this sync (only those due while a version bakes).
    pub measurements: Vec<super::checks::Measurement>,
    /// Its job checks whose Job for the version under judgement does not exist yet.
    pub jobs_to_make: Vec<String>,
}

impl ChannelObserved {
    /// The channel, with nothing observed of its delivery yet.
    pub fn unobserved(channel: AgentChannel) -> Self {
        Self {
            channel,
            config_map: None,
            workloads: Vec::new(),
            last_restart: None,
            measurements: Vec::new(),
            jobs_to_make: Vec::new(),
        }
    }
}

/// The name of a channel's delivery ConfigMap.
pub fn config_map_name(channel: &AgentChannel) -> String {
    channel
        .spec
        .delivery
        .as_ref()
        .and_then(|d| d.config_map_name.clone())
        .unwrap_or_else(|| format!("{}-channel", channel.name_any()))
}

/// The version a channel's spec asks for: its pin, or the Agent's active version.
pub fn desired(channel: &AgentChannel, observed: &Observed) -> Option<i64> {
    channel.spec.version.or_else(|| observed.active_number())
}

/// The version a channel's override holds it on, by its moves' records (see `moves`): its
/// status may be lost, or not yet written.
fn held(observed: &Observed, channel: &ChannelObserved) -> Option<i64> {
    match moves::hold(observed, channel) {
        Hold::Held { to, .. } => Some(to.version),
        _ => None,
    }
}

/// The versions the Agent's channels use (pin, serve, hold by an override, keep as last known
/// good): pruning keeps them. What a channel serves is what it is to serve now (its override's
/// version or its desired one), not what its status last said: a channel about to move frees
/// its old version in the same unit as the change that moves it, whatever order the channels'
/// statuses are written in. A channel that cannot serve its desired version (a pin to none)
/// keeps serving what its status says, which stays.
pub fn in_use(observed: &Observed) -> BTreeSet<i64> {
    observed
        .channels
        .iter()
        .flat_map(|c| {
            let status = c.channel.status.as_ref();
            let serving = moves::serving(observed, c).filter(|n| observed.version(*n).is_some());
            // A version an override holds the channel on is the one it is to serve.
            [
                c.channel.spec.version,
                serving.or_else(|| status.and_then(|s| s.version)),
                status.and_then(|s| s.last_known_good_version),
            ]
        })
        .flatten()
        .collect()
}

/// The channel that pins `version` or holds it by an override, if one does: a Pop of it fails
/// with `VersionInUse`. A channel that follows the Agent moves with it after a Pop.
pub fn holder(observed: &Observed, version: i64) -> Option<String> {
    observed
        .channels
        .iter()
        .find(|c| c.channel.spec.version == Some(version) || held(observed, c) == Some(version))
        .map(|c| c.channel.name_any())
}

/// The next unit of the Agent's channels: the first channel, by name, that needs a write, its
/// promotions first.
pub fn decide(observed: &Observed, now: &Time) -> Vec<Step> {
    let orphans = moves::decide_orphans(observed, now);
    if !orphans.is_empty() {
        return orphans;
    }
    observed
        .channels
        .iter()
        .map(|c| {
            let steps = moves::decide(observed, c, now);
            if steps.is_empty() { sync(observed, c, now) } else { steps }
        })
        .find(|steps| !steps.is_empty())
        .unwrap_or_default()
}

fn target<'a>(observed: &'a Observed, channel: &'a ChannelObserved) -> Target<'a> {
    let spec = &channel.channel.spec;
    Target {
        recipient: Recipient::Channel(channel.channel.name_any()),
        namespace: &observed.namespace,
        agent_name: &observed.agent_name,
        config_map_name: config_map_name(&channel.channel),
        owner: owner_reference(&channel.channel),
        restart: spec.delivery.as_ref().map(|d| d.restart.as_slice()).unwrap_or_default(),
        config_map: channel.config_map.as_ref(),
        workloads: &channel.workloads,
    }
}

/// Why a channel cannot serve its desired version: a condition reason and its message.
struct Problem {
    reason: &'static str,
    message: String,
}

/// One channel's writes: its delivery, then its status where it changed.
fn sync(observed: &Observed, channel: &ChannelObserved, now: &Time) -> Vec<Step> {
    let existing = channel.channel.status.clone().unwrap_or_default();
    let desired = desired(&channel.channel, observed);
    let agent = &observed.agent_name;
    let hold = moves::hold(observed, channel);
    let overridden = match &hold {
        Hold::Held { to, .. } => Some(to.clone()),
        _ => None,
    };
    let problem = match (&observed.agent, overridden.as_ref().map(|o| o.version).or(desired)) {
        (None, _) => Some(Problem {
            reason: reasons::AGENT_NOT_FOUND,
            message: format!("Agent {agent} not found in namespace {}.", observed.namespace),
        }),
        (Some(_), None) => {
            Some(Problem { reason: reasons::AGENT_NOT_FOUND, message: format!("Agent {agent} has no version yet.") })
        }
        (Some(_), Some(number)) if observed.version(number).is_none() => Some(Problem {
            reason: reasons::VERSION_NOT_FOUND,
            message: format!(
                "spec.version: version {number} of Agent {agent} does not exist (never made, popped or pruned); {}",
                match existing.version {
                    Some(served) => format!("the channel keeps serving version {served}."),
                    None => "the channel serves nothing.".to_string(),
                }
            ),
        }),
        // Behaviour 17: a version Failed here is not served again once the channel left it (a
        // promotion with allowFailed holds it by an override, which comes first).
        (Some(_), Some(number)) if overridden.is_none() && quarantined(observed, channel, number) => Some(Problem {
            reason: reasons::VERSION_QUARANTINED,
            message: format!(
                "Version {number} Failed in channel {name} and is quarantined here: it is not served again but \
                     by an AgentPromotion with allowFailed: true; {}",
                match served_before(channel) {
                    Some(served) => format!("the channel keeps serving version {served}."),
                    None => "the channel serves nothing.".to_string(),
                },
                name = channel.channel.name_any()
            ),
        }),
        _ => None,
    };
    // What it serves: its override's version or its desired version, or, when that cannot be
    // served, what it served.
    let serving = match &problem {
        None => overridden.as_ref().map(|o| o.version).or(desired),
        Some(_) => served_before(channel).filter(|n| observed.agent.is_some() && observed.version(*n).is_some()),
    };
    let (mut steps, delivery_status, state) = match serving.and_then(|n| observed.version(n)) {
        Some(version) => {
            let plan = delivery::plan_for(&target(observed, channel), version);
            (plan.steps, plan.status, plan.state)
        }
        None => (Vec::new(), existing.delivery.clone(), DeliveryState::Delivered),
    };
    let judgement = analysis::judge(observed, channel, serving, &state, problem.is_some(), now);
    if let Some(verdict) = judgement.verdict {
        // Recorded before any status says so: the verdict is the durable state.
        return vec![verdict.into()];
    }
    let mut judged = judgement.status;
    steps.extend(judgement.jobs.into_iter().map(Step::from));
    match automatic::decide(observed, channel, serving) {
        automatic::Decision::Create(rollback, note) => {
            return vec![Write::CreateRollback(rollback).into(), Write::Event(note).into()];
        }
        automatic::Decision::Hold(why) => {
            if let Some(analysis) = judged.as_mut() {
                analysis.message = Some(format!("{} Held: {why}", analysis.message.as_deref().unwrap_or_default()));
            }
        }
        automatic::Decision::Nothing => {}
    }
    let mut status = AgentChannelStatus {
        version: serving.or(existing.version),
        desired_version: desired,
        override_: overridden.clone(),
        last_known_good_version: analysis::last_known_good(observed, &channel.channel.name_any()),
        analysis: judged,
        delivery: delivery_status,
        observed_generation: channel.channel.metadata.generation,
        ..existing.clone()
    };
    let problem = problem.map(|p| (p.reason, p.message));
    let blocked = match (&problem, &state) {
        (Some((reason, message)), _) => Some((*reason, message.clone())),
        (None, DeliveryState::Blocked { reason, message }) => Some((*reason, message.clone())),
        _ => None,
    };
    // Held on the version its spec declares, it is in sync all the same.
    let elsewhere = overridden.as_ref().filter(|o| Some(o.version) != desired);
    let in_sync = in_sync(&channel.channel, desired, elsewhere);
    let state = ChannelState {
        generation: channel.channel.metadata.generation,
        serving: status.version,
        delivery: &state,
        problem: problem.as_ref().map(|(reason, message)| (*reason, message.as_str())),
        in_sync,
        healthy: healthy(status.analysis.as_ref()),
    };
    status.conditions = channel_conditions(&existing.conditions, state, now);
    if channel.channel.status.as_ref() != Some(&status) {
        let name = channel.channel.name_any();
        let newly_stalled = blocked.filter(|(reason, _)| {
            !existing.condition(STALLED).is_some_and(|c| c.status == "True" && c.reason == *reason)
        });
        steps.push(Write::PatchChannelStatus { name: name.clone(), status: Box::new(status) }.into());
        steps.extend(newly_stalled.map(|(_, note)| {
            Step::from(Write::Event(EventNote {
                on: EventTarget::Channel(name),
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

/// Whether `number`, the channel's desired version, is quarantined there (behaviour 17): it
/// Failed in the channel, and the channel no longer serves it.
pub fn quarantined(observed: &Observed, channel: &ChannelObserved, number: i64) -> bool {
    moves::verdict(observed, number, &channel.channel.name_any()) == Some(analysis::FAILED)
        && served_before(channel) != Some(number)
}

/// What the channel served: its status says, or, that lost, its ConfigMap, which holds it.
pub fn served_before(channel: &ChannelObserved) -> Option<i64> {
    let status = channel.channel.status.as_ref().and_then(|s| s.version);
    status.or_else(|| channel.config_map.as_ref()?.held.as_ref().map(|h| h.version))
}

/// `Healthy`: True once the served version passed its analysis, False when it failed, Unknown
/// while it is judged or cannot be.
fn healthy(analysis: Option<&AnalysisStatus>) -> (Option<bool>, &'static str, String) {
    match analysis {
        None => (None, reasons::NO_VERSION, "No version is judged yet.".to_string()),
        Some(a) => {
            let message = a.message.clone().unwrap_or_default();
            match a.phase {
                AnalysisPhase::Healthy => (Some(true), reasons::ANALYSIS_PASSED, message),
                AnalysisPhase::Failed => (Some(false), reasons::ANALYSIS_FAILED, message),
                AnalysisPhase::Running => (None, reasons::ANALYSING, message),
                AnalysisPhase::Unknown => (None, reasons::SIGNAL_UNAVAILABLE, message),
            }
        }
    }
}

/// `InSync`: whether the channel serves what its spec declares, or which promotion holds it
/// elsewhere, with the pin to commit to keep it there.
fn in_sync<'a>(
    channel: &AgentChannel,
    desired: Option<i64>,
    overridden: Option<&ChannelOverride>,
) -> ConditionSpec<'a> {
    let (agent, name) = (&channel.spec.agent_name, channel.name_any());
    match overridden {
        None => ConditionSpec {
            type_: IN_SYNC,
            status: true,
            reason: reasons::MATCHES_SPEC,
            message: match desired {
                Some(v) => format!("Serving version {v}, as the spec declares."),
                None => "No version to serve yet.".to_string(),
            },
        },
        Some(to) => {
            let by = match (&to.promotion, &to.rollback) {
                (Some(p), _) => format!("AgentPromotion {p}"),
                (None, Some(r)) => format!("AgentRollback {r}"),
                (None, None) => "an override".to_string(),
            };
            ConditionSpec {
                type_: IN_SYNC,
                status: false,
                reason: reasons::OVERRIDDEN,
                message: format!(
                    "{by} holds the channel on version {}; the spec declares {}. To keep it, commit spec.version: {} \
                     (kubectl agent export {agent} --channel {name}); the next change of the desired version ends it.",
                    to.version,
                    desired.map_or_else(|| "no version".to_string(), |v| format!("version {v}")),
                    to.version
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::READY;
    use crate::api::keys::ROLLBACK_RECORD_ANNOTATION;
    use crate::api::{
        AgentChannelSpec, AgentDefinition, AgentPromotion, AgentPromotionSpec, AgentPromotionStatus, RollbackPhase,
    };
    use crate::fixtures;
    use crate::plan::delivery::Held;
    use crate::plan::moves::{ChannelMark, PromotionRecord};
    use k8s_openapi::jiff::Timestamp;

    fn now() -> Time {
        Time(Timestamp::from_second(1_000).unwrap())
    }

    fn channel(name: &str, version: Option<i64>) -> AgentChannel {
        let mut channel = AgentChannel::new(
            name,
            AgentChannelSpec { agent_name: "support".into(), version, delivery: None, analysis: None },
        );
        channel.metadata.namespace = Some("ns".into());
        channel.metadata.uid = Some(format!("uid-{name}"));
        channel.metadata.generation = Some(1);
        channel
    }

    /// Agent `support` at versions 1..=3, with these channels.
    fn observed(channels: Vec<AgentChannel>) -> Observed {
        let agent = fixtures::agent("support", AgentDefinition::default());
        let versions = (1..=3).map(|n| fixtures::version(&agent, n, AgentDefinition::default(), None)).collect();
        let mut observed = Observed::new("ns".into(), "support".into(), Some(agent), versions, vec![]);
        observed.channels = channels.into_iter().map(ChannelObserved::unobserved).collect();
        observed
    }

    fn status_write(steps: &[Step]) -> &AgentChannelStatus {
        steps
            .iter()
            .find_map(|s| match s {
                Step::One(Write::PatchChannelStatus { status, .. }) => Some(status.as_ref()),
                _ => None,
            })
            .expect("a status write")
    }

    #[test]
    fn a_pinned_channel_serves_its_pin_and_a_following_one_the_active_version() {
        for (pin, serves) in [(Some(1), 1), (None, 3)] {
            let observed = observed(vec![channel("prod", pin)]);
            let steps = decide(&observed, &now());
            let [Step::One(Write::ApplyConfigMap { recipient, config_map, resource_version: None, .. }), ..] =
                steps.as_slice()
            else {
                panic!("{steps:?}")
            };
            assert_eq!(recipient, &Recipient::Channel("prod".into()));
            assert_eq!(config_map.metadata.name.as_deref(), Some("prod-channel"));
            let data = config_map.data.as_ref().unwrap();
            assert!(data.contains_key(&format!("agent-v{serves}.json")) && data.contains_key("agent.json"), "{data:?}");
            let owner = &config_map.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("AgentChannel", "uid-prod"));
            let status = status_write(&steps);
            assert_eq!((status.version, status.desired_version), (Some(serves), Some(serves)));
        }
    }

    #[test]
    fn a_delivered_channel_is_ready_and_needs_nothing_more() {
        let mut observed = observed(vec![channel("prod", Some(2))]);
        let steps = decide(&observed, &now());
        let status = status_write(&steps).clone();
        let ready = status.condition(READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", reasons::VERSION_SERVED));
        let held = Held::of(observed.version(2).unwrap());
        let slot = &mut observed.channels[0];
        slot.channel.status = Some(status);
        slot.config_map = Some(ConfigMapState {
            name: "prod-channel".into(),
            uid: Some("cm".into()),
            resource_version: Some("5".into()),
            owner_uid: Some("uid-prod".into()),
            held: Some(held),
            replacing: None,
            edited_by: None,
            lacks_versioned_key: false,
        });
        assert!(decide(&observed, &now()).is_empty());
    }

    #[test]
    fn a_pin_to_a_missing_version_stalls_and_keeps_serving_what_it_served() {
        let mut observed = observed(vec![channel("prod", Some(9))]);
        let mut served = channel("prod", Some(9));
        served.status = Some(AgentChannelStatus { version: Some(2), ..Default::default() });
        observed.channels[0].channel = served;
        let steps = decide(&observed, &now());
        let status = status_write(&steps);
        assert_eq!((status.version, status.desired_version), (Some(2), Some(9)));
        let stalled = status.condition(STALLED).unwrap();
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", reasons::VERSION_NOT_FOUND));
        assert!(
            stalled.message.contains("spec.version: version 9") && stalled.message.contains("keeps serving version 2")
        );
        assert!(steps.iter().any(|s| matches!(s, Step::One(Write::Event(e)) if e.reason == events::DELIVERY_BLOCKED)));
    }

    #[test]
    fn a_version_failed_in_the_channel_is_not_served_there_again_once_left() {
        let mut observed = observed(vec![channel("prod", None)]);
        observed.versions[2]
            .metadata
            .labels
            .get_or_insert_default()
            .insert(moves::health_key("prod"), analysis::FAILED.into());
        // Still serving it: it stays (the automatic rollback, or a person, moves it).
        let mut serving_it = observed.channels[0].channel.clone();
        serving_it.status = Some(AgentChannelStatus { version: Some(3), ..Default::default() });
        observed.channels[0].channel = serving_it;
        let status = status_write(&decide(&observed, &now())).clone();
        assert_eq!((status.version, status.condition(STALLED).map(|c| c.status.as_str())), (Some(3), Some("False")));

        // Left for version 2: the Agent's active version 3 is not served again.
        let mut left = observed.channels[0].channel.clone();
        left.status = Some(AgentChannelStatus { version: Some(2), ..Default::default() });
        observed.channels[0].channel = left;
        let steps = decide(&observed, &now());
        let status = status_write(&steps);
        assert_eq!((status.version, status.desired_version), (Some(2), Some(3)));
        let stalled = status.condition(STALLED).unwrap();
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", reasons::VERSION_QUARANTINED));
        assert!(stalled.message.contains("allowFailed"), "{}", stalled.message);
        assert!(in_use(&observed).contains(&2), "the version it keeps serving is in use");
        let writes_3 = steps.iter().any(|s| {
            matches!(s, Step::One(Write::ApplyConfigMap { config_map, .. })
                if config_map.data.as_ref().is_some_and(|d| d.contains_key("agent-v3.json")))
        });
        assert!(!writes_3, "version 3 delivered to the channel: {steps:?}");
    }

    #[test]
    fn versions_in_use_are_the_pins_served_held_and_last_known_good_ones() {
        // canary follows the Agent (at 3), a promotion's record holds it on 2, and its status,
        // as it may after a loss, says nothing of the hold.
        let mut held = channel("canary", None);
        held.status = Some(AgentChannelStatus { last_known_good_version: Some(1), ..Default::default() });
        let mut observed = observed(vec![channel("prod", Some(1)), held, channel("staging", None)]);
        let status = AgentPromotionStatus {
            phase: Some(RollbackPhase::Succeeded),
            version: Some(2),
            from_version: Some(3),
            ..Default::default()
        };
        let mark = ChannelMark {
            uid: "uid-canary".into(),
            desired: Some(3),
            desired_uid: observed.version(3).and_then(|v| v.metadata.uid.clone()),
            ended: false,
        };
        let record = serde_json::to_string(&PromotionRecord { status, channel: Some(mark) }).unwrap();
        let spec = AgentPromotionSpec {
            channel: "canary".into(),
            version: Some(2),
            from_channel: None,
            expected_version: None,
            allow_failed: false,
            reason: None,
            requested_by: None,
        };
        let mut promotion = AgentPromotion::new("hold", spec);
        promotion.metadata.resource_version = Some("50".into());
        promotion.metadata.annotations = Some([(ROLLBACK_RECORD_ANNOTATION.to_string(), record)].into());
        observed.promotions = moves::Promotions::new(vec![promotion]);
        assert_eq!(in_use(&observed), BTreeSet::from([1, 2, 3]));
        assert_eq!(holder(&observed, 1).as_deref(), Some("prod"));
        assert_eq!(holder(&observed, 2).as_deref(), Some("canary"));
        assert_eq!(holder(&observed, 3), None, "a following channel moves with the Agent");
    }
}

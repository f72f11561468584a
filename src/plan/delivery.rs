//! Delivery: the served version reaches the agent's runtime. Every Agent, and every channel of
//! it, has a ConfigMap it owns whose `agent.json` is the version it serves, beside the same
//! snapshot under that version's own key (`agent-v<N>.json`) and, during a rollout, the key of
//! the version it replaces; each workload of its `delivery.restart` carries the version and
//! snapshot hash as pod-template annotations, so it rolls out when they change, and each pod
//! reads its own version's key. This module decides the writes and what to report; the
//! controller observes the ConfigMap (metadata only) and the workloads, and applies the writes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ManagedFieldsEntry, ObjectMeta, OwnerReference};
use kube::ResourceExt;

use super::hash::canonical_json;
use super::{EventNote, EventTarget, Observed, Step, Write, owner_reference};
use crate::api::conditions::{HasConditions, READY, events, reasons};
use crate::api::keys::{
    ACTIVE_VERSION_ANNOTATION, AGENT_JSON_KEY, AGENT_LABEL, CHANNEL_LABEL, FIELD_MANAGER, REPLACING_VERSION_ANNOTATION,
    SNAPSHOT_HASH_ANNOTATION, versioned_json_key,
};
use crate::api::{Agent, AgentVersion, DeliveryStatus, WorkloadDelivery, WorkloadRef};

/// The name of the Agent's delivery ConfigMap.
pub fn config_map_name(agent: &Agent) -> String {
    agent
        .spec
        .delivery
        .as_ref()
        .and_then(|d| d.config_map_name.clone())
        .unwrap_or_else(|| format!("{}-agent", agent.name_any()))
}

/// What a workload's `agentops.dev/delivered-for` annotation says of a channel's delivery:
/// this prefix and the channel's name (an Agent's name has no `/`).
pub const CHANNEL_CLAIM_PREFIX: &str = "AgentChannel/";

/// Whose delivery a write is for: the Agent's own, or one of its channels'.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Recipient {
    Agent,
    Channel(String),
}

impl Recipient {
    /// What a workload's `agentops.dev/delivered-for` annotation says when it takes this
    /// delivery.
    pub fn claim(&self, agent_name: &str) -> String {
        match self {
            Self::Agent => agent_name.to_string(),
            Self::Channel(name) => format!("{CHANNEL_CLAIM_PREFIX}{name}"),
        }
    }

    fn event_target(&self) -> EventTarget {
        match self {
            Self::Agent => EventTarget::Agent,
            Self::Channel(name) => EventTarget::Channel(name.clone()),
        }
    }

    fn noun(&self) -> &'static str {
        match self {
            Self::Agent => "Agent",
            Self::Channel(_) => "channel",
        }
    }
}

/// Whoever delivery is for, with what was observed of its ConfigMap and workloads.
pub struct Target<'a> {
    pub recipient: Recipient,
    pub namespace: &'a str,
    pub agent_name: &'a str,
    pub config_map_name: String,
    /// The controller owner reference of the ConfigMap: whose it is.
    pub owner: OwnerReference,
    /// The workloads to roll.
    pub restart: &'a [WorkloadRef],
    /// The ConfigMap of that name, if one exists.
    pub config_map: Option<&'a ConfigMapState>,
    /// The workloads that were read.
    pub workloads: &'a [WorkloadState],
}

impl<'a> Target<'a> {
    /// The Agent's own delivery.
    pub fn of_agent(observed: &'a Observed, agent: &'a Agent) -> Self {
        Self {
            recipient: Recipient::Agent,
            namespace: &observed.namespace,
            agent_name: &observed.agent_name,
            config_map_name: config_map_name(agent),
            owner: owner_reference(agent),
            restart: agent.spec.delivery.as_ref().map(|d| d.restart.as_slice()).unwrap_or_default(),
            config_map: observed.config_map.as_ref(),
            workloads: &observed.workloads,
        }
    }
}

/// The delivery ConfigMap as observed: its metadata, never its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapState {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// uid of its controller owner, if it has one.
    pub owner_uid: Option<String>,
    /// What its annotations say it holds.
    pub held: Option<Held>,
    /// The version whose key it keeps during a rollout, as its annotation says.
    pub replacing: Option<i64>,
    /// Who changed or removed what it delivers (`agent.json`, or the version it says it is)
    /// since the operator wrote it, if someone did: its managed fields no longer give that key
    /// to the operator's field manager. The annotations alone would still say it holds the
    /// active version.
    pub edited_by: Option<String>,
    /// Whether it lacks the key of the version it holds: written by a build from before
    /// version-addressed keys (its managed fields tell; unknown, it is taken to have it).
    pub lacks_versioned_key: bool,
}

/// A version and its snapshot hash, as a ConfigMap or a pod template carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub version: i64,
    pub snapshot_hash: String,
}

impl Held {
    pub fn of(version: &AgentVersion) -> Self {
        Self { version: version.spec.version, snapshot_hash: version.spec.snapshot_hash.clone() }
    }

    /// Read from the two annotations, when both are there and the version is a number.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            version: annotations.get(ACTIVE_VERSION_ANNOTATION)?.parse().ok()?,
            snapshot_hash: annotations.get(SNAPSHOT_HASH_ANNOTATION)?.clone(),
        })
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ACTIVE_VERSION_ANNOTATION.to_string(), self.version.to_string()),
            (SNAPSHOT_HASH_ANNOTATION.to_string(), self.snapshot_hash.clone()),
        ])
    }
}

impl ConfigMapState {
    /// Whether `agent` (this uid, not just this name) made it: the only ConfigMap the
    /// operator ever writes for the Agent.
    pub fn owned_by(&self, agent: &Agent) -> bool {
        self.owner_uid.is_some() && self.owner_uid == agent.metadata.uid
    }

    pub fn from_meta(meta: &ObjectMeta) -> Self {
        let annotations = meta.annotations.as_ref();
        let held = annotations.and_then(Held::from_annotations);
        let lacks_versioned_key =
            held.as_ref().is_some_and(|h| owns_key(meta, &versioned_json_key(h.version)) == Some(false));
        Self {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            owner_uid: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            held,
            replacing: annotations.and_then(|a| a.get(REPLACING_VERSION_ANNOTATION)).and_then(|v| v.parse().ok()),
            edited_by: edited_by(meta),
            lacks_versioned_key,
        }
    }
}

/// The keys of the delivery ConfigMap's data, all written by the operator: the snapshot, and
/// the Agent, version and snapshot hash it is.
const AGENT_KEY: &str = "agent";
const VERSION_KEY: &str = "version";
const SNAPSHOT_HASH_KEY: &str = "snapshot-hash";
const DATA_KEYS: [&str; 4] = [AGENT_JSON_KEY, AGENT_KEY, VERSION_KEY, SNAPSHOT_HASH_KEY];

/// Whether an entry of managed fields holds a key of the data.
fn holds_key(entry: &ManagedFieldsEntry, key: &str) -> bool {
    let data = entry.fields_v1.as_ref().and_then(|f| f.0.get("f:data"));
    data.and_then(|data| data.get(format!("f:{key}"))).is_some()
}

/// Whether the operator's field manager owns a key of the data; `None` when managed fields are
/// not known.
fn owns_key(meta: &ObjectMeta, key: &str) -> Option<bool> {
    let entries = meta.managed_fields.as_ref()?;
    Some(entries.iter().any(|e| e.manager.as_deref() == Some(FIELD_MANAGER) && holds_key(e, key)))
}

/// Who changed or removed a key of the delivered data when the operator's field manager no
/// longer owns it (see [`ConfigMapState::edited_by`]); none when managed fields are not known.
fn edited_by(meta: &ObjectMeta) -> Option<String> {
    let entries = meta.managed_fields.as_ref()?;
    DATA_KEYS.iter().find_map(|key| {
        let owners: Vec<&str> =
            entries.iter().filter(|e| holds_key(e, key)).map(|e| e.manager.as_deref().unwrap_or("someone")).collect();
        if owners.contains(&FIELD_MANAGER) {
            return None;
        }
        Some(owners.first().map_or_else(|| format!("someone (who removed {key})"), |m| (*m).to_string()))
    })
}

/// One workload of a delivery's `restart`, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    pub workload: WorkloadRef,
    pub found: Found,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Missing,
    /// The operator may not read or patch it.
    Forbidden(String),
    /// Its pod template takes the delivery of another Agent or channel, `by`, which lists it
    /// too: not written.
    Claimed {
        by: String,
    },
    Present {
        /// What its pod template's annotations carry.
        held: Option<Held>,
        rollout: Rollout,
    },
}

/// How far a workload's rollout of its current template has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    Done,
    Progressing(String),
    Stuck(String),
}

/// Where delivery of the served version stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    Delivered,
    /// Writes made or rollouts running: it will get there without help.
    InProgress(String),
    /// It will not get there without a change from outside.
    Blocked {
        reason: &'static str,
        message: String,
    },
}

/// The writes delivery needs now, and the status as it stands once they are made.
pub struct Plan {
    pub steps: Vec<Step>,
    pub status: Option<DeliveryStatus>,
    pub state: DeliveryState,
}

/// Whether the Agent's status says it waits for its delivery (see [`awaits`]).
pub fn awaits_delivery(agent: &Agent) -> bool {
    awaits(agent.status.as_ref().and_then(|s| s.condition(READY)))
}

/// Whether a `Ready` condition says its object waits for its delivery: a rollout in progress,
/// or something in the way that may clear without a change to the object (a workload created,
/// a foreign ConfigMap deleted). Nothing watches workloads, so such an object is looked at
/// again after a while.
pub fn awaits(ready: Option<&Condition>) -> bool {
    ready.is_some_and(|c| {
        c.status == "False"
            && [
                reasons::DELIVERING,
                reasons::CONFIG_MAP_CONFLICT,
                reasons::WORKLOAD_NOT_FOUND,
                reasons::WORKLOAD_FORBIDDEN,
                reasons::WORKLOAD_CONFLICT,
                reasons::ROLLOUT_STUCK,
            ]
            .contains(&c.reason.as_str())
    })
}

/// What delivery of the Agent's newest version needs, given what was observed.
pub fn plan(observed: &Observed, agent: &Agent) -> Plan {
    match observed.newest() {
        Some(active) => plan_for(&Target::of_agent(observed, agent), active),
        None => Plan { steps: Vec::new(), status: None, state: DeliveryState::Delivered },
    }
}

/// What delivery of `version` to `target` needs.
pub fn plan_for(target: &Target<'_>, version: &AgentVersion) -> Plan {
    let want = Held::of(version);
    let name = target.config_map_name.clone();
    let mut steps = Vec::new();
    let mut status = DeliveryStatus { config_map: Some(name.clone()), ..DeliveryStatus::default() };
    let noun = target.recipient.noun();

    match target.config_map.filter(|c| c.name == name) {
        Some(found) if found.owner_uid.as_deref() != Some(target.owner.uid.as_str()) || target.owner.uid.is_empty() => {
            status.version = None;
            status.workloads = report(target, &want);
            let message = format!(
                "ConfigMap {name} exists and was not created by the operator for this {noun}; it is left as it is. \
                 Delete or rename it, or set spec.delivery.configMapName."
            );
            return Plan {
                steps,
                status: Some(status),
                state: DeliveryState::Blocked { reason: reasons::CONFIG_MAP_CONFLICT, message },
            };
        }
        Some(ours) if ours.held.as_ref() == Some(&want) && ours.edited_by.is_none() && !ours.lacks_versioned_key => {
            // The replaced version's key goes once no pod runs it.
            if let Some(replaced) = ours.replacing
                && rolled_out(target, &want)
            {
                let config_map = config_map(target, version, None);
                let remove = vec![versioned_json_key(replaced)];
                let resource_version = ours.resource_version.clone();
                steps.push(
                    Write::ApplyConfigMap {
                        recipient: target.recipient.clone(),
                        config_map: Box::new(config_map),
                        resource_version,
                        remove,
                    }
                    .into(),
                );
            }
        }
        existing => {
            let held = existing.and_then(|c| c.held.as_ref()).map(|h| h.version);
            // Pods of the workloads still run the version held until they roll; a ConfigMap no
            // listed workload mounts has no pods to wait for.
            let replacing = match held {
                Some(held) if held != want.version => (!target.restart.is_empty()).then_some(held),
                _ => existing.and_then(|c| c.replacing),
            };
            let mut remove: Vec<String> = [held, existing.and_then(|c| c.replacing)]
                .into_iter()
                .flatten()
                .filter(|n| *n != want.version && Some(*n) != replacing)
                .map(versioned_json_key)
                .collect();
            remove.dedup();
            steps.push(
                Write::ApplyConfigMap {
                    recipient: target.recipient.clone(),
                    config_map: Box::new(config_map(target, version, replacing)),
                    resource_version: existing.and_then(|c| c.resource_version.clone()),
                    remove,
                }
                .into(),
            );
            if let Some(editor) = existing.and_then(|c| c.edited_by.as_ref()) {
                let note = format!(
                    "The data of ConfigMap {name} was changed by {editor}, not by a published version; \
                     version {} is written back.",
                    want.version
                );
                steps.push(
                    Write::Event(EventNote {
                        on: target.recipient.event_target(),
                        related: None,
                        warning: true,
                        reason: events::DELIVERY_REPAIRED,
                        action: "Deliver",
                        note,
                    })
                    .into(),
                );
            }
        }
    }
    status.version = Some(want.version);

    let mut rolls = Vec::new();
    let mut state = DeliveryState::Delivered;
    for (workload, found) in workloads(target) {
        let (delivery, this) = match found {
            Found::Missing => {
                let message = format!(
                    "{} {} not found in namespace {}.",
                    workload.kind.as_str(),
                    workload.name,
                    target.namespace
                );
                (None, DeliveryState::Blocked { reason: reasons::WORKLOAD_NOT_FOUND, message })
            }
            Found::Forbidden(why) => {
                let message = format!("{} {}: {why}", workload.kind.as_str(), workload.name);
                (None, DeliveryState::Blocked { reason: reasons::WORKLOAD_FORBIDDEN, message })
            }
            Found::Claimed { by } => {
                let by = match by.strip_prefix(CHANNEL_CLAIM_PREFIX) {
                    Some(channel) => format!("channel {channel}"),
                    None => format!("Agent {by}"),
                };
                let message = format!(
                    "{} {} takes the delivery of {by}, which lists it too; it is left as it is. \
                     Remove it from spec.delivery.restart of one of the two.",
                    workload.kind.as_str(),
                    workload.name
                );
                (None, DeliveryState::Blocked { reason: reasons::WORKLOAD_CONFLICT, message })
            }
            Found::Present { held, .. } if held.as_ref() != Some(&want) => {
                rolls.push(Write::RollWorkload {
                    recipient: target.recipient.clone(),
                    workload: workload.clone(),
                    held: want.clone(),
                });
                let message =
                    format!("{} {} rolling out version {}.", workload.kind.as_str(), workload.name, want.version);
                (Some((false, None)), DeliveryState::InProgress(message))
            }
            Found::Present { rollout: Rollout::Done, .. } => (Some((true, None)), DeliveryState::Delivered),
            Found::Present { rollout: Rollout::Progressing(why), .. } => {
                let message = format!("{} {}: {why}", workload.kind.as_str(), workload.name);
                (Some((false, None)), DeliveryState::InProgress(message))
            }
            Found::Present { rollout: Rollout::Stuck(why), .. } => {
                let message = format!("{} {}: {why}", workload.kind.as_str(), workload.name);
                (
                    Some((false, Some(message.clone()))),
                    DeliveryState::Blocked { reason: reasons::ROLLOUT_STUCK, message },
                )
            }
        };
        let message = match &this {
            DeliveryState::Blocked { message, .. } => Some(message.clone()),
            _ => None,
        };
        status.workloads.push(WorkloadDelivery {
            kind: workload.kind,
            name: workload.name.clone(),
            version: delivery.as_ref().map(|_| want.version),
            rolled_out: delivery.is_some_and(|(done, _)| done),
            message,
        });
        state = worse(state, this);
    }
    // The ConfigMap first: pods that a roll starts mount the new version. The state is the one
    // once these writes are made: the status that says so is written after them, in the same
    // unit, and not at all if one of them fails.
    if !rolls.is_empty() {
        steps.push(Step::Together(rolls));
    }
    Plan { steps, status: Some(status), state }
}

/// Whether every workload of the target runs `want`, rolled out: no pod runs another version.
fn rolled_out(target: &Target<'_>, want: &Held) -> bool {
    workloads(target)
        .iter()
        .all(|(_, found)| matches!(found, Found::Present { held: Some(held), rollout: Rollout::Done } if held == want))
}

/// Where the Agent's delivery stands right after its active version becomes `after`: in
/// progress unless the ConfigMap and every workload already carry it.
pub fn state_after(observed: &Observed, agent: &Agent, after: Option<&AgentVersion>) -> DeliveryState {
    let Some(after) = after else { return DeliveryState::Delivered };
    let want = Held::of(after);
    let target = Target::of_agent(observed, agent);
    let ours = target.config_map.filter(|c| c.name == target.config_map_name && c.owned_by(agent));
    if ours.is_some_and(|c| c.held.as_ref() == Some(&want)) && rolled_out(&target, &want) {
        DeliveryState::Delivered
    } else {
        DeliveryState::InProgress(format!("Delivering version {}.", want.version))
    }
}

/// The target's workloads, each with what was observed of it (`Missing` when nothing was).
fn workloads<'a>(target: &'a Target<'a>) -> Vec<(&'a WorkloadRef, Found)> {
    target
        .restart
        .iter()
        .map(|w| {
            let found = target.workloads.iter().find(|s| &s.workload == w).map_or(Found::Missing, |s| s.found.clone());
            (w, found)
        })
        .collect()
}

/// The workloads' delivery, reported while the ConfigMap blocks it.
fn report(target: &Target<'_>, want: &Held) -> Vec<WorkloadDelivery> {
    workloads(target)
        .into_iter()
        .map(|(w, found)| {
            let held = match &found {
                Found::Present { held, .. } => held.clone(),
                _ => None,
            };
            WorkloadDelivery {
                kind: w.kind,
                name: w.name.clone(),
                version: held.as_ref().map(|h| h.version),
                rolled_out: matches!(found, Found::Present { rollout: Rollout::Done, .. })
                    && held.as_ref() == Some(want),
                message: None,
            }
        })
        .collect()
}

/// The state to report of two: blocked over in progress over delivered; the first of equals.
fn worse(a: DeliveryState, b: DeliveryState) -> DeliveryState {
    let rank = |s: &DeliveryState| match s {
        DeliveryState::Delivered => 0,
        DeliveryState::InProgress(_) => 1,
        DeliveryState::Blocked { .. } => 2,
    };
    if rank(&b) > rank(&a) { b } else { a }
}

/// The target's delivery ConfigMap holding `version`, and keeping the key of `replacing` (its
/// data is not written here: a merge leaves it as it is).
fn config_map(target: &Target<'_>, version: &AgentVersion, replacing: Option<i64>) -> ConfigMap {
    let held = Held::of(version);
    let snapshot = canonical_json(&version.spec.snapshot);
    let mut labels = BTreeMap::from([(AGENT_LABEL.to_string(), target.agent_name.to_string())]);
    if let Recipient::Channel(channel) = &target.recipient {
        labels.insert(CHANNEL_LABEL.to_string(), channel.clone());
    }
    let mut annotations = held.annotations();
    if let Some(replacing) = replacing {
        annotations.insert(REPLACING_VERSION_ANNOTATION.to_string(), replacing.to_string());
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(target.config_map_name.clone()),
            namespace: Some(target.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![target.owner.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (versioned_json_key(held.version), snapshot.clone()),
            (AGENT_JSON_KEY.to_string(), snapshot),
            (AGENT_KEY.to_string(), target.agent_name.to_string()),
            (VERSION_KEY.to_string(), held.version.to_string()),
            (SNAPSHOT_HASH_KEY.to_string(), held.snapshot_hash.clone()),
        ])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentDefinition, AgentStatus, DeliverySpec, WorkloadKind};
    use crate::fixtures;

    #[test]
    fn an_agent_awaits_its_delivery_while_ready_is_false_for_a_delivery_reason() {
        let with_ready = |ready: Option<bool>, reason: &str| {
            let mut agent = agent(Vec::new());
            let conditions = ready.map(|ready| fixtures::condition(READY, ready, reason)).into_iter().collect();
            agent.status = Some(AgentStatus { conditions, ..AgentStatus::default() });
            agent
        };
        let cases = [
            (Some(false), reasons::DELIVERING, true),
            (Some(false), reasons::CONFIG_MAP_CONFLICT, true),
            (Some(false), reasons::WORKLOAD_NOT_FOUND, true),
            (Some(false), reasons::WORKLOAD_FORBIDDEN, true),
            (Some(false), reasons::WORKLOAD_CONFLICT, true),
            (Some(false), reasons::ROLLOUT_STUCK, true),
            (Some(false), reasons::PUBLISHING, false),
            (Some(false), reasons::ROLLBACK_IN_PROGRESS, false),
            (Some(true), reasons::DELIVERING, false),
            (Some(true), reasons::VERSION_ACTIVE, false),
            (None, "", false),
        ];
        for (ready, reason, awaits) in cases {
            assert_eq!(awaits_delivery(&with_ready(ready, reason)), awaits, "Ready={ready:?} {reason}");
        }
        assert!(!awaits_delivery(&agent(Vec::new())), "no status");
    }

    fn agent(restart: Vec<WorkloadRef>) -> Agent {
        let mut agent = fixtures::agent("support", AgentDefinition::default());
        agent.spec.delivery = Some(DeliverySpec { config_map_name: None, restart });
        agent
    }

    /// Version `number`, its snapshot hash written as `hash` (what the delivery compares).
    fn version(agent: &Agent, number: i64, hash: &str) -> AgentVersion {
        let mut version = fixtures::version(agent, number, AgentDefinition::default(), None);
        version.spec.snapshot_hash = hash.into();
        version
    }

    fn observed(agent: &Agent, config_map: Option<ConfigMapState>, workloads: Vec<WorkloadState>) -> Observed {
        let mut o = Observed::new(
            "ns".into(),
            "support".into(),
            Some(agent.clone()),
            vec![version(agent, 1, "h1"), version(agent, 2, "h2")],
            vec![],
        );
        o.config_map = config_map;
        o.workloads = workloads;
        o
    }

    fn ours(held: Option<Held>) -> ConfigMapState {
        ConfigMapState {
            name: "support-agent".into(),
            uid: Some("cm".into()),
            resource_version: Some("7".into()),
            owner_uid: Some("uid-support".into()),
            held,
            replacing: None,
            edited_by: None,
            lacks_versioned_key: false,
        }
    }

    fn deployment() -> WorkloadRef {
        WorkloadRef { kind: WorkloadKind::Deployment, name: "runtime".into() }
    }

    fn held(version: i64, hash: &str) -> Held {
        Held { version, snapshot_hash: hash.into() }
    }

    #[test]
    fn a_missing_config_map_is_created_with_the_active_snapshot() {
        let agent = agent(vec![]);
        let plan = plan(&observed(&agent, None, vec![]), &agent);
        let [Step::One(Write::ApplyConfigMap { config_map, resource_version: None, .. })] = plan.steps.as_slice()
        else {
            panic!("{:?}", plan.steps)
        };
        assert_eq!(config_map.metadata.name.as_deref(), Some("support-agent"));
        assert_eq!(config_map.metadata.annotations.as_ref(), Some(&held(2, "h2").annotations()));
        assert!(config_map.data.as_ref().unwrap().contains_key(AGENT_JSON_KEY));
        // As it stands once the ConfigMap is written: its status is written after it.
        assert_eq!(plan.state, DeliveryState::Delivered);
    }

    #[test]
    fn an_up_to_date_config_map_needs_nothing() {
        let agent = agent(vec![]);
        let plan = plan(&observed(&agent, Some(ours(Some(held(2, "h2")))), vec![]), &agent);
        assert!(plan.steps.is_empty());
        assert_eq!(plan.state, DeliveryState::Delivered);
        assert_eq!(plan.status.unwrap().version, Some(2));
    }

    /// Managed fields as the API server writes them after `kubectl patch` changed `agent.json`.
    fn managed(entries: &[(&str, serde_json::Value)]) -> ObjectMeta {
        let managed_fields = entries
            .iter()
            .map(|(manager, fields)| ManagedFieldsEntry {
                manager: Some(manager.to_string()),
                operation: Some("Update".into()),
                fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(fields.clone())),
                ..Default::default()
            })
            .collect();
        ObjectMeta { managed_fields: Some(managed_fields), ..ObjectMeta::default() }
    }

    #[test]
    fn whoever_owns_the_delivered_key_if_not_the_operator_edited_it() {
        let owns = serde_json::json!({"f:data": {".": {}, "f:agent.json": {}, "f:agent": {}, "f:version": {}, "f:snapshot-hash": {}}});
        let lost = serde_json::json!({"f:data": {".": {}, "f:agent": {}, "f:version": {}, "f:snapshot-hash": {}}});
        let edit = serde_json::json!({"f:data": {"f:agent.json": {}}});
        assert_eq!(edited_by(&managed(&[(FIELD_MANAGER, owns.clone())])), None);
        assert_eq!(
            edited_by(&managed(&[(FIELD_MANAGER, lost.clone()), ("kubectl-patch", edit)])).as_deref(),
            Some("kubectl-patch")
        );
        let removed = edited_by(&managed(&[(FIELD_MANAGER, lost)])).expect("removed");
        assert!(removed.contains("removed agent.json"), "{removed}");
        let version_lost =
            serde_json::json!({"f:data": {".": {}, "f:agent.json": {}, "f:agent": {}, "f:snapshot-hash": {}}});
        let version_edit = serde_json::json!({"f:data": {"f:version": {}}});
        let edited = edited_by(&managed(&[(FIELD_MANAGER, version_lost), ("kubectl-edit", version_edit)]));
        assert_eq!(edited.as_deref(), Some("kubectl-edit"));
        // Another manager's labels are not an edit; unknown managed fields tell nothing.
        let labels = serde_json::json!({"f:metadata": {"f:labels": {}}});
        assert_eq!(edited_by(&managed(&[(FIELD_MANAGER, owns), ("kubectl-label", labels)])), None);
        assert_eq!(edited_by(&ObjectMeta::default()), None);
    }

    #[test]
    fn a_config_map_edited_by_hand_is_written_back_and_the_agent_told() {
        let agent = agent(vec![]);
        let mut edited = ours(Some(held(2, "h2")));
        edited.edited_by = Some("kubectl-patch".into());
        let plan = plan(&observed(&agent, Some(edited), vec![]), &agent);
        let [Step::One(Write::ApplyConfigMap { resource_version: Some(rv), .. }), Step::One(Write::Event(note))] =
            plan.steps.as_slice()
        else {
            panic!("{:?}", plan.steps)
        };
        assert_eq!(rv, "7", "on the condition that it did not change again");
        assert_eq!(note.reason, events::DELIVERY_REPAIRED);
        assert!(note.note.contains("changed by kubectl-patch") && note.note.contains("version 2"), "{}", note.note);
        assert_eq!(plan.state, DeliveryState::Delivered);
    }

    #[test]
    fn an_outdated_config_map_is_replaced_on_the_condition_it_did_not_change() {
        let agent = agent(vec![]);
        let plan = plan(&observed(&agent, Some(ours(Some(held(1, "h1")))), vec![]), &agent);
        assert!(
            matches!(plan.steps.as_slice(), [Step::One(Write::ApplyConfigMap { resource_version: Some(rv), .. })] if rv == "7")
        );
    }

    #[test]
    fn a_config_map_someone_else_made_is_never_written() {
        let agent = agent(vec![deployment()]);
        let mut foreign = ours(None);
        foreign.owner_uid = None;
        let plan = plan(&observed(&agent, Some(foreign), vec![]), &agent);
        assert!(plan.steps.is_empty());
        assert!(matches!(plan.state, DeliveryState::Blocked { reason: reasons::CONFIG_MAP_CONFLICT, .. }));
    }

    #[test]
    fn workloads_roll_after_the_config_map_and_report_their_rollout() {
        let agent = agent(vec![deployment()]);
        let old = WorkloadState {
            workload: deployment(),
            found: Found::Present { held: Some(held(1, "h1")), rollout: Rollout::Done },
        };
        let plan1 = plan(&observed(&agent, Some(ours(Some(held(1, "h1")))), vec![old]), &agent);
        assert!(
            matches!(plan1.steps.as_slice(), [Step::One(Write::ApplyConfigMap { .. }), Step::Together(rolls)] if rolls.len() == 1)
        );

        let rolling = WorkloadState {
            workload: deployment(),
            found: Found::Present { held: Some(held(2, "h2")), rollout: Rollout::Progressing("1 of 2 updated".into()) },
        };
        let plan2 = plan(&observed(&agent, Some(ours(Some(held(2, "h2")))), vec![rolling]), &agent);
        assert!(plan2.steps.is_empty());
        assert!(matches!(plan2.state, DeliveryState::InProgress(_)));
        assert!(!plan2.status.unwrap().workloads[0].rolled_out);

        let done = WorkloadState {
            workload: deployment(),
            found: Found::Present { held: Some(held(2, "h2")), rollout: Rollout::Done },
        };
        let plan3 = plan(&observed(&agent, Some(ours(Some(held(2, "h2")))), vec![done]), &agent);
        assert_eq!(plan3.state, DeliveryState::Delivered);
        assert!(plan3.status.unwrap().workloads[0].rolled_out);
    }

    #[test]
    fn missing_forbidden_and_stuck_workloads_block_with_their_reason() {
        let agent = agent(vec![deployment()]);
        let cm = Some(ours(Some(held(2, "h2"))));
        for (found, reason) in [
            (Found::Missing, reasons::WORKLOAD_NOT_FOUND),
            (Found::Forbidden("forbidden".into()), reasons::WORKLOAD_FORBIDDEN),
            // Another Agent's, even one behind: never rolled to this Agent's version.
            (Found::Claimed { by: "other".into() }, reasons::WORKLOAD_CONFLICT),
            (
                Found::Present { held: Some(held(2, "h2")), rollout: Rollout::Stuck("deadline exceeded".into()) },
                reasons::ROLLOUT_STUCK,
            ),
        ] {
            let plan =
                plan(&observed(&agent, cm.clone(), vec![WorkloadState { workload: deployment(), found }]), &agent);
            assert!(plan.steps.is_empty());
            assert!(matches!(plan.state, DeliveryState::Blocked { reason: r, .. } if r == reason), "{:?}", plan.state);
        }
    }

    /// The ConfigMap write of a plan: its annotations, data keys and the keys it removes.
    fn config_map_write(plan: &Plan) -> (BTreeMap<String, String>, Vec<String>, Vec<String>) {
        let Some(Step::One(Write::ApplyConfigMap { config_map, remove, .. })) = plan.steps.first() else {
            panic!("no ConfigMap write first: {:?}", plan.steps)
        };
        let keys = config_map.data.as_ref().unwrap().keys().cloned().collect();
        (config_map.metadata.annotations.clone().unwrap(), keys, remove.clone())
    }

    #[test]
    fn during_a_rollout_the_config_map_keeps_the_replaced_versions_key_until_no_pod_runs_it() {
        let agent = agent(vec![deployment()]);
        let on = |held: Held, rollout: Rollout| {
            vec![WorkloadState { workload: deployment(), found: Found::Present { held: Some(held), rollout } }]
        };
        // Version 2 arrives: its key is added, version 1's stays (a merge leaves it), and the
        // ConfigMap says it replaces 1.
        let plan1 = plan(&observed(&agent, Some(ours(Some(held(1, "h1")))), on(held(1, "h1"), Rollout::Done)), &agent);
        let (annotations, keys, remove) = config_map_write(&plan1);
        assert_eq!(annotations.get(REPLACING_VERSION_ANNOTATION).map(String::as_str), Some("1"));
        assert!(keys.contains(&"agent-v2.json".to_string()) && keys.contains(&AGENT_JSON_KEY.to_string()));
        assert!(remove.is_empty(), "{remove:?}");

        // While pods of version 1 may still run, nothing more is written to it.
        let mut replacing = ours(Some(held(2, "h2")));
        replacing.replacing = Some(1);
        let rolling = on(held(2, "h2"), Rollout::Progressing("1 of 2 updated".into()));
        let plan2 = plan(&observed(&agent, Some(replacing.clone()), rolling), &agent);
        assert!(plan2.steps.is_empty(), "{:?}", plan2.steps);

        // Rolled out: version 1's key goes, and the annotation with it.
        let plan3 = plan(&observed(&agent, Some(replacing), on(held(2, "h2"), Rollout::Done)), &agent);
        let (annotations, _, remove) = config_map_write(&plan3);
        assert_eq!(annotations.get(REPLACING_VERSION_ANNOTATION), None);
        assert_eq!(remove, ["agent-v1.json"]);
        assert_eq!(plan3.state, DeliveryState::Delivered);
    }

    #[test]
    fn without_workloads_the_replaced_versions_key_goes_at_once() {
        let agent = agent(vec![]);
        let plan = plan(&observed(&agent, Some(ours(Some(held(1, "h1")))), vec![]), &agent);
        let (annotations, keys, remove) = config_map_write(&plan);
        assert_eq!(annotations.get(REPLACING_VERSION_ANNOTATION), None);
        assert!(keys.contains(&"agent-v2.json".to_string()));
        assert_eq!(remove, ["agent-v1.json"]);
    }

    #[test]
    fn a_config_map_from_before_versioned_keys_gets_its_key_without_a_repair_event() {
        let agent = agent(vec![]);
        let mut old = ours(Some(held(2, "h2")));
        old.lacks_versioned_key = true;
        let plan = plan(&observed(&agent, Some(old), vec![]), &agent);
        let (_, keys, _) = config_map_write(&plan);
        assert!(keys.contains(&"agent-v2.json".to_string()));
        assert_eq!(plan.steps.len(), 1, "no DeliveryRepaired Event: {:?}", plan.steps);
        // Managed fields tell whether it has the key.
        let owns = |key: &str| {
            let mut fields = serde_json::json!({"f:data": {"f:agent.json": {}, "f:agent": {}, "f:version": {}, "f:snapshot-hash": {}}});
            fields["f:data"][format!("f:{key}")] = serde_json::json!({});
            let mut meta = managed(&[(FIELD_MANAGER, fields)]);
            meta.annotations = Some(held(2, "h2").annotations());
            ConfigMapState::from_meta(&meta).lacks_versioned_key
        };
        assert!(!owns("agent-v2.json"));
        assert!(owns("agent-v1.json"));
    }
}

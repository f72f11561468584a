//! A model of one Agent's corner of the API server, answering writes the way the API server
//! does where it matters: names are unique (AlreadyExists), deletes and rollback status
//! writes are conditional (uid and resourceVersion), resourceVersions grow. It is the port the
//! operator's own sync loop runs against in the property tests, and it can crash the
//! controller before any write, lose every status, and serve a stale rollback cache.

use futures::executor::block_on;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::conditions::{HasConditions, READY};
use crate::api::keys::ROLLBACK_RECORD_ANNOTATION;
use crate::api::{
    Agent, AgentChannel, AgentChannelSpec, AgentChannelStatus, AgentDefinition, AgentPromotion, AgentPromotionSpec,
    AgentPromotionStatus, AgentRollback, AgentRollbackSpec, AgentRollbackStatus, AgentSpec, AgentStatus, AgentVersion,
    AnalysisSpec, ChannelOverride, RollbackPhase, RollbackStrategy,
};
use crate::plan::channel::ChannelObserved;
use crate::plan::delivery::{ConfigMapState, Recipient};
use crate::plan::driver::{self, Outcome as Written, Port, Worked};
use crate::plan::moves::Promotions;
use crate::plan::sync::decide;
use crate::plan::{Applied, EventNote, Observed, Step, Write};

#[derive(Debug)]
pub(super) enum Refused {
    AlreadyExists,
    Conflict,
    /// A rollback status write lost its compare-and-swap; carries the fresh rollback, which
    /// the controller reads back and folds in.
    StaleRollback(Box<AgentRollback>),
    /// Likewise for a promotion.
    StalePromotion(Box<AgentPromotion>),
    /// An admission policy refused a version's create.
    Denied(crate::plan::RefusedVersion),
}

/// One Agent's corner of an API server.
pub struct Cluster {
    pub agent: Option<Agent>,
    pub versions: Vec<AgentVersion>,
    pub rollbacks: Vec<AgentRollback>,
    pub events: Vec<EventNote>,
    /// The delivery ConfigMap, and the snapshot its `agent.json` holds.
    pub config_map: Option<(ConfigMapState, AgentDefinition)>,
    /// The Agent's channels (none unless a test makes them), their promotions, and each
    /// channel's delivery ConfigMap with the snapshot it holds, by channel.
    pub channels: Vec<AgentChannel>,
    pub promotions: Vec<AgentPromotion>,
    pub channel_config_maps: std::collections::BTreeMap<String, (ConfigMapState, AgentDefinition)>,
    /// Every state the rollbacks went through: a watch cache may serve any recent one.
    pub(super) rollback_history: Vec<Vec<AgentRollback>>,
    /// An admission policy on versions: refuses those it returns a message for.
    pub version_policy: Option<fn(&AgentVersion) -> Option<String>>,
    /// The ConfigMaps in which Pops keep the snapshots they delete, by name (see `popped`).
    pub popped: std::collections::BTreeMap<String, k8s_openapi::api::core::v1::ConfigMap>,
    revision: u64,
    uids: u64,
    pub(super) clock: i64,
}

pub(super) fn time(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).expect("valid test time"))
}

pub fn content(n: u8) -> AgentDefinition {
    AgentDefinition { instructions: Some(format!("instructions {n}")), ..AgentDefinition::default() }
}

impl Cluster {
    pub fn new(definition: AgentDefinition, limit: i32) -> Self {
        let mut cluster = Self {
            agent: None,
            versions: Vec::new(),
            rollbacks: Vec::new(),
            events: Vec::new(),
            config_map: None,
            channels: Vec::new(),
            promotions: Vec::new(),
            channel_config_maps: std::collections::BTreeMap::new(),
            rollback_history: Vec::new(),
            version_policy: None,
            popped: std::collections::BTreeMap::new(),
            revision: 100,
            uids: 0,
            clock: 1_700_000_000,
        };
        let meta = cluster.new_meta("a");
        cluster.agent = Some(Agent {
            metadata: ObjectMeta { generation: Some(1), ..meta },
            spec: AgentSpec { definition, revision_history_limit: limit, delivery: None },
            status: None,
        });
        cluster
    }

    fn new_meta(&mut self, name: &str) -> ObjectMeta {
        self.revision += 1;
        self.uids += 1;
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{}", self.uids)),
            resource_version: Some(self.revision.to_string()),
            // Every object shares one second, so ordering must come from the revision.
            creation_timestamp: Some(time(self.clock)),
            ..ObjectMeta::default()
        }
    }

    fn bump(&mut self) -> Option<String> {
        self.revision += 1;
        Some(self.revision.to_string())
    }

    /// A user edit of the Agent's spec; the API server bumps the generation only on change.
    pub fn edit(&mut self, definition: Option<AgentDefinition>, limit: Option<i32>) {
        let rv = self.bump();
        let agent = self.agent.as_mut().expect("agent exists");
        let mut spec = agent.spec.clone();
        if let Some(d) = definition {
            spec.definition = d;
        }
        if let Some(l) = limit {
            spec.revision_history_limit = l;
        }
        if spec != agent.spec {
            agent.spec = spec;
            agent.metadata.generation = agent.metadata.generation.map(|g| g + 1);
            agent.metadata.resource_version = rv;
        }
    }

    pub fn create_rollback(
        &mut self,
        name: &str,
        strategy: RollbackStrategy,
        target: Option<i64>,
        expected: Option<i64>,
    ) {
        self.push_rollback(name, None, strategy, target, expected);
    }

    /// A rollback of `channel` to `target` (Restore).
    pub fn create_channel_rollback(&mut self, name: &str, channel: &str, target: i64, expected: Option<i64>) {
        self.push_rollback(name, Some(channel.into()), RollbackStrategy::Restore, Some(target), expected);
    }

    fn push_rollback(
        &mut self,
        name: &str,
        channel: Option<String>,
        strategy: RollbackStrategy,
        target: Option<i64>,
        expected: Option<i64>,
    ) {
        let meta = self.new_meta(name);
        self.rollbacks.push(AgentRollback {
            metadata: ObjectMeta { generation: Some(1), ..meta },
            spec: AgentRollbackSpec {
                agent_name: "a".into(),
                channel,
                strategy,
                target_version: target,
                expected_active_version: expected,
                reason: None,
                requested_by: Some(format!("user-{name}")),
            },
            status: None,
        });
        self.rollback_history.push(self.rollbacks.clone());
    }

    /// A channel created, or its pin changed. It is judged after a bake longer than any test,
    /// so no verdict keeps versions the contract's rules would prune.
    pub fn pin(&mut self, name: &str, pin: Option<i64>) {
        let rv = self.bump();
        match self.channels.iter_mut().find(|c| c.name_any() == name) {
            Some(channel) if channel.spec.version != pin => {
                channel.spec.version = pin;
                channel.metadata.generation = channel.metadata.generation.map(|g| g + 1);
                channel.metadata.resource_version = rv;
            }
            Some(_) => {}
            None => {
                let meta = self.new_meta(name);
                let analysis = AnalysisSpec { bake_seconds: 1_000_000_000, ..AnalysisSpec::default() };
                let spec =
                    AgentChannelSpec { agent_name: "a".into(), version: pin, delivery: None, analysis: Some(analysis) };
                self.channels.push(AgentChannel {
                    metadata: ObjectMeta { generation: Some(1), ..meta },
                    spec,
                    status: None,
                });
            }
        }
    }

    /// A promotion of `channel` to `target`.
    pub fn create_promotion(&mut self, name: &str, channel: &str, target: i64, expected: Option<i64>) {
        let meta = self.new_meta(name);
        let spec = AgentPromotionSpec {
            channel: channel.into(),
            version: Some(target),
            from_channel: None,
            expected_version: expected,
            allow_failed: false,
            reason: None,
            requested_by: Some(format!("user-{name}")),
        };
        self.promotions.push(AgentPromotion {
            metadata: ObjectMeta { generation: Some(1), ..meta },
            spec,
            status: None,
        });
    }

    /// Every status lost at once, as a backup restored without status leaves them: the
    /// Agent's and every rollback's.
    pub fn lose_status(&mut self) {
        if let Some(agent) = self.agent.as_mut().filter(|a| a.status.is_some()) {
            agent.status = None;
            self.revision += 1;
            agent.metadata.resource_version = Some(self.revision.to_string());
        }
        // Removing a status that is not there writes nothing.
        for i in 0..self.rollbacks.len() {
            if self.rollbacks[i].status.take().is_some() {
                let rv = self.bump();
                self.rollbacks[i].metadata.resource_version = rv;
            }
        }
        for i in 0..self.channels.len() {
            if self.channels[i].status.take().is_some() {
                let rv = self.bump();
                self.channels[i].metadata.resource_version = rv;
            }
        }
        for i in 0..self.promotions.len() {
            if self.promotions[i].status.take().is_some() {
                let rv = self.bump();
                self.promotions[i].metadata.resource_version = rv;
            }
        }
        self.rollback_history.push(self.rollbacks.clone());
    }

    pub fn observe(&self) -> Observed {
        let mut observed =
            Observed::new("ns".into(), "a".into(), self.agent.clone(), self.versions.clone(), self.rollbacks.clone());
        observed.config_map = self.config_map.as_ref().map(|(state, _)| state.clone());
        self.observe_channels(&mut observed);
        observed
    }

    /// The channels, their ConfigMaps and their promotions, as the caches hold them (current).
    fn observe_channels(&self, observed: &mut Observed) {
        let mut channels = self.channels.clone();
        channels.sort_by_key(|c| c.name_any());
        observed.channels = channels
            .into_iter()
            .map(|channel| {
                let config_map = self.channel_config_maps.get(&channel.name_any()).map(|(state, _)| state.clone());
                ChannelObserved {
                    channel,
                    config_map,
                    workloads: Vec::new(),
                    last_restart: None,
                    measurements: Vec::new(),
                    jobs_to_make: Vec::new(),
                }
            })
            .collect();
        observed.promotions = Promotions::new(self.promotions.clone());
    }

    /// What the controller reads after a restart: the Agent and versions live, the rollbacks
    /// from a watch cache that may be `lag` changes behind.
    pub(super) fn observe_lagging(&self, lag: usize) -> Observed {
        let rollbacks = match self.rollback_history.len().checked_sub(1 + lag) {
            Some(i) => self.rollback_history[i].clone(),
            None => self.rollbacks.clone(),
        };
        let mut observed = Observed::new("ns".into(), "a".into(), self.agent.clone(), self.versions.clone(), rollbacks);
        observed.config_map = self.config_map.as_ref().map(|(state, _)| state.clone());
        self.observe_channels(&mut observed);
        observed
    }

    /// Applies one write of a sync that sees `seen` (a status copy is conditional on what it
    /// saw).
    pub(super) fn apply(&mut self, write: &Write, seen: &Observed) -> Result<Applied, Refused> {
        match write {
            Write::CreateVersion(version) => {
                if self.versions.iter().any(|v| v.name_any() == version.name_any()) {
                    return Err(Refused::AlreadyExists);
                }
                if let Some(message) = self.version_policy.and_then(|policy| policy(version)) {
                    return Err(Refused::Denied(crate::plan::RefusedVersion {
                        number: version.spec.version,
                        generation: crate::plan::durable::handled_of(version).map(|h| h.generation),
                        rollback: version.spec.rollback_name.clone(),
                        message,
                    }));
                }
                let meta = self.new_meta(&version.name_any());
                let mut created = (**version).clone();
                created.metadata = ObjectMeta {
                    labels: version.metadata.labels.clone(),
                    annotations: version.metadata.annotations.clone(),
                    owner_references: version.metadata.owner_references.clone(),
                    ..meta
                };
                self.versions.push(created.clone());
                Ok(Applied::VersionCreated(Box::new(created)))
            }
            Write::DeleteVersion { name, uid } => match self.versions.iter().position(|v| &v.name_any() == name) {
                Some(i) if self.versions[i].metadata.uid.as_ref() != Some(uid) => Err(Refused::Conflict),
                // The controller releases its finalizer before it deletes (the modelled versions
                // carry no one else's).
                Some(i) => {
                    self.versions.remove(i);
                    Ok(Applied::VersionDeleted(name.clone()))
                }
                None => Ok(Applied::VersionDeleted(name.clone())),
            },
            Write::PatchAgentStatus(status) => {
                // Ready only once delivered, at every write, not only at the end: a status
                // planned beside the ConfigMap write must land after it.
                let ready = status.is_true(READY);
                let held = self.config_map.as_ref().and_then(|(state, _)| state.held.as_ref().map(|h| h.version));
                assert!(
                    !ready || (held.is_some() && held == status.active_version),
                    "an Agent status says Ready before the ConfigMap holds version {:?} (it holds {held:?})",
                    status.active_version
                );
                let rv = self.bump();
                let agent = self.agent.as_mut().expect("agent exists");
                agent.status = Some((**status).clone());
                agent.metadata.resource_version = rv;
                Ok(Applied::Agent(Box::new(agent.clone())))
            }
            Write::WriteRollback { name, resource_version, record, copy_status, announce } => {
                let rv = self.bump();
                let rollback = self.rollbacks.iter_mut().find(|r| &r.name_any() == name).expect("rollback exists");
                if resource_version.is_some() && resource_version != &rollback.metadata.resource_version {
                    return Err(Refused::StaleRollback(Box::new(rollback.clone())));
                }
                let text = crate::plan::durable::record_text(record).expect("a record serializes");
                rollback.metadata.annotations.get_or_insert_default().insert(ROLLBACK_RECORD_ANNOTATION.into(), text);
                if *copy_status {
                    rollback.status = Some(record.status.clone());
                }
                rollback.metadata.resource_version = rv;
                let updated = rollback.clone();
                self.rollback_history.push(self.rollbacks.clone());
                self.events.extend(announce.iter().cloned());
                Ok(Applied::Rollback(Box::new(updated)))
            }
            Write::CopyRollbackStatus { name } => {
                let rv = self.bump();
                let rollback = self.rollbacks.iter_mut().find(|r| &r.name_any() == name).expect("rollback exists");
                let seen = seen.rollback(name);
                if seen.and_then(|r| r.metadata.resource_version.as_ref())
                    != rollback.metadata.resource_version.as_ref()
                {
                    return Err(Refused::StaleRollback(Box::new(rollback.clone())));
                }
                assert!(crate::plan::durable::record_of(rollback).is_some(), "a copy follows its record");
                // As the controller writes it: the status the sync holds, its record's with the
                // popped snapshot the record leaves out.
                rollback.status = seen.and_then(|r| r.status.clone());
                rollback.metadata.resource_version = rv;
                let updated = rollback.clone();
                self.rollback_history.push(self.rollbacks.clone());
                Ok(Applied::Rollback(Box::new(updated)))
            }
            Write::ReadRollback { name } => Ok(match self.rollbacks.iter().find(|r| &r.name_any() == name) {
                Some(rollback) => Applied::Rollback(Box::new(rollback.clone())),
                None => Applied::RollbackDeleted(name.clone()),
            }),
            Write::ListRollbacks => Ok(Applied::Rollbacks(self.rollbacks.clone())),
            Write::Event(note) => {
                self.events.push(note.clone());
                Ok(Applied::Nothing)
            }
            Write::ApplyConfigMap { recipient, config_map, resource_version, .. } => {
                let existing = match recipient {
                    Recipient::Agent => self.config_map.clone(),
                    Recipient::Channel(name) => self.channel_config_maps.get(name).cloned(),
                };
                match (&existing, resource_version) {
                    (Some(_), None) => return Err(Refused::AlreadyExists),
                    (Some((state, _)), Some(rv)) if state.resource_version.as_ref() != Some(rv) => {
                        return Err(Refused::Conflict);
                    }
                    (None, Some(_)) => return Err(Refused::Conflict),
                    _ => {}
                }
                let meta = self.new_meta(config_map.metadata.name.as_deref().unwrap_or_default());
                let uid = existing.as_ref().and_then(|(s, _)| s.uid.clone()).or(meta.uid.clone());
                let written = ObjectMeta {
                    uid,
                    annotations: config_map.metadata.annotations.clone(),
                    owner_references: config_map.metadata.owner_references.clone(),
                    ..meta
                };
                let json =
                    config_map.data.as_ref().and_then(|d| d.get(crate::api::keys::AGENT_JSON_KEY)).expect("agent.json");
                let snapshot: AgentDefinition = serde_json::from_str(json).expect("agent.json is a definition");
                let state = ConfigMapState::from_meta(&written);
                match recipient {
                    Recipient::Agent => self.config_map = Some((state.clone(), snapshot)),
                    Recipient::Channel(name) => {
                        self.channel_config_maps.insert(name.clone(), (state.clone(), snapshot));
                    }
                }
                Ok(Applied::ConfigMap(recipient.clone(), Some(state)))
            }
            Write::PatchChannelStatus { name, status } => {
                // Ready only once delivered: the channel's ConfigMap holds what it serves.
                let ready = status.is_true(READY);
                let held =
                    self.channel_config_maps.get(name).and_then(|(state, _)| state.held.as_ref().map(|h| h.version));
                assert!(
                    !ready || (held.is_some() && held == status.version),
                    "channel {name} says Ready before its ConfigMap holds version {:?} (it holds {held:?})",
                    status.version
                );
                let rv = self.bump();
                let channel = self.channels.iter_mut().find(|c| &c.name_any() == name).expect("channel exists");
                channel.status = Some((**status).clone());
                channel.metadata.resource_version = rv;
                Ok(Applied::Channel(Box::new(channel.clone())))
            }
            Write::WritePromotion { name, resource_version, record, copy_status, announce } => {
                let rv = self.bump();
                let promotion = self.promotions.iter_mut().find(|p| &p.name_any() == name).expect("promotion exists");
                if resource_version.is_some() && resource_version != &promotion.metadata.resource_version {
                    return Err(Refused::StalePromotion(Box::new(promotion.clone())));
                }
                let text = serde_json::to_string(record).expect("a record serializes");
                promotion.metadata.annotations.get_or_insert_default().insert(ROLLBACK_RECORD_ANNOTATION.into(), text);
                if *copy_status {
                    promotion.status = Some(record.status.clone());
                }
                promotion.metadata.resource_version = rv;
                self.events.extend(announce.iter().cloned());
                Ok(Applied::Promotion(Box::new(promotion.clone())))
            }
            Write::ListPromotions => Ok(Applied::Promotions(self.promotions.clone())),
            Write::ReadChannel { name } => {
                let found = self.channels.iter().find(|c| &c.name_any() == name).cloned().map(Box::new);
                Ok(Applied::ChannelRead(name.clone(), found))
            }
            Write::SetVersionFinalizers { name, resource_version, finalizers } => {
                let rv = self.bump();
                let Some(i) = self.versions.iter().position(|v| &v.name_any() == name) else {
                    return Err(Refused::Conflict);
                };
                let version = &mut self.versions[i];
                if version.metadata.resource_version.as_ref() != Some(resource_version) {
                    return Err(Refused::Conflict);
                }
                version.metadata.finalizers = Some(finalizers.clone());
                version.metadata.resource_version = rv;
                let patched = version.clone();
                // A version deleted by hand goes once its last finalizer does.
                if finalizers.is_empty() && patched.metadata.deletion_timestamp.is_some() {
                    self.versions.remove(i);
                }
                Ok(Applied::VersionPatched(Box::new(patched)))
            }
            Write::KeepPopped { rollback, config_map } => {
                let name = config_map.metadata.name.clone().expect("a name");
                let Some(found) = self.popped.get(&name) else {
                    self.popped.insert(name, (**config_map).clone());
                    return Ok(Applied::PoppedKept(rollback.clone()));
                };
                let owner = config_map.metadata.owner_references.iter().flatten().next().expect("an owner");
                let hash = &config_map.metadata.annotations.as_ref().expect("annotations")
                    [crate::api::keys::SNAPSHOT_HASH_ANNOTATION];
                Ok(match crate::plan::popped::snapshot_of(found, &owner.uid, hash) {
                    Some(_) => Applied::PoppedKept(rollback.clone()),
                    None => Applied::PoppedRefused(rollback.clone(), format!("a ConfigMap {name} exists")),
                })
            }
            Write::ReadPopped { rollback } => {
                let read = self.rollbacks.iter().find(|r| &r.name_any() == rollback);
                let uid = read.and_then(|r| r.metadata.uid.clone()).unwrap_or_default();
                let hash = read.and_then(|r| crate::plan::durable::record_of(r)?.status.popped_snapshot_hash);
                let found = self.popped.get(&crate::plan::popped::config_map_name(rollback));
                let snapshot = found.and_then(|c| crate::plan::popped::snapshot_of(c, &uid, &hash.unwrap_or_default()));
                Ok(Applied::PoppedRead(rollback.clone(), snapshot))
            }
            Write::JudgeVersion { .. } => unreachable!("the modelled channels bake longer than any test"),
            Write::RollWorkload { .. } => unreachable!("the modelled Agent and channels list no workloads"),
            Write::CreateRollback(_) | Write::CreateJob { .. } => {
                unreachable!("the modelled channels judge no version")
            }
        }
    }

    /// Runs the controller loop until it has nothing to do. `crash` is asked before each write
    /// whether the controller dies there; it then restarts and observes again.
    pub fn converge(&mut self, crash: &mut dyn FnMut() -> bool) {
        self.converge_with(Faults { crash, lag: &mut || 0, lose_status: &mut || false });
    }

    /// The controller loop under `faults`: the operator's own loop ([`driver::work`]) with
    /// this model as its port; after a crash it restarts on a rollback cache up to `lag()`
    /// changes stale, and a status loss happens between two writes while it goes on with
    /// what it had read.
    pub fn converge_with(&mut self, faults: Faults<'_>) {
        let mut port = Model { cluster: self, faults, observed_again: false };
        let mut observed = port.restart();
        for _ in 0..10_000 {
            match block_on(driver::work(&mut port, &mut observed, 10_000)) {
                Ok(Worked::Settled) => {
                    // Done only if the cache was current: a rollback it did not show yet
                    // triggers a sync of its own once the watch delivers it.
                    let fresh = port.cluster.observe();
                    let now = port.now();
                    if decide(&fresh, &now).is_empty() {
                        return;
                    }
                    observed = fresh;
                }
                Ok(Worked::MoreToDo) => observed = port.cluster.observe(),
                Ok(Worked::NotSettled) => break,
                Err(Crashed) => observed = port.restart(),
            }
        }
        panic!("the planner did not converge");
    }

    /// One sync as the controller runs it, from `observed` (read or kept): the operator's own
    /// loop, with this model as its port. Returns the state it ended with, and whether it had
    /// to observe again.
    pub fn sync_from(&mut self, mut observed: Observed) -> (Observed, bool) {
        let faults = Faults { crash: &mut || false, lag: &mut || 0, lose_status: &mut || false };
        let mut port = Model { cluster: self, faults, observed_again: false };
        match block_on(driver::work(&mut port, &mut observed, 10_000)) {
            Ok(Worked::Settled) => (observed, port.observed_again),
            other => panic!("the sync did not settle: {other:?}"),
        }
    }

    /// Someone deletes a version by hand: it waits on its finalizers, if it has any.
    pub fn delete_by_hand(&mut self, number: i64) {
        let rv = self.bump();
        let clock = self.clock;
        let Some(i) = self.versions.iter().position(|v| v.spec.version == number) else { return };
        if self.versions[i].finalizers().is_empty() {
            self.versions.remove(i);
        } else {
            self.versions[i].metadata.deletion_timestamp = Some(time(clock));
            self.versions[i].metadata.resource_version = rv;
        }
    }

    pub fn history(&self) -> Vec<(i64, AgentDefinition)> {
        let mut h: Vec<_> = self.versions.iter().map(|v| (v.spec.version, v.spec.snapshot.clone())).collect();
        h.sort_by_key(|(n, _)| *n);
        h
    }

    /// What status loss must not change: every version (its uid too: none was made again),
    /// every rollback's status, and the Agent's status but for when conditions changed.
    pub(super) fn durable_view(&self) -> DurableView {
        let versions = self
            .versions
            .iter()
            .map(|v| (v.metadata.uid.clone().unwrap_or_default(), v.spec.version, v.spec.snapshot_hash.clone()))
            .collect();
        let rollbacks = self.rollbacks.iter().map(|r| r.status.clone()).collect();
        let agent = self.agent.as_ref().and_then(|a| a.status.clone()).map(|mut status| {
            for c in &mut status.conditions {
                c.last_transition_time = time(0);
            }
            status
        });
        let channels = self
            .channels
            .iter()
            .map(|c| c.status.as_ref().map(|s| (s.version, s.desired_version, s.override_.clone())))
            .collect();
        let promotions = self.promotions.iter().map(|p| p.status.clone()).collect();
        DurableView { versions, rollbacks, agent, channels, promotions }
    }

    /// What channel `name` serves, as its status says, and the override that holds it.
    pub fn channel_serving(&self, name: &str) -> (Option<i64>, Option<ChannelOverride>) {
        let status: Option<&AgentChannelStatus> =
            self.channels.iter().find(|c| c.name_any() == name).and_then(|c| c.status.as_ref());
        (status.and_then(|s| s.version), status.and_then(|s| s.override_.clone()))
    }

    /// How a promotion ended, as a rollback's outcome says it.
    pub fn promotion_outcome(&self, name: &str) -> Outcome {
        let status: AgentPromotionStatus =
            self.promotions.iter().find(|p| p.name_any() == name).and_then(|p| p.status.clone()).unwrap_or_default();
        match status.phase {
            Some(RollbackPhase::Succeeded) => Outcome::Succeeded(status.version.unwrap_or_default()),
            Some(RollbackPhase::Failed) => Outcome::Failed(status.reason.unwrap_or_default()),
            other => Outcome::NotDone(other),
        }
    }

    pub fn outcome(&self, name: &str) -> Outcome {
        let status =
            self.rollbacks.iter().find(|r| r.name_any() == name).and_then(|r| r.status.clone()).unwrap_or_default();
        match status.phase {
            Some(RollbackPhase::Succeeded) => Outcome::Succeeded(status.active_version.unwrap_or_default()),
            Some(RollbackPhase::Failed) => Outcome::Failed(status.reason.unwrap_or_default()),
            other => Outcome::NotDone(other),
        }
    }
}

/// What a channel's status says it serves, wants and is held on.
type ChannelView = (Option<i64>, Option<i64>, Option<ChannelOverride>);

/// Versions (uid, number, snapshot hash), rollback statuses, the Agent's status with its
/// conditions' transition times left out, what each channel serves and what holds it there, and
/// promotion statuses.
#[derive(Debug, PartialEq)]
pub(super) struct DurableView {
    versions: Vec<(String, i64, String)>,
    rollbacks: Vec<Option<AgentRollbackStatus>>,
    agent: Option<AgentStatus>,
    channels: Vec<Option<ChannelView>>,
    promotions: Vec<Option<AgentPromotionStatus>>,
}

/// What may go wrong while the controller works; each is asked before every step.
pub struct Faults<'a> {
    /// The controller dies here; it restarts and observes again.
    pub crash: &'a mut dyn FnMut() -> bool,
    /// How many changes behind the rollback cache is when the controller observes.
    pub lag: &'a mut dyn FnMut() -> usize,
    /// Every status is lost here.
    pub lose_status: &'a mut dyn FnMut() -> bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded(i64),
    Failed(String),
    NotDone(Option<RollbackPhase>),
}

/// The controller died before a write.
#[derive(Debug)]
pub struct Crashed;

/// The sync loop's port in the property tests: the model, which may crash before any write,
/// lose every status between two, and serve a stale rollback cache after a restart.
struct Model<'c, 'f> {
    cluster: &'c mut Cluster,
    faults: Faults<'f>,
    observed_again: bool,
}

impl Model<'_, '_> {
    /// What the controller reads after a restart.
    fn restart(&mut self) -> Observed {
        let lag = (self.faults.lag)();
        self.cluster.observe_lagging(lag)
    }
}

impl Port for Model<'_, '_> {
    type Error = Crashed;

    /// Writes made together may land in any order: the model takes them in turn, backwards
    /// every other tick, each attempted as the API server attempts them all.
    async fn apply(&mut self, observed: &Observed, step: Step) -> Result<Vec<Written>, Crashed> {
        let mut writes = match step {
            Step::Together(writes) => writes,
            Step::One(write) => vec![write],
        };
        if self.cluster.clock % 2 == 1 {
            writes.reverse();
        }
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in &writes {
            if (self.faults.lose_status)() {
                self.cluster.lose_status();
            }
            if (self.faults.crash)() {
                return Err(Crashed);
            }
            outcomes.push(match self.cluster.apply(write, observed) {
                Ok(applied) => Written::Done(applied),
                Err(Refused::StaleRollback(fresh)) => Written::Stale(Some(Applied::Rollback(fresh))),
                Err(Refused::StalePromotion(fresh)) => Written::Stale(Some(Applied::Promotion(fresh))),
                Err(Refused::Denied(refused)) => Written::Stale(Some(Applied::VersionRefused(refused))),
                Err(Refused::AlreadyExists | Refused::Conflict) => Written::Stale(None),
            });
        }
        Ok(outcomes)
    }

    async fn observe(&mut self) -> Result<Observed, Crashed> {
        self.observed_again = true;
        Ok(self.restart())
    }

    fn now(&mut self) -> Time {
        self.cluster.clock += 1;
        time(self.cluster.clock)
    }
}

//! Test-only model of the API server for one Agent, and property tests of the planner against
//! an independent reference model of the contract's rules (docs/reference.md).
//!
//! The model answers steps the way the API server does where it matters: names are unique
//! (AlreadyExists), deletes and rollback status writes are conditional (uid and
//! resourceVersion), resourceVersions grow. The driver mirrors the controller: decide, apply
//! the unit step by step folding answers in, re-observe after an error or a crash.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use proptest::prelude::*;

use super::delivery::ConfigMapState;
use super::sync::decide;
use super::{Applied, EventNote, Observed, Step};
use crate::api::keys::ROLLBACK_RECORD_ANNOTATION;
use crate::api::{
    Agent, AgentDefinition, AgentRollback, AgentRollbackSpec, AgentRollbackStatus, AgentSpec, AgentStatus,
    AgentVersion, RollbackPhase, RollbackStrategy,
};

#[derive(Debug)]
enum Refused {
    AlreadyExists,
    Conflict,
    /// A rollback status write lost its compare-and-swap; carries the fresh rollback, which
    /// the controller reads back and folds in.
    StaleRollback(Box<AgentRollback>),
    /// An admission policy refused a version's create.
    Denied(super::RefusedVersion),
}

/// One Agent's corner of an API server.
pub struct Cluster {
    pub agent: Option<Agent>,
    pub versions: Vec<AgentVersion>,
    pub rollbacks: Vec<AgentRollback>,
    pub events: Vec<EventNote>,
    /// The delivery ConfigMap, and the snapshot its `agent.json` holds.
    pub config_map: Option<(ConfigMapState, AgentDefinition)>,
    /// Every state the rollbacks went through: a watch cache may serve any recent one.
    rollback_history: Vec<Vec<AgentRollback>>,
    /// An admission policy on versions: refuses those it returns a message for.
    pub version_policy: Option<fn(&AgentVersion) -> Option<String>>,
    revision: u64,
    uids: u64,
    clock: i64,
}

fn time(seconds: i64) -> Time {
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
            rollback_history: Vec::new(),
            version_policy: None,
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
        let meta = self.new_meta(name);
        self.rollbacks.push(AgentRollback {
            metadata: ObjectMeta { generation: Some(1), ..meta },
            spec: AgentRollbackSpec {
                agent_name: "a".into(),
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
        self.rollback_history.push(self.rollbacks.clone());
    }

    pub fn observe(&self) -> Observed {
        let mut observed =
            Observed::new("ns".into(), "a".into(), self.agent.clone(), self.versions.clone(), self.rollbacks.clone());
        observed.config_map = self.config_map.as_ref().map(|(state, _)| state.clone());
        observed
    }

    /// What the controller reads after a restart: the Agent and versions live, the rollbacks
    /// from a watch cache that may be `lag` changes behind.
    fn observe_lagging(&self, lag: usize) -> Observed {
        let rollbacks = match self.rollback_history.len().checked_sub(1 + lag) {
            Some(i) => self.rollback_history[i].clone(),
            None => self.rollbacks.clone(),
        };
        let mut observed = Observed::new("ns".into(), "a".into(), self.agent.clone(), self.versions.clone(), rollbacks);
        observed.config_map = self.config_map.as_ref().map(|(state, _)| state.clone());
        observed
    }

    /// Applies one step of a sync that sees `seen` (a status copy is conditional on what it saw).
    fn apply(&mut self, step: &Step, seen: &Observed) -> Result<Applied, Refused> {
        match step {
            Step::CreateVersion(version) => {
                if self.versions.iter().any(|v| v.name_any() == version.name_any()) {
                    return Err(Refused::AlreadyExists);
                }
                if let Some(message) = self.version_policy.and_then(|policy| policy(version)) {
                    return Err(Refused::Denied(super::RefusedVersion {
                        number: version.spec.version,
                        generation: super::durable::handled_of(version).map(|h| h.generation),
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
            Step::DeleteVersion { name, uid } => match self.versions.iter().position(|v| &v.name_any() == name) {
                Some(i) if self.versions[i].metadata.uid.as_ref() != Some(uid) => Err(Refused::Conflict),
                Some(i) => {
                    self.versions.remove(i);
                    Ok(Applied::VersionDeleted(name.clone()))
                }
                None => Ok(Applied::VersionDeleted(name.clone())),
            },
            Step::PatchAgentStatus(status) => {
                // Ready only once delivered, at every write, not only at the end: a status
                // planned beside the ConfigMap write must land after it.
                let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
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
            Step::WriteRollback { name, resource_version, record, copy_status, announce } => {
                let rv = self.bump();
                let rollback = self.rollbacks.iter_mut().find(|r| &r.name_any() == name).expect("rollback exists");
                if resource_version.is_some() && resource_version != &rollback.metadata.resource_version {
                    return Err(Refused::StaleRollback(Box::new(rollback.clone())));
                }
                let text = serde_json::to_string(record).expect("a record serializes");
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
            Step::CopyRollbackStatus { name } => {
                let rv = self.bump();
                let rollback = self.rollbacks.iter_mut().find(|r| &r.name_any() == name).expect("rollback exists");
                let seen = seen.rollback(name).and_then(|r| r.metadata.resource_version.clone());
                if seen != rollback.metadata.resource_version {
                    return Err(Refused::StaleRollback(Box::new(rollback.clone())));
                }
                let record = super::durable::record_of(rollback).expect("a copy follows its record");
                rollback.status = Some(record.status);
                rollback.metadata.resource_version = rv;
                let updated = rollback.clone();
                self.rollback_history.push(self.rollbacks.clone());
                Ok(Applied::Rollback(Box::new(updated)))
            }
            Step::ReadRollback { name } => Ok(match self.rollbacks.iter().find(|r| &r.name_any() == name) {
                Some(rollback) => Applied::Rollback(Box::new(rollback.clone())),
                None => Applied::RollbackDeleted(name.clone()),
            }),
            Step::ListRollbacks => Ok(Applied::Rollbacks(self.rollbacks.clone())),
            Step::Event(note) => {
                self.events.push(note.clone());
                Ok(Applied::Nothing)
            }
            Step::ApplyConfigMap { config_map, resource_version } => {
                match (&self.config_map, resource_version) {
                    (Some(_), None) => return Err(Refused::AlreadyExists),
                    (Some((state, _)), Some(rv)) if state.resource_version.as_ref() != Some(rv) => {
                        return Err(Refused::Conflict);
                    }
                    (None, Some(_)) => return Err(Refused::Conflict),
                    _ => {}
                }
                let meta = self.new_meta(config_map.metadata.name.as_deref().unwrap_or_default());
                let uid = self.config_map.as_ref().and_then(|(s, _)| s.uid.clone()).or(meta.uid.clone());
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
                self.config_map = Some((state.clone(), snapshot));
                Ok(Applied::ConfigMap(Some(state)))
            }
            Step::RollWorkload { .. } => unreachable!("the modelled Agent lists no workloads"),
            Step::Together(_) => unreachable!("converge takes writes made together in turn"),
        }
    }

    /// Runs the controller loop until it has nothing to do. `crash` is asked before each step
    /// whether the controller dies there; it then restarts and observes with a rollback cache
    /// up to `lag()` changes stale.
    pub fn converge(&mut self, crash: &mut dyn FnMut() -> bool) {
        self.converge_with(Faults { crash, lag: &mut || 0, lose_status: &mut || false });
    }

    /// The controller loop under `faults`: a status loss happens between two steps, and the
    /// controller goes on with what it had read.
    pub fn converge_with(&mut self, faults: Faults<'_>) {
        let Faults { crash, lag, lose_status } = faults;
        let mut observed = self.observe_lagging(lag());
        for _ in 0..10_000 {
            self.clock += 1;
            let steps = decide(&observed, &time(self.clock));
            if steps.is_empty() {
                // Done only if the cache was current: a rollback it did not show yet triggers a
                // sync of its own once the watch delivers it.
                let fresh = self.observe();
                if decide(&fresh, &time(self.clock)).is_empty() {
                    return;
                }
                observed = fresh;
                continue;
            }
            // Writes made together may land in any order: the model takes them in turn,
            // backwards every other tick.
            let steps: Vec<Step> = steps
                .into_iter()
                .flat_map(|step| match step {
                    Step::Together(mut writes) => {
                        if self.clock % 2 == 1 {
                            writes.reverse();
                        }
                        writes
                    }
                    step => vec![step],
                })
                .collect();
            for step in &steps {
                if lose_status() {
                    self.lose_status();
                }
                if crash() {
                    observed = self.observe_lagging(lag());
                    break;
                }
                match self.apply(step, &observed) {
                    Ok(applied) => observed.fold(applied),
                    Err(Refused::StaleRollback(fresh)) => {
                        observed.fold(Applied::Rollback(fresh));
                        break;
                    }
                    Err(Refused::Denied(refused)) => {
                        observed.fold(Applied::VersionRefused(refused));
                        break;
                    }
                    Err(Refused::AlreadyExists | Refused::Conflict) => {
                        observed = self.observe_lagging(lag());
                        break;
                    }
                }
            }
        }
        panic!("the planner did not converge");
    }

    /// One sync as the controller runs it, from `observed` (read or kept): decide and apply
    /// until there is nothing to do, observing again where a write meets a newer state. Returns
    /// the state it ended with, and whether it had to observe again.
    pub fn sync_from(&mut self, mut observed: Observed) -> (Observed, bool) {
        let mut observed_again = false;
        for _ in 0..10_000 {
            self.clock += 1;
            let steps = decide(&observed, &time(self.clock));
            if steps.is_empty() {
                return (observed, observed_again);
            }
            let steps = steps.into_iter().flat_map(|step| match step {
                Step::Together(writes) => writes,
                step => vec![step],
            });
            for step in steps {
                match self.apply(&step, &observed) {
                    Ok(applied) => observed.fold(applied),
                    Err(Refused::StaleRollback(fresh)) => {
                        observed.fold(Applied::Rollback(fresh));
                        break;
                    }
                    Err(Refused::Denied(refused)) => {
                        observed.fold(Applied::VersionRefused(refused));
                        break;
                    }
                    Err(Refused::AlreadyExists | Refused::Conflict) => {
                        (observed, observed_again) = (self.observe(), true);
                        break;
                    }
                }
            }
        }
        panic!("the sync did not settle");
    }

    /// Someone deletes a version by hand.
    pub fn delete_by_hand(&mut self, number: i64) {
        self.versions.retain(|v| v.spec.version != number);
    }

    pub fn history(&self) -> Vec<(i64, AgentDefinition)> {
        let mut h: Vec<_> = self.versions.iter().map(|v| (v.spec.version, v.spec.snapshot.clone())).collect();
        h.sort_by_key(|(n, _)| *n);
        h
    }

    /// What status loss must not change: every version (its uid too: none was made again),
    /// every rollback's status, and the Agent's status but for when conditions changed.
    fn durable_view(&self) -> DurableView {
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
        DurableView { versions, rollbacks, agent }
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

/// Versions (uid, number, snapshot hash), rollback statuses, and the Agent's status with its
/// conditions' transition times left out.
#[derive(Debug, PartialEq)]
struct DurableView {
    versions: Vec<(String, i64, String)>,
    rollbacks: Vec<Option<AgentRollbackStatus>>,
    agent: Option<AgentStatus>,
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

/// The contract's rules (docs/reference.md, behaviours), written as plainly as possible and
/// independently of the planner.
#[derive(Clone, Debug)]
pub(crate) struct Reference {
    spec: AgentDefinition,
    limit: i32,
    versions: BTreeMap<i64, AgentDefinition>,
}

impl Reference {
    pub(crate) fn new(spec: AgentDefinition, limit: i32) -> Self {
        let mut r = Self { spec: spec.clone(), limit, versions: BTreeMap::new() };
        r.versions.insert(1, spec);
        r
    }

    pub(crate) fn active(&self) -> i64 {
        *self.versions.keys().max().expect("at least one version")
    }

    fn prune(&mut self) {
        while self.versions.len() > self.limit.max(1) as usize {
            let oldest = *self.versions.keys().min().expect("non-empty");
            self.versions.remove(&oldest);
        }
    }

    pub(crate) fn edit(&mut self, definition: Option<AgentDefinition>, limit: Option<i32>) {
        if let Some(l) = limit {
            self.limit = l;
        }
        if let Some(d) = definition
            && d != self.spec
        {
            self.spec = d.clone();
            if self.versions[&self.active()] != d {
                self.versions.insert(self.active() + 1, d);
            }
        }
        self.prune();
    }

    pub(crate) fn rollback(&mut self, op: &Op) -> Outcome {
        let active = self.active();
        let failed = |r: &str| Outcome::Failed(r.to_string());
        let (strategy, target, expected) = match op {
            Op::Rollback { strategy, target, expected } => (*strategy, *target, *expected),
            Op::Edit { .. } => unreachable!("not a rollback"),
        };
        if expected.is_some_and(|e| e != active) {
            return failed("ActiveVersionChanged");
        }
        let restore_from = match strategy {
            RollbackStrategy::Restore => {
                let t = target.expect("Restore has a target");
                if t == active {
                    return failed("AlreadyActive");
                }
                if !self.versions.contains_key(&t) {
                    return failed("VersionNotFound");
                }
                t
            }
            RollbackStrategy::Previous => match self.versions.keys().filter(|n| **n < active).max() {
                Some(t) => *t,
                None => return failed("NoPreviousVersion"),
            },
            RollbackStrategy::Pop => {
                if self.versions.len() < 2 {
                    return failed("AtFirstVersion");
                }
                self.versions.remove(&active);
                return Outcome::Succeeded(self.active());
            }
        };
        let copy = self.versions[&restore_from].clone();
        self.versions.insert(active + 1, copy);
        self.prune();
        Outcome::Succeeded(active + 1)
    }

    /// A version deleted by hand (never the active one: see the caller).
    pub(crate) fn delete_by_hand(&mut self, number: i64) {
        assert_ne!(number, self.active(), "the model deletes no active version by hand");
        self.versions.remove(&number);
    }

    pub(crate) fn history(&self) -> Vec<(i64, AgentDefinition)> {
        self.versions.iter().map(|(n, d)| (*n, d.clone())).collect()
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Edit { definition: Option<u8>, limit: Option<i32> },
    Rollback { strategy: RollbackStrategy, target: Option<i64>, expected: Option<i64> },
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::option::of(0u8..6), proptest::option::weighted(0.2, 1i32..6)).prop_map(|(definition, limit)| Op::Edit { definition, limit }),
        2 => (1i64..12, proptest::option::weighted(0.2, 1i64..12)).prop_map(|(t, expected)| Op::Rollback { strategy: RollbackStrategy::Restore, target: Some(t), expected }),
        2 => proptest::option::weighted(0.2, 1i64..12).prop_map(|expected| Op::Rollback { strategy: RollbackStrategy::Previous, target: None, expected }),
        2 => proptest::option::weighted(0.2, 1i64..12).prop_map(|expected| Op::Rollback { strategy: RollbackStrategy::Pop, target: None, expected }),
    ]
}

pub(crate) fn submit(cluster: &mut Cluster, op: &Op, name: &str) {
    match op {
        Op::Edit { definition, limit } => cluster.edit(definition.map(content), *limit),
        Op::Rollback { strategy, target, expected } => cluster.create_rollback(name, *strategy, *target, *expected),
    }
}

pub(crate) fn check_invariants(cluster: &Cluster) -> Result<(), TestCaseError> {
    prop_assert!(!cluster.versions.is_empty(), "an Agent always has a version");
    let newest = cluster.versions.iter().map(|v| v.spec.version).max();
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).unwrap_or_default();
    prop_assert_eq!(status.active_version, newest, "the active version is the newest one");
    prop_assert_eq!(status.version_count, Some(cluster.versions.len() as i64));
    let digest = super::hash::versions_digest(cluster.versions.iter().map(|v| &v.spec));
    prop_assert_eq!(status.versions_digest, Some(digest), "the status digest describes the versions that exist");
    let limit = cluster.agent.as_ref().map_or(1, |a| a.spec.revision_history_limit);
    prop_assert!(cluster.versions.len() <= limit.max(1) as usize);
    for v in &cluster.versions {
        prop_assert_eq!(&v.spec.snapshot_hash, &super::hash::snapshot_hash(&v.spec.snapshot));
        prop_assert_eq!(v.name_any(), super::version_name("a", v.spec.version));
    }
    // Delivered: the ConfigMap holds the active version's snapshot, and the status says so.
    let active = cluster.versions.iter().max_by_key(|v| v.spec.version).expect("a version");
    let (state, snapshot) = cluster.config_map.clone().expect("the delivery ConfigMap exists");
    prop_assert_eq!(state.held.map(|h| h.version), Some(active.spec.version));
    prop_assert_eq!(&snapshot, &active.spec.snapshot);
    prop_assert_eq!(status.delivery.and_then(|d| d.version), Some(active.spec.version));
    let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    prop_assert!(ready, "Ready once delivered: {:?}", status.conditions);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Each operation applied alone: the cluster matches the reference after every one, and a
    /// Restore adds exactly one version equal to its target, a Pop removes exactly the latest.
    #[test]
    fn planner_matches_the_reference_one_operation_at_a_time(ops in proptest::collection::vec(op(), 1..25), limit in 1i32..6) {
        let mut cluster = Cluster::new(content(0), limit);
        let mut reference = Reference::new(content(0), limit);
        cluster.converge(&mut || false);
        for (i, op) in ops.iter().enumerate() {
            let name = format!("rb-{i}");
            let before = cluster.history();
            submit(&mut cluster, op, &name);
            cluster.converge(&mut || false);
            check_invariants(&cluster)?;
            match op {
                Op::Edit { definition, limit } => reference.edit(definition.map(content), *limit),
                Op::Rollback { strategy, .. } => {
                    let want = reference.rollback(op);
                    prop_assert_eq!(cluster.outcome(&name), want.clone(), "rollback {} {:?}", i, op);
                    let after = cluster.history();
                    if let Outcome::Succeeded(active) = want {
                        let (last_before, last_after) = (before.last().expect("non-empty"), after.last().expect("non-empty"));
                        match strategy {
                            RollbackStrategy::Pop => {
                                prop_assert_eq!(after.len() + 1, before.len());
                                prop_assert_eq!(&before[..before.len() - 1], &after[..]);
                            }
                            _ => {
                                prop_assert_eq!(last_after.0, last_before.0 + 1);
                                prop_assert_eq!(active, last_after.0);
                                let target = cluster.rollbacks.iter().find(|r| r.name_any() == name).and_then(|r| r.status.as_ref()?.restored_version);
                                let source = before.iter().find(|(n, _)| Some(*n) == target).map(|(_, d)| d);
                                prop_assert_eq!(Some(&last_after.1), source, "the new version copies the target");
                                prop_assert!(target.is_some(), "a succeeded restore records its target");
                            }
                        }
                    } else {
                        prop_assert_eq!(before, after, "a failed rollback changes nothing");
                    }
                }
            }
            prop_assert_eq!(cluster.history(), reference.history());
        }
    }

    /// Status is a cache: after any history of edits and rollbacks, losing every status and
    /// converging again publishes nothing, deletes nothing, runs no rollback again, sends no
    /// Event, and writes back the same statuses.
    #[test]
    fn losing_every_status_changes_nothing_and_rebuilds_the_same_statuses(
        ops in proptest::collection::vec(op(), 1..25),
        limit in 1i32..6,
        lose_after in proptest::collection::vec(any::<bool>(), 25),
    ) {
        let mut cluster = Cluster::new(content(0), limit);
        cluster.converge(&mut || false);
        for (i, op) in ops.iter().enumerate() {
            submit(&mut cluster, op, &format!("rb-{i}"));
            cluster.converge(&mut || false);
            if !lose_after[i] {
                continue;
            }
            let before = cluster.durable_view();
            let events = cluster.events.len();
            cluster.lose_status();
            cluster.converge(&mut || false);
            prop_assert_eq!(cluster.durable_view(), before, "after {:?}", op);
            prop_assert_eq!(cluster.events.len(), events, "Events sent again: {:?}", &cluster.events[events..]);
        }
    }

    /// Rollbacks created at once run one at a time in creation order: the end state equals the
    /// reference applying them one by one, even with the controller crashing at random steps
    /// and restarting on a rollback cache several changes stale, and every status lost a few
    /// times at random steps.
    #[test]
    fn queued_rollbacks_with_crashes_end_as_if_applied_one_by_one(
        setup in proptest::collection::vec(0u8..6, 1..8),
        batch in proptest::collection::vec(op().prop_filter("rollbacks only", |o| matches!(o, Op::Rollback { .. })), 1..20),
        crash_rate in 0u32..40,
        losses in 0u32..4,
        max_lag in 0usize..6,
        seed in any::<u64>(),
        limit in 2i32..8,
    ) {
        let mut cluster = Cluster::new(content(0), limit);
        let mut reference = Reference::new(content(0), limit);
        cluster.converge(&mut || false);
        for d in setup {
            cluster.edit(Some(content(d)), None);
            cluster.converge(&mut || false);
            reference.edit(Some(content(d)), None);
        }
        for (i, op) in batch.iter().enumerate() {
            submit(&mut cluster, op, &format!("rb-{i:02}"));
        }
        let rng = std::cell::Cell::new(seed | 1);
        let next = || {
            let mut x = rng.get();
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            rng.set(x);
            x
        };
        let mut crash = || (next() % 100) < u64::from(crash_rate);
        let mut lag = || (next() % (max_lag as u64 + 1)) as usize;
        // Status loss is rare: up to `losses` times, at random steps. A loss every few steps
        // would undo the status rewrites faster than they can be made.
        let losses_left = std::cell::Cell::new(losses);
        let mut lose_status = || {
            let lose = losses_left.get() > 0 && next() % 20 == 0;
            if lose {
                losses_left.set(losses_left.get() - 1);
            }
            lose
        };
        cluster.converge_with(Faults { crash: &mut crash, lag: &mut lag, lose_status: &mut lose_status });
        check_invariants(&cluster)?;
        for (i, op) in batch.iter().enumerate() {
            let want = reference.rollback(op);
            prop_assert_eq!(cluster.outcome(&format!("rb-{i:02}")), want, "rollback {} {:?}", i, op);
        }
        prop_assert_eq!(cluster.history(), reference.history());
        // Each succeeded Restore/Previous made exactly one version, named after it and
        // published by whoever asked for it.
        for r in &cluster.rollbacks {
            let made: Vec<_> =
                cluster.versions.iter().filter(|v| v.spec.rollback_name.as_deref() == Some(r.name_any().as_str())).collect();
            prop_assert!(made.len() <= 1);
            for version in made {
                prop_assert_eq!(&version.spec.published_by, &r.spec.requested_by);
            }
        }
    }
}

#[test]
fn a_new_agent_gets_version_one_and_a_ready_status() {
    let mut cluster = Cluster::new(content(1), 10);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history(), vec![(1, content(1))]);
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status written");
    assert_eq!((status.active_version, status.version_count, status.observed_generation), (Some(1), Some(1), Some(1)));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!(ready.status, "True");
}

#[test]
fn changing_only_the_history_limit_publishes_nothing() {
    let mut cluster = Cluster::new(content(1), 10);
    cluster.converge(&mut || false);
    cluster.edit(None, Some(3));
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().len(), 1);
    assert_eq!(cluster.agent.as_ref().and_then(|a| a.status.as_ref()?.observed_generation), Some(2));
}

/// An Agent with versions 1 and 2 (contents 1 and 2), settled.
fn two_versions() -> Cluster {
    let mut cluster = Cluster::new(content(1), 10);
    cluster.converge(&mut || false);
    cluster.edit(Some(content(2)), None);
    cluster.converge(&mut || false);
    cluster
}

#[test]
fn rollback_leaves_the_spec_alone_and_a_later_edit_publishes() {
    let mut cluster = two_versions();
    cluster.create_rollback("rb", RollbackStrategy::Previous, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("rb"), Outcome::Succeeded(3));
    assert_eq!(cluster.agent.as_ref().map(|a| a.spec.definition.clone()), Some(content(2)));
    assert_eq!(cluster.history(), vec![(1, content(1)), (2, content(2)), (3, content(1))]);
    cluster.edit(Some(content(4)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().last(), Some(&(4, content(4))));
}

#[test]
fn two_previous_in_a_row_flip_between_two_states() {
    let mut cluster = two_versions();
    cluster.create_rollback("p1", RollbackStrategy::Previous, None, None);
    cluster.create_rollback("p2", RollbackStrategy::Previous, None, None);
    cluster.converge(&mut || false);
    let contents: Vec<_> = cluster.history().into_iter().map(|(_, d)| d).collect();
    assert_eq!(contents, vec![content(1), content(2), content(1), content(2)]);
}

#[test]
fn pop_keeps_the_deleted_snapshot_in_status() {
    let mut cluster = two_versions();
    cluster.create_rollback("pop", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    let status = cluster.rollbacks[0].status.clone().expect("status");
    assert_eq!(status.popped_version, Some(2));
    assert_eq!(status.popped_snapshot, Some(content(2)));
    assert_eq!(status.popped_snapshot_hash, Some(super::hash::snapshot_hash(&content(2))));
    assert_eq!((status.from_version, status.active_version), (Some(2), Some(1)));
    assert_eq!(status.message.as_deref(), Some("Version 2 was deleted. Version 1 is now active."));
}

#[test]
fn a_rollback_of_a_missing_agent_fails_with_agent_not_found() {
    let mut cluster = Cluster::new(content(1), 10);
    cluster.agent = None;
    cluster.create_rollback("rb", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("rb"), Outcome::Failed("AgentNotFound".into()));
}

#[test]
fn restore_message_names_the_target_and_the_new_version() {
    let mut cluster = two_versions();
    cluster.create_rollback("rb", RollbackStrategy::Restore, Some(1), None);
    cluster.converge(&mut || false);
    let status = cluster.rollbacks[0].status.clone().expect("status");
    assert_eq!(status.message.as_deref(), Some("Agent rolled back to version 1. New version 3 is now active."));
    assert_eq!((status.restored_version, status.new_version, status.from_version), (Some(1), Some(3), Some(2)));
    let made = cluster.versions.iter().find(|v| v.spec.version == 3).expect("v3");
    assert_eq!((made.spec.rollback_from_version, made.spec.rollback_name.as_deref()), (Some(1), Some("rb")));
    assert!(cluster.events.iter().any(|e| e.reason == "RollbackSucceeded"));
}

/// A definition over the size bound: a step holding `bytes` bytes.
fn large(bytes: usize) -> AgentDefinition {
    let step = serde_json::Map::from_iter([("prompt".to_string(), serde_json::Value::from("x".repeat(bytes)))]);
    AgentDefinition { steps: Some(vec![step]), ..content(1) }
}

#[test]
fn a_definition_over_the_bound_is_not_published_and_the_agent_says_why() {
    let mut cluster = two_versions();
    cluster.edit(Some(large(super::publish::MAX_DEFINITION_BYTES)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().len(), 2, "nothing published");
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    assert_eq!((status.observed_generation, status.active_version), (Some(3), Some(2)));
    let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled").expect("Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "DefinitionTooLarge"));
    assert!(stalled.message.contains(&super::publish::MAX_DEFINITION_BYTES.to_string()), "{}", stalled.message);
    assert_eq!(cluster.events.iter().filter(|e| e.reason == "DefinitionTooLarge").count(), 1);

    // Rollbacks still run; a definition back under the bound is published.
    cluster.create_rollback("rb", RollbackStrategy::Previous, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("rb"), Outcome::Succeeded(3));
    cluster.edit(Some(content(7)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().last(), Some(&(4, content(7))));
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    assert!(status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
}

/// A rollback created with a record of the client's own (where no admission policy refuses
/// one): Running, with the plan `status` says.
fn forge(
    cluster: &mut Cluster,
    name: &str,
    strategy: RollbackStrategy,
    target: Option<i64>,
    status: AgentRollbackStatus,
) {
    cluster.create_rollback(name, strategy, target, None);
    let record = super::durable::RollbackRecord {
        status: AgentRollbackStatus { phase: Some(RollbackPhase::Running), ..status },
        agent: None,
    };
    let text = serde_json::to_string(&record).expect("a record");
    let forged = cluster.rollbacks.last_mut().expect("the rollback");
    forged.metadata.annotations.get_or_insert_default().insert(ROLLBACK_RECORD_ANNOTATION.into(), text);
    // As created: the watch cache never saw it without its record.
    cluster.rollback_history.pop();
    cluster.rollback_history.push(cluster.rollbacks.clone());
}

/// A forged record may not make the operator delete a version other than the newest, make a
/// version out of turn, or restore another target than the spec's: it fails and changes
/// nothing.
#[test]
fn a_record_the_operator_did_not_write_is_acted_on_only_as_the_history_allows() {
    let mut cluster = two_versions();
    cluster.edit(Some(content(3)), None);
    cluster.converge(&mut || false);
    let v1 = cluster.versions.iter().find(|v| v.spec.version == 1).expect("v1").clone();
    let plans = [
        (
            "pop-v1",
            RollbackStrategy::Pop,
            None,
            AgentRollbackStatus {
                popped_version: Some(1),
                popped_snapshot_hash: Some(v1.spec.snapshot_hash.clone()),
                ..AgentRollbackStatus::default()
            },
        ),
        (
            "restore-as-100",
            RollbackStrategy::Restore,
            Some(1),
            AgentRollbackStatus { restored_version: Some(1), new_version: Some(100), ..AgentRollbackStatus::default() },
        ),
        (
            "restore-other",
            RollbackStrategy::Restore,
            Some(2),
            AgentRollbackStatus { restored_version: Some(1), new_version: Some(4), ..AgentRollbackStatus::default() },
        ),
    ];
    for (name, strategy, target, status) in plans {
        forge(&mut cluster, name, strategy, target, status);
        cluster.converge(&mut || false);
        assert_eq!(cluster.outcome(name), Outcome::Failed("InvalidRecord".into()), "{name}");
        assert_eq!(cluster.history().iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3], "{name}");
    }
    // A record of the operator's own plan still runs.
    forge(
        &mut cluster,
        "restore-ok",
        RollbackStrategy::Restore,
        Some(1),
        AgentRollbackStatus { restored_version: Some(1), new_version: Some(4), ..AgentRollbackStatus::default() },
    );
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("restore-ok"), Outcome::Succeeded(4));
}

/// What an admission policy refuses for good ends the publish or rollback that asked for it,
/// with the API server's words; nothing is retried until the spec changes, and nothing waits
/// behind it.
#[test]
fn a_version_the_api_server_refuses_ends_its_publish_or_rollback_and_blocks_nothing() {
    let mut cluster = two_versions();
    cluster.version_policy = Some(|v| (v.spec.version == 3).then(|| "version 3 is not allowed.".to_string()));
    cluster.create_rollback("rb", RollbackStrategy::Previous, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("rb"), Outcome::Failed("VersionRefused".into()));
    let status = cluster.rollbacks[0].status.clone().expect("status");
    assert!(status.message.as_deref().is_some_and(|m| m.contains("version 3 is not allowed.")), "{status:?}");
    assert_eq!(status.active_version, Some(2));

    cluster.edit(Some(content(5)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().len(), 2, "nothing published");
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled").expect("Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "VersionRefused"));
    assert!(stalled.message.contains("version 3 is not allowed."), "{}", stalled.message);
    assert_eq!(cluster.events.iter().filter(|e| e.reason == "VersionRefused").count(), 1);
    // A later sync of the same generation keeps saying so, and tries nothing again.
    let (observed, _) = cluster.sync_from(cluster.observe());
    assert!(decide(&observed, &time(cluster.clock + 1)).is_empty());
    let stalled_again = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    assert!(stalled_again.conditions.iter().any(|c| c.type_ == "Stalled" && c.reason == "VersionRefused"));

    // A rollback behind it runs (Pop makes no version); once the policy is lifted the next
    // edit is published.
    cluster.create_rollback("pop", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("pop"), Outcome::Succeeded(1));
    cluster.version_policy = None;
    cluster.edit(Some(content(6)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().last(), Some(&(2, content(6))));
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    assert!(status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
}

#[test]
fn a_definition_at_the_bound_is_published() {
    let mut cluster = two_versions();
    let overhead = super::hash::canonical_json(&large(0)).len();
    let at_bound = large(super::publish::MAX_DEFINITION_BYTES - overhead);
    assert_eq!(super::hash::canonical_json(&at_bound).len(), super::publish::MAX_DEFINITION_BYTES);
    cluster.edit(Some(at_bound.clone()), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().last(), Some(&(3, at_bound)));
}

/// A queue is run by one sync, which starts each rollback in turn: nothing is marked Pending
/// only for its next write to replace, and the head's Running record is copied into its
/// status beside its next write. A sync that stops there copies the status and marks Pending
/// those that wait behind the head, naming it, once each.
#[test]
fn rollbacks_waiting_their_turn_are_marked_pending_only_by_a_sync_that_stops() {
    let mut cluster = two_versions();
    for name in ["rb-1", "rb-2", "rb-3"] {
        cluster.create_rollback(name, RollbackStrategy::Previous, None, None);
    }
    let mut observed = cluster.observe();
    let steps = decide(&observed, &time(cluster.clock));
    let [Step::WriteRollback { name, copy_status: false, .. }] = steps.as_slice() else {
        panic!("only the head's record is written when it starts: {steps:?}")
    };
    assert_eq!(name, "rb-1");
    let written = cluster.apply(&steps[0], &observed).expect("the record is written");
    observed.fold(written);
    let next = decide(&observed, &time(cluster.clock));
    let [Step::Together(writes)] = next.as_slice() else { panic!("{next:?}") };
    assert!(
        matches!(writes.as_slice(), [Step::CopyRollbackStatus { name, .. }, Step::CreateVersion(_)] if name == "rb-1"),
        "the status copy goes beside the version's create: {writes:?}"
    );
    let raw = cluster.rollbacks.iter().find(|r| r.name_any() == "rb-1").expect("rb-1");
    assert_eq!(raw.status, None, "the status is not yet written");

    let marks = super::rollback::stopped(&observed, &time(cluster.clock));
    assert!(
        matches!(marks.first(), Some(Step::CopyRollbackStatus { name, .. }) if name == "rb-1"),
        "a sync that stops copies the Running record: {marks:?}"
    );
    let marked: Vec<(&str, Option<RollbackPhase>, Option<&str>)> = marks
        .iter()
        .filter_map(|s| match s {
            Step::WriteRollback { name, record, .. } => {
                Some((name.as_str(), record.status.phase, record.status.message.as_deref()))
            }
            _ => None,
        })
        .collect();
    let waiting = Some("Waiting for AgentRollback rb-1 to finish.");
    assert_eq!(
        marked,
        [("rb-2", Some(RollbackPhase::Pending), waiting), ("rb-3", Some(RollbackPhase::Pending), waiting)]
    );
    // The creation revision is recorded before the first write changes it: the order holds.
    for step in &marks {
        let Step::WriteRollback { name, record, .. } = step else { continue };
        let created = cluster.rollbacks.iter().find(|r| &r.name_any() == name).and_then(|r| r.resource_version());
        assert_eq!(record.status.creation_revision, created);
    }

    // Once marked, a rollback is not marked again.
    for step in &marks {
        cluster.apply(step, &observed).expect("the mark is written");
    }
    let raw = cluster.rollbacks.iter().find(|r| r.name_any() == "rb-1").expect("rb-1");
    assert_eq!(raw.status.as_ref().and_then(|s| s.phase), Some(RollbackPhase::Running));
    assert!(super::rollback::stopped(&cluster.observe(), &time(cluster.clock)).is_empty());
    cluster.converge(&mut || false);
    assert_eq!(
        ["rb-1", "rb-2", "rb-3"].map(|r| cluster.outcome(r)),
        [Outcome::Succeeded(3), Outcome::Succeeded(4), Outcome::Succeeded(5)]
    );
}

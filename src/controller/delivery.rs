//! Delivery I/O: what the planner needs to know of the delivery ConfigMaps of an Agent and its
//! channels (from a metadata-only watch of the ConfigMaps the operator labels, so it never holds
//! their data), of the channels themselves (from their watch cache), and of the workloads to
//! roll (read when a sync needs them: nothing watches every Deployment in the
//! cluster), and the two delivery writes.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::context::Context;
use super::index::AgentKey;
use super::lean_meta::LeanMeta;
use crate::api::keys::{DELIVERED_FOR_ANNOTATION, DELIVERY_FIELD_MANAGER, FIELD_MANAGER, REPLACING_VERSION_ANNOTATION};
use crate::api::{AgentChannel, WorkloadKind, WorkloadRef};
use crate::error::status_code;
use crate::plan::analysis::judging;
use crate::plan::channel::{ChannelObserved, config_map_name as channel_config_map_name};
use crate::plan::checks::{self, Measurement, Signal};
use crate::plan::delivery::{
    CHANNEL_CLAIM_PREFIX, ConfigMapState, Found, Held, Recipient, Rollout, WorkloadState, config_map_name,
};
use crate::plan::evaluation::{JobState, job_name as evaluation_job_name};
use crate::plan::moves::Promotions;
use crate::plan::rollout::{deployment_rollout, statefulset_rollout};
use crate::plan::{Applied, Observed, parse_revision, revision};
use crate::{Error, Result};

/// Fills in the delivery ConfigMaps and the workloads to roll, of the Agent and of each of its
/// channels. A ConfigMap comes from the watch cache, unless the sync's own state holds a newer
/// write of the same one (the cache may lag behind it); so does each channel; the workloads
/// are read.
pub async fn observe(ctx: &Context, observed: &mut Observed) -> Result<()> {
    observe_channels(ctx, observed).await?;
    let Some(agent) = observed.agent.clone() else { return Ok(()) };
    let kept = observed.config_map.take();
    observed.config_map = cached_config_map(ctx, &observed.namespace, &config_map_name(&agent), kept);
    let restart = agent.spec.delivery.as_ref().map(|d| d.restart.clone()).unwrap_or_default();
    observed.workloads =
        read_workloads(ctx, &observed.namespace, &Recipient::Agent, &agent.name_any(), restart).await?;
    Ok(())
}

/// The Agent's channels from the watch cache, each as the newer of the cache's and the sync's
/// own write (see [`observe`]), with its ConfigMap and workloads.
async fn observe_channels(ctx: &Context, observed: &mut Observed) -> Result<()> {
    let key = AgentKey::new(&observed.namespace, &observed.agent_name);
    let mut kept = std::mem::take(&mut observed.channels);
    let mut cached: Vec<_> = ctx.channels.of_agent(&key);
    cached.sort_by_key(|c| c.name_any());
    for cached in cached {
        let left = kept.iter().position(|k| k.channel.metadata.uid == cached.metadata.uid).map(|i| kept.swap_remove(i));
        let (channel, config_map) = match left {
            Some(left) if revision(&left.channel) >= revision(&*cached) => (left.channel, left.config_map),
            Some(left) => ((*cached).clone(), left.config_map),
            None => ((*cached).clone(), None),
        };
        let config_map = cached_config_map(ctx, &observed.namespace, &channel_config_map_name(&channel), config_map);
        let restart = channel.spec.delivery.as_ref().map(|d| d.restart.clone()).unwrap_or_default();
        let recipient = Recipient::Channel(channel.name_any());
        let workloads = read_workloads(ctx, &observed.namespace, &recipient, &observed.agent_name, restart).await?;
        let judged = channel.status.as_ref().and_then(|s| s.analysis.as_ref()).filter(|a| judging(a.phase));
        let (last_restart, (measurements, jobs_to_make)) = match judged {
            Some(analysis) => {
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                let measured = measure_due(ctx, &observed.agent_name, &channel, analysis, &now).await?;
                (last_restart(ctx, &observed.namespace, &channel).await?, measured)
            }
            None => (None, (Vec::new(), Vec::new())),
        };
        observed.channels.push(ChannelObserved {
            channel,
            config_map,
            workloads,
            last_restart,
            measurements,
            jobs_to_make,
        });
    }
    observe_promotions(ctx, observed);
    Ok(())
}

/// The measurements of the channel's checks due now, once the version under judgement is
/// delivered (its bake began), all at once; and the job checks whose Job is still to be made.
async fn measure_due(
    ctx: &Context,
    agent: &str,
    channel: &AgentChannel,
    analysis: &crate::api::AnalysisStatus,
    now: &Time,
) -> Result<(Vec<Measurement>, Vec<String>)> {
    let Some(spec) = channel.spec.analysis.as_ref().filter(|_| analysis.delivered_time.is_some()) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let (name, namespace) = (channel.name_any(), channel.namespace().unwrap_or_default());
    let due = checks::due(spec, &analysis.checks, now);
    let queries = due.iter().filter_map(|check| {
        let prometheus = check.prometheus.as_ref()?;
        let query = checks::query(&prometheus.query, agent, &name, analysis.version);
        Some(async move {
            let signal = super::prometheus::measure(&ctx.http, prometheus, &query, now).await;
            Measurement { check: check.name.clone(), at: now.clone(), signal }
        })
    });
    let mut measurements = futures::future::join_all(queries).await;
    let mut to_make = Vec::new();
    for check in due.iter().filter(|c| c.job.is_some()) {
        let job = evaluation_job_name(&name, &check.name, analysis.version);
        let signal = match super::evaluation::observe(ctx, &namespace, &job).await? {
            JobState::Absent => {
                to_make.push(check.name.clone());
                continue;
            }
            JobState::Running => continue,
            JobState::Complete => Signal::Passed,
            JobState::Failed(why) => Signal::Failed(why),
            JobState::CannotStart(why) => Signal::Unavailable(why),
        };
        measurements.push(Measurement { check: check.name.clone(), at: now.clone(), signal });
    }
    Ok((measurements, to_make))
}

/// When a container of the channel's workloads' pods last ended to be restarted (its last
/// termination's end), if one did: read only while a version bakes in the channel (see
/// `plan::analysis`).
async fn last_restart(ctx: &Context, namespace: &str, channel: &AgentChannel) -> Result<Option<Time>> {
    let listed = channel.spec.delivery.as_ref().map(|d| d.restart.clone()).unwrap_or_default();
    let mut last: Option<Time> = None;
    for workload in listed {
        let read = |source| Error::ReadPods { namespace: namespace.into(), name: workload.name.clone(), source };
        let selector = match workload.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
                api.get_opt(&workload.name).await.map_err(read)?.and_then(|d| d.spec).map(|s| s.selector)
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
                api.get_opt(&workload.name).await.map_err(read)?.and_then(|d| d.spec).map(|s| s.selector)
            }
        };
        let Some(labels) = selector.and_then(|s| s.match_labels) else { continue };
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        let list = pods.list(&ListParams::default().labels(&selector.join(","))).await.map_err(read)?;
        // A container that exited and waits to restart shows it in its state, one that
        // restarted in its last state; the containers of a pod being deleted end for that.
        let ends = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .flat_map(|c| [c.state.as_ref(), c.last_state.as_ref()])
            .filter_map(|state| state?.terminated.as_ref()?.finished_at.clone());
        last = last.into_iter().chain(ends).max_by_key(|t| t.0);
    }
    Ok(last)
}

/// The promotions of the Agent's channels from the watch cache, each as the newer of the
/// cache's and the sync's own write. A scan of the cache, made only for an Agent with channels:
/// promotions are few beside versions and rollbacks.
fn observe_promotions(ctx: &Context, observed: &mut Observed) {
    let kept = std::mem::take(&mut observed.promotions);
    if observed.channels.is_empty() {
        return;
    }
    let names: Vec<String> = observed.channels.iter().map(|c| c.channel.name_any()).collect();
    let namespace = observed.namespace.as_str();
    let mut promotions = Promotions::default();
    for cached in ctx.promotions.state() {
        if cached.namespace().as_deref() != Some(namespace) || !names.contains(&cached.spec.channel) {
            continue;
        }
        let name = cached.name_any();
        match kept.get(&name).filter(|k| k.metadata.uid == cached.metadata.uid) {
            // Kept as folded: its status is its record's, and whether the API server's copy
            // differs is what the kept state says.
            Some(left) if revision(left) >= revision(&*cached) => {
                promotions.fold(left.clone());
                if kept.unsynced.contains(&name) {
                    promotions.unsynced.insert(name);
                }
            }
            _ => promotions.fold((*cached).clone()),
        }
    }
    observed.promotions = promotions;
}

/// The ConfigMap `name` as the watch cache has it, or as `kept` (the sync's own write) when
/// that is newer.
fn cached_config_map(
    ctx: &Context,
    namespace: &str,
    name: &str,
    kept: Option<ConfigMapState>,
) -> Option<ConfigMapState> {
    let reference = ObjectRef::<LeanMeta<ConfigMap>>::new(name).within(namespace);
    let cached = ctx.config_maps.get(&reference);
    let kept = kept.filter(|c| c.name == name);
    match (cached, kept) {
        (Some(cached), Some(kept)) if kept.uid == cached.metadata.uid && newer(&kept, &cached) => Some(kept),
        (Some(cached), _) => Some(ConfigMapState::from_meta(&cached.metadata)),
        // Not in the cache: none exists, or one the operator did not label (someone else's),
        // which the create finds.
        (None, _) => None,
    }
}

fn newer(kept: &ConfigMapState, cached: &LeanMeta<ConfigMap>) -> bool {
    parse_revision(kept.resource_version.as_deref()) >= revision(cached)
}

async fn read_workloads(
    ctx: &Context,
    namespace: &str,
    recipient: &Recipient,
    agent: &str,
    listed: Vec<WorkloadRef>,
) -> Result<Vec<WorkloadState>> {
    let claim = recipient.claim(agent);
    futures::future::try_join_all(listed.into_iter().map(|w| read_workload(ctx, namespace, &claim, w))).await
}

/// A workload as `claim` (whose delivery it is for) sees it.
async fn read_workload(ctx: &Context, namespace: &str, claim: &str, workload: WorkloadRef) -> Result<WorkloadState> {
    let claimed = |owner: Option<&str>| claimed_by(ctx, namespace, claim, &workload, owner);
    let found = match workload.kind {
        WorkloadKind::Deployment => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
            found_unless_claimed(api.get_opt(&workload.name).await, deployment_rollout, claimed)
        }
        WorkloadKind::StatefulSet => {
            let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
            found_unless_claimed(api.get_opt(&workload.name).await, statefulset_rollout, claimed)
        }
    };
    let found = found.map_err(|source| Error::ReadWorkload {
        namespace: namespace.into(),
        name: workload.name.clone(),
        source,
    })?;
    Ok(WorkloadState { workload, found })
}

/// The other Agent or channel whose delivery a workload's template takes (`owner`), if it
/// still exists and lists the workload: then it is its, and `claim` leaves it alone. A
/// workload whose owner is gone or lists it no more is free to take.
fn claimed_by(
    ctx: &Context,
    namespace: &str,
    claim: &str,
    workload: &WorkloadRef,
    owner: Option<&str>,
) -> Option<String> {
    let owner = owner.filter(|owner| *owner != claim)?;
    let delivery = match owner.strip_prefix(CHANNEL_CLAIM_PREFIX) {
        Some(channel) => ctx.channels.get(&ObjectRef::new(channel).within(namespace))?.spec.delivery.clone(),
        None => ctx.agents.get(&ObjectRef::new(owner).within(namespace))?.spec.delivery.clone(),
    };
    let lists = delivery.is_some_and(|d| d.restart.contains(workload));
    lists.then(|| owner.to_string())
}

/// As `found`, unless the workload's template names (`agentops.dev/delivered-for`) another
/// Agent that `claimed_by` finds still holds it.
fn found_unless_claimed<K: Resource + HasTemplate>(
    result: kube::Result<Option<K>>,
    rollout: fn(&K) -> Rollout,
    claimed_by: impl Fn(Option<&str>) -> Option<String>,
) -> kube::Result<Found> {
    if let Ok(Some(object)) = &result {
        let owner = object.template_annotations().and_then(|a| a.get(DELIVERED_FOR_ANNOTATION));
        if let Some(by) = claimed_by(owner.map(String::as_str)) {
            return Ok(Found::Claimed { by });
        }
    }
    found(result, rollout)
}

/// A workload read (or written) as the planner sees it: what its template carries and how far
/// its rollout has come; missing and forbidden are states to report, not errors.
fn found<K: Resource + HasTemplate>(
    result: kube::Result<Option<K>>,
    rollout: fn(&K) -> Rollout,
) -> kube::Result<Found> {
    match result {
        Ok(Some(object)) => {
            let held = object.template_annotations().and_then(Held::from_annotations);
            Ok(Found::Present { held, rollout: rollout(&object) })
        }
        Ok(None) => Ok(Found::Missing),
        Err(e) if status_code(&e) == Some(403) => Ok(Found::Forbidden(
            "forbidden to the operator (the chart grants workload patches with delivery.restartWorkloads=true)".into(),
        )),
        Err(e) if status_code(&e) == Some(404) => Ok(Found::Missing),
        Err(e) => Err(e),
    }
}

/// Pod-template annotations of a workload.
pub trait HasTemplate {
    fn template_annotations(&self) -> Option<&std::collections::BTreeMap<String, String>>;
}

impl HasTemplate for Deployment {
    fn template_annotations(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()
    }
}

impl HasTemplate for StatefulSet {
    fn template_annotations(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()
    }
}

/// What became of a delivery write.
pub enum Written {
    Done(Applied),
    /// The ConfigMap was not as the plan assumed: this is what it is now.
    Stale(Applied),
}

/// Creates a delivery ConfigMap, or merges into it on condition it is still at
/// `resource_version` (see `plan::Write::ApplyConfigMap`). A name taken (409 on create) or a
/// changed ConfigMap (409 on replace) is read back for the planner to judge: it may be someone
/// else's.
pub async fn apply_config_map(
    ctx: &Context,
    namespace: &str,
    recipient: Recipient,
    config_map: &ConfigMap,
    resource_version: Option<String>,
    remove: &[String],
) -> Result<Written> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let name = config_map.metadata.name.clone().unwrap_or_default();
    let result = match resource_version {
        None => {
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
            api.create(&params, config_map).await
        }
        Some(resource_version) => {
            // A merge patch removes what it sets to null.
            let mut annotations = json!(config_map.metadata.annotations);
            if annotations.get(REPLACING_VERSION_ANNOTATION).is_none() {
                annotations[REPLACING_VERSION_ANNOTATION] = serde_json::Value::Null;
            }
            let mut data = json!(config_map.data);
            for key in remove {
                data[key.as_str()] = serde_json::Value::Null;
            }
            let body = json!({
                "metadata": { "resourceVersion": resource_version, "annotations": annotations },
                "data": data,
            });
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            api.patch(&name, &params, &Patch::Merge(body)).await
        }
    };
    let error = |source| Error::WriteConfigMap { namespace: namespace.into(), name: name.clone(), source };
    match result {
        Ok(written) => {
            Ok(Written::Done(Applied::ConfigMap(recipient, Some(ConfigMapState::from_meta(&written.metadata)))))
        }
        Err(e) if matches!(status_code(&e), Some(409 | 404)) => {
            let fresh = api.get_metadata_opt(&name).await.map_err(error)?;
            Ok(Written::Stale(Applied::ConfigMap(recipient, fresh.map(|c| ConfigMapState::from_meta(&c.metadata)))))
        }
        Err(source) => Err(error(source)),
    }
}

/// Sets the delivery pod-template annotations (the version, its snapshot hash, and the Agent or
/// channel whose delivery it takes) with server-side apply under the delivery field manager:
/// it owns those fields and no other, so whoever manages the rest of the workload (a GitOps
/// tool) sees no drift.
pub async fn roll_workload(
    ctx: &Context,
    namespace: &str,
    agent: &str,
    recipient: Recipient,
    workload: &WorkloadRef,
    held: &Held,
) -> Result<Applied> {
    let mut annotations = held.annotations();
    annotations.insert(DELIVERED_FOR_ANNOTATION.to_string(), recipient.claim(agent));
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": workload.kind.as_str(),
        "metadata": { "name": workload.name },
        "spec": { "template": { "metadata": { "annotations": annotations } } },
    });
    let params = PatchParams::apply(DELIVERY_FIELD_MANAGER).force();
    let found = match workload.kind {
        WorkloadKind::Deployment => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
            found(api.patch(&workload.name, &params, &Patch::Apply(body)).await.map(Some), deployment_rollout)
        }
        WorkloadKind::StatefulSet => {
            let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
            found(api.patch(&workload.name, &params, &Patch::Apply(body)).await.map(Some), statefulset_rollout)
        }
    };
    let found = found.map_err(|source| Error::RollWorkload {
        namespace: namespace.into(),
        name: workload.name.clone(),
        source,
    })?;
    Ok(Applied::Workload(recipient, WorkloadState { workload: workload.clone(), found }))
}

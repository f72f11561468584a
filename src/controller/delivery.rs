//! Delivery I/O: what the planner needs to know of the delivery ConfigMap (from a metadata-only
//! watch of the ConfigMaps the operator labels, so it never holds their data) and of the
//! workloads to roll (read when a sync needs them: nothing watches every Deployment in the
//! cluster), and the two delivery writes.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::context::Context;
use super::lean_meta::LeanMeta;
use crate::api::keys::{DELIVERED_FOR_ANNOTATION, DELIVERY_FIELD_MANAGER, FIELD_MANAGER};
use crate::api::{Agent, WorkloadKind, WorkloadRef};
use crate::error::status_code;
use crate::plan::delivery::{ConfigMapState, Found, Held, Rollout, WorkloadState, config_map_name};
use crate::plan::rollout::{deployment_rollout, statefulset_rollout};
use crate::plan::{Applied, Observed, parse_revision, revision};
use crate::{Error, Result};

/// Fills in the delivery ConfigMap and the workloads to roll. The ConfigMap comes from the
/// watch cache, unless the sync's own state holds a newer write of the same one (the cache may
/// lag behind it); the workloads are read.
pub async fn observe(ctx: &Context, observed: &mut Observed) -> Result<()> {
    let Some(agent) = observed.agent.clone() else { return Ok(()) };
    let name = config_map_name(&agent);
    let reference = ObjectRef::<LeanMeta<ConfigMap>>::new(&name).within(&observed.namespace);
    let cached = ctx.config_maps.get(&reference);
    let kept = observed.config_map.take().filter(|c| c.name == name);
    observed.config_map = match (cached, kept) {
        (Some(cached), Some(kept)) if kept.uid == cached.metadata.uid && newer(&kept, &cached) => Some(kept),
        (Some(cached), _) => Some(ConfigMapState::from_meta(&cached.metadata)),
        // Not in the cache: none exists, or one the operator did not label (someone else's),
        // which the create finds.
        (None, _) => None,
    };
    observed.workloads = read_workloads(ctx, &observed.namespace, &agent).await?;
    Ok(())
}

fn newer(kept: &ConfigMapState, cached: &LeanMeta<ConfigMap>) -> bool {
    parse_revision(kept.resource_version.as_deref()) >= revision(cached)
}

async fn read_workloads(ctx: &Context, namespace: &str, agent: &Agent) -> Result<Vec<WorkloadState>> {
    let listed = agent.spec.delivery.as_ref().map(|d| d.restart.clone()).unwrap_or_default();
    let name = agent.name_any();
    futures::future::try_join_all(listed.into_iter().map(|w| read_workload(ctx, namespace, &name, w))).await
}

async fn read_workload(ctx: &Context, namespace: &str, agent: &str, workload: WorkloadRef) -> Result<WorkloadState> {
    let claimed = |owner: Option<&str>| claimed_by(ctx, namespace, agent, &workload, owner);
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

/// The other Agent whose delivery a workload's template takes (`owner`), if that Agent still
/// exists and lists the workload: then it is its, and `agent` leaves it alone. A workload
/// whose owner is gone or lists it no more is free to take.
fn claimed_by(
    ctx: &Context,
    namespace: &str,
    agent: &str,
    workload: &WorkloadRef,
    owner: Option<&str>,
) -> Option<String> {
    let owner = owner.filter(|owner| *owner != agent)?;
    let other = ctx.agents.get(&ObjectRef::new(owner).within(namespace))?;
    let lists = other.spec.delivery.as_ref().is_some_and(|d| d.restart.contains(workload));
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

/// Creates the delivery ConfigMap, or replaces it on condition it is still at
/// `resource_version`. A name taken (409 on create) or a changed ConfigMap (409 on replace) is
/// read back for the planner to judge: it may be someone else's.
pub async fn apply_config_map(
    ctx: &Context,
    namespace: &str,
    config_map: &ConfigMap,
    resource_version: Option<String>,
) -> Result<Written> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let name = config_map.metadata.name.clone().unwrap_or_default();
    let result = match resource_version {
        None => {
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
            api.create(&params, config_map).await
        }
        Some(resource_version) => {
            let body = json!({
                "metadata": {
                    "resourceVersion": resource_version,
                    "annotations": config_map.metadata.annotations,
                },
                "data": config_map.data,
            });
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            api.patch(&name, &params, &Patch::Merge(body)).await
        }
    };
    let error = |source| Error::WriteConfigMap { namespace: namespace.into(), name: name.clone(), source };
    match result {
        Ok(written) => Ok(Written::Done(Applied::ConfigMap(Some(ConfigMapState::from_meta(&written.metadata))))),
        Err(e) if matches!(status_code(&e), Some(409 | 404)) => {
            let fresh = api.get_metadata_opt(&name).await.map_err(error)?;
            Ok(Written::Stale(Applied::ConfigMap(fresh.map(|c| ConfigMapState::from_meta(&c.metadata)))))
        }
        Err(source) => Err(error(source)),
    }
}

/// Sets the delivery pod-template annotations (the version, its snapshot hash, and the Agent
/// whose delivery it takes) with server-side apply under the delivery field manager: it owns
/// those fields and no other, so whoever manages the rest of the workload (a GitOps tool) sees
/// no drift.
pub async fn roll_workload(
    ctx: &Context,
    namespace: &str,
    agent: &str,
    workload: &WorkloadRef,
    held: &Held,
) -> Result<Applied> {
    let mut annotations = held.annotations();
    annotations.insert(DELIVERED_FOR_ANNOTATION.to_string(), agent.to_string());
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
    Ok(Applied::Workload(WorkloadState { workload: workload.clone(), found }))
}

//! Apply: performs one planned [`Step`] and reports what the API server answered. Every step
//! is idempotent: a create whose name is taken, a delete of a missing object and a status write
//! that lost a race each tell the caller to look again instead of failing.

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::echoes::Echo;
use super::{Context, delivery};
use crate::api::keys::FIELD_MANAGER;
use crate::api::{Agent, AgentRollback, AgentVersion};
use crate::plan::{Applied, EventTarget, Observed, RelatedObject, Step};
use crate::{Error, Result};

/// What became of one step.
pub enum Outcome {
    /// Done; fold the answer in and go on with the unit.
    Done(Applied),
    /// The step met a newer state than the plan assumed. Fold in `Some` answer (the fresh
    /// object) or observe everything again on `None`, then decide anew.
    Stale(Option<Applied>),
}

/// The HTTP status of an error the API server answered.
pub(super) fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Applies one planned step: a single write, or writes made together (all at once).
pub async fn apply(ctx: &Context, observed: &Observed, step: Step) -> Result<Vec<Outcome>> {
    try_join_all(flatten(step).into_iter().map(|write| apply_one(ctx, observed, write))).await
}

fn flatten(step: Step) -> Vec<Step> {
    match step {
        Step::Together(steps) => steps.into_iter().flat_map(flatten).collect(),
        step => vec![step],
    }
}

async fn apply_one(ctx: &Context, observed: &Observed, step: Step) -> Result<Outcome> {
    let ns = observed.namespace.as_str();
    match step {
        Step::CreateVersion(version) => {
            let api: Api<AgentVersion> = Api::namespaced(ctx.client.clone(), ns);
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
            let echo = Echo::Created { namespace: ns.into(), name: version.name_any() };
            ctx.echoes.expect(echo.clone());
            let result = api.create(&params, &version).await;
            if result.is_err() {
                ctx.echoes.forget(&echo);
            }
            match result {
                Ok(created) => Ok(Outcome::Done(Applied::VersionCreated(Box::new(created)))),
                Err(e) if status_code(&e) == Some(409) => Ok(Outcome::Stale(None)),
                Err(source) => Err(Error::CreateVersion { namespace: ns.into(), name: version.name_any(), source }),
            }
        }
        Step::DeleteVersion { name, uid } => {
            let api: Api<AgentVersion> = Api::namespaced(ctx.client.clone(), ns);
            let echo = Echo::Deleted { uid: uid.clone() };
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                ..DeleteParams::default()
            };
            ctx.echoes.expect(echo.clone());
            let result = api.delete(&name, &params).await;
            if result.is_err() {
                ctx.echoes.forget(&echo);
            }
            match result {
                Ok(_) => Ok(Outcome::Done(Applied::VersionDeleted(name))),
                Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Done(Applied::VersionDeleted(name))),
                Err(e) if status_code(&e) == Some(409) => Ok(Outcome::Stale(None)),
                Err(source) => Err(Error::DeleteVersion { namespace: ns.into(), name, source }),
            }
        }
        Step::PatchAgentStatus(status) => {
            let api: Api<Agent> = Api::namespaced(ctx.client.clone(), ns);
            let name = observed.agent_name.as_str();
            let body = json!({ "apiVersion": Agent::api_version(&()), "kind": Agent::kind(&()), "status": status });
            match api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await {
                Ok(agent) => Ok(Outcome::Done(Applied::Agent(Box::new(agent)))),
                Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Stale(None)),
                Err(source) => Err(Error::PatchAgentStatus { namespace: ns.into(), name: name.into(), source }),
            }
        }
        Step::PatchRollbackStatus { name, resource_version, status } => {
            let api: Api<AgentRollback> = Api::namespaced(ctx.client.clone(), ns);
            // A merge patch that carries resourceVersion is refused with 409 when the object
            // changed since: the compare-and-swap that runs each rollback exactly once.
            let body = json!({ "metadata": { "resourceVersion": resource_version }, "status": status });
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(body)).await {
                Ok(rollback) => Ok(Outcome::Done(Applied::Rollback(Box::new(rollback)))),
                Err(e) if status_code(&e) == Some(409) => {
                    let fresh = api.get_opt(&name).await.map_err(|source| Error::GetRollback {
                        namespace: ns.into(),
                        name: name.clone(),
                        source,
                    })?;
                    Ok(Outcome::Stale(Some(match fresh {
                        Some(rollback) => Applied::Rollback(Box::new(rollback)),
                        None => Applied::RollbackDeleted(name),
                    })))
                }
                Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Stale(Some(Applied::RollbackDeleted(name)))),
                Err(source) => Err(Error::PatchRollbackStatus { namespace: ns.into(), name, source }),
            }
        }
        Step::ReadRollback { name } => {
            let api: Api<AgentRollback> = Api::namespaced(ctx.client.clone(), ns);
            let fresh = api.get_opt(&name).await.map_err(|source| Error::GetRollback {
                namespace: ns.into(),
                name: name.clone(),
                source,
            })?;
            Ok(Outcome::Done(match fresh {
                Some(rollback) => Applied::Rollback(Box::new(rollback)),
                None => Applied::RollbackDeleted(name),
            }))
        }
        // `apply` hands single writes only.
        Step::Together(_) => Ok(Outcome::Done(Applied::Nothing)),
        Step::ApplyConfigMap { config_map, resource_version } => {
            Ok(match delivery::apply_config_map(ctx, ns, &config_map, resource_version).await? {
                delivery::Written::Done(applied) => Outcome::Done(applied),
                delivery::Written::Stale(fresh) => Outcome::Stale(Some(fresh)),
            })
        }
        Step::RollWorkload { workload, held } => {
            Ok(Outcome::Done(delivery::roll_workload(ctx, ns, &workload, &held).await?))
        }
        Step::Event(note) => {
            let reference = match &note.on {
                EventTarget::Agent => observed.agent.as_ref().map(|a| a.object_ref(&())),
                EventTarget::Rollback(name) => observed.rollback(name).map(|r| r.object_ref(&())),
            };
            let related = note.related.as_ref().and_then(|related| match related {
                // A pruned version is gone from `observed` by the time its Event is sent: its
                // reference is made from the name.
                RelatedObject::Version(name) => {
                    Some(observed.versions.iter().find(|v| &v.name_any() == name).map_or_else(
                        || ObjectReference {
                            api_version: Some(AgentVersion::api_version(&()).into()),
                            kind: Some(AgentVersion::kind(&()).into()),
                            namespace: Some(ns.into()),
                            name: Some(name.clone()),
                            ..ObjectReference::default()
                        },
                        |v| v.object_ref(&()),
                    ))
                }
                RelatedObject::Rollback(name) => observed.rollback(name).map(|r| r.object_ref(&())),
            });
            if let Some(reference) = reference {
                ctx.events.send(reference, related, note);
            }
            Ok(Outcome::Done(Applied::Nothing))
        }
    }
}

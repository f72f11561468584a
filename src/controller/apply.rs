//! Apply: performs one planned [`Step`] and reports what the API server answered. Every step
//! is idempotent: a create whose name is taken, a delete of a missing object and a status write
//! that lost a race each tell the caller to look again instead of failing.

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::context::Context;
use super::delivery;
use super::index::{AgentKey, Echo};
use crate::api::keys::{FIELD_MANAGER, ROLLBACK_RECORD_ANNOTATION, SNAPSHOT_HASH_ANNOTATION};
use crate::api::{Agent, AgentChannel, AgentChannelStatus, AgentPromotion, AgentRollback, AgentStatus, AgentVersion};
use crate::error::{is_permanent, status_code};
use crate::plan::driver::Outcome;
use crate::plan::durable::{RollbackRecord, handled_of, record_text};
use crate::plan::moves::PromotionRecord;
use crate::plan::{Applied, EventNote, EventTarget, Observed, RefusedVersion, RelatedObject, Step, Write};
use crate::plan::{popped, protection};
use crate::{Error, Result};

/// A rollback as the API server answered, less what the operator never reads (its annotations
/// but the record, up to 256 KiB that anyone may write; its managed fields): a sync's state
/// holds every rollback of its Agent, and the last state of many Agents is kept.
fn slim(mut rollback: AgentRollback) -> AgentRollback {
    super::watches::slim_rollback(&mut rollback);
    rollback
}

/// An Agent's whole status, as the operator writes it: server-side apply under its field
/// manager, forced (see [`apply`]).
pub fn agent_status(status: &AgentStatus) -> Patch<serde_json::Value> {
    Patch::Apply(json!({ "apiVersion": Agent::api_version(&()), "kind": Agent::kind(&()), "status": status }))
}

/// Applies one planned step: a single write, or writes made together (all at once).
pub async fn apply(ctx: &Context, observed: &Observed, step: Step) -> Result<Vec<Outcome>> {
    let writes = match step {
        Step::One(write) => vec![write],
        Step::Together(writes) => writes,
    };
    try_join_all(writes.into_iter().map(|write| apply_one(ctx, observed, write))).await
}

async fn apply_one(ctx: &Context, observed: &Observed, write: Write) -> Result<Outcome> {
    let ns = observed.namespace.as_str();
    match write {
        Write::CreateVersion(version) => create_version(ctx, observed, &version).await,
        Write::DeleteVersion { name, uid } => delete_version(ctx, observed, name, uid).await,
        Write::PatchAgentStatus(status) => {
            let api: Api<Agent> = Api::namespaced(ctx.client.clone(), ns);
            let name = observed.agent_name.as_str();
            match api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &agent_status(&status)).await {
                Ok(agent) => Ok(Outcome::Done(Applied::Agent(Box::new(agent)))),
                Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Stale(None)),
                Err(source) => Err(Error::PatchAgentStatus { namespace: ns.into(), name: name.into(), source }),
            }
        }
        Write::WriteRollback { name, resource_version, record, copy_status, announce } => {
            write_rollback(ctx, observed, name, resource_version, &record, copy_status, announce).await
        }
        Write::CopyRollbackStatus { name } => {
            let api: Api<AgentRollback> = Api::namespaced(ctx.client.clone(), ns);
            match observed.rollback(&name) {
                // As folded in (see `plan::Observed::fold`): the status it holds is its record's.
                Some(read) => write_status(&api, ns, name, read.resource_version(), read.clone()).await,
                None => Ok(Outcome::Stale(Some(read_rollback(&api, ns, name).await?))),
            }
        }
        Write::ReadRollback { name } => {
            let api: Api<AgentRollback> = Api::namespaced(ctx.client.clone(), ns);
            Ok(Outcome::Done(read_rollback(&api, ns, name).await?))
        }
        Write::ListRollbacks => {
            let rollbacks = super::observe::read_rollbacks(ctx, ns, &observed.agent_name).await?;
            Ok(Outcome::Done(Applied::Rollbacks(rollbacks.into_iter().map(slim).collect())))
        }
        Write::ApplyConfigMap { recipient, config_map, resource_version, remove } => {
            Ok(match delivery::apply_config_map(ctx, ns, recipient, &config_map, resource_version, &remove).await? {
                delivery::Written::Done(applied) => Outcome::Done(applied),
                delivery::Written::Stale(fresh) => Outcome::Stale(Some(fresh)),
            })
        }
        Write::RollWorkload { recipient, workload, held } => {
            let agent = &observed.agent_name;
            Ok(Outcome::Done(delivery::roll_workload(ctx, ns, agent, recipient, &workload, &held).await?))
        }
        Write::PatchChannelStatus { name, status } => patch_channel_status(ctx, ns, name, &status).await,
        Write::JudgeVersion { name, uid, channel, verdict, message } => {
            let api: Api<AgentVersion> = Api::namespaced(ctx.client.clone(), ns);
            let key = crate::plan::moves::health_key(&channel);
            // The uid in a merge patch is a precondition: never a new version of that name.
            let body = json!({ "metadata": {
                "uid": uid,
                "labels": { &key: verdict },
                "annotations": { &key: message },
            }});
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            match api.patch(&name, &params, &Patch::Merge(body)).await {
                Ok(version) => Ok(Outcome::Done(Applied::VersionPatched(Box::new(version)))),
                Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(Outcome::Stale(None)),
                Err(source) => Err(Error::JudgeVersion { namespace: ns.into(), name, source }),
            }
        }
        Write::CreateRollback(rollback) => create_rollback(ctx, ns, *rollback).await,
        Write::CreateJob { channel, check, job } => {
            let api: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(ctx.client.clone(), ns);
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
            match api.create(&params, &job).await {
                // Made before (its name is one per check and version), or not ours to make: the
                // next look at it says which (see `evaluation`).
                Ok(_) => Ok(Outcome::Done(Applied::JobMade { channel, check })),
                Err(e) if matches!(status_code(&e), Some(403 | 409)) => {
                    Ok(Outcome::Done(Applied::JobMade { channel, check }))
                }
                Err(source) => Err(Error::CreateJob { namespace: ns.into(), name: job.name_any(), source }),
            }
        }
        Write::SetVersionFinalizers { name, resource_version, finalizers } => {
            set_finalizers(ctx, ns, name, resource_version, finalizers).await
        }
        Write::ListPromotions => {
            let api: Api<AgentPromotion> = Api::namespaced(ctx.client.clone(), ns);
            let list = api.list(&ListParams::default()).await.map_err(|source| Error::WritePromotion {
                namespace: ns.into(),
                name: String::new(),
                source,
            })?;
            Ok(Outcome::Done(Applied::Promotions(list.items.into_iter().map(slim_promotion).collect())))
        }
        Write::ReadChannel { name } => {
            let api: Api<AgentChannel> = Api::namespaced(ctx.client.clone(), ns);
            let read = api.get_opt(&name).await.map_err(|source| Error::GetChannel {
                namespace: ns.into(),
                name: name.clone(),
                source,
            })?;
            // Another Agent's channel is not this one's.
            let found = read.filter(|c| c.spec.agent_name == observed.agent_name).map(|mut channel| {
                super::watches::slim_channel(&mut channel);
                Box::new(channel)
            });
            Ok(Outcome::Done(Applied::ChannelRead(name, found)))
        }
        Write::WritePromotion { name, resource_version, record, copy_status, announce } => {
            write_promotion(ctx, observed, name, resource_version, &record, copy_status, announce).await
        }
        Write::KeepPopped { rollback, config_map } => keep_popped(ctx, ns, rollback, &config_map).await,
        Write::ReadPopped { rollback } => read_popped(ctx, observed, rollback).await,
        Write::Event(note) => {
            publish(ctx, observed, note);
            Ok(Outcome::Done(Applied::Nothing))
        }
    }
}

/// Creates the ConfigMap in which a Pop keeps the snapshot it deletes (see `plan::popped`).
/// Its name taken, it is the Pop's own if the Pop owns it and it holds that snapshot (made
/// before a crash); else, as when the API server refuses it for good, the Pop is told why and
/// deletes nothing.
async fn keep_popped(ctx: &Context, ns: &str, rollback: String, config_map: &ConfigMap) -> Result<Outcome> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let failed = |source| Error::PoppedSnapshot { namespace: ns.into(), name: rollback.clone(), source };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    match api.create(&params, config_map).await {
        Ok(_) => Ok(Outcome::Done(Applied::PoppedKept(rollback))),
        Err(e) if status_code(&e) == Some(409) => {
            let name = config_map.name_any();
            let Some(found) = api.get_opt(&name).await.map_err(failed)? else {
                // Gone again since: the next unit makes it.
                return Ok(Outcome::Stale(None));
            };
            let uid = config_map.owner_references().first().map(|r| r.uid.as_str()).unwrap_or_default();
            let hash = config_map.annotations().get(SNAPSHOT_HASH_ANNOTATION).map(String::as_str).unwrap_or_default();
            Ok(Outcome::Done(match popped::snapshot_of(&found, uid, hash) {
                Some(_) => Applied::PoppedKept(rollback),
                None => {
                    Applied::PoppedRefused(rollback, format!("a ConfigMap {name} exists and is not this rollback's"))
                }
            }))
        }
        Err(kube::Error::Api(status)) if is_permanent(status.code) => Ok(Outcome::Done(Applied::PoppedRefused(
            rollback,
            format!("the API server refused it: {}", status.message),
        ))),
        Err(source) => Err(failed(source)),
    }
}

/// Reads back the snapshot a Pop kept: its status lost it after the version was deleted.
async fn read_popped(ctx: &Context, observed: &Observed, rollback: String) -> Result<Outcome> {
    let ns = observed.namespace.as_str();
    let read = observed.rollback(&rollback);
    let uid = read.and_then(|r| r.metadata.uid.clone()).unwrap_or_default();
    let hash = read.and_then(|r| r.status.as_ref()?.popped_snapshot_hash.clone()).unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let found = api.get_opt(&popped::config_map_name(&rollback)).await.map_err(|source| Error::PoppedSnapshot {
        namespace: ns.into(),
        name: rollback.clone(),
        source,
    })?;
    let snapshot = found.and_then(|config_map| popped::snapshot_of(&config_map, &uid, &hash));
    Ok(Outcome::Done(Applied::PoppedRead(rollback, snapshot)))
}

/// Writes a channel's whole status (server-side apply under the operator's field manager,
/// forced: the operator alone writes it). A channel deleted meanwhile is gone from the sync's
/// state.
async fn patch_channel_status(ctx: &Context, ns: &str, name: String, status: &AgentChannelStatus) -> Result<Outcome> {
    let api: Api<AgentChannel> = Api::namespaced(ctx.client.clone(), ns);
    let patch = Patch::Apply(json!({
        "apiVersion": AgentChannel::api_version(&()),
        "kind": AgentChannel::kind(&()),
        "status": status,
    }));
    match api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &patch).await {
        Ok(channel) => {
            let mut channel = channel;
            super::watches::slim_channel(&mut channel);
            Ok(Outcome::Done(Applied::Channel(Box::new(channel))))
        }
        Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Done(Applied::ChannelGone(name))),
        Err(source) => Err(Error::PatchChannelStatus { namespace: ns.into(), name, source }),
    }
}

/// Writes a promotion's record on condition that it is still at `resource_version` (the
/// compare-and-swap that runs it exactly once), then its status as the record says unless
/// `copy_status` is false; as `write_rollback` does for a rollback.
async fn write_promotion(
    ctx: &Context,
    observed: &Observed,
    name: String,
    resource_version: Option<String>,
    record: &PromotionRecord,
    copy_status: bool,
    announce: Vec<EventNote>,
) -> Result<Outcome> {
    let ns = observed.namespace.as_str();
    let api: Api<AgentPromotion> = Api::namespaced(ctx.client.clone(), ns);
    let failed = |source| Error::WritePromotion { namespace: ns.into(), name: name.clone(), source };
    let text = serde_json::to_string(record).map_err(|e| failed(kube::Error::SerdeError(e)))?;
    let body = json!({ "metadata": {
        "resourceVersion": resource_version,
        "annotations": { ROLLBACK_RECORD_ANNOTATION: text },
    }});
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    let marked = match api.patch_metadata(&name, &params, &Patch::Merge(body)).await {
        Ok(marked) => marked,
        Err(e) if matches!(status_code(&e), Some(409 | 404)) => {
            return Ok(Outcome::Stale(Some(read_promotion(&api, name.clone()).await.map_err(failed)?)));
        }
        Err(source) => return Err(failed(source)),
    };
    for note in announce {
        publish(ctx, observed, note);
    }
    let Some(read) = observed.promotions.get(&name) else {
        return Ok(Outcome::Stale(Some(read_promotion(&api, name.clone()).await.map_err(failed)?)));
    };
    if !copy_status {
        let written = AgentPromotion { metadata: marked.metadata, ..read.clone() };
        return Ok(Outcome::Done(Applied::Promotion(Box::new(slim_promotion(written)))));
    }
    let object = AgentPromotion {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.into()),
            resource_version: marked.metadata.resource_version,
            ..ObjectMeta::default()
        },
        spec: read.spec.clone(),
        status: Some(record.status.clone()),
    };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    match api.replace_status(&name, &params, &object).await {
        Ok(written) => Ok(Outcome::Done(Applied::Promotion(Box::new(slim_promotion(written))))),
        Err(e) if matches!(status_code(&e), Some(409 | 404)) => {
            Ok(Outcome::Stale(Some(read_promotion(&api, name.clone()).await.map_err(failed)?)))
        }
        Err(source) => Err(failed(source)),
    }
}

/// A promotion as the API server has it now.
async fn read_promotion(api: &Api<AgentPromotion>, name: String) -> kube::Result<Applied> {
    Ok(match api.get_opt(&name).await? {
        Some(promotion) => Applied::Promotion(Box::new(slim_promotion(promotion))),
        None => Applied::PromotionDeleted(name),
    })
}

fn slim_promotion(mut promotion: AgentPromotion) -> AgentPromotion {
    super::watches::slim_promotion(&mut promotion);
    promotion
}

/// Queues an Event for the publishing task.
fn publish(ctx: &Context, observed: &Observed, note: EventNote) {
    let reference = match &note.on {
        EventTarget::Agent => observed.agent.as_ref().map(|a| a.object_ref(&())),
        EventTarget::Rollback(name) => observed.rollback(name).map(|r| r.object_ref(&())),
        EventTarget::Promotion(name) => observed.promotions.get(name).map(|p| p.object_ref(&())),
        EventTarget::Channel(name) => {
            observed.channels.iter().find(|c| &c.channel.name_any() == name).map(|c| c.channel.object_ref(&()))
        }
    };
    let related = note.related.as_ref().and_then(|related| related_reference(observed, related));
    if let Some(reference) = reference {
        ctx.events.send(reference, related, note);
    }
}

/// Creates a version; its name taken means another sync got there first.
async fn create_version(ctx: &Context, observed: &Observed, version: &AgentVersion) -> Result<Outcome> {
    let (ns, agent) = (observed.namespace.as_str(), AgentKey::new(&observed.namespace, &observed.agent_name));
    let api: Api<AgentVersion> = Api::namespaced(ctx.client.clone(), ns);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let echo = Echo::Created { name: version.name_any() };
    ctx.index.expect_echo(&agent, echo.clone());
    let result = api.create(&params, version).await;
    if result.is_err() {
        ctx.index.forget_echo(&agent, &echo);
    }
    match result {
        Ok(created) => Ok(Outcome::Done(Applied::VersionCreated(Box::new(created)))),
        Err(e) if status_code(&e) == Some(409) => Ok(Outcome::Stale(None)),
        // The rest of the unit (the status that says it was published, its Event) is dropped.
        Err(kube::Error::Api(status)) if is_permanent(status.code) => {
            Ok(Outcome::Stale(Some(Applied::VersionRefused(RefusedVersion {
                number: version.spec.version,
                generation: handled_of(version).map(|h| h.generation),
                rollback: version.spec.rollback_name.clone(),
                message: status.message,
            }))))
        }
        Err(source) => Err(Error::CreateVersion { namespace: ns.into(), name: version.name_any(), source }),
    }
}

/// Creates an automatic rollback as the operator's own request; a name taken means it was made
/// before (its name is the exactly-once guard): it is read back.
async fn create_rollback(ctx: &Context, ns: &str, mut rollback: AgentRollback) -> Result<Outcome> {
    let name = rollback.name_any();
    let failed = |source| Error::WriteRollback { namespace: ns.into(), name: name.clone(), source };
    rollback.spec.requested_by = Some(ctx.identity().await.map_err(failed)?);
    let api: Api<AgentRollback> = Api::namespaced(ctx.client.clone(), ns);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let made = match api.create(&params, &rollback).await {
        Ok(made) => {
            ctx.metrics.automatic_rollbacks.inc();
            made
        }
        Err(e) if status_code(&e) == Some(409) => api.get(&name).await.map_err(failed)?,
        Err(source) => return Err(failed(source)),
    };
    Ok(Outcome::Done(Applied::Rollback(Box::new(made))))
}

/// Replaces a version's finalizers, on condition that it is still at `resource_version` (a
/// merge patch with a resourceVersion is a compare-and-swap).
async fn set_finalizers(
    ctx: &Context,
    ns: &str,
    name: String,
    resource_version: String,
    finalizers: Vec<String>,
) -> Result<Outcome> {
    let api: Api<AgentVersion> = Api::namespaced(ctx.client.clone(), ns);
    let body = json!({ "metadata": { "resourceVersion": resource_version, "finalizers": finalizers } });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    match api.patch(&name, &params, &Patch::Merge(body)).await {
        Ok(version) => Ok(Outcome::Done(Applied::VersionPatched(Box::new(version)))),
        Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(Outcome::Stale(None)),
        Err(source) => Err(Error::SetVersionFinalizers { namespace: ns.into(), name, source }),
    }
}

/// Deletes the version of that uid only (not a newer one of the same name); gone already is
/// done. The operator's `agentops.dev/in-use` finalizer is released first: the planner deletes
/// only versions it decided no channel keeps (or those of a deleted Agent).
async fn delete_version(ctx: &Context, observed: &Observed, name: String, uid: String) -> Result<Outcome> {
    let (ns, agent) = (observed.namespace.as_str(), AgentKey::new(&observed.namespace, &observed.agent_name));
    let api: Api<AgentVersion> = Api::namespaced(ctx.client.clone(), ns);
    let protected = observed
        .versions
        .iter()
        .chain(&observed.foreign_versions)
        .find(|v| v.metadata.uid.as_deref() == Some(uid.as_str()) && protection::is_protected(v));
    if let Some(version) = protected {
        let Write::SetVersionFinalizers { name, resource_version, finalizers } = protection::mark(version, false)
        else {
            unreachable!("mark writes finalizers")
        };
        if let Outcome::Stale(fresh) = set_finalizers(ctx, ns, name, resource_version, finalizers).await? {
            return Ok(Outcome::Stale(fresh));
        }
    }
    let echo = Echo::Deleted { uid: uid.clone() };
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
        ..DeleteParams::default()
    };
    ctx.index.expect_echo(&agent, echo.clone());
    let result = api.delete(&name, &params).await;
    if result.is_err() {
        ctx.index.forget_echo(&agent, &echo);
    }
    match result {
        Ok(_) => Ok(Outcome::Done(Applied::VersionDeleted(name))),
        Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Done(Applied::VersionDeleted(name))),
        Err(e) if status_code(&e) == Some(409) => Ok(Outcome::Stale(None)),
        Err(source) => Err(Error::DeleteVersion { namespace: ns.into(), name, source }),
    }
}

/// The reference of an Event's related object. A pruned version is gone from `observed` by the
/// time its Event is sent: its reference is made from the name.
fn related_reference(observed: &Observed, related: &RelatedObject) -> Option<ObjectReference> {
    match related {
        RelatedObject::Version(name) => Some(observed.versions.iter().find(|v| &v.name_any() == name).map_or_else(
            || ObjectReference {
                api_version: Some(AgentVersion::api_version(&()).into()),
                kind: Some(AgentVersion::kind(&()).into()),
                namespace: Some(observed.namespace.clone()),
                name: Some(name.clone()),
                ..ObjectReference::default()
            },
            |v| v.object_ref(&()),
        )),
        RelatedObject::Rollback(name) => observed.rollback(name).map(|r| r.object_ref(&())),
    }
}

/// Writes a rollback's record (see `plan::durable`) on the resourceVersion precondition, then
/// its status, the record's copy, on the resourceVersion the record write left: a status lost
/// or edited in between is written again by a later sync, from the record. The Events that
/// `announce` it are queued as soon as the record is written, so that they reach a watcher
/// with the status, not a round trip after it.
async fn write_rollback(
    ctx: &Context,
    observed: &Observed,
    name: String,
    resource_version: Option<String>,
    record: &RollbackRecord,
    copy_status: bool,
    announce: Vec<EventNote>,
) -> Result<Outcome> {
    let ns = observed.namespace.as_str();
    let api: Api<AgentRollback> = Api::namespaced(ctx.client.clone(), ns);
    let failed = |source| Error::WriteRollback { namespace: ns.into(), name: name.clone(), source };
    let text = record_text(record).map_err(|e| failed(kube::Error::SerdeError(e)))?;
    // A merge patch that carries resourceVersion is refused with 409 when the object changed
    // since: the compare-and-swap that runs each rollback exactly once.
    let body = json!({ "metadata": {
        "resourceVersion": resource_version,
        "annotations": { ROLLBACK_RECORD_ANNOTATION: text },
    }});
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    let marked = match api.patch_metadata(&name, &params, &Patch::Merge(body)).await {
        Ok(marked) => marked,
        Err(e) if status_code(&e) == Some(409) => {
            return Ok(Outcome::Stale(Some(read_rollback(&api, ns, name).await?)));
        }
        Err(e) if status_code(&e) == Some(404) => return Ok(Outcome::Stale(Some(Applied::RollbackDeleted(name)))),
        Err(source) => return Err(failed(source)),
    };
    for note in announce {
        publish(ctx, observed, note);
    }
    let Some(read) = observed.rollback(&name) else {
        return Ok(Outcome::Stale(Some(read_rollback(&api, ns, name).await?)));
    };
    if !copy_status {
        // What the API server has: the record written, the status as it was (see
        // `plan::Observed::fold`, which reads the status from the record).
        let written = AgentRollback { metadata: marked.metadata, ..read.clone() };
        return Ok(Outcome::Done(Applied::Rollback(Box::new(slim(written)))));
    }
    let copy = AgentRollback { status: Some(record.status.clone()), ..read.clone() };
    write_status(&api, ns, name, marked.metadata.resource_version, copy).await
}

/// Writes `rollback`'s status whole (a merge patch would keep fields the status does not
/// have), on condition that the rollback is still at `resource_version`.
async fn write_status(
    api: &Api<AgentRollback>,
    ns: &str,
    name: String,
    resource_version: Option<String>,
    rollback: AgentRollback,
) -> Result<Outcome> {
    let object = AgentRollback {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.into()),
            resource_version,
            ..ObjectMeta::default()
        },
        spec: rollback.spec,
        status: rollback.status,
    };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    match api.replace_status(&name, &params, &object).await {
        Ok(rollback) => Ok(Outcome::Done(Applied::Rollback(Box::new(slim(rollback))))),
        Err(e) if status_code(&e) == Some(409) => Ok(Outcome::Stale(Some(read_rollback(api, ns, name).await?))),
        Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Stale(Some(Applied::RollbackDeleted(name)))),
        Err(source) => Err(Error::PatchRollbackStatus { namespace: ns.into(), name, source }),
    }
}

/// A rollback as the API server has it now.
async fn read_rollback(api: &Api<AgentRollback>, ns: &str, name: String) -> Result<Applied> {
    let fresh = api.get_opt(&name).await.map_err(|source| Error::GetRollback {
        namespace: ns.into(),
        name: name.clone(),
        source,
    })?;
    Ok(match fresh {
        Some(rollback) => Applied::Rollback(Box::new(slim(rollback))),
        None => Applied::RollbackDeleted(name),
    })
}

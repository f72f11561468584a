//! What a `job` check's Job says (see `plan::evaluation`): read while the channel's version is
//! judged. A Job that failed after a container of it ran is evidence (its termination message
//! is the check's message); one whose containers never ran (an image that cannot be pulled, a
//! pod that cannot be scheduled, the deadline passed waiting) is no signal.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;
use kube::api::ListParams;

use super::context::Context;
use crate::error::status_code;
use crate::plan::evaluation::JobState;
use crate::{Error, Result};

/// Waiting reasons of a container that will not start without a change.
const CANNOT_START: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

pub async fn observe(ctx: &Context, namespace: &str, name: &str) -> Result<JobState> {
    let read = |source| Error::ReadPods { namespace: namespace.into(), name: name.into(), source };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let job = match jobs.get_opt(name).await {
        Ok(Some(job)) => job,
        Ok(None) => return Ok(JobState::Absent),
        Err(e) if status_code(&e) == Some(403) => {
            return Ok(JobState::CannotStart(format!(
                "the operator may not read Jobs in namespace {namespace} (the chart's analysis.evaluationJobs)"
            )));
        }
        Err(source) => return Err(read(source)),
    };
    let condition = |type_: &str| {
        job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_ && c.status == "True").cloned()
    };
    if condition("Complete").is_some() {
        return Ok(JobState::Complete);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(&format!("job-name={name}"))).await.map_err(read)?;
    let statuses: Vec<&ContainerStatus> =
        list.items.iter().filter_map(|p| p.status.as_ref()?.container_statuses.as_ref()).flatten().collect();
    if let Some(failed) = condition("Failed") {
        // Evidence only if a container of it ran and ended.
        let ended = statuses.iter().find_map(|c| {
            let terminated = c.state.as_ref()?.terminated.as_ref()?;
            Some(
                terminated
                    .message
                    .clone()
                    .filter(|m| !m.trim().is_empty())
                    .unwrap_or_else(|| format!("container {} exited with code {}", c.name, terminated.exit_code)),
            )
        });
        return Ok(match ended {
            Some(message) => JobState::Failed(message.trim().to_string()),
            None => JobState::CannotStart(format!(
                "Job {name} failed before any container of it ran: {}",
                failed.message.unwrap_or_else(|| failed.reason.unwrap_or_default())
            )),
        });
    }
    let waiting = statuses.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| CANNOT_START.contains(r))?;
        Some(format!("{reason}: {}", waiting.message.clone().unwrap_or_default()))
    });
    let unschedulable = list.items.iter().find_map(|p| {
        let c = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        (c.reason.as_deref() == Some("Unschedulable"))
            .then(|| format!("Unschedulable: {}", c.message.clone().unwrap_or_default()))
    });
    Ok(match waiting.or(unschedulable) {
        Some(why) => JobState::CannotStart(format!("Job {name} cannot start: {why}")),
        None => JobState::Running,
    })
}

//! `job` checks: an evaluation run once per version, as a Job in the channel's namespace, made
//! from the check's pod template. The Job mounts the version's snapshot (the channel's
//! ConfigMap holds `agent-v<N>.json` while the channel serves it) at `/etc/agent/agent.json`,
//! tells its containers which version they judge, never retries (`backoffLimit: 0`: a failing
//! evaluation is evidence, not a flake) and ends by `progressDeadlineSeconds`. It runs as the
//! ServiceAccount its template names, else the namespace's default, with no token unless the
//! template asks: never as the operator.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, EnvVar, KeyToPath, PodTemplateSpec, Volume, VolumeMount};
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::channel::ChannelObserved;
use crate::api::keys::{AGENT_LABEL, CHANNEL_LABEL, VERSION_LABEL, versioned_json_key};
use crate::api::{AgentVersion, AnalysisCheck};

/// Label on an evaluation Job: the check it runs.
pub const CHECK_LABEL: &str = "agentops.dev/check";
/// Where the snapshot is mounted in the Job's containers.
pub const SNAPSHOT_DIR: &str = "/etc/agent";

/// The name of the Job of `check` for `version` in `channel`: `<channel>-<check>-v<N>`, or,
/// when that passes 63 characters, the channel's name, the version and a hash of the check's
/// name. One name per check and version, so its create is the exactly-once guard.
pub fn job_name(channel: &str, check: &str, version: i64) -> String {
    let name = format!("{channel}-{check}-v{version}");
    if name.len() <= 63 {
        return name;
    }
    let hash: String = Sha256::digest(check.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect();
    let tail = format!("-v{version}-{hash}");
    let head: String = channel.chars().take(63 - tail.len()).collect();
    format!("{}{tail}", head.trim_end_matches('-'))
}

/// What was seen of a check's Job.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// None of that name: to be made.
    Absent,
    /// Made, not finished.
    Running,
    /// Complete: the check passed.
    Complete,
    /// Failed: the check failed, with its pod's termination message.
    Failed(String),
    /// It cannot start (its image cannot be pulled, it cannot be scheduled): no signal.
    CannotStart(String),
}

/// The Job of `check` for `version` in the channel, from the check's template. `Err` says why
/// the template is no pod template.
pub fn job(
    channel: &ChannelObserved,
    agent: &str,
    check: &AnalysisCheck,
    template: &serde_json::Value,
    version: &AgentVersion,
    deadline_seconds: i64,
) -> Result<Job, String> {
    let mut pod: PodTemplateSpec =
        serde_json::from_value(template.clone()).map_err(|e| format!("job.template is no pod template: {e}"))?;
    let channel_name = channel.channel.name_any();
    let number = version.spec.version;
    let spec = pod.spec.as_mut().ok_or("job.template has no spec")?;
    if spec.containers.is_empty() {
        return Err("job.template.spec.containers is empty".into());
    }
    // A token only if the template asks for one.
    spec.automount_service_account_token.get_or_insert(false);
    spec.restart_policy = Some("Never".into());
    spec.volumes.get_or_insert_default().push(Volume {
        name: "agentops-snapshot".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: super::channel::config_map_name(&channel.channel),
            items: Some(vec![KeyToPath { key: versioned_json_key(number), path: "agent.json".into(), mode: None }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    let env = [
        ("AGENT_NAME", agent.to_string()),
        ("AGENT_CHANNEL", channel_name.clone()),
        ("AGENT_VERSION", number.to_string()),
        ("AGENT_SNAPSHOT_HASH", version.spec.snapshot_hash.clone()),
    ];
    for container in &mut spec.containers {
        let vars = container.env.get_or_insert_default();
        vars.retain(|v| !env.iter().any(|(name, _)| v.name == *name));
        vars.extend(env.iter().map(|(name, value)| EnvVar {
            name: (*name).into(),
            value: Some(value.clone()),
            value_from: None,
        }));
        container.volume_mounts.get_or_insert_default().push(VolumeMount {
            name: "agentops-snapshot".into(),
            mount_path: SNAPSHOT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let labels = [
        (AGENT_LABEL.to_string(), agent.to_string()),
        (CHANNEL_LABEL.to_string(), channel_name.clone()),
        (VERSION_LABEL.to_string(), number.to_string()),
        (CHECK_LABEL.to_string(), check.name.clone()),
    ];
    let mut job = Job {
        spec: Some(JobSpec {
            template: pod,
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline_seconds),
            ..JobSpec::default()
        }),
        ..Job::default()
    };
    job.metadata.name = Some(job_name(&channel_name, &check.name, number));
    job.metadata.namespace = channel.channel.namespace();
    job.metadata.labels = Some(labels.into_iter().collect());
    job.metadata.owner_references = Some(vec![super::owner_reference(&channel.channel)]);
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentChannel, AgentChannelSpec, AgentDefinition};
    use crate::fixtures;

    #[test]
    fn a_job_name_fits_63_characters_and_differs_by_check() {
        assert_eq!(job_name("staging", "golden", 9), "staging-golden-v9");
        let channel = "c".repeat(50);
        let (a, b) = (job_name(&channel, &"a".repeat(40), 12), job_name(&channel, &"b".repeat(40), 12));
        assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} {b}");
        assert!(a.contains("-v12-"), "{a}");
    }

    #[test]
    fn the_job_mounts_the_versions_snapshot_and_names_it_in_its_environment() {
        let agent = fixtures::agent("support", AgentDefinition::default());
        let version = fixtures::version(&agent, 4, AgentDefinition::default(), None);
        let mut staging = AgentChannel::new(
            "staging",
            AgentChannelSpec { agent_name: "support".into(), version: None, delivery: None, analysis: None },
        );
        staging.metadata.namespace = Some("ns".into());
        staging.metadata.uid = Some("uid-staging".into());
        let channel = ChannelObserved::unobserved(staging);
        let check = AnalysisCheck {
            name: "golden".into(),
            prometheus: None,
            job: None,
            interval_seconds: 60,
            success_range: None,
            failure_limit: 0,
        };
        let template = serde_json::json!({"spec": {"containers": [{"name": "eval", "image": "evals:1",
            "env": [{"name": "AGENT_VERSION", "value": "forged"}]}]}});
        let job = job(&channel, "support", &check, &template, &version, 600).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("staging-golden-v4"));
        let spec = job.spec.unwrap();
        assert_eq!((spec.backoff_limit, spec.active_deadline_seconds), (Some(0), Some(600)));
        let pod = spec.template.spec.unwrap();
        assert_eq!((pod.automount_service_account_token, pod.restart_policy.as_deref()), (Some(false), Some("Never")));
        let volume = &pod.volumes.unwrap()[0];
        let source = volume.config_map.as_ref().unwrap();
        assert_eq!(source.name, "staging-channel");
        assert_eq!(source.items.as_ref().unwrap()[0].key, "agent-v4.json");
        let env = pod.containers[0].env.clone().unwrap();
        let value = |name: &str| env.iter().find(|v| v.name == name).and_then(|v| v.value.clone());
        assert_eq!(value("AGENT_VERSION").as_deref(), Some("4"));
        assert_eq!(value("AGENT_CHANNEL").as_deref(), Some("staging"));
        assert_eq!(env.iter().filter(|v| v.name == "AGENT_VERSION").count(), 1);
        assert_eq!(pod.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path, "/etc/agent");

        let refused =
            super::job(&channel, "support", &check, &serde_json::json!({"spec": {"containers": []}}), &version, 1);
        assert!(refused.unwrap_err().contains("containers is empty"));
    }
}

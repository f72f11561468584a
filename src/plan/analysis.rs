//! Whether a version is good in a channel, by the built-in rollout check: the channel's
//! workloads roll out to the version within `progressDeadlineSeconds`, then run `bakeSeconds`
//! with no container restarting. The verdict (`Healthy` or `Failed`) is durable: the label
//! `health.agentops.dev/<channel>` on the version, with its reason in the annotation of the
//! same key. What is measured on the way (when the rollout began, when the bake began) lives
//! in the channel's status only and starts again after a status loss; a verdict once written is
//! never recomputed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use kube::ResourceExt;

use super::channel::ChannelObserved;
use super::checks::{self, Measurement, Signal, Standing};
use super::delivery::DeliveryState;
use super::evaluation;
use super::moves::verdict;
use super::{Observed, Write};
use crate::api::conditions::reasons;
use crate::api::{AnalysisPhase, AnalysisStatus};

pub const HEALTHY: &str = "Healthy";
pub const FAILED: &str = "Failed";

/// Where the judgement of the version a channel serves stands, and the verdict to record if
/// one was reached.
#[derive(Default)]
pub struct Judgement {
    pub status: Option<AnalysisStatus>,
    pub verdict: Option<Write>,
    /// The evaluation Jobs to make (see `evaluation`).
    pub jobs: Vec<Write>,
}

/// Judges `serving` in the channel, delivered as `state` says after this unit's writes.
/// `blocked`: the channel cannot serve its desired version (its pin is missing): nothing is
/// judged meanwhile.
pub fn judge(
    observed: &Observed,
    channel: &ChannelObserved,
    serving: Option<i64>,
    state: &DeliveryState,
    blocked: bool,
    now: &Time,
) -> Judgement {
    let name = channel.channel.name_any();
    let existing = channel.channel.status.as_ref().and_then(|s| s.analysis.clone());
    let (Some(number), false) = (serving, blocked) else {
        return Judgement { status: existing.filter(|a| Some(a.version) == serving), ..Judgement::default() };
    };
    let Some(version) = observed.version(number) else {
        return Judgement { status: existing.filter(|a| a.version == number), ..Judgement::default() };
    };
    let same = existing.filter(|a| a.version == number);
    if let Some(found) = verdict(observed, number, &name) {
        let phase = if found == HEALTHY { AnalysisPhase::Healthy } else { AnalysisPhase::Failed };
        let why = version.annotations().get(&super::moves::health_key(&name)).cloned();
        let message = why.unwrap_or_else(|| format!("Version {number} is {found} in channel {name}."));
        // The times as they were: a verdict is no reason to write the status again.
        let (start_time, delivered_time, checks) =
            same.map_or((None, None, Vec::new()), |a| (a.start_time, a.delivered_time, a.checks));
        let status =
            AnalysisStatus { version: number, phase, start_time, delivered_time, message: Some(message), checks };
        return Judgement { status: Some(status), ..Judgement::default() };
    }
    let running = same.filter(|a| a.phase != AnalysisPhase::Healthy && a.phase != AnalysisPhase::Failed);
    let start = running.as_ref().and_then(|a| a.start_time.clone()).unwrap_or_else(|| now.clone());
    let analysis = channel.channel.spec.analysis.clone().unwrap_or_default();
    let seconds = |n: i64| SignedDuration::from_secs(n);
    let measured = running.as_ref().map(|a| a.checks.clone()).unwrap_or_default();
    let running_status = |phase, delivered_time: Option<Time>, message: String| AnalysisStatus {
        version: number,
        phase,
        start_time: Some(start.clone()),
        delivered_time,
        message: Some(message),
        checks: measured.clone(),
    };
    let record = |healthy: bool, message: String| Judgement {
        status: Some(running_status(AnalysisPhase::Running, None, message.clone())),
        jobs: Vec::new(),
        verdict: Some(Write::JudgeVersion {
            name: version.name_any(),
            uid: version.metadata.uid.clone().unwrap_or_default(),
            channel: name.clone(),
            verdict: if healthy { HEALTHY } else { FAILED },
            message,
        }),
    };
    // Since the version was delivered (its bake began), a container restarted: that fails it,
    // even if the crash has its workload rolling again.
    let delivered_time = running.as_ref().and_then(|a| a.delivered_time.clone());
    let restart = delivered_time.as_ref().and_then(|since| channel.last_restart.clone().filter(|r| r.0 >= since.0));
    if let Some(restart) = restart {
        let message = format!(
            "Version {number} failed the rollout check in channel {name}: a container restarted at {} while it baked.",
            restart.0
        );
        return record(false, message);
    }
    match state {
        DeliveryState::Delivered => {
            // Restarts before it was first seen delivered were during its rollout.
            let baked_from = delivered_time.unwrap_or_else(|| now.clone());
            // Each job check's Job still to be made is made now; a template that is no pod
            // template is no evidence about the version: no signal.
            let (mut jobs, mut measurements) = (Vec::new(), channel.measurements.clone());
            for check in analysis.checks.iter().filter(|c| channel.jobs_to_make.contains(&c.name)) {
                let Some(template) = check.job.as_ref().map(|j| &j.template) else { continue };
                let deadline = analysis.progress_deadline_seconds;
                match evaluation::job(channel, &observed.agent_name, check, template, version, deadline) {
                    Ok(job) => jobs.push(Write::CreateJob {
                        channel: name.clone(),
                        check: check.name.clone(),
                        job: Box::new(job),
                    }),
                    Err(why) => measurements.push(Measurement {
                        check: check.name.clone(),
                        at: now.clone(),
                        signal: Signal::Unavailable(why),
                    }),
                }
            }
            let (checks, standing) = checks::fold(&analysis, &measured, &measurements);
            if let Standing::Failed(why) = &standing {
                return record(false, format!("Version {number} failed in channel {name}: {why}"));
            }
            let healthy_at = baked_from.0 + seconds(analysis.bake_seconds);
            let (phase, message) = match standing {
                Standing::Passing if now.0 >= healthy_at => {
                    let passed = match analysis.checks.len() {
                        0 => String::new(),
                        n => format!(", and its {n} check(s) passed"),
                    };
                    let message = format!(
                        "Version {number} rolled out in channel {name} and ran {} s with no container restarting{passed}.",
                        analysis.bake_seconds
                    );
                    return record(true, message);
                }
                // No signal fails nothing: the version waits, and is judged once one comes.
                Standing::Unavailable(why) => (AnalysisPhase::Unknown, format!("No signal: {why}")),
                Standing::Measuring if now.0 >= healthy_at => {
                    (AnalysisPhase::Running, "Baked; waiting for the checks' first measurements.".to_string())
                }
                _ => (AnalysisPhase::Running, format!("Baking: Healthy at {healthy_at} unless a check fails.")),
            };
            let mut status = running_status(phase, Some(baked_from), message);
            status.checks = checks;
            Judgement { status: Some(status), jobs, ..Judgement::default() }
        }
        DeliveryState::Blocked { reason, message } if *reason == reasons::ROLLOUT_STUCK => {
            record(false, format!("Version {number} failed the rollout check in channel {name}: {message}"))
        }
        DeliveryState::InProgress(progress) => {
            let deadline = start.0 + seconds(analysis.progress_deadline_seconds);
            // The deadline is the first rollout's; a workload rolling again while the version
            // bakes (scaled, a pod lost) keeps its bake, and the evidence of a restart.
            if delivered_time.is_none() && now.0 > deadline {
                let message = format!(
                    "Version {number} failed the rollout check in channel {name}: not rolled out within {} s ({progress}).",
                    analysis.progress_deadline_seconds
                );
                return record(false, message);
            }
            let message = format!("Rolling out: {progress}");
            Judgement {
                status: Some(running_status(AnalysisPhase::Running, delivered_time, message)),
                ..Judgement::default()
            }
        }
        // Something in the way that is no evidence about the version (a workload missing, a
        // ConfigMap taken): the signal is unavailable.
        DeliveryState::Blocked { message, .. } => {
            let status =
                running_status(AnalysisPhase::Unknown, None, format!("The rollout cannot be judged: {message}"));
            Judgement { status: Some(status), ..Judgement::default() }
        }
    }
}

/// Whether a version in this phase is still being judged: measured, and looked at again until
/// its verdict (`Unknown` waits for a signal).
pub fn judging(phase: AnalysisPhase) -> bool {
    matches!(phase, AnalysisPhase::Running | AnalysisPhase::Unknown)
}

/// The newest version Healthy in the channel.
pub fn last_known_good(observed: &Observed, channel: &str) -> Option<i64> {
    observed.versions.iter().rev().map(|v| v.spec.version).find(|n| verdict(observed, *n, channel) == Some(HEALTHY))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::conditions::{HEALTHY as HEALTHY_CONDITION, HasConditions};
    use crate::api::{AgentChannel, AgentChannelSpec, AgentDefinition, WorkloadKind, WorkloadRef};
    use crate::fixtures;
    use crate::plan::delivery::{ConfigMapState, Found, Held, Rollout, WorkloadState};
    use crate::plan::{Applied, Step, channel};

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    /// Agent `support` at versions 1..=3 and channel `prod` following it, with one Deployment
    /// in `state`, its ConfigMap holding version 3.
    fn observed(found: Found) -> Observed {
        let agent = fixtures::agent("support", AgentDefinition::default());
        let versions: Vec<_> =
            (1..=3).map(|n| fixtures::version(&agent, n, AgentDefinition::default(), None)).collect();
        let held = Held::of(&versions[2]);
        let mut observed = Observed::new("ns".into(), "support".into(), Some(agent), versions, vec![]);
        let workload = WorkloadRef { kind: WorkloadKind::Deployment, name: "prod-runtime".into() };
        let delivery = crate::api::DeliverySpec { config_map_name: None, restart: vec![workload.clone()] };
        let mut prod = AgentChannel::new(
            "prod",
            AgentChannelSpec { agent_name: "support".into(), version: None, delivery: Some(delivery), analysis: None },
        );
        prod.metadata.namespace = Some("ns".into());
        prod.metadata.uid = Some("uid-prod".into());
        prod.metadata.generation = Some(1);
        let config_map = ConfigMapState {
            name: "prod-channel".into(),
            uid: Some("cm".into()),
            resource_version: Some("9".into()),
            owner_uid: Some("uid-prod".into()),
            held: Some(held),
            replacing: None,
            edited_by: None,
            lacks_versioned_key: false,
        };
        observed.channels = vec![ChannelObserved {
            channel: prod,
            config_map: Some(config_map),
            workloads: vec![WorkloadState { workload, found }],
            last_restart: None,
            measurements: Vec::new(),
            jobs_to_make: Vec::new(),
        }];
        observed
    }

    fn rolled_out() -> Found {
        let agent = fixtures::agent("support", AgentDefinition::default());
        let v3 = fixtures::version(&agent, 3, AgentDefinition::default(), None);
        Found::Present { held: Some(Held::of(&v3)), rollout: Rollout::Done }
    }

    /// Decides and applies the channel's units at `now` until none is left.
    fn settle(observed: &mut Observed, now: &Time) {
        for _ in 0..20 {
            let steps = channel::decide(observed, now);
            if steps.is_empty() {
                return;
            }
            for step in steps {
                let Step::One(write) = step else { panic!("{step:?}") };
                let applied = match write {
                    Write::PatchChannelStatus { status, .. } => {
                        let mut channel = observed.channels[0].channel.clone();
                        // As the API server keeps it: times to the second.
                        let kept = serde_json::from_value(serde_json::to_value(&*status).unwrap()).unwrap();
                        channel.status = Some(kept);
                        Applied::Channel(Box::new(channel))
                    }
                    Write::JudgeVersion { name, verdict, message, channel, .. } => {
                        let mut version = observed.versions.iter().find(|v| v.name_any() == name).unwrap().clone();
                        let key = crate::plan::moves::health_key(&channel);
                        version.metadata.labels.get_or_insert_default().insert(key.clone(), verdict.into());
                        version.metadata.annotations = Some(BTreeMap::from([(key, message)]));
                        Applied::VersionPatched(Box::new(version))
                    }
                    Write::Event(_) => Applied::Nothing,
                    other => panic!("unexpected {other:?}"),
                };
                observed.fold(applied);
            }
        }
        panic!("did not settle");
    }

    fn healthy(observed: &Observed) -> (String, String) {
        let status = observed.channels[0].channel.status.as_ref().unwrap();
        let c = status.condition(HEALTHY_CONDITION).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_delivered_version_is_healthy_after_its_bake_with_no_restart_and_stays_so() {
        let mut observed = observed(rolled_out());
        settle(&mut observed, &at(1_000));
        assert!(channel::decide(&observed, &at(1_001)).is_empty(), "a bake needs no writes until it ends");
        let analysis = observed.channels[0].channel.status.as_ref().unwrap().analysis.clone().unwrap();
        assert_eq!(
            (analysis.version, analysis.phase, analysis.delivered_time),
            (3, AnalysisPhase::Running, Some(at(1_000)))
        );
        assert_eq!(healthy(&observed), ("Unknown".into(), reasons::ANALYSING.into()));
        settle(&mut observed, &at(1_299));
        assert_eq!(verdict(&observed, 3, "prod"), None, "not before bakeSeconds (300)");
        settle(&mut observed, &at(1_300));
        assert_eq!(verdict(&observed, 3, "prod"), Some(HEALTHY));
        let status = observed.channels[0].channel.status.clone().unwrap();
        assert_eq!((status.analysis.unwrap().phase, status.last_known_good_version), (AnalysisPhase::Healthy, Some(3)));
        assert_eq!(healthy(&observed), ("True".into(), reasons::ANALYSIS_PASSED.into()));
        assert!(channel::decide(&observed, &at(1_301)).is_empty(), "a judged version needs no more writes");
        // A restart after the verdict changes nothing: a verdict is never recomputed.
        observed.channels[0].last_restart = Some(at(1_400));
        settle(&mut observed, &at(1_500));
        assert_eq!(verdict(&observed, 3, "prod"), Some(HEALTHY));
    }

    #[test]
    fn a_restart_while_baking_a_missed_deadline_and_a_stuck_rollout_fail_the_version() {
        let mut restarted = observed(rolled_out());
        settle(&mut restarted, &at(1_000));
        restarted.channels[0].last_restart = Some(at(1_010));
        settle(&mut restarted, &at(1_020));
        assert_eq!(verdict(&restarted, 3, "prod"), Some(FAILED));
        assert_eq!(healthy(&restarted), ("False".into(), reasons::ANALYSIS_FAILED.into()));
        let message = restarted.channels[0].channel.status.as_ref().unwrap().analysis.clone().unwrap().message.unwrap();
        assert!(message.contains("a container restarted"), "{message}");

        let progressing =
            Found::Present { held: rolled_out_held(), rollout: Rollout::Progressing("1 of 2 updated".into()) };
        let mut slow = observed(progressing);
        settle(&mut slow, &at(1_000));
        settle(&mut slow, &at(1_600));
        assert_eq!(verdict(&slow, 3, "prod"), None, "within progressDeadlineSeconds (600)");
        settle(&mut slow, &at(1_601));
        assert_eq!(verdict(&slow, 3, "prod"), Some(FAILED));

        // A crash that has the workload rolling again still fails the version it baked, whether
        // the restart is seen at once or after a look at the workload rolling.
        for seen_later in [false, true] {
            let mut crashed = observed(rolled_out());
            settle(&mut crashed, &at(1_000));
            let progressing =
                Found::Present { held: rolled_out_held(), rollout: Rollout::Progressing("0 available".into()) };
            crashed.channels[0].workloads[0].found = progressing;
            if seen_later {
                settle(&mut crashed, &at(1_700));
                assert_eq!(verdict(&crashed, 3, "prod"), None, "the deadline is the first rollout's");
            }
            crashed.channels[0].last_restart = Some(at(1_005));
            settle(&mut crashed, &at(1_710));
            assert_eq!(verdict(&crashed, 3, "prod"), Some(FAILED));
        }

        let stuck = Found::Present { held: rolled_out_held(), rollout: Rollout::Stuck("deadline exceeded".into()) };
        let mut stuck = observed(stuck);
        settle(&mut stuck, &at(1_000));
        assert_eq!(verdict(&stuck, 3, "prod"), Some(FAILED));
    }

    fn rolled_out_held() -> Option<Held> {
        match rolled_out() {
            Found::Present { held, .. } => held,
            _ => None,
        }
    }

    #[test]
    fn a_check_judges_the_bake_a_failing_value_fails_and_no_signal_waits() {
        use crate::api::{AnalysisCheck, AnalysisSpec, PrometheusCheck, SuccessRange};
        use crate::plan::checks::{Measurement, Signal};
        let with_check = || {
            let mut observed = observed(rolled_out());
            let check = AnalysisCheck {
                name: "error-rate".into(),
                prometheus: Some(PrometheusCheck { address: "http://p:9090".into(), query: "q".into() }),
                job: None,
                interval_seconds: 10,
                success_range: Some(SuccessRange { min: None, max: Some(0.1) }),
                failure_limit: 0,
            };
            observed.channels[0].channel.spec.analysis =
                Some(AnalysisSpec { bake_seconds: 60, checks: vec![check], ..AnalysisSpec::default() });
            settle(&mut observed, &at(1_000));
            observed
        };
        let measure = |observed: &mut Observed, second: i64, signal: Signal| {
            observed.channels[0].measurements =
                vec![Measurement { check: "error-rate".into(), at: at(second), signal }];
            settle(observed, &at(second));
        };

        let mut good = with_check();
        measure(&mut good, 1_010, Signal::Value(0.0));
        measure(&mut good, 1_060, Signal::Value(0.05));
        assert_eq!(verdict(&good, 3, "prod"), Some(HEALTHY));

        let mut bad = with_check();
        measure(&mut bad, 1_010, Signal::Value(0.0));
        measure(&mut bad, 1_020, Signal::Value(0.5));
        assert_eq!(verdict(&bad, 3, "prod"), Some(FAILED));
        let why = bad.versions[2].annotations().get("health.agentops.dev/prod").cloned().unwrap_or_default();
        assert!(why.contains("error-rate") && why.contains("0.5"), "{why}");

        // No signal, even past the bake: no verdict, Healthy Unknown, until a value comes.
        let mut silent = with_check();
        measure(&mut silent, 1_010, Signal::Unavailable("an empty result".into()));
        measure(&mut silent, 1_100, Signal::Unavailable("an empty result".into()));
        assert_eq!(verdict(&silent, 3, "prod"), None);
        assert_eq!(healthy(&silent), ("Unknown".into(), reasons::SIGNAL_UNAVAILABLE.into()));
        let checks = silent.channels[0].channel.status.as_ref().unwrap().analysis.clone().unwrap().checks;
        assert_eq!((checks[0].phase, checks[0].failures), (AnalysisPhase::Unknown, 0));
        measure(&mut silent, 1_110, Signal::Value(0.0));
        assert_eq!(verdict(&silent, 3, "prod"), Some(HEALTHY));
    }

    #[test]
    fn a_job_check_makes_its_job_once_delivered_and_its_outcome_judges_the_version() {
        use crate::api::{AnalysisCheck, AnalysisSpec, JobCheck};
        use crate::plan::checks::{Measurement, Signal};
        let with_job = || {
            let mut observed = observed(rolled_out());
            let template = serde_json::json!({"spec": {"containers": [{"name": "eval", "image": "evals:1"}]}});
            let check = AnalysisCheck {
                name: "golden".into(),
                prometheus: None,
                job: Some(JobCheck { template }),
                interval_seconds: 60,
                success_range: None,
                failure_limit: 0,
            };
            observed.channels[0].channel.spec.analysis =
                Some(AnalysisSpec { bake_seconds: 60, checks: vec![check], ..AnalysisSpec::default() });
            settle(&mut observed, &at(1_000));
            observed
        };
        let mut made = with_job();
        made.channels[0].jobs_to_make = vec!["golden".into()];
        let steps = channel::decide(&made, &at(1_001));
        let names: Vec<String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::One(Write::CreateJob { job, .. }) => job.metadata.name.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["prod-golden-v3"]);
        // Made, it is not made again in the same sync.
        made.fold(Applied::JobMade { channel: "prod".into(), check: "golden".into() });
        let again = channel::decide(&made, &at(1_001));
        assert!(!again.iter().any(|s| matches!(s, Step::One(Write::CreateJob { .. }))), "{again:?}");

        let outcome = |signal: Signal| {
            let mut observed = with_job();
            observed.channels[0].measurements = vec![Measurement { check: "golden".into(), at: at(1_010), signal }];
            settle(&mut observed, &at(1_010));
            observed.channels[0].measurements.clear();
            settle(&mut observed, &at(1_060));
            observed
        };
        assert_eq!(verdict(&outcome(Signal::Passed), 3, "prod"), Some(HEALTHY));
        let failed = outcome(Signal::Failed("2 of 5 golden answers wrong".into()));
        assert_eq!(verdict(&failed, 3, "prod"), Some(FAILED));
        let why = failed.versions[2].annotations().get("health.agentops.dev/prod").cloned().unwrap_or_default();
        assert!(why.contains("golden") && why.contains("2 of 5 golden answers wrong"), "{why}");
        let silent = outcome(Signal::Unavailable("ErrImagePull".into()));
        assert_eq!(verdict(&silent, 3, "prod"), None);
        assert_eq!(healthy(&silent), ("Unknown".into(), reasons::SIGNAL_UNAVAILABLE.into()));
    }

    #[test]
    fn what_is_no_evidence_about_the_version_judges_nothing() {
        let mut missing = observed(Found::Missing);
        settle(&mut missing, &at(1_000));
        settle(&mut missing, &at(100_000));
        assert_eq!(verdict(&missing, 3, "prod"), None);
        assert_eq!(healthy(&missing), ("Unknown".into(), reasons::SIGNAL_UNAVAILABLE.into()));
    }
}

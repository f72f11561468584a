//! A channel's listed checks (`spec.analysis.checks`): when each is due a measurement, and what
//! its measurements so far say. The operator measures (see `controller::prometheus`); this
//! decides. A measurement with no signal (the provider unreachable, an empty result, NaN) is
//! never a failure (behaviour 16): the check is `Unknown` until a value comes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;

use crate::api::{AnalysisCheck, AnalysisPhase, AnalysisSpec, CheckStatus};

/// One measurement of a check, taken at `at`.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub check: String,
    pub at: Time,
    pub signal: Signal,
}

/// What a measurement found.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A prometheus check's value.
    Value(f64),
    /// A job check's Job completed.
    Passed,
    /// A job check's Job failed: its message.
    Failed(String),
    /// No signal, and why (the provider's error, an empty result, NaN).
    Unavailable(String),
}

/// Where the checks stand together.
#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    /// A check failed: its message names it and the value.
    Failed(String),
    /// Every check's last measurement passed.
    Passing,
    /// A check's last measurement had no signal: why.
    Unavailable(String),
    /// A check has no measurement yet.
    Measuring,
}

/// The checks of `analysis` due a measurement at `now`, given their statuses so far: a job
/// check's Job is looked at each time, a prometheus check every `intervalSeconds`.
pub fn due<'a>(analysis: &'a AnalysisSpec, statuses: &[CheckStatus], now: &Time) -> Vec<&'a AnalysisCheck> {
    analysis
        .checks
        .iter()
        .filter(|check| {
            let last = statuses.iter().find(|s| s.name == check.name).and_then(|s| s.last_time.as_ref());
            check.job.is_some()
                || last.is_none_or(|last| now.0 >= last.0 + SignedDuration::from_secs(check.interval_seconds))
        })
        .collect()
}

/// The checks' statuses with `measurements` folded in (each check's own, in order), and where
/// they stand. A check's failures beyond its `failureLimit` fail it; a failed check stays so.
pub fn fold(
    analysis: &AnalysisSpec,
    statuses: &[CheckStatus],
    measurements: &[Measurement],
) -> (Vec<CheckStatus>, Standing) {
    let mut folded = Vec::with_capacity(analysis.checks.len());
    let mut standing = Standing::Passing;
    for check in &analysis.checks {
        let mut status = statuses.iter().find(|s| s.name == check.name).cloned().unwrap_or_else(|| CheckStatus {
            name: check.name.clone(),
            phase: AnalysisPhase::Running,
            measurements: 0,
            failures: 0,
            last_value: None,
            last_time: None,
            message: None,
        });
        // A measurement is folded in once: a sync folds the same ones into each unit's status.
        // Compared to the second, as the API server keeps the status's times: a finer one
        // would be new again after each status write, and the sync would never settle.
        for measurement in measurements.iter().filter(|m| m.check == check.name) {
            let new = status.last_time.as_ref().is_none_or(|last| measurement.at.0.as_second() > last.0.as_second());
            if new && status.phase != AnalysisPhase::Failed {
                record(check, &mut status, measurement);
            }
        }
        standing = worse(
            standing,
            match status.phase {
                AnalysisPhase::Failed => Standing::Failed(status.message.clone().unwrap_or_default()),
                AnalysisPhase::Unknown => Standing::Unavailable(status.message.clone().unwrap_or_default()),
                _ if status.measurements == 0 => Standing::Measuring,
                _ => Standing::Passing,
            },
        );
        folded.push(status);
    }
    (folded, standing)
}

/// The worse of two standings: a failure over no signal, over no measurement yet, over passing.
fn worse(a: Standing, b: Standing) -> Standing {
    let rank = |s: &Standing| match s {
        Standing::Failed(_) => 3,
        Standing::Unavailable(_) => 2,
        Standing::Measuring => 1,
        Standing::Passing => 0,
    };
    if rank(&b) > rank(&a) { b } else { a }
}

fn record(check: &AnalysisCheck, status: &mut CheckStatus, measurement: &Measurement) {
    status.last_time = Some(measurement.at.clone());
    match &measurement.signal {
        Signal::Unavailable(why) => {
            status.phase = AnalysisPhase::Unknown;
            status.message = Some(format!("Check {}: no signal: {why}", check.name));
        }
        // A Job runs once: one measurement, whatever the times it is looked at.
        Signal::Passed => {
            (status.phase, status.measurements) = (AnalysisPhase::Running, 1);
            status.last_value = Some("Complete".into());
            status.message = Some(format!("Check {}: the evaluation Job completed.", check.name));
        }
        Signal::Failed(why) => {
            (status.phase, status.measurements, status.failures) = (AnalysisPhase::Failed, 1, 1);
            status.last_value = Some("Failed".into());
            status.message = Some(format!("Check {} failed: the evaluation Job failed: {why}", check.name));
        }
        Signal::Value(value) => {
            status.measurements += 1;
            status.last_value = Some(value.to_string());
            let range = check.success_range.as_ref();
            let passed =
                range.is_none_or(|r| r.min.is_none_or(|min| *value >= min) && r.max.is_none_or(|max| *value <= max));
            if passed {
                status.phase = AnalysisPhase::Running;
                status.message = Some(format!("Check {}: {value} passed.", check.name));
                return;
            }
            status.failures += 1;
            let bounds = describe(range);
            if status.failures > check.failure_limit {
                status.phase = AnalysisPhase::Failed;
                status.message = Some(format!(
                    "Check {} failed: {value} is outside {bounds} ({} failed measurement(s), failureLimit {}).",
                    check.name, status.failures, check.failure_limit
                ));
            } else {
                status.phase = AnalysisPhase::Running;
                status.message = Some(format!(
                    "Check {}: {value} is outside {bounds} ({} of {} failure(s) tolerated).",
                    check.name, status.failures, check.failure_limit
                ));
            }
        }
    }
}

/// A success range as text, `[min, max]` with an open end as such.
fn describe(range: Option<&crate::api::SuccessRange>) -> String {
    let end = |v: Option<f64>, open: &str| v.map_or_else(|| open.to_string(), |v| v.to_string());
    match range {
        Some(r) => format!("[{}, {}]", end(r.min, "-inf"), end(r.max, "+inf")),
        None => "any value".into(),
    }
}

/// The query of a prometheus check with `$agent`, `$channel` and `$version` replaced.
pub fn query(template: &str, agent: &str, channel: &str, version: i64) -> String {
    template.replace("$agent", agent).replace("$channel", channel).replace("$version", &version.to_string())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{PrometheusCheck, SuccessRange};

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn analysis(failure_limit: i64) -> AnalysisSpec {
        let check = AnalysisCheck {
            name: "error-rate".into(),
            prometheus: Some(PrometheusCheck { address: "http://p:9090".into(), query: "q".into() }),
            job: None,
            interval_seconds: 60,
            success_range: Some(SuccessRange { min: None, max: Some(0.02) }),
            failure_limit,
        };
        AnalysisSpec { checks: vec![check], ..AnalysisSpec::default() }
    }

    fn measured(second: i64, signal: Signal) -> Measurement {
        Measurement { check: "error-rate".into(), at: at(second), signal }
    }

    #[test]
    fn a_check_is_due_at_once_and_then_each_interval() {
        let analysis = analysis(0);
        assert_eq!(due(&analysis, &[], &at(0)).len(), 1);
        let (statuses, _) = fold(&analysis, &[], &[measured(0, Signal::Value(0.0))]);
        assert!(due(&analysis, &statuses, &at(59)).is_empty());
        assert_eq!(due(&analysis, &statuses, &at(60)).len(), 1);
    }

    #[test]
    fn values_outside_the_range_fail_past_the_failure_limit_and_a_failure_stays() {
        let analysis = analysis(1);
        let (statuses, standing) = fold(&analysis, &[], &[measured(0, Signal::Value(0.01))]);
        assert_eq!(standing, Standing::Passing);
        let (statuses, standing) = fold(&analysis, &statuses, &[measured(60, Signal::Value(0.5))]);
        assert_eq!(standing, Standing::Passing, "one failure is tolerated");
        let (statuses, standing) = fold(&analysis, &statuses, &[measured(120, Signal::Value(0.7))]);
        let Standing::Failed(message) = standing else { panic!("{standing:?}") };
        assert!(
            message.contains("error-rate") && message.contains("0.7") && message.contains("[-inf, 0.02]"),
            "{message}"
        );
        let (statuses, standing) = fold(&analysis, &statuses, &[measured(180, Signal::Value(0.0))]);
        assert!(matches!(standing, Standing::Failed(_)));
        assert_eq!((statuses[0].measurements, statuses[0].failures), (3, 2));
        let (again, _) = fold(&analysis, &statuses, &[measured(120, Signal::Value(0.7))]);
        assert_eq!(again, statuses, "a measurement folded in twice counts once");
        // Also when its time has a fraction of a second the status, as stored, has lost.
        let fine = Measurement {
            check: "error-rate".into(),
            at: Time(Timestamp::from_millisecond(200_500).unwrap()),
            signal: Signal::Value(0.0),
        };
        let (once, _) = fold(&analysis, &[], std::slice::from_ref(&fine));
        let stored: Vec<CheckStatus> = serde_json::from_value(serde_json::to_value(&once).unwrap()).unwrap();
        let (twice, _) = fold(&analysis, &stored, &[fine]);
        assert_eq!(twice[0].measurements, 1, "a measurement counted again after its status was stored");
    }

    #[test]
    fn no_signal_never_fails_and_a_value_after_it_counts_again() {
        let analysis = analysis(0);
        assert_eq!(fold(&analysis, &[], &[]).1, Standing::Measuring);
        let (statuses, standing) = fold(&analysis, &[], &[measured(0, Signal::Unavailable("an empty result".into()))]);
        let Standing::Unavailable(message) = standing else { panic!("{standing:?}") };
        assert!(message.contains("an empty result"), "{message}");
        assert_eq!((statuses[0].measurements, statuses[0].failures), (0, 0));
        let (_, standing) = fold(&analysis, &statuses, &[measured(60, Signal::Value(0.0))]);
        assert_eq!(standing, Standing::Passing);
    }

    #[test]
    fn a_query_names_its_agent_channel_and_version() {
        assert_eq!(
            query(r#"sum(rate(errors{agent="$agent",channel="$channel",version="$version"}[1m]))"#, "a", "c", 7),
            r#"sum(rate(errors{agent="a",channel="c",version="7"}[1m]))"#
        );
    }
}

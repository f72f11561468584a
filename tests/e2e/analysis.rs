//! A channel's analysis against a real Prometheus (started beside the control plane,
//! `PROMETHEUS_URL`), by the operator as a process: a check that fails fails the version and the
//! operator rolls the channel back to its last known good by an ordinary AgentRollback, once;
//! a missing signal fails nothing; `onFailure: Hold` holds; a quarantined version is not served
//! again. The queries are PromQL expressions of the version (`vector($version)`), so the values
//! are Prometheus's own answers with no scrape to wait for; the node test scrapes a runtime.

use std::time::Duration;

use agent_operator::api::{AgentChannel, AnalysisPhase, RollbackPhase};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::rollback::{Setup, setup};
use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(60);

fn prometheus() -> String {
    std::env::var("PROMETHEUS_URL").expect("PROMETHEUS_URL: run through tests/control-plane/run.sh")
}

/// Server-side applies channel `name` of Agent `support` with these analysis and pin.
async fn apply_channel(s: &Setup, name: &str, analysis: Value, version: Option<i64>) {
    let mut spec = json!({"agentName": "support", "analysis": analysis});
    if let Some(version) = version {
        spec["version"] = json!(version);
    }
    let body = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel", "metadata": {"name": name},
        "spec": spec});
    let api: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    api.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.expect("channel applied");
}

/// A check of the version's own number: version N measures N.
fn version_check(max: f64) -> Value {
    json!({"name": "quality", "prometheus": {"address": prometheus(), "query": "vector($version)"},
        "intervalSeconds": 1, "successRange": {"max": max}})
}

async fn verdict(s: &Setup, number: i64, channel: &str) -> (String, String) {
    eventually(WAIT, || async {
        let versions = s.versions("support").await;
        let version = versions.into_iter().find(|v| v.spec.version == number)?;
        let key = format!("health.agentops.dev/{channel}");
        Some((version.labels().get(&key)?.clone(), version.annotations().get(&key).cloned().unwrap_or_default()))
    })
    .await
}

/// Waits until channel `name` serves `version` and `until` holds of it; returns it.
async fn channel_where(s: &Setup, name: &str, until: impl Fn(&AgentChannel) -> bool) -> AgentChannel {
    let api: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(WAIT, || async {
        let channel = api.get(name).await.ok()?;
        until(&channel).then_some(channel)
    })
    .await
}

fn condition(channel: &AgentChannel, type_: &str) -> (String, String, String) {
    let c = channel.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn serving(channel: &AgentChannel) -> Option<i64> {
    channel.status.as_ref().and_then(|s| s.version)
}

#[tokio::test]
async fn a_failing_check_rolls_the_channel_back_once_and_the_failed_version_is_not_served_there_again() {
    let s = setup("e2e-analysis-rollback").await;
    s.agent_with_versions("support", 1, 10).await;
    apply_channel(&s, "staging", json!({"bakeSeconds": 2, "checks": [version_check(1.0)]}), None).await;
    let (healthy, why) = verdict(&s, 1, "staging").await;
    assert_eq!(healthy, "Healthy", "{why}");
    assert!(why.contains("its 1 check(s) passed"), "{why}");

    // Version 2 measures 2, above the range: it fails, and the operator rolls staging back.
    s.apply_agent("support", json!({"instructions": "i2", "revisionHistoryLimit": 10})).await;
    let (failed, why) = verdict(&s, 2, "staging").await;
    assert_eq!(failed, "Failed", "{why}");
    assert!(why.contains("Check quality failed: 2 is outside [-inf, 1]"), "{why}");
    s.expect_outcome("staging-auto-v2", Ok(1), "the automatic rollback to the last known good").await;
    let auto = s.rollbacks().get("staging-auto-v2").await.unwrap();
    assert_eq!(
        (auto.spec.channel.as_deref(), auto.spec.expected_active_version, auto.spec.reason.as_deref()),
        (Some("staging"), Some(2), Some(why.as_str()))
    );
    let operator = format!(":{}", crate::support::chart_identity().service_account);
    let requested_by = auto.spec.requested_by.clone().unwrap_or_default();
    assert!(requested_by.starts_with("system:serviceaccount:") && requested_by.ends_with(&operator), "{requested_by}");
    let channel = channel_where(&s, "staging", |c| serving(c) == Some(1)).await;
    assert_eq!(
        channel.status.as_ref().unwrap().override_.as_ref().unwrap().rollback.as_deref(),
        Some("staging-auto-v2")
    );
    s.wait_events("staging", "AutomaticRollback", 1).await;
    let out = crate::plugin::plugin_on(&crate::support::control_plane().kubeconfig, &s.ns, &["history", "support"]);
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(history.lines().any(|l| l.starts_with('2') && l.contains("staging=Failed")), "{history}");
    let moved = history.lines().find(|l| l.contains("AgentRollback staging-auto-v2 (automatic)")).unwrap_or_default();
    assert!(moved.contains("Succeeded") && moved.contains("system:serviceaccount:"), "{history}");

    // Once: no second rollback, however often the operator looks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names: Vec<String> =
        s.rollbacks().list(&Default::default()).await.unwrap().items.iter().map(|r| r.name_any()).collect();
    assert_eq!(names, ["staging-auto-v2"]);

    // Version 3 fails too; then git pins version 2, which Failed here: it is not served again.
    s.apply_agent("support", json!({"instructions": "i3", "revisionHistoryLimit": 10})).await;
    s.expect_outcome("staging-auto-v3", Ok(1), "version 3 failed as well").await;
    apply_channel(&s, "staging", json!({"bakeSeconds": 2, "checks": [version_check(1.0)]}), Some(2)).await;
    let channel = channel_where(&s, "staging", |c| {
        c.status.as_ref().is_some_and(|s| s.desired_version == Some(2))
            && c.status.as_ref().unwrap().conditions.iter().any(|c| c.type_ == "Stalled" && c.status == "True")
    })
    .await;
    let (_, reason, message) = condition(&channel, "Stalled");
    assert_eq!(reason, "VersionQuarantined", "{message}");
    assert_eq!(serving(&channel), Some(1), "{message}");
    assert!(message.contains("allowFailed"), "{message}");
}

#[tokio::test]
async fn a_missing_signal_fails_nothing_and_hold_keeps_a_failed_version() {
    let s = setup("e2e-analysis-signal").await;
    s.agent_with_versions("support", 1, 10).await;
    let closed = format!("http://127.0.0.1:{}", crate::support::Operator::free_port());
    let check = |name: &str, address: &str, query: &str| {
        json!({"name": name, "prometheus": {"address": address, "query": query}, "intervalSeconds": 1,
            "successRange": {"max": 1}})
    };
    let checks = json!([
        check("empty", &prometheus(), "no_such_metric"),
        check("nan", &prometheus(), "vector(0/0)"),
        check("down", &closed, "vector(0)"),
    ]);
    apply_channel(&s, "quiet", json!({"bakeSeconds": 1, "checks": checks}), None).await;
    apply_channel(&s, "held", json!({"bakeSeconds": 1, "onFailure": "Hold", "checks": [version_check(0.5)]}), None)
        .await;

    // Well past the bake: no verdict, Healthy Unknown, each check saying why.
    channel_where(&s, "quiet", |c| {
        let checks = c.status.as_ref().and_then(|s| s.analysis.as_ref()).map(|a| a.checks.clone()).unwrap_or_default();
        checks.len() == 3 && checks.iter().all(|c| c.phase == AnalysisPhase::Unknown)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let quiet = channel_where(&s, "quiet", |_| true).await;
    let (healthy, reason, _) = condition(&quiet, "Healthy");
    assert_eq!((healthy.as_str(), reason.as_str()), ("Unknown", "SignalUnavailable"));
    let checks = quiet.status.as_ref().unwrap().analysis.as_ref().unwrap().checks.clone();
    for (name, why) in [("empty", "an empty result"), ("nan", "NaN"), ("down", "127.0.0.1")] {
        let check = checks.iter().find(|c| c.name == name).unwrap();
        let message = check.message.clone().unwrap_or_default();
        assert!(message.contains(why) && check.failures == 0, "{name}: {message}");
    }
    let versions = s.versions("support").await;
    assert!(!versions[0].labels().contains_key("health.agentops.dev/quiet"), "a missing signal judged the version");

    // Version 1 measures 1, above 0.5: Failed, and held, with no rollback.
    let (failed, _) = verdict(&s, 1, "held").await;
    assert_eq!(failed, "Failed");
    let held = channel_where(&s, "held", |c| {
        c.status.as_ref().and_then(|s| s.analysis.as_ref()).is_some_and(|a| a.phase == AnalysisPhase::Failed)
    })
    .await;
    let (healthy, _, message) = condition(&held, "Healthy");
    assert_eq!(healthy, "False");
    assert!(message.contains("Held: onFailure is Hold"), "{message}");
    assert_eq!(serving(&held), Some(1));
    let rollbacks = s.rollbacks().list(&Default::default()).await.unwrap().items;
    assert!(rollbacks.iter().all(|r| r.status.as_ref().and_then(|s| s.phase) != Some(RollbackPhase::Running)));
    assert!(rollbacks.is_empty(), "{:?}", rollbacks.iter().map(|r| r.name_any()).collect::<Vec<_>>());
}

/// A ValidatingAdmissionPolicy of the test's, refusing `operation` on AgentRollbacks in the
/// namespace while it stands: it holds the operator between two of its steps, to be killed there.
struct Refusal {
    name: String,
}

impl Refusal {
    async fn install(s: &Setup, operation: &str) -> Self {
        let name = format!("hold-{}-{}", operation.to_lowercase(), s.ns);
        let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
             "metadata": {"name": name},
             "spec": {"failurePolicy": "Fail",
                      "matchConstraints": {
                          "resourceRules": [{"apiGroups": ["agentops.dev"], "apiVersions": ["*"],
                                             "operations": [operation], "resources": ["agentrollbacks"]}],
                          "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": s.ns}}},
                      "validations": [{"expression": "false", "message": "held by the test"}]}},
            {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
             "metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}}
        ]});
        let out = crate::support::kubectl(&["apply", "-f", "-"], Some(&manifest.to_string()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let refusal = Self { name };
        refusal.wait(s, true).await;
        refusal
    }

    /// Waits until a dry-run create of a rollback meets the policy (`refused`) or passes: a
    /// policy takes effect a moment after it is made or removed. (A dry run goes through
    /// admission for UPDATE policies too: the probe is a CREATE, so an UPDATE policy is waited
    /// for by time.)
    async fn wait(&self, s: &Setup, refused: bool) {
        if self.name.starts_with("hold-update") {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return;
        }
        let probe: agent_operator::api::AgentRollback = serde_json::from_value(json!({
            "metadata": {"name": "probe"}, "spec": {"agentName": "support", "strategy": "Previous"}}))
        .unwrap();
        let dry_run = kube::api::PostParams { dry_run: true, ..Default::default() };
        eventually(WAIT, || async {
            let result = s.rollbacks().create(&dry_run, &probe).await;
            let met = result.as_ref().is_err_and(|e| e.to_string().contains("held by the test"));
            (met == refused).then_some(())
        })
        .await;
    }

    async fn remove(self, s: &Setup) {
        let kinds = "validatingadmissionpolicybinding,validatingadmissionpolicy";
        let out = crate::support::kubectl(&["delete", kinds, &self.name], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        self.wait(s, false).await;
    }
}

#[tokio::test]
async fn killed_between_the_verdict_and_the_rollback_or_after_it_the_operator_rolls_back_once() {
    let mut s = setup("e2e-analysis-crash").await;
    s.agent_with_versions("support", 1, 10).await;
    apply_channel(&s, "staging", json!({"bakeSeconds": 1, "checks": [version_check(1.0)]}), None).await;
    assert_eq!(verdict(&s, 1, "staging").await.0, "Healthy");

    // Between: version 2 fails, and the create of its rollback is refused until the operator
    // is killed; a new operator makes it.
    let refusal = Refusal::install(&s, "CREATE").await;
    s.apply_agent("support", json!({"instructions": "i2", "revisionHistoryLimit": 10})).await;
    assert_eq!(verdict(&s, 2, "staging").await.0, "Failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.operator = None;
    assert!(s.rollbacks().get_opt("staging-auto-v2").await.unwrap().is_none(), "made while refused");
    refusal.remove(&s).await;
    s.operator = Some(crate::support::Operator::start(&s.ns));
    s.expect_outcome("staging-auto-v2", Ok(1), "made by the next operator").await;

    // After: version 3's rollback is made, and its start refused until the operator is killed;
    // a new operator runs it, once. Version 3 is served under a check it passes, then (the
    // refusal in place, as it would also refuse ending version 2's override) under one it
    // fails: checks judge the versions not yet judged.
    apply_channel(&s, "staging", json!({"bakeSeconds": 600, "checks": [version_check(10.0)]}), None).await;
    s.apply_agent("support", json!({"instructions": "i3", "revisionHistoryLimit": 10})).await;
    channel_where(&s, "staging", |c| {
        let analysis = c.status.as_ref().and_then(|s| s.analysis.as_ref());
        serving(c) == Some(3) && analysis.is_some_and(|a| a.checks.iter().any(|c| c.measurements > 0))
    })
    .await;
    let refusal = Refusal::install(&s, "UPDATE").await;
    apply_channel(&s, "staging", json!({"bakeSeconds": 600, "checks": [version_check(1.0)]}), None).await;
    assert_eq!(verdict(&s, 3, "staging").await.0, "Failed");
    eventually(WAIT, || async { s.rollbacks().get_opt("staging-auto-v3").await.ok()?.map(|_| ()) }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.operator = None;
    refusal.remove(&s).await;
    s.operator = Some(crate::support::Operator::start(&s.ns));
    s.expect_outcome("staging-auto-v3", Ok(1), "run by the next operator").await;
    channel_where(&s, "staging", |c| serving(c) == Some(1)).await;

    let names: Vec<String> =
        s.rollbacks().list(&Default::default()).await.unwrap().items.iter().map(|r| r.name_any()).collect();
    assert_eq!(names, ["staging-auto-v2", "staging-auto-v3"]);
    for name in names {
        let events = s.wait_events(&name, "RollbackSucceeded", 1).await;
        assert_eq!(events.iter().filter(|(r, _)| r == "RollbackStarted").count(), 1, "{name}: {events:?}");
    }
}

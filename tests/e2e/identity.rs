//! Who did what, stamped by the API server through the chart's admission policies, with real
//! identities (client certificates, a ServiceAccount token): a rollback's `requestedBy`, a
//! version's `publishedBy`, the Events that name the requester. Then `InSync` after a rollback,
//! and `kubectl agent export` as the round trip that brings the spec back in sync.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use agent_operator::api::{Agent, AgentPromotion, AgentRollback};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::rollback::{Setup, setup};
use crate::support::{
    OwnControlPlane, control_plane, eventually, kubectl, kubectl_as, repo, served_api_versions,
    service_account_kubeconfig,
};

const WAIT: Duration = Duration::from_secs(60);

/// What a namespace `edit` user may do with the operator's resources, granted to `subject` in
/// `ns` by the binding `binding`.
fn grant_edit(kubeconfig: &Path, ns: &str, binding: &str, subject: &str) {
    let manifest = format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: agent-editor, namespace: {ns}}}
rules:
- apiGroups: [agentops.dev]
  resources: [agents, agentrollbacks, agentversions, agentpromotions]
  verbs: [get, list, watch, create, update, patch]
- apiGroups: ['', events.k8s.io]
  resources: [events]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {binding}, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: agent-editor}}
subjects:
- {subject}
"
    );
    let applied = kubectl_as(kubeconfig, &["apply", "-f", "-"], Some(&manifest));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
}

fn agent_manifest(ns: &str, instructions: &str, extra_metadata: &str) -> String {
    format!(
        "apiVersion: agentops.dev/v1alpha1
kind: Agent
metadata:
  name: support
  namespace: {ns}
{extra_metadata}spec:
  instructions: {instructions}
  model: m1
"
    )
}

fn rollback_manifest(ns: &str, name: &str, requested_by: &str) -> String {
    format!(
        "apiVersion: agentops.dev/v1alpha1
kind: AgentRollback
metadata: {{name: {name}, namespace: {ns}}}
spec: {{agentName: support, strategy: Previous, requestedBy: {requested_by}}}
"
    )
}

fn promotion_manifest(ns: &str, name: &str, requested_by: &str) -> String {
    format!(
        "apiVersion: agentops.dev/v1alpha1
kind: AgentPromotion
metadata: {{name: {name}, namespace: {ns}}}
spec: {{channel: production, version: 1, requestedBy: {requested_by}}}
"
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into()
}

/// `kubectl apply`, retried for as long as the API server does not serve the CRDs that tests
/// running beside this one may have just (re)installed.
async fn first_apply(kubeconfig: &Path, manifest: &str) {
    eventually(WAIT, || async {
        let out = kubectl_as(kubeconfig, &["apply", "-f", "-"], Some(manifest));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || err.contains("ServiceUnavailable"), "{err}");
        out.status.success().then_some(())
    })
    .await;
}

fn plugin_as(kubeconfig: &Path, ns: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-agent"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("kubectl-agent runs")
}

async fn in_sync(s: &Setup) -> (String, String, String) {
    let agent = s.agents().get("support").await.unwrap();
    let status = agent.status.unwrap_or_default();
    let c = status.conditions.iter().find(|c| c.type_ == "InSync").expect("InSync is reported");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn the_api_server_stamps_who_asked_and_who_published_whatever_the_client_sent() {
    let s = setup("identity").await;
    let admin = &control_plane().kubeconfig;
    assert!(
        !served_api_versions(admin).is_empty(),
        "this control plane should serve MutatingAdmissionPolicy (Kubernetes 1.36+)"
    );
    let alice = control_plane().user_kubeconfig("alice", &[]);
    grant_edit(admin, &s.ns, "alice", "{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}");

    // alice creates the Agent claiming to be bob, then edits it: both versions say alice.
    let forged = "  annotations: {agentops.dev/changed-by: bob}\n";
    first_apply(&alice, &agent_manifest(&s.ns, "be kind", forged)).await;
    s.settled_agent("support").await;
    ok(kubectl_as(&alice, &["apply", "-f", "-"], Some(&agent_manifest(&s.ns, "be brief", forged))));
    s.settled_agent("support").await;
    let versions = s.versions("support").await;
    let published: Vec<Option<&str>> = versions.iter().map(|v| v.spec.published_by.as_deref()).collect();
    assert_eq!(published, [Some("alice"), Some("alice")]);

    // Someone changing only the annotation changes nothing.
    let meddle = json!({"metadata": {"annotations": {"agentops.dev/changed-by": "mallory"}}});
    let agent: Agent = s.agents().patch("support", &PatchParams::default(), &Patch::Merge(meddle)).await.unwrap();
    assert_eq!(agent.metadata.annotations.unwrap().get("agentops.dev/changed-by").map(String::as_str), Some("alice"));

    // alice's rollback, claiming bob: the API server says alice, and so do the version it made
    // and its Events.
    ok(kubectl_as(&alice, &["create", "-f", "-"], Some(&rollback_manifest(&s.ns, "undo", "bob"))));
    let done = s.terminal("undo").await;
    assert_eq!(done.spec.requested_by.as_deref(), Some("alice"));
    let made = s.versions("support").await.pop().unwrap();
    assert_eq!((made.spec.rollback_name.as_deref(), made.spec.published_by.as_deref()), (Some("undo"), Some("alice")));
    let events = s.wait_events("undo", "RollbackSucceeded", 1).await;
    assert!(events.iter().all(|(_, note)| note.contains("Requested by alice.")), "{events:?}");
    let agent_events = s.wait_events("support", "RolledBack", 1).await;
    assert!(
        agent_events.iter().any(|(reason, note)| reason == "RolledBack" && note.contains("Requested by alice.")),
        "{agent_events:?}"
    );

    // A promotion is stamped as a rollback is.
    ok(kubectl_as(&alice, &["create", "-f", "-"], Some(&promotion_manifest(&s.ns, "to-production", "bob"))));
    let promotions: Api<AgentPromotion> = Api::namespaced(s.client.clone(), &s.ns);
    let promotion = promotions.get("to-production").await.unwrap();
    assert_eq!(promotion.spec.requested_by.as_deref(), Some("alice"));

    // A pipeline's ServiceAccount: its own name.
    ok(kubectl(&["create", "serviceaccount", "pipeline", "-n", &s.ns], None));
    let subject = format!("{{kind: ServiceAccount, name: pipeline, namespace: {}}}", s.ns);
    grant_edit(admin, &s.ns, "pipeline", &subject);
    let pipeline = service_account_kubeconfig(&s.ns, "pipeline");
    ok(kubectl_as(&pipeline, &["create", "-f", "-"], Some(&rollback_manifest(&s.ns, "deploy-undo", "alice"))));
    let done = s.terminal("deploy-undo").await;
    let want = format!("system:serviceaccount:{}:pipeline", s.ns);
    assert_eq!(done.spec.requested_by.as_deref(), Some(want.as_str()));

    // kubectl agent history names them.
    let history = ok(plugin_as(&alice, &s.ns, &["history", "support"]));
    let header = history.lines().next().unwrap_or_default();
    assert!(header.contains("PUBLISHED-BY") && header.contains("REASON"), "{history}");
    assert!(history.lines().nth(1).unwrap_or_default().contains(&want), "{history}");
    let by_alice = history.lines().filter(|l| l.split_whitespace().any(|cell| cell == "alice")).count();
    assert_eq!(by_alice, 3, "{history}");
}

#[tokio::test]
async fn after_a_rollback_the_agent_is_out_of_sync_until_the_exported_manifest_is_applied() {
    let s = setup("in-sync").await;
    let kubeconfig = &control_plane().kubeconfig;
    // As git holds it, applied as a GitOps tool would (client-side apply, last-applied kept).
    first_apply(kubeconfig, &agent_manifest(&s.ns, "be kind", "")).await;
    s.settled_agent("support").await;
    let with_temperature =
        agent_manifest(&s.ns, "be brief", "").replace("  model: m1\n", "  model: m2\n  temperature: 0.5\n");
    ok(kubectl_as(kubeconfig, &["apply", "-f", "-"], Some(&with_temperature)));
    s.settled_agent("support").await;
    assert_eq!(in_sync(&s).await.0, "True");
    let operator = s.operator.as_ref().unwrap();
    assert_eq!(operator.metric_sum("agentops_agents_out_of_sync").await, 0.0);

    s.create_rollback("undo", "support", "Previous", None).await;
    s.terminal("undo").await;
    let (status, reason, message) = eventually(WAIT, || async {
        let c = in_sync(&s).await;
        (c.0 == "False").then_some(c)
    })
    .await;
    assert_eq!(reason, "RolledBack", "{message}");
    assert!(message.contains("AgentRollback undo made version 3 active"), "{message}");
    assert!(message.contains("in: instructions, model, temperature."), "{message}");
    assert_eq!(status, "False");
    eventually(WAIT, || async { (operator.metric_sum("agentops_agents_out_of_sync").await == 1.0).then_some(()) })
        .await;

    // The round trip: export, apply what it printed, and the Agent is in sync, with nothing
    // published.
    let exported = ok(plugin_as(kubeconfig, &s.ns, &["export", "support"]));
    assert!(exported.contains("instructions: be kind"), "{exported}");
    ok(kubectl_as(kubeconfig, &["apply", "-f", "-"], Some(&exported)));
    let agent = s.settled_agent("support").await;
    assert_eq!(agent.metadata.generation, Some(3));
    assert_eq!(in_sync(&s).await.0, "True");
    let versions = s.versions("support").await;
    assert_eq!(versions.len(), 3, "applying the export published nothing");
    assert_eq!(agent.status.and_then(|st| st.active_version), Some(3));
    eventually(WAIT, || async { (operator.metric_sum("agentops_agents_out_of_sync").await == 0.0).then_some(()) })
        .await;
}

/// A control plane without MutatingAdmissionPolicy: the chart renders a ValidatingAdmissionPolicy
/// that refuses a forged `requestedBy`, and `kubectl agent rollback` fills in the caller.
#[tokio::test]
async fn without_mutating_admission_policies_a_forged_requester_is_refused() {
    let own = OwnControlPlane::start(
        "no-map",
        &[
            "--runtime-config=admissionregistration.k8s.io/v1/mutatingadmissionpolicies=false,admissionregistration.k8s.io/v1/mutatingadmissionpolicybindings=false",
            "--disable-admission-plugins=MutatingAdmissionPolicy",
        ],
    );
    let admin = &own.cp.kubeconfig;
    assert!(served_api_versions(admin).is_empty(), "MutatingAdmissionPolicy should be off here");
    let client = crate::support::client_for(admin).await;
    crate::support::install_crds(&client).await;
    let rendered = ok(Command::new(&own.cp.helm)
        .args(["template", "agent-operator"])
        .arg(repo().join("charts/agent-operator"))
        .args(["--namespace", "agent-operator-system", "--show-only", "templates/admission-policies.yaml"])
        .args(served_api_versions(admin))
        .output()
        .unwrap());
    assert!(!rendered.contains("kind: MutatingAdmissionPolicy"), "{rendered}");
    ok(kubectl_as(admin, &["apply", "-f", "-"], Some(&rendered)));
    ok(kubectl_as(admin, &["create", "namespace", "team"], None));
    let alice = own.cp.user_kubeconfig("alice", &[]);
    grant_edit(admin, "team", "alice", "{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}");

    // Policies take a moment to reach the admission chain: retry until bob is refused.
    let refused = eventually(WAIT, || async {
        let out = kubectl_as(&alice, &["create", "-f", "-"], Some(&rollback_manifest("team", "forged", "bob")));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            kubectl_as(admin, &["delete", "agentrollback", "forged", "-n", "team"], None);
            return None;
        }
        Some(err)
    })
    .await;
    assert!(refused.contains("spec.requestedBy: must be the caller, alice; it was bob"), "{refused}");
    // Nothing would fill it in here: a rollback that names nobody is refused, not anonymous.
    let anonymous = "apiVersion: agentops.dev/v1alpha1\nkind: AgentRollback\nmetadata: {name: anonymous, namespace: team}\nspec: {agentName: support, strategy: Previous}\n";
    let out = kubectl_as(&alice, &["create", "-f", "-"], Some(anonymous));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("must be the caller, alice; it is missing"), "{stderr}");
    let out = kubectl_as(&alice, &["create", "-f", "-"], Some(&promotion_manifest("team", "forged", "bob")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("must be the caller, alice; it was bob"), "{stderr}");
    // A changed-by annotation from a client is refused too.
    let forged = "  annotations: {agentops.dev/changed-by: bob}\n";
    let out = kubectl_as(&alice, &["apply", "-f", "-"], Some(&agent_manifest("team", "be kind", forged)));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agentops.dev/changed-by"), "{out:?}");

    // The plugin says who the caller is; no operator runs here, so it does not wait.
    ok(kubectl_as(&alice, &["apply", "-f", "-"], Some(&agent_manifest("team", "be kind", ""))));
    let created = ok(plugin_as(&alice, "team", &["rollback", "support", "--previous", "--no-wait"]));
    let name = created.split('/').nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_string();
    let rollback: AgentRollback = kube::Api::namespaced(client.clone(), "team").get(&name).await.unwrap();
    assert_eq!(rollback.spec.requested_by.as_deref(), Some("alice"));
    // And the caller's own name passes.
    ok(kubectl_as(&alice, &["create", "-f", "-"], Some(&rollback_manifest("team", "honest", "alice"))));

    // The chart's start-up check knows these policies: its own name passes, a forged one is
    // refused, and so the check passes.
    let check = Command::new(env!("CARGO_BIN_EXE_agent-operator"))
        .args(["check-api", "--kubeconfig"])
        .arg(admin)
        .args(["--namespace", "team", "--policies", "validating", "--timeout", "60"])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "{said}");
    assert!(said.contains("AgentRollback (forged requestedBy): refused by the policy, as it should be"), "{said}");
}

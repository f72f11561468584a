//! The Helm chart: it lints, the API server accepts what it renders, the operator's identity
//! can do nothing beyond its job, and the aggregated roles give namespace `edit` users
//! rollbacks and `view` users read access, in their own namespace only.
//! (That its RBAC is enough is shown by every other test: they run the operator as the
//! chart's ServiceAccount.)

use std::process::Command;
use std::time::Duration;

use agent_operator::api::{Agent, AgentRollback, AgentVersion, RollbackPhase};
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::support::{
    Operator, RELEASE_NAMESPACE, chart_identity, client, control_plane, eventually, kubectl, kubectl_as, namespace,
    user_kubeconfig,
};

fn chart_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/agent-operator")
}

#[test]
fn helm_lint_passes() {
    let out = Command::new(&control_plane().helm).args(["lint", "--strict"]).arg(chart_dir()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_rendered_chart_passes_a_server_side_dry_run() {
    for values in [
        vec![],
        vec![
            "--set",
            "serviceMonitor.enabled=false",
            "--set",
            "watchNamespace=team-a",
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicaCount=1",
        ],
    ] {
        let out = Command::new(&control_plane().helm)
            .args(["template", "agent-operator"])
            .arg(chart_dir())
            .args(["--namespace", RELEASE_NAMESPACE])
            .args(&values)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let _ = kubectl(&["create", "namespace", RELEASE_NAMESPACE], None);
        let _ = kubectl(&["create", "namespace", "team-a"], None);
        let applied = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&String::from_utf8_lossy(&out.stdout)));
        assert!(applied.status.success(), "{values:?}: {}", String::from_utf8_lossy(&applied.stderr));
    }
}

#[test]
fn values_outside_the_schema_are_refused() {
    let out = Command::new(&control_plane().helm)
        .args(["template", "agent-operator"])
        .arg(chart_dir())
        .args(["--set", "logFormat=xml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("logFormat"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn several_replicas_without_leader_election_are_refused() {
    let render = |values: &[&str]| {
        Command::new(&control_plane().helm)
            .args(["template", "agent-operator"])
            .arg(chart_dir())
            .args(values)
            .output()
            .unwrap()
    };
    let out = render(&["--set", "leaderElection.enabled=false"]);
    assert!(!out.status.success(), "two replicas without the Lease rendered");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("replicaCount") && stderr.contains("leaderElection.enabled"), "{stderr}");
    for allowed in [
        ["--set", "leaderElection.enabled=false", "--set", "replicaCount=1"],
        ["--set", "replicaCount=3", "--set", "leaderElection.enabled=true"],
    ] {
        let out = render(&allowed);
        assert!(out.status.success(), "{allowed:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn the_operators_identity_is_refused_everything_beyond_its_job() {
    let admin = client().await;
    let ns = namespace(&admin, "chart-deny").await;
    let operator = &chart_identity().kubeconfig;
    crate::support::install_crds(&admin).await;
    let existing = format!(
        "{{\"apiVersion\":\"agentops.dev/v1alpha1\",\"kind\":\"Agent\",\"metadata\":{{\"name\":\"support\",\"namespace\":\"{ns}\"}},\"spec\":{{}}}}"
    );
    let created = kubectl(&["create", "-f", "-"], Some(&existing));
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    // A channel that exists: the operator may read it, and must be refused a write of its spec.
    let channel = format!(
        "{{\"apiVersion\":\"agentops.dev/v1alpha1\",\"kind\":\"AgentChannel\",\"metadata\":{{\"name\":\"x\",\"namespace\":\"{ns}\"}},\"spec\":{{\"agentName\":\"support\"}}}}"
    );
    let created = kubectl(&["create", "-f", "-"], Some(&channel));
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let forbidden = [
        vec!["get", "secrets", "-n", ns.as_str()],
        vec!["get", "secrets", "-n", RELEASE_NAMESPACE],
        vec!["delete", "configmap", "x", "-n", ns.as_str()],
        vec!["get", "deployments", "-n", ns.as_str()],
        vec!["patch", "deployment", "x", "-n", ns.as_str(), "--type=merge", "-p", "{}"],
        vec!["create", "namespace", "owned-by-operator"],
        vec!["delete", "agent", "support", "-n", ns.as_str()],
        vec!["patch", "agent", "support", "-n", ns.as_str(), "--type=merge", "-p", "{\"spec\":{\"model\":\"x\"}}"],
        // A channel's spec is its author's (git's, perhaps): the operator writes its status only.
        vec!["patch", "agentchannel", "x", "-n", ns.as_str(), "--type=merge", "-p", "{\"spec\":{\"version\":1}}"],
        vec!["create", "-n", ns.as_str(), "-f", "-"],
        vec!["delete", "crd", "agents.agentops.dev"],
        vec!["create", "clusterrolebinding", "escalate", "--clusterrole=cluster-admin", "--user=x"],
    ];
    let agent = format!(
        "{{\"apiVersion\":\"agentops.dev/v1alpha1\",\"kind\":\"Agent\",\"metadata\":{{\"name\":\"a\",\"namespace\":\"{ns}\"}},\"spec\":{{}}}}"
    );
    for args in forbidden {
        let stdin = args.contains(&"-f").then_some(agent.as_str());
        let out = kubectl_as(operator, &args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("forbidden"), "{args:?} was not refused: {stderr}");
    }
    // Its own job, by contrast, is allowed: rollback records and status, channels' status, and
    // the delivery ConfigMaps.
    for args in [
        vec!["auth", "can-i", "watch", "agentchannels", "-n", ns.as_str()],
        vec!["auth", "can-i", "patch", "agentchannels", "--subresource=status", "-n", ns.as_str()],
        vec!["auth", "can-i", "patch", "agentrollbacks", "-n", ns.as_str()],
        vec!["auth", "can-i", "update", "agentrollbacks", "--subresource=status", "-n", ns.as_str()],
        // A channel's automatic rollback.
        vec!["auth", "can-i", "create", "agentrollbacks", "-n", ns.as_str()],
        vec!["auth", "can-i", "create", "configmaps", "-n", ns.as_str()],
        vec!["auth", "can-i", "patch", "configmaps", "-n", ns.as_str()],
    ] {
        let out = kubectl_as(operator, &args, None);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes", "{args:?}");
    }
}

#[test]
fn workload_patches_are_granted_only_when_the_chart_enables_restarts() {
    let rules = |values: &[&str]| {
        let out = Command::new(&control_plane().helm)
            .args(["template", "agent-operator"])
            .arg(chart_dir())
            .args(["--show-only", "templates/clusterrole.yaml"])
            .args(values)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!rules(&[]).contains("deployments"), "granted by default");
    let enabled = rules(&["--set", "delivery.restartWorkloads=true"]);
    assert!(
        enabled.contains("resources: [deployments, statefulsets]") && enabled.contains("verbs: [get, patch]"),
        "{enabled}"
    );
}

/// Waits until `kubectl auth can-i ARGS` says yes for `kubeconfig`'s user: the aggregation
/// controller folds the chart's roles into the built-in ones a moment after they are created.
async fn allowed_soon(kubeconfig: &std::path::Path, args: &[&str]) {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    eventually(Duration::from_secs(30), || async {
        (String::from_utf8_lossy(&kubectl_as(kubeconfig, &all, None).stdout).trim() == "yes").then_some(())
    })
    .await;
}

#[tokio::test]
async fn edit_users_may_roll_back_admins_delete_rollbacks_and_view_users_read_in_their_namespace_only() {
    let admin = client().await;
    crate::support::install_crds(&admin).await;
    chart_identity(); // the aggregated roles come with the chart
    let ns = namespace(&admin, "chart-team").await;
    let other = namespace(&admin, "chart-other").await;
    for (user, role) in [("erin", "edit"), ("victor", "view"), ("ada", "admin")] {
        let out = kubectl(
            &[
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                &format!("--clusterrole={role}"),
                &format!("--user={user}"),
                "-n",
                &ns,
            ],
            None,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let editor = user_kubeconfig("erin", &["team"]);
    let viewer = user_kubeconfig("victor", &["team"]);
    let namespace_admin = user_kubeconfig("ada", &["team"]);
    let rollback = |name: &str, ns: &str| {
        format!(
            "{{\"apiVersion\":\"agentops.dev/v1alpha1\",\"kind\":\"AgentRollback\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{ns}\"}},\"spec\":{{\"agentName\":\"support\",\"strategy\":\"Pop\"}}}}"
        )
    };

    // The aggregation controller folds the chart's roles into edit/view shortly after install.
    allowed_soon(&editor, &["create", "agentrollbacks", "-n", &ns]).await;
    let out = kubectl_as(&editor, &["create", "-f", "-"], Some(&rollback("by-editor", &ns)));
    assert!(out.status.success(), "edit user creates a rollback: {}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl_as(&editor, &["get", "agentversions", "-n", &ns], None);
    assert!(out.status.success(), "edit user reads versions: {}", String::from_utf8_lossy(&out.stderr));

    // A rollback is the audit record of who rolled back what: its editors can neither erase nor
    // change it; a namespace admin may delete it.
    for args in [
        vec!["delete", "agentrollback", "by-editor", "-n", ns.as_str()],
        vec!["delete", "agentrollbacks", "--all", "-n", ns.as_str()],
        vec!["annotate", "agentrollback", "by-editor", "-n", ns.as_str(), "note=rewritten"],
        vec!["label", "agentrollback", "by-editor", "-n", ns.as_str(), "hidden=true"],
    ] {
        let out = kubectl_as(&editor, &args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("forbidden"), "edit user: {args:?}: {stderr}");
    }
    allowed_soon(&namespace_admin, &["delete", "agentrollbacks", "-n", &ns]).await;
    let out = kubectl_as(&namespace_admin, &["create", "-f", "-"], Some(&rollback("by-admin", &ns)));
    assert!(out.status.success(), "admin creates a rollback: {}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl_as(&namespace_admin, &["delete", "agentrollback", "by-admin", "-n", &ns], None);
    assert!(out.status.success(), "admin deletes a rollback: {}", String::from_utf8_lossy(&out.stderr));

    let out = kubectl_as(&viewer, &["create", "-f", "-"], Some(&rollback("by-viewer", &ns)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "view user refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl_as(&viewer, &["get", "agentrollback", "by-editor", "-n", &ns], None);
    assert!(out.status.success(), "view user reads rollbacks: {}", String::from_utf8_lossy(&out.stderr));

    // Channels are editors' to define; promotions are audit records, as rollbacks are.
    let channel = format!(
        r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"AgentChannel","metadata":{{"name":"prod","namespace":"{ns}"}},"spec":{{"agentName":"support"}}}}"#
    );
    let promotion = |name: &str| {
        format!(
            r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"AgentPromotion","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"channel":"prod","version":2}}}}"#
        )
    };
    allowed_soon(&editor, &["create", "agentpromotions", "-n", &ns]).await;
    for manifest in [channel.clone(), promotion("by-editor")] {
        let out = kubectl_as(&editor, &["create", "-f", "-"], Some(&manifest));
        assert!(out.status.success(), "edit user creates {manifest}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = kubectl_as(
        &editor,
        &["patch", "agch", "prod", "-n", &ns, "--type=merge", "-p", r#"{"spec":{"version":3}}"#],
        None,
    );
    assert!(out.status.success(), "edit user pins a channel: {}", String::from_utf8_lossy(&out.stderr));
    for args in [
        vec!["delete", "agentpromotion", "by-editor", "-n", ns.as_str()],
        vec!["annotate", "agentpromotion", "by-editor", "-n", ns.as_str(), "note=rewritten"],
    ] {
        let out = kubectl_as(&editor, &args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("forbidden"), "edit user: {args:?}: {stderr}");
    }
    allowed_soon(&namespace_admin, &["delete", "agentpromotions", "-n", &ns]).await;
    let out = kubectl_as(&namespace_admin, &["delete", "agentpromotion", "by-editor", "-n", &ns], None);
    assert!(out.status.success(), "admin deletes a promotion: {}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl_as(&viewer, &["create", "-f", "-"], Some(&promotion("by-viewer")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "view user refused a promotion");
    allowed_soon(&viewer, &["list", "agentpromotions", "-n", &ns]).await;
    let out = kubectl_as(&viewer, &["get", "agentchannel", "prod", "-n", &ns], None);
    assert!(out.status.success(), "view user reads channels: {}", String::from_utf8_lossy(&out.stderr));

    for (who, kubeconfig) in [("edit", &editor), ("view", &viewer)] {
        let out = kubectl_as(kubeconfig, &["create", "-f", "-"], Some(&rollback("elsewhere", &other)));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("forbidden"),
            "{who} user in another namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = kubectl_as(kubeconfig, &["get", "agentrollbacks", "-n", &other], None);
        assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{who} user reads another namespace");
    }
}

/// The operator may restart workloads that an Agent's author may not: the chart's policy refuses
/// an Agent, or a change of one, that lists a workload its author could not patch.
#[tokio::test]
async fn an_agent_may_list_only_workloads_its_author_may_restart() {
    let admin = client().await;
    crate::support::install_crds(&admin).await;
    chart_identity();
    let ns = namespace(&admin, "chart-deputy").await;
    for (user, role) in [("mallory", "clusterrole=agent-operator-tests-edit"), ("edwin", "clusterrole=edit")] {
        let out =
            kubectl(&["create", "rolebinding", user, &format!("--{role}"), &format!("--user={user}"), "-n", &ns], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mallory = user_kubeconfig("mallory", &[]);
    let edwin = user_kubeconfig("edwin", &[]);
    let can_i = |kubeconfig, args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-n", &ns]);
        String::from_utf8_lossy(&kubectl_as(kubeconfig, &all, None).stdout).trim().to_string()
    };
    assert_eq!(can_i(&mallory, &["patch", "deployments"]), "no");
    assert_eq!(can_i(&mallory, &["create", "agents"]), "yes");
    allowed_soon(&edwin, &["patch", "deployments", "-n", &ns]).await;

    let agent = |name: &str, restart: &str| {
        format!(
            r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"Agent","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"instructions":"v1","delivery":{{"restart":[{restart}]}}}}}}"#
        )
    };
    let web = r#"{"kind":"Deployment","name":"web"}"#;
    let db = r#"{"kind":"StatefulSet","name":"db"}"#;
    // The policy reaches the admission chain a moment after it is created.
    let refused = eventually(Duration::from_secs(30), || async {
        let out = kubectl_as(&mallory, &["create", "-f", "-"], Some(&agent("by-mallory", &format!("{web},{db}"))));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success()).then_some(stderr)
    })
    .await;
    assert!(
        refused.contains(
            "spec.delivery.restart: mallory may not patch every workload listed (Deployment web, StatefulSet db)"
        ),
        "{refused}"
    );

    // Without workloads she may define agents; adding one she cannot patch is refused.
    let out = kubectl_as(&mallory, &["create", "-f", "-"], Some(&agent("plain", "")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl_as(&mallory, &["apply", "-f", "-"], Some(&agent("plain", web)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not patch every workload listed (Deployment web)"),
        "{out:?}"
    );

    // Her namespace's editor may; and then an edit of that Agent's definition, which would roll
    // the Deployment out, is his and not hers.
    let out = kubectl_as(&edwin, &["create", "-f", "-"], Some(&agent("by-edwin", web)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl_as(
        &mallory,
        &["patch", "agent", "by-edwin", "-n", &ns, "--type=merge", "-p", r#"{"spec":{"instructions":"v2"}}"#],
        None,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not patch every workload listed (Deployment web)"),
        "{out:?}"
    );
    // A change of metadata only restarts nothing, and is hers to make.
    let out = kubectl_as(&mallory, &["label", "agent", "by-edwin", "-n", &ns, "team=support"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A channel rolls its workloads as an Agent does: the same rule.
    let channel = |name: &str, restart: &str| {
        format!(
            r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"AgentChannel","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"agentName":"by-edwin","delivery":{{"restart":[{restart}]}}}}}}"#
        )
    };
    let out = kubectl_as(&mallory, &["create", "-f", "-"], Some(&channel("prod", web)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "spec.delivery.restart: mallory may not patch every workload listed (Deployment web), and the operator restarts only what the AgentChannel's author could restart"
        ),
        "{out:?}"
    );
    let out = kubectl_as(&edwin, &["create", "-f", "-"], Some(&channel("prod", web)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl_as(&mallory, &["create", "-f", "-"], Some(&channel("quiet", "")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A job check is a Job the operator runs for the channel's author: only one who may create
    // Jobs may list it.
    let judged = |name: &str| {
        format!(
            r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"AgentChannel","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"agentName":"by-edwin","analysis":{{"checks":[{{"name":"golden","job":{{"template":{{"spec":{{"containers":[{{"name":"eval","image":"evals:1"}}]}}}}}}}}]}}}}}}"#
        )
    };
    assert_eq!(can_i(&mallory, &["create", "jobs"]), "no");
    let out = kubectl_as(&mallory, &["create", "-f", "-"], Some(&judged("judged-by-mallory")));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("spec.analysis.checks: mallory may not create Jobs in namespace {ns}")),
        "{out:?}"
    );
    let out = kubectl_as(&edwin, &["create", "-f", "-"], Some(&judged("judged-by-edwin")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// RBAC lets the operator's identity write every ConfigMap it can see and, with restarts on,
/// patch every Deployment and StatefulSet: a leaked token would reach kube-system/coredns and any
/// pod template. The chart's policies hold that identity to its job.
#[tokio::test]
async fn the_operators_identity_writes_only_its_config_maps_its_delivery_annotations_and_its_lease() {
    const REACH: &str = "agent-operator-reach";
    let admin = client().await;
    crate::support::install_crds(&admin).await;
    let mut render = Command::new(&control_plane().helm);
    render.args(["template", REACH]).arg(chart_dir()).args([
        "--namespace",
        REACH,
        "--set",
        "delivery.restartWorkloads=true",
    ]);
    for template in [
        "serviceaccount",
        "clusterrole",
        "clusterrolebinding",
        "role-lease",
        "rolebinding-lease",
        "operator-reach-policy",
    ] {
        render.args(["--show-only", &format!("templates/{template}.yaml")]);
    }
    let rendered = render.args(crate::support::served_api_versions(&control_plane().kubeconfig)).output().unwrap();
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let _ = kubectl(&["create", "namespace", REACH], None);
    let out = kubectl(&["apply", "-f", "-"], Some(&String::from_utf8_lossy(&rendered.stdout)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let operator = crate::support::service_account_kubeconfig(REACH, REACH);

    let ns = namespace(&admin, "chart-reach").await;
    let objects = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"coredns","namespace":"{ns}"}},"data":{{"Corefile":". {{ forward . 8.8.8.8 }}"}}}},
{{"apiVersion":"agentops.dev/v1alpha1","kind":"Agent","metadata":{{"name":"support","namespace":"{ns}"}},"spec":{{}}}},
{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"web","namespace":"{ns}","labels":{{"app":"web"}}}},"spec":{{"replicas":0,
  "selector":{{"matchLabels":{{"app":"web"}}}},"template":{{"metadata":{{"labels":{{"app":"web"}},"annotations":{{"team":"a"}}}},
  "spec":{{"containers":[{{"name":"web","image":"agent-runtime:0.1.0"}}]}}}}}}}},
{{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{{"name":"db","namespace":"{ns}"}},"spec":{{"replicas":0,"serviceName":"db",
  "selector":{{"matchLabels":{{"app":"db"}}}},"template":{{"metadata":{{"labels":{{"app":"db"}}}},
  "spec":{{"containers":[{{"name":"db","image":"agent-runtime:0.1.0"}}]}}}}}}}}]}}"#
    );
    let out = kubectl(&["apply", "-f", "-"], Some(&objects));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let uid = String::from_utf8_lossy(
        &kubectl(&["get", "agent", "support", "-n", &ns, "-o", "jsonpath={.metadata.uid}"], None).stdout,
    )
    .into_owned();

    let as_operator = |args: &[&str], stdin: Option<&str>| {
        let mut all: Vec<&str> = vec!["-n", &ns];
        all.extend_from_slice(args);
        let out = kubectl_as(&operator, &all, stdin);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The policies reach the admission chain a moment after they are created; until then RBAC
    // alone answers, and this write would go through.
    let refused = eventually(Duration::from_secs(30), || async {
        let (ok, stderr) =
            as_operator(&["patch", "configmap", "coredns", "--type=merge", "-p", r#"{"data":{"x":"y"}}"#], None);
        (!ok).then_some(stderr)
    })
    .await;
    assert!(refused.contains("writes only the ConfigMaps its Agents, channels and Pops"), "{refused}");

    let config_map = |owner: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"support-agent","namespace":"{ns}"{owner}}},"data":{{}}}}"#
        )
    };
    let owned = format!(
        r#","ownerReferences":[{{"apiVersion":"agentops.dev/v1alpha1","kind":"Agent","name":"support","uid":"{uid}","controller":true}}]"#
    );
    let (ok, stderr) = as_operator(&["create", "--dry-run=server", "-f", "-"], Some(&config_map("")));
    assert!(!ok && stderr.contains("its Agents, channels and Pops own"), "an unowned ConfigMap: {stderr}");
    let (ok, stderr) = as_operator(&["create", "--dry-run=server", "-f", "-"], Some(&config_map(&owned)));
    assert!(ok, "its own delivery ConfigMap: {stderr}");
    let popped = r#","ownerReferences":[{"apiVersion":"agentops.dev/v1alpha1","kind":"AgentRollback","name":"pop","uid":"u","controller":true}]"#;
    let (ok, stderr) = as_operator(&["create", "--dry-run=server", "-f", "-"], Some(&config_map(popped)));
    assert!(ok, "the ConfigMap in which a Pop keeps its snapshot: {stderr}");
    let adopt = format!(r#"{{"metadata":{{{}}}}}"#, &owned[1..]);
    let (ok, stderr) = as_operator(&["patch", "configmap", "coredns", "--type=merge", "-p", &adopt], None);
    assert!(!ok && stderr.contains("its Agents, channels and Pops own"), "adopting a ConfigMap: {stderr}");

    // Workloads: the delivery annotations of the pod template, and nothing else.
    let delivery = r#"{"spec":{"template":{"metadata":{"annotations":{"agentops.dev/active-version":"3","agentops.dev/snapshot-hash":"ab"}}}}}"#;
    let (ok, stderr) = as_operator(&["patch", "deployment", "web", "--type=merge", "-p", delivery], None);
    assert!(ok, "the delivery annotations: {stderr}");
    for patch in [
        r#"{"spec":{"replicas":5}}"#,
        r#"{"spec":{"template":{"metadata":{"annotations":{"team":"b"}}}}}"#,
        r#"{"spec":{"template":{"metadata":{"annotations":{"sidecar":"inject"}}}}}"#,
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"attacker:1"}]}}}}"#,
        r#"{"metadata":{"labels":{"app":"other"}}}"#,
    ] {
        let (ok, stderr) = as_operator(&["patch", "deployment", "web", "--type=merge", "-p", patch], None);
        assert!(!ok && stderr.contains("changes only the pod template's delivery annotations"), "{patch}: {stderr}");
    }
    let (ok, stderr) = as_operator(&["delete", "deployment", "web", "--dry-run=server"], None);
    assert!(!ok, "delete: {stderr}");
    // A StatefulSet, under its own policy: the same rule.
    let (ok, stderr) = as_operator(&["patch", "statefulset", "db", "--type=merge", "-p", delivery], None);
    assert!(ok, "the delivery annotations of a StatefulSet: {stderr}");
    for patch in [r#"{"spec":{"replicas":3}}"#, r#"{"spec":{"minReadySeconds":5}}"#] {
        let (ok, stderr) = as_operator(&["patch", "statefulset", "db", "--type=merge", "-p", patch], None);
        assert!(!ok && stderr.contains("delivery annotations") && stderr.contains("statefulset"), "{patch}: {stderr}");
    }

    // Leases: its own, by name.
    let lease = |name: &str| {
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}","namespace":"{REACH}"}},"spec":{{}}}}"#
        )
    };
    let out = kubectl_as(&operator, &["create", "--dry-run=server", "-f", "-"], Some(&lease("kube-scheduler")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("creates only its leader Lease"), "{stderr}");
    let out = kubectl_as(&operator, &["create", "--dry-run=server", "-f", "-"], Some(&lease(REACH)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl_as(&operator, &["get", "lease", "kube-scheduler", "-n", REACH], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{out:?}");
}

/// With `watchNamespaces`, the chart binds the operator's rules in each listed namespace only,
/// and the operator, run with that identity and that list, works in each of them and sees
/// nothing elsewhere.
#[tokio::test]
async fn an_operator_given_a_list_of_namespaces_works_in_each_with_their_rolebindings_only() {
    let admin = client().await;
    crate::support::install_crds(&admin).await;
    chart_identity(); // the chart's admission policies, as every other test has them
    let (a, b, elsewhere) =
        (namespace(&admin, "list-a").await, namespace(&admin, "list-b").await, namespace(&admin, "list-c").await);
    let release = "listed";
    let rendered = Command::new(&control_plane().helm)
        .args(["template", release])
        .arg(chart_dir())
        .args(["--namespace", RELEASE_NAMESPACE])
        .args(["--set", &format!("watchNamespaces={{{a},{b}}}"), "--set", "admissionPolicies.enabled=false"])
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let rendered = String::from_utf8_lossy(&rendered.stdout).into_owned();
    let fullname = format!("{release}-agent-operator");
    assert!(!rendered.contains("kind: ClusterRoleBinding"), "nothing bound cluster-wide:\n{rendered}");
    assert!(rendered.contains(&format!("value: \"{a},{b}\"")), "the operator is told the list");
    // The operator's identity: its ServiceAccount, its rules, and their bindings.
    let identity: Vec<&str> = rendered
        .split("\n---")
        .filter(|doc| {
            let kind = |k: &str| doc.contains(&format!("\nkind: {k}\n"));
            (kind("ServiceAccount") || kind("ClusterRole") || kind("RoleBinding"))
                && doc.contains(&format!("metadata:\n  name: {fullname}\n"))
        })
        .collect();
    assert_eq!(identity.len(), 4, "a ServiceAccount, its ClusterRole, two RoleBindings: {identity:?}");
    let applied = kubectl(&["apply", "-f", "-"], Some(&identity.join("\n---")));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let kubeconfig = crate::support::service_account_kubeconfig(RELEASE_NAMESPACE, &fullname);
    for (ns, want) in [(a.as_str(), "yes"), (b.as_str(), "yes"), (elsewhere.as_str(), "no")] {
        let out = kubectl_as(&kubeconfig, &["auth", "can-i", "list", "configmaps", "-n", ns], None);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "configmaps in {ns}");
    }
    let out = kubectl_as(&kubeconfig, &["auth", "can-i", "list", "agents", "--all-namespaces"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "agents cluster-wide");

    let operator = Operator::start_as(&kubeconfig, &format!("{a},{b}"));
    let agents = |ns: &str| Api::<Agent>::namespaced(admin.clone(), ns);
    let apply = |ns: String, instructions: &'static str| {
        let agents = agents(&ns);
        async move {
            let body = serde_json::json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent",
                "metadata": {"name": "support"}, "spec": {"instructions": instructions}});
            agents.patch("support", &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.unwrap();
        }
    };
    let active = |ns: String, version: i64| {
        let agents = agents(&ns);
        async move {
            eventually(Duration::from_secs(60), || async {
                let agent = agents.get("support").await.ok()?;
                (agent.status?.active_version == Some(version)).then_some(())
            })
            .await
        }
    };
    for ns in [&a, &b, &elsewhere] {
        apply(ns.clone(), "i1").await;
    }
    active(a.clone(), 1).await;
    active(b.clone(), 1).await;
    // A rollback in the second namespace of the list runs as in the first.
    apply(b.clone(), "i2").await;
    active(b.clone(), 2).await;
    let rollback = serde_json::json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentRollback",
        "metadata": {"name": "back"}, "spec": {"agentName": "support", "strategy": "Previous"}});
    let rollbacks = Api::<AgentRollback>::namespaced(admin.clone(), &b);
    rollbacks.create(&Default::default(), &serde_json::from_value(rollback).unwrap()).await.unwrap();
    active(b.clone(), 3).await;
    // The rollback's status is its record's copy, written just after the Agent's status.
    let phase = || async { rollbacks.get("back").await.ok()?.status?.phase.filter(|p| p.is_terminal()) };
    assert_eq!(
        eventually(Duration::from_secs(30), || async { phase().await.map(Some) }).await,
        Some(RollbackPhase::Succeeded)
    );
    // Outside the list: never touched, not even seen.
    let outside = agents(&elsewhere).get("support").await.unwrap();
    assert!(outside.status.is_none(), "{:?}", outside.status);
    let versions = Api::<AgentVersion>::namespaced(admin.clone(), &elsewhere).list(&Default::default()).await.unwrap();
    assert!(versions.items.is_empty());
    // Ready once both namespaces' caches are listed, and nothing failed for want of rights.
    let (status, _) = operator.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    drop(operator);
    let log = std::fs::read_to_string(std::env::temp_dir().join(format!("agent-operator-{a},{b}.log"))).unwrap();
    assert!(!log.contains("Forbidden") && !log.contains("forbidden"), "{log}");
}

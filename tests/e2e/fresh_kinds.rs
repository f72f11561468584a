//! An API server that has never served the operator's kinds refuses creates of each for a few
//! seconds after its CRD appears: its MutatingAdmissionPolicy support learns custom kinds'
//! schemas by polling (every 5 s), and answers 503 "Resource kind ... not found" until then. Only
//! a fresh API server shows it, so each test starts its own control plane. What the project's own
//! clients do about it: `agent-operator check-api` (the chart's hook) waits for it to pass, and
//! `kubectl agent` and the tests' kubectl retry the refusal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::support::{
    OwnControlPlane, client_for, control_plane, kubectl_as, kubectl_once, namespace, repo, served_api_versions,
    wait_crd_established,
};

/// The chart's admission policies, as `helm install` renders them for this control plane.
fn install_policies(kubeconfig: &Path) {
    let rendered = Command::new(&control_plane().helm)
        .args(["template", "agent-operator"])
        .arg(repo().join("charts/agent-operator"))
        .args(["--show-only", "templates/admission-policies.yaml"])
        .args(served_api_versions(kubeconfig))
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let applied = kubectl_as(kubeconfig, &["apply", "-f", "-"], Some(&String::from_utf8_lossy(&rendered.stdout)));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
}

async fn install_crds(client: &kube::Client, names: &[&str]) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in agent_operator::crds::all() {
        let name = crd.metadata.name.clone().unwrap();
        if names.contains(&name.as_str()) {
            api.patch(&name, &PatchParams::apply("agent-operator-tests").force(), &Patch::Apply(&crd)).await.unwrap();
            wait_crd_established(&api, &name).await;
        }
    }
}

/// How many creates of `resource` the API server answered with 503, from its own metrics.
fn refused_creates(kubeconfig: &Path, resource: &str) -> u64 {
    let out = kubectl_as(kubeconfig, &["get", "--raw", "/metrics"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("code=\"503\"")
                && l.contains(&format!("resource=\"{resource}\""))
                && l.contains("verb=\"POST\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn agent(ns: &str, name: &str) -> String {
    format!(
        r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"Agent","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"instructions":"v1"}}}}"#
    )
}

#[tokio::test]
async fn the_tests_kubectl_and_kubectl_agent_retry_a_new_kinds_refusal() {
    let own = OwnControlPlane::start("fresh-kinds-retry", &[]);
    let kubeconfig = &own.cp.kubeconfig;
    let client = client_for(kubeconfig).await;
    let ns = namespace(&client, "fresh-kinds").await;
    install_policies(kubeconfig);

    install_crds(&client, &["agents.agentops.dev", "agentversions.agentops.dev"]).await;
    let created = kubectl_as(kubeconfig, &["create", "-f", "-"], Some(&agent(&ns, "support")));
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let refused = refused_creates(kubeconfig, "agents");
    println!("the tests' kubectl: the Agent's create was refused {refused} time(s) with 503, then created");
    assert!(refused > 0, "the create met no 503: nothing was shown to be retried");

    install_crds(&client, &["agentrollbacks.agentops.dev"]).await;
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-agent"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", &ns, "rollback", "support", "--previous", "--no-wait"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let refused = refused_creates(kubeconfig, "agentrollbacks");
    println!("kubectl agent rollback: the create was refused {refused} time(s) with 503, then created");
    assert!(refused > 0, "the create met no 503: nothing was shown to be retried");
    let stamped = kubectl_as(
        kubeconfig,
        &["get", "agentrollbacks", "-n", &ns, "-o", "jsonpath={.items[*].spec.requestedBy}"],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&stamped.stdout), "admin", "the rollback exists, stamped by the chart's policy");

    // Permanent refusals come back at once: an invalid Agent is not retried.
    let started = std::time::Instant::now();
    let invalid = kubectl_as(kubeconfig, &["create", "-f", "-"], Some(&agent(&ns, "Not_A_Name")));
    assert!(!invalid.status.success() && started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn check_api_returns_once_a_plain_create_of_every_kind_is_admitted_and_gives_up_with_a_reason() {
    let own = OwnControlPlane::start("fresh-kinds-check", &[]);
    let kubeconfig = &own.cp.kubeconfig;
    let client = client_for(kubeconfig).await;
    let ns = namespace(&client, "fresh-kinds").await;
    install_policies(kubeconfig);
    install_crds(&client, &["agents.agentops.dev", "agentversions.agentops.dev", "agentrollbacks.agentops.dev"]).await;

    let check = |namespace: &str, timeout: &str| {
        Command::new(env!("CARGO_BIN_EXE_agent-operator"))
            .args(["check-api", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--namespace", namespace, "--policies", "mutating", "--timeout", timeout])
            .output()
            .unwrap()
    };
    let out = check(&ns, "60");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(stdout.contains("AgentRollback: admitted") && stdout.contains("Agent: admitted"), "{stdout}");
    assert!(stdout.contains("not yet (503"), "the check met no 503 on a fresh API server: {stdout}");

    // What a pipeline runs next, with no retry: admitted, and stamped by the policies.
    let created = kubectl_once(kubeconfig, &["create", "-f", "-"], Some(&agent(&ns, "support")));
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let rollback = format!(
        r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"AgentRollback","metadata":{{"name":"back","namespace":"{ns}"}},"spec":{{"agentName":"support","strategy":"Previous"}}}}"#
    );
    let created =
        kubectl_once(kubeconfig, &["create", "-o", "jsonpath={.spec.requestedBy}", "-f", "-"], Some(&rollback));
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    assert_eq!(String::from_utf8_lossy(&created.stdout), "admin");

    // Bounded: a namespace that never comes is waited for, then named.
    let out = check("never-created", "2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gave up after") && stderr.contains("never-created"), "{stderr}");
}

//! `kubectl agent`, driven as a process: its output and exit codes for every command, each
//! failure reason, a missing agent, dry runs, and kubectl's own plugin mechanism.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use agent_operator::api::Agent;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use crate::rollback::{Setup, setup};
use crate::support::{
    Operator, OwnControlPlane, client, client_for, control_plane, eventually, install_crds, namespace,
};

fn plugin(s: &Setup, args: &[&str]) -> Output {
    plugin_in(&s.ns, args)
}

/// Runs the plugin, which must exit within a minute: one that hangs (a task left running at
/// the end of main keeps the runtime from shutting down) fails the test instead of the run.
fn plugin_in(ns: &str, args: &[&str]) -> Output {
    plugin_on(&control_plane().kubeconfig, ns, args)
}

pub(crate) fn plugin_on(kubeconfig: &Path, ns: &str, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .args(["--kill-after=5", "60", env!("CARGO_BIN_EXE_kubectl-agent")])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("kubectl-agent runs");
    let (code, stdout, stderr) = text(&out);
    assert_ne!(code, 124, "kubectl-agent {args:?} did not exit within 60 s:\n{stdout}\n{stderr}");
    out
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn history_show_and_diff_read_an_agents_versions() {
    let s = setup("plugin-read").await;
    s.agent_with_versions("support", 3, 10).await;

    let (code, out, _) = text(&plugin(&s, &["history", "support"]));
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("VERSION") && lines[0].contains("PUBLISHED-BY") && lines[0].contains("REASON"),
        "{out}"
    );
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&first[..3], ["3", "*", "yes"], "newest first, marked active and delivered: {out}");
    assert!(lines[0].contains("DELIVERED"), "{out}");
    assert!(lines[3].starts_with('1'), "{out}");

    let (code, out, _) = text(&plugin(&s, &["history", "support", "-o", "json"]));
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(list["items"][0]["spec"]["version"], 3);
    let (_, out, _) = text(&plugin(&s, &["history", "support", "-o", "yaml"]));
    assert!(out.contains("kind: List"), "{out}");

    let (code, out, _) = text(&plugin(&s, &["show", "support"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("# support-v3 (version 3, active)") && out.contains("instructions: i3"), "{out}");
    let (_, out, _) = text(&plugin(&s, &["show", "support", "1"]));
    assert!(out.contains("instructions: i1"), "{out}");

    let (code, out, _) = text(&plugin(&s, &["diff", "support", "1"]));
    assert_eq!(code, 0);
    assert_eq!(out, "--- version 1\n+++ version 3\n~ instructions: \"i1\" -> \"i3\"\n");
    let (_, out, _) = text(&plugin(&s, &["diff", "support", "2", "2"]));
    assert!(out.ends_with("No differences.\n"), "{out}");

    let (code, _, err) = text(&plugin(&s, &["show", "support", "9"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("version 9 of agent \"support\" not found") && err.contains("kubectl agent history support"),
        "{err}"
    );
    let (code, _, err) = text(&plugin(&s, &["history", "ghost"]));
    assert_eq!(code, 1);
    assert!(err.contains("agent \"ghost\" not found in namespace") && err.contains("kubectl get agents"), "{err}");
}

#[tokio::test]
async fn rollback_streams_its_progress_and_exits_by_its_outcome() {
    let s = setup("plugin-rollback").await;
    s.agent_with_versions("support", 2, 10).await;

    let (code, out, err) = text(&plugin(&s, &["rollback", "support", "--to", "1", "--reason", "v2 is worse"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("agentrollback.agentops.dev/support-rollback-") && out.contains(" created"), "{out}");
    assert!(out.contains("Succeeded: Agent rolled back to version 1. New version 3 is now active."), "{out}");
    assert!(out.contains("event RollbackStarted") && out.contains("event RollbackSucceeded"), "{out}");
    let rollbacks = s.rollbacks().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(rollbacks[0].spec.reason.as_deref(), Some("v2 is worse"));

    let (code, out, _) = text(&plugin(&s, &["rollback", "support", "--previous"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Succeeded: Agent rolled back to version 2. New version 4 is now active."), "{out}");
    let (code, out, _) = text(&plugin(&s, &["rollback", "support", "--pop"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Succeeded: Version 4 was deleted. Version 3 is now active."), "{out}");

    // Waiting for delivery: the ConfigMap's progress, then the delivered version.
    let (code, out, err) = text(&plugin(&s, &["rollback", "support", "--previous", "--wait=delivered"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("New version 4 is now active."), "{out}");
    assert!(out.contains("ConfigMap support-agent: version 4"), "{out}");
    assert!(out.trim_end().ends_with("Delivered: version 4 is what the running agent has."), "{out}");
    let (code, out, _) = text(&plugin(&s, &["rollback", "support", "--pop"]));
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = text(&plugin(&s, &["rollback", "support", "--pop", "--no-wait"]));
    assert_eq!(code, 0);
    assert!(out.trim().ends_with("created"), "{out}");
}

#[tokio::test]
async fn every_failure_reason_exits_non_zero_with_the_reason_and_message() {
    let s = setup("plugin-fail").await;
    s.agent_with_versions("two", 2, 10).await;
    s.agent_with_versions("one", 1, 10).await;
    let cases: [(&[&str], &str); 6] = [
        (&["rollback", "ghost", "--previous"], "AgentNotFound"),
        (&["rollback", "two", "--to", "9"], "VersionNotFound"),
        (&["rollback", "two", "--to", "2"], "AlreadyActive"),
        (&["rollback", "one", "--previous"], "NoPreviousVersion"),
        (&["rollback", "one", "--pop"], "AtFirstVersion"),
        (&["rollback", "two", "--to", "1", "--expect-active", "1"], "ActiveVersionChanged"),
    ];
    for (args, reason) in cases {
        let (code, out, err) = text(&plugin(&s, args));
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.contains("Failed: "), "{args:?}: {out}");
        assert!(err.contains(&format!("failed ({reason}): ")), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn dry_run_shows_the_plan_and_the_diff_and_creates_nothing() {
    let s = setup("plugin-dry").await;
    s.agent_with_versions("support", 2, 10).await;
    let (code, out, _) = text(&plugin(&s, &["rollback", "support", "--to", "1", "--dry-run"]));
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "Dry run: would publish version 3 as a copy of version 1; version 3 would become active.\n--- version 2 (active)\n+++ version 1\n~ instructions: \"i2\" -> \"i1\"\n"
    );
    let (code, out, _) = text(&plugin(&s, &["rollback", "support", "--pop", "--dry-run"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("Dry run: would delete version 2; version 1 would become active."), "{out}");
    let (code, _, err) = text(&plugin(&s, &["rollback", "support", "--to", "2", "--dry-run"]));
    assert_eq!(code, 1);
    assert!(err.contains("would fail (AlreadyActive)"), "{err}");
    assert!(s.rollbacks().list(&ListParams::default()).await.unwrap().items.is_empty(), "a dry run created a rollback");
}

#[tokio::test]
async fn a_rollback_that_does_not_finish_in_time_exits_with_code_3() {
    // No operator watches this namespace, so the rollback never starts.
    let admin = client().await;
    install_crds(&admin).await;
    let ns = namespace(&admin, "plugin-timeout").await;
    let (code, _, err) = text(&plugin_in(&ns, &["rollback", "support", "--pop", "--timeout", "2s"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("did not finish within"), "{err}");
}

#[tokio::test]
async fn it_runs_as_a_kubectl_plugin_with_kubectls_conventions() {
    let s = setup("plugin-kubectl").await;
    s.agent_with_versions("support", 1, 10).await;
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-agent")).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        control_plane().bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // KUBECONFIG from the environment, namespace from the flag, as kubectl does.
    let out = Command::new(control_plane().bin.join("kubectl"))
        .env("PATH", &path)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .args(["agent", "history", "support", "-n", &s.ns, "--context", "local"])
        .output()
        .unwrap();
    let (code, out, err) = text(&out);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("VERSION"), "{out}");

    let help = Command::new(env!("CARGO_BIN_EXE_kubectl-agent")).args(["rollback", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--to",
        "--previous",
        "--pop",
        "--reason",
        "--dry-run",
        "--no-wait",
        "--timeout",
        "--namespace",
        "--context",
        "--kubeconfig",
    ] {
        assert!(help.contains(flag), "rollback --help lacks {flag}: {help}");
    }
    let (code, _, err) = text(&plugin(&s, &["rollback", "support"]));
    assert_eq!(code, 2, "a rollback needs one of --to, --previous, --pop: {err}");
    assert!(err.contains("--to") || err.contains("required"), "{err}");
}

/// Where the API server refuses streaming lists (the WatchList feature turned off, as by default
/// before Kubernetes 1.32), the operator lists in pages (it asks first: its watches would never
/// start otherwise), and the plugin's early watch of the rollback's Events falls back to kube's
/// watcher: the Agent is reconciled, and the rollback followed to its end with its Events.
#[tokio::test]
async fn where_streaming_lists_are_refused_the_operator_lists_in_pages_and_the_plugin_still_prints_events() {
    let own = OwnControlPlane::start("no-watch-list", &["--feature-gates=WatchList=false"]);
    let client = client_for(&own.cp.kubeconfig).await;
    install_crds(&client).await;
    let ns = namespace(&client, "plugin-no-watch-list").await;
    let streaming = format!(
        "/api/v1/namespaces/{ns}/events?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
    );
    let request = axum::http::Request::get(streaming).body(Vec::new()).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), client.request_text(request)).await;
    assert!(matches!(refused, Ok(Err(kube::Error::Api(ref status))) if status.code == 422), "{refused:?}");

    let _operator = Operator::start_logged(&own.cp.kubeconfig, &ns, &[], "info");
    let agents: Api<Agent> = Api::namespaced(client.clone(), &ns);
    for instructions in ["v1", "v2"] {
        let body = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "support"},
                          "spec": {"instructions": instructions}});
        agents.patch("support", &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.unwrap();
        eventually(Duration::from_secs(60), || async {
            let a = agents.get("support").await.ok()?;
            (a.status?.observed_generation == a.metadata.generation).then_some(())
        })
        .await;
    }
    let (code, out, err) = text(&plugin_on(&own.cp.kubeconfig, &ns, &["rollback", "support", "--previous"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Succeeded: Agent rolled back to version 1. New version 3 is now active."), "{out}");
    assert!(out.contains("event RollbackSucceeded"), "{out}");
}

/// A change cause, a rollback's reason and a field name are written by users; printed raw, a
/// control sequence in them would reach the reader's terminal (here an OSC 52 clipboard write and
/// a screen clear).
#[tokio::test]
async fn text_users_wrote_reaches_the_terminal_with_its_control_characters_escaped() {
    let s = setup("plugin-escape").await;
    let hostile = "fixed\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2J\u{9b}31m";
    // JSON: the API server's YAML parser (server-side apply) refuses control characters.
    let body = json!({"metadata": {"annotations": {"agentops.dev/change-cause": hostile}},
                      "spec": {"instructions": "v1", "advancedSettings": {format!("key\u{1b}[2J"): "x"}}});
    s.apply_agent("support", json!({"instructions": "v0"})).await;
    s.settled_agent("support").await;
    // Version 2: the hostile change cause and field name.
    s.agents().patch("support", &PatchParams::default(), &Patch::Merge(body)).await.unwrap();
    s.settled_agent("support").await;

    for args in [vec!["history", "support"], vec!["diff", "support", "1", "2"]] {
        let (code, out, err) = text(&plugin(&s, &args));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{args:?} printed a control character: {out:?}");
        assert!(out.contains("\\u{1b}"), "{args:?} shows the escape instead: {out}");
    }
    let (code, out, err) = text(&plugin(&s, &["rollback", "support", "--previous", "--reason", hostile]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!format!("{out}{err}").chars().any(|c| c.is_control() && c != '\n'), "{out:?}{err:?}");
}

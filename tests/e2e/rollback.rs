//! The operator, running as its own process, does what docs/reference.md says: publishing,
//! Restore, Previous, Pop, every failure reason, history pruning, apply-time refusals, ordering.

use std::collections::BTreeMap;
use std::time::Duration;

use agent_operator::api::{Agent, AgentRollback, AgentVersion, RollbackPhase};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::reference::{Request, published};
use crate::support::{Operator, client, eventually, install_crds, kubectl, kubectl_as, namespace, user_kubeconfig};

const WAIT: Duration = Duration::from_secs(60);

pub struct Setup {
    pub client: Client,
    pub ns: String,
    /// The operator process watching `ns`; none where the operator runs in the cluster.
    pub operator: Option<Operator>,
}

pub async fn setup(prefix: &str) -> Setup {
    let mut s = setup_without_operator(prefix).await;
    s.operator = Some(Operator::start(&s.ns));
    s
}

/// A namespace with the CRDs installed, for an operator that runs elsewhere.
pub async fn setup_without_operator(prefix: &str) -> Setup {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix).await;
    Setup { client, ns, operator: None }
}

impl Setup {
    pub fn agents(&self) -> Api<Agent> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn rollbacks(&self) -> Api<AgentRollback> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Server-side applies an Agent, as kubectl or a GitOps tool would.
    pub async fn apply_agent(&self, name: &str, spec: Value) -> Agent {
        let body =
            json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name}, "spec": spec});
        self.agents()
            .patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(body))
            .await
            .expect("agent applied")
    }

    /// Waits until the operator has handled the Agent's current generation.
    pub async fn settled_agent(&self, name: &str) -> Agent {
        eventually(WAIT, || async {
            let agent = self.agents().get(name).await.ok()?;
            let status = agent.status.as_ref()?;
            let ready = status.conditions.iter().any(|c| {
                c.type_ == "Ready" && c.status == "True" && c.observed_generation == agent.metadata.generation
            });
            (status.observed_generation == agent.metadata.generation && ready).then_some(agent)
        })
        .await
    }

    pub async fn create_rollback(&self, name: &str, agent: &str, strategy: &str, target: Option<i64>) -> AgentRollback {
        let mut spec = json!({"agentName": agent, "strategy": strategy});
        if let Some(t) = target {
            spec["targetVersion"] = json!(t);
        }
        let body: AgentRollback =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("rollback");
        self.rollbacks().create(&PostParams::default(), &body).await.expect("rollback created")
    }

    pub async fn terminal(&self, name: &str) -> AgentRollback {
        eventually(WAIT, || async {
            let rb = self.rollbacks().get(name).await.ok()?;
            rb.status.as_ref()?.phase.filter(|p| p.is_terminal())?;
            Some(rb)
        })
        .await
    }

    /// Waits for the rollback to end, and checks that it ended as `want` says: succeeded with
    /// that active version, or failed for that reason.
    pub async fn expect_outcome(&self, name: &str, want: Result<i64, &str>, context: &str) {
        let status = self.terminal(name).await.status.expect("terminal has a status");
        match want {
            Ok(active) => assert_eq!(
                (status.phase, status.active_version),
                (Some(RollbackPhase::Succeeded), Some(active)),
                "{name}: {context}"
            ),
            Err(reason) => assert_eq!(status.reason.as_deref(), Some(reason), "{name}: {context}"),
        }
    }

    /// The Agent's versions: number → instructions.
    pub async fn history(&self, agent: &str) -> BTreeMap<i64, String> {
        self.versions(agent)
            .await
            .into_iter()
            .map(|v| (v.spec.version, v.spec.snapshot.instructions.unwrap_or_default()))
            .collect()
    }

    pub async fn versions(&self, agent: &str) -> Vec<AgentVersion> {
        let api: Api<AgentVersion> = Api::namespaced(self.client.clone(), &self.ns);
        let mut items = api
            .list(&ListParams::default().labels(&format!("agentops.dev/agent={agent}")))
            .await
            .expect("versions")
            .items;
        items.sort_by_key(|v| v.spec.version);
        items
    }

    /// Waits until the object has at least `count` Events with `reason` (Events are published
    /// in the background), and returns all its Events.
    pub async fn wait_events(&self, name: &str, reason: &str, count: usize) -> Vec<(String, String)> {
        eventually(WAIT, || async {
            let events = self.events_for(name).await;
            (events.iter().filter(|(r, _)| r == reason).count() >= count).then_some(events)
        })
        .await
    }

    pub async fn events_for(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.ns);
        let list = api.list(&ListParams::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Sets up an Agent with versions 1..=n, whose instructions are "i1".."in".
    pub async fn agent_with_versions(&self, name: &str, n: i64, limit: i64) -> Agent {
        for i in 1..=n {
            self.apply_agent(name, json!({"instructions": format!("i{i}"), "revisionHistoryLimit": limit})).await;
            self.settled_agent(name).await;
        }
        self.settled_agent(name).await
    }
}

fn phase(rb: &AgentRollback) -> Option<RollbackPhase> {
    rb.status.as_ref().and_then(|s| s.phase)
}

fn condition(rb: &AgentRollback, type_: &str) -> Option<(String, String)> {
    rb.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn each_changed_generation_publishes_one_version_and_nothing_else_does() {
    let s = setup("e2e-publish").await;
    let agent = s
        .apply_agent(
            "support",
            json!({"instructions": "one", "steps": [{"name": "greet", "custom": {"kept": true}}], "temperature": 1}),
        )
        .await;
    let agent = s.settled_agent(&agent.name_any()).await;
    assert_eq!(agent.status.as_ref().and_then(|st| st.active_version), Some(1));

    // Unknown fields inside steps are kept, in the Agent and in the snapshot.
    let v1 = &s.versions("support").await[0];
    assert_eq!(v1.name_any(), "support-v1");
    assert_eq!(v1.spec.snapshot.steps.as_ref().unwrap()[0]["custom"], json!({"kept": true}));
    assert_eq!(v1.labels().get("agentops.dev/version").map(String::as_str), Some("1"));
    assert_eq!(v1.owner_references()[0].uid, agent.uid().unwrap());

    // An edit with a change-cause annotation publishes version 2.
    s.agents()
        .patch("support", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"agentops.dev/change-cause": "warmer"}}, "spec": {"temperature": 1.5}})))
        .await
        .unwrap();
    s.settled_agent("support").await;
    let versions = s.versions("support").await;
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].spec.change_cause.as_deref(), Some("warmer"));
    assert_eq!(versions[1].spec.snapshot.temperature, Some(1.5));

    // Only the history limit changes: a new generation, no new version.
    let before = s.agents().get("support").await.unwrap().metadata.generation;
    s.agents()
        .patch("support", &PatchParams::default(), &Patch::Merge(json!({"spec": {"revisionHistoryLimit": 5}})))
        .await
        .unwrap();
    let agent = s.settled_agent("support").await;
    assert!(agent.metadata.generation > before);
    assert_eq!(s.versions("support").await.len(), 2);

    // `kubectl wait` reads the Agent's Ready condition.
    let out = kubectl(&["-n", &s.ns, "wait", "--for=condition=Ready", "agent/support", "--timeout=30s"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = s.wait_events("support", "VersionPublished", 2).await;
    let published: Vec<&str> =
        events.iter().filter(|(r, _)| r == "VersionPublished").map(|(_, n)| n.as_str()).collect();
    assert_eq!(published.len(), 2, "{events:?}");
    assert!(published.contains(&"Published version 2 from generation 2"), "{events:?}");
}

#[tokio::test]
async fn restore_publishes_a_copy_as_a_new_version_and_leaves_the_spec_alone() {
    let s = setup("e2e-restore").await;
    let agent = s.agent_with_versions("support", 3, 10).await;
    let spec_before = agent.spec.clone();

    let manifest = format!(
        "apiVersion: agentops.dev/v1alpha1\nkind: AgentRollback\nmetadata:\n  name: back-to-1\n  namespace: {}\nspec:\n  agentName: support\n  strategy: Restore\n  targetVersion: 1\n  reason: v3 answers badly\n",
        s.ns
    );
    let out = kubectl(&["apply", "-f", "-"], Some(&manifest));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        kubectl(&["-n", &s.ns, "wait", "--for=condition=Ready", "agentrollback/back-to-1", "--timeout=60s"], None);
    assert!(out.status.success(), "kubectl wait: {}", String::from_utf8_lossy(&out.stderr));

    let rb = s.terminal("back-to-1").await;
    let status = rb.status.clone().unwrap();
    assert_eq!(status.phase, Some(RollbackPhase::Succeeded));
    assert_eq!(status.message.as_deref(), Some("Agent rolled back to version 1. New version 4 is now active."));
    assert_eq!(
        (status.from_version, status.restored_version, status.new_version, status.active_version),
        (Some(3), Some(1), Some(4), Some(4))
    );
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(condition(&rb, "Stalled").map(|c| c.0), Some("False".into()));

    let versions = s.versions("support").await;
    let v4 = versions.iter().find(|v| v.spec.version == 4).expect("version 4");
    assert_eq!(v4.spec.snapshot, versions[0].spec.snapshot);
    assert_eq!(v4.spec.snapshot_hash, versions[0].spec.snapshot_hash);
    assert_eq!((v4.spec.rollback_from_version, v4.spec.rollback_name.as_deref()), (Some(1), Some("back-to-1")));
    assert_eq!(v4.spec.change_cause.as_deref(), Some("v3 answers badly"));

    let agent = s.settled_agent("support").await;
    assert_eq!(agent.spec, spec_before, "a rollback never rewrites the Agent's spec");
    let st = agent.status.unwrap();
    assert_eq!((st.active_version, st.version_count), (Some(4), Some(4)));
    assert_eq!(st.last_rollback.map(|l| l.name), Some("back-to-1".into()));

    // Re-applying the finished rollback's manifest changes nothing.
    let out = kubectl(&["apply", "-f", "-"], Some(&manifest));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"), "{}", String::from_utf8_lossy(&out.stdout));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.rollbacks().get("back-to-1").await.unwrap().status, rb.status);
    assert_eq!(s.versions("support").await.len(), 4);

    let rb_events: Vec<String> = s.events_for("back-to-1").await.into_iter().map(|e| e.0).collect();
    assert!(
        rb_events.contains(&"RollbackStarted".into()) && rb_events.contains(&"RollbackSucceeded".into()),
        "{rb_events:?}"
    );
    let agent_events: Vec<String> = s.events_for("support").await.into_iter().map(|e| e.0).collect();
    assert!(agent_events.contains(&"RolledBack".into()), "{agent_events:?}");

    // A later edit of the spec publishes as usual.
    s.apply_agent("support", json!({"instructions": "i5", "revisionHistoryLimit": 10})).await;
    s.settled_agent("support").await;
    assert_eq!(s.history("support").await.get(&5).map(String::as_str), Some("i5"));
}

#[tokio::test]
async fn previous_flips_between_two_states_and_pop_deletes_the_latest() {
    let s = setup("e2e-prev-pop").await;
    s.agent_with_versions("support", 2, 10).await;
    s.create_rollback("prev-1", "support", "Previous", None).await;
    assert_eq!(phase(&s.terminal("prev-1").await), Some(RollbackPhase::Succeeded));
    s.create_rollback("prev-2", "support", "Previous", None).await;
    assert_eq!(phase(&s.terminal("prev-2").await), Some(RollbackPhase::Succeeded));
    let history: Vec<String> = s.history("support").await.into_values().collect();
    assert_eq!(history, ["i1", "i2", "i1", "i2"]);

    s.create_rollback("pop-1", "support", "Pop", None).await;
    let rb = s.terminal("pop-1").await;
    let st = rb.status.unwrap();
    assert_eq!(st.phase, Some(RollbackPhase::Succeeded));
    assert_eq!((st.from_version, st.popped_version, st.active_version), (Some(4), Some(4), Some(3)));
    assert_eq!(st.popped_snapshot.and_then(|d| d.instructions).as_deref(), Some("i2"));
    assert_eq!(st.message.as_deref(), Some("Version 4 was deleted. Version 3 is now active."));
    assert_eq!(s.history("support").await.into_keys().collect::<Vec<_>>(), [1, 2, 3]);
    let agent = s.settled_agent("support").await;
    assert_eq!(agent.status.and_then(|st| st.active_version), Some(3));
}

#[tokio::test]
async fn every_failure_reason_fails_the_rollback_and_changes_nothing() {
    let s = setup("e2e-failures").await;
    s.agent_with_versions("two", 2, 10).await;
    s.agent_with_versions("one", 1, 10).await;
    // Rollback name, Agent, strategy, targetVersion, expectedActiveVersion, expected reason.
    type Case = (&'static str, &'static str, &'static str, Option<i64>, Option<i64>, &'static str);
    let cases: [Case; 6] = [
        ("f-agent", "ghost", "Previous", None, None, "AgentNotFound"),
        ("f-version", "two", "Restore", Some(7), None, "VersionNotFound"),
        ("f-active", "two", "Restore", Some(2), None, "AlreadyActive"),
        ("f-previous", "one", "Previous", None, None, "NoPreviousVersion"),
        ("f-pop", "one", "Pop", None, None, "AtFirstVersion"),
        ("f-expected", "two", "Restore", Some(1), Some(1), "ActiveVersionChanged"),
    ];
    for (name, agent, strategy, target, expected, reason) in cases {
        let before = s.history(agent).await;
        let mut spec = json!({"agentName": agent, "strategy": strategy});
        if let Some(t) = target {
            spec["targetVersion"] = json!(t);
        }
        if let Some(e) = expected {
            spec["expectedActiveVersion"] = json!(e);
        }
        let body: AgentRollback = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        s.rollbacks().create(&PostParams::default(), &body).await.unwrap();
        let rb = s.terminal(name).await;
        let st = rb.status.clone().unwrap();
        assert_eq!(st.phase, Some(RollbackPhase::Failed), "{name}");
        assert_eq!(st.reason.as_deref(), Some(reason), "{name}");
        assert!(st.message.as_deref().is_some_and(|m| !m.is_empty()), "{name}");
        assert_eq!(condition(&rb, "Stalled"), Some(("True".into(), reason.into())), "{name}");
        assert_eq!(condition(&rb, "Ready").map(|c| c.0), Some("False".into()), "{name}");
        assert_eq!(s.history(agent).await, before, "{name} changed nothing");
        s.wait_events(name, "RollbackFailed", 1).await;
    }
    let out = kubectl(&["-n", &s.ns, "get", "agrb", "f-active", "-o", "jsonpath={.status.message}"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Cannot roll back to the current active version (2).");
}

#[tokio::test]
async fn history_beyond_the_limit_is_pruned_oldest_first() {
    let s = setup("e2e-prune").await;
    s.agent_with_versions("support", 5, 3).await;
    assert_eq!(s.history("support").await.into_keys().collect::<Vec<_>>(), [3, 4, 5]);
    // Each prune is its own Event, not folded into the last one's series.
    let notes: Vec<String> = s
        .wait_events("support", "VersionsPruned", 2)
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "VersionsPruned")
        .map(|(_, note)| note)
        .collect();
    for pruned in ["Deleted version(s) 1:", "Deleted version(s) 2:"] {
        assert!(notes.iter().any(|n| n.starts_with(pruned)), "{notes:?}");
    }
    s.create_rollback("to-3", "support", "Restore", Some(3)).await;
    assert_eq!(phase(&s.terminal("to-3").await), Some(RollbackPhase::Succeeded));
    // The Agent's status, written before the rollback's, already counts the versions kept;
    // the deletes follow the rollback's end (docs/architecture.md, exactly-once step 4).
    let status = s.agents().get("support").await.expect("agent").status.expect("status");
    assert_eq!((status.active_version, status.version_count), (Some(6), Some(3)));
    let kept = eventually(WAIT, || async {
        let kept: Vec<i64> = s.history("support").await.into_keys().collect();
        (kept.len() == 3).then_some(kept)
    })
    .await;
    assert_eq!(kept, [4, 5, 6]);
    // A pruned version cannot be restored.
    s.create_rollback("to-1", "support", "Restore", Some(1)).await;
    assert_eq!(s.terminal("to-1").await.status.unwrap().reason.as_deref(), Some("VersionNotFound"));
    let agent = s.settled_agent("support").await;
    assert_eq!(agent.status.and_then(|st| st.version_count), Some(3));
}

#[tokio::test]
async fn a_version_deleted_by_someone_else_is_noticed_by_the_status_and_the_next_rollback() {
    let s = setup("e2e-foreign-delete").await;
    s.agent_with_versions("support", 4, 10).await;
    // A rollback first: the operator now holds the state its sync left.
    s.create_rollback("to-1", "support", "Restore", Some(1)).await;
    assert_eq!(phase(&s.terminal("to-1").await), Some(RollbackPhase::Succeeded));
    assert_eq!(s.history("support").await.into_keys().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);

    let versions: Api<AgentVersion> = Api::namespaced(s.client.clone(), &s.ns);
    versions.delete("support-v4", &DeleteParams::default()).await.expect("deleted by hand");
    let status = eventually(WAIT, || async {
        let status = s.agents().get("support").await.ok()?.status?;
        (status.version_count == Some(4)).then_some(status)
    })
    .await;
    assert_eq!(status.active_version, Some(5));

    // Previous goes to the newest version below the active one that still exists.
    s.create_rollback("back", "support", "Previous", None).await;
    let st = s.terminal("back").await.status.unwrap();
    assert_eq!(st.phase, Some(RollbackPhase::Succeeded));
    assert_eq!((st.restored_version, st.new_version), (Some(3), Some(6)));
    assert_eq!(s.history("support").await.get(&6).map(String::as_str), Some("i3"));
}

/// A spec with `count` advancedSettings of `chars` characters each.
fn wide_settings(instructions: usize, count: usize, chars: usize) -> String {
    let settings: BTreeMap<String, String> = (0..count).map(|i| (format!("s{i:02}"), "x".repeat(chars))).collect();
    json!({ "instructions": "i".repeat(instructions), "advancedSettings": settings }).to_string()
}

#[tokio::test]
async fn bad_input_is_refused_at_apply_time_with_a_message_naming_the_rule() {
    let s = setup("e2e-refuse").await;
    s.agent_with_versions("support", 1, 10).await;
    let ns = s.ns.as_str();
    let rollback = |name: &str, spec: &str| {
        format!(
            "{{\"apiVersion\":\"agentops.dev/v1alpha1\",\"kind\":\"AgentRollback\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{ns}\"}},\"spec\":{spec}}}"
        )
    };
    let agent = |name: &str, spec: &str| {
        format!(
            "{{\"apiVersion\":\"agentops.dev/v1alpha1\",\"kind\":\"Agent\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{ns}\"}},\"spec\":{spec}}}"
        )
    };
    let cases = [
        (
            rollback("r1", r#"{"agentName":"support","strategy":"Restore"}"#),
            "spec.targetVersion",
            "targetVersion is required when strategy is Restore",
        ),
        (
            rollback("r2", r#"{"agentName":"support","strategy":"Pop","targetVersion":1}"#),
            "spec.targetVersion",
            "targetVersion is only allowed when strategy is Restore",
        ),
        (
            rollback("r3", r#"{"agentName":"support","strategy":"Restore","targetVersion":-2}"#),
            "spec.targetVersion",
            "greater than or equal to 1",
        ),
        (rollback("r4", r#"{"agentName":"support","strategy":"Undo"}"#), "spec.strategy", "supported values"),
        (rollback("r5", r#"{"strategy":"Pop"}"#), "spec.agentName", "Required value"),
        (agent("hot", r#"{"temperature":7}"#), "spec.temperature", "less than or equal to 2"),
        (agent("short", r#"{"revisionHistoryLimit":0}"#), "spec.revisionHistoryLimit", "greater than or equal to 1"),
        (agent("vis", r#"{"visibility":"everyone"}"#), "spec.visibility", "supported values"),
        // Each setting within its own limit, all of them over what a version may hold: refused
        // here, not left unpublished.
        (
            agent("wide", &wide_settings(100_000, 60, 4000)),
            "spec",
            "advancedSettings take more than 323584 bytes together",
        ),
        // Names of objects: what no Agent could be called is refused, not looked up for ever.
        (rollback("r6", r#"{"agentName":"$(x)","strategy":"Pop"}"#), "spec.agentName", "should match"),
        (agent(&"a".repeat(64), "{}"), "metadata.name", "at most 63 characters"),
        (rollback("r7", &format!(r#"{{"agentName":"{}","strategy":"Pop"}}"#, "a".repeat(64))), "spec.agentName", "63"),
        // A rollback's name labels the version it makes: one longer than a label value would
        // be refused at that version's create and leave the rollback Running for ever.
        (
            rollback(
                "support-rollback-after-incident-inc-4711-bad-prompt-restore-v1-extra",
                r#"{"agentName":"support","strategy":"Previous"}"#,
            ),
            "metadata.name",
            "at most 63 characters",
        ),
    ];
    for (manifest, field, message) in cases {
        // A client-side apply copies the manifest into an annotation, which may hold 256 KiB:
        // a larger one goes server-side, as docs/reference.md says.
        let how: &[&str] = if manifest.len() > 200_000 { &["apply", "--server-side"] } else { &["apply"] };
        let out = kubectl(&[how, &["-f", "-"]].concat(), Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{manifest} was accepted");
        assert!(stderr.contains(field) && stderr.contains(message), "{manifest}: {stderr}");
    }
    // The longest name allowed works throughout: its versions are found by their label.
    let longest = "a".repeat(63);
    s.agent_with_versions(&longest, 2, 10).await;
    s.create_rollback("longest", &longest, "Previous", None).await;
    assert_eq!(phase(&s.terminal("longest").await), Some(RollbackPhase::Succeeded));
    let longest_rollback = "r".repeat(63);
    s.create_rollback(&longest_rollback, &longest, "Previous", None).await;
    assert_eq!(phase(&s.terminal(&longest_rollback).await), Some(RollbackPhase::Succeeded));

    // A finished rollback and a version cannot be edited.
    s.create_rollback("done", "support", "Pop", None).await;
    s.terminal("done").await;
    let out = kubectl(
        &["-n", ns, "patch", "agrb", "done", "--type=merge", "-p", r#"{"spec":{"reason":"rewrite history"}}"#],
        None,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AgentRollback spec is immutable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(
        &["-n", ns, "patch", "agv", "support-v1", "--type=merge", "-p", r#"{"spec":{"changeCause":"edited"}}"#],
        None,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AgentVersion spec is immutable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_user_without_create_on_agentrollbacks_gets_403() {
    let s = setup("e2e-forbidden").await;
    let bob = user_kubeconfig("bob", &["test-users"]);
    let manifest = format!(
        "{{\"apiVersion\":\"agentops.dev/v1alpha1\",\"kind\":\"AgentRollback\",\"metadata\":{{\"name\":\"nope\",\"namespace\":\"{}\"}},\"spec\":{{\"agentName\":\"a\",\"strategy\":\"Pop\"}}}}",
        s.ns
    );
    let out = kubectl_as(&bob, &["create", "-f", "-"], Some(&manifest));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Forbidden") && stderr.contains("agentrollbacks"), "{stderr}");
}

#[tokio::test]
async fn fifty_rollbacks_created_at_once_end_as_if_applied_one_by_one_in_creation_order() {
    let s = setup("e2e-fifty").await;
    s.agent_with_versions("support", 3, 1000).await;
    let strategies = ["Restore", "Previous", "Pop", "Restore", "Previous"];
    let requests: Vec<Request> = (0..50)
        .map(|i| {
            let strategy = strategies[i % strategies.len()];
            Request { strategy, target: (strategy == "Restore").then_some((i as i64 * 7) % 9 + 1) }
        })
        .collect();
    let created = futures::future::join_all(requests.iter().enumerate().map(|(i, r)| {
        let s = &s;
        async move { (s.create_rollback(&format!("rb-{i:02}"), "support", r.strategy, r.target).await, r.clone()) }
    }))
    .await;

    // Creation order is the order the API server stored them in.
    let mut ordered: Vec<(u64, String, Request)> = created
        .into_iter()
        .map(|(rb, r)| (rb.resource_version().unwrap().parse().unwrap(), rb.name_any(), r))
        .collect();
    ordered.sort_by_key(|(rv, _, _)| *rv);
    let mut expected = published(3);
    for (_, name, request) in &ordered {
        let want = expected.apply(request);
        let rb = s.terminal(name).await;
        let st = rb.status.unwrap();
        match want {
            Ok(active) => assert_eq!(
                (st.phase, st.active_version),
                (Some(RollbackPhase::Succeeded), Some(active)),
                "{name} {request:?}: {:?}",
                st.message
            ),
            Err(reason) => assert_eq!(st.reason.as_deref(), Some(reason), "{name} {request:?}: {:?}", st.message),
        }
    }
    assert_eq!(s.history("support").await, expected.versions);
}

/// An admission policy of the cluster's own (here: versions above 2 are frozen) refuses the
/// version a rollback or an edit would make. The rollback fails with the API server's words
/// instead of running for ever, the edit is reported on the Agent, and neither holds up the
/// Agent's next rollback.
#[tokio::test]
async fn a_version_the_api_server_refuses_fails_its_rollback_and_stalls_only_its_publish() {
    let s = setup("e2e-refused").await;
    s.agent_with_versions("support", 2, 10).await;
    let policy = format!("freeze-{}", s.ns);
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": policy},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {
                      "resourceRules": [{"apiGroups": ["agentops.dev"], "apiVersions": ["*"],
                                         "operations": ["CREATE"], "resources": ["agentversions"]}],
                      "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": s.ns}}},
                  "validations": [{"expression": "object.spec.version < 3",
                                   "message": "versions above 2 are frozen in this namespace"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": policy},
         "spec": {"policyName": policy, "validationActions": ["Deny"]}}
    ]});
    let out = kubectl(&["apply", "-f", "-"], Some(&manifest.to_string()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A policy takes effect a moment after it is created: wait until a dry run meets it.
    let versions: Api<AgentVersion> = Api::namespaced(s.client.clone(), &s.ns);
    let probe: AgentVersion = serde_json::from_value(json!({
        "metadata": {"name": "support-v3"},
        "spec": {"agentName": "support", "version": 3, "snapshot": {}, "snapshotHash": "0".repeat(64)}
    }))
    .expect("a version");
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    eventually(WAIT, || async {
        let refused = versions.create(&dry_run, &probe).await.err()?;
        refused.to_string().contains("frozen").then_some(())
    })
    .await;

    s.create_rollback("undo", "support", "Previous", None).await;
    let status = s.terminal("undo").await.status.expect("a status");
    assert_eq!((status.phase, status.reason.as_deref()), (Some(RollbackPhase::Failed), Some("VersionRefused")));
    let message = status.message.unwrap_or_default();
    assert!(message.contains("versions above 2 are frozen in this namespace"), "{message}");
    assert_eq!(status.active_version, Some(2));

    let edited = s.apply_agent("support", json!({"instructions": "i3", "revisionHistoryLimit": 10})).await;
    let stalled = eventually(WAIT, || async {
        let agent = s.agents().get("support").await.ok()?;
        let status = agent.status?;
        let stalled = status.conditions.into_iter().find(|c| c.type_ == "Stalled" && c.status == "True")?;
        (stalled.observed_generation == edited.metadata.generation).then_some(stalled)
    })
    .await;
    assert_eq!(stalled.reason, "VersionRefused");
    assert!(stalled.message.contains("versions above 2 are frozen in this namespace"), "{}", stalled.message);
    s.wait_events("support", "VersionRefused", 1).await;

    // The next rollback of the Agent runs: a Pop makes no version.
    s.create_rollback("pop", "support", "Pop", None).await;
    s.expect_outcome("pop", Ok(1), "a refused publish blocks nothing").await;
    assert_eq!(s.history("support").await, BTreeMap::from([(1, "i1".to_string())]));
    let out = kubectl(&["delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", &policy], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A rollback created with a record of its own (`agentops.dev/record`), as anyone may where the
/// chart's admission policies are not installed (and an admin may anywhere): the operator acts
/// on it only as the rollback's spec and the Agent's history allow, so it cannot be made to
/// delete a version other than the newest or to make one out of turn.
#[tokio::test]
async fn a_forged_record_cannot_make_the_operator_delete_or_make_other_versions() {
    let s = setup("e2e-forged").await;
    s.agent_with_versions("support", 3, 10).await;
    let v1 = s.versions("support").await.into_iter().find(|v| v.spec.version == 1).expect("v1");
    let forged = |name: &str, strategy: &str, target: Option<i64>, plan: Value| {
        let record = json!({"status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}});
        let mut record = record;
        for (key, value) in plan.as_object().expect("a plan") {
            record["status"][key] = value.clone();
        }
        let mut spec = json!({"agentName": "support", "strategy": strategy});
        if let Some(target) = target {
            spec["targetVersion"] = json!(target);
        }
        json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentRollback",
               "metadata": {"name": name, "namespace": s.ns,
                            "annotations": {"agentops.dev/record": record.to_string()}},
               "spec": spec})
    };
    let cases = [
        forged("pop-v1", "Pop", None, json!({"poppedVersion": 1, "poppedSnapshotHash": v1.spec.snapshot_hash})),
        forged("restore-as-100", "Restore", Some(1), json!({"restoredVersion": 1, "newVersion": 100})),
        forged("restore-other", "Restore", Some(2), json!({"restoredVersion": 1, "newVersion": 4})),
    ];
    for manifest in cases {
        let name = manifest["metadata"]["name"].as_str().expect("a name").to_string();
        let out = kubectl(&["create", "-f", "-"], Some(&manifest.to_string()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        s.expect_outcome(&name, Err("InvalidRecord"), "a forged record").await;
        let numbers: Vec<i64> = s.history("support").await.into_keys().collect();
        assert_eq!(numbers, [1, 2, 3], "{name} changed the history");
    }
    // The Agent goes on as before.
    s.create_rollback("pop", "support", "Pop", None).await;
    s.expect_outcome("pop", Ok(2), "after forged records").await;
}

//! AgentChannel and AgentPromotion as the API server serves them (docs/reference.md, "Channels
//! and promotions"): what it refuses at apply time, and the defaults it fills in; and channels
//! served by the operator as a process: each serves its pin or the Agent's active version
//! through its own ConfigMap, version-addressed, and keeps the versions it uses.

use std::time::Duration;

use agent_operator::api::{AgentChannel, AgentDefinition, AgentPromotion};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::rollback::{Setup, setup, setup_without_operator};
use crate::support::{eventually, kubectl};

const WAIT: Duration = Duration::from_secs(60);

fn manifest(kind: &str, ns: &str, name: &str, spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"{kind}","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{spec}}}"#
    )
}

fn stderr_of(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let out = kubectl(args, stdin);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn channels_and_promotions_refuse_bad_input_at_apply_time_with_a_message_naming_the_rule() {
    let s = setup_without_operator("e2e-channel-api").await;
    let ns = s.ns.as_str();
    let channel = |name: &str, spec: &str| manifest("AgentChannel", ns, name, spec);
    let promotion = |name: &str, spec: &str| manifest("AgentPromotion", ns, name, spec);
    let cases = [
        // Its automatic rollbacks are named <channel>-auto-v<N>, within a label value's 63.
        (channel(&"c".repeat(51), r#"{"agentName":"support"}"#), "metadata.name", "at most 50 characters"),
        (channel("pinned", r#"{"agentName":"support","version":0}"#), "spec.version", "greater than or equal to 1"),
        (channel("nameless", "{}"), "spec.agentName", "Required value"),
        (
            channel("bake", r#"{"agentName":"support","analysis":{"bakeSeconds":0}}"#),
            "spec.analysis.bakeSeconds",
            "greater than or equal to 1",
        ),
        (
            channel("deadline", r#"{"agentName":"support","analysis":{"progressDeadlineSeconds":-5}}"#),
            "spec.analysis.progressDeadlineSeconds",
            "greater than or equal to 1",
        ),
        (
            channel("workload", r#"{"agentName":"support","delivery":{"restart":[{"kind":"DaemonSet","name":"x"}]}}"#),
            "spec.delivery.restart[0].kind",
            "supported values",
        ),
        (
            promotion("both", r#"{"channel":"prod","version":3,"fromChannel":"staging"}"#),
            "spec.version",
            "exactly one of version and fromChannel",
        ),
        (promotion("neither", r#"{"channel":"prod"}"#), "spec.version", "exactly one of version and fromChannel"),
        (
            promotion("itself", r#"{"channel":"prod","fromChannel":"prod"}"#),
            "spec.fromChannel",
            "must be another channel",
        ),
        (promotion("zero", r#"{"channel":"prod","version":0}"#), "spec.version", "greater than or equal to 1"),
        (
            promotion("stale", r#"{"channel":"prod","version":2,"expectedVersion":-1}"#),
            "spec.expectedVersion",
            "greater than or equal to 1",
        ),
        (promotion("long", &format!(r#"{{"channel":"{}","version":2}}"#, "c".repeat(51))), "spec.channel", "50"),
        (promotion("odd", r#"{"channel":"$(x)","version":2}"#), "spec.channel", "should match"),
        (
            manifest(
                "AgentRollback",
                ns,
                "pop-a-channel",
                r#"{"agentName":"support","channel":"prod","strategy":"Pop"}"#,
            ),
            "spec.strategy",
            "with a channel, strategy is Restore or LastKnownGood",
        ),
        (
            manifest("AgentRollback", ns, "good-what", r#"{"agentName":"support","strategy":"LastKnownGood"}"#),
            "spec.channel",
            "LastKnownGood needs a channel",
        ),
    ];
    for (manifest, field, message) in cases {
        let (accepted, stderr) = stderr_of(&["apply", "-f", "-"], Some(&manifest));
        assert!(!accepted, "{manifest} was accepted");
        assert!(stderr.contains(field) && stderr.contains(message), "{manifest}: {stderr}");
    }

    // The longest name allowed is accepted, and the analysis defaults are filled in.
    let longest = "c".repeat(50);
    let (accepted, stderr) =
        stderr_of(&["apply", "-f", "-"], Some(&channel(&longest, r#"{"agentName":"support","analysis":{}}"#)));
    assert!(accepted, "{stderr}");
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), ns);
    let made = channels.get(&longest).await.unwrap();
    let analysis = made.spec.analysis.expect("the analysis as applied");
    assert_eq!((analysis.bake_seconds, analysis.progress_deadline_seconds), (300, 600));

    // A channel belongs to one Agent; its pin may move.
    let (_, stderr) = stderr_of(
        &["-n", ns, "patch", "agch", &longest, "--type=merge", "-p", r#"{"spec":{"agentName":"other"}}"#],
        None,
    );
    assert!(stderr.contains("spec.agentName is immutable"), "{stderr}");
    let (accepted, stderr) =
        stderr_of(&["-n", ns, "patch", "agch", &longest, "--type=merge", "-p", r#"{"spec":{"version":4}}"#], None);
    assert!(accepted, "a pin is the channel's to move: {stderr}");

    // A promotion is an audit record: its spec never changes.
    let (accepted, stderr) =
        stderr_of(&["create", "-f", "-"], Some(&promotion("to-v2", r#"{"channel":"prod","version":2}"#)));
    assert!(accepted, "{stderr}");
    let (_, stderr) = stderr_of(
        &["-n", ns, "patch", "agpr", "to-v2", "--type=merge", "-p", r#"{"spec":{"reason":"rewrite history"}}"#],
        None,
    );
    assert!(stderr.contains("AgentPromotion spec is immutable"), "{stderr}");
    let promotions: Api<AgentPromotion> = Api::namespaced(s.client.clone(), ns);
    assert!(!promotions.get("to-v2").await.unwrap().spec.allow_failed, "allowFailed is false unless asked for");
}

/// Server-side applies a channel of Agent `support`, as kubectl or a GitOps tool would.
async fn apply_channel(s: &Setup, name: &str, version: Option<i64>) {
    let mut spec = json!({"agentName": "support"});
    if let Some(version) = version {
        spec["version"] = json!(version);
    }
    let body = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel",
        "metadata": {"name": name}, "spec": spec});
    let api: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    api.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.expect("channel applied");
}

fn channel_condition(channel: &AgentChannel, type_: &str) -> Option<(String, String, String)> {
    let c = channel.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until channel `name` serves `version`, Ready at its generation, with its ConfigMap
/// holding that version's snapshot under `agent.json` and `agent-v<N>.json`; returns both.
async fn serving(s: &Setup, name: &str, version: i64, instructions: &str) -> (AgentChannel, ConfigMap) {
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    let (channel, cm) = eventually(WAIT, || async {
        let channel = channels.get(name).await.ok()?;
        let status = channel.status.as_ref()?;
        let ready = channel_condition(&channel, "Ready")?.0 == "True";
        let current = status.observed_generation == channel.metadata.generation;
        let cm = config_maps.get_opt(&format!("{name}-channel")).await.ok()??;
        let holds = cm.annotations().get("agentops.dev/active-version") == Some(&version.to_string());
        (status.version == Some(version) && ready && current && holds).then_some((channel, cm))
    })
    .await;
    let data = cm.data.clone().unwrap();
    for key in ["agent.json".to_string(), format!("agent-v{version}.json")] {
        let snapshot: AgentDefinition = serde_json::from_str(&data[&key]).unwrap();
        assert_eq!(snapshot.instructions.as_deref(), Some(instructions), "{name}: {key}");
    }
    assert_eq!(cm.labels().get("agentops.dev/channel").map(String::as_str), Some(name));
    assert_eq!(cm.labels().get("agentops.dev/agent").map(String::as_str), Some("support"));
    let owner = &cm.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("AgentChannel", channel.uid().unwrap().as_str()));
    (channel, cm)
}

#[tokio::test]
async fn a_channel_serves_its_pin_or_the_active_version_and_keeps_the_versions_it_uses() {
    let s = setup("e2e-channel-serve").await;
    s.agent_with_versions("support", 2, 10).await;
    apply_channel(&s, "production", Some(1)).await;
    apply_channel(&s, "staging", None).await;
    let (production, before) = serving(&s, "production", 1, "i1").await;
    assert_eq!(production.status.as_ref().unwrap().desired_version, Some(1));
    serving(&s, "staging", 2, "i2").await;

    // An edit reaches the following channel only.
    s.apply_agent("support", json!({"instructions": "i3", "revisionHistoryLimit": 10})).await;
    let (staging, cm) = serving(&s, "staging", 3, "i3").await;
    assert_eq!(staging.status.as_ref().unwrap().desired_version, Some(3));
    assert!(!cm.data.unwrap().contains_key("agent-v2.json"), "no workload runs version 2: its key goes");
    let (_, after) = serving(&s, "production", 1, "i1").await;
    assert_eq!(after.resource_version(), before.resource_version(), "production's ConfigMap was written");

    // Pruning keeps what a channel uses: with a limit of 1, version 2 goes, the pinned 1 stays.
    s.apply_agent("support", json!({"instructions": "i3", "revisionHistoryLimit": 1})).await;
    eventually(WAIT, || async {
        let numbers: Vec<i64> = s.versions("support").await.iter().map(|v| v.spec.version).collect();
        (numbers == [1, 3]).then_some(())
    })
    .await;
    s.settled_agent("support").await;

    // A Pop of a version a channel pins fails, and changes nothing (the limit back at 10, so
    // that version 1, unpinned, stays).
    s.apply_agent("support", json!({"instructions": "i3", "revisionHistoryLimit": 10})).await;
    s.settled_agent("support").await;
    apply_channel(&s, "production", Some(3)).await;
    serving(&s, "production", 3, "i3").await;
    s.create_rollback("pop", "support", "Pop", None).await;
    s.expect_outcome("pop", Err("VersionInUse"), "version 3 is pinned by production").await;
    let message = s.terminal("pop").await.status.unwrap().message.unwrap();
    assert!(message.contains("channel production"), "{message}");
    assert_eq!(s.history("support").await.keys().copied().collect::<Vec<_>>(), [1, 3]);

    // A pin to a version that does not exist stalls the channel, which keeps serving its own.
    apply_channel(&s, "production", Some(9)).await;
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    let stalled = eventually(WAIT, || async {
        let channel = channels.get("production").await.ok()?;
        (channel_condition(&channel, "Stalled")?.1 == "VersionNotFound").then_some(channel)
    })
    .await;
    let status = stalled.status.as_ref().unwrap();
    assert_eq!((status.version, status.desired_version), (Some(3), Some(9)));
    let (ready, _, message) = channel_condition(&stalled, "Ready").unwrap();
    assert_eq!(ready, "False");
    assert!(message.contains("spec.version: version 9") && message.contains("keeps serving version 3"), "{message}");
    s.wait_events("production", "DeliveryBlocked", 1).await;

    // A channel that follows the Agent moves with it after a Pop.
    s.create_rollback("pop-3", "support", "Pop", None).await;
    s.expect_outcome("pop-3", Ok(1), "version 3 is no channel's pin any more").await;
    serving(&s, "staging", 1, "i1").await;

    // Deleted, a channel's ConfigMap goes with it.
    channels.delete("production", &DeleteParams::default()).await.unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(WAIT, || async { config_maps.get_opt("production-channel").await.ok()?.is_none().then_some(()) }).await;
}

/// The numbers of Agent `support`'s versions that carry the operator's finalizer, and of those
/// being deleted.
async fn protected_and_deleting(s: &Setup) -> (Vec<i64>, Vec<i64>) {
    let versions = s.versions("support").await;
    let protected = versions.iter().filter(|v| v.finalizers().iter().any(|f| f == "agentops.dev/in-use"));
    let deleting = versions.iter().filter(|v| v.metadata.deletion_timestamp.is_some());
    (protected.map(|v| v.spec.version).collect(), deleting.map(|v| v.spec.version).collect())
}

#[tokio::test]
async fn a_version_a_channel_uses_deleted_by_hand_waits_until_no_channel_uses_it() {
    let s = setup("e2e-channel-in-use").await;
    s.agent_with_versions("support", 3, 10).await;
    apply_channel(&s, "production", Some(1)).await;
    apply_channel(&s, "staging", None).await;
    serving(&s, "production", 1, "i1").await;
    serving(&s, "staging", 3, "i3").await;
    eventually(WAIT, || async { (protected_and_deleting(&s).await.0 == [1, 3]).then_some(()) }).await;

    // Deleted by hand: the pinned version waits, the unused one goes.
    let versions: Api<agent_operator::api::AgentVersion> = Api::namespaced(s.client.clone(), &s.ns);
    versions.delete("support-v1", &DeleteParams::default()).await.unwrap();
    versions.delete("support-v2", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, || async {
        let numbers: Vec<i64> = s.versions("support").await.iter().map(|v| v.spec.version).collect();
        (numbers == [1, 3]).then_some(())
    })
    .await;
    assert_eq!(protected_and_deleting(&s).await, (vec![1, 3], vec![1]));
    // The channel goes on serving it while it waits (and stays Ready: its version exists).
    tokio::time::sleep(Duration::from_secs(2)).await;
    serving(&s, "production", 1, "i1").await;
    assert_eq!(protected_and_deleting(&s).await, (vec![1, 3], vec![1]), "released while in use");

    // No channel uses it any more: released, it goes.
    apply_channel(&s, "production", Some(3)).await;
    serving(&s, "production", 3, "i3").await;
    eventually(WAIT, || async {
        let numbers: Vec<i64> = s.versions("support").await.iter().map(|v| v.spec.version).collect();
        (numbers == [3]).then_some(())
    })
    .await;

    // The Agent deleted: its versions go with it, the one its channels used released too.
    assert_eq!(protected_and_deleting(&s).await, (vec![3], vec![]));
    s.agents().delete("support", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, || async { s.versions("support").await.is_empty().then_some(()) }).await;

    // Its channels stay, and say so; moves of them fail with AgentNotFound.
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(WAIT, || async {
        let channel = channels.get("production").await.ok()?;
        (channel_condition(&channel, "Stalled")?.1 == "AgentNotFound").then_some(())
    })
    .await;
    promote(&s, "orphaned", json!({"channel": "staging", "version": 3})).await;
    roll_back_channel(&s, "orphaned-back", "staging", "Restore", Some(3)).await;
    let status = finished(&s, "orphaned").await;
    assert_eq!(status.reason.as_deref(), Some("AgentNotFound"), "{:?}", status.message);
    s.expect_outcome("orphaned-back", Err("AgentNotFound"), "the Agent is gone").await;
}

/// Creates a promotion of channel `channel` with `spec`'s other fields.
async fn promote(s: &Setup, name: &str, spec: serde_json::Value) {
    let api: Api<AgentPromotion> = Api::namespaced(s.client.clone(), &s.ns);
    let body: AgentPromotion = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&Default::default(), &body).await.expect("promotion created");
}

/// Waits until promotion `name` is terminal; returns its status.
async fn finished(s: &Setup, name: &str) -> agent_operator::api::AgentPromotionStatus {
    let api: Api<AgentPromotion> = Api::namespaced(s.client.clone(), &s.ns);
    eventually(WAIT, || async {
        let status = api.get(name).await.ok()?.status?;
        status.phase.filter(|p| p.is_terminal())?;
        Some(status)
    })
    .await
}

#[tokio::test]
async fn a_promotion_moves_a_channel_once_and_holds_it_until_its_desired_version_changes() {
    let s = setup("e2e-channel-promote").await;
    s.agent_with_versions("support", 2, 10).await;
    apply_channel(&s, "production", None).await;
    serving(&s, "production", 2, "i2").await;

    promote(&s, "back-to-1", json!({"channel": "production", "version": 1, "expectedVersion": 2})).await;
    let status = finished(&s, "back-to-1").await;
    assert_eq!(
        (status.phase, status.from_version, status.version, status.agent_name.as_deref()),
        (Some(agent_operator::api::RollbackPhase::Succeeded), Some(2), Some(1), Some("support")),
        "{:?}",
        status.message
    );
    // Succeeded once the channel's ConfigMap holds the version: no wait needed here.
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    let cm = config_maps.get("production-channel").await.unwrap();
    assert_eq!(cm.annotations().get("agentops.dev/active-version").map(String::as_str), Some("1"));
    let (channel, _) = serving(&s, "production", 1, "i1").await;
    let held = channel.status.as_ref().unwrap().override_.clone().unwrap();
    assert_eq!((held.version, held.replacing, held.promotion.as_deref()), (1, Some(2), Some("back-to-1")));
    assert_eq!(channel.spec.version, None, "the operator wrote the channel's spec");
    let (in_sync, reason, message) = channel_condition(&channel, "InSync").unwrap();
    assert_eq!((in_sync.as_str(), reason.as_str()), ("False", "Overridden"));
    assert!(message.contains("AgentPromotion back-to-1") && message.contains("spec.version: 1"), "{message}");
    assert!(message.contains("kubectl agent export support --channel production"), "{message}");
    let events = s.wait_events("back-to-1", "PromotionSucceeded", 1).await;
    assert_eq!(events.iter().filter(|(r, _)| r == "PromotionStarted").count(), 1, "{events:?}");

    // What git should hold: the channel pinned to what it serves.
    let out = crate::plugin::plugin_on(
        &crate::support::control_plane().kubeconfig,
        &s.ns,
        &["export", "support", "--channel", "production"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let exported: AgentChannel = serde_saphyr::from_str(&text).unwrap();
    assert_eq!((exported.spec.agent_name.as_str(), exported.spec.version), ("support", Some(1)), "{text}");

    // The plugin: the channels, each version's place in them, and the planner's answer to a
    // promotion not made.
    let plugin = |args: &[&str]| {
        let out = crate::plugin::plugin_on(&crate::support::control_plane().kubeconfig, &s.ns, args);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, table) = plugin(&["channels", "support"]);
    let row = table.lines().find(|l| l.starts_with("production")).unwrap_or_default();
    assert!(code == Some(0) && row.contains("back-to-1") && row.contains("(follows)"), "{table}");
    let (_, history) = plugin(&["history", "support"]);
    let v1 = history.lines().find(|l| l.starts_with('1')).unwrap_or_default();
    assert!(history.contains("CHANNELS") && v1.contains("production=serving"), "{history}");
    let (code, plan) = plugin(&["promote", "support", "--channel", "production", "--to", "2", "--dry-run"]);
    assert_eq!(code, Some(0), "{plan}");
    assert!(plan.contains("Would move channel production from 1 to version 2"), "{plan}");
    let (code, plan) = plugin(&["promote", "support", "--channel", "production", "--to", "1", "--dry-run"]);
    assert!(code == Some(1) && plan.contains("Would fail (AlreadyActive)"), "{plan}");

    // Requests that cannot run fail with their reason and change nothing.
    promote(&s, "stale", json!({"channel": "production", "version": 2, "expectedVersion": 2})).await;
    promote(&s, "same", json!({"channel": "production", "version": 1})).await;
    promote(&s, "nowhere", json!({"channel": "preview", "version": 1})).await;
    promote(&s, "unknown", json!({"channel": "production", "version": 7})).await;
    promote(&s, "unproven", json!({"channel": "production", "fromChannel": "production-b"})).await;
    for (name, reason) in [
        ("stale", "ActiveVersionChanged"),
        ("same", "AlreadyActive"),
        ("nowhere", "ChannelNotFound"),
        ("unknown", "VersionNotFound"),
        ("unproven", "ChannelNotFound"),
    ] {
        let status = finished(&s, name).await;
        assert_eq!(status.reason.as_deref(), Some(reason), "{name}: {:?}", status.message);
        s.wait_events(name, "PromotionFailed", 1).await;
    }
    serving(&s, "production", 1, "i1").await;

    // The channel's status lost: rebuilt from the promotions' records, nothing run again.
    let out = kubectl(
        &[
            "patch",
            "agentchannel",
            "production",
            "-n",
            &s.ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"version":null,"override":null,"conditions":null,"delivery":null,"desiredVersion":null}}"#,
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (channel, _) = serving(&s, "production", 1, "i1").await;
    assert_eq!(channel.status.unwrap().override_.and_then(|o| o.promotion).as_deref(), Some("back-to-1"));
    assert_eq!(s.events_for("back-to-1").await.iter().filter(|(r, _)| r == "PromotionStarted").count(), 1);

    // A new active version ends the override: the channel follows the Agent again.
    s.apply_agent("support", json!({"instructions": "i3", "revisionHistoryLimit": 10})).await;
    let (channel, _) = serving(&s, "production", 3, "i3").await;
    assert_eq!(channel.status.as_ref().unwrap().override_, None);
    assert_eq!(channel_condition(&channel, "InSync").unwrap().0, "True");

    // And the plugin's promotion, followed until it finishes.
    let (code, out) = plugin(&["promote", "support", "--channel", "production", "--to", "1", "--reason", "test"]);
    assert!(code == Some(0) && out.contains("Succeeded: Channel production serves version 1."), "{out}");
    serving(&s, "production", 1, "i1").await;
}

/// Creates a rollback of channel `channel` of Agent `support`.
async fn roll_back_channel(s: &Setup, name: &str, channel: &str, strategy: &str, target: Option<i64>) {
    let mut spec = json!({"agentName": "support", "channel": channel, "strategy": strategy});
    if let Some(target) = target {
        spec["targetVersion"] = json!(target);
    }
    let body = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    s.rollbacks().create(&Default::default(), &body).await.expect("rollback created");
}

#[tokio::test]
async fn a_channel_rollback_moves_one_channel_back_while_the_agent_and_its_other_channels_stay() {
    let s = setup("e2e-channel-rollback").await;
    s.agent_with_versions("support", 3, 10).await;
    apply_channel(&s, "production", None).await;
    apply_channel(&s, "staging", None).await;
    serving(&s, "production", 3, "i3").await;
    serving(&s, "staging", 3, "i3").await;

    roll_back_channel(&s, "production-to-1", "production", "Restore", Some(1)).await;
    let status = s.terminal("production-to-1").await.status.unwrap();
    assert_eq!(
        (status.phase, status.from_version, status.active_version, status.reason),
        (Some(agent_operator::api::RollbackPhase::Succeeded), Some(3), Some(1), None),
        "{:?}",
        status.message
    );
    let (channel, _) = serving(&s, "production", 1, "i1").await;
    let held = channel.status.unwrap().override_.unwrap();
    assert_eq!((held.rollback.as_deref(), held.promotion), (Some("production-to-1"), None));
    serving(&s, "staging", 3, "i3").await;
    // No version was published, the Agent's active version stays.
    assert_eq!(s.history("support").await.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    let agent = s.settled_agent("support").await;
    assert_eq!(agent.status.unwrap().active_version, Some(3));
    s.wait_events("production-to-1", "RollbackSucceeded", 1).await;

    // The planner's answers, through the plugin, to rollbacks not made.
    let plugin = |args: &[&str]| {
        let out = crate::plugin::plugin_on(&crate::support::control_plane().kubeconfig, &s.ns, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, plan, _) = plugin(&["rollback", "support", "--channel", "production", "--to", "2", "--dry-run"]);
    assert!(code == Some(0) && plan.contains("Would move channel production from 1 to version 2"), "{plan}");
    let (code, plan, _) = plugin(&["rollback", "support", "--channel", "production", "--last-known-good", "--dry-run"]);
    assert!(code == Some(1) && plan.contains("Would fail (NoKnownGoodVersion)"), "{plan}");
    apply_channel(&s, "pinned", Some(3)).await;
    serving(&s, "pinned", 3, "i3").await;
    let (code, _, stderr) = plugin(&["rollback", "support", "--pop", "--dry-run"]);
    assert!(code == Some(1) && stderr.contains("VersionInUse") && stderr.contains("pinned"), "{stderr}");

    // Nothing is Healthy in the channel yet: no last known good to go back to.
    roll_back_channel(&s, "to-good", "production", "LastKnownGood", None).await;
    s.expect_outcome("to-good", Err("NoKnownGoodVersion"), "nothing is Healthy in production").await;
    roll_back_channel(&s, "to-nowhere", "preview", "Restore", Some(1)).await;
    s.expect_outcome("to-nowhere", Err("ChannelNotFound"), "there is no channel preview").await;
    serving(&s, "production", 1, "i1").await;
}

/// Server-side applies a channel of Agent `support` that follows it, judged after `bake` s.
async fn apply_judged_channel(s: &Setup, name: &str, bake: i64) {
    let body = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel", "metadata": {"name": name},
        "spec": {"agentName": "support", "analysis": {"bakeSeconds": bake}}});
    let api: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    api.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.expect("channel applied");
}

/// Waits until version `number` has a verdict in `channel`; returns it.
async fn verdict(s: &Setup, number: i64, channel: &str) -> String {
    eventually(WAIT, || async {
        let versions = s.versions("support").await;
        let version = versions.into_iter().find(|v| v.spec.version == number)?;
        version.labels().get(&format!("health.agentops.dev/{channel}")).cloned()
    })
    .await
}

#[tokio::test]
async fn a_served_version_is_healthy_after_its_bake_and_last_known_good_and_from_channel_use_it() {
    let s = setup("e2e-channel-health").await;
    s.agent_with_versions("support", 1, 10).await;
    apply_judged_channel(&s, "production", 1).await;
    apply_judged_channel(&s, "staging", 1).await;
    assert_eq!(verdict(&s, 1, "production").await, "Healthy");
    let versions = s.versions("support").await;
    let reason = versions[0].annotations().get("health.agentops.dev/production").cloned().unwrap_or_default();
    assert!(reason.contains("ran 1 s with no container restarting"), "{reason}");
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    let production = eventually(WAIT, || async {
        let c = channels.get("production").await.ok()?;
        (c.status.as_ref()?.last_known_good_version == Some(1)).then_some(c)
    })
    .await;
    let (healthy, reason, _) = channel_condition(&production, "Healthy").unwrap();
    assert_eq!((healthy.as_str(), reason.as_str()), ("True", "AnalysisPassed"));

    // Version 2 reaches both; production goes back to its last known good, version 1.
    s.apply_agent("support", json!({"instructions": "i2", "revisionHistoryLimit": 10})).await;
    serving(&s, "production", 2, "i2").await;
    roll_back_channel(&s, "production-to-good", "production", "LastKnownGood", None).await;
    let status = s.terminal("production-to-good").await.status.unwrap();
    assert_eq!((status.active_version, status.reason), (Some(1), None), "{:?}", status.message);
    serving(&s, "production", 1, "i1").await;

    // Promoted from staging once version 2 is Healthy there.
    assert_eq!(verdict(&s, 2, "staging").await, "Healthy");
    promote(&s, "from-staging", json!({"channel": "production", "fromChannel": "staging"})).await;
    let status = finished(&s, "from-staging").await;
    assert_eq!((status.version, status.reason), (Some(2), None), "{:?}", status.message);
    serving(&s, "production", 2, "i2").await;
}

#[tokio::test]
async fn a_failed_version_is_quarantined_and_a_promotion_needs_proof_from_its_source() {
    let mut s = setup_without_operator("e2e-channel-quarantine").await;
    // Rights to patch workloads, as the chart grants with delivery.restartWorkloads=true.
    s.operator = Some(crate::support::Operator::start_as(&crate::support::control_plane().kubeconfig, &s.ns));
    s.agent_with_versions("support", 2, 10).await;
    // No node here: the canary's runtime never rolls out, which fails the rollout check.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let runtime = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "canary-runtime"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "canary"}},
                 "template": {"metadata": {"labels": {"app": "canary"}},
                              "spec": {"containers": [{"name": "runtime", "image": "agent-runtime:0.1.0"}]}}}});
    deployments.create(&Default::default(), &serde_json::from_value(runtime).unwrap()).await.unwrap();
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    for (name, spec) in [
        (
            "canary",
            json!({"agentName": "support", "analysis": {"progressDeadlineSeconds": 2, "bakeSeconds": 1},
            "delivery": {"restart": [{"kind": "Deployment", "name": "canary-runtime"}]}}),
        ),
        ("production", json!({"agentName": "support", "analysis": {"bakeSeconds": 3600}})),
    ] {
        let body = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel", "metadata": {"name": name},
            "spec": spec});
        channels.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(body)).await.unwrap();
    }

    assert_eq!(verdict(&s, 2, "canary").await, "Failed");
    let versions = s.versions("support").await;
    let reason = versions[1].annotations().get("health.agentops.dev/canary").cloned().unwrap_or_default();
    assert!(reason.contains("not rolled out within 2 s"), "{reason}");
    let canary = eventually(WAIT, || async {
        let c = channels.get("canary").await.ok()?;
        (channel_condition(&c, "Healthy")?.0 == "False").then_some(c)
    })
    .await;
    assert_eq!(canary.status.unwrap().last_known_good_version, None);
    let out = crate::plugin::plugin_on(&crate::support::control_plane().kubeconfig, &s.ns, &["history", "support"]);
    let history = String::from_utf8_lossy(&out.stdout);
    let v2 = history.lines().find(|l| l.starts_with('2')).unwrap_or_default();
    assert!(v2.contains("canary=serving+Failed"), "{history}");

    // Out of it, the canary does not go back to it by a rollback or a plain promotion, nor
    // takes a version its source has not proven.
    roll_back_channel(&s, "canary-to-1", "canary", "Restore", Some(1)).await;
    s.expect_outcome("canary-to-1", Ok(1), "version 1 has no verdict in canary").await;
    roll_back_channel(&s, "canary-to-2", "canary", "Restore", Some(2)).await;
    s.expect_outcome("canary-to-2", Err("VersionQuarantined"), "version 2 Failed in canary").await;
    promote(&s, "again", json!({"channel": "canary", "version": 2})).await;
    promote(&s, "unproven", json!({"channel": "canary", "fromChannel": "production"})).await;
    for (name, reason) in [("again", "VersionQuarantined"), ("unproven", "NotHealthyInSource")] {
        let status = finished(&s, name).await;
        assert_eq!(status.reason.as_deref(), Some(reason), "{name}: {:?}", status.message);
        s.wait_events(name, "PromotionFailed", 1).await;
    }
    let message = finished(&s, "unproven").await.message.unwrap_or_default();
    assert!(message.contains("production"), "{message}");
    let served = channels.get("canary").await.unwrap().status.unwrap().version;
    assert_eq!(served, Some(1), "a refused move changed what the canary serves");

    // allowFailed is the deliberate way back.
    promote(&s, "deliberately", json!({"channel": "canary", "version": 2, "allowFailed": true})).await;
    let status = finished(&s, "deliberately").await;
    assert_eq!((status.version, status.reason), (Some(2), None), "{:?}", status.message);
}

//! AgentChannel and AgentPromotion as the API server serves them (docs/reference.md, "Channels
//! and promotions"): what it refuses at apply time, and the defaults it fills in.

use agent_operator::api::{AgentChannel, AgentPromotion};
use kube::Api;

use crate::rollback::setup_without_operator;
use crate::support::kubectl;

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

//! What a careless or hostile user can write and the API server accepts: the operator reports
//! it on that object and goes on with every other; where an admission policy of the chart can
//! refuse it at apply, it does.

use std::path::Path;
use std::time::Duration;

use agent_operator::api::Agent;
use kube::Api;
use serde_json::{Value, json};

use crate::support::{
    Operator, OwnControlPlane, chart_identity, client, client_for, eventually, install_crds, kubectl, kubectl_as,
    namespace,
};

const WAIT: Duration = Duration::from_secs(60);

/// One step whose object nests `depth` levels (the step itself the first).
fn nested_step(depth: usize) -> Value {
    (1..depth).fold(json!({"leaf": true}), |inner, _| json!({ "next": inner }))
}

fn agent(ns: &str, name: &str, step_depth: usize) -> String {
    json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"instructions": name, "steps": [nested_step(step_depth)]}})
    .to_string()
}

fn condition(agent: &Agent, type_: &str) -> Option<(String, String, String)> {
    let c = agent.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// With the chart's policies: an Agent whose steps nest deeper than 32 levels is refused at
/// apply, naming the fields and the bound; one at 32 levels is published.
#[tokio::test]
async fn steps_nested_deeper_than_the_bound_are_refused_at_apply() {
    let admin = client().await;
    install_crds(&admin).await;
    chart_identity();
    let ns = namespace(&admin, "hostile-depth").await;
    let refused = eventually(Duration::from_secs(30), || async {
        let out = kubectl(&["create", "-f", "-"], Some(&agent(&ns, "deep", 33)));
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await;
    assert!(
        refused.contains("spec.steps, spec.askUserQuestions: each item nests at most 32 levels of objects and lists"),
        "{refused}"
    );
    let out = kubectl(&["create", "-f", "-"], Some(&agent(&ns, "at-the-bound", 32)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Deep in a question, as in a step.
    let question = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent",
                          "metadata": {"name": "deep-question", "namespace": ns},
                          "spec": {"askUserQuestions": [nested_step(33)]}});
    let out = kubectl(&["create", "-f", "-"], Some(&question.to_string()));
    assert!(!out.status.success(), "a deep question was accepted");
}

/// Where no policy bounds it, the API server takes an Agent nested deeper than the operator's
/// JSON decoder reads (128 levels). The operator starts, reports it on that Agent (Stalled,
/// `DefinitionUnreadable`, an Event) and publishes every other Agent; with the first state of
/// its watches streamed (the default) and listed in pages alike.
#[tokio::test]
async fn an_agent_the_operator_cannot_decode_is_reported_and_stops_no_other() {
    for (name, flags) in [("streamed", &[][..]), ("paged", &["--feature-gates=WatchList=false"][..])] {
        let own = OwnControlPlane::start(&format!("undecodable-{name}"), flags);
        let admin = &own.cp.kubeconfig;
        let client = client_for(admin).await;
        install_crds(&client).await;
        let ns = "team";
        assert!(kubectl_as(admin, &["create", "namespace", ns], None).status.success());
        // Before the operator starts (its first list meets it), and one more after.
        let before = [agent(ns, "deep", 140), agent(ns, "fine", 3)];
        for manifest in &before {
            let out = kubectl_as(admin, &["create", "-f", "-"], Some(manifest));
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _operator = Operator::start_as(admin, ns);
        let out = kubectl_as(admin, &["create", "-f", "-"], Some(&agent(ns, "later", 2)));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        check_reported(admin, ns, name).await;
    }
}

async fn check_reported(admin: &Path, ns: &str, case: &str) {
    let client = client_for(admin).await;
    let lean: Api<agent_operator::controller::lean_agent::LeanAgent> = Api::namespaced(client.clone(), ns);
    let agents: Api<Agent> = Api::namespaced(client.clone(), ns);
    for fine in ["fine", "later"] {
        eventually(WAIT, || async {
            let agent = agents.get(fine).await.ok()?;
            (condition(&agent, "Ready")?.0 == "True").then_some(())
        })
        .await;
    }
    let (status, reason, message) = eventually(WAIT, || async {
        let agent = lean.get("deep").await.ok()?.0;
        condition(&agent, "Stalled").filter(|(status, _, _)| status == "True")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "DefinitionUnreadable"), "{case}");
    assert!(message.contains("recursion limit") && message.contains("32 levels"), "{case}: {message}");
    let events = eventually(WAIT, || async {
        let out = kubectl_as(
            admin,
            &["-n", ns, "get", "events", "--field-selector=reason=DefinitionUnreadable", "-o", "name"],
            None,
        );
        let names = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!names.is_empty()).then_some(names)
    })
    .await;
    assert_eq!(events.lines().count(), 1, "{case}: one Event, not one per sync: {events}");
}

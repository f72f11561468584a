//! Bad input at scale: Agents and AgentRollbacks generated at random (wrong types, unknown
//! fields, huge and empty values, any Unicode) are applied to the real API server as
//! `kubectl apply --server-side` does. Each is refused with a message that names the field, or
//! is reconciled: Agents to Ready, rollbacks to a terminal phase. The operator never exits,
//! and once everything is settled it does no more work. `AGENT_OPERATOR_FUZZ_INPUTS` sets the
//! number of inputs (default 300); the seed is printed so a failure can be repeated.

use std::time::Duration;

use agent_operator::api::{Agent, AgentRollback};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Resource};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

use crate::rollback::setup;
use crate::support::eventually;

/// Any JSON value, small: what a field of the wrong type gets.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        text(),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A string: empty, short in any script (control characters included), or large: up to 80 KiB,
/// past every field's limit and, with a few of them, past the bound on a whole definition.
fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from("")),
        any::<String>().prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::from),
        ("[a-z ]{1,16}", 1usize..5120).prop_map(|(s, n)| Value::from(s.repeat(n))),
    ]
}

/// Either a value of the right kind or, one time in twelve, anything.
fn or_wrong(right: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![11 => right, 1 => any_value()].boxed()
}

fn objects() -> impl Strategy<Value = Value> {
    proptest::collection::vec(
        proptest::collection::btree_map("[a-zA-Z]{1,10}", any_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        0..6,
    )
    .prop_map(Value::from)
}

/// An Agent spec: every field present or not, right or wrong, and now and then one the
/// schema does not know.
fn agent_spec() -> impl Strategy<Value = Value> {
    let fields: Vec<(&'static str, BoxedStrategy<Value>)> = vec![
        ("displayName", or_wrong(text())),
        ("instructions", or_wrong(text())),
        ("type", or_wrong(text())),
        ("subtype", or_wrong(text())),
        ("model", or_wrong(text())),
        ("temperature", or_wrong((-0.5f64..2.5).prop_map(Value::from))),
        ("steps", or_wrong(objects())),
        ("askUserQuestions", or_wrong(objects())),
        ("knowledgeBaseFiles", or_wrong(proptest::collection::vec(text(), 0..4).prop_map(Value::from))),
        (
            "visibility",
            or_wrong(
                prop_oneof![Just("private"), Just("workspace"), Just("public"), Just("secret")].prop_map(Value::from),
            ),
        ),
        (
            "advancedSettings",
            or_wrong(
                proptest::collection::btree_map("[a-zA-Z./-]{1,12}", text(), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ),
        ),
        ("revisionHistoryLimit", or_wrong((-2i64..20).prop_map(Value::from))),
        (
            "delivery",
            or_wrong(
                (
                    "[a-z][a-z0-9-]{0,18}[a-z0-9]|[a-z0-9-]{0,4}",
                    prop_oneof![4 => Just("Deployment"), 4 => Just("StatefulSet"), 1 => Just("Pod")],
                    "[a-z][a-z0-9-]{0,10}[a-z0-9]|[A-Z_]{0,3}",
                )
                    .prop_map(
                        |(cm, kind, name)| json!({"configMapName": cm, "restart": [{"kind": kind, "name": name}]}),
                    ),
            ),
        ),
        ("unknownField", any_value().boxed()),
    ];
    let present: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .into_iter()
        .map(|(name, value)| {
            let weight = if name == "unknownField" { 0.05 } else { 0.5 };
            proptest::option::weighted(weight, value).prop_map(move |v| v.map(|v| (name.to_string(), v))).boxed()
        })
        .collect();
    present.prop_map(|fields| Value::Object(fields.into_iter().flatten().collect()))
}

/// An AgentRollback spec naming one of `agents` (or a made-up one).
fn rollback_spec(agents: Vec<String>) -> impl Strategy<Value = Value> {
    let agent = prop_oneof![4 => proptest::sample::select(agents).prop_map(Value::from), 1 => or_wrong(text())];
    let strategy =
        or_wrong(prop_oneof![Just("Restore"), Just("Previous"), Just("Pop"), Just("Undo")].prop_map(Value::from));
    let version = || proptest::option::weighted(0.5, or_wrong((-1i64..6).prop_map(Value::from)));
    (
        agent,
        strategy,
        version(),
        version(),
        proptest::option::weighted(0.3, or_wrong(text())),
        proptest::option::weighted(0.05, any_value()),
    )
        .prop_map(|(agent, strategy, target, expected, reason, unknown)| {
            let mut spec = serde_json::Map::from_iter([("agentName".into(), agent), ("strategy".into(), strategy)]);
            let optional = [
                ("targetVersion", target),
                ("expectedActiveVersion", expected),
                ("reason", reason),
                ("bogus", unknown),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    spec.insert(key.into(), value);
                }
            }
            Value::Object(spec)
        })
}

/// Applies `spec` as an object of kind `K` named `name`; `Ok(true)` if accepted, `Ok(false)`
/// if refused with a message that names a field of the spec.
async fn apply<K: Resource<DynamicType = ()>>(
    api: &Api<DynamicObject>,
    name: &str,
    spec: &Value,
) -> Result<bool, String> {
    let body =
        json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "metadata": {"name": name}, "spec": spec});
    let params = PatchParams::apply("fuzz").force().validation_strict();
    match api.patch(name, &params, &Patch::Apply(body)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if (400..500).contains(&status.code) && status.message.contains("spec") => {
            Ok(false)
        }
        // Server-side apply answers a value of the wrong type with 500, naming the field.
        Err(kube::Error::Api(status))
            if status.code == 500
                && status.message.starts_with("failed to create typed patch object")
                && status.message.contains(".spec.") =>
        {
            Ok(false)
        }
        Err(error) => Err(format!("{name}: {error} for {spec}")),
    }
}

#[tokio::test]
async fn random_agents_and_rollbacks_are_refused_with_a_message_or_reconciled() {
    let inputs: usize = std::env::var("AGENT_OPERATOR_FUZZ_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    let seed: u64 = std::env::var("AGENT_OPERATOR_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
    });
    println!("fuzz: {inputs} inputs, AGENT_OPERATOR_FUZZ_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));

    let mut s = setup("e2e-fuzz").await;
    let agents: Api<DynamicObject> = Api::namespaced_with(s.client.clone(), &s.ns, &ApiResource::erase::<Agent>(&()));
    let rollbacks: Api<DynamicObject> =
        Api::namespaced_with(s.client.clone(), &s.ns, &ApiResource::erase::<AgentRollback>(&()));

    let (mut accepted_agents, mut accepted_rollbacks, mut refused) = (Vec::new(), Vec::new(), 0usize);
    let mut agent_edits = 0usize;
    let agent_inputs = inputs / 2;
    for i in 0..agent_inputs {
        // Some inputs edit an Agent applied before, so generations follow one another.
        let name = format!("a{}", i % (agent_inputs / 2).max(1));
        let spec = agent_spec().new_tree(&mut runner).unwrap().current();
        match apply::<Agent>(&agents, &name, &spec).await {
            Ok(true) => {
                accepted_agents.push(name);
                agent_edits += 1;
            }
            Ok(false) => refused += 1,
            Err(unexpected) => panic!("{unexpected}"),
        }
    }
    accepted_agents.sort();
    accepted_agents.dedup();
    let mut names = accepted_agents.clone();
    names.push("no-such-agent".into());
    for i in 0..inputs - agent_inputs {
        let name = format!("r{i}");
        let spec = rollback_spec(names.clone()).new_tree(&mut runner).unwrap().current();
        match apply::<AgentRollback>(&rollbacks, &name, &spec).await {
            Ok(true) => accepted_rollbacks.push(name),
            Ok(false) => refused += 1,
            Err(unexpected) => panic!("{unexpected}"),
        }
    }
    println!(
        "fuzz: {inputs} inputs: {agent_edits} Agent applies ({} Agents) and {} rollbacks accepted, {refused} refused with a message",
        accepted_agents.len(),
        accepted_rollbacks.len()
    );

    // Everything accepted is reconciled: an Agent to Ready, or Stalled with its reason (a
    // workload it cannot roll, say), for its current generation.
    let typed: Api<Agent> = s.agents();
    for name in &accepted_agents {
        eventually(Duration::from_secs(120), || async {
            let agent = typed.get(name).await.ok()?;
            let status = agent.status.as_ref()?;
            let settled = status.conditions.iter().any(|c| {
                (c.type_ == "Ready" || c.type_ == "Stalled")
                    && c.status == "True"
                    && c.observed_generation == agent.metadata.generation
            });
            (settled && status.observed_generation == agent.metadata.generation).then_some(())
        })
        .await;
    }
    let typed_rollbacks = s.rollbacks();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for name in &accepted_rollbacks {
        loop {
            let rollback = typed_rollbacks.get(name).await.expect("an accepted rollback is kept");
            if rollback.status.as_ref().and_then(|st| st.phase).is_some_and(|p| p.is_terminal()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rollback {name} is not terminal after 60 s: spec {:?}, status {:?}",
                rollback.spec,
                rollback.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // And then nothing more happens: no reconcile loops without a change.
    let operator = s.operator.as_mut().unwrap();
    assert!(operator.exited().is_none(), "the operator exited: {:?}", operator.exited());
    let reconciles = || s.operator.as_ref().unwrap().metric_sum("agentops_reconciles_total{");
    // An Agent whose delivery is blocked (a workload missing, or not its to roll) is looked at
    // again with backoff up to every 10 s; once that is reached, nothing else may come back.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = reconciles().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = reconciles().await;
    println!("fuzz: {} reconciles in 10 s once settled, over {} Agents", after - before, accepted_agents.len());
    let bound = 2.0 * accepted_agents.len() as f64;
    assert!(after - before <= bound, "the operator keeps reconciling: {before} then {after}");
    let log =
        std::fs::read_to_string(std::env::temp_dir().join(format!("agent-operator-{}.log", s.ns))).unwrap_or_default();
    assert!(!log.contains("panicked"), "the operator panicked");
}

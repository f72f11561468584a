//! Size (behaviour 11, docs/reference.md): a definition is bounded so that every object made
//! from it fits the API server's limits. The bound is checked here by measuring each object
//! the operator writes from a definition at the bound; the schema refuses a field over its
//! limit at apply time, and the operator refuses a whole definition over the bound (status and
//! Event), with messages that name the field and the limit.

use agent_operator::api::AgentVersion;
use agent_operator::api::keys::ROLLBACK_RECORD_ANNOTATION;
use agent_operator::plan::publish::MAX_DEFINITION_BYTES;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::json;

use crate::rollback::setup;
use crate::support::kubectl;

/// What the API server and etcd allow: any object 1.5 MiB (etcd's request limit), all of an
/// object's annotations 256 KiB, a ConfigMap's data 1 MiB.
const OBJECT_LIMIT: usize = 3 * 1024 * 1024 / 2;
const ANNOTATIONS_LIMIT: usize = 256 * 1024;
const CONFIG_MAP_LIMIT: usize = 1024 * 1024;

fn annotations_size(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> usize {
    meta.annotations.iter().flatten().map(|(k, v)| k.len() + v.len()).sum()
}

/// A spec whose definition is `bytes` long as canonical JSON: instructions at their limit, the
/// rest in steps (whose fields the schema cannot bound).
fn spec_of(bytes: usize) -> serde_json::Value {
    let instructions = "i".repeat(60 * 1024);
    let skeleton = json!({"instructions": instructions, "steps": [{"prompt": ""}]});
    let definition: agent_operator::api::AgentDefinition = serde_json::from_value(skeleton).unwrap();
    let overhead = agent_operator::plan::hash::canonical_json(&definition).len();
    json!({"instructions": instructions, "steps": [{"prompt": "p".repeat(bytes - overhead)}], "revisionHistoryLimit": 10})
}

fn manifest(ns: &str, name: &str, spec: &serde_json::Value) -> String {
    json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name, "namespace": ns}, "spec": spec})
        .to_string()
}

#[tokio::test]
async fn every_object_made_from_a_definition_at_the_bound_fits_and_one_over_it_is_refused() {
    let s = setup("e2e-size").await;
    // Client-side apply, the tightest way in: it copies the whole Agent into an annotation.
    let at_bound = spec_of(MAX_DEFINITION_BYTES);
    let out = kubectl(&["apply", "-f", "-"], Some(&manifest(&s.ns, "big", &json!({"instructions": "v1"}))));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.settled_agent("big").await;
    let out = kubectl(&["apply", "-f", "-"], Some(&manifest(&s.ns, "big", &at_bound)));
    assert!(out.status.success(), "at the bound: {}", String::from_utf8_lossy(&out.stderr));
    let agent = s.settled_agent("big").await;
    assert_eq!(agent.status.as_ref().and_then(|st| st.active_version), Some(2), "published");

    let versions: Api<AgentVersion> = Api::namespaced(s.client.clone(), &s.ns);
    let version = versions.get("big-v2").await.unwrap();
    let config_map = Api::<ConfigMap>::namespaced(s.client.clone(), &s.ns).get("big-agent").await.unwrap();
    // Pop it, so that a rollback holds it (status and record).
    s.create_rollback("pop", "big", "Pop", None).await;
    let pop = s.terminal("pop").await;

    let rows = [
        ("Agent with status", json_len(&agent), annotations_size(&agent.metadata)),
        ("AgentVersion", json_len(&version), annotations_size(&version.metadata)),
        ("Pop's AgentRollback", json_len(&pop), annotations_size(&pop.metadata)),
        ("delivery ConfigMap", json_len(&config_map), annotations_size(&config_map.metadata)),
    ];
    println!("definition at the bound: {MAX_DEFINITION_BYTES} bytes as canonical JSON");
    for (what, bytes, annotations) in rows {
        println!(
            "  {what}: {bytes} bytes (limit {OBJECT_LIMIT}), annotations {annotations} bytes (limit {ANNOTATIONS_LIMIT})"
        );
        assert!(bytes < OBJECT_LIMIT, "{what}: {bytes} bytes");
        assert!(annotations < ANNOTATIONS_LIMIT, "{what}: annotations {annotations} bytes");
    }
    let data: usize = config_map.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
    println!("  delivery ConfigMap data: {data} bytes (limit {CONFIG_MAP_LIMIT})");
    assert!(data < CONFIG_MAP_LIMIT);
    assert!(pop.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ROLLBACK_RECORD_ANNOTATION)));

    // One byte over: accepted by the schema (the bytes are in a step), refused by the operator,
    // which says so in status and an Event; the active version stays.
    let out = kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(&s.ns, "big", &spec_of(MAX_DEFINITION_BYTES + 1))),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let agent = crate::support::eventually(std::time::Duration::from_secs(60), || async {
        let agent = s.agents().get("big").await.ok()?;
        let status = agent.status.as_ref()?;
        let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled" && c.status == "True")?;
        (status.observed_generation == agent.metadata.generation && stalled.reason == "DefinitionTooLarge")
            .then_some(agent)
    })
    .await;
    let stalled = agent.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Stalled").unwrap().clone();
    assert!(
        stalled.message.contains("spec") && stalled.message.contains(&MAX_DEFINITION_BYTES.to_string()),
        "{}",
        stalled.message
    );
    assert_eq!(agent.status.as_ref().and_then(|st| st.active_version), Some(1), "nothing published");
    s.wait_events("big", "DefinitionTooLarge", 1).await;

    // A field over its own limit is refused at apply, naming the field and the limit: bytes of
    // UTF-8 for the instructions (4-byte characters, under the character limit).
    let cases = [
        (json!({"instructions": "i".repeat(65537)}), "spec.instructions", "65536"),
        (json!({"instructions": "🪿".repeat(16385)}), "spec.instructions", "at most 65536 bytes"),
        (json!({"model": "m".repeat(257)}), "spec.model", "256"),
        (json!({"steps": vec![json!({}); 101]}), "spec.steps", "100"),
    ];
    for (spec, field, limit) in cases {
        let out = kubectl(&["apply", "--server-side", "-f", "-"], Some(&manifest(&s.ns, "refused", &spec)));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(field) && stderr.contains(limit), "{field}: {stderr}");
    }
    let just_under = json!({"instructions": "🪿".repeat(16384)});
    let out = kubectl(&["apply", "--server-side", "-f", "-"], Some(&manifest(&s.ns, "under", &just_under)));
    assert!(out.status.success(), "65536 bytes of instructions: {}", String::from_utf8_lossy(&out.stderr));
}

/// The length of an object's JSON, about as the API server stores it.
fn json_len<T: serde::Serialize>(object: &T) -> usize {
    serde_json::to_vec(object).map(|v| v.len()).unwrap_or(0)
}

//! Size (behaviour 11, docs/reference.md): a definition is bounded so that every object made
//! from it fits the API server's limits. Instructions of 256 KiB, in definitions at the bound,
//! go through every path here (publish, Restore, Previous, Pop and a status loss after it,
//! delivery mid-rollout, a channel, `kubectl agent diff`), and each object the operator writes
//! from them is measured; the schema refuses a field over its limit at apply time, and the
//! operator refuses a whole definition over the bound (status and Event), with messages that
//! name the field and the limit.

use agent_operator::api::keys::ROLLBACK_RECORD_ANNOTATION;
use agent_operator::api::{AgentChannel, AgentDefinition, AgentVersion};
use agent_operator::plan::hash::canonical_json;
use agent_operator::plan::publish::MAX_DEFINITION_BYTES;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::rollback::{Setup, setup_without_operator};
use crate::support::{Operator, control_plane, eventually, kubectl};

/// What the API server and etcd allow: any object 1.5 MiB (etcd's request limit), all of an
/// object's annotations 256 KiB, a ConfigMap's data 1 MiB.
const OBJECT_LIMIT: usize = 3 * 1024 * 1024 / 2;
const ANNOTATIONS_LIMIT: usize = 256 * 1024;
const CONFIG_MAP_LIMIT: usize = 1024 * 1024;
/// The largest instructions, in bytes of UTF-8.
const INSTRUCTIONS_LIMIT: usize = 256 * 1024;
const WAIT: std::time::Duration = std::time::Duration::from_secs(90);

fn annotations_size(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> usize {
    meta.annotations.iter().flatten().map(|(k, v)| k.len() + v.len()).sum()
}

fn data_size(config_map: &ConfigMap) -> usize {
    config_map.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum()
}

/// Instructions of exactly 256 KiB of UTF-8, as a long system prompt is: numbered policy lines
/// with non-ASCII text (so characters and bytes differ) and line breaks (which JSON escapes),
/// marked with `mark` so that two versions differ.
fn instructions(mark: &str) -> String {
    let mut text = String::new();
    let mut line = 0;
    while text.len() < INSTRUCTIONS_LIMIT - 200 {
        text.push_str(&format!("{mark} policy §{line}: réponds poliment, cite la source, n'invente rien.\n"));
        line += 1;
    }
    text.push_str(&"x".repeat(INSTRUCTIONS_LIMIT - text.len()));
    text
}

/// A spec whose definition is `bytes` long as canonical JSON: instructions of 256 KiB marked
/// `mark`, the rest in a step (whose fields the schema cannot bound).
fn spec_of(mark: &str, bytes: usize) -> serde_json::Value {
    let instructions = instructions(mark);
    let skeleton = json!({"instructions": instructions, "steps": [{"prompt": ""}]});
    let definition: AgentDefinition = serde_json::from_value(skeleton).unwrap();
    let overhead = canonical_json(&definition).len();
    json!({"instructions": instructions, "steps": [{"prompt": "p".repeat(bytes - overhead)}], "revisionHistoryLimit": 10})
}

fn manifest(ns: &str, name: &str, spec: &serde_json::Value) -> String {
    json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name, "namespace": ns}, "spec": spec})
        .to_string()
}

fn apply(args: &[&str], manifest: &str) -> (bool, String) {
    let out = kubectl(args, Some(manifest));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn version(s: &Setup, number: i64) -> AgentVersion {
    Api::<AgentVersion>::namespaced(s.client.clone(), &s.ns).get(&format!("big-v{number}")).await.unwrap()
}

/// Waits until the Agent has handled its generation with `active` active (Ready or not: a
/// rollout that never ends keeps it from Ready).
async fn handled(s: &Setup, active: i64) -> agent_operator::api::Agent {
    eventually(WAIT, || async {
        let agent = s.agents().get("big").await.ok()?;
        let status = agent.status.as_ref()?;
        (status.observed_generation == agent.metadata.generation && status.active_version == Some(active))
            .then_some(agent)
    })
    .await
}

#[tokio::test]
async fn instructions_of_256_kib_go_through_every_path_and_every_object_fits() {
    let mut s = setup_without_operator("e2e-size").await;
    // Rights to patch workloads, as the chart grants with delivery.restartWorkloads=true.
    s.operator = Some(Operator::start_as(&control_plane().kubeconfig, &s.ns));
    let ns = s.ns.clone();
    let at_bound = |mark: &str| spec_of(mark, MAX_DEFINITION_BYTES);
    let definition = |spec: &serde_json::Value| -> AgentDefinition { serde_json::from_value(spec.clone()).unwrap() };

    // Publish. A client-side apply copies the whole Agent into an annotation, which the API
    // server bounds at 256 KiB: such definitions are applied server-side (docs/reference.md).
    let (ok, _) = apply(&["apply", "-f", "-"], &manifest(&ns, "big", &json!({"instructions": "v1"})));
    assert!(ok);
    s.settled_agent("big").await;
    let (ok, stderr) = apply(&["apply", "-f", "-"], &manifest(&ns, "big", &at_bound("A")));
    assert!(!ok && stderr.contains("metadata.annotations: Too long"), "client-side: {stderr}");
    let (ok, stderr) = apply(&["apply", "--server-side", "-f", "-"], &manifest(&ns, "big", &at_bound("A")));
    assert!(ok, "server-side, at the bound: {stderr}");
    s.settled_agent("big").await;
    let (ok, stderr) = apply(&["apply", "--server-side", "-f", "-"], &manifest(&ns, "big", &at_bound("B")));
    assert!(ok, "{stderr}");
    s.settled_agent("big").await;
    let (a, b) = (version(&s, 2).await, version(&s, 3).await);
    assert_eq!(canonical_json(&a.spec.snapshot).len(), MAX_DEFINITION_BYTES, "published whole");
    assert_eq!(a.spec.snapshot, definition(&at_bound("A")));
    assert_eq!(a.spec.snapshot.instructions.as_ref().map(String::len), Some(INSTRUCTIONS_LIMIT));

    // Restore and Previous copy them whole.
    s.create_rollback("restore", "big", "Restore", Some(2)).await;
    s.expect_outcome("restore", Ok(4), "Restore of 256 KiB instructions").await;
    assert_eq!(version(&s, 4).await.spec.snapshot, a.spec.snapshot);
    s.create_rollback("previous", "big", "Previous", None).await;
    s.expect_outcome("previous", Ok(5), "Previous of 256 KiB instructions").await;
    assert_eq!(version(&s, 5).await.spec.snapshot, b.spec.snapshot);

    // Pop: the status shows the snapshot it deleted; the record leaves it out, and it is kept
    // in the Pop's own ConfigMap, from which a status lost is rebuilt.
    s.create_rollback("pop", "big", "Pop", None).await;
    s.expect_outcome("pop", Ok(4), "Pop of 256 KiB instructions").await;
    let pop = s.terminal("pop").await;
    assert_eq!(pop.status.as_ref().and_then(|st| st.popped_snapshot.clone()), Some(b.spec.snapshot.clone()));
    let record = &pop.annotations()[ROLLBACK_RECORD_ANNOTATION];
    assert!(record.len() < 4096, "the record holds no snapshot: {} bytes", record.len());
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &ns);
    let kept = config_maps.get("pop-popped").await.expect("the Pop keeps the snapshot");
    assert_eq!(kept.owner_references()[0].uid, pop.uid().unwrap());
    let status_api = PatchParams::default();
    s.rollbacks().patch_status("pop", &status_api, &Patch::Merge(json!({"status": null}))).await.unwrap();
    let rebuilt = eventually(WAIT, || async {
        let pop = s.rollbacks().get("pop").await.ok()?;
        pop.status.as_ref()?.popped_snapshot.is_some().then_some(pop)
    })
    .await;
    assert_eq!(rebuilt.status.as_ref().and_then(|st| st.popped_snapshot.clone()), Some(b.spec.snapshot.clone()));
    assert_eq!(s.history("big").await.len(), 4, "nothing published or deleted again");

    // A channel serves one of them from its own ConfigMap.
    let channel = json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel",
        "metadata": {"name": "staging"}, "spec": {"agentName": "big", "version": 3}});
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &ns);
    channels.patch("staging", &PatchParams::apply("tests").force(), &Patch::Apply(channel)).await.unwrap();
    let staging = eventually(WAIT, || async {
        let cm = config_maps.get_opt("staging-channel").await.ok()??;
        (cm.annotations().get("agentops.dev/active-version").map(String::as_str) == Some("3")).then_some(cm)
    })
    .await;
    assert_eq!(staging.data.as_ref().and_then(|d| d.get("agent.json")), Some(&canonical_json(&b.spec.snapshot)));

    // Delivery mid-rollout holds three snapshots: the served one, under its own key too, and
    // the one it replaces. A Deployment whose pods no node can take never finishes rolling.
    let runtime = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "runtime"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "runtime"}},
                 "template": {"metadata": {"labels": {"app": "runtime"}},
                              "spec": {"nodeSelector": {"agentops.dev/no-such-node": "true"},
                                       "containers": [{"name": "runtime", "image": "agent-runtime:0.1.0"}]}}}});
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &ns);
    deployments.create(&PostParams::default(), &serde_json::from_value(runtime).unwrap()).await.unwrap();
    let mut spec = at_bound("A");
    spec["delivery"] = json!({"restart": [{"kind": "Deployment", "name": "runtime"}]});
    s.apply_agent("big", spec).await;
    handled(&s, 4).await;
    let mut spec = at_bound("C");
    spec["delivery"] = json!({"restart": [{"kind": "Deployment", "name": "runtime"}]});
    s.apply_agent("big", spec).await;
    handled(&s, 5).await;
    let delivery = eventually(WAIT, || async {
        let cm = config_maps.get_opt("big-agent").await.ok()??;
        let data = cm.data.as_ref()?;
        (data.contains_key("agent-v4.json") && data.contains_key("agent-v5.json")).then_some(cm)
    })
    .await;
    assert_eq!(delivery.data.as_ref().unwrap()["agent-v5.json"], canonical_json(&version(&s, 5).await.spec.snapshot));

    // kubectl agent diff of two of them.
    let out = crate::plugin::plugin_on(&control_plane().kubeconfig, &ns, &["diff", "big", "3", "4"]);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && diff.starts_with("--- version 3\n+++ version 4\n"),
        "{}",
        &diff[..diff.len().min(300)]
    );
    assert!(diff.contains("~ instructions:"), "{}", &diff[..diff.len().min(300)]);

    let agent = s.agents().get("big").await.unwrap();
    let pop = s.rollbacks().get("pop").await.unwrap();
    let rows = [
        ("Agent with status", json_len(&agent), annotations_size(&agent.metadata)),
        ("AgentVersion", json_len(&version(&s, 5).await), annotations_size(&version(&s, 5).await.metadata)),
        ("Pop's AgentRollback", json_len(&pop), annotations_size(&pop.metadata)),
        ("Pop's ConfigMap", json_len(&kept), annotations_size(&kept.metadata)),
        ("delivery ConfigMap mid-rollout", json_len(&delivery), annotations_size(&delivery.metadata)),
        ("channel ConfigMap", json_len(&staging), annotations_size(&staging.metadata)),
    ];
    println!(
        "definition at the bound: {MAX_DEFINITION_BYTES} bytes as canonical JSON, instructions {INSTRUCTIONS_LIMIT}"
    );
    for (what, bytes, annotations) in rows {
        println!(
            "  {what}: {bytes} bytes (limit {OBJECT_LIMIT}), annotations {annotations} bytes (limit {ANNOTATIONS_LIMIT})"
        );
        assert!(bytes < OBJECT_LIMIT, "{what}: {bytes} bytes");
        assert!(annotations < ANNOTATIONS_LIMIT, "{what}: annotations {annotations} bytes");
    }
    for (what, config_map) in [("delivery ConfigMap mid-rollout", &delivery), ("Pop's ConfigMap", &kept)] {
        let data = data_size(config_map);
        println!("  {what} data: {data} bytes (limit {CONFIG_MAP_LIMIT})");
        assert!(data < CONFIG_MAP_LIMIT, "{what}: {data} bytes");
    }
    assert!(data_size(&delivery) > 3 * MAX_DEFINITION_BYTES, "three snapshots at the bound");

    // One byte over: accepted by the schema (the bytes are in a step), refused by the operator,
    // which says so in status and an Event; the active version stays.
    let (ok, stderr) = apply(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &manifest(&ns, "big", &spec_of("D", MAX_DEFINITION_BYTES + 1)),
    );
    assert!(ok, "{stderr}");
    let agent = eventually(WAIT, || async {
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
    assert_eq!(agent.status.as_ref().and_then(|st| st.active_version), Some(5), "nothing published");
    s.wait_events("big", "DefinitionTooLarge", 1).await;

    // A field over its own limit is refused at apply, naming the field and the limit: bytes of
    // UTF-8 for the instructions (4-byte characters, under the character limit).
    let cases = [
        (json!({"instructions": "i".repeat(INSTRUCTIONS_LIMIT + 1)}), "spec.instructions", "262144"),
        (json!({"instructions": "🪿".repeat(INSTRUCTIONS_LIMIT / 4 + 1)}), "spec.instructions", "at most 262144 bytes"),
        (json!({"model": "m".repeat(257)}), "spec.model", "256"),
        (json!({"steps": vec![json!({}); 101]}), "spec.steps", "100"),
    ];
    for (spec, field, limit) in cases {
        let (ok, stderr) = apply(&["apply", "--server-side", "-f", "-"], &manifest(&ns, "refused", &spec));
        assert!(!ok && stderr.contains(field) && stderr.contains(limit), "{field}: {stderr}");
    }
    let just_under = json!({"instructions": "🪿".repeat(INSTRUCTIONS_LIMIT / 4)});
    let (ok, stderr) = apply(&["apply", "--server-side", "-f", "-"], &manifest(&ns, "under", &just_under));
    assert!(ok, "262144 bytes of instructions: {stderr}");
}

/// The length of an object's JSON, about as the API server stores it.
fn json_len<T: serde::Serialize>(object: &T) -> usize {
    serde_json::to_vec(object).map(|v| v.len()).unwrap_or(0)
}

//! The local control plane behaves like a real one: objects persist, CRDs become Established,
//! watches deliver events, CEL rules are enforced, RBAC denies and then allows.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::support::{client, client_for, namespace, user_kubeconfig, wait_crd_established};

#[tokio::test]
async fn a_configmap_is_stored_and_read_back_in_its_namespace() {
    let client = client().await;
    let ns = namespace(&client, "cp-cm").await;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"model": "auto"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let read = api.get("settings").await.unwrap();
    assert_eq!(read.data.unwrap().get("model").map(String::as_str), Some("auto"));
    assert_eq!(read.metadata.namespace.as_deref(), Some(ns.as_str()));
}

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.agentops.dev"},
        "spec": {
            "group": "test.agentops.dev",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.max >= self.min", "message": "max must be at least min"}]
                }}}}
            }]
        }
    }))
    .unwrap()
}

async fn install_widgets(client: &kube::Client) -> ApiResource {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("widgets.test.agentops.dev", &PatchParams::apply("tests").force(), &Patch::Apply(widget_crd()))
        .await
        .unwrap();
    wait_crd_established(&crds, "widgets.test.agentops.dev").await;
    ApiResource::from_gvk(&GroupVersionKind::gvk("test.agentops.dev", "v1", "Widget"))
}

fn widget(name: &str, min: i64, max: i64) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.agentops.dev/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": {"min": min, "max": max}
    }))
    .unwrap()
}

#[tokio::test]
async fn a_custom_resource_is_created_and_its_watch_event_arrives() {
    let client = client().await;
    let ns = namespace(&client, "cp-crd").await;
    let resource = install_widgets(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);
    let mut events = watcher(api.clone(), watcher::Config::default()).applied_objects().boxed();
    api.create(&PostParams::default(), &widget("w1", 1, 2)).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let object = events.try_next().await.unwrap().expect("watch stream open");
            if object.name_any() == "w1" {
                return object;
            }
        }
    })
    .await
    .expect("watch event within 20 s");
    assert_eq!(seen.data["spec"]["max"], 2);
}

#[tokio::test]
async fn a_cel_rule_refuses_a_bad_object_with_the_servers_message() {
    let client = client().await;
    let ns = namespace(&client, "cp-cel").await;
    let resource = install_widgets(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);
    let error = api.create(&PostParams::default(), &widget("bad", 5, 1)).await.expect_err("refused");
    let kube::Error::Api(status) = error else { panic!("expected an API error, got {error:?}") };
    assert_eq!(status.code, 422);
    assert!(status.message.contains("max must be at least min"), "{}", status.message);
}

#[tokio::test]
async fn a_non_admin_user_is_denied_until_a_rolebinding_allows_it() {
    let admin = client().await;
    let ns = namespace(&admin, "cp-rbac").await;
    let alice = client_for(&user_kubeconfig("alice", &["test-users"])).await;
    let as_alice: Api<ConfigMap> = Api::namespaced(alice, &ns);

    let denied = as_alice.list(&Default::default()).await.expect_err("no permission yet");
    assert!(matches!(&denied, kube::Error::Api(s) if s.code == 403), "{denied:?}");

    let role = Role {
        metadata: kube::api::ObjectMeta { name: Some("read-cm".into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["list".into(), "get".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &role).await.unwrap();
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta { name: Some("alice-read-cm".into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "read-cm".into(),
        },
        subjects: Some(vec![Subject { kind: "User".into(), name: "alice".into(), ..Default::default() }]),
    };
    Api::<RoleBinding>::namespaced(admin, &ns).create(&PostParams::default(), &binding).await.unwrap();

    // RBAC changes reach the authorizer through its informer: allow it a moment.
    crate::support::eventually(Duration::from_secs(10), || async { as_alice.list(&Default::default()).await.ok() })
        .await;
}

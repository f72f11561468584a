//! Objects of a metadata-only watch, decoded without most of their managed fields. kube's
//! `PartialObjectMeta` decodes every object's managed fields into a JSON tree that the watch then
//! drops; at 100,000 versions that tree was most of what a restart's first list allocated, and
//! the allocator kept much of the peak. What is decoded here is what the watches read: of the
//! managed fields, only who owns which `data` key (a delivery ConfigMap's `agent.json` edited
//! by hand is told by them, see `plan::delivery::ConfigMapState::edited_by`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The metadata of a `K`, as a metadata-only request returns it, less generateName, selfLink,
/// deletionGracePeriodSeconds and its managed fields but for the entries that own `data` keys
/// (each with its manager and those keys only).
pub struct LeanMeta<K> {
    pub metadata: ObjectMeta,
    kind: PhantomData<fn() -> K>,
}

impl<K> LeanMeta<K> {
    pub fn new(metadata: ObjectMeta) -> Self {
        Self { metadata, kind: PhantomData }
    }
}

impl<K> Clone for LeanMeta<K> {
    fn clone(&self) -> Self {
        Self::new(self.metadata.clone())
    }
}

impl<K> fmt::Debug for LeanMeta<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanMeta").field("metadata", &self.metadata).finish()
    }
}

impl<'de, K> Deserialize<'de> for LeanMeta<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Fields not named here are skipped without being kept.
        #[derive(Deserialize)]
        struct Object {
            #[serde(default)]
            metadata: Fields,
        }
        #[derive(Default, Deserialize)]
        #[serde(rename_all = "camelCase", default)]
        struct Fields {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            generation: Option<i64>,
            creation_timestamp: Option<Time>,
            deletion_timestamp: Option<Time>,
            labels: Option<BTreeMap<String, String>>,
            annotations: Option<BTreeMap<String, String>>,
            owner_references: Option<Vec<OwnerReference>>,
            finalizers: Option<Vec<String>>,
            managed_fields: Option<Vec<ManagedEntry>>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct ManagedEntry {
            manager: Option<String>,
            operation: Option<String>,
            fields_v1: Option<OwnedFields>,
        }
        #[derive(Deserialize)]
        struct OwnedFields {
            #[serde(rename = "f:data")]
            data: Option<BTreeMap<String, IgnoredAny>>,
        }
        let Object { metadata: m } = Object::deserialize(deserializer)?;
        let data_owners: Vec<ManagedFieldsEntry> = m
            .managed_fields
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let keys = entry.fields_v1?.data?;
                let owned: serde_json::Map<String, Value> = keys
                    .into_keys()
                    .filter(|k| k.starts_with("f:"))
                    .map(|k| (k, Value::Object(Default::default())))
                    .collect();
                // Kept with no key too: a manager that owned `data` and owns none of its keys
                // now had them changed or removed by someone else.
                Some(ManagedFieldsEntry {
                    manager: entry.manager,
                    operation: entry.operation,
                    fields_v1: Some(FieldsV1(serde_json::json!({ "f:data": owned }))),
                    ..ManagedFieldsEntry::default()
                })
            })
            .collect();
        Ok(Self::new(ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            generation: m.generation,
            creation_timestamp: m.creation_timestamp,
            deletion_timestamp: m.deletion_timestamp,
            labels: m.labels,
            annotations: m.annotations,
            owner_references: m.owner_references,
            finalizers: m.finalizers,
            managed_fields: (!data_owners.is_empty()).then_some(data_owners),
            ..ObjectMeta::default()
        }))
    }
}

impl<K: Resource> Resource for LeanMeta<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    /// Requests for it ask the API server for metadata only.
    fn metadata_api() -> bool {
        true
    }

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentVersion;
    use kube::ResourceExt;

    #[test]
    fn decodes_what_the_watches_read_and_skips_managed_fields() {
        let body = serde_json::json!({
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "name": "support-v3", "namespace": "team", "uid": "u1", "resourceVersion": "42",
                "generation": 1, "creationTimestamp": "2026-12-02T10:00:00Z",
                "labels": {"agentops.dev/agent": "support"},
                "annotations": {"agentops.dev/snapshot-hash": "ab"},
                "ownerReferences": [{"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "name": "support", "uid": "u0", "controller": true}],
                "managedFields": [{"manager": "agent-operator", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            }
        });
        let version: LeanMeta<AgentVersion> = serde_json::from_value(body).expect("decodes");
        assert_eq!(version.name_any(), "support-v3");
        assert_eq!(version.namespace().as_deref(), Some("team"));
        assert_eq!(version.resource_version().as_deref(), Some("42"));
        assert_eq!(version.labels().get("agentops.dev/agent").map(String::as_str), Some("support"));
        assert_eq!(version.annotations().len(), 1);
        assert_eq!(version.owner_references()[0].uid, "u0");
        assert!(version.metadata.creation_timestamp.is_some());
        assert!(version.metadata.managed_fields.is_none());
        assert!(LeanMeta::<AgentVersion>::metadata_api());
        assert_eq!(LeanMeta::<AgentVersion>::plural(&()), "agentversions");
    }

    #[test]
    fn keeps_of_the_managed_fields_only_who_owns_which_data_key() {
        let body = serde_json::json!({
            "metadata": {
                "name": "support-agent",
                "managedFields": [
                    {"manager": "agentops.dev/agent-operator", "operation": "Update", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:data": {".": {}}, "f:metadata": {"f:annotations": {"f:x": {}}}}},
                    {"manager": "kubectl-patch", "operation": "Update", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:data": {"f:agent.json": {}}}},
                    {"manager": "kubectl-label", "operation": "Update", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}}
                ]
            }
        });
        let config_map: LeanMeta<k8s_openapi::api::core::v1::ConfigMap> =
            serde_json::from_value(body).expect("decodes");
        let kept = config_map.metadata.managed_fields.expect("the owners of data are kept");
        let owners: Vec<_> = kept.iter().map(|e| (e.manager.as_deref(), e.fields_v1.as_ref().map(|f| &f.0))).collect();
        assert_eq!(
            owners,
            [
                (Some("agentops.dev/agent-operator"), Some(&serde_json::json!({"f:data": {}}))),
                (Some("kubectl-patch"), Some(&serde_json::json!({"f:data": {"f:agent.json": {}}}))),
            ]
        );
    }
}

//! Where a Pop keeps the snapshot it deletes. The rollback's status shows it (`poppedSnapshot`),
//! but status is a cache, and the record (see `durable`) is an annotation, which cannot hold a
//! definition of up to 320 KiB. So before a Pop deletes its version, the snapshot goes into a
//! ConfigMap of the rollback's own, `<rollback>-popped`: owned by the rollback (it goes when
//! the audit record goes), labelled with it, its `agent.json` the snapshot and annotated with
//! the snapshot's hash, which the record holds. A status rebuilt after a loss reads it back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::hash::{canonical_json, snapshot_hash};
use crate::api::keys::{AGENT_JSON_KEY, ROLLBACK_LABEL, SNAPSHOT_HASH_ANNOTATION};
use crate::api::{AgentDefinition, AgentRollback, AgentVersion};

/// The name of the ConfigMap in which the Pop `rollback` keeps the snapshot it deletes (a
/// rollback's name is at most 63 characters, so this one is at most 70).
pub fn config_map_name(rollback: &str) -> String {
    format!("{rollback}-popped")
}

/// The ConfigMap that keeps `version`'s snapshot for the Pop `rollback`.
pub fn config_map(namespace: &str, rollback: &AgentRollback, version: &AgentVersion) -> ConfigMap {
    let name = rollback.name_any();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&name)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(ROLLBACK_LABEL.to_string(), name.clone())])),
            annotations: Some(BTreeMap::from([(
                SNAPSHOT_HASH_ANNOTATION.to_string(),
                version.spec.snapshot_hash.clone(),
            )])),
            owner_references: Some(vec![super::owner_reference(rollback)]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(AGENT_JSON_KEY.to_string(), canonical_json(&version.spec.snapshot))])),
        ..ConfigMap::default()
    }
}

/// The snapshot `config_map` keeps for the rollback of `rollback_uid`: only if the rollback
/// owns it and its content has the hash the record holds, so a ConfigMap someone else made or
/// edited under that name is never taken for it.
pub fn snapshot_of(config_map: &ConfigMap, rollback_uid: &str, hash: &str) -> Option<AgentDefinition> {
    let owned = config_map
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.kind == AgentRollback::kind(&()) && r.uid == rollback_uid);
    let text = config_map.data.as_ref()?.get(AGENT_JSON_KEY)?;
    let snapshot: AgentDefinition = serde_json::from_str(text).ok()?;
    (owned && snapshot_hash(&snapshot) == hash).then_some(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RollbackStrategy;

    #[test]
    fn a_kept_snapshot_reads_back_only_for_its_rollback_and_hash() {
        let mut rollback = crate::fixtures::rollback("pop", "a", RollbackStrategy::Pop);
        rollback.metadata.uid = Some("rb-uid".into());
        let snapshot = AgentDefinition { instructions: Some("long".repeat(1000)), ..Default::default() };
        let version = crate::fixtures::version(
            &crate::fixtures::agent("a", AgentDefinition::default()),
            3,
            snapshot.clone(),
            None,
        );
        let kept = config_map("ns", &rollback, &version);
        assert_eq!(kept.metadata.name.as_deref(), Some("pop-popped"));
        let hash = snapshot_hash(&snapshot);
        assert_eq!(snapshot_of(&kept, "rb-uid", &hash), Some(snapshot));
        assert_eq!(snapshot_of(&kept, "other-uid", &hash), None, "another rollback's");
        assert_eq!(snapshot_of(&kept, "rb-uid", "not-the-hash"), None, "edited");
        let mut unowned = kept.clone();
        unowned.metadata.owner_references = None;
        assert_eq!(snapshot_of(&unowned, "rb-uid", &hash), None, "made by someone else");
    }
}

//! What statuses are rebuilt from. Status is a cache: losing it (a backup restored without
//! status, a storage migration, a hand edit) must publish nothing, delete nothing and run no
//! rollback again. Two marks in metadata, which backups and migrations keep, make that so:
//!
//! - Every AgentRollback the controller writes carries its record: the status it wrote, and
//!   the Agent it ran on with the spec state handled then. The record is written first, with
//!   the compare-and-swap that runs each rollback exactly once; the status is its copy, and
//!   is written again from it whenever the two differ.
//! - Every AgentVersion carries the Agent's spec state (generation, definition hash) handled
//!   when it was made.
//!
//! The handled spec state decides whether a generation is new (see `publish`). After a loss
//! of status it is the newest one recorded by a version or a rollback of the Agent. That can
//! be older than the one lost, but only by generations handled without a new version and
//! without a rollback; those left the active version as it was, and each had a definition
//! equal either to it or to the one handled before, so the older state decides every later
//! generation as the lost one would have.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::keys::{
    OBSERVED_DEFINITION_HASH_ANNOTATION, OBSERVED_GENERATION_ANNOTATION, ROLLBACK_RECORD_ANNOTATION,
    SNAPSHOT_HASH_ANNOTATION,
};
use crate::api::{AgentRollback, AgentRollbackStatus, AgentVersion};

/// An Agent's spec state that the controller has handled: published, or found equal to the
/// active version or to the definition handled before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handled {
    pub generation: i64,
    pub definition_hash: String,
}

/// The durable record of a rollback: the status the controller wrote, and the Agent it was
/// written for (absent when there was none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    pub status: AgentRollbackStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentMark>,
    /// The channel a channel rollback moved (see `moves`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<super::moves::ChannelMark>,
}

/// The Agent a rollback record was written for, and its spec state handled at the time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentMark {
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled: Option<Handled>,
}

/// The record as its annotation holds it: all of it but the popped snapshot, which a Pop keeps
/// in a ConfigMap of its own (see `popped`), as a definition may take more than the 256 KiB
/// that all annotations of an object may hold. Records of earlier builds hold the snapshot,
/// and are read as they are.
pub fn record_text(record: &RollbackRecord) -> serde_json::Result<String> {
    if record.status.popped_snapshot.is_none() {
        return serde_json::to_string(record);
    }
    let mut stored = record.clone();
    stored.status.popped_snapshot = None;
    serde_json::to_string(&stored)
}

/// The record on a rollback, if the controller wrote one. One that does not parse was not
/// written by the controller and counts as none.
pub fn record_of(rollback: &AgentRollback) -> Option<RollbackRecord> {
    let text = rollback.metadata.annotations.as_ref()?.get(ROLLBACK_RECORD_ANNOTATION)?;
    serde_json::from_str(text).ok()
}

/// The spec state recorded on a version, if any.
pub fn handled_of(version: &AgentVersion) -> Option<Handled> {
    let annotations = version.metadata.annotations.as_ref()?;
    Some(Handled {
        generation: annotations.get(OBSERVED_GENERATION_ANNOTATION)?.parse().ok()?,
        definition_hash: annotations.get(OBSERVED_DEFINITION_HASH_ANNOTATION)?.clone(),
    })
}

/// The annotations of a new version: its snapshot's hash (so that its metadata alone says
/// all a versions digest covers, see `controller::index::versions`), and `handled`, if given.
pub fn version_annotations(snapshot_hash: &str, handled: Option<&Handled>) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([(SNAPSHOT_HASH_ANNOTATION.to_string(), snapshot_hash.to_string())]);
    if let Some(handled) = handled {
        annotations.insert(OBSERVED_GENERATION_ANNOTATION.to_string(), handled.generation.to_string());
        annotations.insert(OBSERVED_DEFINITION_HASH_ANNOTATION.to_string(), handled.definition_hash.clone());
    }
    annotations
}

/// The newest of several handled states.
pub fn newest(states: impl IntoIterator<Item = Handled>) -> Option<Handled> {
    states.into_iter().max_by_key(|h| h.generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RollbackPhase;

    #[test]
    fn a_record_round_trips_through_its_annotation() {
        let record = RollbackRecord {
            status: AgentRollbackStatus {
                phase: Some(RollbackPhase::Succeeded),
                new_version: Some(4),
                ..AgentRollbackStatus::default()
            },
            agent: Some(AgentMark {
                uid: "u".into(),
                handled: Some(Handled { generation: 3, definition_hash: "h".into() }),
            }),
            channel: None,
        };
        let mut rollback = crate::fixtures::rollback("rb", "a", crate::api::RollbackStrategy::Pop);
        let text = record_text(&record).expect("serializes");
        rollback.metadata.annotations = Some(BTreeMap::from([(ROLLBACK_RECORD_ANNOTATION.to_string(), text)]));
        assert_eq!(record_of(&rollback), Some(record));
        rollback.metadata.annotations = Some(BTreeMap::from([(ROLLBACK_RECORD_ANNOTATION.into(), "{".into())]));
        assert_eq!(record_of(&rollback), None, "a broken record counts as none");
    }

    #[test]
    fn a_record_leaves_its_popped_snapshot_out_of_its_annotation() {
        let snapshot = crate::api::AgentDefinition { instructions: Some("i".repeat(300 * 1024)), ..Default::default() };
        let status = AgentRollbackStatus {
            popped_version: Some(2),
            popped_snapshot_hash: Some(crate::plan::hash::snapshot_hash(&snapshot)),
            popped_snapshot: Some(snapshot),
            ..AgentRollbackStatus::default()
        };
        let record = RollbackRecord { status, agent: None, channel: None };
        let text = record_text(&record).expect("serializes");
        assert!(text.len() < 1024, "{} bytes", text.len());
        let read: RollbackRecord = serde_json::from_str(&text).expect("parses");
        let mut expected = record.clone();
        expected.status.popped_snapshot = None;
        assert_eq!(read, expected);
    }

    #[test]
    fn the_newest_handled_state_is_the_highest_generation() {
        let at = |g: i64| Handled { generation: g, definition_hash: format!("h{g}") };
        assert_eq!(newest([at(2), at(5), at(3)]), Some(at(5)));
        assert_eq!(newest(Vec::new()), None);
    }
}

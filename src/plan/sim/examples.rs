//! The planner's examples, one behaviour each: what a newcomer reads first. Each runs the
//! operator's sync loop against the model of the API server.

use kube::ResourceExt;

use super::cluster::{Cluster, Outcome, content, time};
use crate::api::conditions::{HasConditions, READY, STALLED};
use crate::api::keys::ROLLBACK_RECORD_ANNOTATION;
use crate::api::{AgentDefinition, AgentRollbackStatus, RollbackPhase, RollbackStrategy};
use crate::plan::sync::decide;
use crate::plan::{Step, Write};

#[test]
fn a_new_agent_gets_version_one_and_a_ready_status() {
    let mut cluster = Cluster::new(content(1), 10);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history(), vec![(1, content(1))]);
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status written");
    assert_eq!((status.active_version, status.version_count, status.observed_generation), (Some(1), Some(1), Some(1)));
    let ready = status.condition(READY).expect("Ready");
    assert_eq!(ready.status, "True");
}

#[test]
fn changing_only_the_history_limit_publishes_nothing() {
    let mut cluster = Cluster::new(content(1), 10);
    cluster.converge(&mut || false);
    cluster.edit(None, Some(3));
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().len(), 1);
    assert_eq!(cluster.agent.as_ref().and_then(|a| a.status.as_ref()?.observed_generation), Some(2));
}

/// An Agent with versions 1 and 2 (contents 1 and 2), settled.
fn two_versions() -> Cluster {
    let mut cluster = Cluster::new(content(1), 10);
    cluster.converge(&mut || false);
    cluster.edit(Some(content(2)), None);
    cluster.converge(&mut || false);
    cluster
}

#[test]
fn rollback_leaves_the_spec_alone_and_a_later_edit_publishes() {
    let mut cluster = two_versions();
    cluster.create_rollback("rb", RollbackStrategy::Previous, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("rb"), Outcome::Succeeded(3));
    assert_eq!(cluster.agent.as_ref().map(|a| a.spec.definition.clone()), Some(content(2)));
    assert_eq!(cluster.history(), vec![(1, content(1)), (2, content(2)), (3, content(1))]);
    cluster.edit(Some(content(4)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().last(), Some(&(4, content(4))));
}

#[test]
fn two_previous_in_a_row_flip_between_two_states() {
    let mut cluster = two_versions();
    cluster.create_rollback("p1", RollbackStrategy::Previous, None, None);
    cluster.create_rollback("p2", RollbackStrategy::Previous, None, None);
    cluster.converge(&mut || false);
    let contents: Vec<_> = cluster.history().into_iter().map(|(_, d)| d).collect();
    assert_eq!(contents, vec![content(1), content(2), content(1), content(2)]);
}

#[test]
fn pop_keeps_the_deleted_snapshot_in_status() {
    let mut cluster = two_versions();
    cluster.create_rollback("pop", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    let status = cluster.rollbacks[0].status.clone().expect("status");
    assert_eq!(status.popped_version, Some(2));
    assert_eq!(status.popped_snapshot, Some(content(2)));
    assert_eq!(status.popped_snapshot_hash, Some(crate::plan::hash::snapshot_hash(&content(2))));
    assert_eq!((status.from_version, status.active_version), (Some(2), Some(1)));
    assert_eq!(status.message.as_deref(), Some("Version 2 was deleted. Version 1 is now active."));
}

#[test]
fn a_pop_keeps_the_deleted_snapshot_beside_its_record_and_shows_it_again_after_a_status_loss() {
    let mut cluster = two_versions();
    cluster.create_rollback("pop", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    let record = cluster.rollbacks[0].annotations()[ROLLBACK_RECORD_ANNOTATION].clone();
    assert!(!record.contains("instructions 2"), "the record leaves the snapshot out: {record}");
    let kept = cluster.popped.get("pop-popped").expect("the snapshot is kept in the Pop's ConfigMap");
    assert_eq!(kept.owner_references()[0].uid, cluster.rollbacks[0].uid().unwrap_or_default());

    cluster.lose_status();
    cluster.converge(&mut || false);
    let status = cluster.rollbacks[0].status.clone().expect("status rebuilt");
    assert_eq!(status.popped_snapshot, Some(content(2)));
    assert_eq!(cluster.history(), vec![(1, content(1))], "nothing published or deleted again");
}

#[test]
fn a_pop_whose_kept_snapshot_was_deleted_by_hand_rebuilds_the_rest_of_its_status() {
    let mut cluster = two_versions();
    cluster.create_rollback("pop", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    let before = cluster.rollbacks[0].status.clone().expect("status");
    cluster.popped.clear();
    cluster.lose_status();
    cluster.converge(&mut || false);
    let status = cluster.rollbacks[0].status.clone().expect("status rebuilt");
    assert_eq!(status.popped_snapshot, None, "nowhere to be found");
    assert_eq!(AgentRollbackStatus { popped_snapshot: None, ..before }, status);
}

#[test]
fn a_pop_that_cannot_keep_the_snapshot_deletes_nothing() {
    let mut cluster = two_versions();
    let taken = k8s_openapi::api::core::v1::ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("pop-popped".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cluster.popped.insert("pop-popped".into(), taken);
    cluster.create_rollback("pop", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("pop"), Outcome::Failed("SnapshotNotKept".into()));
    assert_eq!(cluster.history(), vec![(1, content(1)), (2, content(2))], "nothing deleted");
    let status = cluster.rollbacks[0].status.clone().expect("status");
    assert!(status.message.as_deref().is_some_and(|m| m.contains("pop-popped")), "{:?}", status.message);
}

#[test]
fn a_rollback_of_a_missing_agent_fails_with_agent_not_found() {
    let mut cluster = Cluster::new(content(1), 10);
    cluster.agent = None;
    cluster.create_rollback("rb", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("rb"), Outcome::Failed("AgentNotFound".into()));
}

#[test]
fn restore_message_names_the_target_and_the_new_version() {
    let mut cluster = two_versions();
    cluster.create_rollback("rb", RollbackStrategy::Restore, Some(1), None);
    cluster.converge(&mut || false);
    let status = cluster.rollbacks[0].status.clone().expect("status");
    assert_eq!(status.message.as_deref(), Some("Agent rolled back to version 1. New version 3 is now active."));
    assert_eq!((status.restored_version, status.new_version, status.from_version), (Some(1), Some(3), Some(2)));
    let made = cluster.versions.iter().find(|v| v.spec.version == 3).expect("v3");
    assert_eq!((made.spec.rollback_from_version, made.spec.rollback_name.as_deref()), (Some(1), Some("rb")));
    assert!(cluster.events.iter().any(|e| e.reason == "RollbackSucceeded"));
}

/// A definition over the size bound: a step holding `bytes` bytes.
fn large(bytes: usize) -> AgentDefinition {
    let step = serde_json::Map::from_iter([("prompt".to_string(), serde_json::Value::from("x".repeat(bytes)))]);
    AgentDefinition { steps: Some(vec![step]), ..content(1) }
}

#[test]
fn a_definition_over_the_bound_is_not_published_and_the_agent_says_why() {
    let mut cluster = two_versions();
    cluster.edit(Some(large(crate::plan::publish::MAX_DEFINITION_BYTES)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().len(), 2, "nothing published");
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    assert_eq!((status.observed_generation, status.active_version), (Some(3), Some(2)));
    let stalled = status.condition(STALLED).expect("Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "DefinitionTooLarge"));
    assert!(stalled.message.contains(&crate::plan::publish::MAX_DEFINITION_BYTES.to_string()), "{}", stalled.message);
    assert_eq!(cluster.events.iter().filter(|e| e.reason == "DefinitionTooLarge").count(), 1);

    // Rollbacks still run; a definition back under the bound is published.
    cluster.create_rollback("rb", RollbackStrategy::Previous, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("rb"), Outcome::Succeeded(3));
    cluster.edit(Some(content(7)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().last(), Some(&(4, content(7))));
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    assert!(status.is_true(READY));
}

/// A rollback created with a record of the client's own (where no admission policy refuses
/// one): Running, with the plan `status` says.
fn forge(
    cluster: &mut Cluster,
    name: &str,
    strategy: RollbackStrategy,
    target: Option<i64>,
    status: AgentRollbackStatus,
) {
    cluster.create_rollback(name, strategy, target, None);
    let record = crate::plan::durable::RollbackRecord {
        status: AgentRollbackStatus { phase: Some(RollbackPhase::Running), ..status },
        agent: None,
        channel: None,
    };
    let text = serde_json::to_string(&record).expect("a record");
    let forged = cluster.rollbacks.last_mut().expect("the rollback");
    forged.metadata.annotations.get_or_insert_default().insert(ROLLBACK_RECORD_ANNOTATION.into(), text);
    // As created: the watch cache never saw it without its record.
    cluster.rollback_history.pop();
    cluster.rollback_history.push(cluster.rollbacks.clone());
}

/// A forged record may not make the operator delete a version other than the newest, make a
/// version out of turn, or restore another target than the spec's: it fails and changes
/// nothing.
#[test]
fn a_record_the_operator_did_not_write_is_acted_on_only_as_the_history_allows() {
    let mut cluster = two_versions();
    cluster.edit(Some(content(3)), None);
    cluster.converge(&mut || false);
    let v1 = cluster.versions.iter().find(|v| v.spec.version == 1).expect("v1").clone();
    let plans = [
        (
            "pop-v1",
            RollbackStrategy::Pop,
            None,
            AgentRollbackStatus {
                popped_version: Some(1),
                popped_snapshot_hash: Some(v1.spec.snapshot_hash.clone()),
                ..AgentRollbackStatus::default()
            },
        ),
        (
            "restore-as-100",
            RollbackStrategy::Restore,
            Some(1),
            AgentRollbackStatus { restored_version: Some(1), new_version: Some(100), ..AgentRollbackStatus::default() },
        ),
        (
            "restore-other",
            RollbackStrategy::Restore,
            Some(2),
            AgentRollbackStatus { restored_version: Some(1), new_version: Some(4), ..AgentRollbackStatus::default() },
        ),
    ];
    for (name, strategy, target, status) in plans {
        forge(&mut cluster, name, strategy, target, status);
        cluster.converge(&mut || false);
        assert_eq!(cluster.outcome(name), Outcome::Failed("InvalidRecord".into()), "{name}");
        assert_eq!(cluster.history().iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3], "{name}");
    }
    // A record of the operator's own plan still runs.
    forge(
        &mut cluster,
        "restore-ok",
        RollbackStrategy::Restore,
        Some(1),
        AgentRollbackStatus { restored_version: Some(1), new_version: Some(4), ..AgentRollbackStatus::default() },
    );
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("restore-ok"), Outcome::Succeeded(4));
}

/// What an admission policy refuses for good ends the publish or rollback that asked for it,
/// with the API server's words; nothing is retried until the spec changes, and nothing waits
/// behind it.
#[test]
fn a_version_the_api_server_refuses_ends_its_publish_or_rollback_and_blocks_nothing() {
    let mut cluster = two_versions();
    cluster.version_policy = Some(|v| (v.spec.version == 3).then(|| "version 3 is not allowed.".to_string()));
    cluster.create_rollback("rb", RollbackStrategy::Previous, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("rb"), Outcome::Failed("VersionRefused".into()));
    let status = cluster.rollbacks[0].status.clone().expect("status");
    assert!(status.message.as_deref().is_some_and(|m| m.contains("version 3 is not allowed.")), "{status:?}");
    assert_eq!(status.active_version, Some(2));

    cluster.edit(Some(content(5)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().len(), 2, "nothing published");
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    let stalled = status.condition(STALLED).expect("Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "VersionRefused"));
    assert!(stalled.message.contains("version 3 is not allowed."), "{}", stalled.message);
    assert_eq!(cluster.events.iter().filter(|e| e.reason == "VersionRefused").count(), 1);
    // A later sync of the same generation keeps saying so, and tries nothing again.
    let (observed, _) = cluster.sync_from(cluster.observe());
    assert!(decide(&observed, &time(cluster.clock + 1)).is_empty());
    let stalled_again = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    assert!(stalled_again.condition(STALLED).is_some_and(|c| c.reason == "VersionRefused"));

    // A rollback behind it runs (Pop makes no version); once the policy is lifted the next
    // edit is published.
    cluster.create_rollback("pop", RollbackStrategy::Pop, None, None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.outcome("pop"), Outcome::Succeeded(1));
    cluster.version_policy = None;
    cluster.edit(Some(content(6)), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().last(), Some(&(2, content(6))));
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).expect("status");
    assert!(status.is_true(READY));
}

#[test]
fn a_definition_at_the_bound_is_published() {
    let mut cluster = two_versions();
    let overhead = crate::plan::hash::canonical_json(&large(0)).len();
    let at_bound = large(crate::plan::publish::MAX_DEFINITION_BYTES - overhead);
    assert_eq!(crate::plan::hash::canonical_json(&at_bound).len(), crate::plan::publish::MAX_DEFINITION_BYTES);
    cluster.edit(Some(at_bound.clone()), None);
    cluster.converge(&mut || false);
    assert_eq!(cluster.history().last(), Some(&(3, at_bound)));
}

/// A queue is run by one sync, which starts each rollback in turn: nothing is marked Pending
/// only for its next write to replace, and the head's Running record is copied into its
/// status beside its next write. A sync that stops there copies the status and marks Pending
/// those that wait behind the head, naming it, once each.
#[test]
fn rollbacks_waiting_their_turn_are_marked_pending_only_by_a_sync_that_stops() {
    let mut cluster = two_versions();
    for name in ["rb-1", "rb-2", "rb-3"] {
        cluster.create_rollback(name, RollbackStrategy::Previous, None, None);
    }
    let mut observed = cluster.observe();
    let steps = decide(&observed, &time(cluster.clock));
    let [Step::One(head @ Write::WriteRollback { name, copy_status: false, .. })] = steps.as_slice() else {
        panic!("only the head's record is written when it starts: {steps:?}")
    };
    assert_eq!(name, "rb-1");
    let written = cluster.apply(head, &observed).expect("the record is written");
    observed.fold(written);
    let next = decide(&observed, &time(cluster.clock));
    let [Step::Together(writes)] = next.as_slice() else { panic!("{next:?}") };
    assert!(
        matches!(writes.as_slice(), [Write::CopyRollbackStatus { name, .. }, Write::CreateVersion(_)] if name == "rb-1"),
        "the status copy goes beside the version's create: {writes:?}"
    );
    let raw = cluster.rollbacks.iter().find(|r| r.name_any() == "rb-1").expect("rb-1");
    assert_eq!(raw.status, None, "the status is not yet written");

    let marks = crate::plan::rollback::stopped(&observed, &time(cluster.clock));
    assert!(
        matches!(marks.first(), Some(Write::CopyRollbackStatus { name, .. }) if name == "rb-1"),
        "a sync that stops copies the Running record: {marks:?}"
    );
    let marked: Vec<(&str, Option<RollbackPhase>, Option<&str>)> = marks
        .iter()
        .filter_map(|s| match s {
            Write::WriteRollback { name, record, .. } => {
                Some((name.as_str(), record.status.phase, record.status.message.as_deref()))
            }
            _ => None,
        })
        .collect();
    let waiting = Some("Waiting for AgentRollback rb-1 to finish.");
    assert_eq!(
        marked,
        [("rb-2", Some(RollbackPhase::Pending), waiting), ("rb-3", Some(RollbackPhase::Pending), waiting)]
    );
    // The creation revision is recorded before the first write changes it: the order holds.
    for step in &marks {
        let Write::WriteRollback { name, record, .. } = step else { continue };
        let created = cluster.rollbacks.iter().find(|r| &r.name_any() == name).and_then(|r| r.resource_version());
        assert_eq!(record.status.creation_revision, created);
    }

    // Once marked, a rollback is not marked again.
    for step in &marks {
        cluster.apply(step, &observed).expect("the mark is written");
    }
    let raw = cluster.rollbacks.iter().find(|r| r.name_any() == "rb-1").expect("rb-1");
    assert_eq!(raw.status.as_ref().and_then(|s| s.phase), Some(RollbackPhase::Running));
    assert!(crate::plan::rollback::stopped(&cluster.observe(), &time(cluster.clock)).is_empty());
    cluster.converge(&mut || false);
    assert_eq!(
        ["rb-1", "rb-2", "rb-3"].map(|r| cluster.outcome(r)),
        [Outcome::Succeeded(3), Outcome::Succeeded(4), Outcome::Succeeded(5)]
    );
}

#[test]
fn a_version_in_use_deleted_by_hand_waits_until_no_channel_uses_it() {
    let mut cluster = two_versions();
    cluster.pin("prod", Some(1));
    cluster.converge(&mut || false);
    let numbers = |cluster: &Cluster| cluster.history().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    cluster.delete_by_hand(1);
    cluster.converge(&mut || false);
    assert_eq!(numbers(&cluster), [1, 2], "a pinned version deleted by hand stays");
    assert_eq!(cluster.channel_serving("prod").0, Some(1));

    cluster.pin("prod", None);
    cluster.converge(&mut || false);
    assert_eq!(numbers(&cluster), [2], "released once no channel uses it, it goes");
    assert_eq!(cluster.channel_serving("prod").0, Some(2));

    // The Agent deleted: its versions go, the finalizer of the one in use released first.
    assert!(crate::plan::protection::is_protected(&cluster.versions[0]));
    cluster.agent = None;
    cluster.converge(&mut || false);
    assert!(cluster.versions.is_empty());
}

//! The index's own rules: entries come and go with what the watches show, a relist replaces
//! one kind's part, the count of Agents out of sync follows, and what syncs leave is trusted
//! as the epochs say.

use kube::runtime::watcher::Event;

use super::*;
use crate::api::conditions::IN_SYNC;
use crate::api::{Agent, AgentRollback, AgentStatus, AgentVersion, RollbackStrategy};
use crate::fixtures;

pub(crate) fn key(name: &str) -> AgentKey {
    AgentKey::new("ns", name)
}

/// An Agent `ns/name` as its watch shows it; `rv` its resourceVersion.
pub(crate) fn agent(name: &str, rv: &str, in_sync: Option<bool>) -> Agent {
    let mut agent = fixtures::agent(name, fixtures::definition("x"));
    agent.metadata.resource_version = Some(rv.into());
    let conditions = in_sync.map(|ok| fixtures::condition(IN_SYNC, ok, "R")).into_iter().collect();
    agent.status = Some(AgentStatus { conditions, ..AgentStatus::default() });
    agent
}

/// An index whose Agent watch shows the Agent `ns/name`.
pub(crate) fn with_agent(name: &str) -> AgentIndex {
    let index = AgentIndex::new(true, Default::default());
    index.apply(&Event::Apply(agent(name, "1", None)));
    index
}

/// A version of the Agent `ns/owner` that this process did not write.
pub(crate) fn foreign_version(owner: &str) -> AgentVersion {
    version_of(owner, &format!("{owner}-v9"), "someone-else")
}

/// A version of the Agent `ns/owner`, by its name and uid.
fn version_of(owner: &str, name: &str, uid: &str) -> AgentVersion {
    let mut version = fixtures::version(&agent(owner, "1", None), 9, fixtures::definition("x"), None);
    version.metadata.name = Some(name.into());
    version.metadata.uid = Some(uid.into());
    version
}

fn rollback(name: &str, agent: &str) -> AgentRollback {
    fixtures::rollback(name, agent, RollbackStrategy::Previous)
}

fn state(rv: &str) -> crate::plan::Observed {
    crate::plan::Observed::new("ns".into(), "a".into(), Some(agent("a", rv, None)), Vec::new(), Vec::new())
}

#[test]
fn an_entry_leaves_when_nothing_refers_to_its_agent() {
    let index = with_agent("a");
    index.apply(&Event::Apply(version_of("a", "a-v1", "v1")));
    index.apply(&Event::Apply(rollback("r1", "a")));
    index.apply(&Event::Delete(agent("a", "2", None)));
    assert_eq!(index.tracked(), 1, "its version and its rollback still name it");
    index.apply(&Event::Delete(version_of("a", "a-v1", "v1")));
    assert_eq!(index.tracked(), 1, "its rollback still names it");
    index.apply(&Event::Delete(rollback("r1", "a")));
    assert_eq!(index.tracked(), 0);
}

#[test]
fn a_relist_replaces_one_kind_and_drops_entries_left_empty() {
    let index = with_agent("a");
    index.apply(&Event::Apply(rollback("r1", "b")));
    index.apply(&Event::Apply(version_of("c", "c-v1", "v1")));
    assert_eq!(index.tracked(), 3);
    index.apply::<AgentRollback>(&Event::Init);
    index.apply(&Event::InitApply(rollback("r2", "a")));
    assert_eq!(index.tracked(), 3, "a relist under way changes nothing");
    index.apply::<AgentRollback>(&Event::InitDone);
    assert_eq!(index.tracked(), 2, "b's only rollback is gone; a and c keep their other parts");
    let names = |agent: &str| index.lock().entries.get(&key(agent)).map(|e| e.rollbacks.clone());
    assert_eq!(names("a"), Some(["r2".to_string()].into()));
    index.apply::<AgentVersion>(&Event::Init);
    index.apply::<AgentVersion>(&Event::InitDone);
    assert_eq!(index.tracked(), 1, "c's versions are gone");
}

#[test]
fn the_agents_out_of_sync_are_counted_as_last_seen() {
    let index = AgentIndex::new(true, Default::default());
    index.apply(&Event::Apply(agent("a", "1", Some(false))));
    index.apply(&Event::Apply(agent("b", "1", Some(false))));
    index.apply(&Event::Apply(agent("c", "1", Some(true))));
    assert_eq!(index.out_of_sync(), 2);
    index.apply(&Event::Apply(agent("a", "2", Some(true))));
    assert_eq!(index.out_of_sync(), 1);
    index.apply(&Event::Delete(agent("b", "2", Some(false))));
    assert_eq!(index.out_of_sync(), 0, "a deleted Agent leaves the count at once");
    index.apply::<Agent>(&Event::Init);
    index.apply(&Event::InitApply(agent("c", "3", Some(false))));
    index.apply::<Agent>(&Event::InitDone);
    assert_eq!((index.out_of_sync(), index.tracked()), (1, 1));
}

#[test]
fn a_foreign_change_to_versions_voids_the_kept_state_but_not_the_settling() {
    let index = with_agent("a");
    let epoch = index.epoch(&key("a"));
    index.settle(&key("a"), epoch, state("10"));
    assert!(index.covers(&agent("a", "10", None)));
    assert!(!index.covers(&agent("a", "11", None)), "a newer Agent is not covered");
    assert!(index.wakes(&foreign_version("a")).is_some());
    assert!(!index.covers(&agent("a", "10", None)));
    assert!(matches!(index.take(&key("a")), Start::Settled(None)));
    assert!(matches!(index.take(&key("a")), Start::Unsettled), "taking forgets");
}

#[test]
fn a_change_during_the_sync_voids_the_state_it_ends_with() {
    let index = with_agent("a");
    let epoch = index.epoch(&key("a"));
    index.wakes(&foreign_version("a"));
    index.settle(&key("a"), epoch, state("10"));
    assert!(matches!(index.take(&key("a")), Start::Settled(None)));
}

#[test]
fn an_agent_that_leaves_and_comes_back_meets_no_epoch_taken_before() {
    let index = with_agent("a");
    let epoch = index.epoch(&key("a"));
    index.apply(&Event::Delete(agent("a", "2", None)));
    index.apply(&Event::Apply(agent("a", "3", None)));
    index.settle(&key("a"), epoch, state("3"));
    assert!(matches!(index.take(&key("a")), Start::Settled(None)), "a sync from before the deletion");
}

#[test]
fn what_syncs_left_goes_with_the_agent() {
    let index = with_agent("a");
    index.apply(&Event::Apply(rollback("r1", "a")));
    index.settle(&key("a"), index.epoch(&key("a")), state("1"));
    index.apply(&Event::Delete(agent("a", "2", None)));
    assert_eq!(index.tracked(), 1, "its rollback still names it");
    assert!(matches!(index.take(&key("a")), Start::Unsettled));
    index.settle(&key("gone"), 0, state("1"));
    assert!(matches!(index.take(&key("gone")), Start::Unsettled), "nothing is kept for an Agent no watch shows");
    assert_eq!(index.lock().kept.len(), 0);
}

#[test]
fn only_the_most_recent_states_are_kept() {
    let index = AgentIndex::new(true, Default::default());
    let names: Vec<String> = (0..settled::KEPT_STATES + 10).map(|i| format!("a{i}")).collect();
    for name in &names {
        index.apply(&Event::Apply(agent(name, "1", None)));
        index.settle(&key(name), index.epoch(&key(name)), state("1"));
    }
    let kept = || index.lock().entries.values().filter(|e| e.synced.kept_stamp().is_some()).count();
    assert_eq!(kept(), settled::KEPT_STATES);
    assert_eq!(index.lock().kept.len(), settled::KEPT_STATES);
    assert!(matches!(index.take(&key("a0")), Start::Settled(None)), "the oldest state was dropped");
    assert!(matches!(index.take(&key(names.last().expect("names"))), Start::Settled(Some(_))));
    assert_eq!(kept(), settled::KEPT_STATES - 1);
    assert_eq!(index.lock().kept.len(), settled::KEPT_STATES - 1);
}

#[test]
fn states_of_large_definitions_are_kept_within_their_byte_budget() {
    let index = AgentIndex::new(true, Default::default());
    let large = crate::api::AgentDefinition { instructions: Some("i".repeat(256 * 1024)), ..Default::default() };
    let names: Vec<String> = (0..settled::KEPT_STATES).map(|i| format!("a{i}")).collect();
    for name in &names {
        let agent = agent(name, "1", None);
        let versions = (1..=10).map(|n| crate::fixtures::version(&agent, n, large.clone(), None)).collect::<Vec<_>>();
        index.apply(&Event::Apply(agent.clone()));
        let state = crate::plan::Observed::new("ns".into(), name.clone(), Some(agent), versions, Vec::new());
        index.settle(&key(name), index.epoch(&key(name)), state);
    }
    let inner = index.lock();
    let per_state = 10 * (256 * 1024);
    assert!(inner.kept_bytes <= settled::KEPT_BYTES, "{} bytes kept", inner.kept_bytes);
    assert_eq!(inner.kept.len(), settled::KEPT_BYTES / (per_state + 10 * 20), "the most recent that fit");
    assert_eq!(inner.kept_bytes, inner.kept.values().map(|(_, w)| w).sum::<usize>());
    drop(inner);
    assert!(matches!(index.take(&key(names.last().expect("names"))), Start::Settled(Some(_))), "the newest is kept");
    assert!(matches!(index.take(&key("a0")), Start::Settled(None)), "the oldest is not");
}

#[test]
fn each_expected_echo_matches_one_event_and_nothing_else_matches() {
    let index = with_agent("a");
    index.expect_echo(&key("a"), Echo::Created { name: "a-v2".into() });
    index.expect_echo(&key("a"), Echo::Deleted { uid: "u1".into() });
    assert!(index.wakes(&version_of("a", "a-v3", "u3")).is_some(), "nobody expected this one");
    assert!(index.wakes(&version_of("a", "a-v2", "u2")).is_none());
    assert!(index.wakes(&version_of("a", "a-v2", "u2")).is_some(), "a second event is someone else's change");
    assert!(index.wakes(&version_of("a", "a-v1", "u1")).is_none());
    let echo = Echo::Created { name: "a-v4".into() };
    index.expect_echo(&key("a"), echo.clone());
    index.forget_echo(&key("a"), &echo);
    assert!(index.wakes(&version_of("a", "a-v4", "u4")).is_some(), "a forgotten write matches nothing");
}

#[test]
fn without_the_fast_paths_nothing_is_kept_or_expected() {
    let index = AgentIndex::new(false, Default::default());
    index.apply(&Event::Apply(agent("a", "1", None)));
    index.expect_echo(&key("a"), Echo::Created { name: "a-v2".into() });
    assert!(index.wakes(&version_of("a", "a-v2", "u2")).is_some());
    index.settle(&key("a"), index.epoch(&key("a")), state("1"));
    assert!(!index.covers(&agent("a", "1", None)));
    assert!(matches!(index.take(&key("a")), Start::Settled(None)), "settled, with no state");
}

#[test]
fn retries_count_per_agent_and_leave_with_what_they_retry() {
    let index = with_agent("a");
    index.apply(&Event::Apply(rollback("r1", "a")));
    let delays =
        |what: Retry| (0..3).map(|_| index.next_retry(&key("a"), what.clone()).as_millis()).collect::<Vec<_>>();
    assert_eq!(delays(Retry::Agent), [200, 400, 800]);
    assert_eq!(delays(Retry::Rollback("r1".into())), [200, 400, 800], "counted apart");
    index.reset_retry(&key("a"), &Retry::Agent);
    assert_eq!(index.next_retry(&key("a"), Retry::Agent).as_millis(), 200, "a success starts over");
    index.apply(&Event::Delete(rollback("r1", "a")));
    index.apply(&Event::Apply(rollback("r1", "a")));
    assert_eq!(index.next_retry(&key("a"), Retry::Rollback("r1".into())).as_millis(), 200, "a deleted rollback's go");
}

#[test]
fn indexes_that_share_gauges_add_up() {
    let gauges = Gauges::default();
    let (one, two) = (AgentIndex::new(true, gauges.clone()), AgentIndex::new(true, gauges.clone()));
    one.apply(&Event::Apply(agent("a", "1", Some(false))));
    two.apply(&Event::Apply(agent("b", "1", Some(false))));
    two.apply(&Event::Apply(rollback("r1", "c")));
    assert_eq!((gauges.tracked.get(), gauges.out_of_sync.get()), (3, 2));
    one.apply(&Event::Delete(agent("a", "2", Some(false))));
    two.apply::<AgentRollback>(&Event::Init);
    two.apply::<AgentRollback>(&Event::InitDone);
    assert_eq!((gauges.tracked.get(), gauges.out_of_sync.get()), (1, 1), "what leaves either index leaves the sum");
}

//! The property tests: random edits and rollbacks, run by the operator's sync loop against the
//! model of the API server, with crashes, stale caches and status losses, must end as the
//! contract's rules (`reference`) say, and leave the cluster consistent.

use std::collections::BTreeSet;

use kube::ResourceExt;
use proptest::prelude::*;

use super::cluster::{Cluster, Faults, Outcome, content};
use super::reference::Reference;
use crate::api::conditions::{HasConditions, READY};
use crate::api::{AgentDefinition, RollbackStrategy};
use crate::plan::protection;

/// One Agent's history under the contract's rules.
pub(crate) type Rules = Reference<AgentDefinition>;

/// What the rules say a rollback ends as.
pub(crate) fn expected(reference: &mut Rules, op: &Op) -> Outcome {
    let Op::Rollback { strategy, target, expected } = op else { unreachable!("not a rollback") };
    match reference.rollback(strategy.as_str(), *target, *expected) {
        Ok(active) => Outcome::Succeeded(active),
        Err(reason) => Outcome::Failed(reason.to_string()),
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Edit { definition: Option<u8>, limit: Option<i32> },
    Rollback { strategy: RollbackStrategy, target: Option<i64>, expected: Option<i64> },
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::option::of(0u8..6), proptest::option::weighted(0.2, 1i32..6)).prop_map(|(definition, limit)| Op::Edit { definition, limit }),
        2 => (1i64..12, proptest::option::weighted(0.2, 1i64..12)).prop_map(|(t, expected)| Op::Rollback { strategy: RollbackStrategy::Restore, target: Some(t), expected }),
        2 => proptest::option::weighted(0.2, 1i64..12).prop_map(|expected| Op::Rollback { strategy: RollbackStrategy::Previous, target: None, expected }),
        2 => proptest::option::weighted(0.2, 1i64..12).prop_map(|expected| Op::Rollback { strategy: RollbackStrategy::Pop, target: None, expected }),
    ]
}

pub(crate) fn submit(cluster: &mut Cluster, op: &Op, name: &str) {
    match op {
        Op::Edit { definition, limit } => cluster.edit(definition.map(content), *limit),
        Op::Rollback { strategy, target, expected } => cluster.create_rollback(name, *strategy, *target, *expected),
    }
}

pub(crate) fn check_invariants(cluster: &Cluster) -> Result<(), TestCaseError> {
    prop_assert!(!cluster.versions.is_empty(), "an Agent always has a version");
    let newest = cluster.versions.iter().map(|v| v.spec.version).max();
    let status = cluster.agent.as_ref().and_then(|a| a.status.clone()).unwrap_or_default();
    prop_assert_eq!(status.active_version, newest, "the active version is the newest one");
    prop_assert_eq!(status.version_count, Some(cluster.versions.len() as i64));
    let digest = crate::plan::hash::versions_digest(cluster.versions.iter().map(|v| &v.spec));
    prop_assert_eq!(&status.versions_digest, &Some(digest), "the status digest describes the versions that exist");
    let limit = cluster.agent.as_ref().map_or(1, |a| a.spec.revision_history_limit);
    prop_assert!(cluster.versions.len() <= limit.max(1) as usize);
    for v in &cluster.versions {
        prop_assert_eq!(&v.spec.snapshot_hash, &crate::plan::hash::snapshot_hash(&v.spec.snapshot));
        prop_assert_eq!(v.name_any(), crate::plan::version_name("a", v.spec.version));
    }
    // Delivered: the ConfigMap holds the active version's snapshot, and the status says so.
    let active = cluster.versions.iter().max_by_key(|v| v.spec.version).expect("a version");
    let (state, snapshot) = cluster.config_map.clone().expect("the delivery ConfigMap exists");
    prop_assert_eq!(state.held.map(|h| h.version), Some(active.spec.version));
    prop_assert_eq!(&snapshot, &active.spec.snapshot);
    prop_assert_eq!(status.delivery.as_ref().and_then(|d| d.version), Some(active.spec.version));
    let ready = status.is_true(READY);
    prop_assert!(ready, "Ready once delivered: {:?}", status.conditions);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Each operation applied alone: the cluster matches the reference after every one, and a
    /// Restore adds exactly one version equal to its target, a Pop removes exactly the latest.
    #[test]
    fn planner_matches_the_reference_one_operation_at_a_time(ops in proptest::collection::vec(op(), 1..25), limit in 1i32..6) {
        let mut cluster = Cluster::new(content(0), limit);
        let mut reference = Rules::new(content(0), limit);
        cluster.converge(&mut || false);
        for (i, op) in ops.iter().enumerate() {
            let name = format!("rb-{i}");
            let before = cluster.history();
            submit(&mut cluster, op, &name);
            cluster.converge(&mut || false);
            check_invariants(&cluster)?;
            match op {
                Op::Edit { definition, limit } => reference.edit(definition.map(content), *limit),
                Op::Rollback { strategy, .. } => {
                    let want = expected(&mut reference, op);
                    prop_assert_eq!(cluster.outcome(&name), want.clone(), "rollback {} {:?}", i, op);
                    let after = cluster.history();
                    if let Outcome::Succeeded(active) = want {
                        let (last_before, last_after) = (before.last().expect("non-empty"), after.last().expect("non-empty"));
                        match strategy {
                            RollbackStrategy::Pop => {
                                prop_assert_eq!(after.len() + 1, before.len());
                                prop_assert_eq!(&before[..before.len() - 1], &after[..]);
                            }
                            _ => {
                                prop_assert_eq!(last_after.0, last_before.0 + 1);
                                prop_assert_eq!(active, last_after.0);
                                let target = cluster.rollbacks.iter().find(|r| r.name_any() == name).and_then(|r| r.status.as_ref()?.restored_version);
                                let source = before.iter().find(|(n, _)| Some(*n) == target).map(|(_, d)| d);
                                prop_assert_eq!(Some(&last_after.1), source, "the new version copies the target");
                                prop_assert!(target.is_some(), "a succeeded restore records its target");
                            }
                        }
                    } else {
                        prop_assert_eq!(before, after, "a failed rollback changes nothing");
                    }
                }
            }
            prop_assert_eq!(cluster.history(), reference.history());
        }
    }

    /// Status is a cache: after any history of edits and rollbacks, losing every status and
    /// converging again publishes nothing, deletes nothing, runs no rollback again, sends no
    /// Event, and writes back the same statuses.
    #[test]
    fn losing_every_status_changes_nothing_and_rebuilds_the_same_statuses(
        ops in proptest::collection::vec(op(), 1..25),
        limit in 1i32..6,
        lose_after in proptest::collection::vec(any::<bool>(), 25),
    ) {
        let mut cluster = Cluster::new(content(0), limit);
        cluster.converge(&mut || false);
        for (i, op) in ops.iter().enumerate() {
            submit(&mut cluster, op, &format!("rb-{i}"));
            cluster.converge(&mut || false);
            if !lose_after[i] {
                continue;
            }
            let before = cluster.durable_view();
            let events = cluster.events.len();
            cluster.lose_status();
            cluster.converge(&mut || false);
            prop_assert_eq!(cluster.durable_view(), before, "after {:?}", op);
            prop_assert_eq!(cluster.events.len(), events, "Events sent again: {:?}", &cluster.events[events..]);
        }
    }

    /// Rollbacks created at once run one at a time in creation order: the end state equals the
    /// reference applying them one by one, even with the controller crashing at random steps
    /// and restarting on a rollback cache several changes stale, and every status lost a few
    /// times at random steps.
    #[test]
    fn queued_rollbacks_with_crashes_end_as_if_applied_one_by_one(
        setup in proptest::collection::vec(0u8..6, 1..8),
        batch in proptest::collection::vec(op().prop_filter("rollbacks only", |o| matches!(o, Op::Rollback { .. })), 1..20),
        crash_rate in 0u32..40,
        losses in 0u32..4,
        max_lag in 0usize..6,
        seed in any::<u64>(),
        limit in 2i32..8,
    ) {
        let mut cluster = Cluster::new(content(0), limit);
        let mut reference = Rules::new(content(0), limit);
        cluster.converge(&mut || false);
        for d in setup {
            cluster.edit(Some(content(d)), None);
            cluster.converge(&mut || false);
            reference.edit(Some(content(d)), None);
        }
        for (i, op) in batch.iter().enumerate() {
            submit(&mut cluster, op, &format!("rb-{i:02}"));
        }
        let rng = std::cell::Cell::new(seed | 1);
        let next = || {
            let mut x = rng.get();
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            rng.set(x);
            x
        };
        let mut crash = || (next() % 100) < u64::from(crash_rate);
        let mut lag = || (next() % (max_lag as u64 + 1)) as usize;
        // Status loss is rare: up to `losses` times, at random steps. A loss every few steps
        // would undo the status rewrites faster than they can be made.
        let losses_left = std::cell::Cell::new(losses);
        let mut lose_status = || {
            let lose = losses_left.get() > 0 && next() % 20 == 0;
            if lose {
                losses_left.set(losses_left.get() - 1);
            }
            lose
        };
        cluster.converge_with(Faults { crash: &mut crash, lag: &mut lag, lose_status: &mut lose_status });
        check_invariants(&cluster)?;
        for (i, op) in batch.iter().enumerate() {
            let want = expected(&mut reference, op);
            prop_assert_eq!(cluster.outcome(&format!("rb-{i:02}")), want, "rollback {} {:?}", i, op);
        }
        prop_assert_eq!(cluster.history(), reference.history());
        // Each succeeded Restore/Previous made exactly one version, named after it and
        // published by whoever asked for it.
        for r in &cluster.rollbacks {
            let made: Vec<_> =
                cluster.versions.iter().filter(|v| v.spec.rollback_name.as_deref() == Some(r.name_any().as_str())).collect();
            prop_assert!(made.len() <= 1);
            for version in made {
                prop_assert_eq!(&version.spec.published_by, &r.spec.requested_by);
            }
        }
    }
}

/// Operations on an Agent with channels: `prod` (pinned or following, as ops say) and `beta`
/// (following), beside the Agent's own edits and rollbacks.
#[derive(Clone, Debug)]
pub(crate) enum ChannelOp {
    Agent(Op),
    /// Pin `prod` to the version at this place in the history (an index into it), or let it
    /// follow the Agent.
    Pin(Option<usize>),
    /// A promotion (true) or a channel rollback (false) of channel `channel` to `target`.
    Move {
        promotion: bool,
        channel: &'static str,
        target: i64,
        expected: Option<i64>,
    },
}

pub(crate) fn channel_op() -> impl Strategy<Value = ChannelOp> {
    // A promotion of a channel that does not exist is failed by the promotion controller,
    // which finds no Agent to sync (shown end to end); here only a rollback names one.
    let channel = |promotion: bool, at: usize| match (promotion, at) {
        (_, 0) => "prod",
        (_, 1) | (true, _) => "beta",
        _ => "gone",
    };
    prop_oneof![
        4 => op().prop_map(ChannelOp::Agent),
        1 => proptest::option::of(0usize..8).prop_map(ChannelOp::Pin),
        4 => (any::<bool>(), 0usize..3, 1i64..12, proptest::option::weighted(0.2, 1i64..12)).prop_map(
            move |(promotion, at, target, expected)| ChannelOp::Move { promotion, channel: channel(promotion, at), target, expected }
        ),
    ]
}

/// A move's outcome, from the rules, after they applied it.
fn move_outcome(reference: &mut Rules, channel: &str, target: i64, expected: Option<i64>) -> Outcome {
    match reference.move_channel(channel, target, expected) {
        Ok(serving) => Outcome::Succeeded(serving),
        Err(reason) => Outcome::Failed(reason.to_string()),
    }
}

/// Creates the move in the cluster.
fn submit_move(cluster: &mut Cluster, name: &str, promotion: bool, channel: &str, target: i64, expected: Option<i64>) {
    if promotion {
        cluster.create_promotion(name, channel, target, expected);
    } else {
        cluster.create_channel_rollback(name, channel, target, expected);
    }
}

fn move_result(cluster: &Cluster, name: &str, promotion: bool) -> Outcome {
    if promotion { cluster.promotion_outcome(name) } else { cluster.outcome(name) }
}

/// Each channel serves what the rules say, its ConfigMap holds that version's snapshot, and
/// the Agent keeps what the rules keep.
fn check_channels(cluster: &Cluster, reference: &Rules) -> Result<(), TestCaseError> {
    for name in reference.channels.keys() {
        let want = reference.serving(name);
        let (serving, _) = cluster.channel_serving(name);
        prop_assert_eq!(serving, Some(want), "channel {} serves another version", name);
        let (state, snapshot) = cluster.channel_config_maps.get(name).cloned().expect("the channel's ConfigMap");
        prop_assert_eq!(state.held.map(|h| h.version), Some(want));
        prop_assert_eq!(
            Some(&snapshot),
            reference.versions.get(&want),
            "channel {}'s ConfigMap holds another snapshot",
            name
        );
    }
    prop_assert_eq!(cluster.history(), reference.history());
    let protected: BTreeSet<i64> =
        cluster.versions.iter().filter(|v| protection::is_protected(v)).map(|v| v.spec.version).collect();
    prop_assert_eq!(protected, reference.in_use(), "the versions in use, and only they, carry the finalizer");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Channels under random edits, rollbacks, pins and moves, one at a time: each channel serves
    /// what the rules say (its pin or the Agent's active version, unless a move holds it until
    /// the desired version changes), every move ends as they say, and pruning and Pop keep the
    /// versions channels use.
    #[test]
    fn channels_match_the_reference_one_operation_at_a_time(
        ops in proptest::collection::vec(channel_op(), 1..25),
        limit in 1i32..5,
    ) {
        let mut cluster = Cluster::new(content(0), limit);
        let mut reference = Rules::new(content(0), limit);
        cluster.pin("prod", None);
        cluster.pin("beta", None);
        reference.pin("prod", None);
        reference.pin("beta", None);
        cluster.converge(&mut || false);
        check_channels(&cluster, &reference)?;
        for (i, op) in ops.iter().enumerate() {
            let name = format!("op-{i}");
            match op {
                ChannelOp::Agent(agent_op) => {
                    submit(&mut cluster, agent_op, &name);
                    cluster.converge(&mut || false);
                    match agent_op {
                        Op::Edit { definition, limit } => reference.edit(definition.map(content), *limit),
                        Op::Rollback { .. } => {
                            let want = expected(&mut reference, agent_op);
                            prop_assert_eq!(cluster.outcome(&name), want, "rollback {} {:?}", i, agent_op);
                        }
                    }
                }
                ChannelOp::Pin(at) => {
                    // Only to a version that exists: a pin to none leaves the channel stalled
                    // on what it served, which the rules do not model.
                    let numbers: Vec<i64> = reference.versions.keys().copied().collect();
                    let pin = at.map(|at| numbers[at % numbers.len()]);
                    cluster.pin("prod", pin);
                    reference.pin("prod", pin);
                    cluster.converge(&mut || false);
                }
                ChannelOp::Move { promotion, channel, target, expected } => {
                    submit_move(&mut cluster, &name, *promotion, channel, *target, *expected);
                    cluster.converge(&mut || false);
                    let want = move_outcome(&mut reference, channel, *target, *expected);
                    prop_assert_eq!(move_result(&cluster, &name, *promotion), want, "move {} {:?}", i, op);
                }
            }
            check_channels(&cluster, &reference)?;
        }
    }

    /// A channel's moves created at once run one at a time in creation order, promotions and
    /// rollbacks in one queue, and end as the rules applying them one by one, with the
    /// controller crashing at random steps, restarting on a stale rollback cache, and every
    /// status lost a few times: nothing runs twice, nothing is lost.
    #[test]
    fn queued_channel_moves_with_crashes_end_as_if_applied_one_by_one(
        setup in proptest::collection::vec(0u8..6, 1..6),
        pinned in proptest::option::of(0usize..6),
        batch in proptest::collection::vec((any::<bool>(), 1i64..8, proptest::option::weighted(0.2, 1i64..8)), 1..12),
        crash_rate in 0u32..40,
        losses in 0u32..4,
        max_lag in 0usize..4,
        seed in any::<u64>(),
    ) {
        let limit = 10;
        let mut cluster = Cluster::new(content(0), limit);
        let mut reference = Rules::new(content(0), limit);
        cluster.converge(&mut || false);
        for d in setup {
            cluster.edit(Some(content(d)), None);
            cluster.converge(&mut || false);
            reference.edit(Some(content(d)), None);
        }
        let numbers: Vec<i64> = reference.versions.keys().copied().collect();
        let pin = pinned.map(|at| numbers[at % numbers.len()]);
        cluster.pin("prod", pin);
        reference.pin("prod", pin);
        cluster.converge(&mut || false);
        for (i, (promotion, target, expected)) in batch.iter().enumerate() {
            submit_move(&mut cluster, &format!("mv-{i:02}"), *promotion, "prod", *target, *expected);
        }
        let rng = std::cell::Cell::new(seed | 1);
        let next = || {
            let mut x = rng.get();
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            rng.set(x);
            x
        };
        let mut crash = || (next() % 100) < u64::from(crash_rate);
        let mut lag = || (next() % (max_lag as u64 + 1)) as usize;
        let losses_left = std::cell::Cell::new(losses);
        let mut lose_status = || {
            let lose = losses_left.get() > 0 && next() % 20 == 0;
            if lose {
                losses_left.set(losses_left.get() - 1);
            }
            lose
        };
        cluster.converge_with(Faults { crash: &mut crash, lag: &mut lag, lose_status: &mut lose_status });
        for (i, (promotion, target, expected)) in batch.iter().enumerate() {
            let want = move_outcome(&mut reference, "prod", *target, *expected);
            prop_assert_eq!(move_result(&cluster, &format!("mv-{i:02}"), *promotion), want, "move {}", i);
        }
        check_channels(&cluster, &reference)?;
        // Each move started at most once: one PromotionStarted or RollbackStarted Event each.
        for i in 0..batch.len() {
            let name = format!("mv-{i:02}");
            let started = cluster
                .events
                .iter()
                .filter(|e| e.reason.ends_with("Started") && matches!(&e.on, crate::plan::EventTarget::Promotion(n) | crate::plan::EventTarget::Rollback(n) if *n == name))
                .count();
            prop_assert!(started <= 1, "{} started {} times", name, started);
        }
    }
}

//! History pruning: which versions fall outside `revisionHistoryLimit`, and the steps that
//! delete them.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::{EventNote, EventTarget, Observed, RelatedObject, Write};
use crate::api::Agent;
use crate::api::conditions::events;

/// What pruning leaves of an Agent's versions: the count and digest its status records, and
/// the deletes that get there (none when nothing is beyond the limit).
pub struct Pruning {
    pub count: i64,
    pub digest: String,
    pub deletes: Vec<Write>,
    pruned: Vec<i64>,
    limit: i32,
}

impl Pruning {
    /// What was deleted and why, for an Event.
    pub fn note(&self) -> Option<String> {
        if self.pruned.is_empty() {
            return None;
        }
        let list = self.pruned.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        Some(format!("Deleted version(s) {list}: revisionHistoryLimit is {}", self.limit))
    }

    /// The Event of a prune on its own. It names the first version deleted, which also keeps
    /// it apart from the last prune's Event (the Events API folds same-looking ones together).
    pub fn event(&self) -> Option<Write> {
        let first = self.deletes.iter().find_map(|d| match d {
            Write::DeleteVersion { name, .. } => Some(name.clone()),
            _ => None,
        })?;
        Some(Write::Event(EventNote {
            on: EventTarget::Agent,
            related: Some(RelatedObject::Version(first)),
            warning: false,
            reason: events::VERSIONS_PRUNED,
            action: "Prune",
            note: self.note()?,
        }))
    }
}

/// Prunes `observed`'s versions beyond the Agent's `revisionHistoryLimit`, never the active one
/// nor one a channel uses (the Agent then keeps more than its limit).
pub fn pruning(observed: &Observed, agent: &Agent) -> Pruning {
    let limit = agent.spec.revision_history_limit;
    let mut kept = super::channel::in_use(observed);
    kept.extend(observed.active_number());
    let pruned = versions_to_prune(&observed.version_numbers(), &kept, limit);
    let kept: Vec<_> = observed.versions.iter().filter(|v| !pruned.contains(&v.spec.version)).collect();
    let deletes = observed
        .versions
        .iter()
        .filter(|v| pruned.contains(&v.spec.version))
        .map(|v| Write::DeleteVersion { name: v.name_any(), uid: v.metadata.uid.clone().unwrap_or_default() })
        .collect();
    Pruning {
        count: kept.len() as i64,
        digest: super::hash::versions_digest(kept.iter().map(|v| &v.spec)),
        deletes,
        pruned,
        limit,
    }
}

/// Version numbers to delete so that at most `limit` remain where `kept` allows: the oldest
/// first, never one of `kept` (the active version, those channels use), which still count
/// toward the limit. `numbers` may be in any order; a limit below 1 counts as 1.
pub fn versions_to_prune(numbers: &[i64], kept: &BTreeSet<i64>, limit: i32) -> Vec<i64> {
    let limit = usize::try_from(limit.max(1)).unwrap_or(1);
    let mut sorted: Vec<i64> = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let excess = sorted.len().saturating_sub(limit);
    sorted.into_iter().filter(|n| !kept.contains(n)).take(excess).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prunes_oldest_beyond_the_limit() {
        assert_eq!(versions_to_prune(&[1, 2, 3, 4, 5], &BTreeSet::from([5]), 3), vec![1, 2]);
    }

    #[test]
    fn keeps_everything_within_the_limit() {
        assert!(versions_to_prune(&[3, 4], &BTreeSet::from([4]), 10).is_empty());
    }

    #[test]
    fn never_prunes_the_active_version_even_if_oldest() {
        assert_eq!(versions_to_prune(&[1, 2, 3], &BTreeSet::from([1]), 1), vec![2, 3]);
    }

    #[test]
    fn limit_below_one_keeps_one() {
        assert_eq!(versions_to_prune(&[1, 2, 3], &BTreeSet::from([3]), 0), vec![1, 2]);
    }

    #[test]
    fn versions_in_use_are_kept_and_count_toward_the_limit() {
        // 1 pinned by a channel, 5 active: of 1..=5 with a limit of 3, 2 and 3 go.
        assert_eq!(versions_to_prune(&[1, 2, 3, 4, 5], &BTreeSet::from([1, 5]), 3), vec![2, 3]);
        // More in use than the limit: every other one goes, and the Agent keeps more.
        assert_eq!(versions_to_prune(&[1, 2, 3, 4], &BTreeSet::from([1, 2, 4]), 2), vec![3]);
    }

    proptest! {
        #[test]
        fn pruning_keeps_the_limit_and_the_versions_in_use(
            numbers in proptest::collection::btree_set(1i64..200, 1..40),
            limit in 1i32..15,
            active_index in any::<proptest::sample::Index>(),
            in_use in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
        ) {
            let numbers: Vec<i64> = numbers.into_iter().collect();
            let active = *active_index.get(&numbers);
            let mut kept: BTreeSet<i64> = in_use.iter().map(|i| *i.get(&numbers)).collect();
            kept.insert(active);
            let pruned = versions_to_prune(&numbers, &kept, limit);
            prop_assert!(pruned.iter().all(|n| !kept.contains(n)));
            let left = numbers.len() - pruned.len();
            prop_assert_eq!(left, numbers.len().min(limit as usize).max(kept.len()));
            // Whatever is kept, apart from those in use, is newer than whatever is pruned.
            let oldest_kept = numbers.iter().filter(|n| !pruned.contains(n) && !kept.contains(n)).min();
            if let (Some(oldest_kept), Some(newest_pruned)) = (oldest_kept, pruned.iter().max()) {
                prop_assert!(oldest_kept > newest_pruned);
            }
        }
    }
}

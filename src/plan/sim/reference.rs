//! The contract's rules for one Agent's history (docs/reference.md, behaviours), written as
//! plainly as possible and independently of the operator: what a sequence of edits and
//! rollbacks must end in. The planner's property tests (`plan::sim`) and the end-to-end tests
//! (`tests/support`, which include this file) judge the operator against it. It uses nothing
//! but the standard library, so that both can.

use std::collections::BTreeMap;

/// An Agent's versions by number, each holding its definition, `D`.
#[derive(Clone, Debug)]
pub struct Reference<D> {
    pub versions: BTreeMap<i64, D>,
    spec: D,
    limit: usize,
}

impl<D: Clone + PartialEq> Reference<D> {
    /// An Agent just published: version 1 holds `spec`.
    pub fn new(spec: D, limit: i32) -> Self {
        Self::with_versions(BTreeMap::from([(1, spec)]), limit)
    }

    /// An Agent with these versions, its spec the newest one's.
    pub fn with_versions(versions: BTreeMap<i64, D>, limit: i32) -> Self {
        let spec = versions.values().next_back().expect("at least one version").clone();
        Self { versions, spec, limit: usize::try_from(limit.max(1)).unwrap_or(1) }
    }

    pub fn active(&self) -> i64 {
        *self.versions.keys().max().expect("at least one version")
    }

    /// The oldest versions go beyond the limit.
    fn prune(&mut self) {
        while self.versions.len() > self.limit {
            let oldest = *self.versions.keys().min().expect("non-empty");
            self.versions.remove(&oldest);
        }
    }

    /// An edit of the spec: a definition unlike the active version's is published.
    pub fn edit(&mut self, definition: Option<D>, limit: Option<i32>) {
        if let Some(limit) = limit {
            self.limit = usize::try_from(limit.max(1)).unwrap_or(1);
        }
        if let Some(d) = definition
            && d != self.spec
        {
            self.spec = d.clone();
            if self.versions[&self.active()] != d {
                self.versions.insert(self.active() + 1, d);
            }
        }
        self.prune();
    }

    /// A rollback (`strategy` as the API spells it); the active version it leaves, or the
    /// reason it fails.
    pub fn rollback(
        &mut self,
        strategy: &str,
        target: Option<i64>,
        expected: Option<i64>,
    ) -> Result<i64, &'static str> {
        let active = self.active();
        if expected.is_some_and(|e| e != active) {
            return Err("ActiveVersionChanged");
        }
        let restore_from = match strategy {
            "Restore" => {
                let t = target.expect("Restore has a target");
                if t == active {
                    return Err("AlreadyActive");
                }
                if !self.versions.contains_key(&t) {
                    return Err("VersionNotFound");
                }
                t
            }
            "Previous" => *self.versions.keys().filter(|n| **n < active).max().ok_or("NoPreviousVersion")?,
            "Pop" => {
                if self.versions.len() < 2 {
                    return Err("AtFirstVersion");
                }
                self.versions.remove(&active);
                return Ok(self.active());
            }
            other => panic!("unknown strategy {other}"),
        };
        let copy = self.versions[&restore_from].clone();
        self.versions.insert(active + 1, copy);
        self.prune();
        Ok(active + 1)
    }

    /// A version deleted by hand (never the active one).
    pub fn delete_by_hand(&mut self, number: i64) {
        assert_ne!(number, self.active(), "the reference deletes no active version by hand");
        self.versions.remove(&number);
    }

    pub fn history(&self) -> Vec<(i64, D)> {
        self.versions.iter().map(|(n, d)| (*n, d.clone())).collect()
    }
}

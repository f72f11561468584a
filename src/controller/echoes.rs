//! This process's own version writes, expected back on the versions watch. A version event
//! that is one of them needs no reconcile: the sync that made the write folds in its answer.
//! Any other version event is a change made by someone else, which voids the Agent's settled
//! state (see [`super::settled`]).
//!
//! A write is expected before it is sent, because its watch event can arrive before its
//! answer; it is forgotten if the write fails.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::ResourceExt;

/// More entries than this and the old ones are dropped: an echo lost to a watch restart must
/// not keep its entry for ever.
const MAX_ENTRIES: usize = 1024;
/// Age past which an entry is dropped once the registry is full.
const MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Echo {
    /// A create of the version of this namespace and name.
    Created { namespace: String, name: String },
    /// A delete of the version with this uid.
    Deleted { uid: String },
}

pub struct Echoes {
    expected: Mutex<HashMap<Echo, Instant>>,
    /// Off, nothing is expected and every version event is someone else's change.
    enabled: bool,
}

impl Default for Echoes {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Echoes {
    pub fn new(enabled: bool) -> Self {
        Self { expected: Mutex::default(), enabled }
    }

    pub fn expect(&self, echo: Echo) {
        if !self.enabled {
            return;
        }
        let mut expected = self.expected.lock().unwrap_or_else(PoisonError::into_inner);
        if expected.len() >= MAX_ENTRIES {
            expected.retain(|_, at| at.elapsed() < MAX_AGE);
        }
        expected.insert(echo, Instant::now());
    }

    pub fn forget(&self, echo: &Echo) {
        self.expected.lock().unwrap_or_else(PoisonError::into_inner).remove(echo);
    }

    /// Whether this watch event of a version (its metadata) is the echo of one of this
    /// process's writes; each expected echo is matched once.
    pub fn matches(&self, version: &impl ResourceExt) -> bool {
        let mut expected = self.expected.lock().unwrap_or_else(PoisonError::into_inner);
        let deleted = version.uid().map(|uid| Echo::Deleted { uid });
        if let Some(echo) = deleted
            && expected.remove(&echo).is_some()
        {
            return true;
        }
        let created = Echo::Created { namespace: version.namespace().unwrap_or_default(), name: version.name_any() };
        expected.remove(&created).is_some()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.expected.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentVersion;

    fn version(name: &str, uid: &str) -> AgentVersion {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "agentops.dev/v1alpha1", "kind": "AgentVersion",
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "spec": {"agentName": "a", "version": 1, "snapshot": {"instructions": "x"}, "snapshotHash": "h"}
        }))
        .unwrap()
    }

    #[test]
    fn each_expected_write_matches_one_event_and_nothing_else_matches() {
        let echoes = Echoes::default();
        echoes.expect(Echo::Created { namespace: "ns".into(), name: "a-v2".into() });
        echoes.expect(Echo::Deleted { uid: "u1".into() });
        assert!(!echoes.matches(&version("a-v3", "u3")), "nobody expected this one");
        assert!(echoes.matches(&version("a-v2", "u2")));
        assert!(!echoes.matches(&version("a-v2", "u2")), "a second event is someone else's change");
        assert!(echoes.matches(&version("a-v1", "u1")));
        assert_eq!(echoes.len(), 0);
    }

    #[test]
    fn a_forgotten_write_matches_nothing() {
        let echoes = Echoes::default();
        let echo = Echo::Created { namespace: "ns".into(), name: "a-v2".into() };
        echoes.expect(echo.clone());
        echoes.forget(&echo);
        assert!(!echoes.matches(&version("a-v2", "u2")));
    }
}

//! The contract's rollback rules (docs/reference.md) as a tiny model, written independently of
//! the operator, to say what a sequence of rollbacks must end in.

use std::collections::BTreeMap;

/// One rollback request.
#[derive(Clone, Debug)]
pub struct Request {
    pub strategy: &'static str,
    pub target: Option<i64>,
}

/// Versions by number, each holding the agent's instructions.
#[derive(Clone, Debug, PartialEq)]
pub struct History(pub BTreeMap<i64, String>);

impl History {
    fn active(&self) -> i64 {
        *self.0.keys().max().expect("at least one version")
    }

    /// Applies one request; returns the failure reason, if it fails. No pruning: tests that use
    /// this keep a history limit larger than what they make.
    pub fn apply(&mut self, request: &Request) -> Result<i64, &'static str> {
        let active = self.active();
        let target = match request.strategy {
            "Restore" => {
                let t = request.target.expect("Restore has a target");
                if t == active {
                    return Err("AlreadyActive");
                }
                if !self.0.contains_key(&t) {
                    return Err("VersionNotFound");
                }
                t
            }
            "Previous" => *self.0.keys().filter(|n| **n < active).max().ok_or("NoPreviousVersion")?,
            "Pop" => {
                if self.0.len() < 2 {
                    return Err("AtFirstVersion");
                }
                self.0.remove(&active);
                return Ok(self.active());
            }
            other => panic!("unknown strategy {other}"),
        };
        let copy = self.0[&target].clone();
        self.0.insert(active + 1, copy);
        Ok(active + 1)
    }
}

//! The contract's rules for one Agent's history (docs/reference.md, behaviours), written as
//! plainly as possible and independently of the operator: what a sequence of edits,
//! rollbacks, and moves of the Agent's channels must end in. The planner's property tests (`plan::sim`) and the end-to-end tests
//! (`tests/support`, which include this file) judge the operator against it. It uses nothing
//! but the standard library, so that both can.

use std::collections::{BTreeMap, BTreeSet};

/// An Agent's versions by number, each holding its definition, `D`, and its channels.
#[derive(Clone, Debug)]
pub struct Reference<D> {
    pub versions: BTreeMap<i64, D>,
    spec: D,
    limit: usize,
    pub channels: BTreeMap<String, Channel>,
}

/// A channel: its pin (none: it follows the Agent), and the version a promotion or rollback
/// holds it on, with the desired version it had then (the hold ends when that changes).
#[derive(Clone, Debug, Default)]
pub struct Channel {
    pub pin: Option<i64>,
    held: Option<(i64, i64)>,
}

impl<D: Clone + PartialEq> Reference<D> {
    /// An Agent just published: version 1 holds `spec`.
    pub fn new(spec: D, limit: i32) -> Self {
        Self::with_versions(BTreeMap::from([(1, spec)]), limit)
    }

    /// An Agent with these versions, its spec the newest one's.
    pub fn with_versions(versions: BTreeMap<i64, D>, limit: i32) -> Self {
        let spec = versions.values().next_back().expect("at least one version").clone();
        Self { versions, spec, limit: usize::try_from(limit.max(1)).unwrap_or(1), channels: BTreeMap::new() }
    }

    pub fn active(&self) -> i64 {
        *self.versions.keys().max().expect("at least one version")
    }

    /// The versions channels use (pin or serve): kept from pruning and from deletion by hand.
    pub fn in_use(&self) -> BTreeSet<i64> {
        let pins = self.channels.values().filter_map(|c| c.pin);
        pins.chain(self.served()).filter(|n| self.versions.contains_key(n)).collect()
    }

    /// What each channel serves now.
    fn served(&self) -> Vec<i64> {
        self.channels.keys().map(|c| self.serving(c)).collect()
    }

    /// After a change: the oldest versions go beyond the limit, but never the active one, one a
    /// channel pins, or one a channel serves once the change is made (its runtime's old version
    /// is not kept for it); those count toward the limit and stay.
    fn prune(&mut self) {
        self.end_holds();
        let pins = self.channels.values().filter_map(|c| c.pin);
        let kept: Vec<i64> = pins.chain(self.served()).collect();
        while self.versions.len() > self.limit {
            let active = self.active();
            let Some(oldest) = self.versions.keys().copied().find(|n| *n != active && !kept.contains(n)) else { break };
            self.versions.remove(&oldest);
        }
    }

    /// What a channel's spec asks for: its pin, or the Agent's active version.
    pub fn desired(&self, channel: &str) -> i64 {
        self.channels[channel].pin.unwrap_or_else(|| self.active())
    }

    /// What a channel serves: the version a move holds it on, or its desired version.
    pub fn serving(&self, channel: &str) -> i64 {
        match self.channels[channel].held {
            Some((version, desired)) if desired == self.desired(channel) => version,
            _ => self.desired(channel),
        }
    }

    /// Moves end once the desired version they were made at has changed.
    fn end_holds(&mut self) {
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            let desired = self.desired(&name);
            let channel = self.channels.get_mut(&name).expect("listed");
            if channel.held.is_some_and(|(_, at)| at != desired) {
                channel.held = None;
            }
        }
    }

    /// A channel created, or its pin changed.
    pub fn pin(&mut self, channel: &str, pin: Option<i64>) {
        self.channels.entry(channel.to_string()).or_default().pin = pin;
        self.prune();
    }

    /// A promotion, or a channel rollback (Restore), of `channel` to `target`: the version it
    /// leaves the channel serving, or the reason it fails.
    pub fn move_channel(&mut self, channel: &str, target: i64, expected: Option<i64>) -> Result<i64, &'static str> {
        if !self.channels.contains_key(channel) {
            return Err("ChannelNotFound");
        }
        let served = self.serving(channel);
        if expected.is_some_and(|e| e != served) {
            return Err("ActiveVersionChanged");
        }
        if !self.versions.contains_key(&target) {
            return Err("VersionNotFound");
        }
        if target == served {
            return Err("AlreadyActive");
        }
        let desired = self.desired(channel);
        self.channels.get_mut(channel).expect("checked").held = Some((target, desired));
        self.prune();
        Ok(target)
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
                // A version a channel pins or holds is in use.
                let in_use = self.channels.iter().any(|(name, channel)| {
                    channel.pin == Some(active)
                        || channel.held.is_some_and(|(v, at)| v == active && at == self.desired(name))
                });
                if in_use {
                    return Err("VersionInUse");
                }
                self.versions.remove(&active);
                self.prune();
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

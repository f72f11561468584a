//! The channels' part of the index: the names of each Agent's channels, so that a sync finds
//! them without scanning every channel in the watch cache. The same invariants as the
//! rollbacks' part hold (see `rollbacks`): a channel's `agentName` is immutable, so a name
//! never moves between Agents.

use std::collections::{BTreeSet, HashMap};

use kube::ResourceExt;

use super::{AgentKey, Entry, Indexed, Kind, Parts, Relists};
use crate::api::AgentChannel;

fn key(channel: &AgentChannel) -> AgentKey {
    AgentKey { namespace: channel.namespace().unwrap_or_default(), name: channel.spec.agent_name.clone() }
}

impl Indexed for AgentChannel {
    type Part = BTreeSet<String>;
    const KIND: Kind = Kind::Channel;

    fn part(entry: &mut Entry) -> &mut Self::Part {
        &mut entry.channels
    }

    fn relist(relists: &mut Relists) -> &mut Option<HashMap<AgentKey, Self::Part>> {
        &mut relists.channels
    }

    fn applied(&self, parts: &mut impl Parts<Self::Part>) {
        parts.part(&key(self)).insert(self.name_any());
    }

    fn deleted(&self, parts: &mut impl Parts<Self::Part>) {
        if let Some(names) = parts.existing(&key(self)) {
            names.remove(&self.name_any());
        }
    }
}

impl super::OfAgent for AgentChannel {
    fn agent_name(&self) -> &str {
        &self.spec.agent_name
    }

    fn names(entry: &Entry) -> &BTreeSet<String> {
        &entry.channels
    }
}

/// The AgentChannels' watch cache, with each Agent's channels found through the index.
pub type ChannelCache = super::AgentCache<AgentChannel>;

//! The Agents' part of the index: that the Agent exists, and whether its `InSync` condition was
//! False when its watch last showed it (the `agents_out_of_sync` gauge).

use kube::ResourceExt;

use super::{AgentKey, Entry, Indexed, Kind, Parts, Relists};
use crate::api::Agent;
use crate::api::conditions::{HasConditions, IN_SYNC};

pub struct AgentFacts {
    out_of_sync: bool,
}

fn key(agent: &Agent) -> AgentKey {
    AgentKey { namespace: agent.namespace().unwrap_or_default(), name: agent.name_any() }
}

impl Indexed for Agent {
    type Part = Option<AgentFacts>;
    const KIND: Kind = Kind::Agent;

    fn part(entry: &mut Entry) -> &mut Self::Part {
        &mut entry.agent
    }

    fn relist(relists: &mut Relists) -> &mut Option<std::collections::HashMap<AgentKey, Self::Part>> {
        &mut relists.agents
    }

    fn applied(&self, parts: &mut impl Parts<Self::Part>) {
        let out_of_sync = self.status.as_ref().is_some_and(|s| s.is_false(IN_SYNC));
        *parts.part(&key(self)) = Some(AgentFacts { out_of_sync });
    }

    fn deleted(&self, parts: &mut impl Parts<Self::Part>) {
        if let Some(part) = parts.existing(&key(self)) {
            *part = None;
        }
    }
}

/// Whether the entry's Agent was out of sync when last seen.
pub(super) fn out_of_sync(entry: &Entry) -> bool {
    entry.agent.as_ref().is_some_and(|a| a.out_of_sync)
}

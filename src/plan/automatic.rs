//! The automatic rollback (behaviour 18): when the version a channel serves fails there and
//! its `onFailure` is `Rollback`, the operator creates an ordinary AgentRollback of the channel
//! (`LastKnownGood`, `expectedActiveVersion` the failed version), which then runs as a person's
//! would, with the same audit trail. Its name, `<channel>-auto-v<N>`, is the exactly-once
//! guard: whatever crashes, one failed version in one channel gets one rollback (a create
//! that finds the name taken is done). It holds instead, and says why, with `onFailure: Hold`,
//! with no other version Healthy in the channel, and when the failed version is one an
//! automatic rollback went back to (no ping-pong between two bad versions).

use kube::ResourceExt;

use super::channel::ChannelObserved;
use super::{EventNote, EventTarget, Observed, RelatedObject, analysis, moves};
use crate::api::conditions::events;
use crate::api::{AgentRollback, AgentRollbackSpec, OnFailure, RollbackPhase, RollbackStrategy};

/// The name of the automatic rollback of `channel` from `version`.
pub fn name(channel: &str, version: i64) -> String {
    format!("{channel}-auto-v{version}")
}

/// What the operator does about the version a channel serves.
#[derive(Debug)]
pub enum Decision {
    /// Nothing: it did not fail there, or its rollback exists.
    Nothing,
    /// Create this rollback, and tell of it.
    Create(Box<AgentRollback>, EventNote),
    /// It failed, and the channel stays on it: why.
    Hold(String),
}

pub fn decide(observed: &Observed, channel: &ChannelObserved, serving: Option<i64>) -> Decision {
    let name = channel.channel.name_any();
    let Some(number) = serving.filter(|n| moves::verdict(observed, *n, &name) == Some(analysis::FAILED)) else {
        return Decision::Nothing;
    };
    let own = self::name(&name, number);
    if observed.rollback(&own).is_some() {
        return Decision::Nothing;
    }
    let on_failure = channel.channel.spec.analysis.as_ref().map(|a| a.on_failure).unwrap_or_default();
    if on_failure == OnFailure::Hold {
        return Decision::Hold(
            "onFailure is Hold: the channel stays on it until a person or a declared change moves it.".into(),
        );
    }
    // A version an automatic rollback of this channel went back to: held, not flipped.
    let went_back = observed.rollbacks.iter().find(|r| {
        let status = r.status.as_ref();
        r.spec.channel.as_deref() == Some(name.as_str())
            && r.name_any().starts_with(&format!("{name}-auto-v"))
            && status.is_some_and(|s| s.phase == Some(RollbackPhase::Succeeded) && s.active_version == Some(number))
    });
    if let Some(rollback) = went_back {
        return Decision::Hold(format!(
            "AgentRollback {} went back to it: the operator holds it rather than roll back again.",
            rollback.name_any()
        ));
    }
    let Some(good) = analysis::last_known_good(observed, &name) else {
        return Decision::Hold("no other version is Healthy in the channel to go back to.".into());
    };
    let why = observed
        .version(number)
        .and_then(|v| v.annotations().get(&moves::health_key(&name)).cloned())
        .unwrap_or_else(|| format!("Version {number} failed in channel {name}."));
    let spec = AgentRollbackSpec {
        agent_name: observed.agent_name.clone(),
        strategy: RollbackStrategy::LastKnownGood,
        channel: Some(name.clone()),
        target_version: None,
        expected_active_version: Some(number),
        reason: Some(why.chars().take(1024).collect()),
        requested_by: None,
    };
    let mut rollback = AgentRollback::new(&own, spec);
    rollback.metadata.namespace = Some(observed.namespace.clone());
    let note = EventNote {
        on: EventTarget::Channel(name.clone()),
        related: Some(RelatedObject::Rollback(own.clone())),
        warning: true,
        reason: events::AUTOMATIC_ROLLBACK,
        action: "RollBack",
        note: format!("{why} Created AgentRollback {own} to serve the last known good, version {good}."),
    };
    Decision::Create(Box::new(rollback), note)
}

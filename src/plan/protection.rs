//! Versions in use are protected from deletion by hand (behaviour 13): every version a channel
//! uses (see [`super::channel::in_use`]) carries the finalizer `agentops.dev/in-use`, and no
//! other version does, so a deletion by hand waits, as PVC protection does, until no channel
//! uses the version, and then goes through. The operator's own deletes (pruning, Pop, a deleted
//! Agent's leftovers) release the finalizer first (see `controller::apply`): they are decided
//! knowing what the channels use.

use kube::ResourceExt;

use super::{Observed, Step, Write};
use crate::api::AgentVersion;
use crate::api::keys::IN_USE_FINALIZER;

/// The finalizer writes that bring the Agent's versions in line with what its channels use:
/// one unit, every version that needs one, none when all are in line.
pub fn decide(observed: &Observed) -> Vec<Step> {
    let in_use = super::channel::in_use(observed);
    observed
        .versions
        .iter()
        .filter_map(|version| {
            let protected = is_protected(version);
            let wanted = in_use.contains(&version.spec.version);
            (protected != wanted).then(|| mark(version, wanted).into())
        })
        .collect()
}

/// Whether the version carries the operator's finalizer.
pub fn is_protected(version: &AgentVersion) -> bool {
    version.finalizers().iter().any(|f| f == IN_USE_FINALIZER)
}

/// The write that adds (`protect`) or releases the operator's finalizer on `version`, keeping
/// everyone else's.
pub fn mark(version: &AgentVersion, protect: bool) -> Write {
    let mut finalizers: Vec<String> =
        version.finalizers().iter().filter(|f| f.as_str() != IN_USE_FINALIZER).cloned().collect();
    if protect {
        finalizers.push(IN_USE_FINALIZER.into());
    }
    Write::SetVersionFinalizers {
        name: version.name_any(),
        resource_version: version.resource_version().unwrap_or_default(),
        finalizers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentChannel, AgentChannelSpec, AgentDefinition};
    use crate::fixtures;
    use crate::plan::channel::ChannelObserved;

    fn observed(pin: Option<i64>, protected: &[i64]) -> Observed {
        let agent = fixtures::agent("support", AgentDefinition::default());
        let versions = (1..=3)
            .map(|n| {
                let mut version = fixtures::version(&agent, n, AgentDefinition::default(), None);
                version.metadata.resource_version = Some(format!("{n}0"));
                version.metadata.finalizers = Some(vec!["example.com/keep".into()]);
                if protected.contains(&n) {
                    version.finalizers_mut().push(IN_USE_FINALIZER.into());
                }
                version
            })
            .collect();
        let mut observed = Observed::new("ns".into(), "support".into(), Some(agent), versions, vec![]);
        let channel = AgentChannel::new(
            "prod",
            AgentChannelSpec { agent_name: "support".into(), version: pin, delivery: None, analysis: None },
        );
        observed.channels = vec![ChannelObserved::unobserved(channel)];
        observed
    }

    fn writes(steps: Vec<Step>) -> Vec<(String, String, Vec<String>)> {
        steps
            .into_iter()
            .map(|step| match step {
                Step::One(Write::SetVersionFinalizers { name, resource_version, finalizers }) => {
                    (name, resource_version, finalizers)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_version_a_channel_starts_using_is_protected_and_one_it_left_released_keeping_others_finalizers() {
        // prod pins 1; version 3 still carries the finalizer from when prod pinned it.
        let steps = decide(&observed(Some(1), &[3]));
        assert_eq!(
            writes(steps),
            [
                ("support-v1".into(), "10".into(), vec!["example.com/keep".into(), IN_USE_FINALIZER.into()]),
                ("support-v3".into(), "30".into(), vec!["example.com/keep".into()]),
            ]
        );
    }

    #[test]
    fn versions_in_line_need_no_write() {
        assert!(decide(&observed(Some(2), &[2])).is_empty());
        // A following channel uses the active version, 3.
        assert!(decide(&observed(None, &[3])).is_empty());
    }
}

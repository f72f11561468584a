//! Agents as the watch decodes them: everything but the definition. The cache keeps no
//! definition anyway (a sync reads a changed Agent live), and a definition is the one part of an
//! Agent the operator may fail to decode: `steps` and `askUserQuestions` keep fields of any
//! shape, and the JSON decoder stops at 128 levels of nesting. Fields left undecoded are skipped
//! without a depth limit, so one such Agent cannot stall the watch of every other.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher::Event;
use serde::{Deserialize, Deserializer};

use crate::api::agent::DEFAULT_REVISION_HISTORY_LIMIT;
use crate::api::{Agent, AgentDefinition, AgentSpec, AgentStatus, DeliverySpec};

/// An Agent whose definition is left empty, whatever its spec holds.
#[derive(Clone, Debug)]
pub struct LeanAgent(pub Agent);

impl<'de> Deserialize<'de> for LeanAgent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Object {
            metadata: ObjectMeta,
            #[serde(default)]
            spec: Policy,
            status: Option<AgentStatus>,
        }
        // The spec's fields that are policy, not definition; the rest is skipped.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Policy {
            #[serde(default = "revision_history_limit")]
            revision_history_limit: i32,
            delivery: Option<DeliverySpec>,
        }
        impl Default for Policy {
            fn default() -> Self {
                Self { revision_history_limit: DEFAULT_REVISION_HISTORY_LIMIT, delivery: None }
            }
        }
        fn revision_history_limit() -> i32 {
            DEFAULT_REVISION_HISTORY_LIMIT
        }
        let Object { metadata, spec, status } = Object::deserialize(deserializer)?;
        let spec = AgentSpec {
            definition: AgentDefinition::default(),
            revision_history_limit: spec.revision_history_limit,
            delivery: spec.delivery,
        };
        Ok(Self(Agent { metadata, spec, status }))
    }
}

impl LeanAgent {
    /// A watch event of lean Agents as one of Agents.
    pub fn event(event: Event<LeanAgent>) -> Event<Agent> {
        match event {
            Event::Apply(agent) => Event::Apply(agent.0),
            Event::Delete(agent) => Event::Delete(agent.0),
            Event::InitApply(agent) => Event::InitApply(agent.0),
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
        }
    }
}

impl Resource for LeanAgent {
    type DynamicType = ();
    type Scope = <Agent as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Agent::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Agent::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Agent::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Agent::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects nested `depth` levels deep, as one step.
    fn nested(depth: usize) -> String {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }

    fn agent_json(steps_depth: usize) -> String {
        format!(
            r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"Agent","metadata":{{"name":"deep","generation":3}},"spec":{{"instructions":"i","steps":[{}],"revisionHistoryLimit":4,"delivery":{{"configMapName":"cm"}}}},"status":{{"activeVersion":2}}}}"#,
            nested(steps_depth)
        )
    }

    #[test]
    fn decodes_an_agent_whose_steps_nest_deeper_than_the_full_type_can() {
        let text = agent_json(200);
        let full = serde_json::from_str::<Agent>(&text);
        assert!(full.is_err_and(|e| e.to_string().contains("recursion limit")), "the full type stops at 128");
        let LeanAgent(agent) = serde_json::from_str(&text).expect("the lean type decodes it");
        assert_eq!(agent.metadata.generation, Some(3));
        assert_eq!(agent.spec.revision_history_limit, 4);
        assert_eq!(agent.spec.delivery.and_then(|d| d.config_map_name).as_deref(), Some("cm"));
        assert_eq!(agent.spec.definition, AgentDefinition::default());
        assert_eq!(agent.status.and_then(|s| s.active_version), Some(2));
    }

    #[test]
    fn a_spec_without_policy_fields_gets_their_defaults() {
        let text = r#"{"metadata":{"name":"a"},"spec":{"model":"m"}}"#;
        let LeanAgent(agent) = serde_json::from_str(text).expect("decodes");
        assert_eq!(agent.spec.revision_history_limit, DEFAULT_REVISION_HISTORY_LIMIT);
        assert!(agent.spec.delivery.is_none() && agent.status.is_none());
    }
}

//! Publishing: each new generation of an Agent whose definition differs (by hash) from the
//! active version becomes version latest+1.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;

use super::durable::Handled;
use super::hash::snapshot_hash;
use super::{
    EventNote, EventTarget, Observed, RelatedObject, StatusChange, Step, VersionsAfter, Write, owner_reference,
    version_name,
};
use crate::api::conditions::{HasConditions, STALLED, events, reasons};
use crate::api::keys::{AGENT_LABEL, CHANGE_CAUSE_ANNOTATION, CHANGED_BY_ANNOTATION, VERSION_LABEL};
use crate::api::{Agent, AgentDefinition, AgentVersion, AgentVersionSpec};

/// The largest definition, as canonical JSON, that is published. Every object made from it
/// must fit the API server's limits; the tightest is the delivery ConfigMap (1 MiB of data),
/// which during a rollout holds the snapshot three times: `agent.json`, the served version's
/// own key and the replaced version's key. Three times 320 KiB leaves 64 KiB for the keys and
/// the small entries. No definition passes through an annotation (a Pop keeps the snapshot it
/// deletes in a ConfigMap, see `durable`).
pub const MAX_DEFINITION_BYTES: usize = 320 * 1024;

/// True when the Agent has a generation not yet handled, or no version at all (unless its
/// definition is refused: then it stays without one until its spec changes).
pub fn needed(agent: &Agent, observed: &Observed) -> bool {
    let handled = observed.handled().map(|h| h.generation);
    agent.metadata.generation != handled || (observed.versions.is_empty() && observed.refusal().is_none())
}

/// Publishes the Agent's definition; or, when it equals the active version, did not change
/// since the last handled generation, or is refused (too large, or its version refused by the
/// API server; then with an Event, the first time), only records that this generation was
/// handled.
pub fn steps(observed: &Observed, agent: &Agent, busy_after: Option<&str>, now: &Time) -> Vec<Step> {
    let generation = agent.metadata.generation;
    let hash = snapshot_hash(&agent.spec.definition);
    let refusal = observed.refusal();
    let definition_unchanged = observed.handled().is_some_and(|h| h.definition_hash == hash);
    let equals_active = observed.newest().is_some_and(|v| v.spec.snapshot_hash == hash);
    let handled = generation.map(|generation| Handled { generation, definition_hash: hash.clone() });

    if refusal.is_some() || equals_active || (definition_unchanged && !observed.versions.is_empty()) {
        let delivery = super::delivery::state_after(observed, agent, observed.newest());
        let change = StatusChange {
            versions: observed.versions_now(),
            handled,
            last_rollback: None,
            delivery_report: None,
            busy: busy_after,
            delivery: &delivery,
        };
        let status = observed.agent_status(agent, change, now);
        let refused_before = |reason: &str| {
            agent.status.as_ref().and_then(|s| s.condition(STALLED)).is_some_and(|c| {
                c.status == "True"
                    && c.reason == reason
                    && (reason == reasons::DEFINITION_TOO_LARGE || c.observed_generation == generation)
            })
        };
        let event = refusal.filter(|r| !refused_before(r.reason)).map(|refusal| {
            Write::Event(EventNote {
                on: EventTarget::Agent,
                related: None,
                warning: true,
                reason: refusal.reason,
                action: "Publish",
                note: refusal.message,
            })
        });
        return [Write::PatchAgentStatus(Box::new(status))].into_iter().chain(event).map(Step::from).collect();
    }

    let number = observed.next_version_number();
    let provenance = Provenance {
        rollback: None,
        change_cause: agent.annotations().get(CHANGE_CAUSE_ANNOTATION).cloned(),
        published_by: agent.annotations().get(CHANGED_BY_ANNOTATION).cloned(),
    };
    let version = new_version(agent, number, agent.spec.definition.clone(), hash, provenance, handled.clone());
    let versions = VersionsAfter {
        newest: Some(&version),
        count: observed.versions.len() as i64 + 1,
        digest: super::hash::versions_digest(observed.versions.iter().map(|v| &v.spec).chain([&version.spec])),
    };
    let delivery = super::delivery::state_after(observed, agent, Some(&version));
    let change = StatusChange {
        versions,
        handled,
        last_rollback: None,
        delivery_report: None,
        busy: busy_after,
        delivery: &delivery,
    };
    let status = observed.agent_status(agent, change, now);
    [
        Write::CreateVersion(Box::new(version)),
        Write::PatchAgentStatus(Box::new(status)),
        Write::Event(EventNote {
            on: EventTarget::Agent,
            related: Some(RelatedObject::Version(version_name(&agent.name_any(), number))),
            warning: false,
            reason: events::VERSION_PUBLISHED,
            action: "Publish",
            note: match generation {
                Some(g) => format!("Published version {number} from generation {g}"),
                None => format!("Published version {number}"),
            },
        }),
    ]
    .into_iter()
    .map(Step::from)
    .collect()
}

/// Where a rollback-made version comes from.
pub struct RollbackOrigin<'a> {
    pub from_version: i64,
    pub rollback_name: &'a str,
}

/// Where a new version comes from, and why and for whom it exists.
pub struct Provenance<'a> {
    /// Set on versions made by a rollback.
    pub rollback: Option<RollbackOrigin<'a>>,
    pub change_cause: Option<String>,
    pub published_by: Option<String>,
}

/// A new version object of `agent`, named `<agent>-v<number>`, owned by the Agent, recording
/// the Agent's spec state `handled` once it exists.
pub fn new_version(
    agent: &Agent,
    number: i64,
    snapshot: AgentDefinition,
    snapshot_hash: String,
    provenance: Provenance<'_>,
    handled: Option<Handled>,
) -> AgentVersion {
    let Provenance { rollback: origin, change_cause, published_by } = provenance;
    let agent_name = agent.name_any();
    let mut labels = BTreeMap::from([
        (AGENT_LABEL.to_string(), agent_name.clone()),
        (VERSION_LABEL.to_string(), number.to_string()),
    ]);
    if let Some(origin) = &origin {
        labels.insert(crate::api::keys::ROLLBACK_LABEL.to_string(), origin.rollback_name.to_string());
    }
    AgentVersion {
        metadata: ObjectMeta {
            name: Some(version_name(&agent_name, number)),
            namespace: agent.namespace(),
            labels: Some(labels),
            annotations: Some(super::durable::version_annotations(&snapshot_hash, handled.as_ref())),
            owner_references: Some(vec![owner_reference(agent)]),
            ..ObjectMeta::default()
        },
        spec: AgentVersionSpec {
            agent_name,
            version: number,
            snapshot,
            snapshot_hash,
            rollback_from_version: origin.as_ref().map(|o| o.from_version),
            rollback_name: origin.map(|o| o.rollback_name.to_string()),
            change_cause,
            published_by,
        },
    }
}

/// Why an Agent is busy, if it is: a generation to publish or rollbacks to run.
pub fn busy_reason(publish_pending: bool, rollbacks_pending: bool) -> Option<&'static str> {
    if publish_pending {
        Some(reasons::PUBLISHING)
    } else if rollbacks_pending {
        Some(reasons::ROLLBACK_IN_PROGRESS)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agent::TYPED_FIELDS_BUDGET;
    use crate::api::{AgentSpec, Visibility};

    /// What the CRD's rule counts of a definition (see `api::agent::TYPED_FIELDS_BUDGET`).
    fn typed_fields_size(d: &AgentDefinition) -> usize {
        let instructions = d.instructions.as_ref().map_or(0, String::len);
        let files = d.knowledge_base_files.iter().flatten().map(|f| f.len() + 3).sum::<usize>();
        let settings = d.advanced_settings.iter().flatten().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>();
        instructions + files + settings
    }

    /// The rule on the spec names the budget, and a definition the API server admits by the
    /// fields it can measure (its small fields at their bounds in four-byte characters, the
    /// budget spent to the byte) fits a version.
    #[test]
    fn a_definition_admitted_by_its_measured_fields_fits_a_version() {
        let schema = serde_json::to_string(&schemars::schema_for!(AgentSpec)).expect("a schema");
        assert!(schema.contains(&format!("<= {TYPED_FIELDS_BUDGET}\"")), "the rule ends with the budget");
        assert!(schema.contains(&format!("more than {TYPED_FIELDS_BUDGET} bytes")), "its message names it");
        let wide = |chars: usize| "\u{1F600}".repeat(chars);
        let settings: BTreeMap<String, String> =
            (0..64).map(|i| (format!("setting-{i:02}"), "s".repeat(1000))).collect();
        let files: Vec<String> = (0..100).map(|i| format!("file-{i:03}-{}", "f".repeat(200))).collect();
        let mut definition = AgentDefinition {
            display_name: Some(wide(256)),
            instructions: Some(String::new()),
            type_: Some(wide(128)),
            subtype: Some(wide(128)),
            model: Some(wide(256)),
            temperature: Some(1.2345678901234567),
            steps: None,
            ask_user_questions: None,
            knowledge_base_files: Some(files),
            visibility: Some(Visibility::Workspace),
            advanced_settings: Some(settings),
        };
        let rest = TYPED_FIELDS_BUDGET - typed_fields_size(&definition);
        definition.instructions = Some("i".repeat(rest));
        assert_eq!(typed_fields_size(&definition), TYPED_FIELDS_BUDGET);
        let size = super::super::hash::canonical_json(&definition).len();
        assert!(size <= MAX_DEFINITION_BYTES, "{size} bytes");
    }
}

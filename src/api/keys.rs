//! Names the operator writes into the cluster: labels, annotations, field managers.
//! Field managers are never renamed: a new name would orphan the fields the old one owns.

/// Label on every AgentVersion: the Agent it belongs to.
pub const AGENT_LABEL: &str = "agentops.dev/agent";
/// Label on every AgentVersion: its version number.
pub const VERSION_LABEL: &str = "agentops.dev/version";
/// Label on versions made by a rollback: the AgentRollback that made them.
pub const ROLLBACK_LABEL: &str = "agentops.dev/rollback";
/// Annotation on an Agent, copied into `changeCause` of the version it publishes.
pub const CHANGE_CAUSE_ANNOTATION: &str = "agentops.dev/change-cause";
/// Annotation on an Agent: who made its last spec change, as the API server authenticated
/// them. Set by the chart's admission policy, never by clients; copied into `publishedBy` of
/// the version published from that spec.
pub const CHANGED_BY_ANNOTATION: &str = "agentops.dev/changed-by";

/// Annotation on every AgentRollback the controller has written: its record (status as JSON,
/// with the Agent it ran on). Status is a cache; this is what it is rebuilt from.
pub const ROLLBACK_RECORD_ANNOTATION: &str = "agentops.dev/record";
/// Annotations on every AgentVersion: the Agent's generation, and the hash of the spec's
/// definition at that generation, that had been handled when the version was made.
pub const OBSERVED_GENERATION_ANNOTATION: &str = "agentops.dev/observed-generation";
pub const OBSERVED_DEFINITION_HASH_ANNOTATION: &str = "agentops.dev/observed-definition-hash";

/// Annotation on the delivery ConfigMap and on rolled pod templates: the active version.
pub const ACTIVE_VERSION_ANNOTATION: &str = "agentops.dev/active-version";
/// Annotation on the delivery ConfigMap, on rolled pod templates and on every AgentVersion
/// (from this build on): the snapshot's hash.
pub const SNAPSHOT_HASH_ANNOTATION: &str = "agentops.dev/snapshot-hash";
/// Annotation on rolled pod templates: whose delivery the workload takes, an Agent (its name)
/// or a channel (`AgentChannel/<name>`). One of them owns a workload's delivery annotations;
/// another that lists the same workload reports `WorkloadConflict` and writes nothing to it.
pub const DELIVERED_FOR_ANNOTATION: &str = "agentops.dev/delivered-for";
/// The delivery ConfigMap's key that holds the active snapshot (canonical JSON).
pub const AGENT_JSON_KEY: &str = "agent.json";
/// Annotation on a delivery ConfigMap during a rollout: the version it replaces, whose
/// `agent-v<N>.json` it keeps until no pod of its workloads runs that version.
pub const REPLACING_VERSION_ANNOTATION: &str = "agentops.dev/replacing-version";
/// Label on an AgentVersion, one per channel that judged it: `health.agentops.dev/<channel>`,
/// `Healthy` or `Failed`: the version's verdict in that channel, durable.
pub const HEALTH_LABEL_PREFIX: &str = "health.agentops.dev/";

/// Finalizer on every AgentVersion a channel uses (pins, serves, holds, keeps as last known
/// good): a deletion by hand waits until no channel uses it, as PVC protection does. The
/// operator releases it before each delete of its own (pruning, Pop, an Agent's leftovers).
pub const IN_USE_FINALIZER: &str = "agentops.dev/in-use";

/// Label on a channel's delivery ConfigMap: the channel it delivers for.
pub const CHANNEL_LABEL: &str = "agentops.dev/channel";

/// The delivery ConfigMap's key that holds version `number`'s snapshot: a pod reads the key of
/// the version its template's `agentops.dev/active-version` annotation names (downward API), so
/// its definition never changes under it during a rollout.
pub fn versioned_json_key(number: i64) -> String {
    format!("agent-v{number}.json")
}

/// Field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "agentops.dev/agent-operator";
/// Field manager of the pod-template annotations on workloads: its own, so that it owns those
/// two fields and nothing else of a workload someone else manages.
pub const DELIVERY_FIELD_MANAGER: &str = "agentops.dev/agent-operator-delivery";
/// `reportingController` of the controller's Events.
pub const EVENT_CONTROLLER: &str = "agentops.dev/agent-operator";

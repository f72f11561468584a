//! `export`: an Agent manifest whose definition is one of its versions (the active one by
//! default), with the Agent's current policy fields. Committed to git after an incident
//! rollback, it makes git hold what is active: applied, the Agent is `InSync` again and no
//! version is published. With `--channel`, the channel's manifest pinned to the version it
//! serves: committed after a promotion or a rollback of the channel, the channel is `InSync`.

use std::process::ExitCode;

use agent_operator::api::{Agent, AgentChannel};
use anyhow::Context as _;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::Session;
use crate::history::{active, fetch_agent, fetch_versions, pick};

pub async fn export(session: &Session, name: &str, version: Option<i64>) -> anyhow::Result<ExitCode> {
    let agent = fetch_agent(session, name).await?;
    let versions = fetch_versions(session, &agent).await?;
    let number = version.or_else(|| active(&agent, &versions)).context("the agent has no versions yet")?;
    let chosen = pick(&agent, &versions, number)?;
    let manifest = manifest(&agent, &serde_json::to_value(&chosen.spec.snapshot)?);
    println!("# Agent {name} with the definition of version {number} ({})", chosen.name_any());
    print!("{}", serde_saphyr::to_string(&manifest)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn export_channel(
    session: &Session,
    agent: &str,
    name: &str,
    version: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let channel = session.api::<AgentChannel>().get(name).await.with_context(|| format!("channel {name}"))?;
    anyhow::ensure!(channel.spec.agent_name == agent, "channel {name} belongs to Agent {}", channel.spec.agent_name);
    let serves = channel.status.as_ref().and_then(|s| s.version);
    let number = version.or(serves).context("the channel serves no version yet")?;
    println!("# AgentChannel {name} of Agent {agent}, pinned to version {number}");
    print!("{}", serde_saphyr::to_string(&channel_manifest(&channel, number))?);
    Ok(ExitCode::SUCCESS)
}

/// A channel's manifest: its identity and labels, its spec as it is, pinned to `version`.
pub fn channel_manifest(channel: &AgentChannel, version: i64) -> Value {
    let mut spec = json!(channel.spec);
    spec["version"] = json!(version);
    let mut metadata = json!({"name": channel.name_any()});
    if let Some(namespace) = channel.namespace() {
        metadata["namespace"] = json!(namespace);
    }
    if !channel.labels().is_empty() {
        metadata["labels"] = json!(channel.labels());
    }
    json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel", "metadata": metadata, "spec": spec})
}

/// The manifest: the Agent's identity and labels, `definition` as its spec's definition, and
/// its policy fields as they are now. Nothing the API server or the operator sets.
pub fn manifest(agent: &Agent, definition: &Value) -> Value {
    let mut spec = definition.clone();
    spec["revisionHistoryLimit"] = json!(agent.spec.revision_history_limit);
    if let Some(delivery) = &agent.spec.delivery {
        spec["delivery"] = json!(delivery);
    }
    let mut metadata = json!({"name": agent.name_any()});
    if let Some(namespace) = agent.namespace() {
        metadata["namespace"] = json!(namespace);
    }
    if !agent.labels().is_empty() {
        metadata["labels"] = json!(agent.labels());
    }
    json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "Agent", "metadata": metadata, "spec": spec})
}

#[cfg(test)]
mod tests {
    use agent_operator::api::{AgentDefinition, AgentSpec};
    use agent_operator::plan::hash::snapshot_hash;

    use super::*;

    #[test]
    fn the_manifest_parses_back_to_the_versions_definition_and_the_agents_policy() {
        let current = AgentDefinition { instructions: Some("be brief".into()), ..AgentDefinition::default() };
        let mut agent =
            Agent::new("support", AgentSpec { definition: current, revision_history_limit: 3, delivery: None });
        agent.metadata.namespace = Some("team".into());
        agent.metadata.annotations = Some([("agentops.dev/changed-by".to_string(), "alice".to_string())].into());
        let old = AgentDefinition {
            instructions: Some("be kind".into()),
            temperature: Some(0.5),
            ..AgentDefinition::default()
        };
        let text = serde_saphyr::to_string(&manifest(&agent, &serde_json::to_value(&old).unwrap())).unwrap();
        let parsed: Agent = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(snapshot_hash(&parsed.spec.definition), snapshot_hash(&old));
        assert_eq!(parsed.spec.revision_history_limit, 3);
        assert_eq!(parsed.namespace().as_deref(), Some("team"));
        assert!(parsed.annotations().is_empty(), "{text}");
    }
}

//! `history`, `show` and `diff`: reading an agent's versions.

use std::process::ExitCode;

use agent_operator::api::keys::{AGENT_LABEL, HEALTH_LABEL_PREFIX};
use agent_operator::api::{Agent, AgentChannel, AgentVersion, DeliveryStatus};
use agent_operator::plan::owning_agent_uid;
use anyhow::{Context as _, bail};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::{Output, Session, diff, terminal};

/// The Agent, or an error that says how to find the right name.
pub async fn fetch_agent(session: &Session, name: &str) -> anyhow::Result<Agent> {
    let api: Api<Agent> = session.api();
    match api.get_opt(name).await.with_context(|| format!("reading agent {name}"))? {
        Some(agent) => Ok(agent),
        None => bail!(
            "agent \"{name}\" not found in namespace \"{ns}\" (list them with: kubectl get agents -n {ns})",
            ns = session.namespace
        ),
    }
}

/// The Agent's versions, oldest first.
pub async fn fetch_versions(session: &Session, agent: &Agent) -> anyhow::Result<Vec<AgentVersion>> {
    let api: Api<AgentVersion> = session.api();
    let params = ListParams::default().labels(&format!("{AGENT_LABEL}={}", agent.name_any()));
    let uid = agent.uid();
    let mut versions: Vec<AgentVersion> = api
        .list(&params)
        .await
        .context("listing versions")?
        .items
        .into_iter()
        .filter(|v| uid.is_some() && owning_agent_uid(&v.metadata) == uid.as_deref())
        .collect();
    versions.sort_by_key(|v| v.spec.version);
    Ok(versions)
}

/// Whether `version` is the one the runtime has: `yes` once the ConfigMap holds it and every
/// listed workload has rolled out with it, `rolling` while they roll, empty otherwise.
pub fn delivered(delivery: &DeliveryStatus, version: i64) -> String {
    if delivery.version != Some(version) {
        return String::new();
    }
    let rolled = delivery.workloads.iter().all(|w| w.rolled_out && w.version == Some(version));
    if rolled { "yes" } else { "rolling" }.into()
}

pub fn active(agent: &Agent, versions: &[AgentVersion]) -> Option<i64> {
    agent.status.as_ref().and_then(|s| s.active_version).or_else(|| versions.last().map(|v| v.spec.version))
}

pub fn pick<'a>(agent: &Agent, versions: &'a [AgentVersion], number: i64) -> anyhow::Result<&'a AgentVersion> {
    versions.iter().find(|v| v.spec.version == number).with_context(|| {
        let existing: Vec<String> = versions.iter().map(|v| v.spec.version.to_string()).collect();
        format!(
            "version {number} of agent \"{}\" not found (existing: {}; see: kubectl agent history {})",
            agent.name_any(),
            existing.join(", "),
            agent.name_any()
        )
    })
}

pub async fn history(session: &Session, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    let agent = fetch_agent(session, name).await?;
    let mut versions = fetch_versions(session, &agent).await?;
    versions.reverse();
    match output {
        Output::Json | Output::Yaml => print_list(&versions, output)?,
        Output::Table => {
            let active = active(&agent, &versions);
            let delivery = agent.status.as_ref().and_then(|s| s.delivery.clone()).unwrap_or_default();
            let channels = crate::channels::channels_if_allowed(session, name).await?;
            let rows: Vec<[String; 8]> = versions
                .iter()
                .map(|v| {
                    [
                        v.spec.version.to_string(),
                        if Some(v.spec.version) == active { "*".into() } else { String::new() },
                        delivered(&delivery, v.spec.version),
                        in_channels(v, &channels),
                        v.creation_timestamp().map(|t| t.0.to_string()).unwrap_or_default(),
                        v.spec.rollback_from_version.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                        v.spec.published_by.clone().unwrap_or_else(|| "-".into()),
                        v.spec.change_cause.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            let header =
                ["VERSION", "ACTIVE", "DELIVERED", "CHANNELS", "CREATED", "FROM-ROLLBACK", "PUBLISHED-BY", "REASON"];
            print_table(header, &rows);
            // The channels' moves: their rollbacks (the operator's automatic ones named so) and
            // promotions.
            let moves = crate::channels::moves_if_allowed(session, name, &channels).await?;
            if !moves.is_empty() {
                println!();
                let header = ["MOVED", "CHANNEL", "BY", "FROM", "TO", "OUTCOME", "REQUESTED-BY", "REASON"];
                print_table(header, &moves);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A version in each channel: `serving` where a channel serves it, and its verdict there
/// (`Healthy`, `Failed`) where it has one; `-` when it is in none.
fn in_channels(version: &AgentVersion, channels: &[AgentChannel]) -> String {
    let cells: Vec<String> = channels
        .iter()
        .filter_map(|c| {
            let name = c.name_any();
            let serving = c.status.as_ref().and_then(|s| s.version) == Some(version.spec.version);
            let verdict = version.labels().get(&format!("{HEALTH_LABEL_PREFIX}{name}"));
            let what: Vec<&str> = serving.then_some("serving").into_iter().chain(verdict.map(String::as_str)).collect();
            (!what.is_empty()).then(|| format!("{name}={}", what.join("+")))
        })
        .collect();
    if cells.is_empty() { "-".into() } else { cells.join(",") }
}

pub async fn show(session: &Session, name: &str, version: Option<i64>, output: Output) -> anyhow::Result<ExitCode> {
    let agent = fetch_agent(session, name).await?;
    let versions = fetch_versions(session, &agent).await?;
    let number = version.or_else(|| active(&agent, &versions)).context("the agent has no versions yet")?;
    let chosen = pick(&agent, &versions, number)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&chosen.spec.snapshot)?),
        Output::Yaml | Output::Table => {
            let marker = if Some(number) == active(&agent, &versions) { ", active" } else { "" };
            println!("# {} (version {number}{marker})", chosen.name_any());
            print!("{}", serde_saphyr::to_string(&chosen.spec.snapshot)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn diff(session: &Session, name: &str, a: i64, b: Option<i64>) -> anyhow::Result<ExitCode> {
    let agent = fetch_agent(session, name).await?;
    let versions = fetch_versions(session, &agent).await?;
    let b = b.or_else(|| active(&agent, &versions)).context("the agent has no versions yet")?;
    let (from, to) = (pick(&agent, &versions, a)?, pick(&agent, &versions, b)?);
    println!("--- version {a}\n+++ version {b}");
    print!("{}", diff::render(&diff::changes(&from.spec.snapshot, &to.spec.snapshot)));
    Ok(ExitCode::SUCCESS)
}

fn print_list(versions: &[AgentVersion], output: Output) -> anyhow::Result<()> {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": versions});
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        _ => print!("{}", serde_saphyr::to_string(&list)?),
    }
    Ok(())
}

/// Prints rows under a header, columns padded like kubectl's.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    // Cells hold text users wrote (a change cause, a name): escaped before they are measured.
    let rows: Vec<[String; N]> =
        rows.iter().map(|row| row.each_ref().map(|c| terminal::escape(c).into_owned())).collect();
    let rows = rows.as_slice();
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

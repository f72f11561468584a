//! `channels` and `promote`: an Agent's channels, and a promotion of one, followed until it
//! finishes. `promote --dry-run` asks the controller's own planner what would happen.

use std::process::ExitCode;
use std::time::Duration;

use agent_operator::api::conditions::{HasConditions, IN_SYNC, READY};
use agent_operator::api::{AgentChannel, AgentPromotion, AgentPromotionSpec, AgentRollback, RollbackPhase};
use agent_operator::plan::Observed;
use agent_operator::plan::channel::ChannelObserved;
use agent_operator::plan::moves::{Move, Promotions, choose, serving};
use anyhow::{Context as _, bail};
use clap::Args;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

use crate::history::{fetch_agent, fetch_versions, print_table};
use crate::rollback::{generated, whoami};
use crate::{Session, terminal};

/// The Agent's channels, by name.
async fn fetch_channels(session: &Session, agent: &str) -> anyhow::Result<Vec<AgentChannel>> {
    let api: Api<AgentChannel> = session.api();
    let params = ListParams::default().fields(&format!("spec.agentName={agent}"));
    let mut channels = api.list(&params).await.context("listing channels")?.items;
    channels.sort_by_key(|c| c.name_any());
    Ok(channels)
}

/// The Agent's channels, or none when the caller may not list channels: what reads an Agent's
/// history needs no more rights than that.
pub async fn channels_if_allowed(session: &Session, agent: &str) -> anyhow::Result<Vec<AgentChannel>> {
    allowed(fetch_channels(session, agent).await)
}

/// One move of a channel, for `history`: when, which channel, by what, from and to which
/// version, how it ended, who asked and why.
pub type MoveRow = [String; 8];

/// The moves of the Agent's channels (their rollbacks, the operator's automatic ones among
/// them, and their promotions), oldest first; none that the caller may not list.
pub async fn moves_if_allowed(
    session: &Session,
    agent: &str,
    channels: &[AgentChannel],
) -> anyhow::Result<Vec<MoveRow>> {
    let names: Vec<String> = channels.iter().map(|c| c.name_any()).collect();
    let rollbacks: Api<AgentRollback> = session.api();
    let listed = rollbacks.list(&ListParams::default()).await.context("listing rollbacks").map(|l| l.items);
    let mut rows: Vec<MoveRow> = Vec::new();
    for r in allowed(listed)? {
        let Some(channel) = r.spec.channel.clone().filter(|c| r.spec.agent_name == agent && names.contains(c)) else {
            continue;
        };
        let status = r.status.clone().unwrap_or_default();
        let automatic = r.name_any().starts_with(&format!("{channel}-auto-v"));
        let by = format!("AgentRollback {}{}", r.name_any(), if automatic { " (automatic)" } else { "" });
        let said = (r.spec.requested_by.clone(), r.spec.reason.clone());
        let ended = (status.phase, status.reason);
        rows.push(move_row(&r, channel, by, (status.from_version, status.active_version), ended, said));
    }
    let promotions: Api<AgentPromotion> = session.api();
    let listed = promotions.list(&ListParams::default()).await.context("listing promotions").map(|l| l.items);
    for p in allowed(listed)? {
        if !names.contains(&p.spec.channel) {
            continue;
        }
        let status = p.status.clone().unwrap_or_default();
        let by = format!("AgentPromotion {}", p.name_any());
        let said = (p.spec.requested_by.clone(), p.spec.reason.clone());
        let ended = (status.phase, status.reason);
        rows.push(move_row(&p, p.spec.channel.clone(), by, (status.from_version, status.version), ended, said));
    }
    // RFC 3339 times sort as text.
    rows.sort_by(|a, b| a[0].cmp(&b[0]));
    Ok(rows)
}

/// A move's row.
fn move_row<K: kube::Resource>(
    object: &K,
    channel: String,
    by: String,
    (from, to): (Option<i64>, Option<i64>),
    (phase, reason): (Option<RollbackPhase>, Option<String>),
    (requested_by, why): (Option<String>, Option<String>),
) -> MoveRow {
    let number = |n: Option<i64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let outcome = match (phase, reason) {
        (Some(phase), Some(reason)) => format!("{phase:?} ({reason})"),
        (Some(phase), None) => format!("{phase:?}"),
        (None, _) => "Pending".into(),
    };
    let created = object.meta().creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
    [
        created,
        channel,
        by,
        number(from),
        number(to),
        outcome,
        requested_by.unwrap_or_else(|| "-".into()),
        why.unwrap_or_default(),
    ]
}

/// A list, or an empty one if the API server refused it (403).
fn allowed<T>(listed: anyhow::Result<Vec<T>>) -> anyhow::Result<Vec<T>> {
    match listed {
        Err(error) if forbidden(&error) => Ok(Vec::new()),
        other => other,
    }
}

fn forbidden(error: &anyhow::Error) -> bool {
    matches!(error.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if status.code == 403)
}

pub async fn channels(session: &Session, agent: &str) -> anyhow::Result<ExitCode> {
    fetch_agent(session, agent).await?;
    let channels = fetch_channels(session, agent).await?;
    if channels.is_empty() {
        println!(
            "No channels of agent {agent} (create one: kubectl apply -f an AgentChannel with agentName: {agent})."
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = channels
        .iter()
        .map(|c| {
            let status = c.status.clone().unwrap_or_default();
            let number = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            let held = status.override_.as_ref().map_or_else(
                || "-".to_string(),
                |o| o.promotion.as_deref().or(o.rollback.as_deref()).unwrap_or("-").to_string(),
            );
            let condition = |t: &str| status.condition(t).map_or_else(|| "-".to_string(), |c| c.status.clone());
            [
                c.name_any(),
                match c.spec.version {
                    Some(pin) => format!("{pin} (pinned)"),
                    None => format!("{} (follows)", number(status.desired_version)),
                },
                number(status.version),
                held,
                condition(READY),
                condition(IN_SYNC),
            ]
        })
        .collect();
    print_table(["CHANNEL", "DESIRED", "SERVING", "HELD BY", "READY", "IN-SYNC"], &rows);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["to", "from"]))]
pub struct PromoteArgs {
    agent: String,
    /// The channel to move.
    #[arg(long)]
    channel: String,
    /// Serve this version in the channel.
    #[arg(long, value_name = "VERSION")]
    to: Option<i64>,
    /// Serve what this other channel serves, only if it is Healthy there.
    #[arg(long, value_name = "CHANNEL")]
    from: Option<String>,
    /// Run only if the channel still serves this version (default with --dry-run: the one it saw).
    #[arg(long, value_name = "VERSION")]
    expect: Option<i64>,
    /// Serve the version even if it Failed in this channel.
    #[arg(long)]
    allow_failed: bool,
    /// Why; kept in the promotion for the audit trail.
    #[arg(long)]
    reason: Option<String>,
    /// Show what would happen; create nothing.
    #[arg(long)]
    dry_run: bool,
    /// Create the promotion and return at once.
    #[arg(long)]
    no_wait: bool,
}

impl PromoteArgs {
    fn spec(&self) -> AgentPromotionSpec {
        AgentPromotionSpec {
            channel: self.channel.clone(),
            version: self.to,
            from_channel: self.from.clone(),
            expected_version: self.expect,
            allow_failed: self.allow_failed,
            reason: self.reason.clone(),
            requested_by: None,
        }
    }
}

pub async fn promote(session: &Session, args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let channel: Api<AgentChannel> = session.api();
    let found = channel.get_opt(&args.channel).await.context("reading the channel")?;
    match found {
        Some(c) if c.spec.agent_name == args.agent => {}
        Some(c) => bail!("channel {} belongs to agent {}", args.channel, c.spec.agent_name),
        None => bail!("channel {} not found in namespace {}", args.channel, session.namespace),
    }
    if args.dry_run {
        return dry_run(session, &args).await;
    }
    let api: Api<AgentPromotion> = session.api();
    let mut spec = args.spec();
    spec.requested_by = whoami(session).await;
    let name = generated(&format!("{}-promotion-", args.channel));
    api.create(&PostParams::default(), &AgentPromotion::new(&name, spec))
        .await
        .context("creating the AgentPromotion")?;
    println!("agentpromotion.agentops.dev/{name} created");
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    for _ in 0..600 {
        let status = api.get(&name).await.context("reading the promotion")?.status.unwrap_or_default();
        let message = terminal::escape(status.message.as_deref().unwrap_or_default());
        match status.phase {
            Some(RollbackPhase::Succeeded) => {
                println!("Succeeded: {message}");
                return Ok(ExitCode::SUCCESS);
            }
            Some(RollbackPhase::Failed) => {
                println!("Failed ({}): {message}", status.reason.as_deref().unwrap_or("Failed"));
                return Ok(ExitCode::from(1));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    println!("still running after 60 s: kubectl get agentpromotion {name}");
    Ok(ExitCode::from(3))
}

/// What the operator's planner sees of an Agent: the Agent, its versions, its rollbacks, its
/// channels and their promotions, as the API server has them now.
pub async fn world(session: &Session, name: &str) -> anyhow::Result<Observed> {
    let agent = fetch_agent(session, name).await?;
    let versions = fetch_versions(session, &agent).await?;
    let rollbacks: Api<AgentRollback> = session.api();
    let params = ListParams::default().fields(&format!("spec.agentName={name}"));
    let rollbacks = rollbacks.list(&params).await.context("listing rollbacks")?.items;
    // What the caller may not read, the planner does not see: a dry run of the Agent's own
    // rollback needs no rights to channels.
    let promotions: Api<AgentPromotion> = session.api();
    let listed = promotions.list(&ListParams::default()).await.map(|l| l.items).context("listing promotions");
    let promotions = allowed(listed)?;
    let mut observed = Observed::new(session.namespace.clone(), name.to_string(), Some(agent), versions, rollbacks);
    observed.channels =
        channels_if_allowed(session, name).await?.into_iter().map(ChannelObserved::unobserved).collect();
    let names: Vec<String> = observed.channels.iter().map(|c| c.channel.name_any()).collect();
    observed.promotions = Promotions::new(promotions.into_iter().filter(|p| names.contains(&p.spec.channel)).collect());
    Ok(observed)
}

/// What the operator's planner would do with a move of `channel`, printed; exit 1 if it would
/// fail. `candidate` is the move as it would be created.
pub fn plan_move(observed: &Observed, channel: &str, candidate: Move<'_>) -> anyhow::Result<ExitCode> {
    let found = observed.channels.iter().find(|c| c.channel.name_any() == channel);
    let found = found.with_context(|| format!("channel {channel} not found in namespace {}", observed.namespace))?;
    let served = serving(observed, found);
    match choose(observed, found, candidate) {
        Ok(version) => {
            let from = served.map_or_else(|| "no version".into(), |v| v.to_string());
            println!("Would move channel {channel} from {from} to version {version}.");
            Ok(ExitCode::SUCCESS)
        }
        Err((reason, message)) => {
            println!("Would fail ({reason}): {}", terminal::escape(&message));
            Ok(ExitCode::from(1))
        }
    }
}

/// What the operator's planner would do with the promotion, from what the API server has now.
async fn dry_run(session: &Session, args: &PromoteArgs) -> anyhow::Result<ExitCode> {
    let observed = world(session, &args.agent).await?;
    let channel = observed.channels.iter().find(|c| c.channel.name_any() == args.channel).context("the channel")?;
    let mut spec = args.spec();
    spec.expected_version = spec.expected_version.or(serving(&observed, channel));
    let candidate = AgentPromotion::new("dry-run", spec);
    plan_move(&observed, &args.channel, Move::Promotion(&candidate))
}

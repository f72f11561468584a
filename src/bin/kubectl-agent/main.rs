//! `kubectl agent`: history, show, diff and rollback of agents, for people at a terminal.
//!
//! Exit codes: 0 success; 1 a rollback failed (or would fail, with `--dry-run`) or an object is
//! missing; 2 bad usage; 3 a rollback did not finish within `--timeout`.

mod channels;
mod diff;
mod export;
mod history;
mod rollback;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource};

use agent_operator::client;

#[derive(Parser)]
#[command(
    name = "kubectl agent",
    bin_name = "kubectl agent",
    version,
    about = "Inspect agent versions and roll agents back",
    after_help = "Examples:\n  kubectl agent history support\n  kubectl agent diff support 1\n  kubectl agent rollback support --to 1 --reason \"v2 answers badly\"\n  kubectl agent rollback support --previous --dry-run\n  kubectl agent export support > agents/support.yaml\n  kubectl agent channels support\n  kubectl agent promote support --channel production --to 4 --dry-run\n  kubectl agent rollback support --channel production --last-known-good\n  kubectl agent export support --channel production > channels/production.yaml"
)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Command,
}

/// The kubectl flags that choose the cluster and namespace.
#[derive(Args)]
struct Target {
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Kubeconfig context.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// List an agent's versions, newest first.
    History {
        agent: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show one version's snapshot (the active version by default).
    Show {
        agent: String,
        version: Option<i64>,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Output,
    },
    /// Show what differs between two versions (B defaults to the active version).
    Diff { agent: String, a: i64, b: Option<i64> },
    /// Roll an agent (or one of its channels, with --channel) back, and follow the rollback
    /// until it finishes.
    Rollback(rollback::RollbackArgs),
    /// List an agent's channels: what each declares, serves, and what holds it there.
    Channels { agent: String },
    /// Move a channel to a version (--to) or to what another channel serves (--from), and
    /// follow the promotion until it finishes.
    Promote(channels::PromoteArgs),
    /// Print an Agent manifest whose definition is a version's (the active one by default), to
    /// commit to git after a rollback: applied, the Agent is InSync and nothing is published.
    /// With --channel, the channel's manifest pinned to the version it serves (or VERSION):
    /// committed after a promotion or rollback of the channel, it is InSync again.
    Export {
        agent: String,
        version: Option<i64>,
        /// Print this channel's manifest instead of the Agent's.
        #[arg(long)]
        channel: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// A client and the namespace to work in.
pub struct Session {
    pub client: Client,
    pub namespace: String,
}

impl Session {
    /// An Api over the session's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        client::scoped(&self.client, Some(&self.namespace))
    }
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Session> {
        let config = client::config(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        let namespace = self.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        Ok(Session { client: Client::try_from(config)?, namespace })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        let session = cli.target.connect().await?;
        match cli.command {
            Command::History { agent, output } => history::history(&session, &agent, output).await,
            Command::Show { agent, version, output } => history::show(&session, &agent, version, output).await,
            Command::Diff { agent, a, b } => history::diff(&session, &agent, a, b).await,
            Command::Rollback(args) => rollback::run(&session, args).await,
            Command::Channels { agent } => channels::channels(&session, &agent).await,
            Command::Promote(args) => channels::promote(&session, args).await,
            Command::Export { agent, version, channel: None } => export::export(&session, &agent, version).await,
            Command::Export { agent, version, channel: Some(channel) } => {
                export::export_channel(&session, &agent, &channel, version).await
            }
        }
    }
    .await;
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", terminal::escape(&format!("{error:#}")));
            ExitCode::from(1)
        }
    }
}

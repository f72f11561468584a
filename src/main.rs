//! The `agent-operator` binary: `run` starts the controllers, `crds` prints or writes the CRDs.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::FutureExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tracing::info;

use agent_operator::api::Agent;
use agent_operator::controller::{self, Settings};
use agent_operator::crds;
use agent_operator::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "agent-operator", version, about = "Versions AI agent definitions and rolls them back on request")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (in a cluster, or against a kubeconfig).
    Run(RunArgs),
    /// Print every CRD as YAML, or write one file per CRD into directories.
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory (repeatable) instead of
        /// printing.
        #[arg(long = "write-dir")]
        write_dirs: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "AGENT_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Log format.
    #[arg(long, env = "AGENT_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter when RUST_LOG is unset.
    #[arg(long, env = "AGENT_OPERATOR_LOG", default_value = "info")]
    log: String,
    /// Name of this replica in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { write_dirs } => write_crds(&write_dirs),
        Command::Run(args) => run(args).await,
    }
}

fn write_crds(dirs: &[PathBuf]) -> anyhow::Result<()> {
    if dirs.is_empty() {
        print!("{}", crds::all_yaml()?);
        return Ok(());
    }
    for dir in dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, crd) in crds::all() {
            let path = dir.join(file);
            std::fs::write(&path, crds::to_yaml(&crd)?).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log);
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let options = KubeConfigOptions { context: args.context.clone(), ..KubeConfigOptions::default() };
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None => Config::infer().await.context("no kubeconfig and not in a cluster")?,
    };
    let client = Client::try_from(config)?;
    check_crds_installed(&client, args.namespace.as_deref()).await?;

    let shutdown = shutdown_signal().shared();
    let settings = Settings { namespace: args.namespace, instance: args.instance };
    info!(namespace = settings.namespace.as_deref().unwrap_or("<all>"), "Starting agent-operator");
    controller::run(client, settings, shutdown).await?;
    info!("Stopped");
    Ok(())
}

/// The operator never installs its CRDs; without them it says what to do.
async fn check_crds_installed(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let agents: Api<Agent> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match agents.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            bail!(
                "the agentops.dev CRDs are not installed: run `agent-operator crds | kubectl apply --server-side -f -`"
            )
        }
        Err(e) => Err(e).context("checking that the agentops.dev CRDs are installed"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("Shutting down: finishing work in flight");
}

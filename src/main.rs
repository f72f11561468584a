//! The `agent-operator` binary: `run` starts the controllers, `crds` prints or writes the CRDs,
//! `check-api` waits until the API server admits creates of the operator's kinds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::FutureExt;
use kube::{Api, Client};
use tracing::info;

use agent_operator::api::Agent;
use agent_operator::controller::{self, Settings};
use agent_operator::crds;
use agent_operator::http::{self, Health};
use agent_operator::lease::{Leadership, LeaseSettings};
use agent_operator::metrics::Metrics;
use agent_operator::telemetry::{self, LogFormat};
use agent_operator::{api_check, client, policy_check};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Wait until the API server admits a create of every agentops.dev kind, with the chart's
    /// admission policies applied (server-side dry runs); the chart's post-install hook.
    CheckApi(CheckApiArgs),
}

#[derive(clap::Args)]
struct CheckApiArgs {
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
    /// Namespace of the dry-run creates (in a cluster: the hook's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Which admission policies the chart installed, and so what an admitted create must show.
    #[arg(long, value_enum, default_value = "none")]
    policies: api_check::Policies,
    /// Seconds to wait before giving up.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
    /// Watch only these namespaces, comma-separated (default: all namespaces).
    #[arg(long, env = "AGENT_OPERATOR_NAMESPACE", value_delimiter = ',')]
    namespace: Vec<String>,
    /// Log format.
    #[arg(long, env = "AGENT_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter when RUST_LOG is unset.
    #[arg(long, env = "AGENT_OPERATOR_LOG", default_value = "info")]
    log: String,
    /// Name of this replica in Events and in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "AGENT_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Run only while holding the leader Lease, so several replicas are safe.
    #[arg(long, env = "AGENT_OPERATOR_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "AGENT_OPERATOR_LEASE_NAME", default_value = "agent-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (in a cluster: the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds the Lease stays valid without renewal: the longest a dead leader blocks the others.
    #[arg(long, env = "AGENT_OPERATOR_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds before expiry at which the leader starts renewing (less than the duration). It
    /// gives up after half of it of failed renewals, before the Lease can expire.
    #[arg(long, env = "AGENT_OPERATOR_LEASE_GRACE", default_value_t = 10)]
    lease_grace: u64,
    /// The ValidatingAdmissionPolicy (and binding) that guards the rollbacks' records, checked at
    /// start; without it, or when it is missing, the operator warns that who did what is not
    /// stamped (the chart names it when its admission policies are on).
    #[arg(long, env = "AGENT_OPERATOR_ADMISSION_POLICY")]
    admission_policy: Option<String>,
    /// Turn off the hot path's two fast paths (resuming a sync from the state the Agent's last
    /// sync left; recognising the operator's own version writes on the watch), to measure them.
    #[arg(long, env = "AGENT_OPERATOR_SIMPLE_HOT_PATH")]
    simple_hot_path: bool,
    /// Turn off the early start of a new rollback's sync from the watch (the controller's queue
    /// runs it instead), to measure it.
    #[arg(long, env = "AGENT_OPERATOR_WITHOUT_EARLY_START")]
    without_early_start: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { write_dirs } => write_crds(&write_dirs),
        Command::Run(args) => run(args).await,
        Command::CheckApi(args) => check_api(args).await,
    }
}

async fn check_api(args: CheckApiArgs) -> anyhow::Result<()> {
    let mut config = client::config(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    // Each refusal is seen and reported here, not retried inside the client.
    config.default_retry = false;
    let client = Client::try_from(config)?;
    api_check::wait(&client, &args.namespace, args.policies, std::time::Duration::from_secs(args.timeout)).await?;
    Ok(())
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
    let config = client::config(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let client = Client::try_from(config.clone())?;
    let namespaces: Vec<String> = args.namespace.iter().filter(|n| !n.is_empty()).cloned().collect();
    check_crds_installed(&client, namespaces.first().map(String::as_str)).await?;

    let shutdown = shutdown_signal().shared();
    let metrics = Arc::new(Metrics::default());
    let policies = policy_check::check(&client, args.admission_policy.as_deref()).await;
    policy_check::report(&policies);
    metrics.admission_policies_installed.set(i64::from(policies == policy_check::Policies::Installed));
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("listening on {}", args.http_addr))?;
    let http = tokio::spawn(http::serve(listener, metrics.clone(), health.clone(), shutdown.clone()));

    let identity = args.instance.clone().unwrap_or_else(|| format!("agent-operator-{}", std::process::id()));
    let leadership = if args.leader_elect {
        if args.lease_grace == 0 || args.lease_grace >= args.lease_duration {
            bail!("--lease-grace must be above 0 and below --lease-duration");
        }
        health.set_standby();
        let lease = LeaseSettings {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity,
            duration: args.lease_duration,
            grace: args.lease_grace,
        };
        tokio::select! {
            leadership = Leadership::acquire(&config, &lease) => Some(leadership?),
            _ = shutdown.clone() => return stop_http(http).await,
        }
    } else {
        None
    };
    metrics.leader.set(1);

    let settings = Settings {
        namespace: None,
        instance: args.instance,
        simple_hot_path: args.simple_hot_path,
        without_early_start: args.without_early_start,
    };
    let watched = if namespaces.is_empty() { "<all>".to_string() } else { namespaces.join(",") };
    info!(namespaces = watched, "Starting the controllers");
    let controllers = controller::run(client, &namespaces, settings, metrics.clone(), health, shutdown.clone());
    match leadership {
        None => controllers.await?,
        Some(leadership) => {
            tokio::select! {
                result = controllers => {
                    result?;
                    leadership.release().await;
                }
                loss = leadership.hold() => {
                    metrics.leader.set(0);
                    bail!("lost the leader Lease ({loss:?}); exiting so that only the new leader writes");
                }
            }
        }
    }
    stop_http(http).await
}

async fn stop_http(http: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    http.await.context("HTTP server task")?.context("HTTP server")?;
    info!("Stopped");
    Ok(())
}

/// The operator never installs its CRDs; without them it says what to do.
async fn check_crds_installed(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let agents: Api<Agent> = client::scoped(client, namespace);
    // Metadata only: an Agent the operator cannot decode is reported on that Agent by its sync,
    // never the reason the operator does not start.
    match agents.list_metadata(&kube::api::ListParams::default().limit(1)).await {
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

//! `rollback`: creates an AgentRollback and follows it (phase changes and Events, from watches)
//! until it is terminal. `--dry-run` asks the controller's own planner what would happen.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use agent_operator::api::conditions::{HasConditions, READY, STALLED, events};
use agent_operator::api::{Agent, AgentRollback, AgentRollbackSpec, DeliveryStatus, RollbackPhase, RollbackStrategy};
use agent_operator::plan::channel::holder;
use agent_operator::plan::moves::Move;
use agent_operator::plan::rollback::{Choice, choose};
use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Event;
use kube::api::{PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, oneshot};

use crate::{Session, diff, terminal};

#[derive(Args)]
#[command(group = clap::ArgGroup::new("strategy").required(true).args(["to", "previous", "pop", "last_known_good"]))]
pub struct RollbackArgs {
    agent: String,
    /// Roll back this channel of the agent instead: what it serves moves, no version is
    /// published (with --to or --last-known-good).
    #[arg(long, conflicts_with_all = ["previous", "pop"])]
    channel: Option<String>,
    /// With --channel: serve the newest version Healthy in the channel other than the one it
    /// serves.
    #[arg(long, requires = "channel")]
    last_known_good: bool,
    /// Restore this version (published again as a new version).
    #[arg(long, value_name = "VERSION")]
    to: Option<i64>,
    /// Restore the newest version below the active one.
    #[arg(long)]
    previous: bool,
    /// Delete the latest version; the one before it becomes active.
    #[arg(long)]
    pop: bool,
    /// Why; kept in the rollback for the audit trail.
    #[arg(long)]
    reason: Option<String>,
    /// Run only if this is still the active version (default with --dry-run: the one it saw).
    #[arg(long, value_name = "VERSION")]
    expect_active: Option<i64>,
    /// Show the plan and the diff; create nothing.
    #[arg(long)]
    dry_run: bool,
    /// Follow the rollback until it finishes (the default), or, with --wait=delivered, until
    /// the running agent has the new active version (ConfigMap written, workloads rolled out).
    #[arg(long, value_enum, num_args = 0..=1, default_value = "finished", default_missing_value = "finished")]
    wait: WaitFor,
    /// Create the rollback and return at once.
    #[arg(long)]
    no_wait: bool,
    /// How long to follow the rollback, e.g. 30s or 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

/// How far `rollback` follows.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    /// Until the rollback is Succeeded or Failed.
    Finished,
    /// Until the Agent reports the new active version delivered.
    Delivered,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("not a duration: {text} (try 30s or 2m)"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("not a duration: {text} (try 30s or 2m)")),
    }
}

impl RollbackArgs {
    fn strategy(&self) -> RollbackStrategy {
        match (self.to, self.previous, self.last_known_good) {
            (Some(_), _, _) => RollbackStrategy::Restore,
            (None, true, _) => RollbackStrategy::Previous,
            (None, false, true) => RollbackStrategy::LastKnownGood,
            (None, false, false) => RollbackStrategy::Pop,
        }
    }
}

pub async fn run(session: &Session, args: RollbackArgs) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        return dry_run(session, &args).await;
    }
    let api: Api<AgentRollback> = session.api();
    let mut spec = AgentRollbackSpec {
        agent_name: args.agent.clone(),
        channel: args.channel.clone(),
        strategy: args.strategy(),
        target_version: args.to,
        expected_active_version: args.expect_active,
        reason: args.reason.clone(),
        requested_by: None,
    };
    // The rollback's Events are watched from before its create (see `watch_events`), beside
    // the caller's lookup. Where the cluster cannot set `requestedBy` (no
    // MutatingAdmissionPolicy), the chart's policy requires it to be the caller; where it can,
    // the API server sets it anyway.
    let mut name = generated_name(&args.agent);
    let follows = !args.no_wait;
    let (mut events, ready) = watch_events(session, &name, follows);
    let (me, ()) = tokio::join!(whoami(session), ready.wait());
    spec.requested_by = me;
    let mut attempt = 1;
    let created = loop {
        let request = AgentRollback::new(&name, spec.clone());
        match api.create(&PostParams::default(), &request).await {
            Ok(created) => break created,
            // Taken already (one in 14 million): another name, as generateName retries do.
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < 3 => {
                name = generated_name(&args.agent);
                let ready;
                (events, ready) = watch_events(session, &name, follows);
                ready.wait().await;
                attempt += 1;
            }
            Err(error) => return Err(error).context("creating the AgentRollback"),
        }
    };
    println!("agentrollback.agentops.dev/{name} created");
    let Some(events) = events else {
        return Ok(ExitCode::SUCCESS);
    };
    // Every change to the rollback comes after the resourceVersion its create left, and the
    // API server's watch cache of rollbacks serves a watch from there at once.
    let by_name = WatchParams::default().fields(&format!("metadata.name={name}"));
    let rollbacks = forward(api, by_name, created.resource_version().unwrap_or_default(), None);
    let watches = Watches { rollbacks, events };
    let deadline = tokio::time::Instant::now() + args.timeout;
    let (code, active) = follow(watches, &name, deadline, args.timeout).await?;
    match (args.wait, active) {
        // A channel's rollback succeeds once the channel's ConfigMap holds the version.
        (WaitFor::Delivered, Some(active)) if code == ExitCode::SUCCESS && args.channel.is_none() => {
            follow_delivery(session, &args.agent, active, deadline, args.timeout).await
        }
        _ => Ok(code),
    }
}

/// The characters and length of the random suffix the API server gives a `generateName`.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const SUFFIX_LEN: usize = 5;
/// The longest base the API server keeps of a `generateName`, so that the whole name fits a
/// label value (the versions a rollback makes carry its name in a label).
const MAX_BASE_LEN: usize = 63 - SUFFIX_LEN;

/// `<agent>-rollback-` and a random suffix, as the API server makes names from a
/// `generateName`.
pub fn generated_name(agent: &str) -> String {
    generated(&format!("{agent}-rollback-"))
}

/// `base` and a random suffix, as the API server's generateName makes them, within 63 characters.
pub fn generated(base: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut base = base.to_string();
    base.truncate(MAX_BASE_LEN);
    // RandomState's keys come from the operating system's randomness, fresh for each one.
    let mut random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    for _ in 0..SUFFIX_LEN {
        let alphabet = NAME_ALPHABET.len() as u64;
        base.push(char::from(NAME_ALPHABET[(random % alphabet) as usize]));
        random /= alphabet;
    }
    base
}

/// The watches of one rollback and of its Events: what they see waits in their channels until
/// the rollback is followed.
struct Watches {
    rollbacks: Watch<AgentRollback>,
    events: Watch<Event>,
}

/// The Events of the rollback `name`, watched from the present (the API server lists those
/// there, then watches), before the rollback is created; none unless `follows`. The API server
/// keeps no watch cache of Events: a watch of them is a watch of etcd, which serves one that
/// starts at a past revision (a write came between) from a catch-up loop that runs every 100
/// ms, so the Events of a watch started from the create's resourceVersion arrived up to 100 ms
/// late whenever the operator wrote first. `Ready` fires once the list has ended, when the
/// watch of etcd starts: the rollback is created after it.
fn watch_events(session: &Session, name: &str, follows: bool) -> (Option<Watch<Event>>, Ready) {
    let (listed, ready) = oneshot::channel();
    if !follows {
        return (None, Ready(ready));
    }
    let fields = format!("involvedObject.name={name},involvedObject.kind=AgentRollback");
    let watch = forward(session.api(), WatchParams::streaming_lists().fields(&fields), String::new(), Some(listed));
    (Some(watch), Ready(ready))
}

/// Fires when the Events watch has listed (or failed, and kube's watcher took over), or when
/// there is none.
struct Ready(oneshot::Receiver<()>);

impl Ready {
    /// Waits for it, at most 200 ms: the watch sees every Event either way (a list, then a
    /// watch), only how soon depends on it.
    async fn wait(self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.0).await;
    }
}

/// A watch running in a task of its own; dropped, it stops.
struct Watch<K> {
    objects: mpsc::UnboundedReceiver<K>,
    task: tokio::task::AbortHandle,
}

impl<K> Drop for Watch<K> {
    fn drop(&mut self) {
        // The task outlives its receiver until its next event; the runtime's shutdown, at the
        // end of main, would wait for it.
        self.task.abort();
    }
}

/// Runs a watch from resourceVersion `since` in a task of its own, passing on the objects it
/// sees, and telling `listed` when its initial list has ended (with `params` that ask for
/// one). Should that watch fail or end, kube's watcher takes over (a list, then a watch; a
/// failed request retried after a pause that grows, never in a loop): what it lists again is
/// printed once.
fn forward<K>(api: Api<K>, params: WatchParams, since: String, listed: Option<oneshot::Sender<()>>) -> Watch<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (sender, objects) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut listed = listed;
        if let Ok(events) = api.watch(&params, &since).await {
            let mut events = std::pin::pin!(events);
            while let Some(Ok(event)) = events.next().await {
                match event {
                    WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                        if sender.send(object).is_err() {
                            return;
                        }
                    }
                    WatchEvent::Bookmark(mark) if mark.metadata.annotations.contains_key(INITIAL_EVENTS_END) => {
                        listed.take().map(|listed| listed.send(()));
                    }
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Deleted(_) | WatchEvent::Error(_) => break,
                }
            }
        }
        drop(listed);
        let fields = params.field_selector.unwrap_or_default();
        let watch = watcher(api, watcher::Config::default().fields(&fields));
        let mut objects = std::pin::pin!(watch.default_backoff().applied_objects());
        while let Some(item) = objects.next().await {
            if let Ok(object) = item
                && sender.send(object).is_err()
            {
                return;
            }
        }
    });
    Watch { objects, task: task.abort_handle() }
}

/// The annotation of the bookmark that ends a watch's initial list.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// The caller's username as the API server authenticates it (SelfSubjectReview), if the
/// cluster says.
pub async fn whoami(session: &Session) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(session.client.clone());
    let review = api.create(&PostParams::default(), &SelfSubjectReview::default()).await.ok()?;
    review.status?.user_info?.username
}

/// Prints the delivery's progress until the Agent reports `active` delivered (exit 0), reports
/// it blocked (exit 1, with the reason), or the deadline passes (exit 3).
async fn follow_delivery(
    session: &Session,
    agent: &str,
    active: i64,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let api: Api<Agent> = session.api();
    let agents = watcher(api, watcher::Config::default().fields(&format!("metadata.name={agent}"))).applied_objects();
    let mut agents = agents.boxed();
    let mut last = String::new();
    loop {
        let item = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                eprintln!("error: version {active} of agent {agent} was not delivered within {timeout:?}");
                return Ok(ExitCode::from(3));
            }
            item = agents.next() => item,
        };
        let Some(Ok(agent)) = item else { continue };
        let status = agent.status.clone().unwrap_or_default();
        let delivery = status.delivery.clone().unwrap_or_default();
        let progress = delivery_progress(&delivery);
        if progress != last {
            println!("{}", terminal::escape(&progress));
            last = progress;
        }
        let ready = status.condition(READY);
        let stalled = status.condition(STALLED).filter(|c| c.status == "True");
        if status.active_version != Some(active) {
            continue;
        }
        if let Some(stalled) = stalled {
            eprintln!(
                "error: version {active} is not delivered ({}): {}",
                terminal::escape(&stalled.reason),
                terminal::escape(&stalled.message)
            );
            return Ok(ExitCode::from(1));
        }
        if ready.is_some_and(|c| c.status == "True") && delivery.version == Some(active) {
            println!("Delivered: version {active} is what the running agent has.");
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn delivery_progress(delivery: &DeliveryStatus) -> String {
    let mut text = format!(
        "  ConfigMap {}: version {}",
        delivery.config_map.as_deref().unwrap_or("-"),
        delivery.version.map_or_else(|| "-".to_string(), |v| v.to_string())
    );
    for w in &delivery.workloads {
        let version = w.version.map_or_else(|| "-".to_string(), |v| v.to_string());
        let state = if w.rolled_out { "rolled out" } else { "rolling out" };
        text.push_str(&format!("; {} {}: version {version}, {state}", w.kind.as_str(), w.name));
    }
    text
}

/// Prints phase changes and Events as they happen, until the rollback is terminal and its
/// final Event is printed; returns the exit code and the active version it left.
async fn follow(
    watches: Watches,
    name: &str,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> anyhow::Result<(ExitCode, Option<i64>)> {
    let mut watches = watches;
    let mut seen_events = HashSet::new();
    let mut last_phase = None;
    let mut final_event_seen = false;
    let finished = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break None,
            Some(rollback) = watches.rollbacks.objects.recv() => {
                let status = rollback.status.clone().unwrap_or_default();
                if status.phase != last_phase {
                    last_phase = status.phase;
                    if let Some(phase) = status.phase {
                        println!("{}: {}", phase.as_str(), terminal::escape(status.message.as_deref().unwrap_or_default()));
                    }
                }
                if status.phase.is_some_and(RollbackPhase::is_terminal) {
                    break Some(status);
                }
            }
            Some(event) = watches.events.objects.recv() => {
                final_event_seen |= is_final(&event);
                print_event(&event, &mut seen_events);
            }
        }
    };
    let Some(status) = finished else {
        eprintln!(
            "error: agentrollback/{name} did not finish within {timeout:?} (it keeps running; follow it with: kubectl get agentrollback {name} -w)"
        );
        return Ok((ExitCode::from(3), None));
    };
    // The final Event is published just after the status: print it as soon as it arrives
    // (never waiting past the deadline, nor long for an Event that may have been dropped).
    let events_deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(2));
    while !final_event_seen {
        match tokio::time::timeout_at(events_deadline, watches.events.objects.recv()).await {
            Ok(Some(event)) => {
                final_event_seen |= is_final(&event);
                print_event(&event, &mut seen_events);
            }
            Ok(None) | Err(_) => break,
        }
    }
    match status.phase {
        Some(RollbackPhase::Succeeded) => Ok((ExitCode::SUCCESS, status.active_version)),
        _ => {
            eprintln!(
                "error: rollback {name} failed ({}): {}",
                terminal::escape(&status.reason.unwrap_or_default()),
                terminal::escape(&status.message.unwrap_or_default())
            );
            Ok((ExitCode::from(1), None))
        }
    }
}

/// The rollback's last Event: it succeeded or failed.
fn is_final(event: &Event) -> bool {
    matches!(event.reason.as_deref(), Some(events::ROLLBACK_SUCCEEDED | events::ROLLBACK_FAILED))
}

fn print_event(event: &Event, seen: &mut HashSet<String>) {
    if seen.insert(event.uid().unwrap_or_default()) {
        println!(
            "  event {}: {}",
            terminal::escape(event.reason.as_deref().unwrap_or("")),
            terminal::escape(event.message.as_deref().unwrap_or(""))
        );
    }
}

/// What the rollback would do now, from the controller's own planner; nothing is created.
async fn dry_run(session: &Session, args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let observed = crate::channels::world(session, &args.agent).await?;
    if let Some(channel) = &args.channel {
        let spec = AgentRollbackSpec {
            agent_name: args.agent.clone(),
            channel: Some(channel.clone()),
            strategy: args.strategy(),
            target_version: args.to,
            expected_active_version: args.expect_active,
            reason: None,
            requested_by: None,
        };
        let candidate = AgentRollback::new("dry-run", spec);
        return crate::channels::plan_move(&observed, channel, Move::Rollback(&candidate));
    }
    let versions = &observed.versions;
    let numbers: Vec<i64> = versions.iter().map(|v| v.spec.version).collect();
    let snapshot = |n: i64| versions.iter().find(|v| v.spec.version == n).map(|v| v.spec.snapshot.clone());
    let active = numbers.last().copied();
    let chosen = choose(&args.agent, args.strategy(), args.to, args.expect_active, &numbers);
    // As the planner starts it: a Pop of a version a channel pins or holds fails.
    let held = match &chosen {
        Ok(Choice::Pop { version }) => holder(&observed, *version).map(|c| (*version, c)),
        _ => None,
    };
    if let Some((version, channel)) = held {
        eprintln!(
            "Dry run: the rollback would fail (VersionInUse): version {version} is in use by channel {}.",
            terminal::escape(&channel)
        );
        return Ok(ExitCode::from(1));
    }
    match chosen {
        Ok(Choice::Restore { target, new }) => {
            println!(
                "Dry run: would publish version {new} as a copy of version {target}; version {new} would become active."
            );
            if let (Some(from), Some(to)) = (active.and_then(snapshot), snapshot(target)) {
                println!("--- version {} (active)\n+++ version {target}", active.unwrap_or_default());
                print!("{}", diff::render(&diff::changes(&from, &to)));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Choice::Pop { version }) => {
            let next = numbers.iter().copied().filter(|n| *n < version).max();
            let next_text = next.map_or_else(|| "none".to_string(), |n| n.to_string());
            println!("Dry run: would delete version {version}; version {next_text} would become active.");
            if let (Some(from), Some(to)) = (snapshot(version), next.and_then(snapshot)) {
                println!("--- version {version} (active)\n+++ version {next_text}");
                print!("{}", diff::render(&diff::changes(&from, &to)));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!(
                "Dry run: the rollback would fail ({}): {}",
                failure.reason.as_str(),
                terminal::escape(&failure.message)
            );
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_as_the_api_server_makes_them_and_fit_a_label_value() {
        let name = generated_name("support");
        let suffix = name.strip_prefix("support-rollback-").expect("the base");
        assert_eq!(suffix.len(), SUFFIX_LEN);
        assert!(suffix.bytes().all(|b| NAME_ALPHABET.contains(&b)), "{name}");
        let long = generated_name(&"a".repeat(63));
        assert_eq!(long.len(), 63, "{long}");
        assert_eq!(&long[..MAX_BASE_LEN], &"a".repeat(MAX_BASE_LEN));
        let names: HashSet<String> = (0..50).map(|_| generated_name("support")).collect();
        assert!(names.len() > 45, "the suffixes are random: {names:?}");
    }
}

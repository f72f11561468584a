//! How the operator watches: what each watch cache keeps of an object, how a watch gets its
//! first state, and how it retries.

use std::time::Duration;

use futures::StreamExt;
use kube::api::{WatchEvent, WatchParams};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use tracing::{debug, warn};

use crate::api::keys::{CHANGE_CAUSE_ANNOTATION, CHANGED_BY_ANNOTATION, ROLLBACK_RECORD_ANNOTATION};
use crate::api::{Agent, AgentRollback};
use crate::client::scoped;
use crate::error::error_chain;

/// The watch caches keep objects without their managed fields: nothing here reads them, and at
/// thousands of Agents they are much of the caches' memory.
fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// The Agent cache keeps no definition either (the watch never decodes one, see `lean_agent`):
/// the cached Agent wakes syncs and answers checks of its metadata and status, and a sync reads
/// the Agent live whenever it decides anything from its spec (see `observe::resume_from`).
/// With instructions of kilobytes, the definitions were most of the operator's memory at
/// thousands of Agents.
pub fn slim_agent(agent: &mut Agent) {
    drop_managed_fields(agent);
    keep_annotations(agent, &[CHANGE_CAUSE_ANNOTATION, CHANGED_BY_ANNOTATION]);
}

/// Of a rollback's annotations the cache keeps its record, the only one the operator reads:
/// annotations are anyone's to write, up to 256 KiB an object, and one namespace's rollbacks
/// (or an Agent's `kubectl.kubernetes.io/last-applied-configuration`) could otherwise fill the
/// memory of an operator shared by every namespace.
pub fn slim_rollback(rollback: &mut AgentRollback) {
    drop_managed_fields(rollback);
    keep_annotations(rollback, &[ROLLBACK_RECORD_ANNOTATION]);
}

/// Of a promotion's annotations the cache keeps its record, as of a rollback's.
pub fn slim_promotion(promotion: &mut crate::api::AgentPromotion) {
    drop_managed_fields(promotion);
    keep_annotations(promotion, &[ROLLBACK_RECORD_ANNOTATION]);
}

/// The channel cache keeps none of a channel's annotations: the operator reads none.
pub fn slim_channel(channel: &mut crate::api::AgentChannel) {
    drop_managed_fields(channel);
    keep_annotations(channel, &[]);
}

fn keep_annotations<K: Resource>(object: &mut K, keep: &[&str]) {
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.retain(|key, _| keep.contains(&key.as_str()));
    }
}

/// How every watch gets its first state: streamed from the API server's watch cache where the
/// server streams lists by default (Kubernetes 1.34 on; 1.33 refuses the request) and has not
/// had the feature turned off, else as a list in pages. At 100,000 versions the paged list of
/// their metadata took 26-88 s after a restart, each page read from storage; streamed, the same
/// state comes in seconds. The streamed state is the watch cache's, which may trail storage by
/// moments, as every later event may: nothing decides a write from a cache alone (see
/// `observe`).
pub async fn watch_config(client: &Client, namespace: Option<&str>) -> watcher::Config {
    let streams = match client.apiserver_version().await {
        Ok(info) => streams_lists(&info.major, &info.minor) && serves_streaming_lists(client, namespace).await,
        Err(error) => {
            warn!(error = %error_chain(&error), "Cannot read the API server's version; listing in pages");
            false
        }
    };
    debug!(streams, "Initial lists");
    let config = watcher::Config::default();
    if streams { config.streaming_lists() } else { config }
}

/// Whether the API server serves a streaming list: one with the WatchList feature turned off
/// (a beta feature; its administrator may) refuses the request, and a watch that asks for one
/// would never get its first state. Asked with a watch that selects nothing (no object is named
/// `-`), whose answer is the end of an empty list; a server that gives none within 10 s is
/// taken not to stream, an error that is not a refusal to follow the version.
async fn serves_streaming_lists(client: &Client, namespace: Option<&str>) -> bool {
    let api: Api<AgentRollback> = scoped(client, namespace);
    let params = WatchParams::streaming_lists().fields("metadata.name=-").timeout(10);
    let first = async {
        let events = match api.watch(&params, "0").await {
            Ok(events) => events,
            Err(kube::Error::Api(status)) => return !(400..500).contains(&status.code),
            Err(_) => return true,
        };
        let mut events = std::pin::pin!(events);
        matches!(events.next().await, Some(Ok(WatchEvent::Bookmark(_))))
    };
    let serves = tokio::time::timeout(Duration::from_secs(10), first).await.unwrap_or(false);
    if !serves {
        warn!("The API server does not serve streaming lists (WatchList off); listing in pages");
    }
    serves
}

/// Whether a server of this version serves streaming lists by default (the WatchList feature).
fn streams_lists(major: &str, minor: &str) -> bool {
    let number = |text: &str| text.trim_end_matches('+').parse::<u32>().ok();
    match (number(major), number(minor)) {
        (Some(1), Some(minor)) => minor >= 34,
        (Some(major), _) => major > 1,
        _ => false,
    }
}

/// Retries of the watches: from 100 ms, doubling, at most a second apart. kube's default (up to
/// 30 s, reset only after two quiet minutes) left rollbacks unseen for most of a minute after an
/// API server restart; one retry a second is nothing to an API server that is back.
#[derive(Default)]
pub struct WatchBackoff {
    last: Option<Duration>,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.last.map_or(Self::FIRST, |last| (last * 2).min(Self::MAX));
        self.last = Some(delay);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::lean_agent::LeanAgent;

    #[test]
    fn lists_are_streamed_from_kubernetes_1_34_on() {
        assert!(!streams_lists("1", "30"));
        assert!(!streams_lists("1", "33"), "1.33 refuses sendInitialEvents by default");
        assert!(streams_lists("1", "34"));
        assert!(streams_lists("1", "37+"));
        assert!(streams_lists("2", "0"));
        assert!(!streams_lists("", ""));
    }

    #[test]
    fn the_caches_keep_only_the_annotations_the_operator_reads() {
        let big = "x".repeat(200_000);
        let mut rollback: AgentRollback = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentops.dev/v1alpha1", "kind": "AgentRollback",
            "metadata": {"name": "r", "annotations": {ROLLBACK_RECORD_ANNOTATION: "{}", "ticket": big}},
            "spec": {"agentName": "support", "strategy": "Pop"}}))
        .unwrap();
        slim_rollback(&mut rollback);
        let kept: Vec<&String> = rollback.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(kept, [ROLLBACK_RECORD_ANNOTATION]);

        let LeanAgent(mut agent) = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentops.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "a", "annotations": {
                CHANGE_CAUSE_ANNOTATION: "why", CHANGED_BY_ANNOTATION: "who",
                "kubectl.kubernetes.io/last-applied-configuration": big}},
            "spec": {"instructions": "long"}}))
        .unwrap();
        slim_agent(&mut agent);
        let kept: Vec<&String> = agent.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(kept, [CHANGE_CAUSE_ANNOTATION, CHANGED_BY_ANNOTATION]);
        assert_eq!(agent.spec.definition, crate::api::AgentDefinition::default());
    }

    #[test]
    fn watch_retries_double_to_a_second_and_start_over_after_a_reset() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u128> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(100)));
    }
}

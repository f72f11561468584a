//! Status is a cache (behaviour 10, docs/reference.md): the status of an Agent and of its
//! rollbacks, removed in every state (after a Restore, a Previous, a Pop and a failure, with
//! rollbacks queued, mid-rollback with the operator killed), is written back with the same
//! results, and nothing is published, deleted or run again.

use std::time::Duration;

use agent_operator::api::{Agent, AgentRollbackStatus, AgentStatus, RollbackPhase};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::rollback::{Setup, setup};
use crate::support::reference::{Request, published};
use crate::support::{Operator, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// The Event reasons that say something was done; a rebuilt status must send none of them.
const DOING: [&str; 5] = ["VersionPublished", "RollbackStarted", "RollbackSucceeded", "RollbackFailed", "RolledBack"];

/// Removes the status, as a backup restored without it or a hand edit leaves the object.
async fn remove_status<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = json!({ "status": null });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(body)).await.expect("status removed");
}

/// Removes the status of the Agent and of every rollback in the namespace.
async fn lose_every_status(s: &Setup, agent: &str) {
    remove_status(&s.agents(), agent).await;
    for rollback in s.rollbacks().list(&Default::default()).await.unwrap() {
        remove_status(&s.rollbacks(), &rollback.name_any()).await;
    }
}

/// The Agent's status, without the times its conditions last changed.
fn agent_view(agent: &Agent) -> Option<AgentStatus> {
    agent.status.clone().map(|mut status| {
        for c in &mut status.conditions {
            c.last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default());
        }
        status
    })
}

/// Every rollback's status by name, once every one has one again.
async fn rollback_statuses(s: &Setup, names: &[String]) -> Vec<(String, AgentRollbackStatus)> {
    eventually(WAIT, || async {
        let mut all = Vec::new();
        for name in names {
            let rollback = s.rollbacks().get(name).await.ok()?;
            all.push((name.clone(), rollback.status?));
        }
        Some(all)
    })
    .await
}

/// How many Events of the doing kind the objects have.
async fn doing_events(s: &Setup, names: &[String]) -> usize {
    let mut count = 0;
    for name in names {
        count += s.events_for(name).await.iter().filter(|(reason, _)| DOING.contains(&reason.as_str())).count();
    }
    count
}

#[tokio::test]
async fn lost_statuses_are_rebuilt_with_the_same_results_and_nothing_runs_again() {
    let mut s = setup("e2e-status-loss").await;
    s.agent_with_versions("support", 3, 100).await;
    let mut expected = published(3);
    let mut names: Vec<String> = Vec::new();

    // One finished rollback of each kind, and a failure.
    for (name, request) in [
        ("restore", Request { strategy: "Restore", target: Some(1) }),
        ("previous", Request { strategy: "Previous", target: None }),
        ("pop", Request { strategy: "Pop", target: None }),
        ("failure", Request { strategy: "Restore", target: Some(99) }),
    ] {
        let want = expected.apply(&request);
        s.create_rollback(name, "support", request.strategy, request.target).await;
        s.expect_outcome(name, want, &format!("{request:?}")).await;
        names.push(name.into());
    }
    // Events are sent in the background: wait for the last one before counting.
    s.wait_events("failure", "RollbackFailed", 1).await;
    let agent = s.settled_agent("support").await;
    let versions: Vec<_> = s.versions("support").await.iter().map(|v| (v.uid(), v.spec.version)).collect();
    let statuses = rollback_statuses(&s, &names).await;
    let mut objects = names.clone();
    objects.push("support".into());
    let events = doing_events(&s, &objects).await;

    lose_every_status(&s, "support").await;
    let started = std::time::Instant::now();
    let rebuilt = rollback_statuses(&s, &names).await;
    let agent_after = s.settled_agent("support").await;
    println!("statuses of 1 Agent and {} rollbacks rebuilt in {:?}", names.len(), started.elapsed());
    assert_eq!(rebuilt, statuses, "the rollbacks' statuses are written back as they were");
    assert_eq!(agent_view(&agent_after), agent_view(&agent), "the Agent's status is written back as it was");
    let versions_after: Vec<_> = s.versions("support").await.iter().map(|v| (v.uid(), v.spec.version)).collect();
    assert_eq!(versions_after, versions, "no version was made or deleted");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(doing_events(&s, &objects).await, events, "nothing was done again");

    // Queued and mid-rollback: rollbacks created at once, the operator killed at a random
    // moment among them, every status lost while it is down.
    let mut rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    for trial in 0..4 {
        let mut created = Vec::new();
        for (b, request) in [
            Request { strategy: "Previous", target: None },
            Request { strategy: "Restore", target: Some(1) },
            Request { strategy: "Pop", target: None },
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("q{trial}-{b}");
            let rb = s.create_rollback(&name, "support", request.strategy, request.target).await;
            created.push((rb.resource_version().unwrap().parse::<u64>().unwrap(), name, request));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(rng % 60)).await;
        s.operator = None; // dropping it kills it
        let states: Vec<Option<RollbackPhase>> = {
            let mut phases = Vec::new();
            for (_, name, _) in &created {
                phases.push(s.rollbacks().get(name).await.unwrap().status.and_then(|st| st.phase));
            }
            phases
        };
        println!("trial {trial}: killed with the rollbacks {states:?}; every status removed");
        lose_every_status(&s, "support").await;
        s.operator = Some(Operator::start(&s.ns));

        created.sort_by_key(|(rv, _, _)| *rv);
        for (_, name, request) in &created {
            let want = expected.apply(request);
            s.expect_outcome(name, want, &format!("trial {trial} {request:?}")).await;
            names.push(name.clone());
        }
        assert_eq!(s.history("support").await, expected.versions, "trial {trial}");
        // The rollbacks that had finished before keep their results.
        let earlier = rollback_statuses(&s, &names[..statuses.len()]).await;
        assert_eq!(earlier, statuses, "trial {trial}: a finished rollback's result changed");
    }
    // Each Restore/Previous made at most one version, named after it.
    let versions = s.versions("support").await;
    for name in &names {
        let made = versions.iter().filter(|v| v.spec.rollback_name.as_deref() == Some(name.as_str())).count();
        assert!(made <= 1, "{name} made {made} versions");
    }
}

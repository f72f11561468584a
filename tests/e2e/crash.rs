//! Crash safety: the operator is killed with SIGKILL at random moments while rollbacks run,
//! then restarted. Every rollback still ends terminal, each Restore/Previous made exactly one
//! version, and the history is exactly what applying them one by one gives: nothing lost,
//! nothing duplicated. Likewise while a channel's promotions and rollbacks run: each ends as
//! applying them one by one in creation order gives. `AGENT_OPERATOR_CRASH_TRIALS` sets the
//! number of trials (default 30, half of that for the channel).

use std::time::Duration;

use agent_operator::api::{AgentChannel, AgentPromotion, RollbackPhase};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::rollback::setup;
use crate::support::reference::{Request, published};
use crate::support::{Operator, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// A small deterministic generator, so a failing run can be repeated from its printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn killing_the_operator_at_random_moments_loses_and_duplicates_nothing() {
    let trials: usize = std::env::var("AGENT_OPERATOR_CRASH_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(30);
    let seed = std::env::var("AGENT_OPERATOR_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 | 1).unwrap_or(7)
    });
    println!("crash test: {trials} trials, AGENT_OPERATOR_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut s = setup("e2e-crash").await;
    s.agent_with_versions("support", 3, 100_000).await;
    let mut expected = published(3);
    let mut names = Vec::new();

    for trial in 0..trials {
        // A few rollbacks at once, then a kill somewhere in their processing.
        let batch = 1 + rng.below(3) as usize;
        let mut created = Vec::new();
        for b in 0..batch {
            let strategy = ["Restore", "Previous", "Pop"][rng.below(3) as usize];
            let active = *expected.versions.keys().max().unwrap_or(&1);
            let target = (strategy == "Restore").then(|| 1 + rng.below(active as u64 + 1) as i64);
            let name = format!("t{trial:03}-{b}");
            let rb = s.create_rollback(&name, "support", strategy, target).await;
            created.push((rb.resource_version().unwrap().parse::<u64>().unwrap(), name, Request { strategy, target }));
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        s.operator = None; // dropping it kills it
        s.operator = Some(Operator::start(&s.ns));

        created.sort_by_key(|(rv, _, _)| *rv);
        for (_, name, request) in created {
            let want = expected.apply(&request);
            s.expect_outcome(&name, want, &format!("trial {trial} {request:?} (seed {seed})")).await;
            names.push((name, request));
        }
    }

    // Nothing lost or duplicated: the history is exactly the reference's.
    assert_eq!(s.history("support").await, expected.versions, "seed {seed}");
    let versions = s.versions("support").await;
    for (name, request) in &names {
        let made = versions.iter().filter(|v| v.spec.rollback_name.as_deref() == Some(name.as_str())).count();
        let phase = s.rollbacks().get(name).await.unwrap().status.and_then(|st| st.phase);
        let restores = request.strategy != "Pop" && phase == Some(RollbackPhase::Succeeded);
        // A version a later Pop deleted is gone from the list; otherwise exactly one per success.
        assert!(made <= 1, "{name} made {made} versions (seed {seed})");
        if !restores {
            assert_eq!(made, 0, "{name} made a version without succeeding as a Restore (seed {seed})");
        }
    }
}

#[tokio::test]
async fn killing_the_operator_while_a_channel_moves_runs_each_move_once_in_creation_order() {
    let trials: usize = std::env::var("AGENT_OPERATOR_CRASH_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(30);
    let trials = trials.div_ceil(2);
    let seed = std::env::var("AGENT_OPERATOR_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 | 1).unwrap_or(7)
    });
    println!("channel crash test: {trials} trials, AGENT_OPERATOR_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut s = setup("e2e-crash-channel").await;
    s.agent_with_versions("support", 3, 100).await;
    let channel = serde_json::json!({"apiVersion": "agentops.dev/v1alpha1", "kind": "AgentChannel",
        "metadata": {"name": "prod"}, "spec": {"agentName": "support", "version": 1}});
    let channels: Api<AgentChannel> = Api::namespaced(s.client.clone(), &s.ns);
    channels.patch("prod", &PatchParams::apply("tests").force(), &Patch::Apply(channel)).await.unwrap();
    let promotions: Api<AgentPromotion> = Api::namespaced(s.client.clone(), &s.ns);
    // What the channel serves, as applying each move in creation order gives.
    let mut serving = 1;

    for trial in 0..trials {
        let batch = 1 + rng.below(3) as usize;
        let mut created = Vec::new();
        for b in 0..batch {
            let target = 1 + rng.below(3) as i64;
            let name = format!("t{trial:03}-{b}");
            let promotion = rng.below(2) == 0;
            let revision = if promotion {
                let body =
                    serde_json::json!({"metadata": {"name": name}, "spec": {"channel": "prod", "version": target}});
                let made =
                    promotions.create(&Default::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
                made.resource_version()
            } else {
                let spec = serde_json::json!({"agentName": "support", "channel": "prod", "strategy": "Restore", "targetVersion": target});
                let body = serde_json::json!({"metadata": {"name": name}, "spec": spec});
                s.rollbacks()
                    .create(&Default::default(), &serde_json::from_value(body).unwrap())
                    .await
                    .unwrap()
                    .resource_version()
            };
            created.push((revision.unwrap().parse::<u64>().unwrap(), name, promotion, target));
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        s.operator = None; // dropping it kills it
        s.operator = Some(Operator::start(&s.ns));

        created.sort_by_key(|(rv, _, _, _)| *rv);
        for (_, name, promotion, target) in created {
            let context = format!("trial {trial}: {name} to {target} from {serving} (seed {seed})");
            let (phase, reason, version) = if promotion {
                let status = eventually(WAIT, || async {
                    let status = promotions.get(&name).await.ok()?.status?;
                    status.phase.filter(|p| p.is_terminal()).map(|_| status)
                })
                .await;
                (status.phase, status.reason, status.version)
            } else {
                let status = s.terminal(&name).await.status.unwrap();
                (status.phase, status.reason, status.active_version)
            };
            if target == serving {
                assert_eq!(reason.as_deref(), Some("AlreadyActive"), "{context}");
            } else {
                assert_eq!((phase, version), (Some(RollbackPhase::Succeeded), Some(target)), "{context}");
                serving = target;
            }
        }
    }
    let channel = eventually(WAIT, || async {
        let c = channels.get("prod").await.ok()?;
        (c.status.as_ref()?.version == Some(serving)).then_some(c)
    })
    .await;
    println!("after {trials} trials the channel serves version {serving}: {:?}", channel.status.unwrap().override_);
}

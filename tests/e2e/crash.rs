//! Crash safety: the operator is killed with SIGKILL at random moments while rollbacks run,
//! then restarted. Every rollback still ends terminal, each Restore/Previous made exactly one
//! version, and the history is exactly what applying them one by one gives: nothing lost,
//! nothing duplicated. `AGENT_OPERATOR_CRASH_TRIALS` sets the number of trials (default 30).

use std::time::Duration;

use agent_operator::api::RollbackPhase;
use kube::ResourceExt;

use crate::rollback::setup;
use crate::support::Operator;
use crate::support::reference::{Request, published};

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

//! Retry delays: each failure in a row doubles the delay, up to a bound; a success starts over.

use std::time::Duration;

/// What is retried, per Agent.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Retry {
    /// The Agent's sync, after it failed.
    Agent,
    /// A look at the Agent's delivery, while it waits for a rollout.
    Delivery,
    /// The sync of the rollback of this name, after it failed.
    Rollback(String),
}

impl Retry {
    /// Failures are retried from 0.2 s up to a minute apart; a delivery is polled from 0.2 s up
    /// to 10 s apart, so a rollout is seen to finish soon after it does, and a blocked delivery
    /// costs a read every 10 s.
    pub fn schedule(&self) -> Schedule {
        let max = match self {
            Retry::Delivery => Duration::from_secs(10),
            Retry::Agent | Retry::Rollback(_) => Duration::from_secs(60),
        };
        Schedule { first: Duration::from_millis(200), max }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub first: Duration,
    pub max: Duration,
}

/// Failed attempts in a row.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    attempts: u32,
}

impl Backoff {
    /// The delay after one more failure.
    pub fn next(&mut self, schedule: Schedule) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        // 2^9 of 0.2 s is past any bound used; the shift stays small.
        let factor = 1u32 << (self.attempts - 1).min(9);
        schedule.first.saturating_mul(factor).min(schedule.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_their_bound() {
        let cases = [
            (Retry::Agent, [200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 51_200, 60_000, 60_000]),
            (Retry::Rollback("r".into()), [200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 51_200, 60_000, 60_000]),
            (Retry::Delivery, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000, 10_000]),
        ];
        for (retry, want) in cases {
            let mut backoff = Backoff::default();
            let got: Vec<u128> = (0..want.len()).map(|_| backoff.next(retry.schedule()).as_millis()).collect();
            assert_eq!(got, want, "{retry:?}");
        }
    }

    #[test]
    fn many_failures_stay_at_the_bound() {
        let mut backoff = Backoff { attempts: u32::MAX - 1 };
        assert_eq!(backoff.next(Retry::Agent.schedule()), Duration::from_secs(60));
        assert_eq!(backoff.next(Retry::Agent.schedule()), Duration::from_secs(60), "no overflow");
    }
}

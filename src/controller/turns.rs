//! Whose turn it is to sync each Agent. One sync of an Agent runs at a time; one asked for
//! while it runs does not wait (which held a controller worker per waiting reconcile, so a
//! queue of thousands on one Agent made every other Agent's rollback wait for it to drain): it
//! asks the running sync for another pass and returns. And a sync working through a queue of
//! rollbacks gives way, unit by unit, to the syncs of other Agents that have no queue: their
//! rollbacks share the API server with one write of it at a time, not a stream of them.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::index::AgentKey;

/// The longest a sync with a queue waits for others before its next unit: about one rollback
/// of another Agent, so a queue moves on even when other syncs never stop.
const GIVE_WAY: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct Turns {
    running: Mutex<HashMap<AgentKey, State>>,
    /// Notified whenever a turn ends.
    ended: Notify,
}

/// A running sync of one Agent.
#[derive(Default)]
struct State {
    /// Another pass was asked for while it ran.
    again: bool,
    /// It works through a queue of rollbacks (see [`Turn::give_way`]).
    queue: bool,
}

impl Turns {
    /// Takes the Agent's turn to sync, if no sync of it runs now; else asks the one that runs
    /// for one more pass when it ends, and returns `None`.
    pub fn take(&self, key: &AgentKey) -> Option<Turn<'_>> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get_mut(key) {
            Some(state) => {
                state.again = true;
                None
            }
            None => {
                running.insert(key.clone(), State::default());
                Some(Turn { turns: self, key: key.clone(), ended: false })
            }
        }
    }

    /// Whether a sync of the Agent runs now.
    pub fn running(&self, key: &AgentKey) -> bool {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).contains_key(key)
    }

    /// Whether a sync of another Agent than `key` runs that has no queue.
    fn others_without_queue(&self, key: &AgentKey) -> bool {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.iter().any(|(k, state)| k != key && !state.queue)
    }

    fn end(&self, key: &AgentKey) {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        self.ended.notify_waiters();
    }
}

/// One Agent's turn to sync (see [`Turns::take`]); given up when dropped, so a sync that fails
/// or is cancelled never leaves its Agent unsyncable.
pub struct Turn<'a> {
    turns: &'a Turns,
    key: AgentKey,
    ended: bool,
}

impl Turn<'_> {
    /// Whether another pass was asked for since the last one began; if not, the turn ends here,
    /// under the same lock that a caller asking for a pass takes, so no request is lost.
    pub fn again(&mut self) -> bool {
        let mut running = self.turns.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get_mut(&self.key) {
            Some(state) if state.again => {
                state.again = false;
                true
            }
            _ => {
                running.remove(&self.key);
                drop(running);
                self.ended = true;
                self.turns.ended.notify_waiters();
                false
            }
        }
    }

    /// Before each unit of work: with a queue of rollbacks, waits (at most [`GIVE_WAY`]) while
    /// a sync of another Agent without one runs.
    pub async fn give_way(&self, queue: bool) {
        {
            let mut running = self.turns.running.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(state) = running.get_mut(&self.key) {
                state.queue = queue;
            }
        }
        if !queue {
            return;
        }
        let deadline = Instant::now() + GIVE_WAY;
        loop {
            // Listening before looking, so that a turn that ends in between is not missed.
            let ended = self.turns.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.turns.others_without_queue(&self.key) {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.turns.end(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> AgentKey {
        AgentKey::new("ns", name)
    }

    #[test]
    fn a_second_caller_asks_the_running_sync_for_one_more_pass() {
        let turns = Turns::default();
        let mut first = turns.take(&key("a")).expect("the turn");
        assert!(turns.take(&key("a")).is_none(), "handed to the running sync");
        assert!(turns.take(&key("a")).is_none(), "asked again: still one more pass");
        assert!(turns.take(&key("b")).is_some(), "another Agent runs beside it");
        assert!(first.again(), "one pass asked for");
        assert!(!first.again(), "and no more: the turn ends");
        assert!(!turns.running(&key("a")));
        assert!(turns.take(&key("a")).is_some(), "free again");
    }

    #[test]
    fn a_dropped_turn_frees_its_agent() {
        let turns = Turns::default();
        let turn = turns.take(&key("a")).expect("the turn");
        assert!(turns.take(&key("a")).is_none());
        drop(turn);
        assert!(turns.take(&key("a")).is_some(), "a failed or cancelled sync leaves no Agent behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_gives_way_to_another_agents_sync_until_it_ends_or_for_at_most_a_while() {
        let turns = Turns::default();
        let queue = turns.take(&key("busy")).expect("the turn");
        let start = Instant::now();
        queue.give_way(true).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "nobody else: no wait");

        let mut quiet = turns.take(&key("quiet")).expect("the turn");
        let ends = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!quiet.again(), "its sync ends");
        };
        let start = Instant::now();
        tokio::join!(queue.give_way(true), ends);
        assert_eq!(start.elapsed(), Duration::from_millis(20), "until the other sync ended");

        let mut other_queue = turns.take(&key("other-queue")).expect("the turn");
        other_queue.give_way(true).await;
        let start = Instant::now();
        queue.give_way(true).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "two queues do not wait for each other");
        assert!(!other_queue.again());

        let _endless = turns.take(&key("endless")).expect("the turn");
        let start = Instant::now();
        queue.give_way(true).await;
        assert_eq!(start.elapsed(), GIVE_WAY, "at most a while");
        queue.give_way(false).await;
    }
}

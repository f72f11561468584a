//! The contract's rollback rules, as the planner's property tests judge by them (the same file),
//! for end-to-end tests to say what a sequence of rollbacks must end in.

#[path = "../../src/plan/sim/reference.rs"]
mod rules;

pub use rules::Reference;

/// One rollback request.
#[derive(Clone, Debug)]
pub struct Request {
    pub strategy: &'static str,
    pub target: Option<i64>,
}

/// An Agent's history: versions by number, each holding its instructions. No pruning: tests
/// that use it keep a history limit larger than what they make.
pub type History = Reference<String>;

/// Versions 1 to `n`, holding the instructions `i1` to `i<n>`.
pub fn published(n: i64) -> History {
    Reference::with_versions((1..=n).map(|i| (i, format!("i{i}"))).collect(), i32::MAX)
}

impl History {
    /// Applies one request; the active version it leaves, or its failure reason.
    pub fn apply(&mut self, request: &Request) -> Result<i64, &'static str> {
        self.rollback(request.strategy, request.target, None)
    }
}

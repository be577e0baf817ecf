//! Freshness: the last check of opening (SPEC.md section 8).
//!
//! A [`ReplayWindow`] refuses envelopes dated too far in the past or future and
//! remembers the `(sender, message id)` of every envelope it accepted within the window.
//! Memory is bounded: when the window is full it raises its *floor* (the oldest
//! timestamp it still accepts) past the entry it forgets, so a forgotten id can never be
//! replayed, at the cost of refusing late stragglers older than the floor.

use std::collections::{BTreeSet, HashSet};

use super::{EnvelopeHeader, MessageId, OpenError};
use crate::address::Address;
use crate::limits::{
    DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_MESSAGE_AGE_MS, DEFAULT_REPLAY_CAPACITY,
};
use crate::time::UnixMillis;

/// The caller-visible freshness policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayPolicy {
    /// Envelopes whose timestamp is more than this before `now` are refused.
    pub max_age_ms: u64,
    /// Envelopes whose timestamp is more than this after `now` are refused.
    pub max_skew_ms: u64,
    /// Most ids remembered at once.
    pub capacity: usize,
}

impl Default for ReplayPolicy {
    fn default() -> Self {
        Self {
            max_age_ms: DEFAULT_MAX_MESSAGE_AGE_MS,
            max_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
            capacity: DEFAULT_REPLAY_CAPACITY,
        }
    }
}

type Key = (Address, MessageId);

/// Remembers which envelopes were accepted; see the module documentation.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    policy: ReplayPolicy,
    /// Timestamps below this are refused (raised when entries are forgotten).
    floor: UnixMillis,
    seen: HashSet<Key>,
    by_time: BTreeSet<(UnixMillis, Key)>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new(ReplayPolicy::default())
    }
}

impl ReplayWindow {
    /// An empty window with this policy.
    pub fn new(policy: ReplayPolicy) -> Self {
        Self {
            policy,
            floor: UnixMillis(0),
            seen: HashSet::new(),
            by_time: BTreeSet::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &ReplayPolicy {
        &self.policy
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The oldest timestamp still accepted, ignoring `now`.
    pub fn floor(&self) -> UnixMillis {
        self.floor
    }

    /// Checks an envelope header without recording it.
    pub fn check(&self, header: &EnvelopeHeader, now: UnixMillis) -> Result<(), OpenError> {
        let ts = header.timestamp;
        if ts < now.saturating_sub(self.policy.max_age_ms) || ts < self.floor {
            return Err(OpenError::TooOld);
        }
        if ts > now.saturating_add(self.policy.max_skew_ms) {
            return Err(OpenError::FromFuture);
        }
        if self
            .seen
            .contains(&(header.sender.clone(), header.message_id))
        {
            return Err(OpenError::Replay);
        }
        Ok(())
    }

    /// Checks an envelope header and, only if it passes, records it.
    pub fn accept(&mut self, header: &EnvelopeHeader, now: UnixMillis) -> Result<(), OpenError> {
        self.check(header, now)?;
        let key = (header.sender.clone(), header.message_id);
        self.seen.insert(key.clone());
        self.by_time.insert((header.timestamp, key));
        self.prune(now);
        Ok(())
    }

    fn forget_oldest(&mut self) {
        if let Some((ts, key)) = self.by_time.pop_first() {
            self.seen.remove(&key);
            self.floor = self.floor.max(ts.saturating_add(1));
        }
    }

    fn prune(&mut self, now: UnixMillis) {
        let horizon = now.saturating_sub(self.policy.max_age_ms);
        while self.by_time.first().is_some_and(|(ts, _)| *ts < horizon) {
            self.forget_oldest();
        }
        while self.seen.len() > self.policy.capacity {
            self.forget_oldest();
        }
    }
}

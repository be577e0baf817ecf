//! Freshness: the last check of opening (SPEC.md section 8).
//!
//! A [`ReplayWindow`] refuses envelopes dated too far in the past or future and
//! remembers the message id of every envelope it accepted within the window, per
//! sender. Memory is bounded per sender: when a sender's window is full it raises that
//! sender's *floor* (the oldest timestamp it still accepts from them) past the entry it
//! forgets, so a forgotten id can never be replayed, at the cost of refusing that
//! sender's late stragglers older than the floor.

use std::collections::{BTreeSet, HashMap, HashSet};

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
    /// Most ids remembered per sender.
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

/// One sender's remembered ids.
#[derive(Clone, Debug, Default)]
struct SenderWindow {
    /// This sender's timestamps below this are refused (raised when entries are forgotten).
    floor: UnixMillis,
    ids: HashSet<MessageId>,
    by_time: BTreeSet<(UnixMillis, MessageId)>,
}

impl SenderWindow {
    fn forget_oldest(&mut self) {
        if let Some((ts, id)) = self.by_time.pop_first() {
            self.ids.remove(&id);
            self.floor = self.floor.max(ts.saturating_add(1));
        }
    }
}

/// Remembers which envelopes were accepted, per sender; see the module documentation.
///
/// Each sender has its own floor and its own capacity, so no sender can make the window
/// forget (and so refuse as too old) the envelopes of another. Only senders whose
/// envelopes passed signature verification are recorded, so the number of senders is
/// bounded by the certificates the application trusts.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    policy: ReplayPolicy,
    senders: HashMap<Address, SenderWindow>,
    len: usize,
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
            senders: HashMap::new(),
            len: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &ReplayPolicy {
        &self.policy
    }

    /// How many ids are remembered, over all senders.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The oldest timestamp still accepted from `sender`, ignoring `now`.
    pub fn floor(&self, sender: &Address) -> UnixMillis {
        self.senders.get(sender).map_or(UnixMillis(0), |w| w.floor)
    }

    /// Checks an envelope header without recording it.
    pub fn check(&self, header: &EnvelopeHeader, now: UnixMillis) -> Result<(), OpenError> {
        let ts = header.timestamp;
        let window = self.senders.get(&header.sender);
        if ts < now.saturating_sub(self.policy.max_age_ms) || window.is_some_and(|w| ts < w.floor) {
            return Err(OpenError::TooOld);
        }
        if ts > now.saturating_add(self.policy.max_skew_ms) {
            return Err(OpenError::FromFuture);
        }
        if window.is_some_and(|w| w.ids.contains(&header.message_id)) {
            return Err(OpenError::Replay);
        }
        Ok(())
    }

    /// Checks an envelope header and, only if it passes, records it.
    pub fn accept(&mut self, header: &EnvelopeHeader, now: UnixMillis) -> Result<(), OpenError> {
        self.check(header, now)?;
        self.record(header, now);
        Ok(())
    }

    /// Records a header that [`check`](Self::check) accepted.
    pub(crate) fn record(&mut self, header: &EnvelopeHeader, now: UnixMillis) {
        let horizon = now.saturating_sub(self.policy.max_age_ms);
        let capacity = self.policy.capacity.max(1);
        let w = self.senders.entry(header.sender.clone()).or_default();
        let before = w.ids.len();
        if w.ids.insert(header.message_id) {
            w.by_time.insert((header.timestamp, header.message_id));
        }
        while w.by_time.first().is_some_and(|(ts, _)| *ts < horizon) {
            w.forget_oldest();
        }
        while w.ids.len() > capacity {
            w.forget_oldest();
        }
        let after = w.ids.len();
        self.len = (self.len + after).saturating_sub(before);
    }

    /// Every sender with its floor and its remembered `(timestamp, id)` pairs, oldest
    /// first, in no particular sender order: what persistence saves (SPEC.md 15.8).
    pub(crate) fn persisted_senders(
        &self,
    ) -> impl Iterator<Item = (&Address, UnixMillis, &BTreeSet<(UnixMillis, MessageId)>)> + '_ {
        self.senders.iter().map(|(a, w)| (a, w.floor, &w.by_time))
    }

    /// Restores one sender's floor and remembered pairs, as
    /// [`persisted_senders`](Self::persisted_senders) reported them (persistence,
    /// SPEC.md 15.8). Pairs beyond the policy's capacity are forgotten oldest first,
    /// raising the floor, as [`record`](Self::record) does.
    pub(crate) fn restore_sender(
        &mut self,
        sender: Address,
        floor: UnixMillis,
        entries: impl IntoIterator<Item = (UnixMillis, MessageId)>,
    ) {
        let capacity = self.policy.capacity.max(1);
        let w = self.senders.entry(sender).or_default();
        let before = w.ids.len();
        w.floor = w.floor.max(floor);
        for (ts, id) in entries {
            if w.ids.insert(id) {
                w.by_time.insert((ts, id));
            }
        }
        while w.ids.len() > capacity {
            w.forget_oldest();
        }
        let after = w.ids.len();
        self.len = (self.len + after).saturating_sub(before);
    }
}

//! Token buckets for rate limits and exponential backoff with jitter for retries
//! (SPEC.md 16.9). Pure arithmetic on injected time and randomness.

use rand_core::Rng;

use crate::time::UnixMillis;

/// A token bucket: `burst` tokens, refilled at `per_window` tokens every `window_ms`.
/// Refill is computed lazily from the time of the last take, so an idle bucket costs
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    burst: u32,
    per_window: u32,
    window_ms: u64,
    /// Tokens scaled by `window_ms`, so refills need no division.
    scaled: u128,
    last: UnixMillis,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_window: u32, window_ms: u64, now: UnixMillis) -> Self {
        let window_ms = window_ms.max(1);
        Self {
            burst,
            per_window,
            window_ms,
            scaled: u128::from(burst) * u128::from(window_ms),
            last: now,
        }
    }

    fn refill(&mut self, now: UnixMillis) {
        let elapsed = now.as_millis().saturating_sub(self.last.as_millis());
        let cap = u128::from(self.burst) * u128::from(self.window_ms);
        self.scaled = self
            .scaled
            .saturating_add(u128::from(elapsed) * u128::from(self.per_window))
            .min(cap);
        self.last = self.last.max(now);
    }

    /// Takes one token; on refusal returns how long until one is available.
    pub fn take(&mut self, now: UnixMillis) -> Result<(), u64> {
        self.refill(now);
        let one = u128::from(self.window_ms);
        if self.scaled >= one {
            self.scaled -= one;
            Ok(())
        } else if self.per_window == 0 {
            Err(u64::MAX)
        } else {
            let missing = one - self.scaled;
            let per = u128::from(self.per_window);
            Err(u64::try_from(missing.div_ceil(per)).unwrap_or(u64::MAX))
        }
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: UnixMillis) -> u32 {
        self.refill(now);
        u32::try_from(self.scaled / u128::from(self.window_ms)).unwrap_or(u32::MAX)
    }
}

/// Exponential backoff with jitter: the n-th retry waits a uniformly random time in
/// `[d/2, d]` where `d = min(initial * 2^n, max)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial_ms: u64,
    /// The largest delay.
    pub max_ms: u64,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> u64 {
        let d = self
            .initial_ms
            .saturating_mul(1u64.checked_shl(attempt.min(62)).unwrap_or(u64::MAX))
            .min(self.max_ms)
            .max(1);
        let half = d / 2;
        half + rng.next_u64() % (d - half + 1)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: crate::limits::RETRY_INITIAL_MS,
            max_ms: crate::limits::RETRY_MAX_MS,
        }
    }
}

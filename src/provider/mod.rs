//! The provider state machine (SPEC.md section 16): accounts, prekeys, mailboxes and
//! federation queues for the users of one domain, with no I/O of its own.
//!
//! # Drive loop
//! ```text
//! provider.handle_input(now, ProviderInput::…)      // bytes, connection changes, answers
//! loop {
//!     match provider.poll_output(now) {
//!         ProviderOutput::Transmit { conn, bytes } => send bytes on conn,
//!         ProviderOutput::Close { conn }            => close conn,
//!         ProviderOutput::Connect { domain }        => resolve + connect, then Connected / ConnectFailed,
//!         ProviderOutput::Resolve { domain }        => resolve, then Resolved,
//!         ProviderOutput::Event(e)                  => log,
//!         ProviderOutput::Commit(batch)             => (deferred commits only) store it, then Committed,
//!         ProviderOutput::Timeout(t)                => { call handle_timeout at t; break }
//!     }
//! }
//! ```
//! Every change to durable state becomes [`StoreOp`]s. `poll_output` commits them, in
//! one batch for however many inputs came before, **before** it releases any output,
//! so nothing is acknowledged (and no one-time prekey handed out) that the store has
//! not made durable. Only deletions that SPEC.md 16.12 lets wait (acknowledged mailbox
//! items and queue entries) wait for the next commit, or at most a second. If the commit
//! fails, the provider drops the outputs, reloads its state from the store and carries on;
//! peers retry.
//!
//! A driver that can run commits elsewhere calls [`Provider::defer_commits`]: batches then
//! come out as [`ProviderOutput::Commit`] and their outputs wait for
//! [`ProviderInput::Committed`], while the provider goes on taking input (pipelined group
//! commit; the QUIC server runs its store on a thread of its own). What acknowledges
//! nothing leaves at once: relays, and deliveries of envelopes to devices once the run's
//! mailbox sequence epoch is durable (SPEC.md 16.12 rule 5), so that a message does not
//! wait for its recipient's provider's `fsync`.
//!
//! Envelopes are routed by their claimed header without verifying signatures: the
//! authenticated connection says which device or provider handed an envelope over, and
//! recipients verify end to end (SPEC.md 16.1).

mod group;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

use bytes::Bytes;
use rand_core::CryptoRng;

use self::state::{Durable, MailBody, MailItem, OutItem, dedup_key};
use crate::address::{Address, Domain};
use crate::envelope::{MessageId, UnverifiedEnvelope};
use crate::identity::{DeviceCertificate, DeviceId, DeviceList, ProviderKey, ProviderKeyPair};
use crate::limits::{
    AUTH_NONCE_LEN, AUTH_TIMEOUT_MS, CLIENT_REQUEST_BURST, CLIENT_REQUESTS_PER_SECOND,
    DEDUP_RETENTION_MS, DELIVER_RESEND_MAX_MS, FETCH_BURST, FETCHES_PER_MINUTE, FORWARD_TIMEOUT_MS,
    MAX_DEDUP_ENTRIES, MAX_DELIVER_IN_FLIGHT, MAX_DELIVER_ITEMS, MAX_FRAME_LEN, MAX_MAILBOX_DEPTH,
    MAX_PENDING_REMOTE_FETCHES, MAX_PROVIDER_ONE_TIME_PREKEYS, MAX_RATE_BUCKETS,
    MAX_RELAY_ENVELOPES, MAX_RELAY_IN_FLIGHT, MAX_REMOTE_QUEUE_DEPTH, ONE_TIME_PREKEY_BURST,
    ONE_TIME_PREKEYS_PER_HOUR, PROTOCOL_VERSION, PROVIDER_PREKEY_LOW_WATERMARK,
    PROVIDER_REQUEST_BURST, PROVIDER_REQUESTS_PER_SECOND, RELAY_EXPIRY_MS, RESEND_AFTER_MS,
    RETRY_INITIAL_MS,
};
use crate::protocol::{
    self, Backoff, ConnectionId, ErrorCode, FrameError, ProtocolError, TokenBucket,
};
use crate::session::{PrekeyBundle, PrekeyKind, SignedPrekey};
use crate::store::{Store, StoreError, StoreOp};
use crate::time::UnixMillis;
use crate::wire::{self, frame::Body};

/// How often expiry sweeps run (relay expiry, dedup expiry).
const SWEEP_INTERVAL_MS: u64 = 60_000;

/// Deletions that may wait (see [`Provider::lazy_ops`]) are committed on their own once
/// this many are pending…
const LAZY_FLUSH_OPS: usize = 4096;

/// …or once the oldest has waited this long (unless a commit takes them along first).
const LAZY_FLUSH_MS: u64 = 1000;

/// Bytes of envelopes per `Deliver` or `Relay` frame before a new frame is started.
const FRAME_FILL: usize = MAX_FRAME_LEN / 2;

/// Tunable limits; [`Default`] gives the values named in SPEC.md 16.10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProviderLimits {
    /// [`MAX_MAILBOX_DEPTH`].
    pub max_mailbox_depth: usize,
    /// [`MAX_REMOTE_QUEUE_DEPTH`].
    pub max_remote_queue_depth: usize,
    /// [`CLIENT_REQUEST_BURST`] and [`CLIENT_REQUESTS_PER_SECOND`].
    pub client_burst: u32,
    /// Per second.
    pub client_rate: u32,
    /// [`PROVIDER_REQUEST_BURST`] and [`PROVIDER_REQUESTS_PER_SECOND`].
    pub provider_burst: u32,
    /// Per second.
    pub provider_rate: u32,
    /// [`FETCH_BURST`] and [`FETCHES_PER_MINUTE`].
    pub fetch_burst: u32,
    /// Per minute.
    pub fetches_per_minute: u32,
    /// [`ONE_TIME_PREKEY_BURST`] and [`ONE_TIME_PREKEYS_PER_HOUR`].
    pub one_time_burst: u32,
    /// Per hour.
    pub one_time_per_hour: u32,
    /// [`RELAY_EXPIRY_MS`].
    pub relay_expiry_ms: u64,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            max_mailbox_depth: MAX_MAILBOX_DEPTH,
            max_remote_queue_depth: MAX_REMOTE_QUEUE_DEPTH,
            client_burst: CLIENT_REQUEST_BURST,
            client_rate: CLIENT_REQUESTS_PER_SECOND,
            provider_burst: PROVIDER_REQUEST_BURST,
            provider_rate: PROVIDER_REQUESTS_PER_SECOND,
            fetch_burst: FETCH_BURST,
            fetches_per_minute: FETCHES_PER_MINUTE,
            one_time_burst: ONE_TIME_PREKEY_BURST,
            one_time_per_hour: ONE_TIME_PREKEYS_PER_HOUR,
            relay_expiry_ms: RELAY_EXPIRY_MS,
        }
    }
}

/// A provider's configuration.
pub struct ProviderConfig {
    /// The domain this provider serves.
    pub domain: Domain,
    /// Its provider key.
    pub key: ProviderKeyPair,
    /// Whether anyone may register a new user (an interop or test provider); otherwise
    /// users must be created with [`Provider::add_user`].
    pub open_registration: bool,
    /// Limits.
    pub limits: ProviderLimits,
    /// Retry timing for relays.
    pub backoff: Backoff,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("domain", &self.domain)
            .field("key", &self.key)
            .field("open_registration", &self.open_registration)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ProviderConfig {
    /// A configuration with default limits.
    pub fn new(domain: Domain, key: ProviderKeyPair) -> Self {
        Self {
            domain,
            key,
            open_registration: false,
            limits: ProviderLimits::default(),
            backoff: Backoff::default(),
        }
    }
}

/// Who opened a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
// Passed once per connection; boxing the key would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Direction {
    /// A device or provider connected to this provider.
    Inbound,
    /// This provider connected to `domain` (after a [`ProviderOutput::Connect`]); `key`
    /// is the provider key the resolver gave for it.
    Outbound {
        /// The remote provider.
        domain: Domain,
        /// Its provider key.
        key: ProviderKey,
    },
}

/// Something that happened to the provider.
#[derive(Debug)]
pub enum ProviderInput {
    /// A connection is open. `binding` is the transport's channel binding (for QUIC a
    /// TLS exporter value; empty if the transport has none), at most 64 bytes.
    Connected {
        /// The driver's handle.
        conn: ConnectionId,
        /// Who opened it.
        direction: Direction,
        /// The channel binding.
        binding: Bytes,
    },
    /// One whole frame arrived on `conn`.
    Received {
        /// The connection.
        conn: ConnectionId,
        /// The frame.
        bytes: Bytes,
    },
    /// `conn` is closed (by either side or the network).
    Closed {
        /// The connection.
        conn: ConnectionId,
    },
    /// A [`ProviderOutput::Connect`] failed.
    ConnectFailed {
        /// The domain that could not be reached.
        domain: Domain,
    },
    /// The answer to a [`ProviderOutput::Resolve`].
    Resolved {
        /// The domain asked about.
        domain: Domain,
        /// Its provider key, or `None` if it could not be resolved.
        key: Option<ProviderKey>,
    },
    /// The answer to a [`ProviderOutput::Commit`]: what [`Store::commit`] returned for
    /// batch `id`. An answer for a batch that is not outstanding is ignored.
    Committed {
        /// The batch.
        id: u64,
        /// The store's answer.
        result: Result<(), StoreError>,
    },
}

/// Who is on the other end of an authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// One of this provider's users' devices.
    Device {
        /// The user.
        address: Address,
        /// The device.
        device: DeviceId,
    },
    /// Another provider.
    Provider(Domain),
}

/// Something worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderEvent {
    /// A connection authenticated.
    Authenticated {
        /// The connection.
        conn: ConnectionId,
        /// Who it is.
        peer: PeerIdentity,
    },
    /// A connection was refused or closed for a protocol error.
    Refused {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        error: ProtocolError,
    },
    /// A user registered.
    Registered {
        /// The user.
        address: Address,
    },
    /// An envelope will never be delivered; its sender device has been told.
    Undeliverable {
        /// The message.
        message_id: MessageId,
        /// The recipient.
        recipient: Address,
        /// The recipient device.
        device: DeviceId,
        /// Why.
        error: ProtocolError,
    },
    /// A commit failed; outputs since the last commit were dropped and the state was
    /// reloaded from the store.
    StorageFailed(StoreError),
    /// Records in the store did not decode and were skipped.
    CorruptRecords(usize),
    /// This provider, a group's sequencer, ordered a change (SPEC.md 20.3).
    GroupChangeOrdered {
        /// The group.
        group: crate::group::GroupId,
        /// The change's epoch.
        epoch: u64,
    },
    /// A group item was not stored for a local device whose mailbox is full
    /// (SPEC.md 20.2, 20.4).
    GroupItemDropped {
        /// The user.
        recipient: Address,
        /// The device.
        device: DeviceId,
    },
}

/// What the driver must do.
#[derive(Debug)]
#[must_use]
pub enum ProviderOutput {
    /// Send one frame on `conn`.
    Transmit {
        /// The connection.
        conn: ConnectionId,
        /// The frame.
        bytes: Bytes,
    },
    /// Close `conn` (after sending what was transmitted on it).
    Close {
        /// The connection.
        conn: ConnectionId,
    },
    /// Resolve `domain` and open a connection to it; answer with
    /// [`ProviderInput::Connected`] (direction `Outbound`) or `ConnectFailed`.
    Connect {
        /// The remote provider.
        domain: Domain,
    },
    /// Resolve `domain`'s provider key; answer with [`ProviderInput::Resolved`].
    Resolve {
        /// The domain.
        domain: Domain,
    },
    /// Only with [deferred commits](Provider::defer_commits): apply this batch to the
    /// store ([`Store::commit`]) and answer with [`ProviderInput::Committed`]. At most one
    /// batch is outstanding at a time.
    Commit(CommitBatch),
    /// For the log.
    Event(ProviderEvent),
    /// Nothing more to do until this time (or the next input): call
    /// [`Provider::handle_timeout`] then.
    Timeout(Option<UnixMillis>),
}

/// Store writes for the driver to make durable (deferred commits, see
/// [`Provider::defer_commits`]).
#[derive(Debug)]
pub struct CommitBatch {
    /// Names the batch in [`ProviderInput::Committed`].
    pub id: u64,
    /// The writes, to apply in order, atomically and durably, as one [`Store::commit`].
    pub ops: Vec<StoreOp>,
}

/// Counts for monitoring and for the simulator's limit checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Users.
    pub users: usize,
    /// Items in all mailboxes.
    pub mailbox_items: usize,
    /// Items in the fullest mailbox.
    pub max_mailbox_depth: usize,
    /// Envelopes queued for remote providers.
    pub outbound_items: usize,
    /// Envelopes queued for the busiest remote provider.
    pub max_remote_queue_depth: usize,
    /// Remembered envelope ids.
    pub dedup_entries: usize,
    /// Forwarded fetches waiting for an answer.
    pub pending_fetches: usize,
    /// Open connections.
    pub connections: usize,
    /// Successful commits.
    pub commits: u64,
    /// `Deliver` frames released without waiting for a batch, so possibly ahead of the
    /// write that stored their items (deferred commits only, SPEC.md 16.12 rule 5).
    pub early_deliveries: u64,
}

type DeviceKey = (Address, DeviceId);

#[derive(Debug)]
enum ConnState {
    AwaitHello,
    AwaitAuth {
        hello_nonce: Bytes,
        nonce: [u8; AUTH_NONCE_LEN],
        role: wire::Role,
    },
    AwaitResolve {
        hello_nonce: Bytes,
        nonce: [u8; AUTH_NONCE_LEN],
        domain: Domain,
        signature: Bytes,
    },
    AwaitChallenge {
        domain: Domain,
        key: ProviderKey,
        hello_nonce: [u8; AUTH_NONCE_LEN],
    },
    AwaitWelcome {
        domain: Domain,
    },
    Device(DeviceKey),
    PeerIn(Domain),
    PeerOut(Domain),
}

#[derive(Debug)]
struct Conn {
    state: ConnState,
    binding: Bytes,
    opened: UnixMillis,
}

/// Delivery progress of an online device.
#[derive(Debug)]
struct Online {
    conn: ConnectionId,
    /// Items sent and not acknowledged, with when they were sent.
    in_flight: InFlight,
    /// The highest sequence number sent on this connection.
    pushed_up_to: u64,
    /// With deferred commits: once every batch below this id is durable, this
    /// connection's `Welcome` has left, and mailbox items may overtake answers held on it
    /// (see [`Provider::early_delivery`]).
    welcomed_after: u64,
}

/// Mailbox items sent to a device and not acknowledged, by sequence number and by the
/// time they are due to be sent again (so that neither a resend nor the next deadline
/// needs a scan).
#[derive(Debug, Default)]
struct InFlight {
    /// seq -> (due again at, times sent on this connection).
    sent: BTreeMap<u64, (UnixMillis, u32)>,
    by_due: BTreeSet<(UnixMillis, u64)>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.sent.len()
    }

    /// Records that `seq` was sent at `now`; it is due again after [`RESEND_AFTER_MS`],
    /// doubled for each earlier send on this connection, at most
    /// [`DELIVER_RESEND_MAX_MS`] (SPEC.md 16.7).
    fn insert(&mut self, seq: u64, now: UnixMillis) {
        let sends = match self.sent.get(&seq) {
            Some(&(due, sends)) => {
                self.by_due.remove(&(due, seq));
                sends.saturating_add(1)
            }
            None => 1,
        };
        // 2^(sends - 1), saturating: a shift alone would drop the high bits.
        let factor = 1u64.checked_shl(sends - 1).unwrap_or(u64::MAX);
        let wait = RESEND_AFTER_MS
            .saturating_mul(factor)
            .min(DELIVER_RESEND_MAX_MS);
        let due = now.saturating_add(wait);
        self.sent.insert(seq, (due, sends));
        self.by_due.insert((due, seq));
    }

    fn remove(&mut self, seq: u64) {
        if let Some((due, _)) = self.sent.remove(&seq) {
            self.by_due.remove(&(due, seq));
        }
    }

    /// Items due to be sent again at `now`, the longest due first.
    fn due_by(&self, now: UnixMillis) -> Vec<u64> {
        self.by_due
            .range(..=(now, u64::MAX))
            .map(|(_, seq)| *seq)
            .collect()
    }

    /// When the next item is due.
    fn next_due(&self) -> Option<UnixMillis> {
        self.by_due.first().map(|(due, _)| *due)
    }
}

/// Federation progress towards one remote provider (volatile: rebuilt after restart).
#[derive(Debug, Default)]
struct Remote {
    conn: Option<ConnectionId>,
    connecting: bool,
    attempt: u32,
    next_connect: UnixMillis,
    /// Queue entries that may be sent now.
    ready: BTreeSet<u64>,
    /// Queue entries waiting for a retry time.
    waiting: BTreeSet<(UnixMillis, u64)>,
    /// Relay requests in flight: request id -> (sequence numbers, sent at).
    in_flight: HashMap<u64, (Vec<u64>, UnixMillis)>,
    in_flight_items: usize,
    /// Forwarded fetch request ids waiting to be (re)sent on the next connection.
    fetches: BTreeSet<u64>,
    /// Retries so far per queue entry that was refused with a retryable error.
    attempts: HashMap<u64, u32>,
}

/// A fetch forwarded to a remote provider for one of our devices.
#[derive(Debug)]
struct Forward {
    origin: ConnectionId,
    origin_request: u64,
    domain: Domain,
    request: wire::Request,
    deadline: UnixMillis,
    sent_at: Option<UnixMillis>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RateKey {
    Device(DeviceKey),
    Provider(Domain),
    Fetch(Address),
    OneTime(Address),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Sweep,
    Auth(ConnectionId),
    Push(DeviceKey),
    Remote(Domain),
    Forward(u64),
}

/// The provider state machine. See the module documentation.
pub struct Provider<S: Store, R: CryptoRng> {
    domain: Domain,
    key: ProviderKeyPair,
    open_registration: bool,
    limits: ProviderLimits,
    backoff: Backoff,
    store: S,
    rng: R,
    durable: Durable,
    ops: Vec<StoreOp>,
    out: VecDeque<ProviderOutput>,
    conns: HashMap<ConnectionId, Conn>,
    online: HashMap<DeviceKey, Online>,
    remotes: HashMap<Domain, Remote>,
    forwards: HashMap<u64, Forward>,
    next_request: u64,
    keys: HashMap<Domain, ProviderKey>,
    resolving: HashMap<Domain, Vec<ConnectionId>>,
    buckets: HashMap<RateKey, (TokenBucket, UnixMillis)>,
    timers: BTreeSet<(UnixMillis, TimerKey)>,
    dirty: BTreeSet<DeviceKey>,
    dirty_remotes: BTreeSet<Domain>,
    /// The latest `now` seen (for paths that run without one).
    now: UnixMillis,
    /// Connections of devices just removed from their lists, closed once the current
    /// frame is handled.
    to_refuse: Vec<ConnectionId>,
    /// Successful commits, for [`ProviderStats::commits`].
    commits: u64,
    /// For [`ProviderStats::early_deliveries`].
    early_deliveries: u64,
    /// Deletions whose durability nothing waits for (SPEC.md 16.12 rule 4): mailbox items
    /// the device acknowledged and queue entries the next hop acknowledged. They go to the
    /// store with the next commit of `ops`, or on their own after [`LAZY_FLUSH_MS`] or
    /// beyond [`LAZY_FLUSH_OPS`], so an acknowledgement alone costs no `fsync` of its own.
    /// Lost in a crash, they only make the item be sent again, which its receiver
    /// recognises (SPEC.md 16.9).
    lazy_ops: Vec<StoreOp>,
    /// When the oldest of `lazy_ops` was made.
    lazy_since: Option<UnixMillis>,
    /// `Some` once [`Provider::defer_commits`] was called.
    deferred: Option<Deferred>,
    /// With deferred commits: outputs released now, ahead of `out`: those that need no
    /// commit (relays and fetches for other providers, connects) and those whose commit
    /// completed.
    ready: VecDeque<ProviderOutput>,
}

/// The state of deferred commits.
#[derive(Debug, Default)]
struct Deferred {
    next_id: u64,
    /// Every batch with a lower id is durable.
    durable_below: u64,
    /// Items whose writes are not durable yet may be delivered once `durable_below`
    /// reaches this: just past the batch that holds the current sequence epoch's write.
    /// `None` while no batch holds it: then the next one does.
    epoch_durable_at: Option<u64>,
    /// The outstanding batch and the outputs that wait for it.
    in_flight: Option<(u64, Vec<ProviderOutput>)>,
}

impl<S: Store, R: CryptoRng> fmt::Debug for Provider<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("domain", &self.domain)
            .field("users", &self.durable.users.len())
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, message)
}

fn response(id: u64, body: wire::response::Body) -> Bytes {
    protocol::encode(Body::Response(wire::Response {
        id,
        body: Some(body),
    }))
}

fn error_response(id: u64, e: &ProtocolError) -> Bytes {
    response(id, wire::response::Body::Error(e.to_wire()))
}

fn done(id: u64) -> Bytes {
    response(id, wire::response::Body::Done(wire::Done {}))
}

impl<S: Store, R: CryptoRng> Provider<S, R> {
    /// A provider serving `config.domain` from `store` (loading whatever it holds).
    pub fn new(
        config: ProviderConfig,
        mut store: S,
        mut rng: R,
        now: UnixMillis,
    ) -> Result<Self, StoreError> {
        let contents = store.load()?;
        let durable = Durable::load(&contents);
        // Request ids start at a random point so that answers to requests sent before
        // a restart can never be taken for answers to new ones.
        let next_request = rng.next_u64() >> 1;
        let mut p = Self {
            domain: config.domain,
            key: config.key,
            open_registration: config.open_registration,
            limits: config.limits,
            backoff: config.backoff,
            store,
            rng,
            durable,
            ops: Vec::new(),
            out: VecDeque::new(),
            conns: HashMap::new(),
            online: HashMap::new(),
            remotes: HashMap::new(),
            forwards: HashMap::new(),
            next_request,
            keys: HashMap::new(),
            resolving: HashMap::new(),
            buckets: HashMap::new(),
            timers: BTreeSet::new(),
            dirty: BTreeSet::new(),
            dirty_remotes: BTreeSet::new(),
            now,
            to_refuse: Vec::new(),
            commits: 0,
            early_deliveries: 0,
            lazy_ops: Vec::new(),
            lazy_since: None,
            deferred: None,
            ready: VecDeque::new(),
        };
        p.after_load(now);
        Ok(p)
    }

    fn after_load(&mut self, now: UnixMillis) {
        if self.durable.corrupt > 0 {
            self.event(ProviderEvent::CorruptRecords(self.durable.corrupt));
        }
        self.remotes.clear();
        let domains: Vec<(Domain, Vec<u64>)> = self
            .durable
            .outbound
            .iter()
            .map(|(d, q)| (d.clone(), q.keys().copied().collect()))
            .collect();
        for (d, seqs) in domains {
            let r = self.remotes.entry(d.clone()).or_default();
            r.ready.extend(seqs);
            self.dirty_remotes.insert(d);
        }
        self.timers
            .insert((now.saturating_add(SWEEP_INTERVAL_MS), TimerKey::Sweep));
    }

    /// The domain served.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The provider key's public half.
    pub fn public_key(&self) -> ProviderKey {
        self.key.public()
    }

    /// The store (for inspection).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Makes the deletions that may wait (acknowledged mailbox items and queue entries,
    /// SPEC.md 16.12 rule 4) due, so the next [`poll_output`](Self::poll_output) commits
    /// them: for a graceful stop, after which nothing acknowledged is sent again. Without
    /// it they would merely be sent again after a restart, which their receivers recognise.
    pub fn flush(&mut self) {
        if !self.lazy_ops.is_empty() {
            self.lazy_since = Some(UnixMillis(0));
        }
    }

    /// Gives the store back (to restart a provider from it).
    pub fn into_store(self) -> S {
        self.store
    }

    /// From now on, hands commits to the driver as [`ProviderOutput::Commit`] instead of
    /// running [`Store::commit`] inside [`poll_output`](Self::poll_output), so a driver
    /// can run them on another thread while the provider goes on taking input (pipelined
    /// group commit). The rules do not change: every output that acknowledges a batch's
    /// writes (an answer, a notice, an event) waits until [`ProviderInput::Committed`]
    /// reports the batch durable, and a failed batch rolls the provider back to what the
    /// store holds. What acknowledges nothing is released at once: relays and forwarded
    /// fetches for other providers (SPEC.md 16.5 allows a relay before its queue entry is
    /// durable), connection attempts with their handshakes (`hello`, `auth`), the
    /// `challenge` to a device or provider that connects, and
    /// deliveries of envelopes and group envelopes to devices (SPEC.md 16.12 rule 5) once
    /// the first batch, which starts a new mailbox sequence epoch, is durable, and on a
    /// connection authenticated later once a batch made after its `Welcome` is. Outputs
    /// keep their order otherwise.
    ///
    /// The driver runs one batch at a time, in the order given, on the store this
    /// provider was made with (which it must therefore share, as
    /// [`SharedStore`](crate::store::SharedStore) does), and may only call
    /// [`Store::load`] meanwhile through the provider.
    pub fn defer_commits(&mut self) {
        if self.deferred.is_none() {
            self.deferred = Some(Deferred::default());
        }
    }

    /// Whether a mailbox item may go to a device whose `Welcome` left after batch
    /// `welcomed_after` before the write that stored the item is durable (SPEC.md 16.12
    /// rule 5): only with deferred commits, once the sequence epoch is durable (a crash
    /// can then not give the item's `seq` to another item), and once the `Welcome` has left
    /// (a delivery must not overtake it).
    fn early_delivery(&self, welcomed_after: u64) -> bool {
        self.deferred.as_ref().is_some_and(|d| {
            d.epoch_durable_at
                .is_some_and(|at| d.durable_below >= at.max(welcomed_after))
        })
    }

    /// Whether a [`ProviderOutput::Commit`] awaits its [`ProviderInput::Committed`].
    pub fn commit_outstanding(&self) -> bool {
        self.deferred
            .as_ref()
            .is_some_and(|d| d.in_flight.is_some())
    }

    /// Turns the store into another, keeping all else (a driver that wrapped the store
    /// gives it back unwrapped); if `f` fails, the provider is dropped.
    pub fn try_map_store<T: Store, E>(
        self,
        f: impl FnOnce(S) -> Result<T, E>,
    ) -> Result<Provider<T, R>, E> {
        Ok(Provider {
            domain: self.domain,
            key: self.key,
            open_registration: self.open_registration,
            limits: self.limits,
            backoff: self.backoff,
            store: f(self.store)?,
            rng: self.rng,
            durable: self.durable,
            ops: self.ops,
            out: self.out,
            conns: self.conns,
            online: self.online,
            remotes: self.remotes,
            forwards: self.forwards,
            next_request: self.next_request,
            keys: self.keys,
            resolving: self.resolving,
            buckets: self.buckets,
            timers: self.timers,
            dirty: self.dirty,
            dirty_remotes: self.dirty_remotes,
            now: self.now,
            to_refuse: self.to_refuse,
            commits: self.commits,
            early_deliveries: self.early_deliveries,
            lazy_ops: self.lazy_ops,
            lazy_since: self.lazy_since,
            deferred: self.deferred,
            ready: self.ready,
        })
    }

    /// Counts for monitoring.
    pub fn stats(&self) -> ProviderStats {
        let mut s = ProviderStats {
            users: self.durable.users.len(),
            dedup_entries: self.durable.dedup.len(),
            pending_fetches: self.forwards.len(),
            connections: self.conns.len(),
            commits: self.commits,
            early_deliveries: self.early_deliveries,
            ..ProviderStats::default()
        };
        for u in self.durable.users.values() {
            for d in u.devices.values() {
                s.mailbox_items += d.mailbox.len();
                s.max_mailbox_depth = s.max_mailbox_depth.max(d.depth());
            }
        }
        for q in self.durable.outbound.values() {
            s.outbound_items += q.len();
            s.max_remote_queue_depth = s.max_remote_queue_depth.max(q.len());
        }
        s
    }

    /// Registers a user with its signed device list (for providers without open
    /// registration). Durable at the next `poll_output`.
    pub fn add_user(&mut self, list: DeviceList) -> Result<(), ProtocolError> {
        if !list.address().is_at(&self.domain) {
            return Err(err(ErrorCode::NotYours, "user of another provider"));
        }
        if self.durable.users.contains_key(list.address()) {
            return Err(err(ErrorCode::IdentityMismatch, "user exists"));
        }
        self.durable.put_list(list, &mut self.ops);
        Ok(())
    }

    fn event(&mut self, e: ProviderEvent) {
        self.out.push_back(ProviderOutput::Event(e));
    }

    fn send(&mut self, conn: ConnectionId, bytes: Bytes) {
        self.out.push_back(ProviderOutput::Transmit { conn, bytes });
    }

    /// An output that depends on no commit: with deferred commits it leaves at once.
    fn send_early(&mut self, o: ProviderOutput) {
        if self.deferred.is_some() {
            self.ready.push_back(o);
        } else {
            self.out.push_back(o);
        }
    }

    fn refuse(&mut self, conn: ConnectionId, error: ProtocolError) {
        let bytes = protocol::encode(Body::Goodbye(wire::Goodbye {
            error: Some(error.to_wire()),
        }));
        self.send(conn, bytes);
        self.close(conn);
        self.event(ProviderEvent::Refused { conn, error });
    }

    fn close(&mut self, conn: ConnectionId) {
        if self.conns.contains_key(&conn) {
            self.out.push_back(ProviderOutput::Close { conn });
            self.forget_conn(conn);
        }
    }

    fn forget_conn(&mut self, conn: ConnectionId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        match c.state {
            ConnState::Device(key) if self.online.get(&key).is_some_and(|o| o.conn == conn) => {
                self.online.remove(&key);
            }
            ConnState::PeerOut(domain)
            | ConnState::AwaitChallenge { domain, .. }
            | ConnState::AwaitWelcome { domain } => self.remote_down(&domain, conn),
            ConnState::AwaitResolve { domain, .. } => {
                if let Some(v) = self.resolving.get_mut(&domain) {
                    v.retain(|c| *c != conn);
                }
            }
            _ => {}
        }
    }

    /// The connection to `domain` is gone: everything in flight goes back to ready and
    /// the next connection attempt waits for the backoff.
    fn remote_down(&mut self, domain: &Domain, conn: ConnectionId) {
        let Some(r) = self.remotes.get_mut(domain) else {
            return;
        };
        if r.conn.is_some_and(|c| c != conn) {
            return;
        }
        r.conn = None;
        r.connecting = false;
        for (_, (seqs, _)) in r.in_flight.drain() {
            r.ready.extend(seqs);
        }
        r.in_flight_items = 0;
        for (id, f) in &mut self.forwards {
            if &f.domain == domain {
                f.sent_at = None;
                r.fetches.insert(*id);
            }
        }
        let delay = self.backoff.delay(r.attempt, &mut self.rng);
        r.attempt = r.attempt.saturating_add(1);
        r.next_connect = self.now.saturating_add(delay);
        self.dirty_remotes.insert(domain.clone());
    }

    fn take_request_id(&mut self) -> u64 {
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    fn rate(&mut self, key: RateKey, now: UnixMillis) -> Result<(), ProtocolError> {
        let l = self.limits;
        let (burst, per, window) = match &key {
            RateKey::Device(_) => (l.client_burst, l.client_rate, 1_000),
            RateKey::Provider(_) => (l.provider_burst, l.provider_rate, 1_000),
            RateKey::Fetch(_) => (l.fetch_burst, l.fetches_per_minute, 60_000),
            RateKey::OneTime(_) => (l.one_time_burst, l.one_time_per_hour, 3_600_000),
        };
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_RATE_BUCKETS {
            // Forget the least recently used bucket (a forgotten bucket restarts full).
            if let Some(old) = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                self.buckets.remove(&old);
            }
        }
        let entry = self
            .buckets
            .entry(key)
            .or_insert_with(|| (TokenBucket::new(burst, per, window, now), now));
        entry.1 = now;
        entry
            .0
            .take(now)
            .map_err(|wait| err(ErrorCode::RateLimited, "slow down").retry_after(wait))
    }

    // -----------------------------------------------------------------------------
    // Inputs

    /// Feeds one input. Never panics; malformed input closes the connection it came on
    /// and changes nothing else.
    pub fn handle_input(&mut self, now: UnixMillis, input: ProviderInput) {
        self.now = self.now.max(now);
        match input {
            ProviderInput::Connected {
                conn,
                direction,
                binding,
            } => self.on_connected(now, conn, direction, binding),
            ProviderInput::Received { conn, bytes } => self.on_frame(now, conn, bytes),
            ProviderInput::Closed { conn } => {
                self.forget_conn(conn);
                self.drop_outputs_for(conn);
            }
            ProviderInput::ConnectFailed { domain } => self.connect_failed(now, &domain),
            ProviderInput::Resolved { domain, key } => self.on_resolved(now, &domain, key),
            ProviderInput::Committed { id, result } => self.on_committed(now, id, result),
        }
    }

    /// The driver closed `conn`: frames and a `Close` for it that still wait (with
    /// deferred commits, for a batch) can go nowhere, and must not reach a later
    /// connection the driver gives the same id.
    fn drop_outputs_for(&mut self, conn: ConnectionId) {
        let keep = |o: &ProviderOutput| {
            !matches!(o, ProviderOutput::Transmit { conn: c, .. } | ProviderOutput::Close { conn: c }
                if *c == conn)
        };
        self.out.retain(keep);
        self.ready.retain(keep);
        if let Some((_, held)) = self.deferred.as_mut().and_then(|d| d.in_flight.as_mut()) {
            held.retain(keep);
        }
    }

    /// The driver ran batch `id`.
    fn on_committed(&mut self, now: UnixMillis, id: u64, result: Result<(), StoreError>) {
        let Some(d) = self.deferred.as_mut() else {
            return;
        };
        if d.in_flight.as_ref().is_none_or(|(i, _)| *i != id) {
            return;
        }
        match result {
            Ok(()) => {
                if let Some((_, held)) = d.in_flight.take() {
                    d.durable_below = id.saturating_add(1);
                    self.commits += 1;
                    self.ready.extend(held);
                }
            }
            // The rollback drops what the batch held (and closes the connections it was
            // to close).
            Err(e) => self.rollback(now, e),
        }
    }

    /// A connection attempt to `domain` failed: try again after the backoff.
    fn connect_failed(&mut self, now: UnixMillis, domain: &Domain) {
        if let Some(r) = self.remotes.get_mut(domain)
            && r.conn.is_none()
        {
            r.connecting = false;
            let delay = self.backoff.delay(r.attempt, &mut self.rng);
            r.attempt = r.attempt.saturating_add(1);
            r.next_connect = now.saturating_add(delay);
            self.timers
                .insert((r.next_connect, TimerKey::Remote(domain.clone())));
        }
    }

    fn on_connected(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        direction: Direction,
        binding: Bytes,
    ) {
        let own =
            matches!(&direction, Direction::Outbound { domain, .. } if *domain == self.domain);
        if self.conns.contains_key(&conn) || !protocol::binding_ok(&binding) || own {
            // Driver misuse; an outbound attempt counts as failed, so it is retried.
            self.out.push_back(ProviderOutput::Close { conn });
            if let Direction::Outbound { domain, .. } = direction {
                self.connect_failed(now, &domain);
            }
            return;
        }
        let state = match direction {
            Direction::Inbound => ConnState::AwaitHello,
            Direction::Outbound { domain, key } => {
                let mut nonce = [0u8; AUTH_NONCE_LEN];
                self.rng.fill_bytes(&mut nonce);
                let hello = protocol::encode(Body::Hello(wire::Hello {
                    version: PROTOCOL_VERSION,
                    nonce: Bytes::copy_from_slice(&nonce),
                    role: wire::Role::Provider as i32,
                    acceptor: domain.as_str().to_owned(),
                }));
                // The handshake of a connection to a provider depends on no write, and
                // must not fall behind the relays that leave early on it.
                self.send_early(ProviderOutput::Transmit { conn, bytes: hello });
                let r = self.remotes.entry(domain.clone()).or_default();
                r.conn = Some(conn);
                r.connecting = false;
                ConnState::AwaitChallenge {
                    domain,
                    key,
                    hello_nonce: nonce,
                }
            }
        };
        self.conns.insert(
            conn,
            Conn {
                state,
                binding,
                opened: now,
            },
        );
        self.timers
            .insert((now.saturating_add(AUTH_TIMEOUT_MS), TimerKey::Auth(conn)));
    }

    fn on_frame(&mut self, now: UnixMillis, conn: ConnectionId, bytes: Bytes) {
        self.on_frame_inner(now, conn, bytes);
        for c in std::mem::take(&mut self.to_refuse) {
            self.refuse(
                c,
                err(ErrorCode::UnknownDevice, "device removed from its list"),
            );
        }
    }

    fn on_frame_inner(&mut self, now: UnixMillis, conn: ConnectionId, bytes: Bytes) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        // The frames that carry envelopes by the thousand are decoded without copying
        // them: what of them the provider keeps, it keeps inside the stored value
        // (`Durable::enqueue_out`, `Durable::enqueue_mail`), never as a slice of the
        // frame. Any other frame is decoded again into copies, so that no rarer path
        // (prekeys, group items, handshakes) holds a whole frame alive.
        let body = match protocol::decode_shared(bytes.clone()) {
            Ok(b) if shares_nothing_kept(&b) => Ok(b),
            Ok(_) => protocol::decode(&bytes),
            Err(e) => Err(e),
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                let detail = match e {
                    FrameError::TooLarge { .. } => "frame too large".to_owned(),
                    other => other.to_string(),
                };
                self.refuse(conn, err(ErrorCode::BadFrame, detail));
                return;
            }
        };
        if let Body::Goodbye(_) = body {
            self.close(conn);
            return;
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match (&c.state, body) {
            (ConnState::AwaitHello, Body::Hello(h)) => self.on_hello(conn, h),
            (ConnState::AwaitAuth { .. }, Body::Auth(a)) => self.on_auth(now, conn, a),
            (ConnState::AwaitChallenge { .. }, Body::Challenge(ch)) => self.on_challenge(conn, ch),
            (ConnState::AwaitWelcome { domain }, Body::Welcome(_)) => {
                let domain = domain.clone();
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.state = ConnState::PeerOut(domain.clone());
                }
                if let Some(r) = self.remotes.get_mut(&domain) {
                    r.attempt = 0;
                    let fetches: Vec<u64> = self
                        .forwards
                        .iter()
                        .filter(|(_, f)| f.domain == domain)
                        .map(|(id, _)| *id)
                        .collect();
                    r.fetches.extend(fetches);
                }
                self.dirty_remotes.insert(domain.clone());
                self.event(ProviderEvent::Authenticated {
                    conn,
                    peer: PeerIdentity::Provider(domain),
                });
            }
            (ConnState::Device(key), Body::Request(r)) => {
                let key = key.clone();
                self.on_device_request(now, conn, key, r)
            }
            (ConnState::Device(key), Body::DeliverAck(a)) => {
                let key = key.clone();
                self.on_ack(key, &a.seqs)
            }
            (ConnState::PeerIn(domain), Body::Request(r)) => {
                let domain = domain.clone();
                self.on_peer_request(now, conn, domain, r)
            }
            (ConnState::PeerOut(domain), Body::Response(r)) => {
                let domain = domain.clone();
                self.on_peer_response(now, conn, &domain, r)
            }
            // A handshake frame again (duplicated or delayed by the network) once the
            // handshake has moved on: ignored, it changes nothing (SPEC.md 16.2).
            (_, Body::Hello(_) | Body::Challenge(_) | Body::Auth(_) | Body::Welcome(_)) => {}
            (_, other) => {
                let kind = protocol::kind(&other);
                self.refuse(
                    conn,
                    err(ErrorCode::Unexpected, format!("unexpected {kind} frame")),
                );
            }
        }
    }

    fn on_hello(&mut self, conn: ConnectionId, h: wire::Hello) {
        if h.version != PROTOCOL_VERSION {
            self.refuse(
                conn,
                err(
                    ErrorCode::UnsupportedVersion,
                    format!("version {} not supported", h.version),
                ),
            );
            return;
        }
        if h.acceptor != self.domain.as_str() {
            self.refuse(
                conn,
                err(ErrorCode::WrongProvider, format!("this is {}", self.domain)),
            );
            return;
        }
        let role = match wire::Role::try_from(h.role) {
            Ok(r @ (wire::Role::Device | wire::Role::Provider)) => r,
            _ => {
                self.refuse(conn, err(ErrorCode::BadFrame, "unknown role"));
                return;
            }
        };
        let mut nonce = [0u8; AUTH_NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let sig = protocol::sign_challenge(
            self.key.signing_key(),
            &h.nonce,
            &nonce,
            self.domain.as_str(),
            &c.binding,
        );
        c.state = ConnState::AwaitAuth {
            hello_nonce: h.nonce,
            nonce,
            role,
        };
        let bytes = protocol::encode(Body::Challenge(wire::Challenge {
            nonce: Bytes::copy_from_slice(&nonce),
            domain: self.domain.as_str().to_owned(),
            provider_key: Bytes::copy_from_slice(&self.key.public().to_bytes()),
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }));
        // The challenge acknowledges no write and is the first frame on the connection:
        // with deferred commits it need not wait for the batch under way.
        self.send_early(ProviderOutput::Transmit { conn, bytes });
    }

    fn on_challenge(&mut self, conn: ConnectionId, ch: wire::Challenge) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let ConnState::AwaitChallenge {
            domain,
            key,
            hello_nonce,
        } = &c.state
        else {
            return;
        };
        let domain = domain.clone();
        // VAL-PROTO-004/005: the provider we meant, with the key the resolver gave;
        // VAL-PROTO-006: proven over this connection.
        let error = if ch.domain != domain.as_str() {
            Some(err(
                ErrorCode::WrongProvider,
                format!("reached {} instead of {domain}", ch.domain),
            ))
        } else if ch.provider_key.as_ref() != key.to_bytes() {
            Some(err(
                ErrorCode::WrongProvider,
                format!(
                    "{domain} presented provider key {}, but the resolver gives {key}",
                    hex(&ch.provider_key)
                ),
            ))
        } else if !protocol::verify_challenge(
            key.as_verifying_key(),
            hello_nonce,
            &ch.nonce,
            &ch.domain,
            &c.binding,
            &ch.signature,
        ) {
            Some(err(
                ErrorCode::AuthFailed,
                format!("{domain}'s challenge signature does not verify under {key}"),
            ))
        } else {
            None
        };
        if let Some(e) = error {
            self.refuse(conn, e);
            return;
        }
        let sig = protocol::sign_auth(
            self.key.signing_key(),
            &ch.nonce,
            hello_nonce,
            domain.as_str(),
            &c.binding,
            self.domain.as_str().as_bytes(),
        );
        let bytes = protocol::encode(Body::Auth(wire::Auth {
            who: Some(wire::auth::Who::Provider(wire::ProviderAuth {
                domain: self.domain.as_str().to_owned(),
            })),
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::AwaitWelcome { domain };
        }
        // Early, like the hello: a relay may follow it as soon as a welcome comes.
        self.send_early(ProviderOutput::Transmit { conn, bytes });
    }

    fn on_auth(&mut self, now: UnixMillis, conn: ConnectionId, a: wire::Auth) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let ConnState::AwaitAuth {
            hello_nonce,
            nonce,
            role,
        } = &c.state
        else {
            return;
        };
        let (hello_nonce, nonce, role) = (hello_nonce.clone(), *nonce, *role);
        match (role, a.who) {
            (wire::Role::Device, Some(wire::auth::Who::Device(d))) => {
                match self.auth_device(now, conn, &hello_nonce, &nonce, d, &a.signature) {
                    Ok(key) => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.state = ConnState::Device(key.clone());
                        }
                        if let Some(old) = self.online.remove(&key) {
                            self.close(old.conn);
                        }
                        // The `Welcome` below is held with the next batch (or leaves before
                        // it, if there is none).
                        let welcomed_after = self
                            .deferred
                            .as_ref()
                            .map_or(0, |d| d.next_id.saturating_add(1));
                        self.online.insert(
                            key.clone(),
                            Online {
                                conn,
                                in_flight: InFlight::default(),
                                pushed_up_to: 0,
                                welcomed_after,
                            },
                        );
                        self.dirty.insert(key.clone());
                        self.welcome(now, conn);
                        self.event(ProviderEvent::Authenticated {
                            conn,
                            peer: PeerIdentity::Device {
                                address: key.0,
                                device: key.1,
                            },
                        });
                    }
                    Err(e) => self.refuse(conn, e),
                }
            }
            (wire::Role::Provider, Some(wire::auth::Who::Provider(p))) => {
                let Ok(domain) = Domain::parse_canonical(&p.domain) else {
                    self.refuse(conn, err(ErrorCode::AuthFailed, "invalid domain"));
                    return;
                };
                if domain == self.domain {
                    self.refuse(conn, err(ErrorCode::AuthFailed, "that is this provider"));
                    return;
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.state = ConnState::AwaitResolve {
                        hello_nonce,
                        nonce,
                        domain: domain.clone(),
                        signature: a.signature,
                    };
                }
                if let Some(key) = self.keys.get(&domain).copied() {
                    self.finish_provider_auth(now, conn, Some(key));
                } else {
                    let waiting = self.resolving.entry(domain.clone()).or_default();
                    if waiting.is_empty() {
                        self.out.push_back(ProviderOutput::Resolve { domain });
                    }
                    waiting.push(conn);
                }
            }
            _ => self.refuse(conn, err(ErrorCode::AuthFailed, "role and identity differ")),
        }
    }

    fn welcome(&mut self, now: UnixMillis, conn: ConnectionId) {
        let bytes = protocol::encode(Body::Welcome(wire::Welcome { time_ms: now.0 }));
        self.send(conn, bytes);
    }

    fn on_resolved(&mut self, now: UnixMillis, domain: &Domain, key: Option<ProviderKey>) {
        if let Some(k) = key {
            self.keys.insert(domain.clone(), k);
        }
        for conn in self.resolving.remove(domain).unwrap_or_default() {
            self.finish_provider_auth(now, conn, key);
        }
    }

    fn finish_provider_auth(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        key: Option<ProviderKey>,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let ConnState::AwaitResolve {
            hello_nonce,
            nonce,
            domain,
            signature,
        } = &c.state
        else {
            return;
        };
        let domain = domain.clone();
        let ok = key.is_some_and(|k| {
            protocol::verify_auth(
                k.as_verifying_key(),
                nonce,
                hello_nonce,
                self.domain.as_str(),
                &c.binding,
                domain.as_str().as_bytes(),
                signature,
            )
        });
        if !ok {
            let why = match key {
                None => format!("{domain} is not in the directory"),
                Some(k) => format!("signature is not by {domain}'s provider key {k}"),
            };
            self.refuse(conn, err(ErrorCode::AuthFailed, why));
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::PeerIn(domain.clone());
        }
        self.welcome(now, conn);
        self.event(ProviderEvent::Authenticated {
            conn,
            peer: PeerIdentity::Provider(domain),
        });
    }

    /// Checks a device's Auth (SPEC.md 16.3); registers the user or applies a newer
    /// device list if one came with it.
    fn auth_device(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        hello_nonce: &[u8],
        nonce: &[u8],
        d: wire::DeviceAuth,
        signature: &[u8],
    ) -> Result<DeviceKey, ProtocolError> {
        let cert = DeviceCertificate::decode(d.certificate.clone())
            .map_err(|e| err(ErrorCode::AuthFailed, format!("certificate: {e}")))?;
        if !cert.address().is_at(&self.domain) {
            return Err(err(ErrorCode::NotYours, "a user of another provider"));
        }
        if !cert.is_valid_at(now) {
            return Err(err(ErrorCode::AuthFailed, "certificate not valid now"));
        }
        let binding = self
            .conns
            .get(&conn)
            .map(|c| c.binding.clone())
            .unwrap_or_default();
        if !protocol::verify_auth(
            cert.signing_key(),
            nonce,
            hello_nonce,
            self.domain.as_str(),
            &binding,
            &d.certificate,
            signature,
        ) {
            return Err(err(ErrorCode::AuthFailed, "bad signature"));
        }
        let key = (cert.address().clone(), cert.device_id());
        let listed = |p: &Self| {
            p.durable
                .users
                .get(cert.address())
                .and_then(|u| u.list.get(cert.device_id()))
                == Some(&cert)
        };
        if !d.device_list.is_empty() {
            let list = DeviceList::decode_for(d.device_list, cert.address())
                .map_err(|e| err(ErrorCode::Invalid, format!("device list: {e}")))?;
            if list.identity_key() != cert.identity_key()
                || list.get(cert.device_id()) != Some(&cert)
            {
                return Err(err(
                    ErrorCode::Invalid,
                    "device list does not list this device",
                ));
            }
            match self.apply_list(list) {
                Ok(()) => {}
                Err(e) if e.code == Some(ErrorCode::StaleDeviceList) && listed(self) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.durable.users.contains_key(cert.address()) {
            return Err(err(
                ErrorCode::UnknownUser,
                "no such user; send the device list",
            ));
        }
        if !listed(self) {
            return Err(err(
                ErrorCode::UnknownDevice,
                "device not on the user's list",
            ));
        }
        Ok(key)
    }

    /// Stores a user's new device list (registering the user if new).
    fn apply_list(&mut self, list: DeviceList) -> Result<(), ProtocolError> {
        let address = list.address().clone();
        match self.durable.users.get(&address) {
            None => {
                if !self.open_registration {
                    return Err(err(ErrorCode::RegistrationClosed, "registration is closed"));
                }
                self.durable.put_list(list, &mut self.ops);
                self.event(ProviderEvent::Registered { address });
                Ok(())
            }
            Some(u) => {
                if u.list.identity_key() != list.identity_key() {
                    return Err(err(
                        ErrorCode::IdentityMismatch,
                        "signed by another identity key",
                    ));
                }
                if u.list.encoded() == list.encoded() {
                    return Ok(());
                }
                if list.serial() <= u.list.serial() {
                    return Err(err(
                        ErrorCode::StaleDeviceList,
                        format!("serial {} not above {}", list.serial(), u.list.serial()),
                    ));
                }
                let removed = self.durable.put_list(list, &mut self.ops);
                for dev in removed {
                    // Closed after the current request is answered, so a device that
                    // removed itself gets its `Done` first.
                    if let Some(o) = self.online.get(&(address.clone(), dev)) {
                        self.to_refuse.push(o.conn);
                    }
                }
                Ok(())
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Device requests

    fn on_device_request(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        key: DeviceKey,
        r: wire::Request,
    ) {
        use wire::request::Body as Rq;
        let id = r.id;
        if let Err(e) = self.rate(RateKey::Device(key.clone()), now) {
            self.send(conn, error_response(id, &e));
            return;
        }
        let result = match r.body {
            Some(Rq::PublishDeviceList(p)) => DeviceList::decode_for(p.device_list, &key.0)
                .map_err(|e| err(ErrorCode::Invalid, format!("device list: {e}")))
                .and_then(|l| self.apply_list(l))
                .map(|()| done(id)),
            Some(Rq::PublishPrekeys(p)) => self.publish_prekeys(&key, p).map(|()| done(id)),
            Some(Rq::Submit(s)) => self.submit(now, &key, s.envelopes).map(|()| done(id)),
            Some(Rq::FetchBundles(f)) => {
                match self.fetch(now, conn, id, &key.0, Fetch::Bundles(f)) {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => return,
                    Err(e) => Err(e),
                }
            }
            Some(Rq::FetchDeviceList(f)) => {
                match self.fetch(now, conn, id, &key.0, Fetch::List(f)) {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => return,
                    Err(e) => Err(e),
                }
            }
            Some(Rq::SubmitGroup(g)) => self.submit_group(now, &key, g).map(|()| done(id)),
            Some(Rq::OrderGroupChange(o)) => match self.order_change(now, conn, id, &key, o) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => return,
                Err(e) => Err(e),
            },
            Some(Rq::Relay(_)) | None => Err(err(ErrorCode::Unexpected, "not a device request")),
        };
        let bytes = result.unwrap_or_else(|e| error_response(id, &e));
        self.send(conn, bytes);
    }

    fn publish_prekeys(
        &mut self,
        key: &DeviceKey,
        p: wire::PublishPrekeys,
    ) -> Result<(), ProtocolError> {
        let st = self
            .durable
            .device(&key.0, key.1)
            .ok_or_else(|| err(ErrorCode::UnknownDevice, "device removed"))?;
        let cert = st.cert.clone();
        let held = st.one_time.len();
        let floor = st.one_time_floor;
        let pool: std::collections::HashSet<u32> = st.one_time.keys().copied().collect();
        let newer = |new: &SignedPrekey, cur: &Option<SignedPrekey>| {
            cur.as_ref().is_none_or(|c| new.id() > c.id())
        };
        let (cur_signed, cur_kem) = (st.signed.clone(), st.kem.clone());
        let decode = |b: Bytes, kind: PrekeyKind, one_time: bool, what: &str| {
            SignedPrekey::decode(b, &cert)
                .ok()
                .filter(|k| k.kind() == kind && k.is_one_time() == one_time)
                .ok_or_else(|| err(ErrorCode::Invalid, format!("{what} prekey refused")))
        };
        let signed = decode(p.signed_prekey, PrekeyKind::X25519, false, "signed")?;
        let kem = decode(p.kem_prekey, PrekeyKind::MlKem768, false, "ML-KEM")?;
        let mut one_time = p
            .one_time
            .into_iter()
            .map(|b| decode(b, PrekeyKind::X25519, true, "one-time"))
            .collect::<Result<Vec<_>, _>>()?;
        // Only ids above the floor are new (a resent publish must not put back a
        // prekey that was handed out meanwhile); add them in id order.
        one_time.retain(|k| k.id() > floor && !pool.contains(&k.id()));
        one_time.sort_by_key(SignedPrekey::id);
        one_time.dedup_by_key(|k| k.id());
        if held + one_time.len() > MAX_PROVIDER_ONE_TIME_PREKEYS {
            return Err(err(
                ErrorCode::TooMany,
                format!("more than {MAX_PROVIDER_ONE_TIME_PREKEYS} one-time prekeys"),
            ));
        }
        // The current prekeys move forward only: a resent older publish cannot undo
        // a rotation.
        if newer(&signed, &cur_signed) || newer(&kem, &cur_kem) {
            let signed = if newer(&signed, &cur_signed) {
                Some(signed)
            } else {
                cur_signed
            };
            let kem = if newer(&kem, &cur_kem) {
                Some(kem)
            } else {
                cur_kem
            };
            if let (Some(signed), Some(kem)) = (signed, kem) {
                self.durable
                    .put_prekeys(&key.0, key.1, signed, kem, &mut self.ops);
            }
        }
        for k in one_time {
            self.durable.add_one_time(&key.0, key.1, k, &mut self.ops);
        }
        if let Some(st) = self.durable.device_mut(&key.0, key.1)
            && st.one_time.len() >= PROVIDER_PREKEY_LOW_WATERMARK
        {
            st.low_notified = false;
        }
        Ok(())
    }

    /// Accepts a device's envelopes, all or nothing (SPEC.md 16.4).
    fn submit(
        &mut self,
        now: UnixMillis,
        key: &DeviceKey,
        envelopes: Vec<Bytes>,
    ) -> Result<(), ProtocolError> {
        enum Dest {
            Local(DeviceKey),
            /// The queue item (made from the header decoded here, not decoded again) and
            /// the index of its domain in `remote_counts`.
            Remote(usize, Box<OutItem>),
        }
        let mut plan = Vec::with_capacity(envelopes.len());
        let mut local_counts: HashMap<DeviceKey, usize> = HashMap::new();
        // Few domains per submit: a list, searched by text, so that a `Domain` is built
        // once per domain rather than once per envelope.
        let mut remote_counts: Vec<(Domain, usize)> = Vec::new();
        for bytes in envelopes {
            let env = UnverifiedEnvelope::decode(bytes.clone())
                .map_err(|e| err(ErrorCode::Invalid, format!("envelope: {}", e.code())))?;
            let h = env.claimed_header();
            if h.sender != key.0 || h.sender_device != key.1 {
                return Err(err(
                    ErrorCode::NotYours,
                    "envelope sender is not this device",
                ));
            }
            let dk = dedup_key(
                &h.sender,
                h.sender_device,
                h.message_id,
                &h.recipient,
                h.recipient_device,
            );
            let local = h.recipient.is_at(&self.domain);
            if local {
                let user = self
                    .durable
                    .users
                    .get(&h.recipient)
                    .ok_or_else(|| err(ErrorCode::UnknownUser, h.recipient.to_string()))?;
                if !user.devices.contains_key(&h.recipient_device) {
                    return Err(err(ErrorCode::UnknownDevice, h.recipient.to_string()));
                }
            }
            // Stored before (or twice in this submit): not stored again, not counted.
            if self.durable.seen(&dk) || plan.iter().any(|(k, _, _)| *k == dk) {
                continue;
            }
            let h = env.into_claimed_header();
            let dest = if local {
                let dkey = (h.recipient, h.recipient_device);
                *local_counts.entry(dkey.clone()).or_default() += 1;
                Dest::Local(dkey)
            } else {
                let domain = h.recipient.domain_str();
                let i = match remote_counts.iter().position(|(d, _)| d.as_str() == domain) {
                    Some(i) => i,
                    None => {
                        remote_counts.push((h.recipient.domain(), 0));
                        remote_counts.len() - 1
                    }
                };
                if let Some((_, n)) = remote_counts.get_mut(i) {
                    *n += 1;
                }
                Dest::Remote(i, Box::new(OutItem::with_header(bytes.clone(), h, now)))
            };
            plan.push((dk, dest, bytes));
        }
        for (dkey, n) in &local_counts {
            let (depth, room) = self
                .durable
                .device(&dkey.0, dkey.1)
                .map_or((0, u64::MAX), |d| (d.depth(), d.seq_room()));
            if depth + n > self.limits.max_mailbox_depth || room < *n as u64 {
                return Err(
                    err(ErrorCode::MailboxFull, dkey.0.to_string()).retry_after(RESEND_AFTER_MS)
                );
            }
        }
        for (d, n) in &remote_counts {
            let depth = self.durable.outbound.get(d).map_or(0, BTreeMap::len);
            if depth + n > self.limits.max_remote_queue_depth {
                return Err(self.queue_full(d));
            }
        }
        let expiry = now.saturating_add(DEDUP_RETENTION_MS);
        for (dk, dest, bytes) in plan {
            self.durable
                .remember(dk, expiry, MAX_DEDUP_ENTRIES, &mut self.ops);
            match dest {
                Dest::Local(dkey) => self.deliver_local(&dkey, bytes, now),
                Dest::Remote(i, item) => {
                    if let Some((domain, _)) = remote_counts.get(i) {
                        self.queue_remote(domain, item);
                    }
                }
            }
        }
        Ok(())
    }

    /// The answer to a request that would overfill the queue towards `domain`: try again
    /// soon if that provider is connected (its queue is moving), later if not.
    fn queue_full(&self, domain: &Domain) -> ProtocolError {
        let moving = self
            .remotes
            .get(domain)
            .and_then(|r| r.conn)
            .and_then(|c| self.conns.get(&c))
            .is_some_and(|c| matches!(c.state, ConnState::PeerOut(_)));
        let wait = if moving {
            RETRY_INITIAL_MS
        } else {
            RESEND_AFTER_MS
        };
        err(ErrorCode::QueueFull, domain.to_string()).retry_after(wait)
    }

    /// Queues an item for a remote provider, durably, and marks it ready to send.
    fn queue_remote(&mut self, domain: &Domain, item: Box<OutItem>) {
        let seq = self.durable.enqueue_out(domain, item, &mut self.ops);
        // Looked up by text first: a `Domain` key costs an allocation.
        match self.remotes.get_mut(domain.as_str()) {
            Some(r) => {
                r.ready.insert(seq);
            }
            None => {
                self.remotes
                    .entry(domain.clone())
                    .or_default()
                    .ready
                    .insert(seq);
            }
        }
        if !self.dirty_remotes.contains(domain.as_str()) {
            self.dirty_remotes.insert(domain.clone());
        }
    }

    fn deliver_local(&mut self, dkey: &DeviceKey, bytes: Bytes, now: UnixMillis) {
        self.store_mail(dkey, MailBody::Envelope(bytes), now);
    }

    fn notify(&mut self, dkey: &DeviceKey, notice: wire::notice::Body, now: UnixMillis) {
        let notice = wire::Notice { body: Some(notice) };
        self.store_mail(dkey, MailBody::Notice(Box::new(notice)), now);
    }

    /// Appends an item to a local device's mailbox (durably, with the next commit) and
    /// marks the device for delivery.
    fn store_mail(&mut self, dkey: &DeviceKey, body: MailBody, now: UnixMillis) {
        let item = MailItem {
            received: now,
            body,
        };
        if self
            .durable
            .enqueue_mail(&dkey.0, dkey.1, item, &mut self.ops)
            .is_some()
            && !self.dirty.contains(dkey)
        {
            self.dirty.insert(dkey.clone());
        }
    }

    fn on_ack(&mut self, key: DeviceKey, seqs: &[u64]) {
        let mut online = self.online.get_mut(&key);
        self.durable
            .remove_mail(&key.0, key.1, seqs, &mut self.lazy_ops, |seq| {
                if let Some(o) = online.as_mut() {
                    o.in_flight.remove(seq);
                }
            });
        self.dirty.insert(key);
    }

    // -----------------------------------------------------------------------------
    // Fetches

    /// Answers a fetch for a local user, or forwards it to the user's provider
    /// (returning `None`: the answer comes later).
    fn fetch(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        id: u64,
        requester: &Address,
        what: Fetch,
    ) -> Result<Option<Bytes>, ProtocolError> {
        let target = Address::parse_canonical(what.address())
            .map_err(|e| err(ErrorCode::Invalid, format!("address: {e}")))?;
        self.rate(RateKey::Fetch(requester.clone()), now)?;
        if target.is_at(&self.domain) {
            return self
                .answer_fetch(now, id, requester, &target, what)
                .map(Some);
        }
        let domain = target.domain();
        let body = match what {
            Fetch::Bundles(mut f) => {
                f.requester = requester.as_str().to_owned();
                wire::request::Body::FetchBundles(f)
            }
            Fetch::List(mut f) => {
                f.requester = requester.as_str().to_owned();
                wire::request::Body::FetchDeviceList(f)
            }
        };
        self.forward(now, conn, id, domain, body)
    }

    /// Forwards a device's request to a remote provider; its answer goes back to the
    /// device under the device's request id (SPEC.md 16.5). Returns `None`: the answer
    /// comes later.
    fn forward(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        id: u64,
        domain: Domain,
        body: wire::request::Body,
    ) -> Result<Option<Bytes>, ProtocolError> {
        // A resend of a request still being forwarded joins it (SPEC.md 16.5).
        if self
            .forwards
            .values()
            .any(|f| f.origin == conn && f.origin_request == id)
        {
            return Ok(None);
        }
        if self.forwards.len() >= MAX_PENDING_REMOTE_FETCHES {
            return Err(err(ErrorCode::RateLimited, "too many fetches in flight")
                .retry_after(RESEND_AFTER_MS));
        }
        let peer_id = self.take_request_id();
        let deadline = now.saturating_add(FORWARD_TIMEOUT_MS);
        self.forwards.insert(
            peer_id,
            Forward {
                origin: conn,
                origin_request: id,
                domain: domain.clone(),
                request: wire::Request {
                    id: peer_id,
                    body: Some(body),
                },
                deadline,
                sent_at: None,
            },
        );
        self.timers.insert((deadline, TimerKey::Forward(peer_id)));
        self.remotes
            .entry(domain.clone())
            .or_default()
            .fetches
            .insert(peer_id);
        self.dirty_remotes.insert(domain);
        Ok(None)
    }

    fn answer_fetch(
        &mut self,
        now: UnixMillis,
        id: u64,
        requester: &Address,
        target: &Address,
        what: Fetch,
    ) -> Result<Bytes, ProtocolError> {
        let user = self
            .durable
            .users
            .get(target)
            .ok_or_else(|| err(ErrorCode::UnknownUser, target.to_string()))?;
        let list = user.list.encoded().clone();
        let listed: Vec<DeviceId> = user.list.device_ids().collect();
        let f = match what {
            Fetch::List(_) => {
                return Ok(response(
                    id,
                    wire::response::Body::DeviceList(wire::DeviceListResponse {
                        device_list: list,
                    }),
                ));
            }
            Fetch::Bundles(f) => f,
        };
        // In list order; ids not on the list and repeats are ignored (SPEC.md 16.5).
        let named: std::collections::HashSet<DeviceId> = f
            .devices
            .iter()
            .filter_map(|d| DeviceId::from_slice(d))
            .collect();
        let wanted: Vec<DeviceId> = listed
            .into_iter()
            .filter(|d| f.devices.is_empty() || named.contains(d))
            .collect();
        let mut bundles = Vec::with_capacity(wanted.len());
        for dev in wanted {
            let Some(st) = self.durable.device(target, dev) else {
                continue;
            };
            let (Some(signed), Some(kem)) = (st.signed.clone(), st.kem.clone()) else {
                continue;
            };
            let cert = st.cert.clone();
            let has_one_time = !st.one_time.is_empty();
            // A one-time prekey only within the requester's allowance (SPEC.md 16.6).
            let one_time =
                if has_one_time && self.rate(RateKey::OneTime(requester.clone()), now).is_ok() {
                    self.durable.take_one_time(target, dev, &mut self.ops)
                } else {
                    None
                };
            if let Some(st) = self.durable.device_mut(target, dev) {
                let remaining = st.one_time.len();
                if remaining < PROVIDER_PREKEY_LOW_WATERMARK && !st.low_notified {
                    st.low_notified = true;
                    self.notify(
                        &(target.clone(), dev),
                        wire::notice::Body::PrekeysLow(wire::PrekeysLow {
                            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                        }),
                        now,
                    );
                }
            }
            if let Ok(b) = PrekeyBundle::new(cert, signed, kem, one_time) {
                bundles.push(b.encode());
            }
        }
        Ok(response(
            id,
            wire::response::Body::Bundles(wire::Bundles {
                device_list: list,
                bundles,
            }),
        ))
    }

    // -----------------------------------------------------------------------------
    // Provider to provider

    fn on_peer_request(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        domain: Domain,
        r: wire::Request,
    ) {
        use wire::request::Body as Rq;
        let id = r.id;
        if let Err(e) = self.rate(RateKey::Provider(domain.clone()), now) {
            self.send(conn, error_response(id, &e));
            return;
        }
        let result = match r.body {
            Some(Rq::Relay(relay)) => Ok(self.relay_in(now, &domain, id, relay)),
            Some(Rq::OrderGroupChange(o)) => self.peer_order_change(now, id, &domain, o),
            Some(Rq::FetchBundles(f)) => self.peer_fetch(now, id, &domain, Fetch::Bundles(f)),
            Some(Rq::FetchDeviceList(f)) => self.peer_fetch(now, id, &domain, Fetch::List(f)),
            _ => Err(err(ErrorCode::Unexpected, "not a provider request")),
        };
        let bytes = result.unwrap_or_else(|e| error_response(id, &e));
        self.send(conn, bytes);
    }

    fn peer_fetch(
        &mut self,
        now: UnixMillis,
        id: u64,
        domain: &Domain,
        what: Fetch,
    ) -> Result<Bytes, ProtocolError> {
        let requester = Address::parse_canonical(what.requester())
            .map_err(|_| err(ErrorCode::Invalid, "requester"))?;
        if !requester.is_at(domain) {
            return Err(err(
                ErrorCode::NotYours,
                "requester is not at the relaying provider",
            ));
        }
        let target = Address::parse_canonical(what.address())
            .map_err(|e| err(ErrorCode::Invalid, format!("address: {e}")))?;
        if !target.is_at(&self.domain) {
            return Err(err(ErrorCode::NotYours, "not a user of this provider"));
        }
        self.rate(RateKey::Fetch(requester.clone()), now)?;
        self.answer_fetch(now, id, &requester, &target, what)
    }

    /// Stores relayed envelopes; one result each (SPEC.md 16.5).
    fn relay_in(&mut self, now: UnixMillis, peer: &Domain, id: u64, relay: wire::Relay) -> Bytes {
        let expiry = now.saturating_add(DEDUP_RETENTION_MS);
        let mut results = Vec::with_capacity(relay.envelopes.len() + relay.groups.len());
        for bytes in relay.envelopes {
            let r = self.relay_one(now, peer, bytes, expiry);
            results.push(match r {
                Ok(()) => wire::Error::default(),
                Err(e) => e.to_wire(),
            });
        }
        for g in relay.groups {
            let r = self.relay_group(now, peer, g, expiry);
            results.push(match r {
                Ok(()) => wire::Error::default(),
                Err(e) => e.to_wire(),
            });
        }
        response(
            id,
            wire::response::Body::RelayResult(wire::RelayResult { results }),
        )
    }

    fn relay_one(
        &mut self,
        now: UnixMillis,
        peer: &Domain,
        bytes: Bytes,
        expiry: UnixMillis,
    ) -> Result<(), ProtocolError> {
        let env = UnverifiedEnvelope::decode(bytes.clone())
            .map_err(|e| err(ErrorCode::Invalid, format!("envelope: {}", e.code())))?;
        let h = env.claimed_header();
        // VAL-PROTO: a provider relays only its own users' envelopes.
        if !h.sender.is_at(peer) {
            return Err(err(
                ErrorCode::NotYours,
                "sender is not at the relaying provider",
            ));
        }
        if !h.recipient.is_at(&self.domain) {
            return Err(err(
                ErrorCode::NotYours,
                "recipient is not at this provider",
            ));
        }
        let dk = dedup_key(
            &h.sender,
            h.sender_device,
            h.message_id,
            &h.recipient,
            h.recipient_device,
        );
        let user = self
            .durable
            .users
            .get(&h.recipient)
            .ok_or_else(|| err(ErrorCode::UnknownUser, h.recipient.to_string()))?;
        let dev = user
            .devices
            .get(&h.recipient_device)
            .ok_or_else(|| err(ErrorCode::UnknownDevice, h.recipient.to_string()))?;
        if self.durable.seen(&dk) {
            return Ok(());
        }
        if dev.depth() >= self.limits.max_mailbox_depth || dev.seq_room() == 0 {
            return Err(
                err(ErrorCode::MailboxFull, h.recipient.to_string()).retry_after(RESEND_AFTER_MS)
            );
        }
        let h = env.into_claimed_header();
        let dkey = (h.recipient, h.recipient_device);
        self.durable
            .remember(dk, expiry, MAX_DEDUP_ENTRIES, &mut self.ops);
        self.deliver_local(&dkey, bytes, now);
        Ok(())
    }

    fn on_peer_response(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        domain: &Domain,
        r: wire::Response,
    ) {
        if let Some(f) = self.forwards.get(&r.id) {
            if &f.domain != domain {
                return;
            }
            let Some(f) = self.forwards.remove(&r.id) else {
                return;
            };
            if let Some(rem) = self.remotes.get_mut(domain) {
                rem.fetches.remove(&r.id);
            }
            if let Some(body) = r.body {
                let bytes = response(f.origin_request, body);
                if self.conns.contains_key(&f.origin) {
                    self.send(f.origin, bytes);
                }
            }
            return;
        }
        let Some(rem) = self.remotes.get_mut(domain) else {
            return;
        };
        if rem.conn != Some(conn) {
            return;
        }
        let Some((seqs, _)) = rem.in_flight.remove(&r.id) else {
            return;
        };
        rem.in_flight_items = rem.in_flight_items.saturating_sub(seqs.len());
        let results = match r.body {
            Some(wire::response::Body::RelayResult(rr)) if rr.results.len() == seqs.len() => {
                rr.results
            }
            Some(wire::response::Body::Error(e)) => vec![e; seqs.len()],
            _ => vec![ErrorCode::Unavailable.into_wire("malformed relay result"); seqs.len()],
        };
        // Whether any entry of this queue was ever retried: if none was, no entry here has
        // a count to forget (most relays), and the loop skips a lookup per entry.
        let retried = self
            .remotes
            .get(domain)
            .is_some_and(|r| !r.attempts.is_empty());
        for (seq, res) in seqs.into_iter().zip(results) {
            if res.code.is_empty() {
                self.durable.remove_out(domain, seq, &mut self.lazy_ops);
                if retried && let Some(r) = self.remotes.get_mut(domain) {
                    r.attempts.remove(&seq);
                }
                continue;
            }
            let e = ProtocolError::from_wire(&res);
            if e.retryable {
                // The n-th retry of this envelope waits the n-th backoff delay.
                let attempt = self.remotes.get_mut(domain).map_or(0, |r| {
                    let a = r.attempts.entry(seq).or_default();
                    *a = a.saturating_add(1);
                    *a - 1
                });
                let delay = self
                    .backoff
                    .delay(attempt, &mut self.rng)
                    .max(e.retry_after_ms);
                let at = now.saturating_add(delay);
                if let Some(rem) = self.remotes.get_mut(domain) {
                    rem.waiting.insert((at, seq));
                }
                self.timers.insert((at, TimerKey::Remote(domain.clone())));
            } else {
                self.give_up(now, domain, seq, e);
            }
        }
        self.dirty_remotes.insert(domain.clone());
    }

    /// Drops a queued envelope for good and tells its sender device.
    fn give_up(&mut self, now: UnixMillis, domain: &Domain, seq: u64, e: ProtocolError) {
        let Some(item) = self.durable.remove_out(domain, seq, &mut self.ops) else {
            return;
        };
        if let Some(r) = self.remotes.get_mut(domain) {
            r.ready.remove(&seq);
            r.attempts.remove(&seq);
            r.waiting.retain(|(_, s)| *s != seq);
        }
        self.notify(
            &(item.sender.clone(), item.sender_device),
            wire::notice::Body::Undeliverable(wire::Undeliverable {
                message_id: Bytes::copy_from_slice(item.message_id.as_bytes()),
                recipient: item.recipient.as_str().to_owned(),
                device: Bytes::copy_from_slice(item.recipient_device.as_bytes()),
                reason: Some(e.to_wire()),
            }),
            now,
        );
        self.event(ProviderEvent::Undeliverable {
            message_id: item.message_id,
            recipient: item.recipient,
            device: item.recipient_device,
            error: e,
        });
    }

    /// Sends what can be sent to a remote provider, connecting first if needed.
    fn pump_remote(&mut self, now: UnixMillis, domain: &Domain) {
        let Some(r) = self.remotes.get_mut(domain) else {
            return;
        };
        // Entries whose retry time has come.
        while let Some(&(at, seq)) = r.waiting.first() {
            if at > now {
                break;
            }
            r.waiting.pop_first();
            r.ready.insert(seq);
        }
        let has_work = !r.ready.is_empty() || !r.fetches.is_empty();
        let Some(conn) = r.conn else {
            if has_work && !r.connecting {
                if r.next_connect <= now {
                    r.connecting = true;
                    self.send_early(ProviderOutput::Connect {
                        domain: domain.clone(),
                    });
                } else {
                    self.timers
                        .insert((r.next_connect, TimerKey::Remote(domain.clone())));
                }
            }
            return;
        };
        let authenticated = matches!(
            self.conns.get(&conn).map(|c| &c.state),
            Some(ConnState::PeerOut(_))
        );
        if !authenticated {
            return;
        }
        // Forwarded fetches.
        let fetches: Vec<u64> = std::mem::take(&mut r.fetches).into_iter().collect();
        for id in fetches {
            let Some(f) = self.forwards.get_mut(&id) else {
                continue;
            };
            f.sent_at = Some(now);
            let bytes = protocol::encode(Body::Request(f.request.clone()));
            self.send_early(ProviderOutput::Transmit { conn, bytes });
        }
        // Relays, in batches.
        let Some(r) = self.remotes.get_mut(domain) else {
            return;
        };
        let queue = self.durable.outbound.get(domain);
        let mut relays = Vec::new();
        while r.in_flight_items < MAX_RELAY_IN_FLIGHT && !r.ready.is_empty() {
            // Envelopes first, then group relays: the order of the results (SPEC.md 20.4).
            let mut seqs = Vec::new();
            let mut envelopes = Vec::new();
            let mut group_seqs = Vec::new();
            let mut groups = Vec::new();
            let mut size = 0;
            while seqs.len() + group_seqs.len() < MAX_RELAY_ENVELOPES && size < FRAME_FILL {
                let Some(seq) = r.ready.pop_first() else {
                    break;
                };
                let Some(item) = queue.and_then(|q| q.get(&seq)) else {
                    continue;
                };
                size += item.wire_len();
                match &item.group {
                    None => {
                        seqs.push(seq);
                        envelopes.push(item.envelope.clone());
                    }
                    Some(g) => {
                        group_seqs.push(seq);
                        groups.push(g.clone());
                    }
                }
            }
            seqs.extend(group_seqs);
            if seqs.is_empty() {
                break;
            }
            self.next_request = self.next_request.wrapping_add(1);
            let id = self.next_request;
            r.in_flight_items += seqs.len();
            r.in_flight.insert(id, (seqs, now));
            let bytes = protocol::encode(Body::Request(wire::Request {
                id,
                body: Some(wire::request::Body::Relay(wire::Relay {
                    envelopes,
                    groups,
                })),
            }));
            relays.push(ProviderOutput::Transmit { conn, bytes });
        }
        if !r.in_flight.is_empty() {
            self.timers.insert((
                now.saturating_add(RESEND_AFTER_MS),
                TimerKey::Remote(domain.clone()),
            ));
        }
        for o in relays {
            self.send_early(o);
        }
    }

    /// Relays unanswered for too long go back to ready (same envelopes, new request).
    fn resend_remote(&mut self, now: UnixMillis, domain: &Domain) {
        if let Some(r) = self.remotes.get_mut(domain) {
            let stale: Vec<u64> = r
                .in_flight
                .iter()
                .filter(|(_, (_, at))| at.saturating_add(RESEND_AFTER_MS) <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                if let Some((seqs, _)) = r.in_flight.remove(&id) {
                    r.in_flight_items = r.in_flight_items.saturating_sub(seqs.len());
                    r.ready.extend(seqs);
                }
            }
        }
        for (id, f) in &self.forwards {
            if &f.domain == domain
                && f.sent_at
                    .is_some_and(|t| t.saturating_add(RESEND_AFTER_MS) <= now)
                && let Some(r) = self.remotes.get_mut(domain)
            {
                r.fetches.insert(*id);
            }
        }
        self.dirty_remotes.insert(domain.clone());
    }

    // -----------------------------------------------------------------------------
    // Mailbox delivery

    fn pump_device(&mut self, now: UnixMillis, key: &DeviceKey) {
        let early = self
            .online
            .get(key)
            .is_some_and(|o| self.early_delivery(o.welcomed_after));
        let Some(o) = self.online.get_mut(key) else {
            return;
        };
        let Some(st) = self.durable.device(&key.0, key.1) else {
            return;
        };
        // Resend what went unacknowledged too long (an item no longer in the mailbox is
        // forgotten), then what is new.
        let mut seqs = Vec::new();
        for seq in o.in_flight.due_by(now) {
            if st.mailbox.contains_key(&seq) {
                seqs.push(seq);
            } else {
                o.in_flight.remove(seq);
            }
        }
        let room = MAX_DELIVER_IN_FLIGHT.saturating_sub(o.in_flight.len());
        seqs.extend(
            st.mailbox
                .range(o.pushed_up_to.saturating_add(1)..)
                .map(|(s, _)| *s)
                .take(room),
        );
        let conn = o.conn;
        // Frames, each with whether it may leave before the batch being written.
        let mut frames = Vec::new();
        let mut items = Vec::new();
        let mut size = 0;
        let mut frame_early = early;
        for seq in seqs {
            let Some(item) = st.mailbox.get(&seq) else {
                continue;
            };
            o.in_flight.insert(seq, now);
            o.pushed_up_to = o.pushed_up_to.max(seq);
            size += item.size();
            frame_early &= item.may_leave_early();
            items.push(wire::MailboxItem {
                seq,
                item: Some(item.to_wire()),
            });
            if items.len() >= MAX_DELIVER_ITEMS || size >= FRAME_FILL {
                frames.push((std::mem::take(&mut items), frame_early));
                size = 0;
                frame_early = early;
            }
        }
        if !items.is_empty() {
            frames.push((items, frame_early));
        }
        let next = o.in_flight.next_due();
        for (items, early) in frames {
            let bytes = protocol::encode(Body::Deliver(wire::Deliver { items }));
            let o = ProviderOutput::Transmit { conn, bytes };
            if early {
                self.early_deliveries += 1;
                self.ready.push_back(o);
            } else {
                self.out.push_back(o);
            }
        }
        if let Some(t) = next {
            self.timers.insert((t, TimerKey::Push(key.clone())));
        }
    }

    // -----------------------------------------------------------------------------
    // Timers

    /// Runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        self.now = self.now.max(now);
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.timers.pop_first() else {
                break;
            };
            match key {
                TimerKey::Sweep => {
                    self.sweep(now);
                    self.timers
                        .insert((now.saturating_add(SWEEP_INTERVAL_MS), TimerKey::Sweep));
                }
                TimerKey::Auth(conn) => {
                    let pending = self.conns.get(&conn).is_some_and(|c| {
                        !matches!(
                            c.state,
                            ConnState::Device(_) | ConnState::PeerIn(_) | ConnState::PeerOut(_)
                        ) && c.opened.saturating_add(AUTH_TIMEOUT_MS) <= now
                    });
                    if pending {
                        self.refuse(conn, err(ErrorCode::AuthFailed, "authentication timed out"));
                    }
                }
                TimerKey::Push(key) => {
                    self.dirty.insert(key);
                }
                TimerKey::Remote(domain) => self.resend_remote(now, &domain),
                TimerKey::Forward(id) => {
                    if self.forwards.get(&id).is_some_and(|f| f.deadline <= now)
                        && let Some(f) = self.forwards.remove(&id)
                    {
                        if let Some(r) = self.remotes.get_mut(&f.domain) {
                            r.fetches.remove(&id);
                        }
                        let e = err(
                            ErrorCode::Unreachable,
                            format!("{} did not answer", f.domain),
                        )
                        .retry_after(RESEND_AFTER_MS);
                        if self.conns.contains_key(&f.origin) {
                            self.send(f.origin, error_response(f.origin_request, &e));
                        }
                    }
                }
            }
        }
    }

    fn sweep(&mut self, now: UnixMillis) {
        self.durable.expire_dedup(now, &mut self.ops);
        let expiry = self.limits.relay_expiry_ms;
        let expired: Vec<(Domain, u64)> = self
            .durable
            .outbound
            .iter()
            .flat_map(|(d, q)| {
                q.iter()
                    .filter(|(_, i)| i.accepted.saturating_add(expiry) <= now)
                    .map(move |(s, _)| (d.clone(), *s))
            })
            .collect();
        for (d, seq) in expired {
            let in_flight = self
                .remotes
                .get(&d)
                .is_some_and(|r| r.in_flight.values().any(|(s, _)| s.contains(&seq)));
            if !in_flight {
                self.give_up(
                    now,
                    &d,
                    seq,
                    err(ErrorCode::Expired, format!("{d} unreachable for too long")),
                );
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Outputs

    /// The next thing to do. Call until it returns [`ProviderOutput::Timeout`] after
    /// every input. Commits pending writes before releasing anything.
    pub fn poll_output(&mut self, now: UnixMillis) -> ProviderOutput {
        self.now = self.now.max(now);
        loop {
            if let Some(key) = self.dirty.pop_first() {
                self.pump_device(now, &key);
                continue;
            }
            if let Some(d) = self.dirty_remotes.pop_first() {
                self.pump_remote(now, &d);
                continue;
            }
            break;
        }
        if self.lazy_ops.is_empty() {
            self.lazy_since = None;
        } else if self.lazy_since.is_none() {
            self.lazy_since = Some(now);
        }
        let lazy_due = self.lazy_ops.len() >= LAZY_FLUSH_OPS
            || self
                .lazy_since
                .is_some_and(|t| t.saturating_add(LAZY_FLUSH_MS) <= now);
        let due = !self.ops.is_empty() || lazy_due;
        if self.deferred.is_none() {
            if due {
                let ops = self.take_batch();
                match self.store.commit_owned(ops) {
                    Ok(()) => self.commits += 1,
                    Err(e) => self.rollback(now, e),
                }
            }
            if let Some(o) = self.out.pop_front() {
                return o;
            }
        } else {
            if let Some(o) = self.ready.pop_front() {
                return o;
            }
            if !self.commit_outstanding() {
                if due {
                    let mut ops = self.take_batch();
                    let held: Vec<ProviderOutput> = self.out.drain(..).collect();
                    if let Some(d) = self.deferred.as_mut() {
                        let id = d.next_id;
                        d.next_id = d.next_id.wrapping_add(1);
                        d.in_flight = Some((id, held));
                        // A new mailbox sequence epoch rides with the first batch after
                        // a start or a failed batch; items are delivered ahead of their
                        // own writes once it is durable (SPEC.md 16.12 rule 5).
                        if d.epoch_durable_at.is_none() {
                            self.durable.begin_seq_epoch(&mut ops);
                            d.epoch_durable_at = Some(id.saturating_add(1));
                        }
                        return ProviderOutput::Commit(CommitBatch { id, ops });
                    }
                }
                // Nothing staged and nothing outstanding: what is left depends on
                // nothing that is not durable.
                if let Some(o) = self.out.pop_front() {
                    return o;
                }
            }
        }
        // While a batch is out the waiting deletions cannot leave before its answer (an
        // input, after which the driver polls again): no wake-up for them, or a deadline
        // already past would make the driver spin until the answer comes.
        let flush = self
            .lazy_since
            .filter(|_| !self.commit_outstanding())
            .map(|t| t.saturating_add(LAZY_FLUSH_MS));
        let timer = self.timers.first().map(|(t, _)| *t);
        ProviderOutput::Timeout(match (timer, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The staged writes as one batch: `ops`, then the deletions that waited (with
    /// deferred commits a relay goes out, and can be acknowledged, before its queue entry
    /// is committed: the deletion must follow the put), then the sequence numbers the
    /// batch advanced, once each.
    fn take_batch(&mut self) -> Vec<StoreOp> {
        // The next batch starts with room for as many writes as this one: under load
        // batches hold thousands, and growing each from empty copied every one of them
        // again and again (a tenth of a provider's CPU at saturation, on fresh pages).
        let room = self.ops.len();
        let mut ops = std::mem::replace(&mut self.ops, Vec::with_capacity(room));
        ops.append(&mut self.lazy_ops);
        self.lazy_since = None;
        self.durable.store_seqs(&mut ops);
        ops
    }

    /// A commit failed: drop everything that depended on it and reload.
    fn rollback(&mut self, now: UnixMillis, e: StoreError) {
        // Every connection is closed, in order (the same outputs for the same inputs),
        // those let go already whose `Close` waited with what is dropped included (the
        // driver would keep them open otherwise).
        let held = self
            .deferred
            .as_mut()
            .and_then(|d| d.in_flight.take())
            .map(|(_, held)| held)
            .unwrap_or_default();
        let mut closes: BTreeSet<ConnectionId> = self.conns.keys().copied().collect();
        closes.extend(
            self.out
                .iter()
                .chain(&self.ready)
                .chain(&held)
                .filter_map(|o| match o {
                    ProviderOutput::Close { conn } => Some(*conn),
                    _ => None,
                }),
        );
        self.out.clear();
        self.ready.clear();
        self.ops.clear();
        self.lazy_ops.clear();
        self.lazy_since = None;
        self.dirty.clear();
        self.dirty_remotes.clear();
        self.forwards.clear();
        match self.store.load() {
            Ok(contents) => self.durable = Durable::load(&contents),
            Err(e2) => self.event(ProviderEvent::StorageFailed(e2)),
        }
        // Devices may have seen items of the failed batch: nothing goes ahead of its
        // write again until a new sequence epoch is durable.
        if let Some(d) = self.deferred.as_mut() {
            d.epoch_durable_at = None;
        }
        // Connections may have seen state that is now gone: start them afresh.
        for conn in closes {
            if self.conns.contains_key(&conn) {
                self.close(conn);
            } else {
                self.out.push_back(ProviderOutput::Close { conn });
            }
        }
        self.online.clear();
        self.timers.clear();
        self.event(ProviderEvent::StorageFailed(e));
        self.after_load(now);
    }
}

enum Fetch {
    Bundles(wire::FetchBundles),
    List(wire::FetchDeviceList),
}

impl Fetch {
    fn address(&self) -> &str {
        match self {
            Fetch::Bundles(f) => &f.address,
            Fetch::List(f) => &f.address,
        }
    }

    fn requester(&self) -> &str {
        match self {
            Fetch::Bundles(f) => &f.requester,
            Fetch::List(f) => &f.requester,
        }
    }
}

impl ErrorCode {
    fn into_wire(self, message: &str) -> wire::Error {
        ProtocolError::new(self, message).to_wire()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether the provider may handle `body` decoded with [`protocol::decode_shared`]: its
/// byte fields are envelopes that are stored by re-pointing them into their stored
/// values (`Submit`, `Relay` without group items), or there are none (`DeliverAck`,
/// `RelayResult`).
fn shares_nothing_kept(body: &Body) -> bool {
    match body {
        Body::Request(r) => match &r.body {
            Some(wire::request::Body::Submit(_)) => true,
            Some(wire::request::Body::Relay(relay)) => relay.groups.is_empty(),
            _ => false,
        },
        Body::Response(r) => matches!(r.body, Some(wire::response::Body::RelayResult(_))),
        Body::DeliverAck(_) => true,
        _ => false,
    }
}

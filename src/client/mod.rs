//! The client state machine (SPEC.md 16): one device's connection to its own provider.
//!
//! [`Client`] owns the device's [`Account`] and a CSPRNG. It never does I/O: the driver
//! (a transport adapter, the simulator, a test) feeds it [`ClientInput`]s and app
//! commands ([`Client::send`], [`Client::mark_read`]) and drains [`ClientOutput`]s:
//!
//! ```text
//! client.handle_input(now, input)            // or client.send(now, ..)
//! loop {
//!     match client.poll_output(now) {
//!         ClientOutput::Connect => { /* open a connection; later: Connected */ }
//!         ClientOutput::Transmit(frame) => { /* send on the connection */ }
//!         ClientOutput::Close => { /* close it; send no Disconnected for it */ }
//!         ClientOutput::Event(e) => { /* tell the app */ }
//!         ClientOutput::Timeout(t) => break, // call handle_timeout(now) once now >= t
//!     }
//! }
//! // Then persist client.account() (Account::save) before acting on the next input:
//! // the ratchets advanced for the envelopes just handed out.
//! ```
//!
//! What it does:
//! * Connection: authenticates the provider (pinned domain and key, signed challenge)
//!   and itself (device certificate, signed device list), reconnects with backoff and
//!   jitter, and closes a connection that sends a malformed frame.
//! * Requests: each carries a fresh id and is resent unchanged (same id, same bytes)
//!   until answered: after [`RESEND_AFTER_MS`], on reconnect, and after a retryable
//!   error once its `retry_after_ms` and the backoff have passed.
//! * Sending: a message gets its id at once; the client fetches the prekey bundles and
//!   device lists it needs, seals the message once, and submits the same envelopes
//!   until the provider has stored them all ([`ClientEvent::DeliveredToProvider`]) or
//!   the submit expiry passes ([`ClientEvent::Undeliverable`]).
//! * Receiving: decrypts mailbox items, reports them once each (duplicates are
//!   acknowledged silently), sends end-to-end delivery receipts, fetches the device list
//!   of an unknown sender before giving up on its envelope, and acknowledges every item
//!   only once it has been processed.
//!
//! Every queue is bounded ([`MAX_CLIENT_PENDING`], [`MAX_HELD_ENVELOPES`],
//! [`MAX_CLIENT_IN_FLIGHT`], [`MAX_CLIENT_RECENT_NOTICES`]); nothing here panics on
//! input, and a malformed input changes nothing.

mod event;
mod group;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use bytes::Bytes;
use rand_core::CryptoRng;

pub use event::{AuthFailure, ClientError, ClientEvent, IdentityState, IncomingMessage};

use crate::address::{Address, Domain};
use crate::envelope::{Content, MessageId, OpenError, Receipt, ReceiptKind, UnverifiedEnvelope};
use crate::identity::{DeviceEvent, DeviceId, DeviceList, IdentityKey, ProviderKey};
use crate::limits::{
    AUTH_NONCE_LEN, AUTH_TIMEOUT_MS, CLIENT_FETCH_ROUNDS, CLIENT_LIST_REFRESH_MS,
    CLIENT_PREKEY_REFILL, GROUP_KEY_RETRY_MIN_MS, MAX_ACK_SEQS, MAX_CLIENT_IN_FLIGHT,
    MAX_CLIENT_PENDING, MAX_CLIENT_RECENT_NOTICES, MAX_HELD_ENVELOPES, MAX_PUBLISH_ONE_TIME,
    MAX_RECEIPT_IDS, MAX_SUBMIT_ENVELOPES, PROTOCOL_VERSION, RESEND_AFTER_MS, SUBMIT_EXPIRY_MS,
};
use crate::protocol::{self, Backoff, ErrorCode, ProtocolError};
use crate::session::{Account, AccountEvent, PrekeyBundle, Received, SessionError, SignedPrekey};
use crate::time::UnixMillis;
use crate::wire;

/// How a [`Client`] reaches and treats its provider.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The device's own provider (the domain of its address).
    pub provider: Domain,
    /// The provider's key, pinned (from the resolver or the app's configuration).
    pub provider_key: ProviderKey,
    /// Whether to send an end-to-end delivery receipt for every text message received.
    pub send_delivery_receipts: bool,
    /// How long to keep trying to hand a message to the provider before reporting it
    /// undeliverable.
    pub submit_expiry_ms: u64,
    /// Reconnect and retry delays.
    pub backoff: Backoff,
    /// One-time prekeys to make and publish when the provider reports `PrekeysLow`.
    pub prekey_refill: usize,
}

impl ClientConfig {
    /// The defaults: receipts on, [`SUBMIT_EXPIRY_MS`], [`Backoff::default`],
    /// [`CLIENT_PREKEY_REFILL`].
    pub fn new(provider: Domain, provider_key: ProviderKey) -> Self {
        Self {
            provider,
            provider_key,
            send_delivery_receipts: true,
            submit_expiry_ms: SUBMIT_EXPIRY_MS,
            backoff: Backoff::default(),
            prekey_refill: CLIENT_PREKEY_REFILL,
        }
    }
}

/// Something that happened to the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientInput {
    /// The connection asked for with [`ClientOutput::Connect`] is open. `binding` is the
    /// transport's channel binding (the TLS exporter value; empty in the simulator).
    Connected {
        /// The channel binding.
        binding: Bytes,
    },
    /// One whole frame arrived.
    Received(Bytes),
    /// The connection closed or could not be opened.
    Disconnected,
}

/// What the driver must do next. Drain with [`Client::poll_output`] until
/// [`ClientOutput::Timeout`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
// Events carrying identity keys are large, but outputs are drained at once; boxing
// them would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum ClientOutput {
    /// Open a connection to the provider (there is none).
    Connect,
    /// Send this frame on the connection.
    Transmit(Bytes),
    /// Close the connection. The client already considers it gone: do not report
    /// [`ClientInput::Disconnected`] for it.
    Close,
    /// Tell the app.
    Event(ClientEvent),
    /// Nothing more to do now: call [`Client::handle_timeout`] at this time (`None`: no
    /// timer is set).
    Timeout(Option<UnixMillis>),
}

/// The connection's state.
enum Conn {
    /// No connection; ask for one at `retry_at`.
    Idle { retry_at: UnixMillis },
    /// `Connect` was output; waiting for `Connected`.
    Connecting { deadline: UnixMillis },
    /// `Hello` sent.
    AwaitChallenge {
        hello_nonce: [u8; AUTH_NONCE_LEN],
        binding: Bytes,
        deadline: UnixMillis,
    },
    /// `Auth` sent.
    AwaitWelcome { deadline: UnixMillis },
    /// Authenticated.
    Online,
}

impl Conn {
    fn name(&self) -> &'static str {
        match self {
            Conn::Idle { .. } => "idle",
            Conn::Connecting { .. } => "connecting",
            Conn::AwaitChallenge { .. } => "await_challenge",
            Conn::AwaitWelcome { .. } => "await_welcome",
            Conn::Online => "online",
        }
    }
}

/// What a request is for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RequestKind {
    /// The prekeys published at connection start.
    PublishPrekeys,
    /// New one-time prekeys.
    Refill,
    FetchBundles {
        address: Address,
    },
    FetchDeviceList {
        address: Address,
    },
    /// One part of the outgoing message with this local key.
    Submit {
        message: u64,
    },
    /// A group change handed to the group's sequencer.
    OrderGroupChange {
        group: crate::group::GroupId,
    },
    /// A group envelope.
    SubmitGroup {
        group: crate::group::GroupId,
        message_id: MessageId,
    },
}

/// A request, resent unchanged until answered.
struct Request {
    /// The encoded `Request` frame.
    frame: Bytes,
    kind: RequestKind,
    /// When it was last sent on the current connection (`None`: not yet).
    sent_at: Option<UnixMillis>,
    /// Not before this time (after a retryable error).
    not_before: UnixMillis,
    /// Retryable errors so far.
    attempts: u32,
    /// Given up at this time.
    expires: UnixMillis,
}

/// Where an outgoing message is.
enum Stage {
    /// Waiting for sessions with its recipient devices.
    Sessions {
        content: Content,
        /// Bundle fetch rounds made for it.
        rounds: u8,
        /// Why the last fetch failed.
        error: Option<ProtocolError>,
    },
    /// Sealed; these submit requests are not done yet.
    Submitting { parts: BTreeSet<u64> },
}

struct Outgoing {
    message_id: MessageId,
    to: Address,
    /// Whether the app sees its events (not for receipts the client sends itself).
    notify: bool,
    expires: UnixMillis,
    stage: Stage,
}

/// An envelope from a sender device not known yet, waiting for its device list.
struct Held {
    seq: u64,
    envelope: Bytes,
    sender: Address,
}

/// The client state machine. See the module documentation.
pub struct Client<R: CryptoRng> {
    account: Account,
    config: ClientConfig,
    rng: R,
    conn: Conn,
    /// Reconnects since the last `Welcome` (the backoff exponent).
    reconnects: u32,
    next_request_id: u64,
    requests: BTreeMap<u64, Request>,
    /// Bundle fetches in flight, by address.
    fetching_bundles: BTreeMap<Address, u64>,
    /// When each user's device list was last fetched (or confirmed) from the provider.
    lists_checked: BTreeMap<Address, UnixMillis>,
    /// Device-list fetches in flight, by address.
    fetching_lists: BTreeMap<Address, u64>,
    /// Outgoing messages by local key, in send order.
    outgoing: BTreeMap<u64, Outgoing>,
    next_local: u64,
    held: VecDeque<Held>,
    /// `Undeliverable` notices already reported.
    recent_notices: VecDeque<(MessageId, Address, DeviceId)>,
    verified: BTreeMap<Address, IdentityKey>,
    /// The provider acknowledged the prekeys published at a connection start.
    prekeys_published: bool,
    /// Groups (see the `group` module).
    groups: group::Groups,
    /// What became of one-to-one messages since the last flush, for the group messages
    /// that wait on their sender keys.
    settled: Vec<group::Settled>,
    /// This user's device list gained a device: hand it the groups (SPEC.md 20.5).
    sync_groups: bool,
    out: VecDeque<ClientOutput>,
}

impl<R: CryptoRng> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("account", &self.account)
            .field("provider", &self.config.provider)
            .field("conn", &self.conn.name())
            .field("requests", &self.requests.len())
            .field("outgoing", &self.outgoing.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

/// Whether a receive error means "seen before": acknowledged silently.
fn is_duplicate(e: &SessionError) -> bool {
    matches!(
        e,
        SessionError::Duplicate | SessionError::Open(OpenError::Replay)
    )
}

fn claimed_sender(envelope: &Bytes) -> Option<Address> {
    UnverifiedEnvelope::decode(envelope.clone())
        .ok()
        .map(|u| u.claimed_header().sender.clone())
}

fn local_error(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, message)
}

impl<R: CryptoRng> Client<R> {
    /// A client for `account`; its first output is [`ClientOutput::Connect`].
    pub fn new(account: Account, config: ClientConfig, mut rng: R, now: UnixMillis) -> Self {
        // A random start keeps ids unique across restarts of the app.
        let next_request_id = (rng.next_u64() >> 1).max(1);
        let mut out = VecDeque::new();
        out.push_back(ClientOutput::Connect);
        // The lists the account holds count as checked now: the refresh period runs from
        // the start of this client.
        let lists_checked = std::iter::once(account.own_device_list())
            .chain(account.contacts().iter())
            .map(|l| (l.address().clone(), now))
            .collect();
        // Whom the sender keys did not reach is not persisted as a schedule: a device with
        // chains checks once, a little after starting (SPEC.md 19.2).
        let mut groups = group::Groups::default();
        if account.groups.records.values().any(|g| g.sender.is_some()) {
            groups.key_retry_at = Some(now.saturating_add(GROUP_KEY_RETRY_MIN_MS));
        }
        Self {
            account,
            config,
            rng,
            conn: Conn::Connecting {
                deadline: now.saturating_add(AUTH_TIMEOUT_MS),
            },
            reconnects: 0,
            next_request_id,
            requests: BTreeMap::new(),
            fetching_bundles: BTreeMap::new(),
            lists_checked,
            fetching_lists: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            next_local: 0,
            held: VecDeque::new(),
            groups,
            settled: Vec::new(),
            sync_groups: false,
            recent_notices: VecDeque::new(),
            verified: BTreeMap::new(),
            prekeys_published: false,
            out,
        }
    }

    /// The account, to persist with [`Account::save`] after every drain.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether the client is authenticated to its provider.
    pub fn is_online(&self) -> bool {
        matches!(self.conn, Conn::Online)
    }

    /// Whether the provider has acknowledged this device's prekeys (published once after
    /// the first authentication of this client): from then on other users can fetch its
    /// bundles and start sessions with it.
    pub fn prekeys_published(&self) -> bool {
        self.prekeys_published
    }

    /// Messages not yet stored by the provider (nor reported undeliverable), including
    /// receipts the client sends itself.
    pub fn pending_messages(&self) -> usize {
        self.outgoing.len()
    }

    /// Records that the user checked `address`'s fingerprint for `identity`: its
    /// messages report [`IdentityState::Verified`] while its identity key stays the
    /// same. The app persists these and sets them again after a restart.
    pub fn mark_verified(&mut self, address: &Address, identity: IdentityKey) {
        self.verified.insert(address.clone(), identity);
    }

    /// Forgets a verification.
    pub fn unmark_verified(&mut self, address: &Address) {
        self.verified.remove(address);
    }

    /// Whether `identity` is verified for `address`.
    pub fn identity_state(&self, address: &Address, identity: &IdentityKey) -> IdentityState {
        if address == self.account.device().address() {
            return if identity == self.account.own_device_list().identity_key() {
                IdentityState::Verified
            } else {
                IdentityState::Changed
            };
        }
        match self.verified.get(address) {
            Some(k) if k == identity => IdentityState::Verified,
            Some(_) => IdentityState::Changed,
            None => IdentityState::Unverified,
        }
    }

    /// Handles a connection event or a received frame.
    pub fn handle_input(&mut self, now: UnixMillis, input: ClientInput) {
        match input {
            ClientInput::Connected { binding } => self.on_connected(now, binding),
            ClientInput::Received(frame) => self.on_frame(now, &frame),
            ClientInput::Disconnected => self.on_disconnected(now),
        }
        self.flush(now);
    }

    /// Handles timers: reconnects, authentication timeouts, resends, expiries.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        match self.conn {
            Conn::Idle { retry_at } if now >= retry_at => {
                self.out.push_back(ClientOutput::Connect);
                self.conn = Conn::Connecting {
                    deadline: now.saturating_add(AUTH_TIMEOUT_MS),
                };
            }
            Conn::Connecting { deadline } if now >= deadline => {
                self.out.push_back(ClientOutput::Close);
                self.go_idle(now);
            }
            Conn::AwaitChallenge { deadline, .. } | Conn::AwaitWelcome { deadline }
                if now >= deadline =>
            {
                self.fail_auth(now, AuthFailure::Timeout);
            }
            _ => {}
        }
        self.retry_group_keys(now);
        self.expire(now);
        self.flush(now);
    }

    /// Sends `content` to `to` (every device of `to` and this user's other devices).
    /// The message id is assigned now; [`ClientEvent::DeliveredToProvider`] or
    /// [`ClientEvent::Undeliverable`] follows. Sending to this user's own address
    /// reaches its other devices.
    pub fn send(
        &mut self,
        now: UnixMillis,
        to: &Address,
        content: Content,
    ) -> Result<MessageId, ClientError> {
        self.check_capacity(1)?;
        let id = self.queue_message(now, to, content, true)?;
        self.flush(now);
        Ok(id)
    }

    /// Sends an end-to-end read receipt for `ids` to `conversation` (the sender of the
    /// messages; this user's other devices learn of it too).
    pub fn mark_read(
        &mut self,
        now: UnixMillis,
        conversation: &Address,
        ids: &[MessageId],
    ) -> Result<(), ClientError> {
        let chunks = ids.len().div_ceil(MAX_RECEIPT_IDS);
        self.check_capacity(chunks)?;
        for chunk in ids.chunks(MAX_RECEIPT_IDS) {
            let content = Content::Receipt(Receipt {
                kind: ReceiptKind::Read,
                message_ids: chunk.to_vec(),
            });
            self.queue_message(now, conversation, content, false)?;
        }
        self.flush(now);
        Ok(())
    }

    /// Fetches `address`'s device list from the provider now, to show or verify the
    /// contact's safety number before any message is exchanged. The answer updates the
    /// account like any fetched list ([`ClientEvent::IdentityFirstSeen`],
    /// [`ClientEvent::DeviceAdded`], ...); a failed fetch changes nothing.
    /// [`is_fetching_device_list`](Self::is_fetching_device_list) tells when it is over.
    pub fn fetch_device_list(
        &mut self,
        now: UnixMillis,
        address: &Address,
    ) -> Result<(), ClientError> {
        if !self.fetching_lists.contains_key(address) {
            self.check_capacity(1)?;
            let body = wire::request::Body::FetchDeviceList(wire::FetchDeviceList {
                address: address.as_str().to_owned(),
                requester: String::new(),
            });
            let expires = now.saturating_add(self.config.submit_expiry_ms);
            let kind = RequestKind::FetchDeviceList {
                address: address.clone(),
            };
            self.new_request(now, kind, body, expires);
        }
        self.flush(now);
        Ok(())
    }

    /// Whether a fetch of `address`'s device list is in flight.
    pub fn is_fetching_device_list(&self, address: &Address) -> bool {
        self.fetching_lists.contains_key(address)
    }

    /// The next output. Returns [`ClientOutput::Timeout`] when there is nothing else.
    pub fn poll_output(&mut self, _now: UnixMillis) -> ClientOutput {
        match self.out.pop_front() {
            Some(o) => o,
            None => ClientOutput::Timeout(self.next_deadline()),
        }
    }

    // ------------------------------------------------------------------------------
    // Connection

    fn event(&mut self, e: ClientEvent) {
        self.out.push_back(ClientOutput::Event(e));
    }

    fn transmit(&mut self, body: wire::frame::Body) {
        self.out
            .push_back(ClientOutput::Transmit(protocol::encode(body)));
    }

    /// No connection now; reconnect after a backoff. Requests are resent on the next.
    fn go_idle(&mut self, now: UnixMillis) {
        let delay = self.config.backoff.delay(self.reconnects, &mut self.rng);
        self.reconnects = self.reconnects.saturating_add(1);
        self.conn = Conn::Idle {
            retry_at: now.saturating_add(delay),
        };
        for r in self.requests.values_mut() {
            r.sent_at = None;
        }
    }

    fn fail_auth(&mut self, now: UnixMillis, failure: AuthFailure) {
        self.event(ClientEvent::AuthFailed(failure));
        self.out.push_back(ClientOutput::Close);
        self.go_idle(now);
    }

    /// Closes the connection (after a `Goodbye` if given) and backs off.
    fn drop_connection(&mut self, now: UnixMillis, goodbye: Option<ProtocolError>) {
        if let Some(e) = goodbye {
            self.transmit(wire::frame::Body::Goodbye(wire::Goodbye {
                error: Some(e.to_wire()),
            }));
        }
        self.out.push_back(ClientOutput::Close);
        if matches!(self.conn, Conn::Online) {
            self.event(ClientEvent::Offline);
        }
        self.go_idle(now);
    }

    fn on_connected(&mut self, now: UnixMillis, binding: Bytes) {
        if matches!(self.conn, Conn::Online) {
            // A new connection replaces the old one.
            self.event(ClientEvent::Offline);
            for r in self.requests.values_mut() {
                r.sent_at = None;
            }
        }
        if !protocol::binding_ok(&binding) {
            self.fail_auth(now, AuthFailure::BadBinding);
            return;
        }
        let mut hello_nonce = [0u8; AUTH_NONCE_LEN];
        self.rng.fill_bytes(&mut hello_nonce);
        self.transmit(wire::frame::Body::Hello(wire::Hello {
            version: PROTOCOL_VERSION,
            nonce: Bytes::copy_from_slice(&hello_nonce),
            role: wire::Role::Device as i32,
            acceptor: self.config.provider.as_str().to_owned(),
        }));
        self.conn = Conn::AwaitChallenge {
            hello_nonce,
            binding,
            deadline: now.saturating_add(AUTH_TIMEOUT_MS),
        };
    }

    fn on_disconnected(&mut self, now: UnixMillis) {
        match self.conn {
            Conn::Idle { .. } => {}
            Conn::Online => {
                self.event(ClientEvent::Offline);
                self.go_idle(now);
            }
            _ => self.go_idle(now),
        }
    }

    fn on_frame(&mut self, now: UnixMillis, frame: &[u8]) {
        if matches!(self.conn, Conn::Idle { .. } | Conn::Connecting { .. }) {
            // No connection is authenticating or open: nothing can be for us.
            return;
        }
        let body = match protocol::decode(frame) {
            Ok(b) => b,
            Err(e) => {
                self.drop_connection(now, Some(local_error(ErrorCode::BadFrame, e.to_string())));
                return;
            }
        };
        use wire::frame::Body;
        match body {
            Body::Challenge(c) => self.on_challenge(now, &c),
            Body::Welcome(_) => self.on_welcome(now),
            Body::Goodbye(g) => {
                let error = g.error.as_ref().map_or_else(
                    || local_error(ErrorCode::Unexpected, "goodbye without a reason"),
                    ProtocolError::from_wire,
                );
                if matches!(self.conn, Conn::Online) {
                    self.drop_connection(now, None);
                } else {
                    self.fail_auth(now, AuthFailure::Refused(error));
                }
            }
            Body::Response(r) if matches!(self.conn, Conn::Online) => self.on_response(now, r),
            Body::Deliver(d) if matches!(self.conn, Conn::Online) => self.on_deliver(now, d),
            // Out of place (a duplicate, a reordered frame, or a frame a provider never
            // sends to a device): ignored, nothing changes.
            _ => {}
        }
    }

    fn on_challenge(&mut self, now: UnixMillis, c: &wire::Challenge) {
        let Conn::AwaitChallenge {
            hello_nonce,
            binding,
            deadline,
        } = &self.conn
        else {
            return;
        };
        let failure = if c.domain != self.config.provider.as_str() {
            Some(AuthFailure::WrongProvider {
                domain: c.domain.clone(),
            })
        } else if c.provider_key.as_ref() != self.config.provider_key.to_bytes().as_slice() {
            Some(AuthFailure::WrongKey)
        } else if !protocol::verify_challenge(
            self.config.provider_key.as_verifying_key(),
            hello_nonce,
            &c.nonce,
            &c.domain,
            binding,
            &c.signature,
        ) {
            Some(AuthFailure::BadSignature)
        } else {
            None
        };
        if let Some(f) = failure {
            self.fail_auth(now, f);
            return;
        }
        let device = self.account.device();
        let certificate = device.certificate().encoded().clone();
        let signature = protocol::sign_auth(
            device.keys().signing(),
            &c.nonce,
            hello_nonce,
            self.config.provider.as_str(),
            binding,
            &certificate,
        );
        let deadline = *deadline;
        self.transmit(wire::frame::Body::Auth(wire::Auth {
            who: Some(wire::auth::Who::Device(wire::DeviceAuth {
                certificate,
                device_list: self.account.own_device_list().encoded().clone(),
            })),
            signature: Bytes::copy_from_slice(&signature.to_bytes()),
        }));
        self.conn = Conn::AwaitWelcome { deadline };
    }

    fn on_welcome(&mut self, now: UnixMillis) {
        if !matches!(self.conn, Conn::AwaitWelcome { .. }) {
            return;
        }
        self.conn = Conn::Online;
        self.reconnects = 0;
        self.event(ClientEvent::Online);
        let publishing = self
            .requests
            .values()
            .any(|r| r.kind == RequestKind::PublishPrekeys);
        if !self.prekeys_published && !publishing {
            if self.account.prekeys().needs_replenish() {
                let _ = self.account.replenish_prekeys(now, &mut self.rng);
            }
            let all = self.account.prekeys().published().one_time_prekeys;
            self.publish_prekeys(now, RequestKind::PublishPrekeys, &all);
        }
        // Every pending request goes out again (flush, after this input).
    }

    // ------------------------------------------------------------------------------
    // Requests

    fn check_capacity(&self, n: usize) -> Result<(), ClientError> {
        if self.outgoing.len().saturating_add(n) > MAX_CLIENT_PENDING
            || self.requests.len().saturating_add(n) > MAX_CLIENT_PENDING
        {
            return Err(ClientError::Busy {
                max: MAX_CLIENT_PENDING,
            });
        }
        Ok(())
    }

    fn new_request(
        &mut self,
        now: UnixMillis,
        kind: RequestKind,
        body: wire::request::Body,
        expires: UnixMillis,
    ) -> u64 {
        let id = self.next_request_id;
        self.next_request_id = id.wrapping_add(1).max(1);
        let frame = protocol::encode(wire::frame::Body::Request(wire::Request {
            id,
            body: Some(body),
        }));
        match &kind {
            RequestKind::FetchBundles { address } => {
                self.fetching_bundles.insert(address.clone(), id);
            }
            RequestKind::FetchDeviceList { address } => {
                self.fetching_lists.insert(address.clone(), id);
            }
            _ => {}
        }
        self.requests.insert(
            id,
            Request {
                frame,
                kind,
                sent_at: None,
                not_before: now,
                attempts: 0,
                expires,
            },
        );
        id
    }

    /// Removes a request and its index entries.
    fn take_request(&mut self, id: u64) -> Option<Request> {
        let r = self.requests.remove(&id)?;
        match &r.kind {
            RequestKind::FetchBundles { address }
                if self.fetching_bundles.get(address) == Some(&id) =>
            {
                self.fetching_bundles.remove(address);
            }
            RequestKind::FetchDeviceList { address }
                if self.fetching_lists.get(address) == Some(&id) =>
            {
                self.fetching_lists.remove(address);
            }
            _ => {}
        }
        Some(r)
    }

    fn publish_prekeys(&mut self, now: UnixMillis, kind: RequestKind, one_time: &[SignedPrekey]) {
        let p = self.account.prekeys().published();
        let body = wire::request::Body::PublishPrekeys(wire::PublishPrekeys {
            signed_prekey: p.signed_prekey.encoded().clone(),
            kem_prekey: p.kem_prekey.encoded().clone(),
            one_time: one_time
                .iter()
                .take(MAX_PUBLISH_ONE_TIME)
                .map(|k| k.encoded().clone())
                .collect(),
        });
        self.new_request(now, kind, body, UnixMillis(u64::MAX));
    }

    /// Sends what is due: new requests (at most [`MAX_CLIENT_IN_FLIGHT`] unanswered at
    /// once) and resends of unanswered ones.
    fn flush(&mut self, now: UnixMillis) {
        for s in std::mem::take(&mut self.settled) {
            self.key_message_settled(now, s);
        }
        if std::mem::take(&mut self.sync_groups) {
            self.sync_groups_to_own_devices(now);
        }
        if !matches!(self.conn, Conn::Online) {
            return;
        }
        let mut in_flight = self
            .requests
            .values()
            .filter(|r| r.sent_at.is_some())
            .count();
        for r in self.requests.values_mut() {
            let due = match r.sent_at {
                Some(t) => now >= t.saturating_add(RESEND_AFTER_MS),
                None if now >= r.not_before && in_flight < MAX_CLIENT_IN_FLIGHT => {
                    in_flight += 1;
                    true
                }
                None => false,
            };
            if due {
                r.sent_at = Some(now);
                self.out.push_back(ClientOutput::Transmit(r.frame.clone()));
            }
        }
    }

    fn next_deadline(&self) -> Option<UnixMillis> {
        let mut next: Option<UnixMillis> = None;
        let mut at = |t: UnixMillis| next = Some(next.map_or(t, |n| n.min(t)));
        match &self.conn {
            Conn::Idle { retry_at } => at(*retry_at),
            Conn::Connecting { deadline }
            | Conn::AwaitChallenge { deadline, .. }
            | Conn::AwaitWelcome { deadline } => at(*deadline),
            Conn::Online => {
                if let Some(t) = self.groups.key_retry_at {
                    at(t);
                }
                let in_flight = self
                    .requests
                    .values()
                    .filter(|r| r.sent_at.is_some())
                    .count();
                for r in self.requests.values() {
                    match r.sent_at {
                        Some(t) => at(t.saturating_add(RESEND_AFTER_MS)),
                        None if in_flight < MAX_CLIENT_IN_FLIGHT => at(r.not_before),
                        None => {}
                    }
                }
            }
        }
        for r in self.requests.values() {
            if r.expires != UnixMillis(u64::MAX) {
                at(r.expires);
            }
        }
        for m in self.outgoing.values() {
            at(m.expires);
        }
        next
    }

    fn on_response(&mut self, now: UnixMillis, r: wire::Response) {
        let Some(mut req) = self.take_request(r.id) else {
            return; // answered before, or never asked: ignored
        };
        use wire::response::Body;
        match r.body {
            Some(Body::Error(e)) => {
                let error = ProtocolError::from_wire(&e);
                if error.retryable {
                    let backoff = self.config.backoff.delay(req.attempts, &mut self.rng);
                    req.attempts = req.attempts.saturating_add(1);
                    req.sent_at = None;
                    req.not_before = now.saturating_add(error.retry_after_ms.max(backoff));
                    // Back in under the same id, with the same bytes.
                    match &req.kind {
                        RequestKind::FetchBundles { address } => {
                            self.fetching_bundles.insert(address.clone(), r.id);
                        }
                        RequestKind::FetchDeviceList { address } => {
                            self.fetching_lists.insert(address.clone(), r.id);
                        }
                        _ => {}
                    }
                    self.requests.insert(r.id, req);
                } else {
                    self.request_failed(now, r.id, req.kind, error);
                }
            }
            Some(Body::Done(_)) if matches!(req.kind, RequestKind::Submit { .. }) => {
                if let RequestKind::Submit { message } = req.kind {
                    self.submit_done(message, r.id);
                }
            }
            Some(Body::Done(_)) if matches!(req.kind, RequestKind::SubmitGroup { .. }) => {
                if let RequestKind::SubmitGroup { message_id, .. } = req.kind {
                    self.group_submit_done(message_id);
                }
            }
            Some(Body::GroupChange(g))
                if matches!(req.kind, RequestKind::OrderGroupChange { .. }) =>
            {
                self.on_ordered(g.change);
            }
            Some(Body::Done(_))
                if matches!(req.kind, RequestKind::PublishPrekeys | RequestKind::Refill) =>
            {
                if req.kind == RequestKind::PublishPrekeys {
                    self.prekeys_published = true;
                }
            }
            Some(Body::Bundles(b)) if matches!(req.kind, RequestKind::FetchBundles { .. }) => {
                if let RequestKind::FetchBundles { address } = req.kind {
                    self.on_bundles(now, &address, b);
                }
            }
            Some(Body::DeviceList(d))
                if matches!(req.kind, RequestKind::FetchDeviceList { .. }) =>
            {
                if let RequestKind::FetchDeviceList { address } = req.kind {
                    self.on_device_list(now, &address, d.device_list);
                }
            }
            _ => self.request_failed(
                now,
                r.id,
                req.kind,
                local_error(ErrorCode::Unexpected, "response of the wrong kind"),
            ),
        }
    }

    fn request_failed(
        &mut self,
        now: UnixMillis,
        id: u64,
        kind: RequestKind,
        error: ProtocolError,
    ) {
        match kind {
            RequestKind::PublishPrekeys | RequestKind::Refill => {
                self.event(ClientEvent::RequestFailed {
                    request: "publish_prekeys",
                    error,
                });
            }
            RequestKind::FetchBundles { address } => self.bundles_failed(now, &address, error),
            RequestKind::FetchDeviceList { address } => {
                self.lists_checked.insert(address.clone(), now);
                self.release_held(now, &address);
                self.advance_all(now);
            }
            RequestKind::Submit { message } => {
                let _ = id;
                if let Some(m) = self.outgoing.get(&message) {
                    let recipient = m.to.clone();
                    self.message_failed(message, recipient, None, error);
                }
            }
            RequestKind::OrderGroupChange { group } => self.order_failed(group, error),
            RequestKind::SubmitGroup { group, message_id } => {
                self.group_submit_failed(group, message_id, error);
            }
        }
    }

    /// Gives up on requests and messages past their expiry.
    fn expire(&mut self, now: UnixMillis) {
        let expired: Vec<u64> = self
            .outgoing
            .iter()
            .filter(|(_, m)| now >= m.expires)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(m) = self.outgoing.get(&key) {
                let recipient = m.to.clone();
                self.message_failed(
                    key,
                    recipient,
                    None,
                    local_error(ErrorCode::Expired, "not stored by the provider in time"),
                );
            }
        }
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| now >= r.expires)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(r) = self.take_request(id) {
                self.request_failed(
                    now,
                    id,
                    r.kind,
                    local_error(ErrorCode::Expired, "no answer in time"),
                );
            }
        }
    }

    // ------------------------------------------------------------------------------
    // Sending

    fn queue_message(
        &mut self,
        now: UnixMillis,
        to: &Address,
        content: Content,
        notify: bool,
    ) -> Result<MessageId, ClientError> {
        // Refuse content that cannot be sealed now, not after the fetches.
        content.encode_padded()?;
        let message_id = MessageId::random(&mut self.rng);
        let key = self.next_local;
        self.next_local = self.next_local.wrapping_add(1);
        self.outgoing.insert(
            key,
            Outgoing {
                message_id,
                to: to.clone(),
                notify,
                expires: now.saturating_add(self.config.submit_expiry_ms),
                stage: Stage::Sessions {
                    content,
                    rounds: 0,
                    error: None,
                },
            },
        );
        self.advance(now, key);
        Ok(message_id)
    }

    /// Moves a message waiting for sessions on: fetch bundles, or seal and submit.
    fn advance(&mut self, now: UnixMillis, key: u64) {
        let own = self.account.device().address().clone();
        let Some(m) = self.outgoing.get(&key) else {
            return;
        };
        let Stage::Sessions { rounds, .. } = &m.stage else {
            return;
        };
        let rounds = *rounds;
        let to = m.to.clone();
        let expires = m.expires;
        if self.fetching_bundles.contains_key(&to) || self.fetching_bundles.contains_key(&own) {
            return; // a fetch that may bring what it needs is under way
        }
        let missing = self.account.missing_sessions(&to);
        // A list older than CLIENT_LIST_REFRESH_MS is fetched again before sealing, so a
        // device the user added since is not left out for long (SPEC.md 16.4).
        if matches!(&missing, Ok(m) if m.is_empty()) {
            let mut waiting = false;
            for who in [to.clone(), own.clone()] {
                let fresh = self
                    .lists_checked
                    .get(&who)
                    .is_some_and(|t| t.saturating_add(CLIENT_LIST_REFRESH_MS) > now);
                if !fresh {
                    waiting = true;
                    if !self.fetching_lists.contains_key(&who) {
                        let body = wire::request::Body::FetchDeviceList(wire::FetchDeviceList {
                            address: who.as_str().to_owned(),
                            requester: String::new(),
                        });
                        let kind = RequestKind::FetchDeviceList {
                            address: who.clone(),
                        };
                        self.new_request(now, kind, body, expires);
                    }
                }
            }
            if waiting {
                return;
            }
        }
        match missing {
            Ok(m) if m.is_empty() => self.seal(now, key, &[]),
            _ if rounds < CLIENT_FETCH_ROUNDS => {
                if let Some(Stage::Sessions { rounds, .. }) =
                    self.outgoing.get_mut(&key).map(|m| &mut m.stage)
                {
                    *rounds = rounds.saturating_add(1);
                }
                let (theirs, mine): (Vec<_>, Vec<_>) = match &missing {
                    // No device list yet: fetch every device of `to`.
                    Err(_) => (Vec::new(), Vec::new()),
                    Ok(m) => m.iter().cloned().partition(|(a, _)| *a == to),
                };
                let mine: Vec<DeviceId> = mine.into_iter().map(|(_, d)| d).collect();
                let theirs: Vec<DeviceId> = theirs.into_iter().map(|(_, d)| d).collect();
                if missing.is_err() || !theirs.is_empty() {
                    self.fetch_bundles(now, &to, &theirs, expires);
                }
                if !mine.is_empty() {
                    self.fetch_bundles(now, &own, &mine, expires);
                }
            }
            Ok(m) => self.seal(now, key, &m),
            Err(_) => {
                let error = match self.outgoing.get_mut(&key).map(|m| &mut m.stage) {
                    Some(Stage::Sessions { error, .. }) => error.take(),
                    _ => None,
                };
                let error = error.unwrap_or_else(|| {
                    local_error(ErrorCode::UnknownUser, "no device list for the recipient")
                });
                self.message_failed(key, to, None, error);
            }
        }
    }

    fn fetch_bundles(
        &mut self,
        now: UnixMillis,
        address: &Address,
        devices: &[DeviceId],
        expires: UnixMillis,
    ) {
        let body = wire::request::Body::FetchBundles(wire::FetchBundles {
            address: address.as_str().to_owned(),
            devices: devices
                .iter()
                .map(|d| Bytes::copy_from_slice(d.as_bytes()))
                .collect(),
            requester: String::new(),
        });
        let kind = RequestKind::FetchBundles {
            address: address.clone(),
        };
        self.new_request(now, kind, body, expires);
    }

    /// Every message waiting for sessions tries again (in send order).
    fn advance_all(&mut self, now: UnixMillis) {
        let waiting: Vec<u64> = self
            .outgoing
            .iter()
            .filter(|(_, m)| matches!(m.stage, Stage::Sessions { .. }))
            .map(|(k, _)| *k)
            .collect();
        for key in waiting {
            self.advance(now, key);
        }
    }

    fn on_bundles(&mut self, now: UnixMillis, address: &Address, b: wire::Bundles) {
        let list = match DeviceList::decode_for(b.device_list, address) {
            Ok(l) => l,
            Err(e) => {
                let error = local_error(ErrorCode::Invalid, format!("device list: {e}"));
                self.bundles_failed(now, address, error);
                return;
            }
        };
        self.lists_checked.insert(address.clone(), now);
        if let Err(e) = self.apply_list(list) {
            let error = local_error(ErrorCode::Invalid, format!("device list: {e}"));
            self.bundles_failed(now, address, error);
            return;
        }
        let missing: BTreeSet<(Address, DeviceId)> = self
            .account
            .missing_sessions(address)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for bytes in b.bundles {
            // A bundle that does not verify, is for another user, or for a device not
            // on the list is ignored: that device stays without a session.
            let Ok(bundle) = PrekeyBundle::decode(bytes) else {
                continue;
            };
            let cert = bundle.certificate();
            let k = (cert.address().clone(), cert.device_id());
            if &k.0 == address && missing.contains(&k) {
                let _ = self.account.add_bundle(&bundle, now, &mut self.rng);
            }
        }
        self.advance_all(now);
    }

    /// A bundle fetch for `address` failed for good: the messages to `address` stop
    /// fetching (and are sealed to whom they can reach, or reported undeliverable).
    /// Messages to others that also wait for this user's own devices fetch again in
    /// their next round, within [`CLIENT_FETCH_ROUNDS`].
    fn bundles_failed(&mut self, now: UnixMillis, address: &Address, error: ProtocolError) {
        for m in self.outgoing.values_mut() {
            if &m.to == address
                && let Stage::Sessions {
                    rounds, error: e, ..
                } = &mut m.stage
            {
                *rounds = CLIENT_FETCH_ROUNDS;
                *e = Some(error.clone());
            }
        }
        self.advance_all(now);
    }

    /// Accepts a fetched device list. The list held already, or an older one by the same
    /// identity key (a provider that lags), changes nothing and is no error.
    fn apply_list(&mut self, list: DeviceList) -> Result<(), SessionError> {
        let own = self.account.own_device_list();
        let current = if list.address() == own.address() {
            Some(own)
        } else {
            self.account.contacts().get(list.address())
        };
        if let Some(c) = current
            && c.identity_key() == list.identity_key()
            && list.serial() <= c.serial()
        {
            return Ok(());
        }
        let events = self.account.update_device_list(list)?;
        self.account_events(events);
        Ok(())
    }

    fn account_events(&mut self, events: Vec<AccountEvent>) {
        for e in events {
            match e {
                AccountEvent::Device(d) => {
                    let ev = match d {
                        // First seen on this device, but the user verified another key
                        // for this address (on another device, or in person): that is
                        // a change, not a first contact.
                        DeviceEvent::IdentityFirstSeen { address, identity } => {
                            match self.verified.get(&address) {
                                Some(old) if *old != identity => ClientEvent::IdentityChanged {
                                    old: *old,
                                    address,
                                    new: identity,
                                },
                                _ => ClientEvent::IdentityFirstSeen { address, identity },
                            }
                        }
                        DeviceEvent::IdentityChanged { address, old, new } => {
                            ClientEvent::IdentityChanged { address, old, new }
                        }
                        DeviceEvent::DeviceAdded { address, device } => {
                            if &address == self.account.device().address() {
                                // A new device of this user: it gets this device's groups.
                                self.sync_groups = true;
                            }
                            ClientEvent::DeviceAdded { address, device }
                        }
                        DeviceEvent::DeviceRemoved { address, device } => {
                            ClientEvent::DeviceRemoved { address, device }
                        }
                    };
                    self.event(ev);
                }
                // Handled where they arise (receive: replenish and publish).
                AccountEvent::PrekeysLow { .. } | AccountEvent::SessionStarted { .. } => {}
            }
        }
    }

    /// Seals a message once, leaving out `skip`, and queues its submits.
    fn seal(&mut self, now: UnixMillis, key: u64, skip: &[(Address, DeviceId)]) {
        let Some(m) = self.outgoing.get_mut(&key) else {
            return;
        };
        let Stage::Sessions { content, .. } = &m.stage else {
            return;
        };
        let (to, message_id, notify, expires) = (m.to.clone(), m.message_id, m.notify, m.expires);
        // Never seal to an identity other than the one the user verified: a changed
        // safety number must be looked at (and re-verified) first, as in Signal.
        if let (Some(verified), Some(list)) =
            (self.verified.get(&to), self.account.contacts().get(&to))
            && verified != list.identity_key()
        {
            let error = local_error(
                ErrorCode::IdentityMismatch,
                format!("{to}'s identity key differs from the verified one"),
            );
            self.message_failed(key, to, None, error);
            return;
        }
        let result =
            self.account
                .encrypt_with_id(&to, content, message_id, skip, now, &mut self.rng);
        let sent = match result {
            Ok(s) => s,
            Err(e) => {
                let error = local_error(ErrorCode::Invalid, format!("cannot seal: {e}"));
                self.message_failed(key, to, None, error);
                return;
            }
        };
        for (recipient, device) in &sent.skipped {
            self.settled
                .push(group::Settled::Skipped(key, recipient.clone(), *device));
        }
        if notify {
            for (recipient, device) in sent.skipped {
                self.event(ClientEvent::Undeliverable {
                    message_id,
                    recipient,
                    device: Some(device),
                    reason: local_error(
                        ErrorCode::UnknownDevice,
                        "no session with the device, or its certificate is not valid",
                    ),
                });
            }
        }
        if sent.envelopes.is_empty() {
            // Only this device is listed: nothing to hand over.
            self.outgoing.remove(&key);
            self.settled.push(group::Settled::Stored(key));
            if notify {
                self.event(ClientEvent::DeliveredToProvider { message_id });
            }
            return;
        }
        let mut parts = BTreeSet::new();
        for chunk in sent.envelopes.chunks(MAX_SUBMIT_ENVELOPES) {
            let body = wire::request::Body::Submit(wire::Submit {
                envelopes: chunk.iter().map(|e| e.envelope.clone()).collect(),
            });
            parts.insert(self.new_request(
                now,
                RequestKind::Submit { message: key },
                body,
                expires,
            ));
        }
        if let Some(m) = self.outgoing.get_mut(&key) {
            // The content is sealed; only the envelopes (in the requests) remain.
            m.stage = Stage::Submitting { parts };
        }
    }

    fn submit_done(&mut self, key: u64, request: u64) {
        let Some(m) = self.outgoing.get_mut(&key) else {
            return;
        };
        let Stage::Submitting { parts } = &mut m.stage else {
            return;
        };
        parts.remove(&request);
        if parts.is_empty() {
            let (message_id, notify) = (m.message_id, m.notify);
            self.settled.push(group::Settled::Stored(key));
            self.outgoing.remove(&key);
            if notify {
                self.event(ClientEvent::DeliveredToProvider { message_id });
            }
        }
    }

    /// Reports a message undeliverable and forgets it and its submits.
    fn message_failed(
        &mut self,
        key: u64,
        recipient: Address,
        device: Option<DeviceId>,
        reason: ProtocolError,
    ) {
        let Some(m) = self.outgoing.remove(&key) else {
            return;
        };
        self.settled.push(group::Settled::Failed(key, m.to.clone()));
        if let Stage::Submitting { parts } = &m.stage {
            for id in parts {
                self.take_request(*id);
            }
        }
        if m.notify {
            self.event(ClientEvent::Undeliverable {
                message_id: m.message_id,
                recipient,
                device,
                reason,
            });
        }
    }

    // ------------------------------------------------------------------------------
    // Receiving

    fn on_deliver(&mut self, now: UnixMillis, d: wire::Deliver) {
        let mut acks = Vec::new();
        let mut envelopes: Vec<(u64, Bytes)> = Vec::new();
        for item in d.items {
            let seq = item.seq;
            if self.held.iter().any(|h| h.seq == seq) || envelopes.iter().any(|(s, _)| *s == seq) {
                continue; // already waiting here
            }
            match item.item {
                Some(wire::mailbox_item::Item::Envelope(e)) => envelopes.push((seq, e)),
                Some(wire::mailbox_item::Item::Group(g)) => {
                    if self.on_group_item(seq, g) {
                        acks.push(seq);
                    }
                }
                Some(wire::mailbox_item::Item::Notice(n)) => {
                    self.on_notice(now, seq, n);
                    acks.push(seq);
                }
                None => acks.push(seq), // refused by the decoder; unreachable
            }
        }
        let mut receipts = BTreeMap::new();
        let results = match envelopes.as_slice() {
            [] => Vec::new(),
            [(_, e)] => vec![self.account.decrypt(e.clone(), now, &mut self.rng)],
            many => {
                let bytes: Vec<Bytes> = many.iter().map(|(_, e)| e.clone()).collect();
                self.account.decrypt_batch(&bytes, now, &mut self.rng)
            }
        };
        for ((seq, envelope), result) in envelopes.into_iter().zip(results) {
            match result {
                Err(SessionError::Open(OpenError::UnknownSender)) => {
                    // Not acknowledged: if it cannot be held, the provider sends it again.
                    self.hold(now, seq, envelope);
                }
                other => {
                    self.received(now, seq, &envelope, other, &mut receipts);
                    acks.push(seq);
                }
            }
        }
        self.send_receipts(now, receipts);
        self.ack(acks);
    }

    /// Reports one processed envelope.
    fn received(
        &mut self,
        now: UnixMillis,
        seq: u64,
        envelope: &Bytes,
        result: Result<Received, SessionError>,
        receipts: &mut BTreeMap<Address, Vec<MessageId>>,
    ) {
        let r = match result {
            Ok(r) => r,
            Err(e) if is_duplicate(&e) => return,
            Err(e) => {
                self.event(ClientEvent::Rejected {
                    seq,
                    code: e.code(),
                    claimed_sender: claimed_sender(envelope),
                });
                return;
            }
        };
        let low = r
            .events
            .iter()
            .any(|e| matches!(e, AccountEvent::PrekeysLow { .. }));
        self.account_events(r.events);
        if low {
            let new = self.account.replenish_prekeys(now, &mut self.rng);
            if !new.is_empty() {
                self.publish_prekeys(now, RequestKind::Refill, &new);
            }
        }
        match r.content {
            Content::GroupSenderKey(key) => {
                self.on_sender_key(&r.sender, r.sender_device, *key);
            }
            Content::GroupSync(sync) => self.on_group_sync(&r.sender, *sync),
            Content::Receipt(receipt) => {
                for message_id in receipt.message_ids {
                    let (by, device) = (r.sender.clone(), r.sender_device);
                    self.event(match receipt.kind {
                        ReceiptKind::Delivered => ClientEvent::DeliveredToDevice {
                            message_id,
                            by,
                            device,
                        },
                        ReceiptKind::Read => ClientEvent::Read {
                            message_id,
                            by,
                            device,
                        },
                    });
                }
            }
            content => {
                let own = &r.sender == self.account.device().address();
                if self.config.send_delivery_receipts && !own && matches!(content, Content::Text(_))
                {
                    receipts
                        .entry(r.sender.clone())
                        .or_default()
                        .push(r.message_id);
                }
                let identity = self.identity_state(&r.sender, &r.sender_identity);
                self.event(ClientEvent::Message(Box::new(IncomingMessage {
                    conversation: r.conversation,
                    sender: r.sender,
                    sender_device: r.sender_device,
                    identity_key: r.sender_identity,
                    identity,
                    message_id: r.message_id,
                    timestamp: r.timestamp,
                    content,
                    missing: r.missing,
                })));
            }
        }
    }

    /// Keeps an envelope from an unknown sender device while its device list is
    /// fetched. Returns whether it is held.
    fn hold(&mut self, now: UnixMillis, seq: u64, envelope: Bytes) -> bool {
        if self.held.len() >= MAX_HELD_ENVELOPES {
            return false;
        }
        let Some(sender) = claimed_sender(&envelope) else {
            return false;
        };
        if !self.fetching_lists.contains_key(&sender) {
            if self.requests.len() >= MAX_CLIENT_PENDING {
                return false;
            }
            let body = wire::request::Body::FetchDeviceList(wire::FetchDeviceList {
                address: sender.as_str().to_owned(),
                requester: String::new(),
            });
            let expires = now.saturating_add(self.config.submit_expiry_ms);
            let kind = RequestKind::FetchDeviceList {
                address: sender.clone(),
            };
            self.new_request(now, kind, body, expires);
        }
        self.held.push_back(Held {
            seq,
            envelope,
            sender,
        });
        true
    }

    fn on_device_list(&mut self, now: UnixMillis, address: &Address, encoded: Bytes) {
        // A list that does not verify or is not for `address` is ignored; the held
        // envelopes are then refused as from an unknown sender.
        if let Ok(list) = DeviceList::decode_for(encoded, address) {
            let _ = self.apply_list(list);
        }
        // Checked, whatever came back: a bad answer is not retried before the next refresh.
        self.lists_checked.insert(address.clone(), now);
        self.release_held(now, address);
        // A new list may also unblock messages waiting for sessions, and group items
        // waiting for the sender's certificate.
        self.advance_all(now);
        self.groups.unblocked = true;
        self.retry_pending();
    }

    /// Tries the envelopes held for `sender` once more; what still fails is refused.
    fn release_held(&mut self, now: UnixMillis, sender: &Address) {
        let (mine, rest): (VecDeque<Held>, VecDeque<Held>) =
            self.held.drain(..).partition(|h| &h.sender == sender);
        self.held = rest;
        let mut acks = Vec::new();
        let mut receipts = BTreeMap::new();
        for h in mine {
            let result = self.account.decrypt(h.envelope.clone(), now, &mut self.rng);
            self.received(now, h.seq, &h.envelope, result, &mut receipts);
            acks.push(h.seq);
        }
        self.send_receipts(now, receipts);
        self.ack(acks);
    }

    fn on_notice(&mut self, now: UnixMillis, seq: u64, n: wire::Notice) {
        use wire::notice::Body;
        match n.body {
            Some(Body::Undeliverable(u)) => {
                let parsed = (
                    MessageId::from_slice(&u.message_id),
                    Address::parse_canonical(&u.recipient).ok(),
                    DeviceId::from_slice(&u.device),
                );
                let (Some(message_id), Some(recipient), Some(device)) = parsed else {
                    self.event(ClientEvent::Rejected {
                        seq,
                        code: ErrorCode::Invalid.as_str(),
                        claimed_sender: None,
                    });
                    return;
                };
                let k = (message_id, recipient.clone(), device);
                if self.recent_notices.contains(&k) {
                    return;
                }
                if self.recent_notices.len() >= MAX_CLIENT_RECENT_NOTICES {
                    self.recent_notices.pop_front();
                }
                self.recent_notices.push_back(k);
                let reason = u.reason.as_ref().map_or_else(
                    || local_error(ErrorCode::Unreachable, "no reason given"),
                    ProtocolError::from_wire,
                );
                self.event(ClientEvent::Undeliverable {
                    message_id,
                    recipient,
                    device: Some(device),
                    reason,
                });
            }
            Some(Body::PrekeysLow(p)) => {
                let refilling = self
                    .requests
                    .values()
                    .any(|r| r.kind == RequestKind::Refill);
                if !refilling {
                    let new = self.account.mint_one_time_prekeys(
                        self.config.prekey_refill,
                        now,
                        &mut self.rng,
                    );
                    self.publish_prekeys(now, RequestKind::Refill, &new);
                }
                self.event(ClientEvent::PrekeysLow {
                    remaining: p.remaining,
                });
            }
            None => self.event(ClientEvent::Rejected {
                seq,
                code: ErrorCode::Invalid.as_str(),
                claimed_sender: None,
            }),
        }
    }

    /// Queues one delivery receipt per sender (best effort: dropped when busy).
    fn send_receipts(&mut self, now: UnixMillis, receipts: BTreeMap<Address, Vec<MessageId>>) {
        for (to, ids) in receipts {
            for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                if self.check_capacity(1).is_err() {
                    return;
                }
                let content = Content::Receipt(Receipt {
                    kind: ReceiptKind::Delivered,
                    message_ids: chunk.to_vec(),
                });
                let _ = self.queue_message(now, &to, content, false);
            }
        }
    }

    /// Acknowledges processed mailbox items. Off line the acknowledgements are dropped:
    /// the provider delivers the items again and they are acknowledged as duplicates.
    fn ack(&mut self, mut seqs: Vec<u64>) {
        if seqs.is_empty() || !matches!(self.conn, Conn::Online) {
            return;
        }
        seqs.sort_unstable();
        seqs.dedup();
        for chunk in seqs.chunks(MAX_ACK_SEQS) {
            self.transmit(wire::frame::Body::DeliverAck(wire::DeliverAck {
                seqs: chunk.to_vec(),
            }));
        }
    }
}

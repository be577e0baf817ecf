//! Every bound Kogge enforces, in one place. SPEC.md section 9 lists the same
//! constants by name; a test keeps the two in step.

/// Protocol version carried in envelopes and certificates.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest encoded envelope accepted by a decoder, in bytes. Checked before parsing.
pub const MAX_ENVELOPE_LEN: usize = 100 * 1024;

/// Largest encoded envelope header, in bytes. Session setup headers carry an
/// ML-KEM-768 ciphertext (1088 bytes), hence the room.
pub const MAX_HEADER_LEN: usize = 2048;

/// Largest plaintext (encoded `Content` including padding), in bytes.
pub const MAX_PLAINTEXT_LEN: usize = 96 * 1024;

/// Length of the AEAD tag appended to every ciphertext.
pub const AEAD_TAG_LEN: usize = 16;

/// Largest ciphertext: the largest plaintext plus the tag.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_PLAINTEXT_LEN + AEAD_TAG_LEN;

/// Plaintexts are padded to a multiple of this many bytes (SPEC.md 7.3).
pub const PADDING_BLOCK: usize = 64;

/// Largest encoded device certificate, in bytes.
pub const MAX_CERTIFICATE_LEN: usize = 1024;

/// Largest media type string in a text message, in bytes.
pub const MAX_MEDIA_TYPE_LEN: usize = 127;

/// Most message ids one receipt may acknowledge.
pub const MAX_RECEIPT_IDS: usize = 1024;

/// Longest local part of an address (before `@`), in bytes.
pub const MAX_LOCAL_PART_LEN: usize = 64;

/// Longest provider domain, in bytes (as DNS).
pub const MAX_DOMAIN_LEN: usize = 253;

/// Longest label of a provider domain, in bytes (as DNS).
pub const MAX_DOMAIN_LABEL_LEN: usize = 63;

/// Longest address: local part, `@`, domain.
pub const MAX_ADDRESS_LEN: usize = MAX_LOCAL_PART_LEN + 1 + MAX_DOMAIN_LEN;

/// Largest encoded fingerprint QR payload, in bytes.
pub const MAX_SCANNABLE_FINGERPRINT_LEN: usize = 128;

/// Iterations of SHA-512 in the fingerprint computation (SPEC.md 5.1).
pub const FINGERPRINT_ITERATIONS: u32 = 5200;

/// Default: envelopes older than this (by their header timestamp) are refused as too old.
pub const DEFAULT_MAX_MESSAGE_AGE_MS: u64 = 35 * 24 * 60 * 60 * 1000;

/// Default: envelopes dated further than this into the receiver's future are refused.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Default: most message ids a replay window remembers per sender. When a sender's
/// window is full, that sender's floor rises past the id it forgets, so an evicted id
/// can never be replayed (SPEC.md 8).
pub const DEFAULT_REPLAY_CAPACITY: usize = 10_000;

/// Most devices one user may list in a signed device list.
pub const MAX_DEVICES_PER_USER: usize = 16;

/// Largest encoded signed device list, in bytes.
pub const MAX_DEVICE_LIST_LEN: usize = MAX_DEVICES_PER_USER * MAX_CERTIFICATE_LEN + 1024;

/// Largest encoded prekey bundle, in bytes.
pub const MAX_PREKEY_BUNDLE_LEN: usize = 4096;

/// Largest encoded signed prekey, in bytes.
pub const MAX_SIGNED_PREKEY_LEN: usize = 1536;

/// Most message keys the ratchet derives ahead in one receiving chain (a larger gap is
/// refused, SPEC.md 15.4).
pub const MAX_SKIP_PER_CHAIN: u32 = 1000;

/// Most skipped message keys one session keeps; beyond this the oldest are deleted.
pub const MAX_SKIPPED_KEYS: usize = 2000;

/// Skipped message keys older than this are deleted.
pub const SKIPPED_KEY_MAX_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Most sessions kept per peer device (the active one plus older ones that may still
/// receive late messages).
pub const MAX_SESSIONS_PER_PEER_DEVICE: usize = 4;

/// Most one-time prekeys a device keeps unused.
pub const MAX_ONE_TIME_PREKEYS: usize = 200;

/// When fewer one-time prekeys than this remain, the owner is told to replenish.
pub const ONE_TIME_PREKEY_LOW_WATERMARK: usize = 20;

/// Most setup base keys remembered per signed prekey, to refuse replayed first messages.
/// When full, the prekey accepts no new sessions until it is rotated.
pub const MAX_BASE_KEYS_PER_SIGNED_PREKEY: usize = 100_000;

/// Signed prekeys that were rotated out still accept first messages for this long.
pub const SIGNED_PREKEY_GRACE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Largest encrypted state blob that `restore` accepts, in bytes.
pub const MAX_STATE_LEN: usize = 64 * 1024 * 1024;

/// Longest record payload (one commit batch) in a provider's log store
/// (`store::LogStore`, SPEC.md 16.12), in bytes: a longer batch is refused, and a
/// longer record in a file is damage. Local, not wire.
pub const MAX_LOG_RECORD_LEN: usize = 256 * 1024 * 1024;

/// A provider's log store is never compacted while it is shorter than this, in bytes.
pub const LOG_COMPACT_MIN_BYTES: u64 = 64 * 1024 * 1024;

/// A provider's log store is compacted once it is longer than this many times a
/// snapshot of its live entries (and than [`LOG_COMPACT_MIN_BYTES`]).
pub const LOG_COMPACT_RATIO: u64 = 2;

/// Bits of a mailbox `seq` below the provider's sequence epoch (SPEC.md 16.12 rule 5; the
/// reference's choice, not the protocol's): a provider that delivers items before their
/// writes are durable hands out numbers from `epoch << SEQ_EPOCH_SHIFT` on after each
/// start or failed write, so that no number a device may have seen is given to another
/// item. 2^40 numbers per mailbox per run, and 2^24 runs.
pub const SEQ_EPOCH_SHIFT: u32 = 40;

/// Members of one group.
pub const MAX_GROUP_MEMBERS: usize = 1000;

/// Members one group change names (created with, added or removed at once).
pub const MAX_GROUP_CHANGE_MEMBERS: usize = 100;

/// Encoded length of one group change: room for [`MAX_GROUP_CHANGE_MEMBERS`] members with
/// the longest addresses, and the author's certificate.
pub const MAX_GROUP_CHANGE_LEN: usize = 48 * 1024;

/// Bytes of a group title (UTF-8).
pub const MAX_GROUP_TITLE_LEN: usize = 256;

/// Encoded length of a group snapshot: room for [`MAX_GROUP_MEMBERS`] members with the
/// longest addresses.
pub const MAX_GROUP_SNAPSHOT_LEN: usize = 384 * 1024;

/// Encoded length of a sender key (`GroupSenderKey`).
pub const MAX_GROUP_SENDER_KEY_LEN: usize = 512;

/// Positions one group message may skip on its sender chain.
pub const MAX_GROUP_SKIP: u32 = 1000;

/// Skipped positions' keys a device keeps per group (the oldest are dropped first).
pub const MAX_GROUP_SKIPPED_KEYS: usize = 5000;

/// Sender chains a device keeps per other member device and group (the lowest-numbered
/// is dropped first).
pub const MAX_GROUP_CHAINS_PER_DEVICE: usize = 4;

/// Users one `SubmitGroup` or `GroupRelay` names: a whole group, with the members a
/// change removes (they learn of their removal).
pub const MAX_GROUP_RECIPIENTS: usize = MAX_GROUP_MEMBERS + MAX_GROUP_CHANGE_MEMBERS;

/// Groups one provider orders as their sequencer; a creating change beyond it is refused
/// with `too_many`.
pub const MAX_SEQUENCER_GROUPS: usize = 100_000;

/// Group items (envelopes and changes) a device holds unacknowledged while it waits for
/// the sender key or the change they need; beyond it the oldest is dropped and
/// acknowledged.
pub const MAX_PENDING_GROUP_ITEMS: usize = 1000;

/// Milliseconds from a sender key that could not reach a member device to the first
/// round that hands it again without a message (SPEC.md 19.2); the wait doubles with
/// each round that hands keys.
pub const GROUP_KEY_RETRY_MIN_MS: u64 = 30_000;

/// The longest wait between two such rounds.
pub const GROUP_KEY_RETRY_MAX_MS: u64 = 3_600_000;

// ---------------------------------------------------------------------------
// The client-provider and provider-provider protocol (SPEC.md section 16).

/// Largest frame a transport may deliver, in bytes. Checked before decoding: a frame
/// this size holds a submit of [`MAX_SUBMIT_ENVELOPES`] envelopes of the largest size.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Most envelopes in one `Submit`: one message to a user with the most devices, copied
/// to the sender's own other devices.
pub const MAX_SUBMIT_ENVELOPES: usize = 2 * MAX_DEVICES_PER_USER;

/// Most envelopes in one `Relay` batch between providers.
pub const MAX_RELAY_ENVELOPES: usize = 256;

/// Most mailbox items in one `Deliver` frame.
pub const MAX_DELIVER_ITEMS: usize = 64;

/// Most sequence numbers in one `DeliverAck`.
pub const MAX_ACK_SEQS: usize = 1024;

/// Most one-time prekeys in one `PublishPrekeys`.
pub const MAX_PUBLISH_ONE_TIME: usize = MAX_ONE_TIME_PREKEYS;

/// Most one-time prekeys a provider holds for one device; a publish beyond it is
/// refused with `too_many`.
pub const MAX_PROVIDER_ONE_TIME_PREKEYS: usize = 1000;

/// Below this many one-time prekeys the provider tells the device (`PrekeysLow`).
pub const PROVIDER_PREKEY_LOW_WATERMARK: usize = 20;

/// Most device ids named in one `FetchBundles`.
pub const MAX_FETCH_DEVICES: usize = MAX_DEVICES_PER_USER;

/// Length of the authentication nonces in `Hello` and `Challenge`.
pub const AUTH_NONCE_LEN: usize = 32;

/// Longest connection binding a transport may supply (a TLS exporter value is 32).
pub const MAX_BINDING_LEN: usize = 64;

/// Longest `Error.message`, in bytes; longer messages are refused by the decoder.
pub const MAX_ERROR_MESSAGE_LEN: usize = 256;

/// Longest `Error.code`, in bytes.
pub const MAX_ERROR_CODE_LEN: usize = 32;

/// Most items queued in one device's mailbox. A submit or relay that would exceed it
/// is refused with the retryable `mailbox_full`.
pub const MAX_MAILBOX_DEPTH: usize = 10_000;

/// Most envelopes a provider queues for one remote provider. A submit that would
/// exceed it is refused with the retryable `queue_full`.
pub const MAX_REMOTE_QUEUE_DEPTH: usize = 100_000;

/// Most mailbox items sent to a device and not yet acknowledged.
pub const MAX_DELIVER_IN_FLIGHT: usize = 256;

/// Most relayed envelopes sent to one remote provider and not yet acknowledged. A relay
/// is answered once the receiver's write is durable, so the window must cover the rate
/// times a commit cycle: 8192 keeps 110,000 envelopes/s flowing through 75 ms cycles.
pub const MAX_RELAY_IN_FLIGHT: usize = 32 * MAX_RELAY_ENVELOPES;

/// Requests a device may make: bucket size (burst).
pub const CLIENT_REQUEST_BURST: u32 = 1000;

/// Requests a device may make: sustained rate per second.
pub const CLIENT_REQUESTS_PER_SECOND: u32 = 500;

/// Requests a remote provider may make: bucket size (burst).
pub const PROVIDER_REQUEST_BURST: u32 = 20_000;

/// Requests a remote provider may make: sustained rate per second.
pub const PROVIDER_REQUESTS_PER_SECOND: u32 = 10_000;

/// Bundle and device-list fetches one requesting user may make: bucket size.
pub const FETCH_BURST: u32 = 60;

/// Bundle and device-list fetches one requesting user may make: per minute.
pub const FETCHES_PER_MINUTE: u32 = 60;

/// One-time prekeys one requesting user may take from one provider: bucket size.
/// Beyond it bundles come without a one-time prekey (the ML-KEM last-resort prekey
/// still gives a post-quantum setup), so no one can drain a user's pool.
pub const ONE_TIME_PREKEY_BURST: u32 = 20;

/// One-time prekeys one requesting user may take from one provider: per hour.
pub const ONE_TIME_PREKEYS_PER_HOUR: u32 = 20;

/// Most requesters whose rate buckets a provider remembers; the least recently used
/// is forgotten (a forgotten bucket restarts full).
pub const MAX_RATE_BUCKETS: usize = 100_000;

/// First retry delay for requests and relays.
pub const RETRY_INITIAL_MS: u64 = 250;

/// Longest retry delay (the exponential backoff stops growing here).
pub const RETRY_MAX_MS: u64 = 30_000;

/// How long a device keeps retrying a submit before reporting the message
/// undeliverable.
pub const SUBMIT_EXPIRY_MS: u64 = 3 * 24 * 60 * 60 * 1000;

/// How long a provider keeps retrying a relay before reporting the envelope
/// undeliverable to its sender.
pub const RELAY_EXPIRY_MS: u64 = 3 * 24 * 60 * 60 * 1000;

/// How long an unacknowledged request, relay or delivery waits before it is sent again.
pub const RESEND_AFTER_MS: u64 = 2_000;

/// Longest wait before a mailbox item that a device keeps unacknowledged on one connection
/// is sent again: each resend waits twice as long as the one before, from
/// [`RESEND_AFTER_MS`] up to this (SPEC.md 16.7). A device may hold an item it cannot
/// process yet for hours (a group envelope whose sender key has not come); resending it
/// every two seconds would cost its battery and the provider's bandwidth for nothing, and
/// QUIC does not lose frames on a live connection.
pub const DELIVER_RESEND_MAX_MS: u64 = 300_000;

/// How long a connection may take to authenticate before it is closed.
pub const AUTH_TIMEOUT_MS: u64 = 10_000;

/// How long a provider remembers the id of a stored envelope to drop a resubmission
/// or re-relay: covers the longest submit and relay retries.
pub const DEDUP_RETENTION_MS: u64 = SUBMIT_EXPIRY_MS + RELAY_EXPIRY_MS;

/// Most envelope ids a provider remembers for deduplication; the oldest is forgotten
/// first. Forgetting only costs a redundant copy: devices drop duplicates end to end.
pub const MAX_DEDUP_ENTRIES: usize = 1_000_000;

/// Most requests a device keeps outstanding (queued sends, fetches); a command beyond
/// it is refused with `ClientError::Busy`.
pub const MAX_CLIENT_PENDING: usize = 10_000;

/// Most received envelopes a device holds while it fetches their senders' device lists.
pub const MAX_HELD_ENVELOPES: usize = 1_000;

/// Most bundle or device-list fetches a provider forwards to remote providers and
/// waits on at once.
pub const MAX_PENDING_REMOTE_FETCHES: usize = 10_000;

/// Most requests a device has sent and not had answered at once; the rest wait their
/// turn (so a reconnect with a long backlog does not trip the provider's rate limit).
pub const MAX_CLIENT_IN_FLIGHT: usize = 64;

/// One-time prekeys a device makes and publishes when its provider reports
/// `PrekeysLow`. The local pool stays within [`MAX_ONE_TIME_PREKEYS`]: the oldest are
/// deleted to make room.
pub const CLIENT_PREKEY_REFILL: usize = MAX_ONE_TIME_PREKEYS / 2;

/// Rounds of bundle fetches a device makes for one message before it seals the message
/// to the devices it has sessions with and reports the others undeliverable.
pub const CLIENT_FETCH_ROUNDS: u8 = 2;

/// Provider `Undeliverable` notices a device remembers to report each one once, even
/// if the provider delivers it again.
pub const MAX_CLIENT_RECENT_NOTICES: usize = 1024;

/// How long a provider waits for a remote provider to answer a forwarded fetch before
/// answering its device with the retryable `unreachable`.
pub const FORWARD_TIMEOUT_MS: u64 = 30_000;

/// Longest static directory file (SPEC.md 16.11) a resolver reads, in bytes.
pub const MAX_DIRECTORY_LEN: usize = 1024 * 1024;

/// How long a device trusts its copy of a user's device list when sending: an older copy
/// is fetched again first, so that a device the user added is reached.
pub const CLIENT_LIST_REFRESH_MS: u64 = 60 * 60 * 1000;

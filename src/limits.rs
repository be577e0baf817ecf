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

//! End-to-end sessions (SPEC.md 15): asynchronous post-quantum-hybrid setup and the
//! Double Ratchet, carried in the signed envelope as payload kind `SESSION`.
//!
//! * [`prekeys`]: what a device publishes (signed X25519 prekey, ML-KEM-768 prekey,
//!   one-time prekeys) and the secrets it keeps.
//! * Setup (SPEC.md 15.3): the initiator combines three or four X25519 results with an
//!   ML-KEM-768 shared secret, bound to both device certificates, into the session's
//!   first root key, so traffic recorded today stays secret if X25519 falls later.
//! * The Double Ratchet (SPEC.md 15.4): forward secrecy per message, post-compromise
//!   security after one round trip, bounded out-of-order delivery.
//! * [`Account`]: one device's sessions with every device of its contacts and of its
//!   own user, driven by signed device lists; encrypted persistence.

mod account;
mod persist;
pub mod prekeys;
mod ratchet;

use std::collections::BTreeSet;

use rand_core::CryptoRng;

use crate::crypto::{self, Label, Secret};
use crate::envelope::{ContentError, OpenError, SealError, SessionSetup};
use crate::identity::{Device, DeviceCertificate, DeviceId, DeviceListError, IdentityKey};
use crate::limits::MAX_SKIPPED_KEYS;
use crate::time::UnixMillis;

pub use account::{Account, AccountEvent, OutgoingEnvelope, Received, Sent, SessionInfo};
pub use persist::{STATE_FORMAT, STATE_MAGIC};
pub use prekeys::{
    PrekeyBundle, PrekeyError, PrekeyKind, PrekeyStore, PublishedPrekeys, SignedPrekey,
};

pub(crate) use ratchet::{Ratchet, RatchetHeader, kdf_ck, message_keys};

#[cfg(test)]
pub(crate) fn kdf_ck_for_vectors(ck: &Secret<32>) -> (Secret<32>, Secret<32>) {
    ratchet::kdf_ck(ck)
}

/// Why a session operation failed. Stable [`code`](Self::code)s, SPEC.md 10. A failed
/// receive changes no state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The envelope was refused before the session layer (size, structure, signature,
    /// recipient, freshness, ...).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The envelope could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A prekey bundle was refused.
    #[error(transparent)]
    Prekey(#[from] PrekeyError),
    /// A device list was refused.
    #[error(transparent)]
    DeviceList(#[from] DeviceListError),
    /// The decrypted content is invalid.
    #[error("content is invalid: {0}")]
    Content(ContentError),
    /// A first message names a prekey this device does not have (used or expired).
    #[error("unknown {kind} prekey {id}")]
    UnknownPrekey {
        /// "signed", "one_time" or "kem".
        kind: &'static str,
        /// The id named.
        id: u32,
    },
    /// A first message reuses a base key already accepted with this signed prekey.
    #[error("session setup replayed")]
    ReplayedSetup,
    /// The signed prekey has accepted as many sessions as it may remember.
    #[error("signed prekey exhausted; rotate it")]
    PrekeyExhausted,
    /// A session message for which no session exists (and no setup is attached).
    #[error("no session with the sender device")]
    NoSession,
    /// A message whose key was already used (a duplicate or replay).
    #[error("duplicate message")]
    Duplicate,
    /// A message whose skipped key expired ([`SKIPPED_KEY_MAX_AGE_MS`](crate::limits::SKIPPED_KEY_MAX_AGE_MS))
    /// or was deleted to respect [`MAX_SKIPPED_KEYS`].
    #[error("message key expired")]
    KeyExpired,
    /// A message too far ahead in its chain.
    #[error("message is {gap} ahead in its chain, the maximum is {max}")]
    TooFarAhead {
        /// How far ahead.
        gap: u32,
        /// The maximum.
        max: u32,
    },
    /// The AEAD refused the message.
    #[error("decryption failed")]
    DecryptFailed,
    /// A ratchet or base key is low-order.
    #[error("non-contributory key agreement")]
    NonContributory,
    /// This side has no sending chain yet (a responder before its first receive).
    #[error("cannot send on this session yet")]
    CannotSendYet,
    /// 2^32 messages in one sending chain.
    #[error("sending chain exhausted")]
    ChainExhausted,
    /// Sessions are missing with these devices: fetch their prekey bundles.
    #[error("prekey bundles needed for {} device(s)", .0.len())]
    NeedBundles(Vec<(crate::address::Address, DeviceId)>),
    /// No device list is known for this user.
    #[error("no device list known for {0}")]
    UnknownRecipient(crate::address::Address),
    /// A bundle for a device that is not on its user's current signed device list.
    #[error("device is not on its user's signed device list")]
    NotOnDeviceList,
    /// Persisted state could not be read.
    #[error("state: {0}")]
    State(&'static str),
}

impl SessionError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Open(e) => e.code(),
            Self::Seal(_) => "seal",
            Self::Prekey(e) => e.code(),
            Self::DeviceList(e) => e.code(),
            Self::Content(_) => "invalid_content",
            Self::UnknownPrekey { .. } => "unknown_prekey",
            Self::ReplayedSetup => "replayed_setup",
            Self::PrekeyExhausted => "prekey_exhausted",
            Self::NoSession => "no_session",
            Self::Duplicate => "duplicate",
            Self::TooFarAhead { .. } => "too_far_ahead",
            Self::KeyExpired => "key_expired",
            Self::DecryptFailed => "decrypt_failed",
            Self::NonContributory => "non_contributory",
            Self::CannotSendYet => "cannot_send_yet",
            Self::ChainExhausted => "chain_exhausted",
            Self::NeedBundles(_) => "need_bundles",
            Self::UnknownRecipient(_) => "unknown_recipient",
            Self::NotOnDeviceList => "not_on_device_list",
            Self::State(_) => "invalid_state",
        }
    }
}

/// Tracks which sequence numbers of the peer have arrived, so gaps are visible.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SequenceTracker {
    /// The highest sequence number received.
    pub(crate) highest: u64,
    /// Numbers below `highest` not received yet (bounded).
    pub(crate) missing: BTreeSet<u64>,
}

impl SequenceTracker {
    /// Records `seq`; returns the numbers that are now known to be missing before it.
    pub(crate) fn record(&mut self, seq: u64) -> Vec<u64> {
        if seq > self.highest {
            let new_missing: Vec<u64> = (self.highest + 1..seq).take(MAX_SKIPPED_KEYS).collect();
            self.missing.extend(new_missing.iter().copied());
            self.highest = seq;
            while self.missing.len() > MAX_SKIPPED_KEYS {
                self.missing.pop_first();
            }
            new_missing
        } else {
            self.missing.remove(&seq);
            Vec::new()
        }
    }
}

/// One session with one peer device.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) ratchet: Ratchet,
    /// The initiator's base key: identifies the session on both sides.
    pub(crate) base_key: [u8; 32],
    /// The initiator attaches this to its messages until it has received a reply.
    pub(crate) setup: Option<SessionSetup>,
    /// The last sequence number sent.
    pub(crate) send_seq: u64,
    pub(crate) received: SequenceTracker,
    pub(crate) peer_identity: IdentityKey,
    pub(crate) created: UnixMillis,
}

/// The inputs of the setup key derivation, as both sides compute them.
struct SetupInputs<'a> {
    dh1: Secret<32>,
    dh2: Secret<32>,
    dh3: Secret<32>,
    dh4: Option<Secret<32>>,
    kem: Secret<32>,
    initiator: &'a DeviceCertificate,
    responder: &'a DeviceCertificate,
    base_key: &'a [u8; 32],
    signed_prekey: &'a [u8; 32],
    one_time_prekey: Option<[u8; 32]>,
    kem_prekey: &'a [u8],
    kem_ciphertext: &'a [u8],
}

/// The session's first root key (SPEC.md 15.3):
/// `HKDF-SHA256(salt = 32 zero bytes, ikm = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4] ‖ SS,
/// info = framed("kogge/v1/kdf/session-setup", SHA-256(initiator certificate),
/// SHA-256(responder certificate), base key, signed prekey, one-time prekey or empty,
/// SHA-256(ML-KEM prekey), SHA-256(ML-KEM ciphertext)))`, 32 bytes.
fn setup_secret(i: &SetupInputs<'_>) -> Secret<32> {
    let mut ikm = zeroize::Zeroizing::new(Vec::with_capacity(32 * 6));
    ikm.extend_from_slice(&[0xff; 32]);
    ikm.extend_from_slice(i.dh1.expose());
    ikm.extend_from_slice(i.dh2.expose());
    ikm.extend_from_slice(i.dh3.expose());
    if let Some(d) = &i.dh4 {
        ikm.extend_from_slice(d.expose());
    }
    ikm.extend_from_slice(i.kem.expose());
    let ih = crypto::sha256(i.initiator.encoded());
    let rh = crypto::sha256(i.responder.encoded());
    let kh = crypto::sha256(i.kem_prekey);
    let ch = crypto::sha256(i.kem_ciphertext);
    let opk = i.one_time_prekey.unwrap_or_default();
    let opk: &[u8] = if i.one_time_prekey.is_some() {
        &opk
    } else {
        &[]
    };
    let mut sk = Secret::<32>::zeroed();
    let _ = crypto::hkdf_sha256(
        &[0u8; 32],
        &ikm,
        Label::SessionSetup,
        &[&ih, &rh, i.base_key, i.signed_prekey, opk, &kh, &ch],
        sk.expose_mut(),
    );
    sk
}

fn x(secret: &x25519_dalek::StaticSecret, public: &[u8; 32]) -> Result<Secret<32>, SessionError> {
    crypto::x25519(secret, &x25519_dalek::PublicKey::from(*public))
        .map_err(|_| SessionError::NonContributory)
}

fn x_secret(secret: &Secret<32>, public: &[u8; 32]) -> Result<Secret<32>, SessionError> {
    x(&x25519_dalek::StaticSecret::from(*secret.expose()), public)
}

/// Every intermediate value of a setup, for test vectors.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct SetupTrace {
    pub(crate) dh: Vec<Secret<32>>,
    pub(crate) kem_shared: Secret<32>,
    pub(crate) kem_ciphertext: Vec<u8>,
    pub(crate) root: Secret<32>,
}

/// The initiator's side of setup: a new session with the bundle's device.
pub(crate) fn initiate<R: CryptoRng + ?Sized>(
    own: &Device,
    bundle: &PrekeyBundle,
    now: UnixMillis,
    rng: &mut R,
) -> Result<Session, SessionError> {
    let base = x25519_dalek::StaticSecret::random_from_rng(rng);
    let mut m = Secret::<32>::zeroed();
    rng.fill_bytes(m.expose_mut());
    initiate_with(own, bundle, now, base, &m, rng).map(|(s, _)| s)
}

pub(crate) fn initiate_with<R: CryptoRng + ?Sized>(
    own: &Device,
    bundle: &PrekeyBundle,
    now: UnixMillis,
    base: x25519_dalek::StaticSecret,
    kem_randomness: &Secret<32>,
    rng: &mut R,
) -> Result<(Session, SetupTrace), SessionError> {
    let base_key = x25519_dalek::PublicKey::from(&base).to_bytes();
    let spk = bundle.signed_prekey().x25519();
    let responder = bundle.certificate();
    let dh1 = x(own.keys().agreement(), &spk)?;
    let dh2 = x(&base, responder.agreement_key().as_bytes())?;
    let dh3 = x(&base, &spk)?;
    let opk = bundle.one_time_prekey().map(SignedPrekey::x25519);
    let dh4 = opk.map(|k| x(&base, &k)).transpose()?;
    let (kem_ciphertext, kem) =
        crypto::kem_encapsulate_deterministic(bundle.kem_prekey().public_key(), kem_randomness)
            .map_err(|_| SessionError::Prekey(PrekeyError::InvalidField("kem_prekey")))?;
    let trace_dh: Vec<Secret<32>> = [Some(&dh1), Some(&dh2), Some(&dh3), dh4.as_ref()]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let kem_shared = kem.clone();
    let root = setup_secret(&SetupInputs {
        dh1,
        dh2,
        dh3,
        dh4,
        kem,
        initiator: own.certificate(),
        responder,
        base_key: &base_key,
        signed_prekey: &spk,
        one_time_prekey: opk,
        kem_prekey: bundle.kem_prekey().public_key(),
        kem_ciphertext: &kem_ciphertext,
    });
    let ratchet = Ratchet::initiator(&root, spk, rng)?;
    let session = Session {
        ratchet,
        base_key,
        setup: Some(SessionSetup {
            base_key,
            signed_prekey_id: bundle.signed_prekey().id(),
            one_time_prekey_id: bundle.one_time_prekey().map(SignedPrekey::id),
            kem_prekey_id: bundle.kem_prekey().id(),
            kem_ciphertext: bytes::Bytes::from(kem_ciphertext.clone()),
        }),
        send_seq: 0,
        received: SequenceTracker::default(),
        peer_identity: *responder.identity_key(),
        created: now,
    };
    let trace = SetupTrace {
        dh: trace_dh,
        kem_shared,
        kem_ciphertext,
        root,
    };
    Ok((session, trace))
}

/// The responder's side of setup, from a first message's setup fields. Reads the
/// prekey store but does not change it: the caller records the setup only after the
/// first message decrypted.
pub(crate) fn respond(
    own: &Device,
    prekeys: &PrekeyStore,
    initiator: &DeviceCertificate,
    setup: &SessionSetup,
    now: UnixMillis,
) -> Result<Session, SessionError> {
    // A rotated-out prekey accepts first messages only during its grace period, even if
    // it has not been purged yet.
    let in_grace = |retired: Option<UnixMillis>| {
        retired.is_none_or(|t| t.saturating_add(crate::limits::SIGNED_PREKEY_GRACE_MS) >= now)
    };
    let spk = prekeys
        .signed
        .get(&setup.signed_prekey_id)
        .filter(|s| in_grace(s.retired_at))
        .ok_or(SessionError::UnknownPrekey {
            kind: "signed",
            id: setup.signed_prekey_id,
        })?;
    let kem = prekeys
        .kem
        .get(&setup.kem_prekey_id)
        .filter(|k| in_grace(k.retired_at))
        .ok_or(SessionError::UnknownPrekey {
            kind: "kem",
            id: setup.kem_prekey_id,
        })?;
    let opk = match setup.one_time_prekey_id {
        None => None,
        Some(id) => Some(
            prekeys
                .one_time
                .get(&id)
                .ok_or(SessionError::UnknownPrekey {
                    kind: "one_time",
                    id,
                })?,
        ),
    };
    if prekeys.base_key_seen(setup.signed_prekey_id, &setup.base_key) {
        return Err(SessionError::ReplayedSetup);
    }
    if prekeys.base_keys_full(setup.signed_prekey_id) {
        return Err(SessionError::PrekeyExhausted);
    }
    let dh1 = x_secret(&spk.secret, initiator.agreement_key().as_bytes())?;
    let dh2 = x(own.keys().agreement(), &setup.base_key)?;
    let dh3 = x_secret(&spk.secret, &setup.base_key)?;
    let dh4 = opk
        .map(|o| x_secret(&o.secret, &setup.base_key))
        .transpose()?;
    let kem_shared = kem
        .expanded
        .decapsulate(&setup.kem_ciphertext)
        .map_err(|_| SessionError::DecryptFailed)?;
    let root = setup_secret(&SetupInputs {
        dh1,
        dh2,
        dh3,
        dh4,
        kem: kem_shared,
        initiator,
        responder: own.certificate(),
        base_key: &setup.base_key,
        signed_prekey: &spk.public.x25519(),
        one_time_prekey: opk.map(|o| o.public.x25519()),
        kem_prekey: kem.public.public_key(),
        kem_ciphertext: &setup.kem_ciphertext,
    });
    Ok(Session {
        ratchet: Ratchet::responder(&root, spk.secret.clone(), spk.public.x25519()),
        base_key: setup.base_key,
        setup: None,
        send_seq: 0,
        received: SequenceTracker::default(),
        peer_identity: *initiator.identity_key(),
        created: now,
    })
}

#[cfg(test)]
pub(crate) mod tests;

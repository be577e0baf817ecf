//! Encrypted, versioned persistence of an [`Account`] (SPEC.md 15.8).
//!
//! An application must be able to stop at any moment and carry on later, so
//! [`Account::save`] turns everything an account holds (device keys, prekeys, sessions
//! with their skipped keys, device lists, the replay window) into one blob encrypted
//! under a 32-byte key the application supplies, and [`Account::restore`] reads it back.
//!
//! The blob format, the order of checks on reading and what restoring an old copy
//! means are documented on [`Account::save`] and [`Account::restore`], which are public.
//!
//! # Zeroization
//!
//! The plaintext is built in and decrypted into buffers that are wiped when dropped.
//! While encoding, every secret field owns a wiped-on-drop copy; while decoding, every
//! field is a slice of the decrypted buffer (prost decodes `bytes` fields without
//! copying), and every public object is copied out, so that nothing in the restored
//! account keeps the buffer alive and it is wiped before `restore` returns.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::prekeys::{KemSecret, OneTimeSecret, SignedSecret};
use super::ratchet::SkippedKey;
use super::{
    Account, PrekeyKind, PrekeyStore, Ratchet, SequenceTracker, Session, SessionError, SignedPrekey,
};
use crate::address::Address;
use crate::crypto::{self, KEM_CIPHERTEXT_LEN, Label, Secret};
use crate::envelope::{MessageId, ReplayPolicy, ReplayWindow, SessionSetup};
use crate::identity::{
    Device, DeviceCertificate, DeviceId, DeviceKeyPair, DeviceList, DeviceLists, IdentityKey,
};
use crate::limits::{
    AEAD_TAG_LEN, MAX_BASE_KEYS_PER_SIGNED_PREKEY, MAX_ONE_TIME_PREKEYS,
    MAX_SESSIONS_PER_PEER_DEVICE, MAX_SKIPPED_KEYS, MAX_STATE_LEN,
};
use crate::time::UnixMillis;
use crate::wire;

/// The first 8 bytes of every state blob (SPEC.md 15.8).
pub const STATE_MAGIC: [u8; 8] = *b"KOGGEST1";

/// The `AccountState.format` this version writes, and the only one it reads.
pub const STATE_FORMAT: u32 = 1;

const NONCE_LEN: usize = 12;

// The errors `restore` reports, as `SessionError::State(..)`, before field checks.
const E_TOO_LARGE: &str = "state blob is larger than MAX_STATE_LEN";
const E_MAGIC: &str = "not a Kogge state blob (bad magic)";
const E_TRUNCATED: &str = "state blob is truncated";
const E_DECRYPT: &str = "state does not decrypt (wrong key, or the blob was altered)";
const E_DECODE: &str = "state is not a valid AccountState";
const E_FORMAT: &str = "unsupported state format";

fn err(message: &'static str) -> SessionError {
    SessionError::State(message)
}

/// `framed("kogge/v1/aad/state", magic)`.
fn aad() -> Vec<u8> {
    crypto::framed(Label::StateEncryption, &[&STATE_MAGIC])
}

impl Account {
    /// Serialises everything this account holds (device keys, prekeys, sessions with
    /// their skipped keys, device lists, the replay window) into a blob encrypted under
    /// `key`, the application's 32-byte storage key (SPEC.md 15.8):
    ///
    /// ```text
    /// blob      = magic ‖ nonce ‖ sealed
    /// magic     = "KOGGEST1"                                       8 bytes, ASCII
    /// nonce     = 12 bytes from rng, fresh for every save
    /// sealed    = ChaCha20-Poly1305(key, nonce, aad, plaintext)    ciphertext ‖ 16-byte tag
    /// aad       = framed("kogge/v1/aad/state", magic)
    ///           = u32be(18) ‖ "kogge/v1/aad/state" ‖ u32be(8) ‖ "KOGGEST1"
    /// plaintext = protobuf encoding of kogge.v1.AccountState
    ///             (proto/kogge/v1/state.proto), format = 1
    /// ```
    ///
    /// The magic names the blob layout and is authenticated (it is the associated
    /// data); `AccountState.format`, inside the ciphertext, names the layout of the
    /// state. Two saves of one state differ (fresh nonce); since nonces are random, one
    /// key should seal fewer than 2^32 blobs. The plaintext only ever exists in memory
    /// that is wiped when dropped. Saving cannot fail.
    ///
    /// # Restoring an old copy
    ///
    /// The blob does not prevent rollback: an older blob under the same key restores.
    /// A sender restored from an old copy reuses chain positions, but never an AEAD key
    /// and nonce, because message keys are salted with the random message id (SPEC.md
    /// 15.4); its peers refuse the reused positions as `duplicate` until its ratchet
    /// moves on. A receiver restored from an old copy has forgotten what it received
    /// since, including used one-time prekeys, remembered setup base keys and replay
    /// window entries, so envelopes it received since that copy can be replayed to it.
    /// Save after every change (every `encrypt`, `decrypt`, `add_bundle`, device-list
    /// and prekey change) before acting on its output, and keep only the newest blob.
    pub fn save<R: CryptoRng + ?Sized>(&self, key: &Secret<32>, rng: &mut R) -> Vec<u8> {
        let state = self.to_state();
        seal(key, &encode_state(&state), rng)
    }

    /// Reads a blob written by [`save`](Self::save) under the same `key`. The blob is
    /// refused unless all of these hold, checked in this order (SPEC.md 15.8):
    ///
    /// 1. it is at most [`MAX_STATE_LEN`] bytes;
    /// 2. it starts with the magic `KOGGEST1`;
    /// 3. it is long enough for the nonce and the tag;
    /// 4. it decrypts under `key` (a wrong key and an altered blob are one error);
    /// 5. the plaintext is a valid `AccountState` protobuf;
    /// 6. its `format` is one this version knows (only 1);
    /// 7. every field is well formed: lengths, bounds ([`MAX_SKIPPED_KEYS`],
    ///    [`MAX_ONE_TIME_PREKEYS`], ...), uniqueness, every certificate, device list and
    ///    prekey re-verified by its verifying decoder, every prekey secret matching its
    ///    signed public key, sessions only with listed devices, and the device keys
    ///    matching the device certificate.
    ///
    /// A restored account therefore holds only verified objects. Every failure is a
    /// [`SessionError::State`] whose message names the check or field. Never panics,
    /// whatever the input.
    pub fn restore(blob: &[u8], key: &Secret<32>) -> Result<Account, SessionError> {
        let plaintext = open(blob, key)?;
        let state = wire::AccountState::decode(plaintext).map_err(|_| err(E_DECODE))?;
        if state.format != STATE_FORMAT {
            return Err(err(E_FORMAT));
        }
        from_state(&state)
    }

    /// The state as its protobuf message. Deterministic: every collection is written in
    /// a fixed order.
    fn to_state(&self) -> wire::AccountState {
        let (signing, agreement) = self.device.keys().secret_bytes();
        let (groups, stashed_sender_keys) = self.groups.to_state();
        let mut contacts: Vec<&DeviceList> = self.contacts.iter().collect();
        contacts.sort_by(|a, b| a.address().cmp(b.address()));
        wire::AccountState {
            format: STATE_FORMAT,
            device: Some(wire::DeviceState {
                signing_seed: secret_field(signing.expose()),
                agreement_secret: secret_field(agreement.expose()),
                certificate: self.device.certificate().encoded().clone(),
            }),
            prekeys: Some(prekeys_to_state(&self.prekeys)),
            own_device_list: self.own_list.encoded().clone(),
            contact_device_lists: contacts.iter().map(|l| l.encoded().clone()).collect(),
            sessions: self
                .sessions
                .iter()
                .map(|((address, device), sessions)| wire::PeerSessionsState {
                    address: address.as_str().to_owned(),
                    device_id: Bytes::copy_from_slice(device.as_bytes()),
                    sessions: sessions.iter().map(session_to_state).collect(),
                })
                .collect(),
            replay: Some(replay_to_state(&self.replay)),
            groups,
            stashed_sender_keys,
        }
    }
}

/// The encoded state, in a buffer wiped on drop. The buffer is allocated once at the
/// exact size, so no reallocation leaves an unwiped copy behind.
fn encode_state(state: &wire::AccountState) -> Zeroizing<Vec<u8>> {
    let mut plaintext = Zeroizing::new(Vec::with_capacity(state.encoded_len()));
    // Encoding into a `Vec` cannot run out of room; `encode` fails only for full buffers.
    let _ = state.encode(&mut *plaintext);
    plaintext
}

/// `magic ‖ nonce ‖ ChaCha20-Poly1305(key, nonce, aad, plaintext)`.
fn seal<R: CryptoRng + ?Sized>(key: &Secret<32>, plaintext: &[u8], rng: &mut R) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut blob =
        Vec::with_capacity(STATE_MAGIC.len() + NONCE_LEN + plaintext.len() + AEAD_TAG_LEN);
    blob.extend_from_slice(&STATE_MAGIC);
    blob.extend_from_slice(&nonce);
    // ChaCha20-Poly1305 refuses only keys of the wrong length, and a `Secret<32>` never
    // is one. Were it ever to fail, the blob would end after the nonce and `restore`
    // would refuse it as truncated: nothing unencrypted is written.
    if let Ok(sealed) = crypto::aead_seal(key, &nonce, &aad(), plaintext) {
        blob.extend_from_slice(&sealed);
    }
    blob
}

/// Checks size and magic and decrypts. The plaintext is returned as `Bytes` that own
/// the wiped-on-drop buffer, so that decoding slices it without copying.
fn open(blob: &[u8], key: &Secret<32>) -> Result<Bytes, SessionError> {
    if blob.len() > MAX_STATE_LEN {
        return Err(err(E_TOO_LARGE));
    }
    let (magic, rest) = blob.split_first_chunk::<8>().ok_or_else(|| err(E_MAGIC))?;
    if *magic != STATE_MAGIC {
        return Err(err(E_MAGIC));
    }
    let (nonce, sealed) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or_else(|| err(E_TRUNCATED))?;
    if sealed.len() < AEAD_TAG_LEN {
        return Err(err(E_TRUNCATED));
    }
    let plaintext = crypto::aead_open(key, nonce, &aad(), sealed).map_err(|_| err(E_DECRYPT))?;
    Ok(Bytes::from_owner(plaintext))
}

/// A secret as a `bytes` field: an owned copy that is wiped when the field is dropped.
fn secret_field(secret: &[u8]) -> Bytes {
    Bytes::from_owner(Zeroizing::new(secret.to_vec()))
}

/// A public field copied out of the decrypted buffer, so that nothing restored keeps
/// that buffer (and the secrets in it) alive.
fn owned(field: &Bytes) -> Bytes {
    Bytes::copy_from_slice(field)
}

fn prekeys_to_state(p: &PrekeyStore) -> wire::PrekeyStoreState {
    wire::PrekeyStoreState {
        signed_prekeys: p
            .signed
            .values()
            .map(|s| {
                let mut base_keys: Vec<&[u8; 32]> = s.base_keys.iter().collect();
                base_keys.sort_unstable();
                wire::SignedPrekeyState {
                    secret: secret_field(s.secret.expose()),
                    public: s.public.encoded().clone(),
                    retired_at_ms: s.retired_at.map(UnixMillis::as_millis),
                    base_keys: base_keys
                        .into_iter()
                        .map(|k| Bytes::copy_from_slice(k))
                        .collect(),
                }
            })
            .collect(),
        kem_prekeys: p
            .kem
            .values()
            .map(|k| wire::KemPrekeyState {
                seed: secret_field(k.seed.expose()),
                public: k.public.encoded().clone(),
                retired_at_ms: k.retired_at.map(UnixMillis::as_millis),
            })
            .collect(),
        one_time_prekeys: p
            .one_time
            .values()
            .map(|o| wire::OneTimePrekeyState {
                secret: secret_field(o.secret.expose()),
                public: o.public.encoded().clone(),
            })
            .collect(),
        current_signed_prekey_id: p.current_signed.id(),
        current_kem_prekey_id: p.current_kem.id(),
        next_id: p.next_id,
    }
}

fn session_to_state(s: &Session) -> wire::SessionState {
    let r = &s.ratchet;
    wire::SessionState {
        ratchet: Some(wire::RatchetState {
            root: secret_field(r.root.expose()),
            dhs: secret_field(r.dhs.expose()),
            dhr: r.dhr.map(|k| Bytes::copy_from_slice(&k)),
            cks: r.cks.as_ref().map(|k| secret_field(k.expose())),
            ns: r.ns,
            pn: r.pn,
            ckr: r.ckr.as_ref().map(|k| secret_field(k.expose())),
            nr: r.nr,
            skipped: r
                .skipped
                .iter()
                .map(|((dh, n), k)| wire::SkippedKeyState {
                    ratchet_key: Bytes::copy_from_slice(dh),
                    n: *n,
                    mk: secret_field(k.mk.expose()),
                    stored_at_ms: k.stored_at.as_millis(),
                    order: k.order,
                })
                .collect(),
            next_order: r.next_order,
        }),
        base_key: Bytes::copy_from_slice(&s.base_key),
        setup: s.setup.as_ref().map(|x| wire::PendingSetupState {
            base_key: Bytes::copy_from_slice(&x.base_key),
            signed_prekey_id: x.signed_prekey_id,
            one_time_prekey_id: x.one_time_prekey_id,
            kem_prekey_id: x.kem_prekey_id,
            kem_ciphertext: x.kem_ciphertext.clone(),
        }),
        send_seq: s.send_seq,
        received_highest: s.received.highest,
        received_missing: s.received.missing.iter().copied().collect(),
        peer_identity_key: Bytes::copy_from_slice(&s.peer_identity.to_bytes()),
        created_ms: s.created.as_millis(),
    }
}

fn replay_to_state(w: &ReplayWindow) -> wire::ReplayWindowState {
    let policy = w.policy();
    let mut senders: Vec<_> = w.persisted_senders().collect();
    senders.sort_by(|a, b| a.0.cmp(b.0));
    wire::ReplayWindowState {
        policy: Some(wire::ReplayPolicyState {
            max_age_ms: policy.max_age_ms,
            max_skew_ms: policy.max_skew_ms,
            capacity: u64::try_from(policy.capacity).unwrap_or(u64::MAX),
        }),
        senders: senders
            .into_iter()
            .map(|(address, floor, entries)| wire::ReplaySenderState {
                address: address.as_str().to_owned(),
                floor_ms: floor.as_millis(),
                entries: entries
                    .iter()
                    .map(|(ts, id)| wire::ReplayEntryState {
                        timestamp_ms: ts.as_millis(),
                        message_id: Bytes::copy_from_slice(id.as_bytes()),
                    })
                    .collect(),
            })
            .collect(),
    }
}

// ---- Reading ----------------------------------------------------------------------

fn array<const N: usize>(field: &[u8], what: &'static str) -> Result<[u8; N], SessionError> {
    field.try_into().map_err(|_| err(what))
}

/// A secret field into a [`Secret`], filled in place (no stack copy).
fn secret<const N: usize>(field: &[u8], what: &'static str) -> Result<Secret<N>, SessionError> {
    if field.len() != N {
        return Err(err(what));
    }
    let mut s = Secret::<N>::zeroed();
    s.expose_mut().copy_from_slice(field);
    Ok(s)
}

fn x25519_public(secret: &Secret<32>) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret.expose())).to_bytes()
}

/// Whether a prekey id was handed out before `next_id` (which saturates at `u32::MAX`).
fn id_below(id: u32, next_id: u32) -> bool {
    id < next_id || next_id == u32::MAX
}

fn from_state(s: &wire::AccountState) -> Result<Account, SessionError> {
    let device = device_from_state(s.device.as_ref().ok_or_else(|| err("device is missing"))?)?;
    let own_list = DeviceList::decode(owned(&s.own_device_list))
        .map_err(|_| err("own_device_list does not verify"))?;
    if own_list.address() != device.address()
        || own_list.get(device.id()) != Some(device.certificate())
    {
        return Err(err(
            "own_device_list does not list this device with its certificate",
        ));
    }
    let mut contacts = DeviceLists::new();
    for encoded in &s.contact_device_lists {
        let list = DeviceList::decode(owned(encoded))
            .map_err(|_| err("contact_device_lists: a list does not verify"))?;
        if list.address() == own_list.address() {
            return Err(err(
                "contact_device_lists: a list of this user's own address",
            ));
        }
        if contacts.get(list.address()).is_some() {
            return Err(err("contact_device_lists: an address listed twice"));
        }
        contacts
            .update(list)
            .map_err(|_| err("contact_device_lists: a list was refused"))?;
    }
    let prekeys = prekeys_from_state(
        s.prekeys
            .as_ref()
            .ok_or_else(|| err("prekeys is missing"))?,
        device.certificate(),
    )?;
    let mut sessions = BTreeMap::new();
    for peer in &s.sessions {
        let address = Address::parse_canonical(&peer.address)
            .map_err(|_| err("sessions: a peer address is invalid"))?;
        let peer_device = DeviceId::from_slice(&peer.device_id)
            .ok_or_else(|| err("sessions: a peer device id is not 16 bytes"))?;
        let listed = if &address == own_list.address() {
            own_list.get(peer_device)
        } else {
            contacts.get(&address).and_then(|l| l.get(peer_device))
        };
        if listed.is_none() {
            return Err(err("sessions: a peer device is not on a held device list"));
        }
        if &address == device.address() && peer_device == device.id() {
            return Err(err("sessions: a session with this device itself"));
        }
        if peer.sessions.is_empty() || peer.sessions.len() > MAX_SESSIONS_PER_PEER_DEVICE {
            return Err(err(
                "sessions: a peer device has no sessions or more than MAX_SESSIONS_PER_PEER_DEVICE",
            ));
        }
        let list = peer
            .sessions
            .iter()
            .map(session_from_state)
            .collect::<Result<Vec<_>, _>>()?;
        if sessions.insert((address, peer_device), list).is_some() {
            return Err(err("sessions: a peer device listed twice"));
        }
    }
    let replay = replay_from_state(s.replay.as_ref().ok_or_else(|| err("replay is missing"))?)?;
    let groups = crate::group::DeviceGroups::from_state(
        &s.groups,
        &s.stashed_sender_keys,
        device.certificate(),
    )
    .map_err(err)?;
    Ok(Account {
        device,
        prekeys,
        own_list,
        contacts,
        sessions,
        replay,
        groups,
    })
}

fn device_from_state(d: &wire::DeviceState) -> Result<Device, SessionError> {
    let signing = secret::<32>(&d.signing_seed, "device.signing_seed is not 32 bytes")?;
    let agreement = secret::<32>(
        &d.agreement_secret,
        "device.agreement_secret is not 32 bytes",
    )?;
    let certificate = DeviceCertificate::decode(owned(&d.certificate))
        .map_err(|_| err("device.certificate does not verify"))?;
    Device::from_parts(
        DeviceKeyPair::from_secret_bytes(&signing, &agreement),
        certificate,
    )
    .map_err(|_| err("device keys do not match device.certificate"))
}

fn prekeys_from_state(
    p: &wire::PrekeyStoreState,
    owner: &DeviceCertificate,
) -> Result<PrekeyStore, SessionError> {
    let decode = |public: &Bytes, what: &'static str| {
        SignedPrekey::decode(owned(public), owner).map_err(|_| err(what))
    };
    let mut signed = BTreeMap::new();
    for s in &p.signed_prekeys {
        let public = decode(
            &s.public,
            "prekeys.signed_prekeys: a prekey does not verify",
        )?;
        if public.kind() != PrekeyKind::X25519 || public.is_one_time() {
            return Err(err(
                "prekeys.signed_prekeys: a prekey of the wrong kind or role",
            ));
        }
        let secret = secret::<32>(
            &s.secret,
            "prekeys.signed_prekeys: a secret is not 32 bytes",
        )?;
        if x25519_public(&secret) != public.x25519() {
            return Err(err(
                "prekeys.signed_prekeys: a secret does not match its public key",
            ));
        }
        if s.base_keys.len() > MAX_BASE_KEYS_PER_SIGNED_PREKEY {
            return Err(err(
                "prekeys.signed_prekeys: more base keys than MAX_BASE_KEYS_PER_SIGNED_PREKEY",
            ));
        }
        let mut base_keys = HashSet::with_capacity(s.base_keys.len());
        for k in &s.base_keys {
            let k = array::<32>(k, "prekeys.signed_prekeys: a base key is not 32 bytes")?;
            if !base_keys.insert(k) {
                return Err(err("prekeys.signed_prekeys: a base key listed twice"));
            }
        }
        let id = public.id();
        let entry = SignedSecret {
            secret,
            public,
            retired_at: s.retired_at_ms.map(UnixMillis),
            base_keys,
        };
        if signed.insert(id, entry).is_some() {
            return Err(err("prekeys.signed_prekeys: an id listed twice"));
        }
    }
    let mut kem = BTreeMap::new();
    for k in &p.kem_prekeys {
        let public = decode(&k.public, "prekeys.kem_prekeys: a prekey does not verify")?;
        if public.kind() != PrekeyKind::MlKem768 || public.is_one_time() {
            return Err(err(
                "prekeys.kem_prekeys: a prekey of the wrong kind or role",
            ));
        }
        let seed = secret::<64>(&k.seed, "prekeys.kem_prekeys: a seed is not 64 bytes")?;
        let expanded = crypto::KemDecapsulationKey::from_seed(&seed);
        if expanded.public_key().as_slice() != public.public_key().as_ref() {
            return Err(err(
                "prekeys.kem_prekeys: a seed does not match its public key",
            ));
        }
        let id = public.id();
        let entry = KemSecret {
            seed,
            expanded,
            public,
            retired_at: k.retired_at_ms.map(UnixMillis),
        };
        if kem.insert(id, entry).is_some() {
            return Err(err("prekeys.kem_prekeys: an id listed twice"));
        }
    }
    if p.one_time_prekeys.len() > MAX_ONE_TIME_PREKEYS {
        return Err(err(
            "prekeys.one_time_prekeys: more than MAX_ONE_TIME_PREKEYS",
        ));
    }
    let mut one_time = BTreeMap::new();
    for o in &p.one_time_prekeys {
        let public = decode(
            &o.public,
            "prekeys.one_time_prekeys: a prekey does not verify",
        )?;
        if public.kind() != PrekeyKind::X25519 || !public.is_one_time() {
            return Err(err(
                "prekeys.one_time_prekeys: a prekey of the wrong kind or role",
            ));
        }
        let secret = secret::<32>(
            &o.secret,
            "prekeys.one_time_prekeys: a secret is not 32 bytes",
        )?;
        if x25519_public(&secret) != public.x25519() {
            return Err(err(
                "prekeys.one_time_prekeys: a secret does not match its public key",
            ));
        }
        let id = public.id();
        if one_time
            .insert(id, OneTimeSecret { secret, public })
            .is_some()
        {
            return Err(err("prekeys.one_time_prekeys: an id listed twice"));
        }
    }
    let next_id = p.next_id;
    if signed
        .keys()
        .chain(kem.keys())
        .chain(one_time.keys())
        .any(|id| !id_below(*id, next_id))
    {
        return Err(err("prekeys.next_id is not above every prekey id"));
    }
    let current_signed = signed
        .get(&p.current_signed_prekey_id)
        .filter(|s| s.retired_at.is_none())
        .map(|s| s.public.clone())
        .ok_or_else(|| {
            err("prekeys.current_signed_prekey_id names no held, unretired signed prekey")
        })?;
    let current_kem = kem
        .get(&p.current_kem_prekey_id)
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.public.clone())
        .ok_or_else(|| {
            err("prekeys.current_kem_prekey_id names no held, unretired ML-KEM prekey")
        })?;
    Ok(PrekeyStore {
        signed,
        kem,
        one_time,
        current_signed,
        current_kem,
        next_id,
    })
}

fn session_from_state(s: &wire::SessionState) -> Result<Session, SessionError> {
    let ratchet = ratchet_from_state(
        s.ratchet
            .as_ref()
            .ok_or_else(|| err("session.ratchet is missing"))?,
    )?;
    let base_key = array::<32>(&s.base_key, "session.base_key is not 32 bytes")?;
    let setup = match &s.setup {
        None => None,
        Some(x) => {
            let setup_base = array::<32>(&x.base_key, "session.setup.base_key is not 32 bytes")?;
            if setup_base != base_key {
                return Err(err("session.setup.base_key is not the session's base key"));
            }
            if x.signed_prekey_id == 0 || x.kem_prekey_id == 0 || x.one_time_prekey_id == Some(0) {
                return Err(err("session.setup: a prekey id is 0"));
            }
            if x.kem_ciphertext.len() != KEM_CIPHERTEXT_LEN {
                return Err(err("session.setup.kem_ciphertext is not 1088 bytes"));
            }
            Some(SessionSetup {
                base_key: setup_base,
                signed_prekey_id: x.signed_prekey_id,
                one_time_prekey_id: x.one_time_prekey_id,
                kem_prekey_id: x.kem_prekey_id,
                kem_ciphertext: owned(&x.kem_ciphertext),
            })
        }
    };
    if s.received_missing.len() > MAX_SKIPPED_KEYS {
        return Err(err(
            "session.received_missing has more than MAX_SKIPPED_KEYS numbers",
        ));
    }
    let mut missing = BTreeSet::new();
    for n in &s.received_missing {
        if *n >= s.received_highest || !missing.insert(*n) {
            return Err(err(
                "session.received_missing: a number not below received_highest, or listed twice",
            ));
        }
    }
    let peer_identity = IdentityKey::from_bytes(&s.peer_identity_key)
        .map_err(|_| err("session.peer_identity_key is not a valid Ed25519 key"))?;
    Ok(Session {
        ratchet,
        base_key,
        setup,
        send_seq: s.send_seq,
        received: SequenceTracker {
            highest: s.received_highest,
            missing,
        },
        peer_identity,
        created: UnixMillis(s.created_ms),
    })
}

fn ratchet_from_state(r: &wire::RatchetState) -> Result<Ratchet, SessionError> {
    let root = secret::<32>(&r.root, "ratchet.root is not 32 bytes")?;
    let dhs = secret::<32>(&r.dhs, "ratchet.dhs is not 32 bytes")?;
    let dhr = r
        .dhr
        .as_ref()
        .map(|k| array::<32>(k, "ratchet.dhr is not 32 bytes"))
        .transpose()?;
    let cks = r
        .cks
        .as_ref()
        .map(|k| secret::<32>(k, "ratchet.cks is not 32 bytes"))
        .transpose()?;
    let ckr = r
        .ckr
        .as_ref()
        .map(|k| secret::<32>(k, "ratchet.ckr is not 32 bytes"))
        .transpose()?;
    if ckr.is_some() && dhr.is_none() {
        return Err(err("ratchet.ckr is present without ratchet.dhr"));
    }
    if r.skipped.len() > MAX_SKIPPED_KEYS {
        return Err(err("ratchet.skipped has more than MAX_SKIPPED_KEYS keys"));
    }
    let mut skipped = BTreeMap::new();
    let mut orders = HashSet::with_capacity(r.skipped.len());
    for k in &r.skipped {
        let dh = array::<32>(
            &k.ratchet_key,
            "ratchet.skipped: a ratchet key is not 32 bytes",
        )?;
        let mk = secret::<32>(&k.mk, "ratchet.skipped: a message key is not 32 bytes")?;
        if k.order >= r.next_order || !orders.insert(k.order) {
            return Err(err(
                "ratchet.skipped: an order not below next_order, or listed twice",
            ));
        }
        let key = SkippedKey {
            mk,
            stored_at: UnixMillis(k.stored_at_ms),
            order: k.order,
        };
        if skipped.insert((dh, k.n), key).is_some() {
            return Err(err("ratchet.skipped: a (ratchet key, n) listed twice"));
        }
    }
    let dhs_pub = x25519_public(&dhs);
    Ok(Ratchet {
        root,
        dhs,
        dhs_pub,
        dhr,
        cks,
        ns: r.ns,
        pn: r.pn,
        ckr,
        nr: r.nr,
        skipped,
        next_order: r.next_order,
    })
}

fn replay_from_state(r: &wire::ReplayWindowState) -> Result<ReplayWindow, SessionError> {
    let p = r
        .policy
        .as_ref()
        .ok_or_else(|| err("replay.policy is missing"))?;
    let capacity = usize::try_from(p.capacity)
        .map_err(|_| err("replay.policy.capacity does not fit this platform"))?;
    let mut window = ReplayWindow::new(ReplayPolicy {
        max_age_ms: p.max_age_ms,
        max_skew_ms: p.max_skew_ms,
        capacity,
    });
    let mut seen = HashSet::with_capacity(r.senders.len());
    for sender in &r.senders {
        let address = Address::parse_canonical(&sender.address)
            .map_err(|_| err("replay.senders: an address is invalid"))?;
        if !seen.insert(address.clone()) {
            return Err(err("replay.senders: an address listed twice"));
        }
        if sender.entries.len() > capacity.max(1) {
            return Err(err(
                "replay.senders: more entries than the policy's capacity",
            ));
        }
        let mut ids = HashSet::with_capacity(sender.entries.len());
        let mut entries = Vec::with_capacity(sender.entries.len());
        for e in &sender.entries {
            let id = MessageId::from_slice(&e.message_id)
                .ok_or_else(|| err("replay.senders: a message id is not 16 bytes"))?;
            if !ids.insert(id) {
                return Err(err("replay.senders: a message id listed twice"));
            }
            entries.push((UnixMillis(e.timestamp_ms), id));
        }
        window.restore_sender(address, UnixMillis(sender.floor_ms), entries);
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rand_chacha::ChaCha20Rng;
    use rand_core::{Rng, SeedableRng};

    use super::*;
    use crate::envelope::{Content, PayloadHeader, Text, UnverifiedEnvelope};
    use crate::session::tests::{User, World, world};
    use crate::session::{Received, Sent};

    /// The time `world()` made its certificates and accounts at.
    const NOW: UnixMillis = UnixMillis(1_760_000_000_000);

    fn key() -> Secret<32> {
        Secret::new([0x42; 32])
    }

    fn addr(u: &User) -> Address {
        u.list.address().clone()
    }

    fn text(s: &str) -> Content {
        Content::Text(Text::plain(s))
    }

    fn text_of(r: &Received) -> String {
        match &r.content {
            Content::Text(t) => t.body.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn envelope_for(sent: &Sent, device: DeviceId) -> Bytes {
        sent.envelopes
            .iter()
            .find(|e| e.device == device)
            .unwrap()
            .envelope
            .clone()
    }

    fn connect(w: &mut World, from_alice: bool, from_idx: usize, one_time: bool) {
        crate::session::tests::connect_with(w, from_alice, from_idx, one_time);
    }

    /// Saves and restores, checking that the restored state is the saved one.
    fn reload(a: &Account, rng: &mut ChaCha20Rng) -> Account {
        let blob = a.save(&key(), rng);
        let restored = Account::restore(&blob, &key()).unwrap();
        assert_eq!(plaintext(&restored), plaintext(a));
        restored
    }

    fn plaintext(a: &Account) -> Vec<u8> {
        a.to_state().encode_to_vec()
    }

    fn seal_state(state: &wire::AccountState, rng: &mut ChaCha20Rng) -> Vec<u8> {
        seal(&key(), &state.encode_to_vec(), rng)
    }

    fn state_error(blob: &[u8]) -> &'static str {
        match Account::restore(blob, &key()) {
            Err(SessionError::State(m)) => m,
            Err(e) => panic!("not a state error: {e:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    fn position(e: &Bytes) -> ([u8; 32], u32) {
        let u = UnverifiedEnvelope::decode(e.clone()).unwrap();
        match &u.claimed_header().payload {
            PayloadHeader::Session(h) => (h.ratchet_key, h.message_number),
            other => panic!("{other:?}"),
        }
    }

    /// (a) Save and restore both sides mid-conversation, then carry on both ways.
    #[test]
    fn save_restore_and_continue_both_ways() {
        let mut w = world();
        let (alice_addr, bob_addr) = (addr(&w.alice), addr(&w.bob));
        let a_id = w.alice.accounts[0].device().id();
        let b_id = w.bob.accounts[0].device().id();
        connect(&mut w, true, 0, true);
        let s = w.alice.accounts[0]
            .encrypt(&bob_addr, &text("one"), NOW, &mut w.rng)
            .unwrap();
        for b in 0..2 {
            let id = w.bob.accounts[b].device().id();
            w.bob.accounts[b]
                .decrypt(envelope_for(&s, id), NOW, &mut w.rng)
                .unwrap();
        }
        connect(&mut w, false, 0, true);
        let s = w.bob.accounts[0]
            .encrypt(&alice_addr, &text("two"), NOW, &mut w.rng)
            .unwrap();
        let r = w.alice.accounts[0]
            .decrypt(envelope_for(&s, a_id), NOW, &mut w.rng)
            .unwrap();
        assert_eq!(r.sequence, Some(1));

        // Stop both; two saves of one state differ (fresh nonce), both restore.
        let blob1 = w.alice.accounts[0].save(&key(), &mut w.rng);
        let blob2 = w.alice.accounts[0].save(&key(), &mut w.rng);
        assert_ne!(blob1, blob2);
        assert_eq!(&blob1[..8], b"KOGGEST1");
        assert_eq!(
            plaintext(&Account::restore(&blob2, &key()).unwrap()),
            plaintext(&w.alice.accounts[0])
        );
        let before_alice = w.alice.accounts[0].sessions_with(&bob_addr, b_id);
        w.alice.accounts[0] = Account::restore(&blob1, &key()).unwrap();
        assert_eq!(
            w.alice.accounts[0].sessions_with(&bob_addr, b_id),
            before_alice
        );
        w.bob.accounts[0] = reload(&w.bob.accounts[0], &mut w.rng);

        // Alice -> Bob (both devices; the phone was restored, the laptop was not).
        for (i, t) in ["three", "four"].iter().enumerate() {
            let s = w.alice.accounts[0]
                .encrypt(&bob_addr, &text(t), NOW, &mut w.rng)
                .unwrap();
            for b in 0..2 {
                let id = w.bob.accounts[b].device().id();
                let r = w.bob.accounts[b]
                    .decrypt(envelope_for(&s, id), NOW, &mut w.rng)
                    .unwrap();
                assert_eq!(text_of(&r), *t);
                assert_eq!(r.sequence, Some(2 + i as u64), "sequence numbers continue");
                assert!(r.missing.is_empty());
            }
        }
        // Bob's restored phone -> Alice (and his laptop).
        let s = w.bob.accounts[0]
            .encrypt(&alice_addr, &text("five"), NOW, &mut w.rng)
            .unwrap();
        let r = w.alice.accounts[0]
            .decrypt(envelope_for(&s, a_id), NOW, &mut w.rng)
            .unwrap();
        assert_eq!(text_of(&r), "five");
        assert_eq!(r.sequence, Some(2));
        let laptop = w.bob.accounts[1].device().id();
        let r = w.bob.accounts[1]
            .decrypt(envelope_for(&s, laptop), NOW, &mut w.rng)
            .unwrap();
        // The laptop was never given "two": it sees the gap.
        assert_eq!((r.sequence, r.missing), (Some(2), vec![1]));
        // And once more after a second restart of both.
        w.alice.accounts[0] = reload(&w.alice.accounts[0], &mut w.rng);
        w.bob.accounts[0] = reload(&w.bob.accounts[0], &mut w.rng);
        let s = w.alice.accounts[0]
            .encrypt(&bob_addr, &text("six"), NOW, &mut w.rng)
            .unwrap();
        let r = w.bob.accounts[0]
            .decrypt(envelope_for(&s, b_id), NOW, &mut w.rng)
            .unwrap();
        assert_eq!((text_of(&r).as_str(), r.sequence), ("six", Some(4)));
    }

    /// (b) A sender restored from an old copy never reuses an AEAD key and nonce; the
    /// receiver refuses the reused chain position as a duplicate.
    #[test]
    fn restored_old_copy_never_reuses_a_message_key() {
        let mut w = world();
        connect(&mut w, true, 0, true);
        let bob_addr = addr(&w.bob);
        let id = w.bob.accounts[0].device().id();
        let old = w.alice.accounts[0].save(&key(), &mut w.rng);
        let a = w.alice.accounts[0]
            .encrypt(&bob_addr, &text("original"), NOW, &mut w.rng)
            .unwrap();
        let mut restored = Account::restore(&old, &key()).unwrap();
        let b = restored
            .encrypt(&bob_addr, &text("after restore"), NOW, &mut w.rng)
            .unwrap();
        let (ea, eb) = (envelope_for(&a, id), envelope_for(&b, id));
        assert_eq!(position(&ea), position(&eb), "same chain position");
        let ua = UnverifiedEnvelope::decode(ea.clone()).unwrap();
        let ub = UnverifiedEnvelope::decode(eb.clone()).unwrap();
        assert_ne!(
            ua.claimed_header().message_id,
            ub.claimed_header().message_id
        );
        // Were key and nonce reused, ciphertext XOR would equal plaintext XOR.
        let pa = text("original").encode_padded().unwrap();
        let pb = text("after restore").encode_padded().unwrap();
        let n = pa.len().min(pb.len());
        let xor_ct: Vec<u8> = ua
            .ciphertext()
            .iter()
            .zip(ub.ciphertext().iter())
            .take(n)
            .map(|(x, y)| x ^ y)
            .collect();
        let xor_pt: Vec<u8> = pa
            .iter()
            .zip(pb.iter())
            .take(n)
            .map(|(x, y)| x ^ y)
            .collect();
        assert_eq!(xor_ct.len(), n);
        assert_ne!(xor_ct, xor_pt);
        // Bob reads A; B, from the rolled-back position, is refused as a duplicate.
        assert_eq!(
            text_of(&w.bob.accounts[0].decrypt(ea, NOW, &mut w.rng).unwrap()),
            "original"
        );
        assert_eq!(
            w.bob.accounts[0].decrypt(eb, NOW, &mut w.rng).unwrap_err(),
            SessionError::Duplicate
        );
    }

    fn small_state(w: &mut World) -> (Account, wire::AccountState) {
        connect(w, true, 0, true);
        let bob_addr = addr(&w.bob);
        let s = w.alice.accounts[0]
            .encrypt(&bob_addr, &text("hi"), NOW, &mut w.rng)
            .unwrap();
        let id = w.bob.accounts[0].device().id();
        w.bob.accounts[0]
            .decrypt(envelope_for(&s, id), NOW, &mut w.rng)
            .unwrap();
        let a = reload(&w.bob.accounts[0], &mut w.rng);
        let mut state = a.to_state();
        if let Some(p) = state.prekeys.as_mut() {
            p.one_time_prekeys.truncate(3);
        }
        (a, state)
    }

    /// (c) Wrong key, flipped bytes, truncation, wrong magic, future format: typed errors.
    #[test]
    fn damaged_blobs_are_refused_with_typed_errors() {
        let mut w = world();
        let (_, state) = small_state(&mut w);
        let blob = seal_state(&state, &mut w.rng);
        assert!(Account::restore(&blob, &key()).is_ok());
        let e = Account::restore(&blob, &Secret::new([0x43; 32])).unwrap_err();
        assert_eq!(e, SessionError::State(E_DECRYPT));
        assert_eq!(e.code(), "invalid_state");
        // A flipped bit anywhere: in the magic it is not a state blob; anywhere else
        // (nonce, ciphertext, tag) it does not decrypt.
        let step = (blob.len() / 97).max(1);
        let positions = (0..40)
            .chain((40..blob.len()).step_by(step))
            .chain(blob.len() - 16..blob.len());
        for i in positions {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            let want = if i < 8 { E_MAGIC } else { E_DECRYPT };
            assert_eq!(state_error(&bad), want, "flipped byte {i}");
        }
        // Truncated and extended.
        for len in [0, 1, 7] {
            assert_eq!(state_error(&blob[..len]), E_MAGIC, "length {len}");
        }
        for len in [8, 19, 20, 35] {
            assert_eq!(state_error(&blob[..len]), E_TRUNCATED, "length {len}");
        }
        for len in [36, 37, blob.len() / 2, blob.len() - 1] {
            assert_eq!(state_error(&blob[..len]), E_DECRYPT, "length {len}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert_eq!(state_error(&longer), E_DECRYPT);
        // Wrong magic, even with an otherwise valid blob.
        let mut other = blob.clone();
        other[..8].copy_from_slice(b"KOGGEST2");
        assert_eq!(state_error(&other), E_MAGIC);
        // Too large: refused before anything else.
        let mut huge = vec![0u8; MAX_STATE_LEN + 1];
        huge[..8].copy_from_slice(&STATE_MAGIC);
        assert_eq!(state_error(&huge), E_TOO_LARGE);
        // Authentic but not an AccountState.
        assert_eq!(
            state_error(&seal(&key(), &[0xff, 0xff, 0xff], &mut w.rng)),
            E_DECODE
        );
        // Authentic, well-formed, but of a format this version does not know.
        for format in [0, 2, u32::MAX] {
            let mut future = state.clone();
            future.format = format;
            assert_eq!(
                state_error(&seal_state(&future, &mut w.rng)),
                E_FORMAT,
                "format {format}"
            );
        }
        // The empty plaintext is format 0.
        assert_eq!(state_error(&seal(&key(), &[], &mut w.rng)), E_FORMAT);
    }

    /// Field-level checks: each crafted state, encrypted with the right key, is refused
    /// with the message naming its defect.
    #[test]
    fn structurally_invalid_states_are_refused() {
        let mut w = world();
        let (_, state) = small_state(&mut w);
        let alice_state = w.alice.accounts[0].to_state();
        type Edit = Box<dyn Fn(&mut wire::AccountState)>;
        let alice_device = alice_state.device.clone().unwrap();
        let alice_list = alice_state.own_device_list.clone();
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.device = None), "device is missing"),
            (
                Box::new(|s| s.device.as_mut().unwrap().signing_seed.truncate(31)),
                "device.signing_seed is not 32 bytes",
            ),
            (
                Box::new(|s| s.device.as_mut().unwrap().agreement_secret = Bytes::new()),
                "device.agreement_secret is not 32 bytes",
            ),
            (
                Box::new(|s| {
                    let c = &mut s.device.as_mut().unwrap().certificate;
                    let mut v = c.to_vec();
                    let n = v.len();
                    v[n - 1] ^= 1;
                    *c = Bytes::from(v);
                }),
                "device.certificate does not verify",
            ),
            (
                {
                    let a = alice_device.clone();
                    Box::new(move |s| {
                        s.device.as_mut().unwrap().signing_seed = a.signing_seed.clone();
                    })
                },
                "device keys do not match device.certificate",
            ),
            (
                Box::new(|s| s.own_device_list = Bytes::from_static(b"\x0a\x01")),
                "own_device_list does not verify",
            ),
            (
                {
                    let l = alice_list.clone();
                    Box::new(move |s| s.own_device_list = l.clone())
                },
                "own_device_list does not list this device with its certificate",
            ),
            (
                Box::new(|s| {
                    let own = s.own_device_list.clone();
                    s.contact_device_lists.push(own);
                }),
                "contact_device_lists: a list of this user's own address",
            ),
            (
                Box::new(|s| {
                    let l = s.contact_device_lists[0].clone();
                    s.contact_device_lists.push(l);
                }),
                "contact_device_lists: an address listed twice",
            ),
            (
                Box::new(|s| s.contact_device_lists.push(Bytes::from_static(b"junk"))),
                "contact_device_lists: a list does not verify",
            ),
            (Box::new(|s| s.prekeys = None), "prekeys is missing"),
            (
                Box::new(|s| {
                    let p = s.prekeys.as_mut().unwrap();
                    p.one_time_prekeys[0].secret = p.one_time_prekeys[1].secret.clone();
                }),
                "prekeys.one_time_prekeys: a secret does not match its public key",
            ),
            (
                Box::new(|s| {
                    let p = s.prekeys.as_mut().unwrap();
                    let o = p.one_time_prekeys[0].clone();
                    p.one_time_prekeys.push(o);
                }),
                "prekeys.one_time_prekeys: an id listed twice",
            ),
            (
                Box::new(|s| {
                    let p = s.prekeys.as_mut().unwrap();
                    p.signed_prekeys[0].public = p.one_time_prekeys[0].public.clone();
                }),
                "prekeys.signed_prekeys: a prekey of the wrong kind or role",
            ),
            (
                Box::new(|s| {
                    let p = s.prekeys.as_mut().unwrap();
                    let mut v = p.kem_prekeys[0].public.to_vec();
                    v[10] ^= 1;
                    p.kem_prekeys[0].public = Bytes::from(v);
                }),
                "prekeys.kem_prekeys: a prekey does not verify",
            ),
            (
                Box::new(|s| {
                    let p = s.prekeys.as_mut().unwrap();
                    p.kem_prekeys[0].seed = Bytes::from(vec![7u8; 64]);
                }),
                "prekeys.kem_prekeys: a seed does not match its public key",
            ),
            (
                Box::new(|s| {
                    let p = s.prekeys.as_mut().unwrap();
                    let k = p.signed_prekeys[0].base_keys[0].clone();
                    p.signed_prekeys[0].base_keys.push(k);
                }),
                "prekeys.signed_prekeys: a base key listed twice",
            ),
            (
                Box::new(|s| s.prekeys.as_mut().unwrap().next_id = 2),
                "prekeys.next_id is not above every prekey id",
            ),
            (
                Box::new(|s| s.prekeys.as_mut().unwrap().current_kem_prekey_id = 999_999),
                "prekeys.current_kem_prekey_id names no held, unretired ML-KEM prekey",
            ),
            (
                Box::new(|s| s.prekeys.as_mut().unwrap().signed_prekeys[0].retired_at_ms = Some(1)),
                "prekeys.current_signed_prekey_id names no held, unretired signed prekey",
            ),
            (
                Box::new(|s| s.sessions[0].device_id = Bytes::from(vec![0u8; 16])),
                "sessions: a peer device is not on a held device list",
            ),
            (
                Box::new(|s| s.sessions[0].address = "Alice@one.example".into()),
                "sessions: a peer address is invalid",
            ),
            (
                Box::new(|s| {
                    let p = s.sessions[0].clone();
                    s.sessions.push(p);
                }),
                "sessions: a peer device listed twice",
            ),
            (
                Box::new(|s| s.sessions[0].sessions.clear()),
                "sessions: a peer device has no sessions or more than MAX_SESSIONS_PER_PEER_DEVICE",
            ),
            (
                Box::new(|s| {
                    s.sessions[0].sessions[0].peer_identity_key = Bytes::from(vec![0u8; 32])
                }),
                "session.peer_identity_key is not a valid Ed25519 key",
            ),
            (
                Box::new(|s| s.sessions[0].sessions[0].received_missing = vec![5]),
                "session.received_missing: a number not below received_highest, or listed twice",
            ),
            (
                Box::new(|s| {
                    let r = s.sessions[0].sessions[0].ratchet.as_mut().unwrap();
                    r.dhr = None;
                }),
                "ratchet.ckr is present without ratchet.dhr",
            ),
            (
                Box::new(|s| {
                    let r = s.sessions[0].sessions[0].ratchet.as_mut().unwrap();
                    r.root.truncate(16);
                }),
                "ratchet.root is not 32 bytes",
            ),
            (
                Box::new(|s| {
                    let r = s.sessions[0].sessions[0].ratchet.as_mut().unwrap();
                    r.skipped.push(wire::SkippedKeyState {
                        ratchet_key: Bytes::from(vec![1u8; 32]),
                        n: 0,
                        mk: Bytes::from(vec![2u8; 31]),
                        stored_at_ms: 0,
                        order: 0,
                    });
                }),
                "ratchet.skipped: a message key is not 32 bytes",
            ),
            (
                Box::new(|s| {
                    let r = s.sessions[0].sessions[0].ratchet.as_mut().unwrap();
                    r.skipped.push(wire::SkippedKeyState {
                        ratchet_key: Bytes::from(vec![1u8; 32]),
                        n: 0,
                        mk: Bytes::from(vec![2u8; 32]),
                        stored_at_ms: 0,
                        order: r.next_order,
                    });
                }),
                "ratchet.skipped: an order not below next_order, or listed twice",
            ),
            (
                Box::new(|s| {
                    let r = s.sessions[0].sessions[0].ratchet.as_mut().unwrap();
                    r.skipped = (0..=MAX_SKIPPED_KEYS as u32)
                        .map(|n| wire::SkippedKeyState {
                            ratchet_key: Bytes::from(vec![1u8; 32]),
                            n,
                            mk: Bytes::from(vec![2u8; 32]),
                            stored_at_ms: 0,
                            order: u64::from(n),
                        })
                        .collect();
                    r.next_order = u64::MAX;
                }),
                "ratchet.skipped has more than MAX_SKIPPED_KEYS keys",
            ),
            (
                Box::new(|s| {
                    s.sessions[0].sessions[0].setup = Some(wire::PendingSetupState {
                        base_key: s.sessions[0].sessions[0].base_key.clone(),
                        signed_prekey_id: 1,
                        one_time_prekey_id: None,
                        kem_prekey_id: 2,
                        kem_ciphertext: Bytes::from(vec![0u8; 1087]),
                    });
                }),
                "session.setup.kem_ciphertext is not 1088 bytes",
            ),
            (
                Box::new(|s| {
                    s.sessions[0].sessions[0].setup = Some(wire::PendingSetupState {
                        base_key: s.sessions[0].sessions[0].base_key.clone(),
                        signed_prekey_id: 1,
                        one_time_prekey_id: Some(0),
                        kem_prekey_id: 2,
                        kem_ciphertext: Bytes::from(vec![0u8; 1088]),
                    });
                }),
                "session.setup: a prekey id is 0",
            ),
            (Box::new(|s| s.replay = None), "replay is missing"),
            (
                Box::new(|s| s.replay.as_mut().unwrap().policy = None),
                "replay.policy is missing",
            ),
            (
                Box::new(|s| {
                    let r = s.replay.as_mut().unwrap();
                    let x = r.senders[0].clone();
                    r.senders.push(x);
                }),
                "replay.senders: an address listed twice",
            ),
            (
                Box::new(|s| {
                    let r = s.replay.as_mut().unwrap();
                    r.senders[0].entries[0].message_id.truncate(15);
                }),
                "replay.senders: a message id is not 16 bytes",
            ),
            (
                Box::new(|s| {
                    let r = s.replay.as_mut().unwrap();
                    let e = r.senders[0].entries[0].clone();
                    r.senders[0].entries.push(e);
                }),
                "replay.senders: a message id listed twice",
            ),
            (
                Box::new(|s| {
                    let r = s.replay.as_mut().unwrap();
                    r.policy.as_mut().unwrap().capacity = 1;
                    let mut e = r.senders[0].entries[0].clone();
                    e.message_id = Bytes::from(vec![9u8; 16]);
                    r.senders[0].entries.push(e);
                }),
                "replay.senders: more entries than the policy's capacity",
            ),
        ];
        // The unmodified state is valid, and exercises every edited part.
        assert!(Account::restore(&seal_state(&state, &mut w.rng), &key()).is_ok());
        assert!(!state.contact_device_lists.is_empty());
        assert!(!state.sessions.is_empty());
        assert!(
            !state.prekeys.as_ref().unwrap().signed_prekeys[0]
                .base_keys
                .is_empty()
        );
        assert!(!state.replay.as_ref().unwrap().senders.is_empty());
        for (edit, want) in cases {
            let mut s = state.clone();
            edit(&mut s);
            assert_eq!(state_error(&seal_state(&s, &mut w.rng)), want);
        }
    }

    /// Random damage to an authentic plaintext never panics (a cheap stand-in for the
    /// fuzz target).
    #[test]
    fn mutated_plaintexts_never_panic() {
        let mut w = world();
        let (_, state) = small_state(&mut w);
        let plain = state.encode_to_vec();
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        for round in 0..300 {
            let mut p = plain.clone();
            match round % 3 {
                0 => {
                    for _ in 0..1 + rng.next_u32() % 4 {
                        let i = rng.next_u32() as usize % p.len();
                        p[i] = rng.next_u32() as u8;
                    }
                }
                1 => p.truncate(rng.next_u32() as usize % p.len()),
                _ => {
                    let i = rng.next_u32() as usize % p.len();
                    let n = (rng.next_u32() % 8) as usize;
                    let junk: Vec<u8> = (0..n).map(|_| rng.next_u32() as u8).collect();
                    p.splice(i..i, junk);
                }
            }
            let _ = Account::restore(&seal(&key(), &p, &mut w.rng), &key());
        }
        for len in [0usize, 8, 20, 36, 100, 1000] {
            let mut junk = vec![0u8; len];
            rng.fill_bytes(&mut junk);
            let _ = Account::restore(&junk, &key());
            if len >= 8 {
                junk[..8].copy_from_slice(&STATE_MAGIC);
                let _ = Account::restore(&junk, &key());
            }
        }
    }

    /// (d) A restored account's skipped keys still open late messages.
    #[test]
    fn restored_skipped_keys_open_late_messages() {
        let mut w = world();
        connect(&mut w, true, 0, true);
        let bob_addr = addr(&w.bob);
        let id = w.bob.accounts[0].device().id();
        let a_id = w.alice.accounts[0].device().id();
        let alice_addr = addr(&w.alice);
        let msgs: Vec<Bytes> = (0..5)
            .map(|i| {
                let s = w.alice.accounts[0]
                    .encrypt(&bob_addr, &text(&format!("m{i}")), NOW, &mut w.rng)
                    .unwrap();
                envelope_for(&s, id)
            })
            .collect();
        let r = w.bob.accounts[0]
            .decrypt(msgs[4].clone(), NOW, &mut w.rng)
            .unwrap();
        assert_eq!(r.missing, vec![1, 2, 3, 4]);
        let mut bob = reload(&w.bob.accounts[0], &mut w.rng);
        let key_count = |a: &Account| {
            a.sessions[&(alice_addr.clone(), a_id)][0]
                .ratchet
                .skipped
                .len()
        };
        assert_eq!(key_count(&bob), 4);
        assert_eq!(bob.sessions_with(&alice_addr, a_id)[0].missing, 4);
        for i in [2, 0, 3, 1] {
            let r = bob.decrypt(msgs[i].clone(), NOW, &mut w.rng).unwrap();
            assert_eq!(text_of(&r), format!("m{i}"));
            assert_eq!(r.sequence, Some(i as u64 + 1));
            // Each used key is deleted, and stays deleted across a restart.
            bob = reload(&bob, &mut w.rng);
        }
        assert_eq!(key_count(&bob), 0);
        assert_eq!(bob.sessions_with(&alice_addr, a_id)[0].missing, 0);
        // The replay window came back too: a second copy is a replay...
        assert_eq!(
            bob.decrypt(msgs[1].clone(), NOW, &mut w.rng)
                .unwrap_err()
                .code(),
            "replay"
        );
        // ...and past it, the key is gone.
        bob.replay = ReplayWindow::default();
        assert_eq!(
            bob.decrypt(msgs[1].clone(), NOW, &mut w.rng).unwrap_err(),
            SessionError::Duplicate
        );
    }

    /// (e) A restored prekey store refuses a replayed setup (its base key is
    /// remembered) and a used one-time prekey.
    #[test]
    fn restored_prekeys_refuse_replayed_setups_and_used_one_time_prekeys() {
        for one_time in [false, true] {
            let mut w = world();
            connect(&mut w, true, 0, one_time);
            let bob_addr = addr(&w.bob);
            let alice_addr = addr(&w.alice);
            let a_id = w.alice.accounts[0].device().id();
            let id = w.bob.accounts[0].device().id();
            let s = w.alice.accounts[0]
                .encrypt(&bob_addr, &text("setup"), NOW, &mut w.rng)
                .unwrap();
            let env = envelope_for(&s, id);
            let before = w.bob.accounts[0].prekeys().one_time_count();
            w.bob.accounts[0]
                .decrypt(env.clone(), NOW, &mut w.rng)
                .unwrap();
            let after = w.bob.accounts[0].prekeys().one_time_count();
            assert_eq!(after, before - usize::from(one_time));
            let mut bob = reload(&w.bob.accounts[0], &mut w.rng);
            assert_eq!(bob.prekeys().one_time_count(), after);
            assert_eq!(
                bob.decrypt(env.clone(), NOW, &mut w.rng)
                    .unwrap_err()
                    .code(),
                "replay"
            );
            // Without the session and the replay window, the prekey store alone refuses.
            bob.reset_sessions(&alice_addr, a_id);
            bob.replay = ReplayWindow::default();
            let e = bob.decrypt(env, NOW, &mut w.rng).unwrap_err();
            if one_time {
                assert!(
                    matches!(
                        e,
                        SessionError::UnknownPrekey {
                            kind: "one_time",
                            ..
                        }
                    ),
                    "{e:?}"
                );
            } else {
                assert_eq!(e, SessionError::ReplayedSetup);
            }
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// (f) Neither the blob nor `Debug` output shows a secret.
    #[test]
    fn blob_and_debug_hold_no_plaintext_secrets() {
        let mut w = world();
        connect(&mut w, true, 0, true);
        let bob_addr = addr(&w.bob);
        let id = w.bob.accounts[0].device().id();
        let msgs: Vec<Bytes> = (0..3)
            .map(|i| {
                let s = w.alice.accounts[0]
                    .encrypt(&bob_addr, &text(&format!("m{i}")), NOW, &mut w.rng)
                    .unwrap();
                envelope_for(&s, id)
            })
            .collect();
        w.bob.accounts[0]
            .decrypt(msgs[2].clone(), NOW, &mut w.rng)
            .unwrap();
        let bob = &w.bob.accounts[0];
        let session = bob.sessions.values().next().unwrap()[0].clone();
        let (seed, agreement) = bob.device().keys().secret_bytes();
        let secrets: Vec<(&str, Vec<u8>)> = vec![
            ("signing seed", seed.expose().to_vec()),
            ("agreement secret", agreement.expose().to_vec()),
            ("root key", session.ratchet.root.expose().to_vec()),
            ("ratchet secret", session.ratchet.dhs.expose().to_vec()),
            (
                "receiving chain key",
                session.ratchet.ckr.as_ref().unwrap().expose().to_vec(),
            ),
            (
                "sending chain key",
                session.ratchet.cks.as_ref().unwrap().expose().to_vec(),
            ),
            (
                "skipped key",
                session
                    .ratchet
                    .skipped
                    .values()
                    .next()
                    .unwrap()
                    .mk
                    .expose()
                    .to_vec(),
            ),
            (
                "one-time prekey",
                bob.prekeys
                    .one_time
                    .values()
                    .next()
                    .unwrap()
                    .secret
                    .expose()
                    .to_vec(),
            ),
            (
                "signed prekey",
                bob.prekeys
                    .signed
                    .values()
                    .next()
                    .unwrap()
                    .secret
                    .expose()
                    .to_vec(),
            ),
            (
                "ML-KEM seed",
                bob.prekeys
                    .kem
                    .values()
                    .next()
                    .unwrap()
                    .seed
                    .expose()
                    .to_vec(),
            ),
        ];
        let blob = bob.save(&key(), &mut w.rng);
        let plain = plaintext(bob);
        let restored = Account::restore(&blob, &key()).unwrap();
        let debug = [
            format!("{bob:?}"),
            format!("{bob:#?}"),
            format!("{restored:?}"),
            format!("{:?}", bob.prekeys()),
        ]
        .concat();
        for (what, s) in &secrets {
            assert!(
                contains(&plain, s),
                "the search finds {what} in the plaintext"
            );
            assert!(!contains(&blob, s), "{what} is in the blob");
            assert!(!debug.contains(&hex(s)), "{what} is in Debug output");
            let decimal = format!("{:?}", &s[..4]);
            assert!(
                !debug.contains(decimal.trim_end_matches(']')),
                "{what} is in Debug output as numbers"
            );
        }
    }

    struct Tracked(Vec<u8>, Arc<AtomicBool>);
    impl AsRef<[u8]> for Tracked {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    /// Decoding slices secrets out of the decrypted buffer (no unwiped copies), and the
    /// restored account keeps nothing pointing into it, so the buffer (wiped on drop in
    /// `restore`) is released when decoding is done.
    #[test]
    fn decoding_does_not_copy_secrets_or_keep_the_plaintext() {
        let mut w = world();
        let (_, state) = small_state(&mut w);
        let dropped = Arc::new(AtomicBool::new(false));
        let buffer = Bytes::from_owner(Tracked(state.encode_to_vec(), dropped.clone()));
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let decoded = wire::AccountState::decode(buffer).unwrap();
        let inside = |b: &Bytes| range.contains(&(b.as_ptr() as usize));
        let d = decoded.device.as_ref().unwrap();
        assert!(inside(&d.signing_seed) && inside(&d.agreement_secret));
        let r = decoded.sessions[0].sessions[0].ratchet.as_ref().unwrap();
        assert!(inside(&r.root) && inside(&r.dhs) && inside(r.ckr.as_ref().unwrap()));
        let p = decoded.prekeys.as_ref().unwrap();
        assert!(inside(&p.one_time_prekeys[0].secret) && inside(&p.kem_prekeys[0].seed));
        let restored = from_state(&decoded).unwrap();
        assert!(!dropped.load(Ordering::SeqCst));
        drop(decoded);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the restored account still references the plaintext buffer"
        );
        drop(restored);
    }
}

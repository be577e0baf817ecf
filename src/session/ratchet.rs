//! The Double Ratchet (SPEC.md 15.4), with bounded skipped keys and no state change
//! on failure.
//!
//! Receiving never mutates state until the AEAD has accepted the message: every key it
//! needs is derived into temporaries first, and only a successful decryption commits
//! them. A failed, duplicated or forged message therefore leaves the session
//! byte-identical.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;

use super::SessionError;
use crate::crypto::{self, Label, Secret};
use crate::limits::{MAX_SKIP_PER_CHAIN, MAX_SKIPPED_KEYS, SKIPPED_KEY_MAX_AGE_MS};
use crate::time::UnixMillis;

/// The ratchet part of a message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RatchetHeader {
    /// The sender's current ratchet public key.
    pub(crate) dh: [u8; 32],
    /// Length of the sender's previous sending chain.
    pub(crate) pn: u32,
    /// Number of this message in the current sending chain.
    pub(crate) n: u32,
}

/// A skipped message key, kept for a message that has not arrived yet.
#[derive(Clone)]
pub(crate) struct SkippedKey {
    pub(crate) mk: Secret<32>,
    pub(crate) stored_at: UnixMillis,
    /// Insertion order, for deleting the oldest first.
    pub(crate) order: u64,
}

/// Double Ratchet state of one session.
#[derive(Clone)]
pub(crate) struct Ratchet {
    pub(crate) root: Secret<32>,
    pub(crate) dhs: Secret<32>,
    pub(crate) dhs_pub: [u8; 32],
    pub(crate) dhr: Option<[u8; 32]>,
    pub(crate) cks: Option<Secret<32>>,
    pub(crate) ns: u32,
    pub(crate) pn: u32,
    pub(crate) ckr: Option<Secret<32>>,
    pub(crate) nr: u32,
    pub(crate) skipped: BTreeMap<([u8; 32], u32), SkippedKey>,
    pub(crate) next_order: u64,
}

impl fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ratchet")
            .field("ns", &self.ns)
            .field("nr", &self.nr)
            .field("pn", &self.pn)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// `KDF_RK`: HKDF-SHA256(salt = root key, ikm = DH output,
/// info = framed("kogge/v1/kdf/ratchet-root")) → 64 bytes: new root key ‖ chain key.
pub(crate) fn kdf_rk(root: &Secret<32>, dh: &Secret<32>) -> (Secret<32>, Secret<32>) {
    let mut okm = Secret::<64>::zeroed();
    // 64 bytes is far below HKDF-SHA256's limit; the call cannot fail.
    let _ = crypto::hkdf_sha256(
        root.expose(),
        dh.expose(),
        Label::RatchetRoot,
        &[],
        okm.expose_mut(),
    );
    split64(&okm)
}

fn split64(okm: &Secret<64>) -> (Secret<32>, Secret<32>) {
    let mut a = Secret::<32>::zeroed();
    let mut b = Secret::<32>::zeroed();
    a.expose_mut().copy_from_slice(&okm.expose()[..32]);
    b.expose_mut().copy_from_slice(&okm.expose()[32..]);
    (a, b)
}

fn hmac(key: &Secret<32>, byte: u8) -> Secret<32> {
    let mut out = Secret::<32>::zeroed();
    // HMAC accepts keys of any length; `new_from_slice` cannot fail here.
    if let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose()) {
        mac.update(&[byte]);
        out.expose_mut()
            .copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// `KDF_CK`: message key = HMAC-SHA256(chain key, 0x01), next chain key =
/// HMAC-SHA256(chain key, 0x02).
pub(crate) fn kdf_ck(ck: &Secret<32>) -> (Secret<32>, Secret<32>) {
    (hmac(ck, 0x02), hmac(ck, 0x01))
}

/// The AEAD key and nonce of one message: HKDF-SHA256(salt = message id, ikm = message
/// key, info = framed("kogge/v1/kdf/ratchet-message")) → 44 bytes: key ‖ nonce.
///
/// Salting with the (random, per-message) message id means that even a sender restored
/// from an old copy of its state, which reuses a chain position, never reuses an AEAD
/// key and nonce for a new message.
pub(crate) fn message_keys(mk: &Secret<32>, message_id: &[u8; 16]) -> (Secret<32>, [u8; 12]) {
    let mut okm = Secret::<44>::zeroed();
    let _ = crypto::hkdf_sha256(
        message_id,
        mk.expose(),
        Label::RatchetMessageKeys,
        &[],
        okm.expose_mut(),
    );
    let mut key = Secret::<32>::zeroed();
    key.expose_mut().copy_from_slice(&okm.expose()[..32]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm.expose()[32..]);
    (key, nonce)
}

fn dh(secret: &Secret<32>, public: &[u8; 32]) -> Result<Secret<32>, SessionError> {
    let s = x25519_dalek::StaticSecret::from(*secret.expose());
    crypto::x25519(&s, &x25519_dalek::PublicKey::from(*public))
        .map_err(|_| SessionError::NonContributory)
}

fn new_dh_pair<R: CryptoRng + ?Sized>(rng: &mut R) -> (Secret<32>, [u8; 32]) {
    let s = x25519_dalek::StaticSecret::random_from_rng(rng);
    let public = x25519_dalek::PublicKey::from(&s).to_bytes();
    (Secret::new(s.to_bytes()), public)
}

/// A complete DH ratchet step (both halves), computed before the message is opened.
struct Step {
    root: Secret<32>,
    dhs: Secret<32>,
    dhs_pub: [u8; 32],
    dhr: [u8; 32],
    cks: Secret<32>,
}

/// Keys derived by a receive attempt, committed only if decryption succeeds.
struct Pending {
    step: Option<Step>,
    /// Skipped keys to store: (ratchet key, n, message key).
    skipped: Vec<([u8; 32], u32, Secret<32>)>,
    /// Receiving chain key after the message, and the next expected number.
    ckr: Secret<32>,
    nr: u32,
}

impl Ratchet {
    /// The initiator's state: it knows the shared secret and the responder's ratchet key
    /// (its signed prekey), and can send at once.
    pub(crate) fn initiator<R: CryptoRng + ?Sized>(
        sk: &Secret<32>,
        responder_ratchet_key: [u8; 32],
        rng: &mut R,
    ) -> Result<Self, SessionError> {
        let (dhs, dhs_pub) = new_dh_pair(rng);
        let (root, cks) = kdf_rk(sk, &dh(&dhs, &responder_ratchet_key)?);
        Ok(Self {
            root,
            dhs,
            dhs_pub,
            dhr: Some(responder_ratchet_key),
            cks: Some(cks),
            ns: 0,
            pn: 0,
            ckr: None,
            nr: 0,
            skipped: BTreeMap::new(),
            next_order: 0,
        })
    }

    /// The responder's state: the shared secret and its own ratchet key pair (the signed
    /// prekey the initiator used). It can send after its first receive.
    pub(crate) fn responder(sk: &Secret<32>, own_secret: Secret<32>, own_public: [u8; 32]) -> Self {
        let dhs_pub = own_public;
        Self {
            root: sk.clone(),
            dhs: own_secret,
            dhs_pub,
            dhr: None,
            cks: None,
            ns: 0,
            pn: 0,
            ckr: None,
            nr: 0,
            skipped: BTreeMap::new(),
            next_order: 0,
        }
    }

    /// Whether a sending chain exists.
    pub(crate) fn can_send(&self) -> bool {
        self.cks.is_some()
    }

    /// Advances the sending chain: returns the header for the next message and its
    /// message key. The key is deleted from the state before this returns.
    pub(crate) fn next_send(&mut self) -> Result<(RatchetHeader, Secret<32>), SessionError> {
        let ck = self.cks.as_ref().ok_or(SessionError::CannotSendYet)?;
        if self.ns == u32::MAX {
            return Err(SessionError::ChainExhausted);
        }
        let (next, mk) = kdf_ck(ck);
        let header = RatchetHeader {
            dh: self.dhs_pub,
            pn: self.pn,
            n: self.ns,
        };
        self.cks = Some(next);
        self.ns += 1;
        Ok((header, mk))
    }

    /// Derives `count` message keys from `ck`, returning them and the chain key after.
    fn derive(ck: &Secret<32>, count: u32) -> (Vec<Secret<32>>, Secret<32>) {
        let mut keys = Vec::with_capacity(count as usize);
        let mut ck = ck.clone();
        for _ in 0..count {
            let (next, mk) = kdf_ck(&ck);
            keys.push(mk);
            ck = next;
        }
        (keys, ck)
    }

    /// Receives a message. `open` is called with the candidate message key and returns
    /// the decrypted, decoded message, or an error if the AEAD (or the content decoder)
    /// refuses it. State changes only when `open` succeeds.
    pub(crate) fn receive<T, R: CryptoRng + ?Sized>(
        &mut self,
        header: &RatchetHeader,
        now: UnixMillis,
        rng: &mut R,
        open: impl Fn(&Secret<32>) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        // 1. A key skipped earlier.
        if let Some(sk) = self.skipped.get(&(header.dh, header.n)) {
            if sk.stored_at < now.saturating_sub(SKIPPED_KEY_MAX_AGE_MS) {
                return Err(SessionError::KeyExpired);
            }
            let message = open(&sk.mk)?;
            self.skipped.remove(&(header.dh, header.n));
            self.expire(now);
            return Ok(message);
        }
        let same_chain = self.dhr == Some(header.dh);
        let pending = if same_chain {
            let ckr = self.ckr.as_ref().ok_or(SessionError::DecryptFailed)?;
            if header.n < self.nr {
                return Err(SessionError::Duplicate);
            }
            let gap = header.n - self.nr;
            if gap > MAX_SKIP_PER_CHAIN {
                return Err(SessionError::TooFarAhead {
                    gap,
                    max: MAX_SKIP_PER_CHAIN,
                });
            }
            let (mut keys, ck_after) = Self::derive(ckr, gap + 1);
            let mk = keys.pop().ok_or(SessionError::DecryptFailed)?;
            let skipped = keys
                .into_iter()
                .zip(self.nr..)
                .map(|(k, n)| (header.dh, n, k))
                .collect();
            (
                mk,
                Pending {
                    step: None,
                    skipped,
                    ckr: ck_after,
                    nr: header.n.checked_add(1).ok_or(SessionError::TooFarAhead {
                        gap: u32::MAX,
                        max: MAX_SKIP_PER_CHAIN,
                    })?,
                },
            )
        } else {
            // A new ratchet key: first the rest of the current receiving chain.
            let mut skipped = Vec::new();
            if let (Some(ckr), Some(dhr)) = (&self.ckr, self.dhr) {
                if header.pn < self.nr {
                    // The sender claims a shorter previous chain than we already read.
                    return Err(SessionError::DecryptFailed);
                }
                let gap = header.pn - self.nr;
                if gap > MAX_SKIP_PER_CHAIN {
                    return Err(SessionError::TooFarAhead {
                        gap,
                        max: MAX_SKIP_PER_CHAIN,
                    });
                }
                let (keys, _) = Self::derive(ckr, gap);
                skipped.extend(keys.into_iter().zip(self.nr..).map(|(k, n)| (dhr, n, k)));
            }
            if header.n > MAX_SKIP_PER_CHAIN {
                return Err(SessionError::TooFarAhead {
                    gap: header.n,
                    max: MAX_SKIP_PER_CHAIN,
                });
            }
            let (root, ckr) = kdf_rk(&self.root, &dh(&self.dhs, &header.dh)?);
            let (mut keys, ck_after) = Self::derive(&ckr, header.n + 1);
            let mk = keys.pop().ok_or(SessionError::DecryptFailed)?;
            skipped.extend(keys.into_iter().zip(0..).map(|(k, n)| (header.dh, n, k)));
            // The sending half of the step, with a fresh key pair.
            let (dhs, dhs_pub) = new_dh_pair(rng);
            let (root, cks) = kdf_rk(&root, &dh(&dhs, &header.dh)?);
            let step = Step {
                root,
                dhs,
                dhs_pub,
                dhr: header.dh,
                cks,
            };
            (
                mk,
                Pending {
                    step: Some(step),
                    skipped,
                    ckr: ck_after,
                    nr: header.n.checked_add(1).ok_or(SessionError::TooFarAhead {
                        gap: u32::MAX,
                        max: MAX_SKIP_PER_CHAIN,
                    })?,
                },
            )
        };
        let (mk, pending) = pending;
        let message = open(&mk)?;
        self.commit(pending, now);
        Ok(message)
    }

    fn commit(&mut self, p: Pending, now: UnixMillis) {
        if let Some(step) = p.step {
            self.root = step.root;
            self.dhs = step.dhs;
            self.dhs_pub = step.dhs_pub;
            self.dhr = Some(step.dhr);
            self.pn = self.ns;
            self.ns = 0;
            self.cks = Some(step.cks);
        }
        for (dh, n, mk) in p.skipped {
            let order = self.take_order();
            self.skipped.insert(
                (dh, n),
                SkippedKey {
                    mk,
                    stored_at: now,
                    order,
                },
            );
        }
        self.ckr = Some(p.ckr);
        self.nr = p.nr;
        self.expire(now);
    }

    /// The next insertion order. Orders only rank skipped keys by age; if the counter
    /// would overflow (only a restored, crafted state can get there), the keys are
    /// renumbered 0..n in their current order first.
    fn take_order(&mut self) -> u64 {
        if self.next_order == u64::MAX {
            let mut keys: Vec<_> = self.skipped.iter().map(|(k, v)| (v.order, *k)).collect();
            keys.sort_unstable();
            for (i, (_, k)) in keys.into_iter().enumerate() {
                if let Some(v) = self.skipped.get_mut(&k) {
                    v.order = i as u64;
                }
            }
            self.next_order = self.skipped.len() as u64;
        }
        let order = self.next_order;
        self.next_order += 1;
        order
    }

    /// Deletes skipped keys that are too old, then the oldest beyond the total bound.
    fn expire(&mut self, now: UnixMillis) {
        let horizon = now.saturating_sub(SKIPPED_KEY_MAX_AGE_MS);
        self.skipped.retain(|_, k| k.stored_at >= horizon);
        if self.skipped.len() > MAX_SKIPPED_KEYS {
            let mut orders: Vec<u64> = self.skipped.values().map(|k| k.order).collect();
            orders.sort_unstable();
            let cutoff = orders[self.skipped.len() - MAX_SKIPPED_KEYS];
            self.skipped.retain(|_, k| k.order >= cutoff);
        }
    }
}

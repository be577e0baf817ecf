//! Human-checkable fingerprints and safety numbers (SPEC.md section 5).
//!
//! A [`Fingerprint`] identifies one identity key *at one address*: moving a key to
//! another address changes it. Two people compare a [`SafetyNumber`] (60 digits, the
//! same on both phones) or scan each other's QR payload.

use std::fmt;

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha512};

use super::IdentityKey;
use crate::address::Address;
use crate::crypto::{self, Label};
use crate::limits::{FINGERPRINT_ITERATIONS, MAX_SCANNABLE_FINGERPRINT_LEN, PROTOCOL_VERSION};
use crate::wire;

/// The fingerprint of one identity key at one address: 32 bytes, shown as 30 digits.
///
/// `h = framed("kogge/v1/hash/fingerprint", identity_key, address)`, then
/// [`FINGERPRINT_ITERATIONS`] times `h = SHA-512(h ‖ identity_key)`; the fingerprint is
/// the first 32 bytes of `h`. The iterations make grinding for a look-alike key costly.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Computes the fingerprint of `identity` at `address`.
    pub fn of(identity: &IdentityKey, address: &Address) -> Self {
        let key = identity.to_bytes();
        let mut h: Vec<u8> =
            crypto::framed(Label::Fingerprint, &[&key, address.as_str().as_bytes()]);
        let mut digest = [0u8; 64];
        for _ in 0..FINGERPRINT_ITERATIONS {
            let mut hasher = Sha512::new();
            hasher.update(&h);
            hasher.update(key);
            digest = hasher.finalize().into();
            h.clear();
            h.extend_from_slice(&digest);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest[..32]);
        Self(out)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 30 decimal digits: for each of the first six 5-byte chunks, the chunk read as a
    /// big-endian integer modulo 100000, zero-padded to 5 digits.
    pub fn digits(&self) -> String {
        let mut s = String::with_capacity(30);
        for chunk in self.0.chunks_exact(5).take(6) {
            let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            s.push_str(&format!("{:05}", v % 100_000));
        }
        s
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.digits())
    }
}

/// A scanned QR payload did not match, or could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// The payload is longer than [`MAX_SCANNABLE_FINGERPRINT_LEN`].
    #[error("QR payload too large")]
    TooLarge,
    /// Not a valid encoding.
    #[error("QR payload is not valid")]
    Decode,
    /// A version this implementation does not know.
    #[error("unsupported QR payload version {0}")]
    UnsupportedVersion(u32),
    /// The fingerprints differ: the keys are not the ones both sides expect.
    #[error("fingerprints do not match")]
    Mismatch,
}

/// What two parties compare: both fingerprints, each from one side's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SafetyNumber {
    local: Fingerprint,
    remote: Fingerprint,
}

impl SafetyNumber {
    /// The safety number between `local` (this user) and `remote` (the contact).
    pub fn new(
        local_key: &IdentityKey,
        local_address: &Address,
        remote_key: &IdentityKey,
        remote_address: &Address,
    ) -> Self {
        Self {
            local: Fingerprint::of(local_key, local_address),
            remote: Fingerprint::of(remote_key, remote_address),
        }
    }

    /// From two precomputed fingerprints.
    pub fn from_fingerprints(local: Fingerprint, remote: Fingerprint) -> Self {
        Self { local, remote }
    }

    /// 60 digits: the two 30-digit fingerprints, the smaller first, so both sides see the
    /// same number.
    pub fn digits(&self) -> String {
        let (a, b) = (self.local.digits(), self.remote.digits());
        if a <= b { a + &b } else { b + &a }
    }

    /// The digits in twelve groups of five, separated by spaces, for display.
    pub fn grouped(&self) -> String {
        let d = self.digits();
        let groups: Vec<&str> = (0..12).filter_map(|i| d.get(i * 5..i * 5 + 5)).collect();
        groups.join(" ")
    }

    /// The QR payload this side shows: its own fingerprint and the one it holds for the
    /// contact.
    pub fn qr_payload(&self) -> Vec<u8> {
        wire::ScannableFingerprint {
            version: PROTOCOL_VERSION,
            own: Bytes::copy_from_slice(&self.local.0),
            peer: Bytes::copy_from_slice(&self.remote.0),
        }
        .encode_to_vec()
    }

    /// Checks a QR payload scanned from the contact's screen: the contact's "own" must be
    /// the fingerprint we hold for them, and their "peer" must be ours.
    pub fn verify_scanned(&self, payload: &[u8]) -> Result<(), FingerprintError> {
        let (own, peer) = decode_scannable(payload)?;
        if own == self.remote && peer == self.local {
            Ok(())
        } else {
            Err(FingerprintError::Mismatch)
        }
    }
}

/// Decodes a fingerprint QR payload into (the shower's own fingerprint, the fingerprint
/// the shower holds for its contact).
pub fn decode_scannable(payload: &[u8]) -> Result<(Fingerprint, Fingerprint), FingerprintError> {
    if payload.len() > MAX_SCANNABLE_FINGERPRINT_LEN {
        return Err(FingerprintError::TooLarge);
    }
    let m = wire::ScannableFingerprint::decode(payload).map_err(|_| FingerprintError::Decode)?;
    if m.version != PROTOCOL_VERSION {
        return Err(FingerprintError::UnsupportedVersion(m.version));
    }
    let own: [u8; 32] = m
        .own
        .as_ref()
        .try_into()
        .map_err(|_| FingerprintError::Decode)?;
    let peer: [u8; 32] = m
        .peer
        .as_ref()
        .try_into()
        .map_err(|_| FingerprintError::Decode)?;
    Ok((Fingerprint(own), Fingerprint(peer)))
}

//! Opening a backlog with Ed25519 batch verification (SPEC.md section 6.7).
//!
//! A device that comes online to hundreds of queued envelopes verifies their signatures
//! in chunks of [`BATCH_VERIFY_CHUNK`] with one multi-scalar multiplication each. If a
//! chunk fails, each of its signatures is verified singly, so one bad envelope costs the
//! honest ones only the single-verification price and is reported individually.
//!
//! Before batching, each signature's `R` must be a canonical encoding of a point that is
//! not of small order, and each key is already known not to be weak (certificates refuse
//! weak keys). These are the checks strict single verification makes, so a batch never
//! accepts a signature that [`UnverifiedEnvelope::verify`] would refuse — with one
//! documented exception: a signer who deliberately adds a small-order component to its
//! own `R` gets a signature that strict verification refuses and batch verification
//! accepts with probability at most 1/8 (SPEC.md 11.4). That needs the signing key, so
//! it is never a forgery; it only lets a signer make its own signature verify
//! inconsistently.

use std::sync::OnceLock;

use bytes::Bytes;
use curve25519_dalek::constants::EIGHT_TORSION;
use ed25519_dalek::{Signature, VerifyingKey};

use super::{
    CertificateDirectory, OpenError, Opened, ReplayWindow, UnverifiedEnvelope, VerifiedEnvelope,
};
use crate::identity::Device;
use crate::time::UnixMillis;

/// How many signatures one batch verification covers.
pub const BATCH_VERIFY_CHUNK: usize = 64;

/// The y-coordinates (sign bit cleared) of the eight small-order points.
fn small_order_ys() -> &'static [[u8; 32]] {
    static YS: OnceLock<Vec<[u8; 32]>> = OnceLock::new();
    YS.get_or_init(|| {
        let mut ys: Vec<[u8; 32]> = EIGHT_TORSION
            .iter()
            .map(|p| {
                let mut y = p.compress().to_bytes();
                y[31] &= 0x7f;
                y
            })
            .collect();
        ys.sort_unstable();
        ys.dedup();
        ys
    })
}

/// Whether `r` is a canonical encoding (y < 2^255 - 19) of a point that is not of small
/// order. (Whether it is on the curve at all is decided by the batch equation itself.)
fn r_is_acceptable(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    // y >= p  <=>  y = p + k for k in 0..19: top byte 0x7f, bytes 1..31 all 0xff, low byte >= 0xed.
    let non_canonical = y[31] == 0x7f && y[1..31].iter().all(|b| *b == 0xff) && y[0] >= 0xed;
    !non_canonical && !small_order_ys().contains(&y)
}

/// A decoded envelope waiting for its signature check.
struct Pending {
    index: usize,
    env: UnverifiedEnvelope,
    key: VerifyingKey,
    identity: crate::identity::IdentityKey,
    message: Vec<u8>,
}

/// Opens many envelopes at once, with the same checks and errors as [`super::open`]
/// for each, in the same order, and batch signature verification. Results are in input
/// order. Envelopes are recorded in `replay` in input order, so a duplicate within the
/// batch is reported as [`OpenError::Replay`].
pub fn open_batch(
    envelopes: &[Bytes],
    recipient: &Device,
    directory: &impl CertificateDirectory,
    replay: &mut ReplayWindow,
    now: UnixMillis,
) -> Vec<Result<Opened, OpenError>> {
    let mut results: Vec<Option<Result<VerifiedEnvelope, OpenError>>> =
        Vec::with_capacity(envelopes.len());
    let mut pending: Vec<Pending> = Vec::with_capacity(envelopes.len());

    for (index, bytes) in envelopes.iter().enumerate() {
        let prepared = UnverifiedEnvelope::decode(bytes.clone()).and_then(|env| {
            let h = env.claimed_header();
            let cert = directory
                .device_certificate(&h.sender, h.sender_device)
                .ok_or(OpenError::UnknownSender)?;
            env.check_sender(cert)?;
            Ok((env, *cert.signing_key(), *cert.identity_key()))
        });
        match prepared {
            Ok((env, key, identity)) => {
                let message = env.signature_input();
                pending.push(Pending {
                    index,
                    env,
                    key,
                    identity,
                    message,
                });
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }

    for chunk in pending.chunks(BATCH_VERIFY_CHUNK) {
        let all_acceptable = chunk
            .iter()
            .all(|p| r_is_acceptable(p.env.signature().r_bytes()));
        let batch_ok = all_acceptable && {
            let messages: Vec<&[u8]> = chunk.iter().map(|p| p.message.as_slice()).collect();
            let signatures: Vec<Signature> = chunk.iter().map(|p| *p.env.signature()).collect();
            let keys: Vec<VerifyingKey> = chunk.iter().map(|p| p.key).collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        };
        for p in chunk {
            let ok = batch_ok
                || crate::crypto::verify_message(&p.key, &p.message, p.env.signature()).is_ok();
            let verdict = if ok {
                Ok(VerifiedEnvelope {
                    inner: p.env.clone(),
                    sender_identity: p.identity,
                    _proof: super::SignatureChecked(()),
                })
            } else {
                Err(OpenError::BadSignature)
            };
            if let Some(slot) = results.get_mut(p.index) {
                *slot = Some(verdict);
            }
        }
    }

    results
        .into_iter()
        .map(|r| {
            let verified = r.unwrap_or(Err(OpenError::BadSignature))?;
            let opened = verified.decrypt(recipient)?;
            replay.accept(&opened.header, now)?;
            Ok(opened)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_order_table_has_five_ys() {
        // 1, -1, 0 and the two y-coordinates of the points of order 8.
        assert_eq!(small_order_ys().len(), 5);
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(!r_is_acceptable(&one));
        assert!(!r_is_acceptable(&[0u8; 32]));
    }

    #[test]
    fn non_canonical_y_is_refused() {
        let mut p = [0xffu8; 32];
        p[31] = 0x7f;
        p[0] = 0xed; // exactly p
        assert!(!r_is_acceptable(&p));
        p[0] = 0xec; // p - 1 = -1: small order
        assert!(!r_is_acceptable(&p));
        // The basepoint is fine.
        let b = curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED.to_bytes();
        assert!(r_is_acceptable(&b));
    }
}

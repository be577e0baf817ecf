//! Opening a backlog with Ed25519 batch verification (SPEC.md section 6.7).
//!
//! A device that comes online to hundreds of queued envelopes verifies their signatures
//! in chunks of [`BATCH_VERIFY_CHUNK`] with one multi-scalar multiplication each. If a
//! chunk fails, each of its signatures is verified singly, so one bad envelope costs the
//! honest ones only the single-verification price and is reported individually.
//!
//! Before batching, each signature's `R` must be a canonical encoding of a point that is
//! not of small order; keys were checked when they were parsed. Single verification
//! ([`crate::crypto::verify_message`]) uses the cofactored equation, so batch and single
//! verification agree (SPEC.md 6.7, 11.4): if the batch equation holds, every
//! signature's residual is (with overwhelming probability) of small order, which the
//! cofactored check accepts too; if it fails, every signature of the chunk is verified
//! singly and gets the single verdict.

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
    crate::crypto::is_canonical_point_encoding(r) && !small_order_ys().contains(&y)
}

/// A decoded envelope waiting for its signature check.
struct Pending {
    index: usize,
    env: UnverifiedEnvelope,
    key: VerifyingKey,
    identity: crate::identity::IdentityKey,
    message: Vec<u8>,
}

/// Decodes and verifies many envelopes at once: for each, exactly what
/// [`UnverifiedEnvelope::decode`] and [`UnverifiedEnvelope::verify`] (with the
/// directory's certificate of the claimed sender) would return, in input order, with the
/// signatures checked by batch verification in chunks of [`BATCH_VERIFY_CHUNK`].
pub fn verify_batch(
    envelopes: &[Bytes],
    directory: &impl CertificateDirectory,
) -> Vec<Result<VerifiedEnvelope, OpenError>> {
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
        .map(|r| r.unwrap_or(Err(OpenError::BadSignature)))
        .collect()
}

/// Opens many envelopes at once, with the same checks and errors as [`super::open`]
/// for each, in the same order, and batch signature verification ([`verify_batch`]).
/// Results are in input order. Envelopes are recorded in `replay` in input order, so a
/// duplicate within the batch is reported as [`OpenError::Replay`].
pub fn open_batch(
    envelopes: &[Bytes],
    recipient: &Device,
    directory: &impl CertificateDirectory,
    replay: &mut ReplayWindow,
    now: UnixMillis,
) -> Vec<Result<Opened, OpenError>> {
    verify_batch(envelopes, directory)
        .into_iter()
        .map(|r| {
            let verified = r?;
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

//! The primitives, wrapped once (SPEC.md section 2).
//!
//! Everything cryptographic in Kogge goes through this module: framed and labelled
//! signature inputs, strict Ed25519 verification, X25519 that refuses non-contributory
//! results, HKDF-SHA256 and ChaCha20-Poly1305. Secret material lives in boxed,
//! zeroize-on-drop types whose `Debug` prints nothing secret.

mod kem;
mod labels;

use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use kem::{
    KEM_CIPHERTEXT_LEN, KEM_PUBLIC_KEY_LEN, KemDecapsulationKey, kem_check_public_key,
    kem_decapsulate, kem_encapsulate, kem_encapsulate_deterministic, kem_public_key,
};
pub use labels::Label;

/// A fixed-size secret: boxed (moves copy a pointer, not the secret), wiped on drop,
/// compared in constant time, and redacted in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret<const N: usize>(Box<[u8; N]>);

impl<const N: usize> Secret<N> {
    /// Wraps secret bytes. The caller's copy should be wiped by the caller.
    pub fn new(bytes: [u8; N]) -> Self {
        Self(Box::new(bytes))
    }

    /// A zeroed secret, to be filled in place (avoids a stack copy).
    pub(crate) fn zeroed() -> Self {
        Self(Box::new([0u8; N]))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }

    pub(crate) fn expose_mut(&mut self) -> &mut [u8; N] {
        &mut self.0
    }
}

impl<const N: usize> ConstantTimeEq for Secret<N> {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.as_slice().ct_eq(other.0.as_slice())
    }
}

impl<const N: usize> PartialEq for Secret<N> {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl<const N: usize> Eq for Secret<N> {}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret<{N}>([REDACTED])")
    }
}

/// A primitive refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// An Ed25519 signature did not verify under strict rules.
    #[error("signature does not verify")]
    BadSignature,
    /// A public key is not a valid, non-weak Ed25519 point.
    #[error("invalid public key")]
    InvalidPublicKey,
    /// An X25519 result was all zeros (low-order or non-contributory peer key).
    #[error("non-contributory key agreement")]
    NonContributory,
    /// AEAD decryption failed: wrong key, nonce or associated data, or tampered ciphertext.
    #[error("decryption failed")]
    Decrypt,
    /// A length a primitive cannot take.
    #[error("invalid length")]
    Length,
}

/// Appends `u32 big-endian length ‖ bytes` to `out`.
fn push_framed(out: &mut Vec<u8>, part: &[u8]) {
    // Every input is bounded far below 4 GiB by the limits; saturate rather than panic.
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
}

/// The framed, labelled byte string that signatures, KDF infos and associated data are
/// computed over: `frame(label) ‖ frame(part_1) ‖ … ‖ frame(part_n)`, where
/// `frame(x) = u32be(len(x)) ‖ x` (SPEC.md 2.2).
pub fn framed(label: Label, parts: &[&[u8]]) -> Vec<u8> {
    let total = 4 + label.as_bytes().len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    push_framed(&mut out, label.as_bytes());
    for p in parts {
        push_framed(&mut out, p);
    }
    out
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Signs `framed(label, parts)` with Ed25519.
pub(crate) fn sign(key: &SigningKey, label: Label, parts: &[&[u8]]) -> Signature {
    use ed25519_dalek::Signer;
    key.sign(&framed(label, parts))
}

/// Verifies an Ed25519 signature over `framed(label, parts)` with strict rules
/// (canonical `S`, no small-order `R` or key; RFC 8032 with the checks of
/// `verify_strict`).
pub(crate) fn verify(
    key: &VerifyingKey,
    label: Label,
    parts: &[&[u8]],
    signature: &Signature,
) -> Result<(), CryptoError> {
    verify_message(key, &framed(label, parts), signature)
}

/// Whether a 32-byte Edwards point encoding has a canonical y-coordinate (y < p).
pub(crate) fn is_canonical_point_encoding(bytes: &[u8; 32]) -> bool {
    // y >= p = 2^255 - 19  <=>  top byte (sign bit cleared) 0x7f, bytes 1..31 all 0xff,
    // low byte >= 0xed.
    !((bytes[31] & 0x7f) == 0x7f && bytes[1..31].iter().all(|b| *b == 0xff) && bytes[0] >= 0xed)
}

/// Ed25519 verification of an already framed message (SPEC.md 2.1): strict encodings
/// and the cofactored equation.
///
/// * `S` must be canonical (`S < L`); `R` must be a canonical encoding of a point that
///   is not of small order; the key was checked when it was parsed ([`verifying_key`]).
/// * The equation is `[8]([S]B - R - [k]A) = 0` with `k = SHA-512(R ‖ A ‖ M) mod L`.
///
/// The cofactored equation is what batch verification checks too, so a signature is
/// accepted singly if and only if it is accepted in a batch (with overwhelming
/// probability); the cofactorless equation of RFC 8032's first variant cannot give that
/// guarantee for signatures whose `R` has a small-order component (Chalkias, Garillot
/// and Nikolaenko, "Taming the many EdDSAs", 2020).
pub fn verify_message(
    key: &VerifyingKey,
    message: &[u8],
    signature: &Signature,
) -> Result<(), CryptoError> {
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::IsIdentity;
    use sha2::Sha512;

    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))
        .ok_or(CryptoError::BadSignature)?;
    let r_bytes: [u8; 32] = *signature.r_bytes();
    if !is_canonical_point_encoding(&r_bytes) {
        return Err(CryptoError::BadSignature);
    }
    let r = CompressedEdwardsY(r_bytes)
        .decompress()
        .ok_or(CryptoError::BadSignature)?;
    if r.is_small_order() {
        return Err(CryptoError::BadSignature);
    }
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(key.as_bytes());
    h.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let minus_a = -key.to_edwards();
    let residual = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &minus_a, &s) - r;
    if residual.mul_by_cofactor().is_identity() {
        Ok(())
    } else {
        Err(CryptoError::BadSignature)
    }
}

/// Parses an Ed25519 public key, refusing non-canonical encodings, points not on the
/// curve, small-order points and points with a small-order component (SPEC.md 2.1).
pub fn verifying_key(bytes: &[u8]) -> Result<VerifyingKey, CryptoError> {
    let arr: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| CryptoError::InvalidPublicKey)?;
    let key = VerifyingKey::from_bytes(arr).map_err(|_| CryptoError::InvalidPublicKey)?;
    // Canonical encoding, not of small order, and no small-order component: then every
    // key has exactly one encoding and no two keys accept the same signatures.
    if !is_canonical_point_encoding(arr) || key.is_weak() || !key.to_edwards().is_torsion_free() {
        return Err(CryptoError::InvalidPublicKey);
    }
    Ok(key)
}

/// Parses a 64-byte Ed25519 signature.
pub fn signature(bytes: &[u8]) -> Result<Signature, CryptoError> {
    Signature::from_slice(bytes).map_err(|_| CryptoError::BadSignature)
}

/// X25519 with the all-zero check of RFC 7748 section 6.1: a low-order or otherwise
/// non-contributory peer key is refused instead of yielding a predictable secret.
pub fn x25519(
    secret: &x25519_dalek::StaticSecret,
    peer: &x25519_dalek::PublicKey,
) -> Result<Secret<32>, CryptoError> {
    let shared = secret.diffie_hellman(peer);
    if !shared.was_contributory() {
        return Err(CryptoError::NonContributory);
    }
    let mut out = Secret::zeroed();
    out.expose_mut().copy_from_slice(shared.as_bytes());
    Ok(out)
}

/// HKDF-SHA256: extract with `salt`, expand with `info = framed(label, info_parts)`.
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    label: Label,
    info_parts: &[&[u8]],
    okm: &mut [u8],
) -> Result<(), CryptoError> {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(salt), ikm);
    hk.expand(&framed(label, info_parts), okm)
        .map_err(|_| CryptoError::Length)
}

fn cipher(key: &Secret<32>) -> Result<ChaCha20Poly1305, CryptoError> {
    // `new_from_slice` borrows the key: no unwiped stack copy is made.
    ChaCha20Poly1305::new_from_slice(key.expose()).map_err(|_| CryptoError::Length)
}

/// ChaCha20-Poly1305 encryption; returns `ciphertext ‖ tag`.
pub fn aead_seal(
    key: &Secret<32>,
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = cipher(key)?;
    let mut buf = Vec::with_capacity(plaintext.len() + 16);
    buf.extend_from_slice(plaintext);
    cipher
        .encrypt_in_place(&Nonce::from(*nonce), aad, &mut buf)
        .map_err(|_| CryptoError::Length)?;
    Ok(buf)
}

/// ChaCha20-Poly1305 decryption of `ciphertext ‖ tag`. The plaintext is wiped on drop.
pub fn aead_open(
    key: &Secret<32>,
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cipher = cipher(key)?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place(&Nonce::from(*nonce), aad, &mut *buf)
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(buf)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wycheproof;

//! Wycheproof vectors run against the primitives exactly as Kogge calls them.
//!
//! Each test goes through the wrappers of `crypto/mod.rs` (or, for HKDF, the `hkdf`
//! instantiation the wrapper uses), so a dependency update that loosens a check (a
//! verifier that starts accepting malleable signatures, an X25519 that stops flagging
//! all-zero results, an AEAD that accepts a modified tag) fails here. Every test asserts
//! a minimum number of vectors run, so an empty or truncated data set cannot pass.

use std::collections::BTreeSet;

use wycheproof::TestResult;

use super::{CryptoError, Label, Secret};

/// Ed25519 vectors that Wycheproof calls valid but Kogge refuses on purpose. Kogge's
/// policy (`verifying_key` refuses weak keys, `verify_message` is `verify_strict`) is
/// stricter than plain RFC 8032, so a vector in this list is not a failure.
///
/// The list is empty for the Wycheproof release pinned in `Cargo.lock`: every valid
/// vector uses a key of large order and a canonical `R` of large order. The test fails
/// if a listed vector stops being refused, or an unlisted valid vector is refused.
const ED25519_VALID_REFUSED_BY_POLICY: &[usize] = &[];

/// Runs one Ed25519 vector through the same three steps envelope verification takes.
fn ed25519_accepts(pk: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    let key = super::verifying_key(pk)?;
    let sig = super::signature(sig)?;
    super::verify_message(&key, msg, &sig)
}

#[test]
fn ed25519_strict_verification() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519)
        .expect("load ed25519 vectors");
    let (mut valid, mut invalid, mut acceptable) = (0usize, 0usize, 0usize);
    let mut refused_valid = BTreeSet::new();
    let mut acceptable_outcomes = Vec::new();
    for group in &set.test_groups {
        for t in &group.tests {
            let outcome = ed25519_accepts(&group.key.pk, &t.msg, &t.sig);
            match t.result {
                TestResult::Valid => {
                    valid += 1;
                    if outcome.is_err() {
                        refused_valid.insert(t.tc_id);
                    }
                }
                TestResult::Invalid => {
                    invalid += 1;
                    assert!(
                        outcome.is_err(),
                        "ed25519 tc {} ({}, {:?}) must be refused",
                        t.tc_id,
                        t.comment,
                        t.flags
                    );
                }
                TestResult::Acceptable => {
                    acceptable += 1;
                    acceptable_outcomes.push((t.tc_id, outcome.is_ok()));
                }
            }
        }
    }
    // Only keys refused by the weak-key policy may make a valid vector fail.
    for tc in &refused_valid {
        let group = set
            .test_groups
            .iter()
            .find(|g| g.tests.iter().any(|t| t.tc_id == *tc))
            .expect("group of a refused vector");
        assert_eq!(
            super::verifying_key(&group.key.pk).err(),
            Some(CryptoError::InvalidPublicKey),
            "ed25519 tc {tc} is valid and was refused, but not because of a weak key"
        );
    }
    let expected: BTreeSet<usize> = ED25519_VALID_REFUSED_BY_POLICY.iter().copied().collect();
    assert_eq!(
        refused_valid, expected,
        "valid ed25519 vectors refused (left) differ from the documented policy list (right)"
    );
    // The pinned set has no "acceptable" Ed25519 vectors; if a new release adds some,
    // this records which way each went so that a review can decide.
    assert!(
        acceptable_outcomes.is_empty(),
        "acceptable ed25519 vectors (tc id, accepted): {acceptable_outcomes:?}"
    );
    assert!(valid >= 80, "only {valid} valid ed25519 vectors ran");
    assert!(invalid >= 60, "only {invalid} invalid ed25519 vectors ran");
    assert_eq!(valid + invalid + acceptable, set.number_of_tests);
}

/// The strictness that Wycheproof's Ed25519 set does not exercise: a small-order `R`
/// and a small-order key. Plain (cofactorless, non-strict) verification accepts both
/// signatures below; Kogge must not.
#[test]
fn ed25519_small_order_r_and_key_are_refused() {
    use curve25519_dalek::scalar::Scalar;
    use ed25519_dalek::{Signature, SigningKey, Verifier};
    use sha2::{Digest, Sha512};

    let signing = SigningKey::from_bytes(&[0x42; 32]);
    let public = signing.verifying_key();
    let msg = b"small-order R";
    // R = identity (y = 1). Then [S]B = R + [k]A holds for S = k * a.
    let mut r = [0u8; 32];
    r[0] = 1;
    let digest: [u8; 64] = Sha512::new()
        .chain_update(r)
        .chain_update(public.as_bytes())
        .chain_update(msg)
        .finalize()
        .into();
    let k = Scalar::from_bytes_mod_order_wide(&digest);
    let s = k * signing.to_scalar();
    let mut sig_bytes = [0u8; 64];
    sig_bytes[..32].copy_from_slice(&r);
    sig_bytes[32..].copy_from_slice(s.as_bytes());
    let sig = Signature::from_bytes(&sig_bytes);
    assert!(
        public.verify(msg, &sig).is_ok(),
        "construction check: plain verification accepts a small-order R"
    );
    assert_eq!(
        super::verify_message(&public, msg, &sig),
        Err(CryptoError::BadSignature)
    );
    assert_eq!(
        ed25519_accepts(public.as_bytes(), msg, &sig_bytes),
        Err(CryptoError::BadSignature)
    );

    // Key = identity, R = identity, S = 0: [0]B = identity + [k]identity for any message.
    let identity = r;
    let mut trivial = [0u8; 64];
    trivial[..32].copy_from_slice(&identity);
    let weak = ed25519_dalek::VerifyingKey::from_bytes(&identity).expect("decompresses");
    assert!(
        weak.verify(b"anything", &Signature::from_bytes(&trivial))
            .is_ok(),
        "construction check: plain verification accepts anything under the identity key"
    );
    assert_eq!(
        super::verifying_key(&identity).err(),
        Some(CryptoError::InvalidPublicKey)
    );
    assert_eq!(
        super::verify_message(&weak, b"anything", &Signature::from_bytes(&trivial)),
        Err(CryptoError::BadSignature)
    );
}

#[test]
fn x25519_refuses_non_contributory_results() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519)
        .expect("load x25519 vectors");
    let (mut agreed, mut refused, mut skipped) = (0usize, 0usize, 0usize);
    for group in &set.test_groups {
        for t in &group.tests {
            let (Ok(private), Ok(public)) = (
                <[u8; 32]>::try_from(t.private_key.as_slice()),
                <[u8; 32]>::try_from(t.public_key.as_slice()),
            ) else {
                // Kogge's types cannot even hold such a key.
                assert_eq!(
                    t.result,
                    TestResult::Invalid,
                    "x25519 tc {}: a key of the wrong length must be invalid",
                    t.tc_id
                );
                skipped += 1;
                continue;
            };
            let zero = t
                .flags
                .contains(&wycheproof::xdh::TestFlag::ZeroSharedSecret);
            assert_eq!(
                zero,
                t.shared_secret.iter().all(|b| *b == 0),
                "x25519 tc {}: the ZeroSharedSecret flag and the expected secret disagree",
                t.tc_id
            );
            let got = super::x25519(
                &x25519_dalek::StaticSecret::from(private),
                &x25519_dalek::PublicKey::from(public),
            );
            if zero {
                assert_eq!(
                    got.err(),
                    Some(CryptoError::NonContributory),
                    "x25519 tc {} ({}) has an all-zero result and must be refused",
                    t.tc_id,
                    t.comment
                );
                refused += 1;
            } else {
                assert_ne!(
                    t.result,
                    TestResult::Invalid,
                    "x25519 tc {}: no policy for invalid vectors",
                    t.tc_id
                );
                let shared = got.unwrap_or_else(|e| panic!("x25519 tc {}: {e}", t.tc_id));
                assert_eq!(
                    &shared.expose()[..],
                    &t.shared_secret[..],
                    "x25519 tc {} ({})",
                    t.tc_id,
                    t.comment
                );
                agreed += 1;
            }
        }
    }
    assert!(agreed >= 450, "only {agreed} x25519 agreements ran");
    assert!(refused >= 30, "only {refused} all-zero x25519 vectors ran");
    assert_eq!(agreed + refused + skipped, set.number_of_tests);
}

#[test]
fn chacha20_poly1305_seal_and_open() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::ChaCha20Poly1305)
        .expect("load chacha20-poly1305 vectors");
    let (mut valid, mut invalid, mut skipped) = (0usize, 0usize, 0usize);
    for group in &set.test_groups {
        for t in &group.tests {
            let key: [u8; 32] = t.key.as_slice().try_into().expect("256-bit keys only");
            let key = Secret::new(key);
            let Ok(nonce) = <[u8; 12]>::try_from(t.nonce.as_slice()) else {
                // Kogge only ever uses 96-bit nonces; the others cannot reach the wrapper.
                assert_ne!(group.nonce_size, 96);
                assert_ne!(
                    t.result,
                    TestResult::Valid,
                    "chacha20-poly1305 tc {}: a valid vector with a {}-bit nonce",
                    t.tc_id,
                    group.nonce_size
                );
                skipped += 1;
                continue;
            };
            assert_eq!(group.tag_size, 128);
            let mut sealed = t.ct.to_vec();
            sealed.extend_from_slice(&t.tag);
            let opened = super::aead_open(&key, &nonce, &t.aad, &sealed);
            match t.result {
                TestResult::Valid => {
                    let ct = super::aead_seal(&key, &nonce, &t.aad, &t.pt)
                        .unwrap_or_else(|e| panic!("chacha20-poly1305 tc {}: {e}", t.tc_id));
                    assert_eq!(ct, sealed, "chacha20-poly1305 tc {} seal", t.tc_id);
                    let pt =
                        opened.unwrap_or_else(|e| panic!("chacha20-poly1305 tc {}: {e}", t.tc_id));
                    assert_eq!(&pt[..], &t.pt[..], "chacha20-poly1305 tc {} open", t.tc_id);
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert_eq!(
                        opened.err(),
                        Some(CryptoError::Decrypt),
                        "chacha20-poly1305 tc {} ({}, {:?}) must be refused",
                        t.tc_id,
                        t.comment,
                        t.flags
                    );
                    invalid += 1;
                }
                TestResult::Acceptable => {
                    panic!(
                        "chacha20-poly1305 tc {}: no acceptable vectors expected (opened: {})",
                        t.tc_id,
                        opened.is_ok()
                    );
                }
            }
        }
    }
    assert!(
        valid >= 250,
        "only {valid} valid chacha20-poly1305 vectors ran"
    );
    assert!(
        invalid >= 50,
        "only {invalid} invalid chacha20-poly1305 vectors ran"
    );
    assert!(skipped >= 1, "the non-96-bit nonce vectors disappeared");
    assert_eq!(valid + invalid + skipped, set.number_of_tests);
}

#[test]
fn hkdf_sha256_as_kogge_instantiates_it() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256)
        .expect("load hkdf-sha256 vectors");
    let (mut valid, mut invalid) = (0usize, 0usize);
    for group in &set.test_groups {
        for t in &group.tests {
            let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&t.salt), &t.ikm);
            let mut okm = vec![0u8; t.size];
            let got = hk.expand(&t.info, &mut okm);
            match t.result {
                TestResult::Valid => {
                    assert!(got.is_ok(), "hkdf tc {}: {got:?}", t.tc_id);
                    assert_eq!(&okm[..], &t.okm[..], "hkdf tc {} ({})", t.tc_id, t.comment);
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(
                        got.is_err(),
                        "hkdf tc {} ({}) must fail",
                        t.tc_id,
                        t.comment
                    );
                    // The wrapper reports the same condition as a length error.
                    let mut okm = vec![0u8; t.size];
                    assert_eq!(
                        super::hkdf_sha256(&t.salt, &t.ikm, Label::OneShotSealKdf, &[], &mut okm),
                        Err(CryptoError::Length)
                    );
                    invalid += 1;
                }
                TestResult::Acceptable => {
                    panic!("hkdf tc {}: no acceptable vectors expected", t.tc_id);
                }
            }
        }
    }
    assert!(valid >= 80, "only {valid} valid hkdf vectors ran");
    assert!(invalid >= 3, "only {invalid} invalid hkdf vectors ran");
    assert_eq!(valid + invalid, set.number_of_tests);
}

/// The wrapper is the `hkdf` crate with `info = framed(label, parts)`, nothing else.
#[test]
fn hkdf_wrapper_is_expand_with_framed_info() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256)
        .expect("load hkdf-sha256 vectors");
    let mut checked = 0usize;
    for t in set
        .test_groups
        .iter()
        .flat_map(|g| g.tests.iter())
        .filter(|t| t.result == TestResult::Valid)
    {
        let parts: [&[u8]; 2] = [&t.info, b"part"];
        let mut want = vec![0u8; t.size];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&t.salt), &t.ikm)
            .expand(&super::framed(Label::OneShotSealKdf, &parts), &mut want)
            .expect("expand");
        let mut got = vec![0u8; t.size];
        super::hkdf_sha256(&t.salt, &t.ikm, Label::OneShotSealKdf, &parts, &mut got)
            .expect("wrapper");
        assert_eq!(got, want, "hkdf tc {}", t.tc_id);
        checked += 1;
    }
    assert!(
        checked >= 80,
        "only {checked} hkdf vectors ran through the wrapper"
    );
}

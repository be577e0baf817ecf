//! Unit tests of the wrappers. Wycheproof edge cases live in `wycheproof.rs`.

use super::*;

#[test]
fn framing_is_length_prefixed() {
    let f = framed(Label::DeviceId, &[b"ab", b""]);
    let label = Label::DeviceId.as_bytes();
    let mut want = (label.len() as u32).to_be_bytes().to_vec();
    want.extend_from_slice(label);
    want.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]);
    assert_eq!(f, want);
    // Moving a byte between parts changes the framing.
    assert_ne!(
        framed(Label::DeviceId, &[b"a", b"b"]),
        framed(Label::DeviceId, &[b"ab", b""])
    );
}

#[test]
fn secret_debug_is_redacted_and_eq_is_by_value() {
    let a = Secret::new([7u8; 32]);
    let b = Secret::new([7u8; 32]);
    let c = Secret::new([8u8; 32]);
    assert_eq!(format!("{a:?}"), "Secret<32>([REDACTED])");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn aead_round_trip_and_tamper() {
    let key = Secret::new([1u8; 32]);
    let nonce = [2u8; 12];
    let ct = aead_seal(&key, &nonce, b"aad", b"hello").unwrap();
    assert_eq!(ct.len(), 5 + 16);
    assert_eq!(&aead_open(&key, &nonce, b"aad", &ct).unwrap()[..], b"hello");
    assert_eq!(
        aead_open(&key, &nonce, b"aaD", &ct),
        Err(CryptoError::Decrypt)
    );
    let mut bad = ct.clone();
    bad[0] ^= 1;
    assert_eq!(
        aead_open(&key, &nonce, b"aad", &bad),
        Err(CryptoError::Decrypt)
    );
    assert_eq!(
        aead_open(&key, &nonce, b"aad", &ct[..10]),
        Err(CryptoError::Decrypt)
    );
}

#[test]
fn x25519_refuses_low_order_points() {
    let secret = x25519_dalek::StaticSecret::from([9u8; 32]);
    // The zero point and the point of order 2 (u = 1 is order 4 on the twist; u = 0 is order 4? both low order)
    for u in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        let peer = x25519_dalek::PublicKey::from(u);
        assert_eq!(
            x25519(&secret, &peer).unwrap_err(),
            CryptoError::NonContributory
        );
    }
}

#[test]
fn weak_verifying_keys_are_refused() {
    // The identity point (y = 1) is small order.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(
        verifying_key(&identity).unwrap_err(),
        CryptoError::InvalidPublicKey
    );
    assert_eq!(
        verifying_key(&[0u8; 31]).unwrap_err(),
        CryptoError::InvalidPublicKey
    );
}

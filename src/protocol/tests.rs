use super::*;
use crate::time::UnixMillis;
use rand_core::SeedableRng;

#[test]
fn token_bucket_limits_and_refills() {
    let t0 = UnixMillis(1_000);
    let mut b = TokenBucket::new(3, 1, 1_000, t0);
    assert!(b.take(t0).is_ok());
    assert!(b.take(t0).is_ok());
    assert!(b.take(t0).is_ok());
    assert_eq!(b.take(t0), Err(1_000));
    assert_eq!(b.take(t0.saturating_add(400)), Err(600));
    assert!(b.take(t0.saturating_add(1_000)).is_ok());
    // Never more than the burst, however long it idles.
    assert_eq!(b.available(t0.saturating_add(1_000_000)), 3);
    // Time going backwards neither panics nor refills.
    assert!(b.take(UnixMillis(0)).is_ok());
}

#[test]
fn backoff_grows_within_jitter_bounds() {
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([1; 32]);
    let b = Backoff {
        initial_ms: 100,
        max_ms: 1_000,
    };
    for attempt in 0..80 {
        let d = b.delay(attempt, &mut rng);
        let cap = (100u64 << attempt.min(10)).min(1_000);
        assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d}");
    }
}

#[test]
fn error_codes_round_trip_and_retryability() {
    for c in ErrorCode::ALL {
        assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
        let e = ProtocolError::new(*c, "x");
        assert_eq!(ProtocolError::from_wire(&e.to_wire()), e);
    }
    assert!(ErrorCode::MailboxFull.is_retryable());
    assert!(!ErrorCode::UnknownUser.is_retryable());
    assert_eq!(ErrorCode::parse("nope"), None);
}

#[test]
fn oversized_and_malformed_frames_are_refused() {
    assert!(matches!(
        check_frame(&vec![0; MAX_FRAME_LEN + 1]),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(check_frame(&[]), Err(FrameError::Decode));
    assert_eq!(check_frame(&[0xff, 0xff]), Err(FrameError::Decode));
    let short_nonce = encode(wire::frame::Body::Hello(wire::Hello {
        version: 1,
        nonce: Bytes::from_static(&[1; 31]),
        role: wire::Role::Device as i32,
        acceptor: "one.example".into(),
    }));
    assert_eq!(
        check_frame(&short_nonce),
        Err(FrameError::InvalidField("hello.nonce"))
    );
    let many = encode(wire::frame::Body::DeliverAck(wire::DeliverAck {
        seqs: vec![1; MAX_ACK_SEQS + 1],
    }));
    assert!(matches!(
        check_frame(&many),
        Err(FrameError::TooMany { .. })
    ));
}

#[test]
fn auth_signatures_bind_every_part() {
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([2; 32]);
    let key = SigningKey::generate(&mut rng);
    let vk = key.verifying_key();
    let sig = sign_auth(&key, b"c", b"h", "one.example", b"b", b"id").to_bytes();
    assert!(verify_auth(
        &vk,
        b"c",
        b"h",
        "one.example",
        b"b",
        b"id",
        &sig
    ));
    assert!(!verify_auth(
        &vk,
        b"h",
        b"c",
        "one.example",
        b"b",
        b"id",
        &sig
    ));
    assert!(!verify_auth(
        &vk,
        b"c",
        b"h",
        "two.example",
        b"b",
        b"id",
        &sig
    ));
    assert!(!verify_auth(
        &vk,
        b"c",
        b"h",
        "one.example",
        b"",
        b"id",
        &sig
    ));
    assert!(!verify_auth(
        &vk,
        b"c",
        b"h",
        "one.example",
        b"b",
        b"id2",
        &sig
    ));
    // A challenge signature is not an auth signature (different labels).
    let ch = sign_challenge(&key, b"c", b"h", "one.example", b"b").to_bytes();
    assert!(verify_challenge(&vk, b"c", b"h", "one.example", b"b", &ch));
    assert!(!verify_auth(&vk, b"c", b"h", "one.example", b"b", b"", &ch));
}

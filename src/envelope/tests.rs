use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::identity::{DeviceKeyPair, IdentityKeyPair};

const NOW: UnixMillis = UnixMillis(1_750_000_000_000);
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

pub(crate) struct World {
    pub(crate) rng: ChaCha20Rng,
    pub(crate) alice: Device,
    pub(crate) bob: Device,
    pub(crate) bob2: Device,
    pub(crate) known_by_bob: KnownDevices,
}

pub(crate) fn world() -> World {
    let mut rng = ChaCha20Rng::from_seed([42; 32]);
    let a_id = IdentityKeyPair::generate(&mut rng);
    let b_id = IdentityKeyPair::generate(&mut rng);
    let mk = |id: &IdentityKeyPair, addr: &str, rng: &mut ChaCha20Rng| {
        Device::new(
            id,
            Address::parse(addr).unwrap(),
            DeviceKeyPair::generate(rng),
            NOW.saturating_sub(YEAR_MS),
            NOW.saturating_add(YEAR_MS),
        )
        .unwrap()
    };
    let alice = mk(&a_id, "alice@one.example", &mut rng);
    let bob = mk(&b_id, "bob@two.example", &mut rng);
    let bob2 = mk(&b_id, "bob@two.example", &mut rng);
    let mut known_by_bob = KnownDevices::new();
    known_by_bob.insert(alice.certificate().clone());
    World {
        rng,
        alice,
        bob,
        bob2,
        known_by_bob,
    }
}

fn text(s: &str) -> Content {
    Content::Text(Text::plain(s))
}

fn seal_to(w: &mut World, to: &DeviceCertificate, content: &Content, ts: UnixMillis) -> Bytes {
    let id = MessageId::random(&mut w.rng);
    seal(
        &w.alice,
        &Outgoing {
            recipient: to,
            message_id: id,
            timestamp: ts,
            content,
        },
        &mut w.rng,
    )
    .unwrap()
}

/// Re-signs a modified envelope with Alice's real key, to reach checks behind the
/// signature.
pub(crate) fn resign(alice: &Device, header: &[u8], ciphertext: &[u8]) -> Bytes {
    use ed25519_dalek::Signer;
    let sig = alice
        .keys()
        .signing()
        .sign(&signature_input(header, ciphertext));
    Bytes::from(
        wire::Envelope {
            version: PROTOCOL_VERSION,
            header: Bytes::copy_from_slice(header),
            ciphertext: Bytes::copy_from_slice(ciphertext),
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }
        .encode_to_vec(),
    )
}

fn edit_header(env: &Bytes, f: impl FnOnce(&mut wire::EnvelopeHeader)) -> Vec<u8> {
    let outer = wire::Envelope::decode(env.clone()).unwrap();
    let mut h = wire::EnvelopeHeader::decode(outer.header).unwrap();
    f(&mut h);
    h.encode_to_vec()
}

fn ciphertext_of(env: &Bytes) -> Bytes {
    wire::Envelope::decode(env.clone()).unwrap().ciphertext
}

#[test]
fn seal_open_round_trip() {
    let mut w = world();
    let c = text("hello bob");
    let bob_cert = w.bob.certificate().clone();
    let env = seal_to(&mut w, &bob_cert, &c, NOW);
    let mut replay = ReplayWindow::default();
    let opened = open(env.clone(), &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap();
    assert_eq!(opened.content, c);
    assert_eq!(opened.header.sender, *w.alice.address());
    assert_eq!(opened.header.sender_device, w.alice.id());
    assert_eq!(
        opened.sender_identity,
        *w.alice.certificate().identity_key()
    );
    assert_eq!(replay.len(), 1);
    assert_eq!(
        open(env, &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::Replay
    );
    assert_eq!(replay.len(), 1);
}

#[test]
fn envelope_for_one_device_does_not_open_on_another() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let env = seal_to(&mut w, &bob_cert, &text("for device 1"), NOW);
    let mut replay = ReplayWindow::default();
    assert_eq!(
        open(env.clone(), &w.bob2, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::WrongRecipient
    );
    assert!(replay.is_empty());
    // Even if someone rewrites the recipient device in the header and re-signs with the
    // sender's key, the AEAD binds the original header: Bob's second device has another
    // agreement key, so decryption fails.
    let h = edit_header(&env, |h| {
        h.recipient_device = Bytes::copy_from_slice(w.bob2.id().as_bytes())
    });
    let forged = resign(&w.alice, &h, &ciphertext_of(&env));
    assert_eq!(
        open(forged, &w.bob2, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::DecryptFailed
    );
    assert!(replay.is_empty());
}

#[test]
fn header_is_bound_as_associated_data() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let env = seal_to(&mut w, &bob_cert, &text("x"), NOW);
    // Change the message id and re-sign: the signature is fine, the AEAD is not.
    let h = edit_header(&env, |h| h.message_id = Bytes::from_static(&[9; 16]));
    let forged = resign(&w.alice, &h, &ciphertext_of(&env));
    let mut replay = ReplayWindow::default();
    assert_eq!(
        open(forged, &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::DecryptFailed
    );
}

#[test]
fn checks_run_in_the_specified_order() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let env = seal_to(&mut w, &bob_cert, &text("x"), NOW);
    let mut replay = ReplayWindow::default();
    let mut run = |b: Bytes| open(b, &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err();

    // Size before anything else: even garbage this big is "too large", not "decode".
    assert!(matches!(
        run(Bytes::from(vec![0xff; MAX_ENVELOPE_LEN + 1])),
        OpenError::TooLarge {
            what: "envelope",
            ..
        }
    ));
    assert_eq!(run(env.slice(..env.len() - 10)), OpenError::Decode);
    // Version before structure: an outer version 2 with a broken header is a version error.
    let v2 = wire::Envelope {
        version: 2,
        header: Bytes::from_static(b"\xff"),
        ciphertext: Bytes::new(),
        signature: Bytes::new(),
    }
    .encode_to_vec();
    assert_eq!(run(Bytes::from(v2)), OpenError::UnsupportedVersion(2));
    // Address grammar before signature: a non-canonical sender (bad signature too).
    let h = edit_header(&env, |h| h.sender = "Alice@one.example".into());
    let unsigned = wire::Envelope {
        version: 1,
        header: Bytes::from(h),
        ciphertext: ciphertext_of(&env),
        signature: Bytes::from(vec![0u8; 64]),
    }
    .encode_to_vec();
    assert!(matches!(
        run(Bytes::from(unsigned)),
        OpenError::InvalidAddress {
            field: "sender",
            error: AddressError::NotCanonical
        }
    ));
}

#[test]
fn structural_errors_name_the_field() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let env = seal_to(&mut w, &bob_cert, &text("x"), NOW);
    let ct = ciphertext_of(&env);
    let mut replay = ReplayWindow::default();
    let cases: Vec<(Vec<u8>, OpenError)> = vec![
        (
            edit_header(&env, |h| h.message_id = Bytes::from_static(&[1; 15])),
            OpenError::InvalidField("message_id"),
        ),
        (
            edit_header(&env, |h| h.sender_device = Bytes::new()),
            OpenError::InvalidField("sender_device"),
        ),
        (
            edit_header(&env, |h| h.recipient_device = Bytes::from_static(&[0; 17])),
            OpenError::InvalidField("recipient_device"),
        ),
        (
            edit_header(&env, |h| h.ephemeral_key = Bytes::from_static(&[0; 31])),
            OpenError::InvalidField("ephemeral_key"),
        ),
        (
            edit_header(&env, |h| h.payload_kind = 7),
            OpenError::UnsupportedPayloadKind(7),
        ),
        (
            edit_header(&env, |h| h.content_type = 0),
            OpenError::UnsupportedContentType(0),
        ),
        (
            edit_header(&env, |h| h.version = 3),
            OpenError::UnsupportedVersion(3),
        ),
        (
            edit_header(&env, |h| h.recipient = "bob@".into()),
            OpenError::InvalidAddress {
                field: "recipient",
                error: AddressError::EmptyDomain,
            },
        ),
    ];
    for (h, want) in cases {
        let b = resign(&w.alice, &h, &ct);
        assert_eq!(
            open(b, &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
            want
        );
    }
    assert!(replay.is_empty());
}

#[test]
fn low_order_ephemeral_is_non_contributory() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let env = seal_to(&mut w, &bob_cert, &text("x"), NOW);
    let h = edit_header(&env, |h| h.ephemeral_key = Bytes::from_static(&[0; 32]));
    let forged = resign(&w.alice, &h, &ciphertext_of(&env));
    let mut replay = ReplayWindow::default();
    assert_eq!(
        open(forged, &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::NonContributory
    );
}

#[test]
fn sender_checks() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let env = seal_to(&mut w, &bob_cert, &text("x"), NOW);
    let mut replay = ReplayWindow::default();
    assert_eq!(
        open(env.clone(), &w.bob, &KnownDevices::new(), &mut replay, NOW).unwrap_err(),
        OpenError::UnknownSender
    );
    // Verifying against another device's certificate.
    let u = UnverifiedEnvelope::decode(env.clone()).unwrap();
    assert_eq!(
        u.verify(w.bob.certificate()).unwrap_err(),
        OpenError::SenderMismatch
    );
    // A signature by another key under Alice's claimed identity.
    let mut bytes = env.to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    assert_eq!(
        open(
            Bytes::from(bytes),
            &w.bob,
            &w.known_by_bob,
            &mut replay,
            NOW
        )
        .unwrap_err(),
        OpenError::BadSignature
    );
    // An envelope dated outside the sender certificate's validity.
    let late = NOW.saturating_add(2 * YEAR_MS);
    let env_late = seal_to(&mut w, &bob_cert, &text("x"), NOW);
    let h = edit_header(&env_late, |h| h.timestamp_ms = late.0);
    let forged = resign(&w.alice, &h, &ciphertext_of(&env_late));
    assert_eq!(
        open(forged, &w.bob, &w.known_by_bob, &mut replay, late).unwrap_err(),
        OpenError::SenderCertificateNotValid
    );
    assert!(replay.is_empty());
}

#[test]
fn freshness_window() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let policy = ReplayPolicy::default();
    let mut replay = ReplayWindow::default();
    let old = seal_to(
        &mut w,
        &bob_cert,
        &text("old"),
        NOW.saturating_sub(policy.max_age_ms + 1),
    );
    assert_eq!(
        open(old, &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::TooOld
    );
    let future = seal_to(
        &mut w,
        &bob_cert,
        &text("f"),
        NOW.saturating_add(policy.max_skew_ms + 1),
    );
    assert_eq!(
        open(future, &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::FromFuture
    );
    let edge = seal_to(
        &mut w,
        &bob_cert,
        &text("e"),
        NOW.saturating_add(policy.max_skew_ms),
    );
    assert!(open(edge, &w.bob, &w.known_by_bob, &mut replay, NOW).is_ok());
}

#[test]
fn full_window_raises_its_floor_instead_of_forgetting() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let mut replay = ReplayWindow::new(ReplayPolicy {
        capacity: 2,
        ..ReplayPolicy::default()
    });
    let envs: Vec<Bytes> = (0..3)
        .map(|i| seal_to(&mut w, &bob_cert, &text("x"), NOW.saturating_add(i)))
        .collect();
    for e in &envs {
        open(e.clone(), &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap();
    }
    assert_eq!(replay.len(), 2);
    assert_eq!(replay.floor(w.alice.address()), NOW.saturating_add(1));
    // The forgotten first envelope cannot come back.
    assert_eq!(
        open(envs[0].clone(), &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::TooOld
    );
    assert_eq!(
        open(envs[2].clone(), &w.bob, &w.known_by_bob, &mut replay, NOW).unwrap_err(),
        OpenError::Replay
    );
}

#[test]
fn sealing_refuses_bad_recipients() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let too_late = NOW.saturating_add(2 * YEAR_MS);
    let err = seal(
        &w.alice,
        &Outgoing {
            recipient: &bob_cert,
            message_id: MessageId::from_bytes([0; 16]),
            timestamp: too_late,
            content: &text("x"),
        },
        &mut w.rng,
    )
    .unwrap_err();
    // Alice's certificate expires at the same time as Bob's: hers is checked first.
    assert_eq!(err, SealError::SenderCertificateNotValid(too_late));
    let bob_seals = seal(
        &w.bob,
        &Outgoing {
            recipient: &bob_cert,
            message_id: MessageId::from_bytes([0; 16]),
            timestamp: NOW,
            content: &text("x"),
        },
        &mut w.rng,
    );
    assert!(bob_seals.is_ok());
    let short = Device::new(
        &IdentityKeyPair::generate(&mut w.rng),
        Address::parse("carol@three.example").unwrap(),
        DeviceKeyPair::generate(&mut w.rng),
        NOW,
        NOW,
    )
    .unwrap();
    let err = seal(
        &w.alice,
        &Outgoing {
            recipient: short.certificate(),
            message_id: MessageId::from_bytes([0; 16]),
            timestamp: NOW.saturating_add(1),
            content: &text("x"),
        },
        &mut w.rng,
    )
    .unwrap_err();
    assert_eq!(
        err,
        SealError::RecipientCertificateNotValid(NOW.saturating_add(1))
    );
    let huge = Content::Text(Text::plain("z".repeat(crate::limits::MAX_PLAINTEXT_LEN)));
    assert!(matches!(
        seal(
            &w.alice,
            &Outgoing {
                recipient: &bob_cert,
                message_id: MessageId::from_bytes([0; 16]),
                timestamp: NOW,
                content: &huge
            },
            &mut w.rng
        ),
        Err(SealError::Content(ContentError::TooLarge { .. }))
    ));
}

#[test]
fn largest_content_fits_the_envelope_limit() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let big = Content::Text(Text::plain(
        "z".repeat(crate::limits::MAX_PLAINTEXT_LEN - 16),
    ));
    let env = seal_to(&mut w, &bob_cert, &big, NOW);
    assert!(env.len() <= MAX_ENVELOPE_LEN);
    let mut replay = ReplayWindow::default();
    assert_eq!(
        open(env, &w.bob, &w.known_by_bob, &mut replay, NOW)
            .unwrap()
            .content,
        big
    );
}

#[test]
fn batch_matches_single_and_isolates_bad_envelopes() {
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let mut envs: Vec<Bytes> = (0..100)
        .map(|i| seal_to(&mut w, &bob_cert, &text(&format!("m{i}")), NOW))
        .collect();
    // A bad signature in the middle, a duplicate, garbage, and one for another device.
    let mut bad = envs[37].to_vec();
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    envs[37] = Bytes::from(bad);
    envs[80] = envs[10].clone();
    envs[81] = Bytes::from_static(b"garbage");
    let bob2_cert = w.bob2.certificate().clone();
    envs[82] = seal_to(&mut w, &bob2_cert, &text("not for bob 1"), NOW);

    let mut batch_window = ReplayWindow::default();
    let batch = open_batch(&envs, &w.bob, &w.known_by_bob, &mut batch_window, NOW);
    let mut single_window = ReplayWindow::default();
    let single: Vec<_> = envs
        .iter()
        .map(|e| open(e.clone(), &w.bob, &w.known_by_bob, &mut single_window, NOW))
        .collect();
    assert_eq!(batch, single);
    assert_eq!(batch[37].as_ref().unwrap_err(), &OpenError::BadSignature);
    assert_eq!(batch[80].as_ref().unwrap_err(), &OpenError::Replay);
    assert_eq!(batch[81].as_ref().unwrap_err(), &OpenError::Decode);
    assert_eq!(batch[82].as_ref().unwrap_err(), &OpenError::WrongRecipient);
    assert_eq!(batch.iter().filter(|r| r.is_ok()).count(), 96);
    assert_eq!(batch_window.len(), single_window.len());
}

#[test]
fn batch_refuses_small_order_r_even_if_equation_would_hold() {
    // A signature whose R is the identity point with S = 0 satisfies the cofactorless
    // equation only for a small-order key; certificates refuse those keys, and the
    // pre-check refuses such R. Either way the envelope is reported as a bad signature.
    let mut w = world();
    let bob_cert = w.bob.certificate().clone();
    let env = seal_to(&mut w, &bob_cert, &text("x"), NOW);
    let mut outer = wire::Envelope::decode(env).unwrap();
    let mut sig = [0u8; 64];
    sig[0] = 1; // R = identity (y = 1), S = 0
    outer.signature = Bytes::copy_from_slice(&sig);
    let forged = Bytes::from(outer.encode_to_vec());
    let mut replay = ReplayWindow::default();
    let r = open_batch(&[forged], &w.bob, &w.known_by_bob, &mut replay, NOW);
    assert_eq!(r[0].as_ref().unwrap_err(), &OpenError::BadSignature);
}

#[test]
fn error_codes_are_unique() {
    let errors = [
        OpenError::TooLarge {
            what: "envelope",
            len: 0,
            max: 0,
        },
        OpenError::Decode,
        OpenError::UnsupportedVersion(0),
        OpenError::InvalidField("x"),
        OpenError::UnsupportedPayloadKind(0),
        OpenError::UnsupportedContentType(0),
        OpenError::InvalidAddress {
            field: "sender",
            error: AddressError::Empty,
        },
        OpenError::UnknownSender,
        OpenError::SenderMismatch,
        OpenError::SenderCertificateNotValid,
        OpenError::BadSignature,
        OpenError::WrongRecipient,
        OpenError::NonContributory,
        OpenError::DecryptFailed,
        OpenError::Content(ContentError::Decode),
        OpenError::TooOld,
        OpenError::FromFuture,
        OpenError::Replay,
        OpenError::NeedsSession,
    ];
    let mut codes: Vec<&str> = errors.iter().map(OpenError::code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), errors.len());
}

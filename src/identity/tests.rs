use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

fn alice() -> (IdentityKeyPair, DeviceKeyPair, Address) {
    let mut r = rng(1);
    (
        IdentityKeyPair::generate(&mut r),
        DeviceKeyPair::generate(&mut r),
        Address::parse("alice@one.example").unwrap(),
    )
}

#[test]
fn certificate_round_trip() {
    let (id, dev, addr) = alice();
    let cert = DeviceCertificate::issue(&id, &dev, &addr, UnixMillis(10), UnixMillis(20)).unwrap();
    let again = DeviceCertificate::decode(cert.encoded().clone()).unwrap();
    assert_eq!(cert, again);
    assert_eq!(again.address(), &addr);
    assert_eq!(again.device_id(), dev.id());
    assert_eq!(again.identity_key(), &id.public());
    assert!(again.is_valid_at(UnixMillis(10)) && again.is_valid_at(UnixMillis(20)));
    assert!(!again.is_valid_at(UnixMillis(9)) && !again.is_valid_at(UnixMillis(21)));
}

#[test]
fn empty_validity_is_refused() {
    let (id, dev, addr) = alice();
    assert_eq!(
        DeviceCertificate::issue(&id, &dev, &addr, UnixMillis(21), UnixMillis(20)).unwrap_err(),
        CertificateError::InvalidValidity
    );
}

fn reencode(
    cert: &DeviceCertificate,
    f: impl FnOnce(&mut wire::DeviceCertificate, &mut wire::DeviceCertificateBody),
) -> Bytes {
    let mut outer = wire::DeviceCertificate::decode(cert.encoded().clone()).unwrap();
    let mut body = wire::DeviceCertificateBody::decode(outer.body.clone()).unwrap();
    f(&mut outer, &mut body);
    // prost re-encodes an unchanged body to the same bytes, so signatures made in `f`
    // over `outer.body` stay valid.
    outer.body = Bytes::from(body.encode_to_vec());
    Bytes::from(outer.encode_to_vec())
}

#[test]
fn tampering_is_detected_with_the_right_error() {
    let (id, dev, addr) = alice();
    let cert = DeviceCertificate::issue(&id, &dev, &addr, UnixMillis(10), UnixMillis(20)).unwrap();
    let mut r = rng(9);
    let other_dev = DeviceKeyPair::generate(&mut r);

    // Moving the certificate to another address breaks the identity signature.
    let moved = reencode(&cert, |_, b| b.address = "mallory@one.example".into());
    assert_eq!(
        DeviceCertificate::decode(moved).unwrap_err(),
        CertificateError::BadIdentitySignature
    );

    // Claiming a device key without the matching id.
    let swapped = reencode(&cert, |_, b| {
        b.device_signing_key = Bytes::copy_from_slice(other_dev.signing_public().as_bytes())
    });
    assert_eq!(
        DeviceCertificate::decode(swapped).unwrap_err(),
        CertificateError::DeviceIdMismatch
    );

    // Non-canonical address on the wire.
    let upper = reencode(&cert, |_, b| b.address = "Alice@one.example".into());
    assert!(matches!(
        DeviceCertificate::decode(upper).unwrap_err(),
        CertificateError::InvalidAddress(crate::address::AddressError::NotCanonical)
    ));

    let v2 = reencode(&cert, |_, b| b.version = 2);
    assert_eq!(
        DeviceCertificate::decode(v2).unwrap_err(),
        CertificateError::UnsupportedVersion(2)
    );

    let mut flipped = cert.encoded().to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1; // inside the device signature
    assert_eq!(
        DeviceCertificate::decode(Bytes::from(flipped)).unwrap_err(),
        CertificateError::BadDeviceSignature
    );

    assert_eq!(
        DeviceCertificate::decode(cert.encoded().slice(..cert.encoded().len() / 2)).unwrap_err(),
        CertificateError::Decode
    );
    let huge = Bytes::from(vec![0u8; MAX_CERTIFICATE_LEN + 1]);
    assert!(matches!(
        DeviceCertificate::decode(huge).unwrap_err(),
        CertificateError::TooLarge { .. }
    ));
}

#[test]
fn proof_of_possession_is_required() {
    // An identity that certifies someone else's device key cannot produce the device
    // signature: forge by re-signing the body with the identity key only.
    let (id, dev, addr) = alice();
    let cert = DeviceCertificate::issue(&id, &dev, &addr, UnixMillis(10), UnixMillis(20)).unwrap();
    let forged = reencode(&cert, |o, _| {
        let sig = crypto::sign(&id.0, Label::DeviceCertDeviceSignature, &[&o.body]);
        o.device_signature = Bytes::copy_from_slice(&sig.to_bytes());
    });
    assert_eq!(
        DeviceCertificate::decode(forged).unwrap_err(),
        CertificateError::BadDeviceSignature
    );
}

#[test]
fn device_from_parts_checks_keys() {
    let (id, dev, addr) = alice();
    let cert = DeviceCertificate::issue(&id, &dev, &addr, UnixMillis(0), UnixMillis(1)).unwrap();
    let other = DeviceKeyPair::generate(&mut rng(5));
    assert_eq!(
        Device::from_parts(other, cert.clone()).unwrap_err(),
        KeyMismatch
    );
    let (s, a) = dev.secret_bytes();
    let restored = DeviceKeyPair::from_secret_bytes(&s, &a);
    assert!(Device::from_parts(restored, cert).is_ok());
}

#[test]
fn debug_output_has_no_secrets() {
    let (id, dev, _) = alice();
    let seed = id.secret_bytes();
    let (s, a) = dev.secret_bytes();
    for text in [format!("{id:?}"), format!("{dev:?}")] {
        for secret in [seed.expose(), s.expose(), a.expose()] {
            let h = hex(secret);
            assert!(!text.contains(&h), "{text} leaks a secret");
        }
    }
    assert!(format!("{id:?}").starts_with("IdentityKeyPair { public: IdentityKey("));
}

#[test]
fn safety_numbers_match_on_both_sides_and_qr_verifies() {
    let mut r = rng(3);
    let a = IdentityKeyPair::generate(&mut r).public();
    let b = IdentityKeyPair::generate(&mut r).public();
    let aa = Address::parse("alice@one.example").unwrap();
    let ba = Address::parse("bob@two.example").unwrap();
    let from_a = SafetyNumber::new(&a, &aa, &b, &ba);
    let from_b = SafetyNumber::new(&b, &ba, &a, &aa);
    assert_eq!(from_a.digits(), from_b.digits());
    assert_eq!(from_a.digits().len(), 60);
    assert!(from_a.digits().bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(from_a.grouped().len(), 60 + 11);
    from_a.verify_scanned(&from_b.qr_payload()).unwrap();
    from_b.verify_scanned(&from_a.qr_payload()).unwrap();
    // The same key at another address has another fingerprint.
    let moved = Address::parse("alice@evil.example").unwrap();
    assert_ne!(a.fingerprint(&aa), a.fingerprint(&moved));
    let wrong = SafetyNumber::new(&b, &ba, &a, &moved);
    assert_eq!(
        from_a.verify_scanned(&wrong.qr_payload()),
        Err(FingerprintError::Mismatch)
    );
    assert_eq!(
        from_a.verify_scanned(b"\xff\xff"),
        Err(FingerprintError::Decode)
    );
}

#[test]
fn certificate_request_approved_is_the_issued_certificate() {
    let (id, dev, addr) = alice();
    let (t0, t1) = (UnixMillis(10), UnixMillis(20));
    let request = CertificateRequest::new(&id.public(), &dev, &addr, t0, t1).unwrap();
    // It travels as bytes between the user's devices.
    let request = CertificateRequest::decode(request.encoded().clone()).unwrap();
    assert_eq!(request.address(), &addr);
    assert_eq!(request.device_id(), dev.id());
    assert_eq!(request.identity_key(), &id.public());
    assert_eq!((request.not_before(), request.not_after()), (t0, t1));
    let approved = request.approve(&id).unwrap();
    let issued = DeviceCertificate::issue(&id, &dev, &addr, t0, t1).unwrap();
    assert_eq!(approved.encoded(), issued.encoded());
}

#[test]
fn certificate_request_refusals() {
    let (id, dev, addr) = alice();
    let other = IdentityKeyPair::generate(&mut rng(9));
    let request =
        CertificateRequest::new(&id.public(), &dev, &addr, UnixMillis(1), UnixMillis(2)).unwrap();
    // Only the identity key it names can approve it.
    assert_eq!(
        request.approve(&other).unwrap_err(),
        CertificateError::InvalidField("identity_key")
    );
    // A whole certificate is not a request, and a request is not a certificate.
    let cert = DeviceCertificate::issue(&id, &dev, &addr, UnixMillis(1), UnixMillis(2)).unwrap();
    assert_eq!(
        CertificateRequest::decode(cert.encoded().clone()).unwrap_err(),
        CertificateError::InvalidField("identity_signature")
    );
    assert_eq!(
        DeviceCertificate::decode(request.encoded().clone()).unwrap_err(),
        CertificateError::BadIdentitySignature
    );
    // Any altered byte is refused.
    let mut bytes = request.encoded().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(CertificateRequest::decode(Bytes::from(bytes)).is_err());
    assert!(matches!(
        CertificateRequest::new(&id.public(), &dev, &addr, UnixMillis(3), UnixMillis(2)),
        Err(CertificateError::InvalidValidity)
    ));
}

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::envelope::{self, Content, MessageId, OpenError, Outgoing, ReplayWindow, Text};
use crate::identity::{Device, DeviceKeyPair};

const NOW: UnixMillis = UnixMillis(1_750_000_000_000);
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

struct User {
    identity: IdentityKeyPair,
    address: Address,
    devices: Vec<Device>,
}

fn device(identity: &IdentityKeyPair, address: &Address, rng: &mut ChaCha20Rng) -> Device {
    Device::new(
        identity,
        address.clone(),
        DeviceKeyPair::generate(rng),
        NOW.saturating_sub(YEAR_MS),
        NOW.saturating_add(YEAR_MS),
    )
    .unwrap()
}

fn user(address: &str, seed: u8, devices: usize) -> User {
    let mut r = rng(seed);
    let identity = IdentityKeyPair::generate(&mut r);
    let address = Address::parse(address).unwrap();
    let devices = (0..devices)
        .map(|_| device(&identity, &address, &mut r))
        .collect();
    User {
        identity,
        address,
        devices,
    }
}

impl User {
    fn certs(&self, which: &[usize]) -> Vec<DeviceCertificate> {
        which
            .iter()
            .map(|i| self.devices[*i].certificate().clone())
            .collect()
    }

    fn list(&self, serial: u64, which: &[usize]) -> DeviceList {
        DeviceList::sign(
            &self.identity,
            &self.address,
            serial,
            NOW,
            &self.certs(which),
        )
        .unwrap()
    }

    fn id(&self, i: usize) -> DeviceId {
        self.devices[i].id()
    }
}

fn body_of(list: &DeviceList) -> wire::DeviceListBody {
    let outer = wire::DeviceList::decode(list.encoded().clone()).unwrap();
    wire::DeviceListBody::decode(outer.body).unwrap()
}

/// Encodes `body` and signs it with `identity`, as a dishonest or buggy signer would.
fn signed(identity: &IdentityKeyPair, body: &wire::DeviceListBody) -> Bytes {
    let body = body.encode_to_vec();
    let sig = crypto::sign(&identity.0, Label::DeviceList, &[&body]);
    Bytes::from(
        wire::DeviceList {
            body: Bytes::from(body),
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }
        .encode_to_vec(),
    )
}

fn err(bytes: Bytes) -> DeviceListError {
    DeviceList::decode(bytes).unwrap_err()
}

#[test]
fn round_trip() {
    let bob = user("bob@two.example", 2, 3);
    let list = bob.list(7, &[0, 2]);
    assert_eq!(list.address(), &bob.address);
    assert_eq!(list.identity_key(), &bob.identity.public());
    assert_eq!(list.serial(), 7);
    assert_eq!(list.issued(), NOW);
    assert_eq!(list.devices(), &bob.certs(&[0, 2])[..]);
    assert_eq!(
        list.device_ids().collect::<Vec<_>>(),
        vec![bob.id(0), bob.id(2)]
    );
    assert!(list.contains(bob.id(0)) && list.contains(bob.id(2)));
    assert!(!list.contains(bob.id(1)));
    assert_eq!(list.get(bob.id(2)), Some(bob.devices[2].certificate()));
    assert_eq!(list.get(bob.id(1)), None);

    let again = DeviceList::decode(list.encoded().clone()).unwrap();
    assert_eq!(again, list);
    let again = DeviceList::decode_for(list.encoded().clone(), &bob.address).unwrap();
    assert_eq!(again, list);
}

#[test]
fn a_full_list_fits_the_size_limit() {
    let bob = user("bob@two.example", 2, MAX_DEVICES_PER_USER);
    let all: Vec<usize> = (0..MAX_DEVICES_PER_USER).collect();
    let list = bob.list(1, &all);
    assert!(list.encoded().len() <= MAX_DEVICE_LIST_LEN);
}

#[test]
fn structural_errors() {
    let bob = user("bob@two.example", 2, 2);
    let list = bob.list(1, &[0, 1]);

    let e = err(Bytes::from(vec![0u8; MAX_DEVICE_LIST_LEN + 1]));
    assert_eq!(
        e,
        DeviceListError::TooLarge {
            len: MAX_DEVICE_LIST_LEN + 1,
            max: MAX_DEVICE_LIST_LEN
        }
    );
    assert_eq!(e.code(), "too_large");

    assert_eq!(err(Bytes::from_static(b"\xff\xff\xff")).code(), "decode");
    let garbage_body = wire::DeviceList {
        body: Bytes::from_static(b"\xff\xff\xff"),
        signature: Bytes::new(),
    };
    assert_eq!(
        err(Bytes::from(garbage_body.encode_to_vec())),
        DeviceListError::Decode
    );

    let mut body = body_of(&list);
    body.version = 2;
    let e = err(signed(&bob.identity, &body));
    assert_eq!(e, DeviceListError::UnsupportedVersion(2));
    assert_eq!(e.code(), "unsupported_version");

    let mut body = body_of(&list);
    body.address = "Bob@two.example".into();
    let e = err(signed(&bob.identity, &body));
    assert_eq!(
        e,
        DeviceListError::InvalidAddress(AddressError::NotCanonical)
    );
    assert_eq!(e.code(), "invalid_address");

    let mut body = body_of(&list);
    body.identity_key.truncate(31);
    let e = err(signed(&bob.identity, &body));
    assert_eq!(e, DeviceListError::InvalidField("identity_key"));
    assert_eq!(e.code(), "invalid_field");

    let mut body = body_of(&list);
    body.devices.clear();
    let e = err(signed(&bob.identity, &body));
    assert_eq!(e, DeviceListError::Empty);
    assert_eq!(e.code(), "empty");
    assert_eq!(
        DeviceList::sign(&bob.identity, &bob.address, 1, NOW, &[]).unwrap_err(),
        DeviceListError::Empty
    );

    let mut body = body_of(&list);
    body.devices[1] = Bytes::from_static(b"not a certificate\xff");
    let e = err(signed(&bob.identity, &body));
    assert_eq!(
        e,
        DeviceListError::InvalidCertificate {
            index: 1,
            error: CertificateError::Decode
        }
    );
    assert_eq!(e.code(), "invalid_certificate");
}

#[test]
fn too_many_devices() {
    let bob = user("bob@two.example", 2, MAX_DEVICES_PER_USER + 1);
    let all: Vec<usize> = (0..=MAX_DEVICES_PER_USER).collect();
    let certs = bob.certs(&all);
    let expected = DeviceListError::TooManyDevices {
        count: MAX_DEVICES_PER_USER + 1,
        max: MAX_DEVICES_PER_USER,
    };
    let e = DeviceList::sign(&bob.identity, &bob.address, 1, NOW, &certs).unwrap_err();
    assert_eq!(e, expected);
    assert_eq!(e.code(), "too_many_devices");

    let mut body = body_of(&bob.list(1, &[0]));
    body.devices = certs.iter().map(|c| c.encoded().clone()).collect();
    let bytes = signed(&bob.identity, &body);
    assert!(bytes.len() <= MAX_DEVICE_LIST_LEN);
    assert_eq!(err(bytes), expected);
}

#[test]
fn duplicate_device() {
    let bob = user("bob@two.example", 2, 2);
    let e =
        DeviceList::sign(&bob.identity, &bob.address, 1, NOW, &bob.certs(&[0, 1, 0])).unwrap_err();
    assert_eq!(e, DeviceListError::DuplicateDevice(bob.id(0)));
    assert_eq!(e.code(), "duplicate_device");

    // The same device key certified twice (different validity) is still one device.
    let mut r = rng(20);
    let keys = DeviceKeyPair::generate(&mut r);
    let a = DeviceCertificate::issue(&bob.identity, &keys, &bob.address, NOW, NOW).unwrap();
    let b = DeviceCertificate::issue(
        &bob.identity,
        &keys,
        &bob.address,
        NOW,
        NOW.saturating_add(1),
    )
    .unwrap();
    assert_eq!(
        DeviceList::sign(&bob.identity, &bob.address, 1, NOW, &[a, b]).unwrap_err(),
        DeviceListError::DuplicateDevice(keys.id())
    );
}

#[test]
fn bad_signature() {
    let bob = user("bob@two.example", 2, 2);
    let list = bob.list(1, &[0, 1]);

    let mut outer = wire::DeviceList::decode(list.encoded().clone()).unwrap();
    let mut sig = outer.signature.to_vec();
    sig[5] ^= 1;
    outer.signature = Bytes::from(sig);
    let e = err(Bytes::from(outer.encode_to_vec()));
    assert_eq!(e, DeviceListError::BadSignature);
    assert_eq!(e.code(), "bad_signature");

    let mut outer = wire::DeviceList::decode(list.encoded().clone()).unwrap();
    outer.signature.truncate(63);
    assert_eq!(
        err(Bytes::from(outer.encode_to_vec())),
        DeviceListError::BadSignature
    );

    // Signed by someone else's identity key while naming Bob's.
    let mallory = user("mallory@evil.example", 66, 0);
    assert_eq!(
        err(signed(&mallory.identity, &body_of(&list))),
        DeviceListError::BadSignature
    );

    // A device list signature is not a device certificate signature: same key, same
    // bytes, other label.
    let body = body_of(&list).encode_to_vec();
    let cert_sig = crypto::sign(
        &bob.identity.0,
        Label::DeviceCertIdentitySignature,
        &[&body],
    );
    let bytes = wire::DeviceList {
        body: Bytes::from(body),
        signature: Bytes::copy_from_slice(&cert_sig.to_bytes()),
    }
    .encode_to_vec();
    assert_eq!(err(Bytes::from(bytes)), DeviceListError::BadSignature);
}

#[test]
fn signature_is_checked_before_the_certificates() {
    // Unsigned input must not make the receiver verify up to 32 certificate signatures.
    let bob = user("bob@two.example", 2, 1);
    let mut body = body_of(&bob.list(1, &[0]));
    body.devices[0] = Bytes::from_static(b"\xff");
    let mut outer = wire::DeviceList::decode(signed(&bob.identity, &body)).unwrap();
    let mut sig = outer.signature.to_vec();
    sig[0] ^= 1;
    outer.signature = Bytes::from(sig);
    assert_eq!(
        err(Bytes::from(outer.encode_to_vec())),
        DeviceListError::BadSignature
    );
}

#[test]
fn a_provider_cannot_add_a_device() {
    let bob = user("bob@two.example", 2, 2);
    let list = bob.list(1, &[0]);
    // The provider certifies its own device for Bob's address under a key it made up.
    let mut r = rng(66);
    let fake_identity = IdentityKeyPair::generate(&mut r);
    let planted = device(&fake_identity, &bob.address, &mut r);

    // Appending it to Bob's signed body breaks Bob's signature.
    let mut outer = wire::DeviceList::decode(list.encoded().clone()).unwrap();
    let mut body = wire::DeviceListBody::decode(outer.body.clone()).unwrap();
    body.devices.push(planted.certificate().encoded().clone());
    outer.body = Bytes::from(body.encode_to_vec());
    assert_eq!(
        err(Bytes::from(outer.encode_to_vec())),
        DeviceListError::BadSignature
    );

    // Even a list that Bob's key signed refuses a certificate from another identity.
    let foreign = vec![
        bob.devices[0].certificate().clone(),
        planted.certificate().clone(),
    ];
    let e = DeviceList::sign(&bob.identity, &bob.address, 2, NOW, &foreign).unwrap_err();
    assert_eq!(e, DeviceListError::ForeignDevice(planted.id()));
    assert_eq!(e.code(), "foreign_device");
    let mut body = body_of(&list);
    body.devices.push(planted.certificate().encoded().clone());
    assert_eq!(
        err(signed(&bob.identity, &body)),
        DeviceListError::ForeignDevice(planted.id())
    );

    // Nor a certificate of Bob's identity for another address.
    let elsewhere = Address::parse("bob@three.example").unwrap();
    let moved = device(&bob.identity, &elsewhere, &mut r);
    let e = DeviceList::sign(
        &bob.identity,
        &bob.address,
        2,
        NOW,
        &[moved.certificate().clone()],
    )
    .unwrap_err();
    assert_eq!(e, DeviceListError::ForeignDevice(moved.id()));

    // A planted list signed by the fake identity is at most an identity change, which
    // the application sees (see `identity_change_is_an_event`).
}

#[test]
fn address_mismatch() {
    let bob = user("bob@two.example", 2, 1);
    let carol = user("carol@two.example", 3, 1);
    let e =
        DeviceList::decode_for(carol.list(1, &[0]).encoded().clone(), &bob.address).unwrap_err();
    assert_eq!(
        e,
        DeviceListError::AddressMismatch {
            expected: bob.address.clone(),
            found: carol.address.clone()
        }
    );
    assert_eq!(e.code(), "address_mismatch");
}

#[test]
fn first_list_is_trusted_on_first_use() {
    let bob = user("bob@two.example", 2, 2);
    let mut lists = DeviceLists::new();
    assert!(lists.is_empty());
    let events = lists.update(bob.list(1, &[0, 1])).unwrap();
    assert_eq!(
        events,
        vec![
            DeviceEvent::IdentityFirstSeen {
                address: bob.address.clone(),
                identity: bob.identity.public()
            },
            DeviceEvent::DeviceAdded {
                address: bob.address.clone(),
                device: bob.id(0)
            },
            DeviceEvent::DeviceAdded {
                address: bob.address.clone(),
                device: bob.id(1)
            },
        ]
    );
    assert_eq!(lists.len(), 1);
    assert_eq!(lists.get(&bob.address).unwrap().serial(), 1);
    assert_eq!(lists.iter().count(), 1);
}

#[test]
fn stale_and_replayed_lists_are_refused() {
    let bob = user("bob@two.example", 2, 3);
    let mut lists = DeviceLists::new();
    let old = bob.list(1, &[0, 1, 2]);
    lists.update(old.clone()).unwrap();
    lists.update(bob.list(5, &[0])).unwrap();

    // The provider replays the old list, which still listed devices 1 and 2.
    let e = lists.update(old).unwrap_err();
    assert_eq!(
        e,
        DeviceListError::Stale {
            serial: 1,
            current: 5
        }
    );
    assert_eq!(e.code(), "stale");
    // Same serial, other content: also refused.
    assert_eq!(
        lists.update(bob.list(5, &[0, 1])).unwrap_err(),
        DeviceListError::Stale {
            serial: 5,
            current: 5
        }
    );
    // Nothing changed.
    let current = lists.get(&bob.address).unwrap();
    assert_eq!(current.serial(), 5);
    assert_eq!(current.device_ids().collect::<Vec<_>>(), vec![bob.id(0)]);
}

#[test]
fn adding_and_removing_devices_are_events() {
    let bob = user("bob@two.example", 2, 4);
    let mut lists = DeviceLists::new();
    lists.update(bob.list(1, &[0, 1, 2])).unwrap();
    let events = lists.update(bob.list(2, &[3, 0, 2])).unwrap();
    assert_eq!(
        events,
        vec![
            DeviceEvent::DeviceRemoved {
                address: bob.address.clone(),
                device: bob.id(1)
            },
            DeviceEvent::DeviceAdded {
                address: bob.address.clone(),
                device: bob.id(3)
            },
        ]
    );

    // A renewed certificate for a listed device is no event, but is now the one held.
    let renewed = DeviceCertificate::issue(
        &bob.identity,
        bob.devices[0].keys(),
        &bob.address,
        NOW,
        NOW.saturating_add(2 * YEAR_MS),
    )
    .unwrap();
    let certs = vec![
        renewed.clone(),
        bob.devices[2].certificate().clone(),
        bob.devices[3].certificate().clone(),
    ];
    let list = DeviceList::sign(&bob.identity, &bob.address, 3, NOW, &certs).unwrap();
    assert_eq!(lists.update(list).unwrap(), vec![]);
    assert_eq!(
        lists.device_certificate(&bob.address, bob.id(0)),
        Some(&renewed)
    );
}

#[test]
fn identity_change_is_an_event() {
    let bob = user("bob@two.example", 2, 2);
    let mut lists = DeviceLists::new();
    lists.update(bob.list(9, &[0, 1])).unwrap();

    // Bob resets his identity: a new key, a new device, the serial starts over.
    let new_bob = user("bob@two.example", 12, 1);
    let events = lists.update(new_bob.list(1, &[0])).unwrap();
    assert_eq!(
        events,
        vec![
            DeviceEvent::IdentityChanged {
                address: bob.address.clone(),
                old: bob.identity.public(),
                new: new_bob.identity.public()
            },
            DeviceEvent::DeviceRemoved {
                address: bob.address.clone(),
                device: bob.id(0)
            },
            DeviceEvent::DeviceRemoved {
                address: bob.address.clone(),
                device: bob.id(1)
            },
            DeviceEvent::DeviceAdded {
                address: bob.address.clone(),
                device: new_bob.id(0)
            },
        ]
    );
    let current = lists.get(&bob.address).unwrap();
    assert_eq!(current.identity_key(), &new_bob.identity.public());
    // Now the new identity's serials count.
    assert_eq!(
        lists.update(new_bob.list(1, &[0])).unwrap_err().code(),
        "stale"
    );

    // Forgetting a contact makes the next list first-seen again.
    assert!(lists.remove(&bob.address).is_some());
    assert!(lists.get(&bob.address).is_none());
    let events = lists.update(bob.list(1, &[0])).unwrap();
    assert!(matches!(
        events.first(),
        Some(DeviceEvent::IdentityFirstSeen { .. })
    ));
}

fn seal(from: &Device, to: &Device, r: &mut ChaCha20Rng) -> Bytes {
    envelope::seal(
        from,
        &Outgoing {
            recipient: to.certificate(),
            message_id: MessageId::random(r),
            timestamp: NOW,
            content: &Content::Text(Text::plain("hi")),
        },
        r,
    )
    .unwrap()
}

#[test]
fn only_listed_devices_are_senders() {
    let alice = user("alice@one.example", 1, 1);
    let bob = user("bob@two.example", 2, 2);
    let mut r = rng(30);
    let mut replay = ReplayWindow::default();
    let mut lists = DeviceLists::new();
    lists.update(bob.list(1, &[0, 1])).unwrap();
    let me = &alice.devices[0];

    let env = seal(&bob.devices[1], me, &mut r);
    let opened = envelope::open(env, me, &lists, &mut replay, NOW).unwrap();
    assert_eq!(opened.sender_identity, bob.identity.public());

    // A device certified for Bob's address by a key the provider made up.
    let fake_identity = IdentityKeyPair::generate(&mut r);
    let planted = device(&fake_identity, &bob.address, &mut r);
    let env = seal(&planted, me, &mut r);
    assert_eq!(
        envelope::open(env, me, &lists, &mut replay, NOW).unwrap_err(),
        OpenError::UnknownSender
    );

    // Bob removes device 1: its envelopes no longer open.
    lists.update(bob.list(2, &[0])).unwrap();
    assert_eq!(lists.device_certificate(&bob.address, bob.id(1)), None);
    let env = seal(&bob.devices[1], me, &mut r);
    assert_eq!(
        envelope::open(env, me, &lists, &mut replay, NOW).unwrap_err(),
        OpenError::UnknownSender
    );
    let env = seal(&bob.devices[0], me, &mut r);
    assert!(envelope::open(env, me, &lists, &mut replay, NOW).is_ok());

    // Unknown users have no devices.
    let carol = user("carol@three.example", 3, 1);
    assert_eq!(lists.device_certificate(&carol.address, carol.id(0)), None);
}

fn ids(certs: &[&DeviceCertificate]) -> Vec<(Address, DeviceId)> {
    certs
        .iter()
        .map(|c| (c.address().clone(), c.device_id()))
        .collect()
}

#[test]
fn fan_out_reaches_their_devices_and_my_other_devices() {
    let alice = user("alice@one.example", 1, 3);
    let bob = user("bob@two.example", 2, 2);
    let own = alice.list(1, &[0, 1, 2]);
    let mut lists = DeviceLists::new();

    // No list for Bob yet: nothing to send to (rather than only to Alice's devices).
    assert!(
        lists
            .recipients_for(&own, alice.id(1), &bob.address)
            .is_none()
    );

    lists.update(bob.list(1, &[0, 1])).unwrap();
    let to_bob = lists
        .recipients_for(&own, alice.id(1), &bob.address)
        .unwrap();
    assert_eq!(
        ids(&to_bob),
        vec![
            (bob.address.clone(), bob.id(0)),
            (bob.address.clone(), bob.id(1)),
            (alice.address.clone(), alice.id(0)),
            (alice.address.clone(), alice.id(2)),
        ]
    );

    // To oneself: all own devices but this one, even if a (stale) list for the own
    // address is held.
    lists.update(alice.list(1, &[0])).unwrap();
    let to_self = lists
        .recipients_for(&own, alice.id(0), &alice.address)
        .unwrap();
    assert_eq!(
        ids(&to_self),
        vec![
            (alice.address.clone(), alice.id(1)),
            (alice.address.clone(), alice.id(2)),
        ]
    );

    // A single-device user writing to themselves has no one to send to.
    let solo = alice.list(2, &[0]);
    assert!(
        lists
            .recipients_for(&solo, alice.id(0), &alice.address)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn error_codes_are_unique() {
    use DeviceListError as E;
    let a = Address::parse("a@b.example").unwrap();
    let id = DeviceId([0; 16]);
    let all = [
        E::TooLarge { len: 0, max: 0 },
        E::Decode,
        E::UnsupportedVersion(0),
        E::InvalidAddress(AddressError::NotCanonical),
        E::InvalidField(""),
        E::TooManyDevices { count: 0, max: 0 },
        E::Empty,
        E::BadSignature,
        E::InvalidCertificate {
            index: 0,
            error: CertificateError::Decode,
        },
        E::ForeignDevice(id),
        E::DuplicateDevice(id),
        E::Stale {
            serial: 0,
            current: 0,
        },
        E::AddressMismatch {
            expected: a.clone(),
            found: a,
        },
    ];
    let codes: std::collections::BTreeSet<_> = all.iter().map(E::code).collect();
    assert_eq!(codes.len(), all.len());
}

#[test]
fn debug_shows_no_secrets() {
    let bob = user("bob@two.example", 2, 2);
    let list = bob.list(1, &[0, 1]);
    let mut lists = DeviceLists::new();
    let events = lists.update(list.clone()).unwrap();
    let text = format!("{list:?} {lists:?} {events:?}");

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut secrets = vec![hex(bob.identity.secret_bytes().expose())];
    for d in &bob.devices {
        let (s, a) = d.keys().secret_bytes();
        secrets.push(hex(s.expose()));
        secrets.push(hex(a.expose()));
    }
    for s in secrets {
        assert!(!text.contains(&s), "secret in Debug output: {text}");
    }
    // It does show what a developer needs.
    assert!(text.contains("bob@two.example"));
    assert!(text.contains(&bob.id(0).to_string()));
    assert!(text.contains("serial: 1"));
}

//! Property tests of the public envelope API.
//!
//! Case counts are kept modest: every seal and open does an X25519 and an Ed25519
//! operation, which costs milliseconds in the default (unoptimised) test profile.

// A test crate: its helpers (outside `#[test]` functions) panic on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::OnceLock;

use bytes::Bytes;
use ed25519_dalek::Signer;
use kogge::UnixMillis;
use kogge::address::Address;
use kogge::crypto::{self, Label};
use kogge::envelope::{
    self, Content, KnownDevices, MessageId, OpenError, Opened, Outgoing, ReplayWindow, Text,
    UnverifiedEnvelope,
};
use kogge::identity::{Device, DeviceKeyPair, IdentityKeyPair};
use kogge::limits::{DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_MESSAGE_AGE_MS};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
const DAY: u64 = 24 * 60 * 60 * 1000;
const HOUR: u64 = 60 * 60 * 1000;

/// How many distinct messages the delivery property draws from.
const POOL: usize = 8;

struct Fixture {
    alice: Device,
    alice2: Device,
    bob: Device,
    bob_knows: KnownDevices,
    /// A valid envelope from alice to bob, and what it carries.
    sealed: Bytes,
    content: Content,
    /// `POOL` distinct envelopes from alice's two devices to bob, with their content.
    pool: Vec<(Bytes, Content)>,
}

fn device(rng: &mut ChaCha20Rng, identity: &IdentityKeyPair, address: &str) -> Device {
    Device::new(
        identity,
        Address::parse(address).expect("address"),
        DeviceKeyPair::generate(rng),
        NOW.saturating_sub(40 * DAY),
        NOW.saturating_add(365 * DAY),
    )
    .expect("device")
}

fn seal(
    rng: &mut ChaCha20Rng,
    from: &Device,
    to: &Device,
    content: &Content,
    ts: UnixMillis,
) -> Bytes {
    envelope::seal(
        from,
        &Outgoing {
            recipient: to.certificate(),
            message_id: MessageId::random(rng),
            timestamp: ts,
            content,
        },
        rng,
    )
    .expect("seal")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = ChaCha20Rng::from_seed([0x50; 32]);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let bob_id = IdentityKeyPair::generate(&mut rng);
        let alice = device(&mut rng, &alice_id, "alice@one.example");
        let alice2 = device(&mut rng, &alice_id, "alice@one.example");
        let bob = device(&mut rng, &bob_id, "bob@two.example");
        let mut bob_knows = KnownDevices::new();
        bob_knows.insert(alice.certificate().clone());
        bob_knows.insert(alice2.certificate().clone());
        let content = Content::Text(Text::plain("the original"));
        let sealed = seal(&mut rng, &alice, &bob, &content, NOW);
        let pool = (0..POOL)
            .map(|i| {
                let from = if i % 2 == 0 { &alice } else { &alice2 };
                let content = Content::Text(Text::plain(format!("message {i}")));
                // Out of timestamp order on purpose: delivery order is independent of it.
                let ts = NOW.saturating_sub(((i * 5) % POOL) as u64 * HOUR);
                (seal(&mut rng, from, &bob, &content, ts), content)
            })
            .collect();
        Fixture {
            alice,
            alice2,
            bob,
            bob_knows,
            sealed,
            content,
            pool,
        }
    })
}

// ---------------------------------------------------------------------------------------
// The wire schema, mirrored to re-sign altered headers.

#[derive(Clone, PartialEq, prost::Message)]
struct WireEnvelope {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    header: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    ciphertext: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    signature: Vec<u8>,
}

fn resign(sender: &Device, header: Vec<u8>, ciphertext: Vec<u8>) -> Bytes {
    use prost::Message;
    let (seed, _) = sender.keys().secret_bytes();
    let key = ed25519_dalek::SigningKey::from_bytes(seed.expose());
    let input = crypto::framed(
        Label::EnvelopeSignature,
        &[&header, &crypto::sha256(&ciphertext)],
    );
    let signature = key.sign(&input).to_bytes().to_vec();
    Bytes::from(
        WireEnvelope {
            version: 1,
            header,
            ciphertext,
            signature,
        }
        .encode_to_vec(),
    )
}

// ---------------------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    /// Copies `len` bytes from one position over another.
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => any::<usize>().prop_map(Mutation::Delete),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<usize>(), 1usize..16)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match *m {
        Mutation::FlipBit(i, b) if len > 0 => bytes[i % len] ^= 1 << b,
        Mutation::SetByte(i, v) if len > 0 => bytes[i % len] = v,
        Mutation::Insert(i, v) => bytes.insert(i % (len + 1), v),
        Mutation::Delete(i) if len > 0 => {
            bytes.remove(i % len);
        }
        Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
        Mutation::Splice(from, to, n) if len > 0 => {
            let from = from % len;
            let to = to % len;
            let n = n.min(len - from).min(len - to);
            let chunk = bytes[from..from + n].to_vec();
            bytes[to..to + n].copy_from_slice(&chunk);
        }
        _ => {}
    }
}

/// A changed envelope may only open if it is the same message: the outer framing may
/// differ (unknown fields), the signed header and content may not.
fn assert_same_message(opened: &Opened, f: &Fixture) {
    assert_eq!(opened.content, f.content);
    let original = UnverifiedEnvelope::decode(f.sealed.clone()).expect("original decodes");
    assert_eq!(&opened.header, original.claimed_header());
}

// ---------------------------------------------------------------------------------------
// (a) Seal then open round-trips.

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn seal_open_round_trip(
        body in "\\PC{0,2000}",
        media_type in "[ -~]{0,40}",
        reply_to in proptest::option::of(any::<[u8; 16]>()),
        offset in -(DEFAULT_MAX_MESSAGE_AGE_MS as i64)..=(DEFAULT_MAX_CLOCK_SKEW_MS as i64),
        seed in any::<[u8; 32]>(),
        second_device in any::<bool>(),
    ) {
        let f = fixture();
        let mut rng = ChaCha20Rng::from_seed(seed);
        let from = if second_device { &f.alice2 } else { &f.alice };
        let content = Content::Text(Text {
            media_type,
            body,
            reply_to: reply_to.map(MessageId::from_bytes),
        });
        let ts = UnixMillis(NOW.0.checked_add_signed(offset).expect("in range"));
        let id = MessageId::random(&mut rng);
        let sealed = envelope::seal(
            from,
            &Outgoing { recipient: f.bob.certificate(), message_id: id, timestamp: ts, content: &content },
            &mut rng,
        )
        .expect("seal");
        let mut replay = ReplayWindow::default();
        let opened = envelope::open(sealed.clone(), &f.bob, &f.bob_knows, &mut replay, NOW)
            .expect("open");
        prop_assert_eq!(&opened.content, &content);
        prop_assert_eq!(opened.header.message_id, id);
        prop_assert_eq!(opened.header.timestamp, ts);
        prop_assert_eq!(opened.header.sender_device, from.id());
        prop_assert_eq!(replay.len(), 1);
        prop_assert_eq!(
            envelope::open(sealed, &f.bob, &f.bob_knows, &mut replay, NOW).err(),
            Some(OpenError::Replay)
        );
    }
}

// ---------------------------------------------------------------------------------------
// (b) Decoding never panics.

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_and_open_never_panic_on_arbitrary_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let f = fixture();
        let bytes = Bytes::from(data);
        let _ = UnverifiedEnvelope::decode(bytes.clone());
        let mut replay = ReplayWindow::default();
        let result = envelope::open(bytes, &f.bob, &f.bob_knows, &mut replay, NOW);
        prop_assert!(result.is_err());
        prop_assert_eq!(replay.len(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_envelopes_never_panic_and_never_open_as_something_else(
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let f = fixture();
        let mut bytes = f.sealed.to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let bytes = Bytes::from(bytes);
        let _ = UnverifiedEnvelope::decode(bytes.clone());
        let mut replay = ReplayWindow::default();
        match envelope::open(bytes.clone(), &f.bob, &f.bob_knows, &mut replay, NOW) {
            Ok(opened) => assert_same_message(&opened, f),
            Err(_) => prop_assert_eq!(replay.len(), 0),
        }
        let batch = envelope::open_batch(&[bytes], &f.bob, &f.bob_knows, &mut ReplayWindow::default(), NOW);
        prop_assert_eq!(batch.len(), 1);
    }

    /// The sender re-signs an altered header: it passes the signature check and reaches
    /// header validation and decryption, and still never opens, because the header is
    /// the AEAD's associated data.
    #[test]
    fn re_signed_altered_headers_never_open(
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        use prost::Message;
        let f = fixture();
        let env = WireEnvelope::decode(f.sealed.as_ref()).expect("decode");
        let mut header = env.header.clone();
        for m in &mutations {
            apply(&mut header, m);
        }
        let changed = header != env.header;
        let forged = resign(&f.alice, header, env.ciphertext);
        let mut replay = ReplayWindow::default();
        let result = envelope::open(forged, &f.bob, &f.bob_knows, &mut replay, NOW);
        if changed {
            prop_assert!(result.is_err(), "altered header opened: {:?}", result);
            prop_assert_eq!(replay.len(), 0);
        } else {
            assert_same_message(&result.expect("unchanged header opens"), f);
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c) Delivery under loss, duplication and reordering.

/// A delivery schedule over the pool: each message is delivered 0 (lost) to 3 times,
/// and the deliveries are shuffled.
fn schedule() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0usize..=3, POOL)
        .prop_map(|copies| {
            copies
                .iter()
                .enumerate()
                .flat_map(|(i, &k)| std::iter::repeat_n(i, k))
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn each_delivered_message_is_accepted_exactly_once(order in schedule()) {
        let f = fixture();
        let mut replay = ReplayWindow::default();
        let mut accepted = HashSet::new();
        let deliveries: Vec<Bytes> = order.iter().map(|&i| f.pool[i].0.clone()).collect();
        let mut results = Vec::with_capacity(order.len());
        for (&i, bytes) in order.iter().zip(&deliveries) {
            let result = envelope::open(bytes.clone(), &f.bob, &f.bob_knows, &mut replay, NOW);
            if accepted.insert(i) {
                let opened = result.as_ref().expect("first delivery opens");
                prop_assert_eq!(&opened.content, &f.pool[i].1);
            } else {
                prop_assert_eq!(result.as_ref().err(), Some(&OpenError::Replay));
            }
            results.push(result);
        }
        prop_assert_eq!(replay.len(), accepted.len());
        // The same schedule as one batch gives the same answers.
        let mut batch_replay = ReplayWindow::default();
        let batched = envelope::open_batch(&deliveries, &f.bob, &f.bob_knows, &mut batch_replay, NOW);
        prop_assert_eq!(batched, results);
        prop_assert_eq!(batch_replay.len(), accepted.len());
    }
}

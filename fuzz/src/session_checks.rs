//! The bodies of the session-layer fuzz targets, and the seeds of their corpora
//! (STYLE.md C12).
//!
//! This one file is compiled three ways, always by `#[path]`: into each session fuzz
//! target (`fuzz/fuzz_targets/{prekey_bundle_decode,device_list_update,session_receive,
//! state_restore}.rs`), into the seed generator `fuzz/examples/gen_session_corpus.rs`, and
//! into `tests/fuzz_corpus_session.rs`, which replays `fuzz/corpus/<target>/*` under
//! `cargo test`. It uses only the public `kogge` API plus `bytes`, `rand_chacha` and
//! `rand_core`.
//!
//! Every check must return normally for any input; a panic (a failed `assert!`
//! included) is a finding. The world (users, device lists, accounts, honest envelopes,
//! saved states) is built once per process in a [`LazyLock`]. `Account` is not `Clone`,
//! so every check that changes an account starts from one restored from a saved blob
//! (or reused, if an earlier check left it byte-identical to that blob).
//!
//! Regressions: `state_restore` found three bugs, each reachable from a state that
//! `Account::restore` accepted (fixed in commit d7c30b0 and just before it); each has a
//! reproducer in `fuzz/corpus/state_restore/seed-*-regression-*` and a test in
//! `tests/fuzz_corpus_session.rs`:
//!
//! 1. `PrekeyStore::replenish` (src/session/prekeys.rs) never returned once the prekey
//!    id counter `next_id` saturated at `u32::MAX` before the pool was full.
//! 2. `Account::encrypt` (src/session/account.rs, `session.send_seq += 1`) overflowed
//!    when a restored session's `send_seq` was `u64::MAX`.
//! 3. `Ratchet::commit` (src/session/ratchet.rs, `self.next_order += 1`) overflowed when
//!    a restored ratchet's `next_order` was `u64::MAX` and a receive stored a skipped
//!    key.

// A failed check must panic: that is how libFuzzer and the test report a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::LazyLock;

use bytes::Bytes;
use kogge::UnixMillis;
use kogge::address::Address;
use kogge::crypto::{self, Label, Secret};
use kogge::envelope::{self, Content, MessageId, Outgoing, Text, UnverifiedEnvelope};
use kogge::identity::{
    Device, DeviceEvent, DeviceKeyPair, DeviceList, DeviceListError, DeviceLists, IdentityKeyPair,
};
use kogge::limits::{
    MAX_DEVICE_LIST_LEN, MAX_DEVICES_PER_USER, MAX_ONE_TIME_PREKEYS, MAX_PREKEY_BUNDLE_LEN,
};
use kogge::session::{
    Account, PrekeyBundle, PrekeyKind, Received, STATE_MAGIC, SessionError, SignedPrekey,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{SeedableRng, TryCryptoRng, TryRng};

/// The check of one target: returns normally for every input, or panics on a finding.
pub type Check = fn(&[u8]);

/// Every session target: its name (`fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/`)
/// and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("prekey_bundle_decode", prekey_bundle_decode),
    ("device_list_update", device_list_update),
    ("session_receive", session_receive),
    ("state_restore", state_restore),
];

/// The clock of the world and of every receive (unless an input moves it).
pub const NOW: UnixMillis = UnixMillis(1_760_000_000_000);
const HOUR: u64 = 3600 * 1000;
const YEAR: u64 = 365 * 24 * HOUR;

/// Most byte edits applied to one envelope.
const MAX_EDITS: usize = 16;
/// Most envelopes delivered in one `session_receive` sequence or batch.
const MAX_OPS: usize = 8;
/// One-time prekeys kept in the receiver's base state (the rest are cut out of the
/// saved plaintext so that restoring it is cheap).
const BASE_ONE_TIME_PREKEYS: usize = 4;

// ---------------------------------------------------------------------------------------
// Deterministic randomness and storage.
// ---------------------------------------------------------------------------------------

/// A scripted RNG that returns the byte `self.0` forever. It makes `Account::save`
/// deterministic (the nonce is its only randomness), so two saves of one state are
/// byte-identical and "nothing changed" can be checked by comparing blobs.
#[derive(Clone, Copy, Debug)]
pub struct ScriptedRng(pub u8);

impl TryRng for ScriptedRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(u32::from_le_bytes([self.0; 4]))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(u64::from_le_bytes([self.0; 8]))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        dst.fill(self.0);
        Ok(())
    }
}

impl TryCryptoRng for ScriptedRng {}

fn seeded(n: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([n; 32])
}

/// The RNG every receive in the world and in the checks starts from. Fresh per account,
/// so a ratchet step draws the same new key pair however the account got there.
fn receive_rng() -> ChaCha20Rng {
    seeded(0xd0)
}

/// The application's storage key of every saved state.
pub fn storage_key() -> Secret<32> {
    Secret::new([0x5a; 32])
}

const NONCE_LEN: usize = 12;

/// `Account::save` with the fixed key and a fixed nonce (all 0x00): deterministic.
pub fn save(account: &Account) -> Vec<u8> {
    account.save(&storage_key(), &mut ScriptedRng(0))
}

fn state_aad() -> Vec<u8> {
    crypto::framed(Label::StateEncryption, &[&STATE_MAGIC])
}

/// Seals a state plaintext exactly as `Account::save` does (SPEC.md 15.8, the format on
/// `Account::save`): magic ‖ nonce ‖ ChaCha20-Poly1305(key, nonce, aad, plaintext), with
/// aad = framed("kogge/v1/aad/state", magic) and a fixed nonce.
pub fn seal_plaintext(plaintext: &[u8]) -> Vec<u8> {
    let nonce = [0x11; NONCE_LEN];
    let mut blob = STATE_MAGIC.to_vec();
    blob.extend_from_slice(&nonce);
    let sealed = crypto::aead_seal(&storage_key(), &nonce, &state_aad(), plaintext)
        .expect("ChaCha20-Poly1305 seals");
    blob.extend_from_slice(&sealed);
    blob
}

/// The plaintext of a blob sealed under [`storage_key`], if it opens.
pub fn open_blob(blob: &[u8]) -> Option<Vec<u8>> {
    let rest = blob.strip_prefix(&STATE_MAGIC[..])?;
    let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
    crypto::aead_open(&storage_key(), nonce, &state_aad(), sealed)
        .ok()
        .map(|p| p.to_vec())
}

fn restore(blob: &[u8]) -> Account {
    Account::restore(blob, &storage_key()).expect("a saved state restores")
}

thread_local! {
    /// Restored accounts that still save to their blob, by blob: restoring costs
    /// milliseconds, and most inputs change nothing.
    static UNCHANGED: RefCell<Vec<(&'static [u8], Account)>> = const { RefCell::new(Vec::new()) };
}

/// An account in exactly the state saved in `blob` (a blob of the world): restored, or
/// reused from an earlier check that left it byte-identical.
fn fresh(blob: &'static [u8]) -> Account {
    let cached = UNCHANGED.with(|c| {
        let mut c = c.borrow_mut();
        let i = c.iter().position(|(b, _)| std::ptr::eq(*b, blob))?;
        Some(c.swap_remove(i).1)
    });
    cached.unwrap_or_else(|| restore(blob))
}

/// Keeps `account` for reuse by [`fresh`] if it still saves to exactly `blob`.
fn recycle(blob: &'static [u8], account: Account) {
    if save(&account) == blob {
        UNCHANGED.with(|c| c.borrow_mut().push((blob, account)));
    }
}

// ---------------------------------------------------------------------------------------
// A minimal protobuf reader/writer (varint and length-delimited fields only), to edit
// saved state plaintexts (kogge.v1.AccountState) and read a few of their fields.
// ---------------------------------------------------------------------------------------

/// A protobuf field value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

/// The fields of a message, in order.
type Fields = Vec<(u32, Field)>;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode_fields(fields: &[(u32, Field)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, value) in fields {
        let number = u64::from(*number);
        match value {
            Field::Varint(v) => {
                put_varint(&mut out, number << 3);
                put_varint(&mut out, *v);
            }
            Field::Bytes(b) => {
                put_varint(&mut out, (number << 3) | 2);
                put_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The top-level fields of a protobuf message, or `None` if it is not one this reader
/// understands (only varint and length-delimited fields).
fn parse_fields(mut input: &[u8]) -> Option<Fields> {
    let mut fields = Vec::new();
    while !input.is_empty() {
        let key = get_varint(&mut input)?;
        let number = u32::try_from(key >> 3).ok()?;
        let value = match key & 7 {
            0 => Field::Varint(get_varint(&mut input)?),
            2 => {
                let len = usize::try_from(get_varint(&mut input)?).ok()?;
                if len > input.len() {
                    return None;
                }
                let (value, rest) = input.split_at(len);
                input = rest;
                Field::Bytes(value.to_vec())
            }
            _ => return None,
        };
        fields.push((number, value));
    }
    Some(fields)
}

/// Rewrites the `AccountState.prekeys` (field 3) of a state plaintext with `f`.
fn map_prekeys(plaintext: &[u8], f: &dyn Fn(Fields) -> Fields) -> Option<Vec<u8>> {
    let mut top = parse_fields(plaintext)?;
    for (number, value) in &mut top {
        if let (3, Field::Bytes(prekeys)) = (*number, &mut *value) {
            *prekeys = encode_fields(&f(parse_fields(prekeys)?));
        }
    }
    Some(encode_fields(&top))
}

/// Keeps the first `keep` of `AccountState.prekeys.one_time_prekeys` (field 3 → 3).
fn trim_one_time_prekeys(plaintext: &[u8], keep: usize) -> Option<Vec<u8>> {
    map_prekeys(plaintext, &|fields| {
        let mut kept = 0;
        fields
            .into_iter()
            .filter(|(n, _)| {
                if *n != 3 {
                    return true;
                }
                kept += 1;
                kept <= keep
            })
            .collect()
    })
}

/// Sets `AccountState.prekeys.next_id` (field 3 → 6) of a state plaintext.
pub fn set_prekey_counter(plaintext: &[u8], counter: u32) -> Option<Vec<u8>> {
    map_prekeys(plaintext, &|fields| {
        let mut fields: Fields = fields.into_iter().filter(|(n, _)| *n != 6).collect();
        fields.push((6, Field::Varint(u64::from(counter))));
        fields
    })
}

/// Rewrites every `SessionState` of a state plaintext with `f`.
fn map_session_states(plaintext: &[u8], f: &dyn Fn(&mut Fields)) -> Option<Vec<u8>> {
    let mut top = parse_fields(plaintext)?;
    for (number, value) in &mut top {
        if let (6, Field::Bytes(peer)) = (*number, &mut *value) {
            let mut fields = parse_fields(peer)?;
            for (n, v) in &mut fields {
                if let (3, Field::Bytes(session)) = (*n, &mut *v) {
                    let mut s = parse_fields(session)?;
                    f(&mut s);
                    *session = encode_fields(&s);
                }
            }
            *peer = encode_fields(&fields);
        }
    }
    Some(encode_fields(&top))
}

/// Sets varint field `field` of every `SessionState` (or, with `in_ratchet`, of its
/// `RatchetState`, field 1) of a state plaintext to `value`.
pub fn set_session_varint(
    plaintext: &[u8],
    in_ratchet: bool,
    field: u32,
    value: u64,
) -> Option<Vec<u8>> {
    let set = |fields: &mut Fields| {
        fields.retain(|(n, _)| *n != field);
        fields.push((field, Field::Varint(value)));
    };
    map_session_states(plaintext, &|s| {
        if in_ratchet {
            for (n, v) in s.iter_mut() {
                if let (1, Field::Bytes(ratchet)) = (*n, &mut *v)
                    && let Some(mut r) = parse_fields(ratchet)
                {
                    set(&mut r);
                    *ratchet = encode_fields(&r);
                }
            }
        } else {
            set(s);
        }
    })
}

// ---------------------------------------------------------------------------------------
// The world.
// ---------------------------------------------------------------------------------------

/// One honestly sealed envelope to Bob's device, and what Bob's base state makes of it.
pub struct Honest {
    /// What it is (used in seed names and messages).
    pub name: &'static str,
    /// The encoded envelope.
    pub bytes: Bytes,
    /// Its signed header bytes.
    pub header: Bytes,
    /// Its ciphertext.
    pub ciphertext: Bytes,
    /// Its signature.
    pub signature: [u8; 64],
    /// Its sender (as claimed in the header).
    pub sender: Address,
    /// Its message id.
    pub message_id: MessageId,
    /// Its timestamp.
    pub timestamp: UnixMillis,
    /// Whether it is a session message (else one-shot).
    pub session: bool,
    /// The content that was sealed.
    pub content: Content,
    /// `decrypt(bytes, NOW, receive_rng())` on Bob's base state.
    pub expected: Result<Received, SessionError>,
}

/// Everything the session targets need, built once.
pub struct SessionWorld {
    /// Bob's base state: a session with Alice (who sent a1..a5; Bob received a1 and a3
    /// and replied), the device lists of Alice, Carol and Dave, four one-time prekeys.
    pub bob_blob: Vec<u8>,
    /// Alice's state before she started any session (she knows Bob's list).
    pub alice_fresh_blob: Vec<u8>,
    /// Real saved states (for seeds).
    pub blobs: Vec<(&'static str, Vec<u8>)>,
    /// The honest envelopes, in [`HONEST_NAMES`] order.
    pub honest: Vec<Honest>,
    /// Real encoded prekey bundles.
    pub bundles: Vec<(&'static str, Bytes)>,
    /// Real device lists (the first four are those of Alice, Bob, Carol, Dave).
    pub lists: Vec<(&'static str, DeviceList)>,
    /// A contact tracker holding Alice's and Carol's lists (serial 1).
    pub tracker: DeviceLists,
    /// Bob's own list (one device).
    pub bob_list: DeviceList,
}

/// Names of the honest envelopes, in order.
pub const HONEST_NAMES: &[&str] = &[
    "alice-a2-skipped-key",
    "alice-a4-new-dh-chain",
    "alice-a5-new-dh-chain-gap",
    "carol-c1-setup-one-time-prekey",
    "carol-c2-setup-one-time-prekey-n1",
    "dave-d1-setup-no-one-time-prekey",
    "alice-one-shot",
    "alice-a1-already-received",
    "eve-unknown-sender",
    "bob-r1-to-alice",
];

struct Party {
    identity: IdentityKeyPair,
    address: Address,
    list: DeviceList,
    account: Account,
}

fn party(n: u8, address: &str, one_time_prekeys: bool) -> Party {
    let mut rng = seeded(n);
    let identity = IdentityKeyPair::generate(&mut rng);
    let address = Address::parse(address).expect("fixed address parses");
    let device = Device::new(
        &identity,
        address.clone(),
        DeviceKeyPair::generate(&mut rng),
        UnixMillis(NOW.0 - YEAR),
        UnixMillis(NOW.0 + YEAR),
    )
    .expect("certificate issues");
    let list = DeviceList::sign(
        &identity,
        &address,
        1,
        NOW,
        std::slice::from_ref(device.certificate()),
    )
    .expect("list signs");
    let mut account = Account::new(device, list.clone(), NOW, &mut rng).expect("account");
    if one_time_prekeys {
        account.replenish_prekeys(NOW, &mut rng);
    }
    Party {
        identity,
        address,
        list,
        account,
    }
}

fn text(s: &str) -> Content {
    Content::Text(Text::plain(s))
}

/// Bundle of `of` with its `k`-th published one-time prekey (or none), through the wire.
fn bundle(of: &Account, k: Option<usize>) -> PrekeyBundle {
    let otk = k.map(|k| of.prekeys().published().one_time_prekeys[k].id());
    let b = of.prekey_bundle(otk).expect("own bundle");
    PrekeyBundle::decode(b.encode()).expect("own bundle decodes")
}

/// Sends `body` from `from` to `to` and returns the copy for `for_device`'s account.
fn send(from: &mut Account, to: &Address, for_device: &Account, body: &str, n: u8) -> Bytes {
    let sent = from
        .encrypt(to, &text(body), NOW, &mut seeded(n))
        .expect("honest encrypt");
    sent.envelopes
        .iter()
        .find(|e| e.device == for_device.device().id())
        .expect("a copy for the device")
        .envelope
        .clone()
}

fn build_world() -> SessionWorld {
    let mut alice = party(1, "alice@one.example", false);
    let mut bob = party(2, "bob@two.example", true);
    let mut carol = party(3, "carol@three.example", false);
    let mut dave = party(4, "dave@four.example", false);
    let eve = party(5, "eve@five.example", false);

    for p in [&mut alice, &mut carol, &mut dave] {
        p.account
            .update_device_list(bob.list.clone())
            .expect("bob's list");
    }
    for l in [&alice.list, &carol.list, &dave.list] {
        bob.account
            .update_device_list(l.clone())
            .expect("contact list");
    }
    let alice_fresh_blob = save(&alice.account);
    let bob_fresh_blob = save(&bob.account);

    let mut blobs = Vec::new();
    let mut bundles = vec![
        ("bob-one-time", bundle(&bob.account, Some(0)).encode()),
        ("bob-no-one-time", bundle(&bob.account, None).encode()),
        ("alice-no-one-time", bundle(&alice.account, None).encode()),
    ];

    // Alice → Bob: a1, a2, a3 in chain A1 (with setup and a one-time prekey).
    let b = bundle(&bob.account, Some(0));
    alice
        .account
        .add_bundle(&b, NOW, &mut seeded(10))
        .expect("alice starts a session");
    let bob_addr = bob.address.clone();
    let alice_addr = alice.address.clone();
    let a1 = send(&mut alice.account, &bob_addr, &bob.account, "a1", 11);
    let a2 = send(&mut alice.account, &bob_addr, &bob.account, "a2", 12);
    let a3 = send(
        &mut alice.account,
        &bob_addr,
        &bob.account,
        "a3: ünïcødé 🦀",
        13,
    );
    blobs.push(("alice-awaiting-reply", save(&alice.account)));
    // Bob gets a1 and a3 (a2's key is kept as skipped), replies.
    let mut rng = receive_rng();
    bob.account
        .decrypt(a1.clone(), NOW, &mut rng)
        .expect("bob gets a1");
    bob.account.decrypt(a3, NOW, &mut rng).expect("bob gets a3");
    let r1 = send(&mut bob.account, &alice_addr, &alice.account, "r1", 14);
    alice
        .account
        .decrypt(r1.clone(), NOW, &mut seeded(15))
        .expect("alice gets r1");
    // Alice → Bob in a new DH chain A2: a4 (n = 0), a5 (n = 1).
    let a4 = send(&mut alice.account, &bob_addr, &bob.account, "a4", 16);
    let a5_body = "a5 ".repeat(40);
    let a5 = send(&mut alice.account, &bob_addr, &bob.account, &a5_body, 17);
    blobs.push(("alice-after-reply", save(&alice.account)));

    // Carol → Bob with Bob's next one-time prekey; Dave → Bob without one.
    let b = bundle(&bob.account, Some(0));
    bundles.push(("bob-one-time-later", b.encode()));
    carol
        .account
        .add_bundle(&b, NOW, &mut seeded(20))
        .expect("carol starts a session");
    let c1 = send(&mut carol.account, &bob_addr, &bob.account, "c1", 21);
    let c2 = send(&mut carol.account, &bob_addr, &bob.account, "c2", 22);
    blobs.push(("carol-awaiting-reply", save(&carol.account)));
    dave.account
        .add_bundle(&bundle(&bob.account, None), NOW, &mut seeded(23))
        .expect("dave starts a session");
    let d1 = send(&mut dave.account, &bob_addr, &bob.account, "d1", 24);

    // One-shot envelopes: from Alice, and from Eve, whom Bob does not know.
    let one_shot = |from: &Account, body: &str, n: u8| {
        let content = text(body);
        let msg = Outgoing {
            recipient: bob.account.device().certificate(),
            message_id: MessageId::from_bytes([n; 16]),
            timestamp: NOW,
            content: &content,
        };
        envelope::seal(from.device(), &msg, &mut seeded(n)).expect("one-shot seals")
    };
    let o1 = one_shot(&alice.account, "one-shot from alice", 30);
    let e1 = one_shot(&eve.account, "from eve", 31);

    // Bob's base state, with the one-time pool cut down.
    let full = open_blob(&save(&bob.account)).expect("own blob opens");
    let trimmed =
        trim_one_time_prekeys(&full, BASE_ONE_TIME_PREKEYS).expect("state plaintext parses");
    let bob_blob = save(&restore(&seal_plaintext(&trimmed)));
    blobs.push(("bob-base", bob_blob.clone()));
    let fresh_plaintext = open_blob(&bob_fresh_blob).expect("own blob opens");
    let fresh_plaintext = trim_one_time_prekeys(&fresh_plaintext, 2).expect("state parses");
    blobs.push((
        "bob-fresh",
        save(&restore(&seal_plaintext(&fresh_plaintext))),
    ));
    blobs.push(("alice-fresh", alice_fresh_blob.clone()));
    blobs.push(("dave-awaiting-reply", save(&dave.account)));

    let specs: Vec<(Bytes, Content)> = vec![
        (a2, text("a2")),
        (a4, text("a4")),
        (a5, text(&a5_body)),
        (c1, text("c1")),
        (c2, text("c2")),
        (d1, text("d1")),
        (o1, text("one-shot from alice")),
        (a1, text("a1")),
        (e1, text("from eve")),
        (r1, text("r1")),
    ];
    assert_eq!(specs.len(), HONEST_NAMES.len());
    let honest = specs
        .into_iter()
        .zip(HONEST_NAMES)
        .map(|((bytes, content), name)| {
            let env = UnverifiedEnvelope::decode(bytes.clone()).expect("honest envelope decodes");
            let h = env.claimed_header();
            let expected = restore(&bob_blob).decrypt(bytes.clone(), NOW, &mut receive_rng());
            Honest {
                name,
                header: env.header_bytes().clone(),
                ciphertext: env.ciphertext().clone(),
                signature: env.signature().to_bytes(),
                sender: h.sender.clone(),
                message_id: h.message_id,
                timestamp: h.timestamp,
                session: matches!(h.payload, envelope::PayloadHeader::Session(_)),
                content,
                expected,
                bytes,
            }
        })
        .collect();

    // Device lists: Alice's with a second device (serial 2), with only that device
    // (serial 3), under a new identity key (serial 1); Carol's re-signed, same serial.
    let second = Device::new(
        &alice.identity,
        alice.address.clone(),
        DeviceKeyPair::generate(&mut seeded(40)),
        UnixMillis(NOW.0 - YEAR),
        UnixMillis(NOW.0 + YEAR),
    )
    .expect("certificate issues");
    let alice_v2 = DeviceList::sign(
        &alice.identity,
        &alice.address,
        2,
        NOW,
        &[
            alice.list.devices()[0].clone(),
            second.certificate().clone(),
        ],
    )
    .expect("list signs");
    let alice_only_second = DeviceList::sign(
        &alice.identity,
        &alice.address,
        3,
        NOW,
        std::slice::from_ref(second.certificate()),
    )
    .expect("list signs");
    let new_identity = IdentityKeyPair::generate(&mut seeded(41));
    let new_device = Device::new(
        &new_identity,
        alice.address.clone(),
        DeviceKeyPair::generate(&mut seeded(42)),
        UnixMillis(NOW.0 - YEAR),
        UnixMillis(NOW.0 + YEAR),
    )
    .expect("certificate issues");
    let alice_new_identity = DeviceList::sign(
        &new_identity,
        &alice.address,
        1,
        NOW,
        std::slice::from_ref(new_device.certificate()),
    )
    .expect("list signs");
    let carol_same_serial = DeviceList::sign(
        &carol.identity,
        &carol.address,
        1,
        UnixMillis(NOW.0 + 1),
        carol.list.devices(),
    )
    .expect("list signs");
    let mut tracker = DeviceLists::new();
    tracker.update(alice.list.clone()).expect("first list");
    tracker.update(carol.list.clone()).expect("first list");
    let lists = vec![
        ("alice", alice.list.clone()),
        ("bob", bob.list.clone()),
        ("carol", carol.list.clone()),
        ("dave", dave.list.clone()),
        ("alice-v2-two-devices", alice_v2),
        ("alice-v3-only-second", alice_only_second),
        ("alice-new-identity", alice_new_identity),
        ("carol-same-serial", carol_same_serial),
        ("eve", eve.list.clone()),
    ];
    bundles.push(("carol-no-one-time", bundle(&carol.account, None).encode()));

    SessionWorld {
        bob_blob,
        alice_fresh_blob,
        blobs,
        honest,
        bundles,
        lists,
        tracker,
        bob_list: bob.list,
    }
}

/// The world, built on first use.
pub fn world() -> &'static SessionWorld {
    static WORLD: LazyLock<SessionWorld> = LazyLock::new(build_world);
    &WORLD
}

// ---------------------------------------------------------------------------------------
// Structured inputs.
// ---------------------------------------------------------------------------------------

/// Applies byte edits `[op, pos_hi, pos_lo, value]*` (at most [`MAX_EDITS`]): op % 4 is
/// 0 xor `value` into the byte at pos, 1 insert `value` at pos, 2 delete the byte at
/// pos, 3 truncate at pos. Positions are taken modulo `len + 1`.
fn apply_edits(base: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for e in edits.chunks_exact(4).take(MAX_EDITS) {
        let pos = usize::from(u16::from_be_bytes([e[1], e[2]])) % (out.len() + 1);
        let value = e[3];
        match e[0] % 4 {
            0 => {
                if let Some(b) = out.get_mut(pos) {
                    *b ^= value;
                }
            }
            1 => out.insert(pos, value),
            2 => {
                if pos < out.len() {
                    out.remove(pos);
                }
            }
            _ => out.truncate(pos),
        }
    }
    out
}

/// Honest envelope `index % n` after `edits`.
fn edited(index: u8, edits: &[u8]) -> Bytes {
    let w = world();
    let h = &w.honest[usize::from(index) % w.honest.len()];
    Bytes::from(apply_edits(&h.bytes, edits))
}

/// The clock of one delivery: `NOW` moved by `dt` (as i8) times 6 hours (±32 days).
fn clock(dt: u8) -> UnixMillis {
    UnixMillis(
        NOW.0
            .saturating_add_signed(i64::from(dt as i8) * 6 * HOUR as i64),
    )
}

/// Splits `[index, dt, n_edits, edits[4 * n_edits]]*` into at most [`MAX_OPS`]
/// deliveries.
fn deliveries(mut rest: &[u8]) -> Vec<(Bytes, UnixMillis)> {
    let mut out = Vec::new();
    while out.len() < MAX_OPS {
        let [index, dt, n, tail @ ..] = rest else {
            break;
        };
        let len = (4 * (usize::from(*n) % (MAX_EDITS + 1))).min(tail.len());
        let (edits, tail) = tail.split_at(len);
        rest = tail;
        out.push((edited(*index, edits), clock(*dt)));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Receive invariants.
// ---------------------------------------------------------------------------------------

/// An envelope that decrypted: its signed parts and signature are exactly those of an
/// honest envelope, and what came out is what was sealed. Returns that envelope's index.
fn check_received_is_honest(bytes: &Bytes, r: &Received) -> usize {
    let w = world();
    let env = UnverifiedEnvelope::decode(bytes.clone()).expect("a decrypted envelope decodes");
    let index = w
        .honest
        .iter()
        .position(|h| h.header == env.header_bytes() && h.ciphertext == env.ciphertext())
        .unwrap_or_else(|| panic!("an envelope decrypted that no honest party sealed: {r:?}"));
    let h = &w.honest[index];
    assert_eq!(
        env.signature().to_bytes(),
        h.signature,
        "a second valid signature"
    );
    assert_eq!(
        r.content, h.content,
        "{}: decrypted to other content",
        h.name
    );
    assert_eq!(r.sender, h.sender, "{}", h.name);
    assert_eq!(r.message_id, h.message_id, "{}", h.name);
    assert_eq!(r.timestamp, h.timestamp, "{}", h.name);
    assert_eq!(r.sequence.is_some(), h.session, "{}", h.name);
    assert!(
        r.missing.iter().all(|m| r.sequence.is_some_and(|s| *m < s)),
        "{}: missing numbers not below the sequence number",
        h.name
    );
    index
}

/// Decrypts `bytes` on `account` and checks: an `Ok` is honest and not accepted before
/// (`accepted`); an `Err` leaves the saved state byte-identical. With `again`, an
/// accepted envelope is delivered a second time and must be refused without change.
fn deliver(
    account: &mut Account,
    bytes: Bytes,
    now: UnixMillis,
    rng: &mut ChaCha20Rng,
    accepted: &mut Vec<usize>,
    again: bool,
) -> Result<Received, SessionError> {
    let before = save(account);
    let result = account.decrypt(bytes.clone(), now, rng);
    match &result {
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            assert!(
                save(account) == before,
                "a failed decrypt ({}) changed the account",
                e.code()
            );
        }
        Ok(r) => {
            let index = check_received_is_honest(&bytes, r);
            assert!(
                !accepted.contains(&index),
                "{} was accepted twice",
                world().honest[index].name
            );
            accepted.push(index);
            if again {
                let after = save(account);
                let second = account.decrypt(bytes, now, rng);
                assert!(
                    second.is_err(),
                    "{} decrypted twice in a row",
                    world().honest[index].name
                );
                assert!(
                    save(account) == after,
                    "a refused replay changed the account"
                );
            }
        }
    }
    result
}

/// `session_receive`: `Account::decrypt` as Bob, from his base state. The first byte
/// selects the mode (`% 4`):
///
/// * 0: the rest is an envelope.
/// * 1: `[i, edits..]`: honest envelope `i` after byte edits ([`apply_edits`]).
/// * 2: a sequence of deliveries `[i, dt, n, edits[4n]]*` (see [`deliveries`]) to one
///   account, each at its own clock.
/// * 3: the same envelopes through `decrypt_batch` (at `NOW`), which must give exactly
///   what `decrypt` gives one after another, and leave the same state.
///
/// Invariants: only an envelope whose signed parts are an honest envelope's decrypts,
/// to its original content, and at most once; a failed decrypt leaves the account's
/// saved state byte-identical; an unedited honest envelope delivered first gives what
/// it gave when the world was built.
pub fn session_receive(data: &[u8]) {
    let w = world();
    let (&selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let mut accepted = Vec::new();
    let mut rng = receive_rng();
    match selector % 4 {
        0 => {
            let mut bob = fresh(&w.bob_blob);
            let bytes = Bytes::copy_from_slice(rest);
            let result = deliver(&mut bob, bytes.clone(), NOW, &mut rng, &mut accepted, true);
            if let Some(h) = w.honest.iter().find(|h| h.bytes == bytes) {
                assert_eq!(result, h.expected, "{}: not deterministic", h.name);
            }
            recycle(&w.bob_blob, bob);
        }
        1 => {
            let mut bob = fresh(&w.bob_blob);
            let (&index, edits) = rest.split_first().unwrap_or((&0, &[]));
            let bytes = edited(index, edits);
            let result = deliver(&mut bob, bytes.clone(), NOW, &mut rng, &mut accepted, true);
            let h = &w.honest[usize::from(index) % w.honest.len()];
            if bytes == h.bytes {
                assert_eq!(result, h.expected, "{}: not deterministic", h.name);
            }
            recycle(&w.bob_blob, bob);
        }
        2 => {
            let mut bob = fresh(&w.bob_blob);
            for (bytes, now) in deliveries(rest) {
                let _ = deliver(&mut bob, bytes, now, &mut rng, &mut accepted, false);
            }
            recycle(&w.bob_blob, bob);
        }
        _ => {
            let envelopes: Vec<Bytes> = deliveries(rest).into_iter().map(|(b, _)| b).collect();
            let mut batch = fresh(&w.bob_blob);
            let results = batch.decrypt_batch(&envelopes, NOW, &mut rng);
            assert_eq!(results.len(), envelopes.len());
            let mut single = fresh(&w.bob_blob);
            let mut single_rng = receive_rng();
            let mut single_accepted = Vec::new();
            for (i, (bytes, batch_result)) in envelopes.iter().zip(&results).enumerate() {
                let result = deliver(
                    &mut single,
                    bytes.clone(),
                    NOW,
                    &mut single_rng,
                    &mut single_accepted,
                    false,
                );
                assert_eq!(
                    &result, batch_result,
                    "envelope {i}: decrypt_batch and decrypt disagree"
                );
            }
            assert!(
                save(&batch) == save(&single),
                "decrypt_batch and decrypt leave different states"
            );
            recycle(&w.bob_blob, batch);
            recycle(&w.bob_blob, single);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decoders.
// ---------------------------------------------------------------------------------------

fn check_prekey(p: &SignedPrekey, bundle: &PrekeyBundle) {
    assert_ne!(p.id(), 0);
    assert_eq!(p.device_id(), bundle.certificate().device_id());
    match p.kind() {
        PrekeyKind::X25519 => assert_eq!(p.public_key().len(), 32),
        PrekeyKind::MlKem768 => assert_eq!(p.public_key().len(), crypto::KEM_PUBLIC_KEY_LEN),
        _ => panic!("a prekey of an unknown kind"),
    }
    assert_eq!(
        SignedPrekey::decode(p.encoded().clone(), bundle.certificate()).as_ref(),
        Ok(p),
        "a bundle's prekey does not decode on its own"
    );
}

/// `prekey_bundle_decode`: `PrekeyBundle::decode`. A decoded bundle has the right
/// kinds and roles, every prekey verifies on its own, `decode(encode())` is equal and
/// its encoding stable, `PrekeyBundle::new` accepts its parts, and a bundle of a device
/// on Bob's list starts a session for Alice that can send.
pub fn prekey_bundle_decode(data: &[u8]) {
    let bundle = match PrekeyBundle::decode(Bytes::copy_from_slice(data)) {
        Ok(b) => b,
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            return;
        }
    };
    assert!(data.len() <= MAX_PREKEY_BUNDLE_LEN);
    let (spk, kem, otk) = (
        bundle.signed_prekey(),
        bundle.kem_prekey(),
        bundle.one_time_prekey(),
    );
    assert!(spk.kind() == PrekeyKind::X25519 && !spk.is_one_time());
    assert!(kem.kind() == PrekeyKind::MlKem768 && !kem.is_one_time());
    if let Some(o) = otk {
        assert!(o.kind() == PrekeyKind::X25519 && o.is_one_time());
    }
    for p in [Some(spk), Some(kem), otk].into_iter().flatten() {
        check_prekey(p, &bundle);
    }
    let encoded = bundle.encode();
    let again = PrekeyBundle::decode(encoded.clone()).expect("an encoded bundle decodes");
    assert_eq!(again, bundle, "bundle does not round-trip");
    assert_eq!(again.encode(), encoded, "bundle encoding is not stable");
    assert_eq!(
        PrekeyBundle::new(
            bundle.certificate().clone(),
            spk.clone(),
            kem.clone(),
            otk.cloned()
        )
        .as_ref(),
        Ok(&bundle)
    );
    assert!(!format!("{bundle:?}").is_empty());
    // A bundle of a device on Bob's list (with that certificate) starts a session.
    let w = world();
    let cert = bundle.certificate();
    if w.bob_list.get(cert.device_id()) == Some(cert) {
        let mut alice = fresh(&w.alice_fresh_blob);
        let before = alice.session_count(cert.address(), cert.device_id());
        alice
            .add_bundle(&bundle, NOW, &mut seeded(0x77))
            .expect("a verified bundle of a listed device starts a session");
        assert_eq!(
            alice.session_count(cert.address(), cert.device_id()),
            before + 1
        );
        let to = cert.address().clone();
        let sent = alice
            .encrypt(&to, &text("hello"), NOW, &mut seeded(0x78))
            .expect("a new session sends");
        assert_eq!(sent.envelopes.len(), 1);
    }
}

/// Whether two trackers hold the same lists for `addresses`.
fn same_lists(a: &DeviceLists, b: &DeviceLists, addresses: &[Address]) -> bool {
    a.len() == b.len() && addresses.iter().all(|x| a.get(x) == b.get(x))
}

/// `device_list_update`: `DeviceList::decode`, then `DeviceLists::update`. A decoded
/// list respects the limits, lists only its owner's devices, once each, re-decodes from
/// `encoded()` to an equal list and decodes for its own address only. Offered to a
/// tracker holding Alice's and Carol's lists, an accepted list is held and reported
/// with exactly the right events (and is stale when offered again), and a refused one
/// (stale) changes nothing.
pub fn device_list_update(data: &[u8]) {
    let list = match DeviceList::decode(Bytes::copy_from_slice(data)) {
        Ok(l) => l,
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            return;
        }
    };
    assert!(data.len() <= MAX_DEVICE_LIST_LEN);
    assert_eq!(list.encoded().as_ref(), data);
    let n = list.devices().len();
    assert!((1..=MAX_DEVICES_PER_USER).contains(&n));
    for (i, cert) in list.devices().iter().enumerate() {
        assert_eq!(cert.address(), list.address());
        assert_eq!(cert.identity_key(), list.identity_key());
        assert!(
            !list.devices()[..i]
                .iter()
                .any(|c| c.device_id() == cert.device_id())
        );
        assert_eq!(list.get(cert.device_id()), Some(cert));
    }
    assert_eq!(
        DeviceList::decode(list.encoded().clone()).as_ref(),
        Ok(&list)
    );
    assert_eq!(
        DeviceList::decode_for(list.encoded().clone(), list.address()).as_ref(),
        Ok(&list)
    );
    let other = Address::parse("someone@else.example").expect("fixed address parses");
    if list.address() != &other {
        assert!(matches!(
            DeviceList::decode_for(list.encoded().clone(), &other),
            Err(DeviceListError::AddressMismatch { .. })
        ));
    }
    assert!(!format!("{list:?}").is_empty());

    let w = world();
    let address = list.address().clone();
    let mut addresses: Vec<Address> = w.tracker.iter().map(|l| l.address().clone()).collect();
    addresses.push(address.clone());
    let mut tracker = w.tracker.clone();
    let previous = tracker.get(&address).cloned();
    match tracker.update(list.clone()) {
        Err(e) => {
            let p = previous.expect("a first list is always accepted");
            assert_eq!(
                e,
                DeviceListError::Stale {
                    serial: list.serial(),
                    current: p.serial()
                }
            );
            assert!(p.identity_key() == list.identity_key() && list.serial() <= p.serial());
            assert!(
                same_lists(&tracker, &w.tracker, &addresses),
                "a refused list changed the tracker"
            );
        }
        Ok(events) => {
            assert_eq!(tracker.get(&address), Some(&list));
            assert!(
                addresses
                    .iter()
                    .filter(|a| **a != address)
                    .all(|a| tracker.get(a) == w.tracker.get(a)),
                "an update changed another user's list"
            );
            let mut expected = Vec::new();
            let old_devices = match &previous {
                None => {
                    expected.push(DeviceEvent::IdentityFirstSeen {
                        address: address.clone(),
                        identity: *list.identity_key(),
                    });
                    Vec::new()
                }
                Some(p) => {
                    if p.identity_key() == list.identity_key() {
                        assert!(list.serial() > p.serial(), "a stale list was accepted");
                    } else {
                        expected.push(DeviceEvent::IdentityChanged {
                            address: address.clone(),
                            old: *p.identity_key(),
                            new: *list.identity_key(),
                        });
                    }
                    p.device_ids().collect()
                }
            };
            expected.extend(old_devices.iter().filter(|d| !list.contains(**d)).map(|d| {
                DeviceEvent::DeviceRemoved {
                    address: address.clone(),
                    device: *d,
                }
            }));
            expected.extend(
                list.device_ids()
                    .filter(|d| !old_devices.contains(d))
                    .map(|device| DeviceEvent::DeviceAdded {
                        address: address.clone(),
                        device,
                    }),
            );
            assert_eq!(events, expected);
            assert_eq!(
                tracker.len(),
                w.tracker.len() + usize::from(previous.is_none())
            );
            // The same list again is stale and changes nothing.
            let held = tracker.clone();
            assert!(matches!(
                tracker.update(list.clone()),
                Err(DeviceListError::Stale { .. })
            ));
            assert!(same_lists(&tracker, &held, &addresses));
            // Fan-out from Bob: every listed device, then Bob's other devices (none).
            let bob_device = w.bob_list.devices()[0].device_id();
            let recipients = tracker
                .recipients_for(&w.bob_list, bob_device, &address)
                .expect("a held list has recipients");
            if &address == w.bob_list.address() {
                assert!(recipients.is_empty());
            } else {
                assert!(recipients.iter().copied().eq(list.devices().iter()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Restore.
// ---------------------------------------------------------------------------------------

/// Saves `account`, restores the blob and checks the restored account saves to the
/// same blob. Returns the restored account.
fn round_trip(account: &Account, what: &str) -> Account {
    let blob = save(account);
    let restored = Account::restore(&blob, &storage_key())
        .unwrap_or_else(|e| panic!("{what}: a saved state does not restore: {e:?}"));
    assert!(
        save(&restored) == blob,
        "{what}: save and restore do not round-trip"
    );
    restored
}

/// Uses a restored account; `flags` picks what: bit 0 decrypts every honest envelope
/// (with the receive invariants; bit 3: in reverse order), bit 1 encrypts to every user
/// of the world, bit 2 makes a bundle, rotates and replenishes prekeys, bit 4 offers
/// every device list of the world (a refused one must change nothing). Nothing may
/// panic, and the state still round-trips after.
fn exercise(mut account: Account, flags: u8) {
    let w = world();
    if flags & 1 != 0 {
        let mut rng = receive_rng();
        let mut accepted = Vec::new();
        let mut order: Vec<&Honest> = w.honest.iter().collect();
        if flags & 8 != 0 {
            order.reverse();
        }
        for h in order {
            let _ = deliver(
                &mut account,
                h.bytes.clone(),
                NOW,
                &mut rng,
                &mut accepted,
                false,
            );
        }
    }
    if flags & 2 != 0 {
        let own = account.device().address().clone();
        let mut to: Vec<Address> = w.lists.iter().map(|(_, l)| l.address().clone()).collect();
        to.sort();
        to.dedup();
        for (i, address) in to.iter().enumerate() {
            let missing = account.missing_sessions(address);
            let result = account.encrypt(address, &text("x"), NOW, &mut ScriptedRng(i as u8));
            match result {
                Ok(sent) => {
                    assert!(missing.is_ok_and(|m| m.is_empty()));
                    for e in &sent.envelopes {
                        let env = UnverifiedEnvelope::decode(e.envelope.clone())
                            .expect("an encrypted envelope decodes");
                        assert_eq!(env.claimed_header().sender, own);
                        assert_eq!(env.claimed_header().recipient, e.recipient);
                    }
                }
                Err(e) => assert!(!e.code().is_empty()),
            }
        }
    }
    if flags & 4 != 0 {
        let bundle = account
            .prekey_bundle(None)
            .expect("a restored account has current prekeys");
        assert_eq!(
            PrekeyBundle::decode(bundle.encode()).as_ref(),
            Ok(&bundle),
            "a restored account's bundle does not decode"
        );
        account.rotate_prekeys(NOW, &mut ScriptedRng(7));
        account.replenish_prekeys(NOW, &mut ScriptedRng(8));
        assert!(account.prekeys().one_time_count() <= MAX_ONE_TIME_PREKEYS);
    }
    if flags & 16 != 0 {
        for (name, list) in &w.lists {
            let before = save(&account);
            match account.update_device_list(list.clone()) {
                Err(e) => {
                    assert!(!e.code().is_empty());
                    assert!(
                        save(&account) == before,
                        "a refused device list ({name}: {}) changed the account",
                        e.code()
                    );
                }
                Ok(_) => {
                    let held = if list.address() == account.device().address() {
                        Some(account.own_device_list())
                    } else {
                        account.contacts().get(list.address())
                    };
                    assert_eq!(held, Some(list), "{name}: an accepted list is not held");
                }
            }
        }
    }
    let _ = round_trip(&account, "after use");
}

/// `state_restore`: `Account::restore` under the fixed key. The first byte selects the
/// mode (`% 2`): 0 the rest is a blob; 1 `[flags, plaintext..]`: the plaintext (an
/// `AccountState`) is sealed as `save` seals it, so the fuzzer works past the AEAD.
/// Restore never panics and fails only with a state error; a restored account saves
/// and restores to the same blob, and can be used ([`exercise`], mode 1) without
/// panicking.
pub fn state_restore(data: &[u8]) {
    let (&selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let (blob, flags) = if selector % 2 == 0 {
        (rest.to_vec(), 0)
    } else {
        let (&flags, plaintext) = rest.split_first().unwrap_or((&0, &[]));
        (seal_plaintext(plaintext), flags)
    };
    let account = match Account::restore(&blob, &storage_key()) {
        Ok(a) => a,
        Err(e) => {
            assert!(
                matches!(e, SessionError::State(_)),
                "not a state error: {e:?}"
            );
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            return;
        }
    };
    assert!(!format!("{account:?}").is_empty());
    let restored = round_trip(&account, "restored");
    drop(account);
    if flags != 0 {
        exercise(restored, flags);
    }
}

// ---------------------------------------------------------------------------------------
// Seeds (regenerate with `cargo run --release --manifest-path fuzz/Cargo.toml --example
// gen_session_corpus`).
// ---------------------------------------------------------------------------------------

/// One seed: the target, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// A seed of one target: a name, the bytes.
type Named = (String, Vec<u8>);

fn edit(op: u8, pos: u16, value: u8) -> [u8; 4] {
    let [hi, lo] = pos.to_be_bytes();
    [op, hi, lo, value]
}

fn bundle_seeds() -> Vec<Named> {
    let w = world();
    let mut seeds: Vec<Named> = w
        .bundles
        .iter()
        .map(|(n, b)| ((*n).to_owned(), b.to_vec()))
        .collect();
    let good = w.bundles[0].1.to_vec();
    seeds.push(("truncated".into(), good[..good.len() / 2].to_vec()));
    seeds.push((
        "flipped-last".into(),
        apply_edits(&good, &edit(0, 0xffff, 1)),
    ));
    seeds.push(("empty".into(), Vec::new()));
    seeds
}

fn list_seeds() -> Vec<Named> {
    let w = world();
    let mut seeds: Vec<Named> = w
        .lists
        .iter()
        .map(|(n, l)| ((*n).to_owned(), l.encoded().to_vec()))
        .collect();
    let good = w.lists[0].1.encoded().to_vec();
    seeds.push(("truncated".into(), good[..good.len() - 3].to_vec()));
    seeds.push((
        "flipped-signature".into(),
        apply_edits(&good, &edit(0, 0xffff, 1)),
    ));
    seeds.push(("empty".into(), Vec::new()));
    seeds
}

fn receive_seeds() -> Vec<Named> {
    let w = world();
    let mut seeds = Vec::new();
    for (i, h) in w.honest.iter().enumerate() {
        let mut raw = vec![0];
        raw.extend_from_slice(&h.bytes);
        seeds.push((format!("raw-{}", h.name), raw));
        seeds.push((format!("edit-none-{}", h.name), vec![1, i as u8]));
    }
    let n = w.honest.len() as u8;
    let index = |name: &str| HONEST_NAMES.iter().position(|x| *x == name).unwrap() as u8;
    let (a2, a4, a5, c1, c2, d1, o1) = (
        index("alice-a2-skipped-key"),
        index("alice-a4-new-dh-chain"),
        index("alice-a5-new-dh-chain-gap"),
        index("carol-c1-setup-one-time-prekey"),
        index("carol-c2-setup-one-time-prekey-n1"),
        index("dave-d1-setup-no-one-time-prekey"),
        index("alice-one-shot"),
    );
    // Mode 1: a flipped signature bit, a flipped header byte, an inserted byte, a
    // deleted ciphertext byte, truncation.
    for (name, i, e) in [
        ("signature-bit", a4, edit(0, 0xffff, 0x01)),
        ("header-byte", c1, edit(0, 40, 0x20)),
        ("insert", a2, edit(1, 10, 0x00)),
        ("delete", d1, edit(2, 300, 0x00)),
        ("truncate", a5, edit(3, 200, 0x00)),
    ] {
        let mut s = vec![1, i];
        s.extend_from_slice(&e);
        seeds.push((format!("edit-{name}"), s));
    }
    let op = |i: u8, dt: u8| [i, dt, 0];
    let ops = |mode: u8, list: &[(u8, u8)]| -> Vec<u8> {
        [mode]
            .into_iter()
            .chain(list.iter().flat_map(|(i, dt)| op(*i, *dt)))
            .collect()
    };
    // Mode 2: the conversation in order, reversed, with replays and clock changes.
    let in_order = [a2, a4, a5, c1, c2, d1, o1].map(|i| (i, 0));
    let mut reversed = in_order;
    reversed.reverse();
    seeds.push(("sequence-in-order".into(), ops(2, &in_order)));
    seeds.push(("sequence-reversed".into(), ops(2, &reversed)));
    seeds.push((
        "sequence-replays".into(),
        ops(2, &[c1, c1, a4, a4, o1, o1].map(|i| (i, 0))),
    ));
    seeds.push((
        "sequence-clock".into(),
        ops(2, &[(a5, 4), (a2, 0x7f), (c2, 0x80), (c1, 1)]),
    ));
    let mut s = vec![2, c1, 0, 1];
    s.extend_from_slice(&edit(0, 0xffff, 0x80));
    s.extend_from_slice(&op(c1, 0));
    seeds.push(("sequence-forged-then-honest".into(), s));
    // Mode 3: batches.
    let all: Vec<(u8, u8)> = (0..n.min(MAX_OPS as u8)).map(|i| (i, 0)).collect();
    seeds.push(("batch-all".into(), ops(3, &all)));
    seeds.push((
        "batch-duplicates".into(),
        ops(3, &[a5, a5, c2, c1, c2].map(|i| (i, 0))),
    ));
    seeds.push(("raw-empty".into(), vec![0]));
    seeds.push(("raw-garbage".into(), vec![0, 0x0a, 0x03, 1, 2]));
    seeds
}

fn restore_seeds() -> Vec<Named> {
    let w = world();
    let mut seeds = Vec::new();
    for (name, blob) in &w.blobs {
        let mut raw = vec![0];
        raw.extend_from_slice(blob);
        seeds.push((format!("blob-{name}"), raw));
        let plaintext = open_blob(blob).expect("own blob opens");
        let mut s = vec![1, 0x17];
        s.extend_from_slice(&plaintext);
        seeds.push((format!("plaintext-{name}"), s));
    }
    let base = open_blob(&w.bob_blob).expect("own blob opens");
    let mut s = vec![1, 0];
    s.extend_from_slice(&base);
    seeds.push(("plaintext-bob-base-no-use".into(), s));
    let mut s = vec![1, 0x19];
    s.extend_from_slice(&base);
    seeds.push(("plaintext-bob-base-reversed-lists".into(), s));
    // Invalid: altered blob, bad magic, truncated; format 2; empty plaintext.
    let mut blob = vec![0];
    blob.extend_from_slice(&apply_edits(&w.bob_blob, &edit(0, 100, 1)));
    seeds.push(("blob-altered".into(), blob));
    seeds.push((
        "blob-bad-magic".into(),
        b"\0KOGGEST2\0\0\0\0\0\0\0\0\0\0\0\0".to_vec(),
    ));
    seeds.push(("blob-truncated".into(), b"\0KOGGEST1\0\0\0".to_vec()));
    let mut s = vec![1, 7, 0x08, 0x02];
    s.extend_from_slice(&base[2..]);
    seeds.push(("plaintext-format-2".into(), s));
    seeds.push(("plaintext-empty".into(), vec![1, 7]));
    // Reproducers of the regressions (see the module documentation).
    seeds.push((
        "regression-replenish-saturated-counter".into(),
        saturated_counter_input(),
    ));
    seeds.push((
        "regression-encrypt-send-seq-max".into(),
        send_seq_max_input(),
    ));
    seeds.push((
        "regression-receive-next-order-max".into(),
        next_order_max_input(),
    ));
    seeds
}

/// `state_restore` input reproducing regression 1: Bob's fresh state with
/// `prekeys.next_id = u32::MAX - 3`, flags 4 (bundle, rotate, replenish).
pub fn saturated_counter_input() -> Vec<u8> {
    let w = world();
    let fresh = w
        .blobs
        .iter()
        .find(|(n, _)| *n == "bob-fresh")
        .and_then(|(_, b)| open_blob(b))
        .expect("bob's fresh state opens");
    let mut s = vec![1, 4];
    s.extend_from_slice(&set_prekey_counter(&fresh, u32::MAX - 3).expect("state parses"));
    s
}

/// `state_restore` input reproducing regression 2: Bob's base state with every session's
/// `send_seq = u64::MAX`, flags 2 (encrypt to everyone).
pub fn send_seq_max_input() -> Vec<u8> {
    let base = open_blob(&world().bob_blob).expect("bob's base state opens");
    let mut s = vec![1, 2];
    s.extend_from_slice(&set_session_varint(&base, false, 4, u64::MAX).expect("state parses"));
    s
}

/// `state_restore` input reproducing regression 3: Bob's base state with every ratchet's
/// `next_order = u64::MAX`, flags 1 | 8 (decrypt every honest envelope, last first, so
/// that a5 arrives before a4 and a4's key is stored as skipped).
pub fn next_order_max_input() -> Vec<u8> {
    let base = open_blob(&world().bob_blob).expect("bob's base state opens");
    let mut s = vec![1, 9];
    s.extend_from_slice(&set_session_varint(&base, true, 10, u64::MAX).expect("state parses"));
    s
}

/// All seeds of all session targets.
pub fn seeds() -> Vec<Seed> {
    let groups: [(&'static str, Vec<Named>); 4] = [
        ("prekey_bundle_decode", bundle_seeds()),
        ("device_list_update", list_seeds()),
        ("session_receive", receive_seeds()),
        ("state_restore", restore_seeds()),
    ];
    let mut out = Vec::new();
    for (target, group) in groups {
        for (i, (name, bytes)) in group.into_iter().enumerate() {
            out.push((target, format!("seed-{i:03}-{name}"), bytes));
        }
    }
    out
}

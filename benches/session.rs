//! Session benchmarks: setup and the Double Ratchet through the public `Account` API,
//! measured beside the cryptographic floor they stand on.
//!
//! `cargo bench --bench session` runs the criterion groups, then a summary pass of its own
//! and prints the tables recorded in `benches/README-session-figures.md`. Compare ratios
//! within one run: the machines are shared and noisy.
//!
//! Every operation is defined once (an [`Op`]: "run `n` times, return the time of the
//! measured part"), and both the criterion groups (`iter_custom`) and the summary run the
//! same closures on the same state. The summary interleaves all operations in rounds
//! (each operation's slice split into parts, the median part kept), computes every ratio
//! within each round and reports the median over rounds, so that the load of the moment
//! hits numerator and denominator alike.
//!
//! Groups (one device per user; the text body is 256 bytes, 320 bytes once padded):
//! * `setup`: `PrekeyBundle::decode` of a bundle with a one-time prekey; `add_bundle`
//!   (the initiator's setup) with and without a one-time prekey; the responder's first
//!   `decrypt` (setup + the ratchet's first receive and its DH step) with and without;
//! * `steady`: `encrypt` + `decrypt` per message in one direction (no DH step) and
//!   alternating (every message forces a DH ratchet step), and each half on its own;
//! * `probe`: calls that stop part-way, to split the steady state (decrypting a replayed
//!   envelope, the envelope API's decode + verify, encrypting to a contact without a
//!   session);
//! * `primitive`: X25519 key generation / public key / DH, ML-KEM-768 (key check, encaps,
//!   decaps, key expansion from the seed, and Kogge's wrappers), Ed25519 sign and verify on
//!   the exact envelope signature inputs, HMAC-SHA256, the HKDFs, ChaCha20-Poly1305 on the
//!   real sizes (and the whole per-message ratchet floor as one op), and the codec pieces
//!   (envelope decode, content encode / decode, replay window).
//!
//! After the summary: a paired cross-check of the ratchet's own work (each message followed
//! by a bare sign + verify, timed per call), and the size of `Account::save`'s blob for 0,
//! 1 and 10 sessions.

// Benchmarks measure wall-clock time: clippy.toml bans `Instant::now` for the sans-IO
// library, not for this harness.
#![allow(clippy::disallowed_methods)]
// A benchmark whose fixture cannot be built must stop loudly; there is no caller to report to.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hint::black_box;
use std::mem::size_of;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInOut, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use criterion::Criterion;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use kogge::UnixMillis;
use kogge::address::Address;
use kogge::crypto::{self, Label, Secret};
use kogge::envelope::{
    Content, MessageId, OpenError, ReplayWindow, SessionSetup, Text, UnverifiedEnvelope,
};
use kogge::identity::{Device, DeviceId, DeviceKeyPair, DeviceList, IdentityKey, IdentityKeyPair};
use kogge::session::{Account, PrekeyBundle, SessionError};
use ml_kem::{Decapsulate, DecapsulationKey, EncapsulationKey, KeyExport, MlKem768};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

const NOW: UnixMillis = UnixMillis(1_760_000_000_000);
const YEAR: u64 = 365 * 24 * 3600 * 1000;
/// Bytes of text body per message.
const TEXT_LEN: usize = 256;

// ---------------------------------------------------------------------------------------
// Fixtures, from the public API only
// ---------------------------------------------------------------------------------------

/// A clock that moves 1 ms per message: the replay window forgets its oldest id once full
/// (10,000 per sender) and then refuses anything not newer, so timestamps must advance.
struct Clock(u64);

impl Clock {
    fn tick(&mut self) -> UnixMillis {
        self.0 += 1;
        NOW.saturating_add(self.0)
    }
}

/// A printable text body of exactly `n` bytes.
fn body(n: usize) -> String {
    (0..n).map(|i| char::from(b' ' + (i % 94) as u8)).collect()
}

fn text() -> Content {
    Content::Text(Text::plain(body(TEXT_LEN)))
}

/// One user with one device (so every message is exactly one envelope).
struct User {
    address: Address,
    list: DeviceList,
    account: Account,
}

fn user(rng: &mut ChaCha20Rng, addr: &str) -> User {
    let identity = IdentityKeyPair::generate(rng);
    let address = Address::parse(addr).expect("address");
    let device = Device::new(
        &identity,
        address.clone(),
        DeviceKeyPair::generate(rng),
        NOW.saturating_sub(YEAR),
        NOW.saturating_add(YEAR),
    )
    .expect("device");
    let list = DeviceList::sign(&identity, &address, 1, NOW, &[device.certificate().clone()])
        .expect("device list");
    let mut account = Account::new(device, list.clone(), NOW, rng).expect("account");
    account.replenish_prekeys(NOW, rng);
    User {
        address,
        list,
        account,
    }
}

/// Alice and Bob, each knowing the other's signed device list.
fn pair(rng: &mut ChaCha20Rng) -> (User, User) {
    let mut alice = user(rng, "alice@one.example");
    let mut bob = user(rng, "bob@two.example");
    alice
        .account
        .update_device_list(bob.list.clone())
        .expect("bob's list");
    bob.account
        .update_device_list(alice.list.clone())
        .expect("alice's list");
    (alice, bob)
}

/// The `index`-th unused one-time prekey id of `account`.
fn one_time_id(account: &Account, index: usize) -> u32 {
    account.prekeys().published().one_time_prekeys[index].id()
}

/// A bundle of `account`'s prekeys, with its `index`-th one-time prekey if given.
fn bundle(account: &Account, one_time: Option<usize>) -> PrekeyBundle {
    account
        .prekey_bundle(one_time.map(|i| one_time_id(account, i)))
        .expect("bundle")
}

/// The only envelope of a message between two single-device users.
fn only_envelope(sent: kogge::session::Sent) -> Bytes {
    assert_eq!(sent.envelopes.len(), 1, "one device per user");
    sent.envelopes
        .into_iter()
        .next()
        .expect("one envelope")
        .envelope
}

/// Two accounts with an established session (Alice set it up, Bob replied, so Alice no
/// longer attaches the setup), exchanging 256-byte texts.
struct Conversation {
    a: User,
    b: User,
    rng: ChaCha20Rng,
    clock: Clock,
    content: Content,
}

impl Conversation {
    fn new(seed: u8) -> Self {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let (mut a, b) = pair(&mut rng);
        let bundle = bundle(&b.account, Some(0));
        a.account
            .add_bundle(&bundle, NOW, &mut rng)
            .expect("add_bundle");
        let mut c = Self {
            a,
            b,
            rng,
            clock: Clock(0),
            content: text(),
        };
        c.message(true);
        c.message(false);
        c
    }

    /// Encrypts the text from Alice (or Bob) to the other; returns the envelope and time.
    fn send(&mut self, from_a: bool) -> (Bytes, UnixMillis) {
        let now = self.clock.tick();
        let (from, to) = if from_a {
            (&mut self.a.account, &self.b.address)
        } else {
            (&mut self.b.account, &self.a.address)
        };
        let sent = from
            .encrypt(to, &self.content, now, &mut self.rng)
            .expect("encrypt");
        (only_envelope(sent), now)
    }

    /// Decrypts an envelope at Bob (or Alice).
    fn receive(&mut self, at_b: bool, envelope: Bytes, now: UnixMillis) {
        let account = if at_b {
            &mut self.b.account
        } else {
            &mut self.a.account
        };
        let received = account
            .decrypt(envelope, now, &mut self.rng)
            .expect("decrypt");
        black_box(received);
    }

    fn message(&mut self, from_a: bool) {
        let (envelope, now) = self.send(from_a);
        self.receive(from_a, envelope, now);
    }
}

// ---------------------------------------------------------------------------------------
// Operations: "run n times and return the time of the measured part"
// ---------------------------------------------------------------------------------------

/// One measured operation. Returns the time spent in the measured part of `n` runs
/// (preparation that must not be measured, such as making a fresh first message, is
/// excluded).
type Op = Box<dyn FnMut(u64) -> Duration>;

/// An operation measured as a whole.
fn whole(mut f: impl FnMut() + 'static) -> Op {
    Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed()
    })
}

/// How many envelopes are prepared at once for the split (encrypt-only, decrypt-only)
/// steady-state operations.
const CHUNK: u64 = 256;

/// The exact inputs of the primitives, taken from real envelopes.
struct Samples {
    /// A steady-state envelope (no setup attached) and a first message (with setup).
    steady: Bytes,
    first: Bytes,
    /// `framed(EnvelopeSignature, [header, SHA-256(ciphertext)])` of each.
    steady_sig_input: Vec<u8>,
    first_sig_input: Vec<u8>,
    steady_signature: Signature,
    first_signature: Signature,
    signing: SigningKey,
    verifying: VerifyingKey,
    /// `framed(EnvelopeAad, [header])` of the steady envelope, its padded plaintext and
    /// its ciphertext length.
    aad: Vec<u8>,
    plaintext: Vec<u8>,
    ciphertext: Vec<u8>,
    /// Device certificates (hashed by the setup KDF).
    certificates: [Bytes; 2],
    /// Alice's device signing key (checked when a certificate is decoded).
    signing_key_bytes: [u8; 32],
}

fn samples() -> Samples {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let (mut a, mut b) = pair(&mut rng);
    let content = text();
    a.account
        .add_bundle(&bundle(&b.account, Some(0)), NOW, &mut rng)
        .expect("add_bundle");
    let first = only_envelope(
        a.account
            .encrypt(&b.address, &content, NOW, &mut rng)
            .expect("encrypt"),
    );
    b.account
        .decrypt(first.clone(), NOW, &mut rng)
        .expect("decrypt");
    let reply = only_envelope(
        b.account
            .encrypt(&a.address, &content, NOW, &mut rng)
            .expect("encrypt"),
    );
    a.account.decrypt(reply, NOW, &mut rng).expect("decrypt");
    let steady = only_envelope(
        a.account
            .encrypt(&b.address, &content, NOW, &mut rng)
            .expect("encrypt"),
    );
    let received = b
        .account
        .decrypt(steady.clone(), NOW, &mut rng)
        .expect("decrypt");
    assert_eq!(received.content, content);

    let signing = SigningKey::from_bytes(a.account.device().keys().secret_bytes().0.expose());
    let verifying = *a.account.device().certificate().signing_key();
    let parts = |bytes: &Bytes| {
        let env = UnverifiedEnvelope::decode(bytes.clone()).expect("decode");
        let input = crypto::framed(
            Label::EnvelopeSignature,
            &[env.header_bytes(), &crypto::sha256(env.ciphertext())],
        );
        // Ed25519 is deterministic: the bare signature must reproduce the envelope's, so
        // the primitives below run on the envelope's real inputs.
        assert_eq!(&signing.sign(&input), env.signature(), "signature differs");
        crypto::verify_message(&verifying, &input, env.signature()).expect("verify");
        (input, *env.signature(), env)
    };
    let (first_sig_input, first_signature, first_env) = parts(&first);
    let (steady_sig_input, steady_signature, steady_env) = parts(&steady);
    assert!(
        first_env.header_bytes().len() > 1088,
        "first message carries the setup"
    );
    let aad = crypto::framed(Label::EnvelopeAad, &[steady_env.header_bytes()]);
    let plaintext = content.encode_padded().expect("encode");
    assert_eq!(plaintext.len() + 16, steady_env.ciphertext().len());
    let mut signing_key_bytes = [0u8; 32];
    signing_key_bytes.copy_from_slice(verifying.as_bytes());
    Samples {
        steady,
        first,
        steady_sig_input,
        first_sig_input,
        steady_signature,
        first_signature,
        signing,
        verifying,
        aad,
        plaintext,
        ciphertext: steady_env.ciphertext().to_vec(),
        certificates: [
            a.account.device().certificate().encoded().clone(),
            b.account.device().certificate().encoded().clone(),
        ],
        signing_key_bytes,
    }
}

/// A named operation in a criterion group.
struct Named {
    group: &'static str,
    name: &'static str,
    op: Op,
}

fn setup_ops(ops: &mut Vec<Named>) {
    let mut add = |group, name, op| ops.push(Named { group, name, op });

    // Bundle decoding and verification (certificate: 2 signatures and the key checks;
    // 3 prekey signatures; the ML-KEM key check).
    let mut rng = ChaCha20Rng::from_seed([11; 32]);
    let (_, b) = pair(&mut rng);
    let encoded = bundle(&b.account, Some(0)).encode();
    add(
        "setup",
        "bundle_decode",
        whole(move || {
            black_box(PrekeyBundle::decode(black_box(&encoded).clone()).expect("bundle"));
        }),
    );

    // The initiator: `add_bundle` with a verified bundle (with and without a one-time
    // prekey: 4 or 3 X25519 in the setup, then the ratchet's first key pair and DH).
    for (name, one_time) in [
        ("add_bundle/one_time", Some(0)),
        ("add_bundle/no_one_time", None),
    ] {
        let mut rng = ChaCha20Rng::from_seed([12; 32]);
        let (mut a, b) = pair(&mut rng);
        let bundle = bundle(&b.account, one_time);
        add(
            "setup",
            name,
            whole(move || {
                a.account
                    .add_bundle(black_box(&bundle), NOW, &mut rng)
                    .expect("add_bundle");
            }),
        );
    }

    // The responder: decrypting a first message (decode, signature, setup with 4 or 3
    // X25519 and ML-KEM decapsulation, then the ratchet's first receive with its DH step,
    // the AEAD and the content). Each first message is made fresh by a new `add_bundle` +
    // `encrypt` at Alice (not measured); Bob's one-time prekeys are topped up when low.
    for (name, with_one_time) in [("respond/one_time", true), ("respond/no_one_time", false)] {
        let mut rng = ChaCha20Rng::from_seed([13; 32]);
        let (mut a, mut b) = pair(&mut rng);
        let content = text();
        let mut clock = Clock(0);
        let op: Op = Box::new(move |n| {
            let mut total = Duration::ZERO;
            let mut left = n;
            while left > 0 {
                let k = left.min(16) as usize;
                left -= k as u64;
                if b.account.prekeys().one_time_count() < k + 25 {
                    b.account.replenish_prekeys(clock.tick(), &mut rng);
                }
                let mut firsts = Vec::with_capacity(k);
                for i in 0..k {
                    let bundle = bundle(&b.account, with_one_time.then_some(i));
                    let now = clock.tick();
                    a.account
                        .add_bundle(&bundle, now, &mut rng)
                        .expect("add_bundle");
                    let sent = a
                        .account
                        .encrypt(&b.address, &content, now, &mut rng)
                        .expect("encrypt");
                    firsts.push((only_envelope(sent), now));
                }
                let t = Instant::now();
                for (envelope, now) in firsts {
                    black_box(b.account.decrypt(envelope, now, &mut rng).expect("decrypt"));
                }
                total += t.elapsed();
            }
            total
        });
        add("setup", name, op);
    }
}

fn steady_ops(ops: &mut Vec<Named>) {
    let mut add = |group, name, op| ops.push(Named { group, name, op });

    // One direction: Alice sends, Bob receives; the chain advances, no DH step.
    let mut c = Conversation::new(21);
    add("steady", "one_way", whole(move || c.message(true)));
    for (name, measure_encrypt) in [("one_way/encrypt", true), ("one_way/decrypt", false)] {
        let mut c = Conversation::new(22);
        let op: Op = Box::new(move |n| {
            let mut total = Duration::ZERO;
            let mut left = n;
            while left > 0 {
                let k = left.min(CHUNK);
                left -= k;
                let t = Instant::now();
                let envelopes: Vec<(Bytes, UnixMillis)> = (0..k).map(|_| c.send(true)).collect();
                let encrypt = t.elapsed();
                let t = Instant::now();
                for (envelope, now) in envelopes {
                    c.receive(true, envelope, now);
                }
                let decrypt = t.elapsed();
                total += if measure_encrypt { encrypt } else { decrypt };
            }
            total
        });
        add("steady", name, op);
    }

    // A backlog of 64 steady-state messages opened with `decrypt_batch` against one by
    // one with `decrypt` (the encryption that makes them is not measured).
    for (name, batch) in [("decrypt_batch64", true), ("decrypt_one_by_one64", false)] {
        let mut c = Conversation::new(if batch { 26 } else { 27 });
        let op: Op = Box::new(move |n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let envelopes: Vec<(Bytes, UnixMillis)> = (0..64).map(|_| c.send(true)).collect();
                let now = envelopes.last().map_or(NOW, |e| e.1);
                let bytes: Vec<Bytes> = envelopes.into_iter().map(|(e, _)| e).collect();
                let t = Instant::now();
                if batch {
                    let r = c.b.account.decrypt_batch(&bytes, now, &mut c.rng);
                    assert!(r.iter().all(Result::is_ok), "batch decrypt");
                    black_box(r);
                } else {
                    for e in bytes {
                        black_box(c.b.account.decrypt(e, now, &mut c.rng).expect("decrypt"));
                    }
                }
                total += t.elapsed();
            }
            total
        });
        add("batch", name, op);
    }

    // Probes that stop part-way, to split the steady-state time (public API only):
    // * decrypting an envelope already received: decode, sender lookup, signature, then
    //   refused by the replay window, before any session work;
    // * decoding and verifying it with the envelope API alone;
    // * encrypting to a contact without a session: the recipient checks `encrypt` runs
    //   before it touches a session, refused with `NeedBundles`.
    let mut c = Conversation::new(25);
    let (envelope, now) = c.send(true);
    c.receive(true, envelope.clone(), now);
    let sender = c.a.account.device().certificate().clone();
    let mut rng = ChaCha20Rng::from_seed([26; 32]);
    let carol = user(&mut rng, "carol@three.example");
    c.a.account
        .update_device_list(carol.list.clone())
        .expect("carol's list");
    let e2 = envelope.clone();
    add(
        "probe",
        "decrypt_replayed",
        whole(move || {
            let err =
                c.b.account
                    .decrypt(black_box(&envelope).clone(), now, &mut c.rng)
                    .expect_err("replayed");
            assert!(
                matches!(err, SessionError::Open(OpenError::Replay)),
                "{err:?}"
            );
        }),
    );
    add(
        "probe",
        "decode_verify",
        whole(move || {
            let env = UnverifiedEnvelope::decode(black_box(&e2).clone()).expect("decode");
            black_box(env.verify(&sender).expect("verify"));
        }),
    );
    let mut c = Conversation::new(27);
    c.a.account
        .update_device_list(carol.list.clone())
        .expect("carol's list");
    add(
        "probe",
        "encrypt_need_bundles",
        whole(move || {
            let err =
                c.a.account
                    .encrypt(black_box(&carol.address), &c.content, NOW, &mut c.rng)
                    .expect_err("no session");
            assert!(matches!(err, SessionError::NeedBundles(_)), "{err:?}");
        }),
    );

    // Alternating: A, B, A, B, ...: every received message carries a new ratchet key.
    let mut c = Conversation::new(23);
    let mut from_a = true;
    add(
        "steady",
        "alternating",
        whole(move || {
            c.message(from_a);
            from_a = !from_a;
        }),
    );
    for (name, measure_encrypt) in [
        ("alternating/encrypt", true),
        ("alternating/decrypt", false),
    ] {
        let mut c = Conversation::new(24);
        let mut from_a = true;
        let op: Op = Box::new(move |n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let t = Instant::now();
                let (envelope, now) = c.send(from_a);
                let encrypt = t.elapsed();
                let t = Instant::now();
                c.receive(from_a, envelope, now);
                let decrypt = t.elapsed();
                total += if measure_encrypt { encrypt } else { decrypt };
                from_a = !from_a;
            }
            total
        });
        add("steady", name, op);
    }
}

fn hmac_sha256(key: &[u8; 32], byte: u8) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("hmac key");
    mac.update(&[byte]);
    mac.finalize().into_bytes().into()
}

fn primitive_ops(ops: &mut Vec<Named>, s: &Samples) {
    let mut add = |name, op| {
        ops.push(Named {
            group: "primitive",
            name,
            op,
        })
    };
    let mut rng = ChaCha20Rng::from_seed([31; 32]);

    // X25519.
    let secret = StaticSecret::random_from_rng(&mut rng);
    let peer = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    let mut keygen_rng = ChaCha20Rng::from_seed([32; 32]);
    add(
        "x25519_keygen",
        whole(move || {
            let s = StaticSecret::random_from_rng(&mut keygen_rng);
            black_box(PublicKey::from(&s));
        }),
    );
    let s2 = secret.clone();
    add(
        "x25519_public_key",
        whole(move || {
            black_box(PublicKey::from(black_box(&s2)));
        }),
    );
    add(
        "x25519_dh",
        whole(move || {
            black_box(secret.diffie_hellman(black_box(&peer)));
        }),
    );

    // ML-KEM-768: the bare crate and Kogge's wrappers (which parse the public key, or
    // expand the decapsulation key from its 64-byte seed, on every call).
    let mut seed = [0u8; 64];
    rng.fill_bytes(&mut seed);
    let dk = DecapsulationKey::<MlKem768>::from_seed(ml_kem::Seed::from(seed));
    let ek_bytes = dk.encapsulation_key().to_bytes().to_vec();
    let mut m = [0u8; 32];
    rng.fill_bytes(&mut m);
    let (ct, shared) = dk
        .encapsulation_key()
        .encapsulate_deterministic(&ml_kem::B32::from(m));
    assert_eq!(dk.decapsulate(&ct), shared);
    let ct_bytes = ct.to_vec();
    type Ek = EncapsulationKey<MlKem768>;
    let parse =
        |b: &[u8]| Ek::new(&ml_kem::Key::<Ek>::try_from(b).expect("length")).expect("valid key");
    let ek = parse(&ek_bytes);
    let eb = ek_bytes.clone();
    add(
        "kem_check_key",
        whole(move || {
            black_box(parse(black_box(&eb)));
        }),
    );
    let ek2 = ek.clone();
    add(
        "kem_encaps",
        whole(move || {
            black_box(ek2.encapsulate_deterministic(black_box(&ml_kem::B32::from(m))));
        }),
    );
    let eb = ek_bytes.clone();
    add(
        "kem_check_key_encaps",
        whole(move || {
            let ek = parse(black_box(&eb));
            black_box(ek.encapsulate_deterministic(&ml_kem::B32::from(m)));
        }),
    );
    let (eb, mm) = (ek_bytes.clone(), Secret::new(m));
    add(
        "kogge_kem_encapsulate",
        whole(move || {
            black_box(crypto::kem_encapsulate_deterministic(black_box(&eb), &mm).expect("kem"));
        }),
    );
    let ct2 = ct;
    add(
        "kem_decaps",
        whole(move || {
            black_box(dk.decapsulate(black_box(&ct2)));
        }),
    );
    add(
        "kem_expand_seed",
        whole(move || {
            black_box(DecapsulationKey::<MlKem768>::from_seed(ml_kem::Seed::from(
                *black_box(&seed),
            )));
        }),
    );
    let sd = Secret::new(seed);
    let cb = ct_bytes.clone();
    add(
        "kogge_kem_decapsulate",
        whole(move || {
            black_box(crypto::kem_decapsulate(&sd, black_box(&cb)).expect("kem"));
        }),
    );

    // Ed25519 on the exact envelope signature inputs (the first message's header carries
    // the setup: about 1.2 KB more to hash).
    for (name, input, sig, verify) in [
        (
            "ed25519_sign",
            s.steady_sig_input.clone(),
            s.steady_signature,
            0,
        ),
        (
            "ed25519_sign_first",
            s.first_sig_input.clone(),
            s.first_signature,
            0,
        ),
        (
            "verify_message",
            s.steady_sig_input.clone(),
            s.steady_signature,
            1,
        ),
        (
            "verify_message_first",
            s.first_sig_input.clone(),
            s.first_signature,
            1,
        ),
        (
            "ed25519_verify_strict",
            s.steady_sig_input.clone(),
            s.steady_signature,
            2,
        ),
    ] {
        let (signing, verifying) = (s.signing.clone(), s.verifying);
        add(
            name,
            whole(move || match verify {
                0 => {
                    black_box(signing.sign(black_box(&input)));
                }
                1 => crypto::verify_message(&verifying, black_box(&input), &sig).expect("verify"),
                _ => verifying
                    .verify_strict(black_box(&input), &sig)
                    .expect("verify"),
            }),
        );
    }
    let key_bytes = s.signing_key_bytes;
    add(
        "ed25519_key_check",
        whole(move || {
            black_box(crypto::verifying_key(black_box(&key_bytes)).expect("key"));
        }),
    );

    // The KDFs as the ratchet and the setup call them.
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    add(
        "hmac_sha256",
        whole(move || {
            black_box(hmac_sha256(black_box(&key), 0x01));
        }),
    );
    let mut message_id = [0u8; 16];
    rng.fill_bytes(&mut message_id);
    add(
        "hkdf_44",
        whole(move || {
            let mut okm = [0u8; 44];
            crypto::hkdf_sha256(
                black_box(&message_id),
                &key,
                Label::RatchetMessageKeys,
                &[],
                &mut okm,
            )
            .expect("hkdf");
            black_box(okm);
        }),
    );
    let mut dh = [0u8; 32];
    rng.fill_bytes(&mut dh);
    add(
        "hkdf_64",
        whole(move || {
            let mut okm = [0u8; 64];
            crypto::hkdf_sha256(black_box(&key), &dh, Label::RatchetRoot, &[], &mut okm)
                .expect("hkdf");
            black_box(okm);
        }),
    );
    // The setup KDF: ikm = 0xFF×32 ‖ 4 DH ‖ SS, info = 7 framed 32-byte parts, after
    // SHA-256 of both certificates, the ML-KEM public key and ciphertext.
    let mut ikm = [0xffu8; 192];
    rng.fill_bytes(&mut ikm[32..]);
    let certs = s.certificates.clone();
    let (ekb, ctb) = (ek_bytes, ct_bytes);
    add(
        "setup_kdf",
        whole(move || {
            let hashes = [
                crypto::sha256(&certs[0]),
                crypto::sha256(&certs[1]),
                crypto::sha256(black_box(&ekb)),
                crypto::sha256(black_box(&ctb)),
            ];
            let mut okm = [0u8; 32];
            crypto::hkdf_sha256(
                &[0u8; 32],
                black_box(&ikm),
                Label::SessionSetup,
                &[
                    &hashes[0],
                    &hashes[1],
                    &ikm[32..64],
                    &ikm[64..96],
                    &ikm[96..128],
                    &hashes[2],
                    &hashes[3],
                ],
                &mut okm,
            )
            .expect("hkdf");
            black_box(okm);
        }),
    );

    // The ratchet's floor per message in one op: both sides' KDF_CK (2 HMAC each) and
    // message keys (HKDF-44 each), one AEAD encryption and one decryption.
    let (pt, aad) = (s.plaintext.clone(), s.aad.clone());
    let mut buf = vec![0u8; pt.len()];
    add(
        "ratchet_floor",
        whole(move || {
            let mut okm = [0u8; 44];
            for _ in 0..2 {
                black_box(hmac_sha256(black_box(&key), 0x01));
                black_box(hmac_sha256(black_box(&key), 0x02));
                crypto::hkdf_sha256(&message_id, &key, Label::RatchetMessageKeys, &[], &mut okm)
                    .expect("hkdf");
                black_box(&okm);
            }
            let mut k = [0u8; 32];
            k.copy_from_slice(&okm[..32]);
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&okm[32..]);
            buf.copy_from_slice(&pt);
            let cipher = ChaCha20Poly1305::new_from_slice(&k).expect("key");
            let tag = cipher
                .encrypt_inout_detached(&Nonce::from(nonce), &aad, buf.as_mut_slice().into())
                .expect("encrypt");
            let cipher = ChaCha20Poly1305::new_from_slice(&k).expect("key");
            cipher
                .decrypt_inout_detached(&Nonce::from(nonce), &aad, buf.as_mut_slice().into(), &tag)
                .expect("decrypt");
        }),
    );

    // ChaCha20-Poly1305 on the real sizes: bare in place, and Kogge's allocating wrappers.
    let aead_key = key;
    let nonce = [7u8; 12];
    let (pt, aad) = (s.plaintext.clone(), s.aad.clone());
    let mut buf = vec![0u8; pt.len()];
    add(
        "aead_encrypt",
        whole(move || {
            buf.copy_from_slice(&pt);
            let cipher = ChaCha20Poly1305::new_from_slice(&aead_key).expect("key");
            black_box(
                cipher
                    .encrypt_inout_detached(&Nonce::from(nonce), &aad, buf.as_mut_slice().into())
                    .expect("encrypt"),
            );
        }),
    );
    let cipher = ChaCha20Poly1305::new_from_slice(&aead_key).expect("key");
    let mut sealed = s.plaintext.clone();
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), &s.aad, sealed.as_mut_slice().into())
        .expect("encrypt");
    let (ct, aad) = (sealed.clone(), s.aad.clone());
    let mut buf = vec![0u8; ct.len()];
    add(
        "aead_decrypt",
        whole(move || {
            buf.copy_from_slice(&ct);
            let cipher = ChaCha20Poly1305::new_from_slice(&aead_key).expect("key");
            cipher
                .decrypt_inout_detached(&Nonce::from(nonce), &aad, buf.as_mut_slice().into(), &tag)
                .expect("decrypt");
        }),
    );
    let secret_key = Secret::new(aead_key);
    let (pt, aad) = (s.plaintext.clone(), s.aad.clone());
    let sk = secret_key.clone();
    add(
        "kogge_aead_seal",
        whole(move || {
            black_box(crypto::aead_seal(&sk, &nonce, &aad, black_box(&pt)).expect("seal"));
        }),
    );
    let mut full = sealed;
    full.extend_from_slice(&tag);
    let aad = s.aad.clone();
    add(
        "kogge_aead_open",
        whole(move || {
            black_box(
                crypto::aead_open(&secret_key, &nonce, &aad, black_box(&full)).expect("open"),
            );
        }),
    );

    // The codec and bookkeeping pieces of a message.
    let ct = s.ciphertext.clone();
    add(
        "sha256_ciphertext",
        whole(move || {
            black_box(crypto::sha256(black_box(&ct)));
        }),
    );
    let first = s.first.clone();
    add(
        "sha256_first_header",
        whole(move || {
            // The first message's signature input is as long as its header: a proxy for
            // the extra SHA-512 work of signing / verifying it.
            black_box(crypto::sha256(black_box(&first)));
        }),
    );
    let steady = s.steady.clone();
    add(
        "envelope_decode",
        whole(move || {
            black_box(UnverifiedEnvelope::decode(black_box(&steady).clone()).expect("decode"));
        }),
    );
    let content = text();
    add(
        "content_encode",
        whole(move || {
            black_box(black_box(&content).encode_padded().expect("encode"));
        }),
    );
    let pt = s.plaintext.clone();
    add(
        "content_decode",
        whole(move || {
            black_box(Content::decode(black_box(&pt)).expect("decode"));
        }),
    );
    let header = UnverifiedEnvelope::decode(s.steady.clone())
        .expect("decode")
        .claimed_header()
        .clone();
    let h2 = header.clone();
    add(
        "replay_accept",
        whole(move || {
            let mut window = ReplayWindow::default();
            window.accept(black_box(&h2), NOW).expect("fresh");
            black_box(window);
        }),
    );
    // A window already full with this sender's ids (10,000 by default), as in a long
    // conversation: each accept also forgets the oldest id.
    let mut window = ReplayWindow::default();
    let mut next = 0u64;
    let mut full_header = header.clone();
    let mut accept = move |window: &mut ReplayWindow| {
        next += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&next.to_le_bytes());
        full_header.message_id = MessageId::from_bytes(id);
        full_header.timestamp = NOW.saturating_add(next);
        window
            .accept(black_box(&full_header), full_header.timestamp)
            .expect("fresh");
    };
    for _ in 0..kogge::limits::DEFAULT_REPLAY_CAPACITY {
        accept(&mut window);
    }
    add("replay_accept_full", whole(move || accept(&mut window)));
    // What `decrypt` clones: the sender's certificate and the envelope header.
    let cert = s.certificates[0].clone();
    let cert = kogge::identity::DeviceCertificate::decode(cert).expect("certificate");
    add(
        "clone_cert_header",
        whole(move || {
            black_box(black_box(&cert).clone());
            black_box(black_box(&header).clone());
        }),
    );
}

// ---------------------------------------------------------------------------------------
// Criterion groups
// ---------------------------------------------------------------------------------------

fn run_criterion(c: &mut Criterion, ops: &mut [Named]) {
    let mut groups: Vec<&'static str> = Vec::new();
    for o in ops.iter() {
        if !groups.contains(&o.group) {
            groups.push(o.group);
        }
    }
    for group_name in groups {
        let mut group = c.benchmark_group(group_name);
        let (samples, time) = if group_name == "primitive" {
            (25, Duration::from_millis(1200))
        } else {
            (20, Duration::from_millis(2000))
        };
        group
            .sample_size(samples)
            .measurement_time(time)
            .warm_up_time(Duration::from_millis(500));
        for named in ops.iter_mut().filter(|o| o.group == group_name) {
            let op = &mut named.op;
            group.bench_function(named.name, |b| b.iter_custom(&mut *op));
        }
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------
// Summary: interleaved timing, so every ratio comes from the same minutes
// ---------------------------------------------------------------------------------------

/// Per-call time of one operation: the median round and the fastest round (the least
/// disturbed by other processes on a shared machine).
#[derive(Clone, Copy)]
struct Measured {
    median_us: f64,
    best_us: f64,
}

/// Per-call times in µs of every operation, one entry per round (rounds in order).
type Rounds = HashMap<&'static str, Vec<f64>>;

/// Each round runs every operation for about `slice` of measured time, split into
/// [`PARTS`] equal parts, and records the median part's mean time per call: a part that
/// another process preempted (milliseconds on this shared machine) is outvoted.
/// Operations in one round run within a few tens of milliseconds of each other, so ratios
/// computed within a round share the machine's load of the moment.
fn interleaved(ops: &mut [Named], rounds: usize, slice: Duration) -> Rounds {
    let iters: Vec<u64> = ops
        .iter_mut()
        .map(|o| {
            (o.op)(1);
            let per = (o.op)(3).as_secs_f64() / 3.0;
            ((slice.as_secs_f64() / PARTS as f64 / per).ceil() as u64).max(1)
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(rounds); ops.len()];
    for _ in 0..rounds {
        for (i, o) in ops.iter_mut().enumerate() {
            let parts: Vec<f64> = (0..PARTS)
                .map(|_| (o.op)(iters[i]).as_secs_f64() * 1e6 / iters[i] as f64)
                .collect();
            samples[i].push(quantile(&parts, 0.5));
        }
    }
    ops.iter().map(|o| o.name).zip(samples).collect()
}

/// How many parts each operation's slice of a round is split into.
const PARTS: usize = 7;

/// The `q`-quantile (0 = smallest) of some values.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A breakdown row: a measured time and the measured parts it contains.
type Breakdown<'a> = (&'a str, f64, Vec<(&'a str, f64)>);

/// A row: measured time against a sum of primitives.
struct Row {
    name: &'static str,
    measured: f64,
    own: f64,
    floor: f64,
}

fn summary(ops: &mut [Named], s: &Samples) {
    let rounds = 61;
    let per_round = interleaved(ops, rounds, Duration::from_millis(3));
    let results: HashMap<&'static str, Measured> = per_round
        .iter()
        .map(|(name, v)| {
            let m = Measured {
                median_us: quantile(v, 0.5),
                best_us: quantile(v, 0.0),
            };
            (*name, m)
        })
        .collect();
    println!();
    println!(
        "## Summary ({TEXT_LEN}-byte text body, {} B padded; {rounds} interleaved rounds)",
        s.plaintext.len()
    );
    println!();
    println!("### Median round of each operation");
    report(&|name| results[name].median_us);
    goals(&per_round, rounds);
    paired_check(s, 3000);
    println!();
    println!("### Every operation (per call)");
    println!();
    println!("| group/operation | median round | fastest round |");
    println!("|---|---|---|");
    for o in ops.iter() {
        let m = results[o.name];
        println!(
            "| {}/{} | {:.2} µs | {:.2} µs |",
            o.group, o.name, m.median_us, m.best_us
        );
    }
    state_size();
}

/// A cross-check of the ratchet's own work without subtracting operations measured apart:
/// `count` consecutive messages, each followed by a bare Ed25519 sign and verify of the
/// steady envelope's signature input, all timed per call; medians per call.
fn paired_check(s: &Samples, count: usize) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!();
    println!(
        "### Cross-check: {count} consecutive messages, each followed by a bare sign + verify \
         (medians per call)"
    );
    println!();
    println!("| mode | message (encrypt + decrypt) | sign + verify | difference = ratchet's own |");
    println!("|---|---|---|---|");
    for (name, alternate) in [("one direction", false), ("alternating", true)] {
        let mut c = Conversation::new(29);
        let mut from_a = true;
        let (mut message, mut sig, mut diff) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..count {
            let t = Instant::now();
            c.message(from_a);
            let t2 = Instant::now();
            black_box(s.signing.sign(black_box(&s.steady_sig_input)));
            crypto::verify_message(
                &s.verifying,
                black_box(&s.steady_sig_input),
                &s.steady_signature,
            )
            .expect("verify");
            let t3 = Instant::now();
            let (m, g) = ((t2 - t).as_secs_f64() * 1e6, (t3 - t2).as_secs_f64() * 1e6);
            message.push(m);
            sig.push(g);
            diff.push(m - g);
            if alternate {
                from_a = !from_a;
            }
        }
        println!(
            "| {name} | {:.2} µs | {:.2} µs | {:.2} µs |",
            median(message),
            median(sig),
            median(diff)
        );
    }
}

/// One headline ratio and its goal, if it has one.
struct Ratio {
    label: &'static str,
    value: f64,
    goal: Option<f64>,
}

/// The sums of primitives that the headline ratios divide by.
struct Floors {
    init_core: [f64; 2],
    resp_core: [f64; 2],
    bundle: f64,
    /// Per message, encrypt + decrypt: 2 × (2 HMAC + HKDF-44) + AEAD encrypt + decrypt.
    ratchet: f64,
    signature: f64,
    codec: f64,
}

fn floors(get: &dyn Fn(&str) -> f64) -> Floors {
    let (keygen, dh) = (get("x25519_keygen"), get("x25519_dh"));
    // FIPS 203 Encaps includes the encapsulation key check (the crate caches H(ek) in it).
    let encaps = get("kem_check_key_encaps");
    let init = |n_dh: f64| 2.0 * keygen + n_dh * dh + encaps;
    let resp = |n_dh: f64| get("verify_message_first") + n_dh * dh + keygen + get("kem_decaps");
    Floors {
        init_core: [init(5.0), init(4.0)],
        resp_core: [resp(6.0), resp(5.0)],
        bundle: 5.0 * get("verify_message") + 2.0 * get("ed25519_key_check") + get("kem_check_key"),
        ratchet: 2.0 * (2.0 * get("hmac_sha256") + get("hkdf_44"))
            + get("aead_encrypt")
            + get("aead_decrypt"),
        signature: get("ed25519_sign") + get("verify_message"),
        codec: 2.0 * get("sha256_ciphertext")
            + get("envelope_decode")
            + get("content_encode")
            + get("content_decode")
            + get("replay_accept"),
    }
}

/// The headline ratios, from one set of measurements.
fn ratios(get: &dyn Fn(&str) -> f64) -> Vec<Ratio> {
    let f = floors(get);
    let (keygen, dh, hkdf64) = (get("x25519_keygen"), get("x25519_dh"), get("hkdf_64"));
    let own = get("one_way") - f.signature;
    let alt_own = get("alternating") - f.signature;
    let step = get("alternating") - get("one_way");
    let recomputed = get("kem_expand_seed") + get("x25519_public_key");
    let r = |label, value, goal| Ratio { label, value, goal };
    vec![
        r(
            "backlog of 64 session messages: decrypt_batch / 64 x decrypt",
            get("decrypt_batch64") / get("decrypt_one_by_one64"),
            Some(0.6),
        ),
        r(
            "setup: add_bundle, one-time prekey / (2 keygen + 5 DH + encaps)",
            get("add_bundle/one_time") / f.init_core[0],
            Some(1.2),
        ),
        r(
            "setup: add_bundle, no one-time prekey / (2 keygen + 4 DH + encaps)",
            get("add_bundle/no_one_time") / f.init_core[1],
            Some(1.2),
        ),
        r(
            "setup: first decrypt, one-time prekey / (verify + 6 DH + keygen + decaps)",
            get("respond/one_time") / f.resp_core[0],
            Some(1.2),
        ),
        r(
            "setup: first decrypt, no one-time prekey / (verify + 5 DH + keygen + decaps)",
            get("respond/no_one_time") / f.resp_core[1],
            Some(1.2),
        ),
        r(
            "  (first decrypt, one-time prekey, without the ML-KEM key expansion and X25519 public key it recomputes)",
            (get("respond/one_time") - recomputed) / f.resp_core[0],
            None,
        ),
        r(
            "setup: bundle decode / (5 verify + 2 Ed25519 key checks + ML-KEM key check)",
            get("bundle_decode") / f.bundle,
            None,
        ),
        r(
            "steady, one direction: (total − sign − verify) / (4 HMAC + 2 HKDF-44 + AEAD enc + dec)",
            own / f.ratchet,
            Some(1.2),
        ),
        r(
            "  (same, floor measured as one op: ratchet_floor)",
            own / get("ratchet_floor"),
            None,
        ),
        r(
            "  (same, also without SHA-256 ×2, envelope decode, content codec, replay window)",
            (own - f.codec) / f.ratchet,
            None,
        ),
        r(
            "steady, alternating: (total − sign − verify) / (floor + 1 keygen + 1 DH)",
            alt_own / (f.ratchet + keygen + dh),
            Some(1.2),
        ),
        r(
            "  DH step (alternating − one direction) / (1 keygen + 1 DH), the goal's accounting",
            step / (keygen + dh),
            Some(1.0),
        ),
        r(
            "  DH step / (1 keygen + 2 DH + 2 HKDF-64), what the step computes",
            step / (keygen + 2.0 * dh + 2.0 * hkdf64),
            None,
        ),
    ]
}

/// The headline ratios computed within each round, summarised over rounds.
fn goals(per_round: &Rounds, rounds: usize) {
    let all: Vec<Vec<Ratio>> = (0..rounds)
        .map(|i| ratios(&|name: &str| per_round[name][i]))
        .collect();
    println!();
    println!(
        "### Ratios against the goals (computed within each round; median and 10–90 % over rounds)"
    );
    println!();
    println!("| ratio | median | p10 – p90 | goal | verdict |");
    println!("|---|---|---|---|---|");
    for (j, first) in all[0].iter().enumerate() {
        let v: Vec<f64> = all.iter().map(|r| r[j].value).collect();
        let median = quantile(&v, 0.5);
        let (goal, verdict) = match first.goal {
            Some(g) if median <= g => (format!("≤ {g:.1}×"), "met"),
            Some(g) => (format!("≤ {g:.1}×"), "MISSED"),
            None => (String::new(), ""),
        };
        println!(
            "| {} | {median:.3}× | {:.3} – {:.3} | {goal} | {verdict} |",
            first.label,
            quantile(&v, 0.1),
            quantile(&v, 0.9)
        );
    }
}

fn report(get: &dyn Fn(&str) -> f64) {
    let us = |v: f64| format!("{v:.2} µs");
    let (keygen, pubkey, dh) = (
        get("x25519_keygen"),
        get("x25519_public_key"),
        get("x25519_dh"),
    );
    let (kem_check, encaps, decaps, expand) = (
        get("kem_check_key"),
        get("kem_encaps"),
        get("kem_decaps"),
        get("kem_expand_seed"),
    );
    // FIPS 203 Encaps includes the encapsulation key check (the crate caches H(ek) in it).
    let encaps_full = get("kem_check_key_encaps");
    let (sign, verify, verify_first) = (
        get("ed25519_sign"),
        get("verify_message"),
        get("verify_message_first"),
    );
    let (hmac, hkdf44, hkdf64, setup_kdf) = (
        get("hmac_sha256"),
        get("hkdf_44"),
        get("hkdf_64"),
        get("setup_kdf"),
    );
    let (aead_enc, aead_dec) = (get("aead_encrypt"), get("aead_decrypt"));
    let sha_ct = get("sha256_ciphertext");

    // Setup.
    let init_core = |n_dh: f64| 2.0 * keygen + n_dh * dh + encaps_full;
    let init_all = |n_dh: f64| init_core(n_dh) + setup_kdf + hkdf64;
    let resp_core = |n_dh: f64| verify_first + n_dh * dh + keygen + decaps;
    let resp_all = |n_dh: f64| {
        resp_core(n_dh) + sha_ct + setup_kdf + 2.0 * hkdf64 + 2.0 * hmac + hkdf44 + aead_dec
    };
    let setup_rows = [
        (
            "add_bundle, one-time prekey (4+1 DH, 2 keygen, encaps)",
            "add_bundle/one_time",
            init_core(5.0),
            init_all(5.0),
        ),
        (
            "add_bundle, no one-time prekey (3+1 DH, 2 keygen, encaps)",
            "add_bundle/no_one_time",
            init_core(4.0),
            init_all(4.0),
        ),
        (
            "first decrypt, one-time prekey (verify, 4+2 DH, keygen, decaps)",
            "respond/one_time",
            resp_core(6.0),
            resp_all(6.0),
        ),
        (
            "first decrypt, no one-time prekey (verify, 3+2 DH, keygen, decaps)",
            "respond/no_one_time",
            resp_core(5.0),
            resp_all(5.0),
        ),
    ];
    println!();
    println!(
        "| setup | measured | DH + KEM + signature sum | ratio (goal ≤ 1.2×) | all primitives | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, name, core, all) in setup_rows {
        let m = get(name);
        println!(
            "| {label} | {} | {} | {:.3}× | {} | {:.3}× |",
            us(m),
            us(core),
            m / core,
            us(all),
            m / all
        );
    }
    let bundle_floor = 5.0 * verify + 2.0 * get("ed25519_key_check") + kem_check;
    println!(
        "| bundle decode + verify (5 signatures, 2 Ed25519 key checks, ML-KEM key check) | {} | {} | {:.3}× | | |",
        us(get("bundle_decode")),
        us(bundle_floor),
        get("bundle_decode") / bundle_floor
    );
    let e2e = get("bundle_decode") + get("add_bundle/one_time");
    println!(
        "| initiator end to end: bundle decode + add_bundle (one-time prekey) | {} | {} | {:.3}× | | |",
        us(e2e),
        us(bundle_floor + init_core(5.0)),
        e2e / (bundle_floor + init_core(5.0))
    );
    // Where the responder's excess goes: work the primitives sum does not contain.
    let resp = get("respond/one_time");
    let known = expand + pubkey;
    println!();
    println!(
        "Responder excess over all primitives: {} = ML-KEM key expansion from the stored seed {} \
         (kem_decapsulate re-derives the key pair every time) + X25519 public key of the signed \
         prekey {} (Ratchet::responder) + rest {}.",
        us(resp - resp_all(6.0)),
        us(expand),
        us(pubkey),
        us(resp - resp_all(6.0) - known)
    );
    println!(
        "Initiator excess over all primitives: {} (Kogge's kem wrapper vs bare check + encaps: {}; \
         the encapsulation key check alone is {} of the {} encaps).",
        us(get("add_bundle/one_time") - init_all(5.0)),
        us(get("kogge_kem_encapsulate") - encaps_full),
        us(kem_check),
        us(encaps + kem_check)
    );

    // Steady state.
    let floor_side = 2.0 * hmac + hkdf44;
    let floor = 2.0 * floor_side + aead_enc + aead_dec;
    let floor_literal = floor_side + aead_enc + aead_dec;
    let one_way = get("one_way");
    let alternating = get("alternating");
    let (sig, own) = (sign + verify, one_way - sign - verify);
    let alt_own = alternating - sig;
    println!();
    println!(
        "| per message, encrypt + decrypt | total | ratchet's own (total − sign − verify) | HMAC+HKDF+AEAD floor | ratio (goal ≤ 1.2×) |"
    );
    println!("|---|---|---|---|---|");
    for r in [
        Row {
            name: "one direction (no DH step)",
            measured: one_way,
            own,
            floor,
        },
        Row {
            name: "alternating (DH step every message)",
            measured: alternating,
            own: alt_own,
            floor: floor + keygen + dh,
        },
    ] {
        println!(
            "| {} | {} | {} | {} | {:.3}× |",
            r.name,
            us(r.measured),
            us(r.own),
            us(r.floor),
            r.own / r.floor
        );
    }
    println!(
        "| (sign {} + verify {} subtracted; floor measured as one op: {}) | | | | |",
        us(sign),
        us(verify),
        us(get("ratchet_floor"))
    );
    let codec = 2.0 * sha_ct
        + get("envelope_decode")
        + get("content_encode")
        + get("content_decode")
        + get("replay_accept");
    println!(
        "| (one direction, also without SHA-256 ×2, envelope decode, content codec, replay: {}) | | {} | {} | {:.3}× |",
        us(codec),
        us(own - codec),
        us(floor),
        (own - codec) / floor
    );
    println!(
        "| (one direction against the brief's literal floor: 2 HMAC + 1 HKDF + AEAD enc + dec) | | {} | {} | {:.3}× |",
        us(own),
        us(floor_literal),
        own / floor_literal
    );
    println!(
        "| (alternating against the DH step as implemented: floor + keygen + 2 DH + 2 HKDF-64) | | {} | {} | {:.3}× |",
        us(alt_own),
        us(floor + keygen + 2.0 * dh + 2.0 * hkdf64),
        alt_own / (floor + keygen + 2.0 * dh + 2.0 * hkdf64)
    );

    // Where the one-direction time goes, per side, against measured pieces. Decrypt is
    // split by a probe: an already-received envelope goes through decode, sender lookup
    // and signature, then the replay window refuses it before any session work.
    let (enc, dec) = (get("one_way/encrypt"), get("one_way/decrypt"));
    let (pre, need) = (get("decrypt_replayed"), get("encrypt_need_bundles"));
    let rows: [Breakdown<'_>; 4] = [
        (
            "encrypt",
            enc,
            vec![
                ("Ed25519 sign", sign),
                ("SHA-256 of ciphertext", sha_ct),
                ("2 HMAC", 2.0 * hmac),
                ("HKDF-44", hkdf44),
                ("aead_seal", get("kogge_aead_seal")),
                ("Content::encode_padded", get("content_encode")),
                ("recipient checks (probe: encrypt → NeedBundles)", need),
            ],
        ),
        (
            "decrypt up to the session (probe: replayed envelope)",
            pre,
            vec![
                ("decode", get("envelope_decode")),
                ("SHA-256 of ciphertext", sha_ct),
                ("verify_message", verify),
                ("certificate + header clones", get("clone_cert_header")),
            ],
        ),
        (
            "decrypt, session part (decrypt − probe)",
            dec - pre,
            vec![
                ("2 HMAC", 2.0 * hmac),
                ("HKDF-44", hkdf44),
                ("aead_open", get("kogge_aead_open")),
                ("Content::decode", get("content_decode")),
                ("replay accept, full window", get("replay_accept_full")),
            ],
        ),
        (
            "(cross-check, envelope API alone: decode + verify)",
            get("decode_verify"),
            vec![
                ("decode", get("envelope_decode")),
                ("SHA-256 of ciphertext", sha_ct),
                ("verify_message", verify),
            ],
        ),
    ];
    println!();
    println!("| one direction, side by side | measured | known parts | rest |");
    println!("|---|---|---|---|");
    for (name, m, parts) in &rows {
        let sum: f64 = parts.iter().map(|p| p.1).sum();
        let detail: Vec<String> = parts.iter().map(|(n, v)| format!("{n} {v:.2}")).collect();
        println!(
            "| {name} | {} | {} ({}) | {} |",
            us(*m),
            us(sum),
            detail.join("; "),
            us(m - sum)
        );
    }
    println!(
        "| (encrypt + decrypt measured apart vs together) | {} vs {} | | |",
        us(enc + dec),
        us(one_way)
    );

    // The DH step.
    let step = alternating - one_way;
    let (alt_enc, alt_dec) = (get("alternating/encrypt"), get("alternating/decrypt"));
    println!();
    println!("| DH ratchet step (alternating − one direction) | cost | ratio |");
    println!("|---|---|---|");
    println!("| measured step | {} | |", us(step));
    println!(
        "| goal's allowance: 1 keygen + 1 DH | {} | {:.3}× |",
        us(keygen + dh),
        step / (keygen + dh)
    );
    println!(
        "| as implemented: 1 keygen + 2 DH + 2 HKDF-64 (receiving and sending half) | {} | {:.3}× |",
        us(keygen + 2.0 * dh + 2.0 * hkdf64),
        step / (keygen + 2.0 * dh + 2.0 * hkdf64)
    );
    println!(
        "| alternating encrypt / decrypt apart (one direction: {} / {}) | {} / {} | |",
        us(enc),
        us(dec),
        us(alt_enc),
        us(alt_dec)
    );

    println!();
    println!("| primitive | cost |");
    println!("|---|---|");
    for (label, name) in [
        ("X25519 key generation (rng + public key)", "x25519_keygen"),
        ("X25519 public key from a secret", "x25519_public_key"),
        ("X25519 DH", "x25519_dh"),
        (
            "ML-KEM-768 encapsulation key check (decode, modulus check, H(ek))",
            "kem_check_key",
        ),
        ("ML-KEM-768 encaps (parsed key)", "kem_encaps"),
        (
            "ML-KEM-768 key check + encaps (= FIPS 203 Encaps with input check)",
            "kem_check_key_encaps",
        ),
        (
            "kogge::crypto::kem_encapsulate_deterministic",
            "kogge_kem_encapsulate",
        ),
        ("ML-KEM-768 decaps (expanded key)", "kem_decaps"),
        (
            "ML-KEM-768 key pair from the 64-byte seed",
            "kem_expand_seed",
        ),
        (
            "kogge::crypto::kem_decapsulate (seed → key → decaps)",
            "kogge_kem_decapsulate",
        ),
        ("Ed25519 sign, steady envelope", "ed25519_sign"),
        (
            "Ed25519 sign, first envelope (setup in header)",
            "ed25519_sign_first",
        ),
        (
            "kogge::crypto::verify_message, steady envelope",
            "verify_message",
        ),
        (
            "kogge::crypto::verify_message, first envelope",
            "verify_message_first",
        ),
        (
            "ed25519-dalek verify_strict, steady envelope (reference)",
            "ed25519_verify_strict",
        ),
        (
            "kogge::crypto::verifying_key (Ed25519 key checks)",
            "ed25519_key_check",
        ),
        ("HMAC-SHA256 (32-byte key, 1 byte)", "hmac_sha256"),
        ("HKDF-SHA256 → 44 B (message keys)", "hkdf_44"),
        ("HKDF-SHA256 → 64 B (KDF_RK)", "hkdf_64"),
        ("setup KDF (4 SHA-256 + HKDF → 32 B)", "setup_kdf"),
        ("ChaCha20-Poly1305 encrypt, bare", "aead_encrypt"),
        ("ChaCha20-Poly1305 decrypt, bare", "aead_decrypt"),
        ("kogge::crypto::aead_seal", "kogge_aead_seal"),
        ("kogge::crypto::aead_open", "kogge_aead_open"),
        ("SHA-256 of the ciphertext", "sha256_ciphertext"),
        (
            "UnverifiedEnvelope::decode, steady envelope",
            "envelope_decode",
        ),
        ("Content::encode_padded", "content_encode"),
        ("Content::decode", "content_decode"),
        ("ReplayWindow new + accept", "replay_accept"),
        (
            "ReplayWindow accept, window full (10,000 ids)",
            "replay_accept_full",
        ),
        (
            "DeviceCertificate + EnvelopeHeader clone",
            "clone_cert_header",
        ),
        ("PrekeyBundle::decode (one-time prekey)", "bundle_decode"),
    ] {
        println!("| {label} | {} |", us(get(name)));
    }
}

/// The size of `Account::save`'s blob for Alice, who knows the device lists of 10
/// contacts (one device each) and has sessions with the first `sessions` of them: just
/// set up (awaiting the first reply) or `established` (one message each way). Then the
/// first contact sends `extra` more messages, of which Alice receives all or, with
/// `skip`, only the last (so she keeps `extra − 1` skipped message keys).
fn saved_size(sessions: usize, established: bool, extra: usize, skip: bool) -> usize {
    let mut rng = ChaCha20Rng::from_seed([41; 32]);
    let mut alice = user(&mut rng, "alice@one.example");
    let mut contacts: Vec<User> = (0..10)
        .map(|i| user(&mut rng, &format!("contact{i}@two.example")))
        .collect();
    for c in &mut contacts {
        alice
            .account
            .update_device_list(c.list.clone())
            .expect("contact list");
        c.account
            .update_device_list(alice.list.clone())
            .expect("alice's list");
    }
    let content = text();
    let mut clock = Clock(0);
    for c in contacts.iter_mut().take(sessions) {
        let now = clock.tick();
        alice
            .account
            .add_bundle(&bundle(&c.account, Some(0)), now, &mut rng)
            .expect("add_bundle");
        if established {
            let sent = alice.account.encrypt(&c.address, &content, now, &mut rng);
            let first = only_envelope(sent.expect("encrypt"));
            c.account.decrypt(first, now, &mut rng).expect("decrypt");
            let sent = c.account.encrypt(&alice.address, &content, now, &mut rng);
            let reply = only_envelope(sent.expect("encrypt"));
            alice
                .account
                .decrypt(reply, now, &mut rng)
                .expect("decrypt");
        }
    }
    let more: Vec<(Bytes, UnixMillis)> = (0..extra)
        .map(|_| {
            let now = clock.tick();
            let sent = contacts[0]
                .account
                .encrypt(&alice.address, &content, now, &mut rng);
            (only_envelope(sent.expect("encrypt")), now)
        })
        .collect();
    let keep = if skip { extra.saturating_sub(1) } else { 0 };
    for (envelope, now) in more.into_iter().skip(keep) {
        alice
            .account
            .decrypt(envelope, now, &mut rng)
            .expect("decrypt");
    }
    let key = Secret::new([9; 32]);
    let blob = alice.account.save(&key, &mut rng);
    if let Err(e) = Account::restore(&blob, &key) {
        println!("(warning: the saved blob does not restore: {e})");
    }
    blob.len()
}

/// State size per session: the saved blob (`Account::save`) for 0, 1 and 10 sessions,
/// and an in-memory estimate from the struct layout.
fn state_size() {
    let base = saved_size(0, false, 0, false);
    let (await1, await10) = (
        saved_size(1, false, 0, false),
        saved_size(10, false, 0, false),
    );
    let (est1, est10) = (
        saved_size(1, true, 0, false),
        saved_size(10, true, 0, false),
    );
    let more = saved_size(10, true, 1, false);
    let skipped = saved_size(10, true, 11, true);
    println!();
    println!(
        "### State size per session: `Account::save` blob (Alice knows 10 contacts' device lists; \
         one device each)"
    );
    println!();
    println!("| account | blob bytes | per session |");
    println!("|---|---|---|");
    println!("| 0 sessions | {base} | |");
    println!(
        "| 1 session, awaiting the first reply (setup kept) | {await1} | {} |",
        await1 - base
    );
    println!(
        "| 10 sessions, awaiting the first reply | {await10} | {:.0} (10 − 1) / 9 |",
        (await10 - await1) as f64 / 9.0
    );
    println!(
        "| 1 session, established (one message each way) | {est1} | {} |",
        est1 - base
    );
    println!(
        "| 10 sessions, established | {est10} | {:.0} (10 − 1) / 9 |",
        (est10 - est1) as f64 / 9.0
    );
    println!(
        "| 10 established + 1 more message received (replay window entry) | {more} | +{} |",
        more - est10
    );
    println!(
        "| 10 established + 11 sent, only the last received (10 skipped keys) | {skipped} | +{:.0} per skipped key |",
        (skipped - more) as f64 / 10.0
    );

    // Mirrors of the private types, with the same field types (src/session/ratchet.rs
    // `Ratchet`, `SkippedKey`; src/session/mod.rs `Session`, `SequenceTracker`).
    type SkippedKey = (Secret<32>, UnixMillis, u64);
    type Ratchet = (
        (Secret<32>, Secret<32>, [u8; 32], Option<[u8; 32]>),
        (Option<Secret<32>>, u32, u32, Option<Secret<32>>, u32),
        BTreeMap<([u8; 32], u32), SkippedKey>,
        u64,
    );
    type Session = (
        Ratchet,
        [u8; 32],
        Option<SessionSetup>,
        u64,
        (u64, BTreeSet<u64>),
        IdentityKey,
        UnixMillis,
    );
    let inline = size_of::<Session>();
    // Four boxed 32-byte secrets (root, sending, receiving chain, ratchet private key).
    let heap = 4 * 32;
    let key = size_of::<(Address, DeviceId)>() + size_of::<Vec<Session>>();
    println!(
        "| in memory (ESTIMATE from the struct layout): Session {inline} inline + 4 boxed secrets \
         {heap} + map key and Vec {key}, before allocator overhead | ≈ {} | |",
        inline + heap + key
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let samples = samples();
    let mut ops = Vec::new();
    setup_ops(&mut ops);
    steady_ops(&mut ops);
    primitive_ops(&mut ops, &samples);
    run_criterion(&mut c, &mut ops);
    c.final_summary();
    // The summary is a measurement, not a test: skip it under `cargo test --benches`
    // (criterion's test mode, which runs each benchmark once) and on `--list`.
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| a == "--test" || a == "--list")
        && std::env::var_os("KOGGE_BENCH_NO_SUMMARY").is_none();
    if benchmarking {
        summary(&mut ops, &samples);
    }
}

//! Group benchmarks (SPEC.md 18, 19): one group message and one removal at 2, 10, 100 and
//! 1,000 members.
//!
//! `cargo bench --bench group` runs:
//! * `group_message/seal/N`: a member device seals one group message (256-byte text):
//!   encrypted once, signed once, whatever N;
//! * `group_message/open/N`: one receiving device opens one (signature check, membership,
//!   chain step, AEAD); every member device does this once per message;
//! * `group_removal/make/N`, `order/N`, `apply/N`: the removing admin makes the change, the
//!   sequencer checks and countersigns it, a member checks and applies it (each holds the
//!   state of N members, whose hash every change commits to);
//! * `group_removal/handover`: one sender key handed to one member device over an existing
//!   end-to-end session (a new chain, the session message that carries it as content,
//!   opening it, accepting the key). After a removal each remaining
//!   device makes a new chain and hands it to each of the other remaining devices, so per
//!   device a removal costs `apply + (N − 2) × handover` (and group-wide N times that).
//!
//! The providers' fan-out of group messages (SPEC.md 20) is measured by
//! `cargo bench --bench group_fanout`.

// Benchmarks measure wall-clock time and stop loudly when a fixture cannot be built.
#![allow(clippy::disallowed_methods, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use kogge::UnixMillis;
use kogge::address::{Address, Domain};
use kogge::envelope::{Content, MessageId, Text};
use kogge::group::{
    GroupAction, GroupChange, GroupEnvelope, GroupMember, GroupReceiver, GroupRole, GroupSender,
    GroupState, Sequencer,
};
use kogge::identity::{Device, DeviceKeyPair, DeviceList, IdentityKeyPair, ProviderKeyPair};
use kogge::limits::MAX_GROUP_CHANGE_MEMBERS;
use kogge::session::Account;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T: UnixMillis = UnixMillis(1_800_000_000_000);
const YEAR: u64 = 365 * 24 * 3600 * 1000;
const SIZES: [usize; 4] = [2, 10, 100, 1000];

struct User {
    identity: IdentityKeyPair,
    device: Device,
}

fn user(rng: &mut ChaCha20Rng, i: usize) -> User {
    let identity = IdentityKeyPair::generate(rng);
    let address = Address::parse(&format!("member{i}@p{}.example", i % 7)).expect("address");
    let device = Device::new(
        &identity,
        address,
        DeviceKeyPair::generate(rng),
        UnixMillis(T.0 - YEAR),
        UnixMillis(T.0 + YEAR),
    )
    .expect("device");
    User { identity, device }
}

fn member(u: &User) -> GroupMember {
    GroupMember {
        address: u.device.address().clone(),
        identity: u.identity.public(),
        role: GroupRole::Member,
    }
}

/// A group of `n` members created by member 0 (the only admin), with its sequencer key.
struct Fixture {
    users: Vec<User>,
    sequencer: ProviderKeyPair,
    state: GroupState,
}

fn fixture(n: usize) -> Fixture {
    let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
    let users: Vec<User> = (0..n).map(|i| user(&mut rng, i)).collect();
    let sequencer = ProviderKeyPair::generate(&mut rng);
    let seq = Sequencer {
        domain: Domain::parse("p0.example").expect("domain"),
        key: sequencer.public(),
    };
    let first: Vec<GroupMember> = users[1..n.min(MAX_GROUP_CHANGE_MEMBERS)]
        .iter()
        .map(member)
        .collect();
    let create =
        GroupState::create_change(&users[0].device, [1; 16], "bench".into(), seq, first, T)
            .expect("create");
    let mut state = GroupState::create(&create.sequence(&sequencer)).expect("created");
    for chunk in users[n.min(MAX_GROUP_CHANGE_MEMBERS)..].chunks(MAX_GROUP_CHANGE_MEMBERS) {
        let add = state
            .change(
                &users[0].device,
                GroupAction::Add(chunk.iter().map(member).collect()),
                T,
            )
            .expect("add");
        state = state.apply(&add.sequence(&sequencer)).expect("added");
    }
    assert_eq!(state.len(), n);
    Fixture {
        users,
        sequencer,
        state,
    }
}

fn text() -> Content {
    Content::Text(Text::plain("x".repeat(256)))
}

fn bench_messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_message");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let f = fixture(n);
        let mut rng = ChaCha20Rng::seed_from_u64(99);
        let sender_dev = &f.users[0].device;
        let mut sender = GroupSender::new(&f.state, sender_dev, 1, &mut rng).expect("sender");
        g.bench_with_input(BenchmarkId::new("seal", n), &n, |b, _| {
            b.iter(|| {
                let id = MessageId::random(&mut rng);
                black_box(
                    sender
                        .seal(sender_dev, &f.state, &text(), id, T)
                        .expect("seal"),
                )
            })
        });
        let receiver_cert = sender_dev.certificate().clone();
        g.bench_with_input(BenchmarkId::new("open", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut s = GroupSender::new(&f.state, sender_dev, 2, &mut rng).expect("sender");
                let mut r = GroupReceiver::new(f.state.id());
                r.add_sender_key(&f.state, &receiver_cert, s.sender_key())
                    .expect("key");
                let msgs: Vec<Bytes> = (0..iters)
                    .map(|_| {
                        let id = MessageId::random(&mut rng);
                        s.seal(sender_dev, &f.state, &text(), id, T).expect("seal")
                    })
                    .collect();
                let start = Instant::now();
                for m in msgs {
                    let env = GroupEnvelope::decode(m).expect("decode");
                    black_box(r.open(&f.state, &env, &receiver_cert).expect("open"));
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn bench_removal(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_removal");
    for n in SIZES {
        let f = fixture(n);
        let admin = &f.users[0].device;
        let removed = f.users[n - 1].device.address().clone();
        let action = || GroupAction::Remove(vec![removed.clone()]);
        g.bench_with_input(BenchmarkId::new("make", n), &n, |b, _| {
            b.iter(|| black_box(f.state.change(admin, action(), T).expect("make")))
        });
        let change = f.state.change(admin, action(), T).expect("make");
        g.bench_with_input(BenchmarkId::new("order", n), &n, |b, _| {
            b.iter(|| black_box(f.state.order(&change, &f.sequencer).expect("order")))
        });
        let ordered = change.sequence(&f.sequencer);
        let bytes = ordered.encoded().clone();
        g.bench_with_input(BenchmarkId::new("apply", n), &n, |b, _| {
            b.iter(|| {
                let c = GroupChange::decode(bytes.clone()).expect("decode");
                black_box(f.state.apply(&c).expect("apply"))
            })
        });
    }

    // One sender-key handover over an end-to-end session, between two members.
    let f = fixture(2);
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (a, b) = (&f.users[0], &f.users[1]);
    let list = |u: &User| {
        DeviceList::sign(
            &u.identity,
            u.device.address(),
            1,
            T,
            &[u.device.certificate().clone()],
        )
        .expect("list")
    };
    let rebuild = |u: &User| {
        let (s, x) = u.device.keys().secret_bytes();
        Device::from_parts(
            DeviceKeyPair::from_secret_bytes(&s, &x),
            u.device.certificate().clone(),
        )
        .expect("device")
    };
    let mut alice = Account::new(rebuild(a), list(a), T, &mut rng).expect("account");
    let mut bob = Account::new(rebuild(b), list(b), T, &mut rng).expect("account");
    alice.update_device_list(list(b)).expect("list");
    bob.update_device_list(list(a)).expect("list");
    bob.replenish_prekeys(T, &mut rng);
    let one_time = bob.prekeys().published().one_time_prekeys[0].id();
    let bundle = bob.prekey_bundle(Some(one_time)).expect("bundle");
    alice.add_bundle(&bundle, T, &mut rng).expect("session");
    // The first message sets the session up; the handovers below are steady-state.
    let first = alice
        .encrypt(b.device.address(), &text(), T, &mut rng)
        .expect("first");
    for e in first.envelopes {
        bob.decrypt(e.envelope, T, &mut rng).expect("setup");
    }
    let mut chain = 10u32;
    let mut receiver = GroupReceiver::new(f.state.id());
    // Every handover a millisecond later: the receiver's replay window (SPEC.md 8) would
    // refuse thousands of messages with one timestamp once it is full.
    let mut now = T;
    g.bench_function("handover", |bench| {
        bench.iter(|| {
            chain += 1;
            now = UnixMillis(now.0 + 1);
            let sender = GroupSender::new(&f.state, &a.device, chain, &mut rng).expect("chain");
            let content = Content::GroupSenderKey(Box::new(sender.sender_key().clone()));
            let sent = alice
                .encrypt(b.device.address(), &content, now, &mut rng)
                .expect("encrypt");
            for e in sent.envelopes {
                let got = bob.decrypt(e.envelope, now, &mut rng).expect("decrypt");
                let Content::GroupSenderKey(key) = got.content else {
                    panic!("not a sender key")
                };
                black_box(
                    receiver
                        .add_sender_key(&f.state, a.device.certificate(), &key)
                        .expect("accept"),
                );
            }
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_messages(&mut c);
    bench_removal(&mut c);
    c.final_summary();
}

//! Property tests of sessions under a hostile network: several users (one with two
//! devices) send in random interleavings while the network drops, duplicates and
//! reorders envelopes. Sessions are set up lazily, so simultaneous setups happen.
//!
//! Checked: every envelope that arrives is either decrypted exactly once with the right
//! content, or refused with a documented duplicate error (`replay` or `duplicate`);
//! nothing else fails; and afterwards every pair of devices can still talk in both
//! directions (no permanent desynchronisation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use kogge::UnixMillis;
use kogge::address::Address;
use kogge::envelope::{Content, MessageId, Text};
use kogge::identity::{Device, DeviceId, DeviceKeyPair, DeviceList, IdentityKeyPair};
use kogge::session::{Account, PrekeyBundle, SessionError};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const NOW: UnixMillis = UnixMillis(1_760_000_000_000);
const YEAR: u64 = 365 * 24 * 3600 * 1000;

struct Net {
    rng: ChaCha20Rng,
    accounts: Vec<Account>,
    /// One-time prekey ids already handed out per device (as its provider would).
    handed_out: HashMap<DeviceId, HashSet<u32>>,
    /// Envelopes in flight: (recipient device index, message id, text, bytes).
    in_flight: Vec<(usize, MessageId, String, Bytes)>,
    /// What each device decrypted: (message id) -> text.
    received: Vec<HashMap<MessageId, String>>,
    /// Envelopes the network dropped (never delivered).
    dropped: HashSet<(usize, MessageId)>,
    /// Every (recipient device, message id) ever put on the network.
    delivered_or_dropped: HashSet<(usize, MessageId)>,
    sent_count: usize,
}

fn build(seed: u64) -> Net {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut lists = Vec::new();
    let mut devices = Vec::new();
    for (addr, n) in [
        ("alice@one.example", 1),
        ("bob@two.example", 2),
        ("carol@three.example", 1),
    ] {
        let id = IdentityKeyPair::generate(&mut rng);
        let a = Address::parse(addr).unwrap();
        let devs: Vec<Device> = (0..n)
            .map(|_| {
                Device::new(
                    &id,
                    a.clone(),
                    DeviceKeyPair::generate(&mut rng),
                    NOW.saturating_sub(YEAR),
                    NOW.saturating_add(YEAR),
                )
                .unwrap()
            })
            .collect();
        let certs: Vec<_> = devs.iter().map(|d| d.certificate().clone()).collect();
        let list = DeviceList::sign(&id, &a, 1, NOW, &certs).unwrap();
        for d in devs {
            devices.push((d, list.clone()));
        }
        lists.push(list);
    }
    let mut accounts: Vec<Account> = devices
        .into_iter()
        .map(|(d, own)| {
            let mut acc = Account::new(d, own, NOW, &mut rng).unwrap();
            acc.replenish_prekeys(NOW, &mut rng);
            acc
        })
        .collect();
    for acc in &mut accounts {
        for l in &lists {
            if l.address() != acc.device().address() {
                acc.update_device_list(l.clone()).unwrap();
            }
        }
    }
    let n = accounts.len();
    Net {
        rng,
        accounts,
        handed_out: HashMap::new(),
        in_flight: Vec::new(),
        received: vec![HashMap::new(); n],
        dropped: HashSet::new(),
        delivered_or_dropped: HashSet::new(),
        sent_count: 0,
    }
}

impl Net {
    fn index_of(&self, device: DeviceId) -> usize {
        self.accounts
            .iter()
            .position(|a| a.device().id() == device)
            .unwrap()
    }

    /// The provider hands out a bundle with a one-time prekey it never handed out before.
    fn bundle(&mut self, device: DeviceId) -> PrekeyBundle {
        let i = self.index_of(device);
        let given = self.handed_out.entry(device).or_default();
        let otk = self.accounts[i]
            .prekeys()
            .published()
            .one_time_prekeys
            .iter()
            .map(|p| p.id())
            .find(|id| !given.contains(id));
        if let Some(id) = otk {
            given.insert(id);
        }
        let b = self.accounts[i].prekey_bundle(otk).unwrap();
        PrekeyBundle::decode(b.encode()).unwrap()
    }

    fn send(&mut self, from: usize, to: &Address, text: String) {
        let content = Content::Text(Text::plain(text.clone()));
        let sent = loop {
            match self.accounts[from].encrypt(to, &content, NOW, &mut self.rng) {
                Ok(s) => break s,
                Err(SessionError::NeedBundles(missing)) => {
                    for (_, device) in missing {
                        let b = self.bundle(device);
                        self.accounts[from]
                            .add_bundle(&b, NOW, &mut self.rng)
                            .unwrap();
                    }
                }
                Err(e) => panic!("encrypt: {e}"),
            }
        };
        self.sent_count += 1;
        for e in sent.envelopes {
            let to_i = self.index_of(e.device);
            self.delivered_or_dropped.insert((to_i, sent.message_id));
            self.in_flight
                .push((to_i, sent.message_id, text.clone(), e.envelope));
        }
    }

    fn deliver(&mut self, pick: usize, duplicate: bool) {
        if self.in_flight.is_empty() {
            return;
        }
        let k = pick % self.in_flight.len();
        let (to, id, text, bytes) = if duplicate {
            self.in_flight[k].clone()
        } else {
            self.in_flight.swap_remove(k)
        };
        match self.accounts[to].decrypt(bytes, NOW, &mut self.rng) {
            Ok(r) => {
                assert_eq!(r.message_id, id);
                assert_eq!(r.content, Content::Text(Text::plain(text.clone())));
                let prev = self.received[to].insert(id, text);
                assert!(
                    prev.is_none(),
                    "message {id} decrypted twice on device {to}"
                );
            }
            Err(e) => {
                assert!(
                    matches!(e.code(), "replay" | "duplicate"),
                    "unexpected error {e:?} for an honest envelope"
                );
                assert!(
                    self.received[to].contains_key(&id),
                    "refused a message never decrypted: {e:?}"
                );
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Send { from: usize, to: usize },
    Deliver { pick: usize },
    Duplicate { pick: usize },
    Drop { pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..4, 0usize..3).prop_map(|(from, to)| Step::Send { from, to }),
        4 => any::<usize>().prop_map(|pick| Step::Deliver { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Duplicate { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Drop { pick }),
    ]
}

const USERS: [&str; 3] = [
    "alice@one.example",
    "bob@two.example",
    "carol@three.example",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn sessions_survive_loss_duplication_and_reordering(seed in any::<u64>(), steps in proptest::collection::vec(step(), 10..60)) {
        let mut net = build(seed);
        for (n, s) in steps.iter().enumerate() {
            match *s {
                Step::Send { from, to } => {
                    let to = Address::parse(USERS[to]).unwrap();
                    net.send(from, &to, format!("msg {n} from {from}"));
                }
                Step::Deliver { pick } => net.deliver(pick, false),
                Step::Duplicate { pick } => net.deliver(pick, true),
                Step::Drop { pick } => {
                    if !net.in_flight.is_empty() {
                        let k = pick % net.in_flight.len();
                        let (to, id, _, _) = net.in_flight.swap_remove(k);
                        net.dropped.insert((to, id));
                    }
                }
            }
        }
        // The network heals: everything still in flight arrives, in random order.
        while !net.in_flight.is_empty() {
            let pick = net.rng.next_u32() as usize;
            net.deliver(pick, false);
        }
        // Every envelope that was not dropped arrived and was decrypted exactly once
        // (`deliver` asserts "once"); what was dropped is missing unless a duplicate of
        // it got through first.
        for (i, got) in net.received.iter().enumerate() {
            for (to, id) in &net.delivered_or_dropped {
                if *to == i && !net.dropped.contains(&(*to, *id)) {
                    prop_assert!(got.contains_key(id), "message {} never reached device {}", id, i);
                }
            }
        }
        // No permanent desynchronisation: every device can reach every other user, and
        // each recipient device decrypts it.
        let n = net.accounts.len();
        for from in 0..n {
            for to_user in USERS {
                let to = Address::parse(to_user).unwrap();
                net.send(from, &to, format!("final from {from} to {to_user}"));
                while !net.in_flight.is_empty() {
                    let k = net.in_flight.len() - 1;
                    let (to_i, id, text, bytes) = net.in_flight.swap_remove(k);
                    let r = net.accounts[to_i].decrypt(bytes, NOW, &mut net.rng);
                    let r = r.unwrap_or_else(|e| panic!("desynchronised: device {from} -> device {to_i}: {e:?}"));
                    prop_assert_eq!(r.message_id, id);
                    prop_assert_eq!(r.content, Content::Text(Text::plain(text)));
                }
            }
        }
    }
}

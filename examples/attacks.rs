//! A dishonest provider against the end-to-end layer, in one process.
//!
//! Three providers (`one.example`, `two.example`, `three.example`) are modelled as what
//! a provider is to the end-to-end layer: mailboxes of opaque envelopes, a directory of
//! signed device lists, and a store of published prekeys that hands out each one-time
//! prekey once. Users on each talk over end-to-end sessions (post-quantum-hybrid setup,
//! Double Ratchet); Bob has two devices. Then a dishonest provider drops, tampers,
//! misroutes, replays, forges and plants a device, and each attempt is detected or
//! refused with its SPEC.md error code. The envelopes are byte for byte those the real
//! providers carry (`examples/federation.rs` runs them over QUIC); here the providers are
//! in memory so that every attack can be staged directly on the bytes.
//!
//! Exits 0 only if every message arrived exactly once and every attack was caught.
//!
//! Run: `cargo run --release --example attacks` (set `KOGGE_SEED` to vary the keys).

// An example program, not the core: it may read the clock to timestamp and time things.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kogge::UnixMillis;
use kogge::address::Address;
use kogge::envelope::{Content, MessageId, Receipt, ReceiptKind, Text};
use kogge::identity::{Device, DeviceId, DeviceKeyPair, DeviceList, IdentityKeyPair, SafetyNumber};
use kogge::session::{Account, AccountEvent, PrekeyBundle, Received, SessionError};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A provider, as the end-to-end layer sees it.
#[derive(Default)]
struct Provider {
    mailboxes: HashMap<DeviceId, Vec<Bytes>>,
    /// Signed device lists of its users.
    lists: BTreeMap<Address, DeviceList>,
    /// Bundles' building blocks per device, and the one-time prekeys already handed out.
    handed_out: HashMap<DeviceId, HashSet<u32>>,
    stored_bytes: usize,
}

struct World {
    rng: ChaCha20Rng,
    now: UnixMillis,
    providers: BTreeMap<String, Provider>,
    clients: Vec<(String, Account)>,
    /// (message id, recipient device) of every envelope sent.
    sent: Vec<(MessageId, DeviceId)>,
    /// (message id, recipient device) of every message received, with a count.
    received: HashMap<(MessageId, DeviceId), usize>,
    encrypt_us: Vec<f64>,
    decrypt_us: Vec<f64>,
    /// Envelopes a provider deliberately dropped.
    dropped: HashSet<(MessageId, DeviceId)>,
}

impl World {
    fn client(&self, name: &str) -> usize {
        self.clients
            .iter()
            .position(|(n, _)| n == name)
            .expect("client")
    }

    fn provider_of(&mut self, address: &Address) -> &mut Provider {
        self.providers
            .get_mut(address.domain_str())
            .expect("provider")
    }

    /// What the recipient's provider hands out: a bundle with a fresh one-time prekey.
    fn fetch_bundle(&mut self, address: &Address, device: DeviceId) -> PrekeyBundle {
        let owner = self
            .clients
            .iter()
            .position(|(_, a)| a.device().id() == device)
            .expect("device");
        let published = self.clients[owner].1.prekeys().published();
        let given = self
            .provider_of(address)
            .handed_out
            .entry(device)
            .or_default();
        let otk = published
            .one_time_prekeys
            .iter()
            .map(|p| p.id())
            .find(|id| !given.contains(id));
        if let Some(id) = otk {
            given.insert(id);
        }
        let bytes = self.clients[owner].1.prekey_bundle(otk).unwrap().encode();
        // The fetching device verifies everything it gets from a provider.
        PrekeyBundle::decode(bytes).expect("bundle")
    }

    fn send(&mut self, from: &str, to: &Address, content: &Content) -> MessageId {
        let i = self.client(from);
        let sent = loop {
            let t = Instant::now();
            match self.clients[i]
                .1
                .encrypt(to, content, self.now, &mut self.rng)
            {
                Ok(s) => {
                    self.encrypt_us.push(t.elapsed().as_secs_f64() * 1e6);
                    break s;
                }
                Err(SessionError::NeedBundles(missing)) => {
                    for (address, device) in missing {
                        let b = self.fetch_bundle(&address, device);
                        self.clients[i]
                            .1
                            .add_bundle(&b, self.now, &mut self.rng)
                            .expect("session");
                        println!(
                            "    {from}: new session with {address}/{} (X25519 + ML-KEM-768)",
                            &device.to_string()[..8]
                        );
                    }
                }
                Err(e) => panic!("encrypt: {e}"),
            }
        };
        for e in sent.envelopes {
            self.sent.push((sent.message_id, e.device));
            let p = self.provider_of(&e.recipient);
            p.stored_bytes += e.envelope.len();
            p.mailboxes.entry(e.device).or_default().push(e.envelope);
        }
        sent.message_id
    }

    fn fetch(&mut self, name: &str) -> Vec<Result<Received, SessionError>> {
        let i = self.client(name);
        let (id, addr) = (
            self.clients[i].1.device().id(),
            self.clients[i].1.device().address().clone(),
        );
        let queued = self
            .provider_of(&addr)
            .mailboxes
            .remove(&id)
            .unwrap_or_default();
        let mut out = Vec::new();
        for e in queued {
            let t = Instant::now();
            let r = self.clients[i].1.decrypt(e, self.now, &mut self.rng);
            self.decrypt_us.push(t.elapsed().as_secs_f64() * 1e6);
            if let Ok(m) = &r {
                *self.received.entry((m.message_id, id)).or_default() += 1;
            }
            out.push(r);
        }
        out
    }
}

fn describe(content: &Content) -> String {
    match content {
        Content::Text(t) => format!("\"{}\"", t.body),
        Content::Receipt(r) => format!(
            "{:?} receipt for {} message(s)",
            r.kind,
            r.message_ids.len()
        ),
        _ => "content of a newer version".into(),
    }
}

fn show(name: &str, results: &[Result<Received, SessionError>]) {
    for r in results {
        match r {
            Ok(m) => {
                println!(
                    "    {name} <- {} (device {}, #{}): {}",
                    m.sender,
                    &m.sender_device.to_string()[..8],
                    m.sequence.unwrap_or(0),
                    describe(&m.content)
                );
                if !m.missing.is_empty() {
                    println!(
                        "      ! messages #{:?} from this device have not arrived: the provider dropped or delayed them",
                        m.missing
                    );
                }
            }
            Err(e) => println!("    {name} refused an envelope: {} ({e})", e.code()),
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let seed: u64 = std::env::var("KOGGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let now = UnixMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64,
    );
    let year = 365 * 24 * 3600 * 1000;
    println!(
        "Kogge demo (seed {seed}): three providers, four devices, end-to-end sessions, in one process."
    );
    println!(
        "Providers store opaque envelopes, device lists and prekeys; all checks happen on devices.\n"
    );

    // 1. Identities, devices, signed device lists published at each user's provider.
    let mut providers: BTreeMap<String, Provider> = ["one.example", "two.example", "three.example"]
        .into_iter()
        .map(|d| (d.to_owned(), Provider::default()))
        .collect();
    let users = [
        ("alice@one.example", vec!["alice"]),
        ("bob@two.example", vec!["bob-phone", "bob-laptop"]),
        ("carol@three.example", vec!["carol"]),
    ];
    let mut identities = HashMap::new();
    let mut clients = Vec::new();
    for (addr, names) in &users {
        let address = Address::parse(addr).unwrap();
        let identity = IdentityKeyPair::generate(&mut rng);
        let devices: Vec<Device> = names
            .iter()
            .map(|_| {
                Device::new(
                    &identity,
                    address.clone(),
                    DeviceKeyPair::generate(&mut rng),
                    now.saturating_sub(1000),
                    now.saturating_add(year),
                )
                .unwrap()
            })
            .collect();
        let certs: Vec<_> = devices.iter().map(|d| d.certificate().clone()).collect();
        let list = DeviceList::sign(&identity, &address, 1, now, &certs).unwrap();
        providers
            .get_mut(address.domain_str())
            .unwrap()
            .lists
            .insert(address.clone(), list.clone());
        for (name, d) in names.iter().zip(devices) {
            println!("  {name:<10} {addr:<20} device {}", d.id());
            let mut account = Account::new(d, list.clone(), now, &mut rng).unwrap();
            account.replenish_prekeys(now, &mut rng);
            clients.push((name.to_string(), account));
        }
        identities.insert(address, identity);
    }
    // Every device fetches its contacts' device lists (trust on first use).
    let all_lists: Vec<DeviceList> = providers
        .values()
        .flat_map(|p| p.lists.values().cloned())
        .collect();
    for (_, acc) in &mut clients {
        for l in &all_lists {
            if l.address() != acc.device().address() {
                acc.update_device_list(l.clone()).unwrap();
            }
        }
    }
    let mut w = World {
        rng,
        now,
        providers,
        clients,
        sent: Vec::new(),
        received: HashMap::new(),
        encrypt_us: Vec::new(),
        decrypt_us: Vec::new(),
        dropped: HashSet::new(),
    };
    let alice = Address::parse("alice@one.example").unwrap();
    let bob = Address::parse("bob@two.example").unwrap();
    let carol = Address::parse("carol@three.example").unwrap();

    // 2. Out-of-band verification: Alice and Bob compare safety numbers.
    let (a_id, b_id) = (identities[&alice].public(), identities[&bob].public());
    let from_alice = SafetyNumber::new(&a_id, &alice, &b_id, &bob);
    let from_bob = SafetyNumber::new(&b_id, &bob, &a_id, &alice);
    println!("\nSafety number alice <-> bob: {}", from_alice.grouped());
    let qr_ok = from_alice.verify_scanned(&from_bob.qr_payload()).is_ok();
    println!(
        "  Alice scans Bob's QR code: {}",
        if qr_ok { "match" } else { "MISMATCH" }
    );

    // 3. Conversations across providers.
    println!(
        "\nalice@one -> bob@two (both of Bob's devices; Bob is offline, prekeys make that work):"
    );
    let hello = w.send(
        "alice",
        &bob,
        &Content::Text(Text::plain("Hi Bob, can you ship 40 crates by Friday?")),
    );
    show("bob-phone", &w.fetch("bob-phone"));
    show("bob-laptop", &w.fetch("bob-laptop"));

    println!("\nbob@two (phone) -> alice@one, a reply; his laptop gets a copy:");
    let reply = Content::Text(Text {
        media_type: "text/plain".into(),
        body: "Yes: 40 crates, Friday, 12% deposit.".into(),
        reply_to: Some(hello),
    });
    let reply_id = w.send("bob-phone", &alice, &reply);
    show("alice", &w.fetch("alice"));
    show("bob-laptop", &w.fetch("bob-laptop"));

    println!(
        "\nalice -> bob: read receipt (end-to-end authenticated, so no provider can forge it):"
    );
    w.send(
        "alice",
        &bob,
        &Content::Receipt(Receipt {
            kind: ReceiptKind::Read,
            message_ids: vec![reply_id],
        }),
    );
    show("bob-phone", &w.fetch("bob-phone"));
    show("bob-laptop", &w.fetch("bob-laptop"));

    println!("\ncarol@three <-> alice@one:");
    w.send(
        "carol",
        &alice,
        &Content::Text(Text::plain(
            "Alice, the invoice is attached to our next call.",
        )),
    );
    show("alice", &w.fetch("alice"));
    w.send(
        "alice",
        &carol,
        &Content::Text(Text::plain("Thanks Carol!")),
    );
    show("carol", &w.fetch("carol"));

    // 4. A dishonest provider: two.example holds Bob's mail.
    println!("\nA dishonest provider (two.example) attacks Bob's mail:");
    let mut attacks = 0;
    let mut caught = 0;
    let phone = w.client("bob-phone");
    let phone_id = w.clients[phone].1.device().id();
    let laptop_id = w.clients[w.client("bob-laptop")].1.device().id();

    // a) Drops a message: the next one reveals the gap.
    let dropped = w.send(
        "alice",
        &bob,
        &Content::Text(Text::plain("Price is 1,000 EUR.")),
    );
    w.providers
        .get_mut("two.example")
        .unwrap()
        .mailboxes
        .get_mut(&phone_id)
        .unwrap()
        .clear();
    w.dropped.insert((dropped, phone_id));
    w.send(
        "alice",
        &bob,
        &Content::Text(Text::plain("Please confirm the price.")),
    );
    attacks += 1;
    let r = w.fetch("bob-phone");
    show("bob-phone", &r);
    if r.iter()
        .any(|m| m.as_ref().is_ok_and(|m| !m.missing.is_empty()))
    {
        caught += 1;
        println!("  {:<52} detected: gap in the sequence", "drops a message");
    }
    // Keep an honest envelope to play with; the laptop's copies stay queued.
    let honest = w.providers["two.example"].mailboxes[&laptop_id][0].clone();
    let mut attack = |w: &mut World, what: &str, bytes: Bytes, target: &str| {
        attacks += 1;
        let i = w.client(target);
        let before = w.received.len();
        let r = w.clients[i].1.decrypt(bytes, w.now, &mut w.rng);
        match r {
            Err(e) => {
                caught += 1;
                println!("  {what:<52} refused: {}", e.code());
            }
            Ok(_) => println!("  {what:<52} ACCEPTED (this is a failure)"),
        }
        assert_eq!(before, w.received.len());
    };
    let n = honest.len();
    let mut tampered = honest.to_vec();
    tampered[n - 80] ^= 0x20;
    attack(
        &mut w,
        "flips a ciphertext byte",
        Bytes::from(tampered),
        "bob-laptop",
    );
    attack(
        &mut w,
        "delivers the laptop's copy to the phone",
        honest.clone(),
        "bob-phone",
    );
    attack(
        &mut w,
        "truncates the envelope",
        honest.slice(..n / 2),
        "bob-laptop",
    );
    let forged = {
        let mut b = honest.to_vec();
        if let Some(pos) = b.windows(17).position(|x| x == b"alice@one.example") {
            b[pos..pos + 17].copy_from_slice(b"mallo@one.example");
        }
        Bytes::from(b)
    };
    attack(
        &mut w,
        "rewrites the sender to mallo@one.example",
        forged,
        "bob-laptop",
    );
    attack(
        &mut w,
        "injects 200 KB of garbage",
        Bytes::from(vec![0x0a; 200 * 1024]),
        "bob-laptop",
    );
    // The laptop reads its honest mail; then the provider replays one of them.
    show("bob-laptop", &w.fetch("bob-laptop"));
    attack(
        &mut w,
        "replays a message the laptop already read",
        honest.clone(),
        "bob-laptop",
    );
    // Plants a device of its own under Bob's name in a bundle it serves to Alice.
    attacks += 1;
    let mut mrng = ChaCha20Rng::seed_from_u64(seed ^ 0xbad);
    let mallory = IdentityKeyPair::generate(&mut mrng);
    let fake = Device::new(
        &mallory,
        bob.clone(),
        DeviceKeyPair::generate(&mut mrng),
        now,
        now.saturating_add(year),
    )
    .unwrap();
    let fake_list =
        DeviceList::sign(&mallory, &bob, 1, now, &[fake.certificate().clone()]).unwrap();
    let fake_account = Account::new(fake, fake_list.clone(), now, &mut mrng).unwrap();
    let a = w.client("alice");
    match w.clients[a]
        .1
        .add_bundle(&fake_account.prekey_bundle(None).unwrap(), now, &mut w.rng)
    {
        Err(e) => {
            caught += 1;
            println!(
                "  {:<52} refused: {}",
                "adds a device of its own to Bob's account",
                e.code()
            );
        }
        Ok(()) => println!("  adds a device ... ACCEPTED (this is a failure)"),
    }
    // Replays Bob's old device list after Bob signed a newer one.
    attacks += 1;
    let old_list = w.providers["two.example"].lists[&bob].clone();
    let certs: Vec<_> = old_list.devices().to_vec();
    let newer = DeviceList::sign(&identities[&bob], &bob, 2, now, &certs).unwrap();
    w.clients[a].1.update_device_list(newer).unwrap();
    match w.clients[a].1.update_device_list(old_list) {
        Err(e) => {
            caught += 1;
            println!(
                "  {:<52} refused: {}",
                "serves Bob's superseded device list",
                e.code()
            );
        }
        Ok(_) => println!("  serves an old list ... ACCEPTED (this is a failure)"),
    }
    // Swaps Bob's identity: Alice's app is told, loudly.
    attacks += 1;
    let events = w.clients[a].1.update_device_list(fake_list).unwrap();
    if events.iter().any(|e| {
        matches!(
            e,
            AccountEvent::Device(kogge::identity::DeviceEvent::IdentityChanged { .. })
        )
    }) {
        caught += 1;
        println!(
            "  {:<52} detected: identity change shown to Alice",
            "replaces Bob's identity key with its own"
        );
    }
    // Alice, warned, keeps the identity she verified with the safety number.
    let bob_list_now = DeviceList::sign(&identities[&bob], &bob, 3, now, &certs).unwrap();
    w.clients[a].1.update_device_list(bob_list_now).unwrap();

    // 5. A backlog: Bob's laptop was offline while Alice sent 200 messages.
    println!("\nBob's laptop comes back online to 200 queued messages:");
    for i in 0..200 {
        w.send(
            "alice",
            &bob,
            &Content::Text(Text::plain(format!("catalogue line {i}"))),
        );
    }
    w.fetch("bob-phone");
    let laptop = w.client("bob-laptop");
    let backlog = w
        .providers
        .get_mut("two.example")
        .unwrap()
        .mailboxes
        .remove(&laptop_id)
        .unwrap_or_default();
    let t = Instant::now();
    let results = w.clients[laptop].1.decrypt_batch(&backlog, now, &mut w.rng);
    let batch_us = t.elapsed().as_secs_f64() * 1e6 / backlog.len().max(1) as f64;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for m in results.into_iter().flatten() {
        *w.received.entry((m.message_id, laptop_id)).or_default() += 1;
    }
    println!(
        "  opened {ok}/{} with batch signature verification, {batch_us:.1} µs per message",
        backlog.len()
    );

    // 6. Exactly-once check and summary.
    let expected: Vec<_> = w.sent.iter().filter(|k| !w.dropped.contains(k)).collect();
    let missing = expected
        .iter()
        .filter(|k| !w.received.contains_key(k))
        .count();
    let duplicated = w.received.values().filter(|n| **n > 1).count();
    let unexpected = w
        .received
        .keys()
        .filter(|k| !w.sent.contains(k) || w.dropped.contains(k))
        .count();
    let stored: usize = w.providers.values().map(|p| p.stored_bytes).sum();
    println!("\nSummary");
    println!("  envelopes sent             {}", w.sent.len());
    println!(
        "  dropped by the provider    {} (detected as a gap)",
        w.dropped.len()
    );
    println!("  delivered exactly once     {}", expected.len() - missing);
    println!("  missing / duplicated       {missing} / {duplicated}");
    println!("  unexpected deliveries      {unexpected}");
    println!("  attacks caught             {caught}/{attacks}");
    println!("  bytes stored by providers  {stored}");
    println!(
        "  encrypt p50 / p99          {:.1} / {:.1} µs per message (all devices)",
        percentile(&mut w.encrypt_us, 0.5),
        percentile(&mut w.encrypt_us, 0.99)
    );
    println!(
        "  decrypt p50 / p99          {:.1} / {:.1} µs (batch: {batch_us:.1} µs)",
        percentile(&mut w.decrypt_us, 0.5),
        percentile(&mut w.decrypt_us, 0.99)
    );
    let ok = missing == 0 && duplicated == 0 && unexpected == 0 && caught == attacks && qr_ok;
    println!(
        "\n{}",
        if ok {
            "OK: every message arrived exactly once; every attack was caught."
        } else {
            "FAILED"
        }
    );
    std::process::exit(if ok { 0 } else { 1 });
}

//! The README's main job, stage 1 (envelope layer, in process).
//!
//! Three providers (`one.example`, `two.example`, `three.example`) are modelled here as
//! mailboxes that store and forward opaque bytes, which is all a provider may ever do
//! with a message. Users on each exchange signed, sealed envelopes; the demo then plays
//! a dishonest provider that tampers, forges, misroutes and replays, and shows each
//! attempt refused with its SPEC.md error code. The QUIC transport and the provider
//! state machines replace the in-memory mailboxes in later releases; the envelopes stay
//! byte-for-byte the same.
//!
//! Exits 0 only if every honest message arrived exactly once and every attack was refused.
//!
//! Run: `cargo run --release --example federation` (set `KOGGE_SEED` to vary the keys).

// An example program, not the core: it may read the clock to timestamp and time things.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kogge::UnixMillis;
use kogge::address::Address;
use kogge::envelope::{
    self, Content, KnownDevices, MessageId, OpenError, Outgoing, Receipt, ReceiptKind,
    ReplayWindow, Text,
};
use kogge::identity::{
    Device, DeviceCertificate, DeviceId, DeviceKeyPair, IdentityKeyPair, SafetyNumber,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A provider as the envelope layer sees it: per-device mailboxes of opaque bytes.
#[derive(Default)]
struct Mailboxes {
    boxes: HashMap<DeviceId, Vec<Bytes>>,
    stored_bytes: usize,
}

/// One user's device with its receive-side state.
struct Client {
    name: String,
    device: Device,
    replay: ReplayWindow,
    received: Vec<(MessageId, Content)>,
}

struct World {
    rng: ChaCha20Rng,
    now: UnixMillis,
    /// Published device certificates, as every provider's directory would serve them.
    directory: BTreeMap<Address, Vec<DeviceCertificate>>,
    providers: BTreeMap<String, Mailboxes>,
    clients: Vec<Client>,
    seal_us: Vec<f64>,
    open_us: Vec<f64>,
    sent: Vec<(MessageId, DeviceId)>,
}

impl World {
    fn known_devices(&self) -> KnownDevices {
        let mut k = KnownDevices::new();
        for certs in self.directory.values() {
            for c in certs {
                k.insert(c.clone());
            }
        }
        k
    }

    fn client(&self, name: &str) -> usize {
        self.clients
            .iter()
            .position(|c| c.name == name)
            .expect("client")
    }

    /// Seals `content` from client `from` to every device of `to` and to the sender's own
    /// other devices, and drops the envelopes into the recipients' providers' mailboxes.
    fn send(&mut self, from: &str, to: &Address, content: &Content) -> MessageId {
        let from_i = self.client(from);
        let message_id = MessageId::random(&mut self.rng);
        let sender_addr = self.clients[from_i].device.address().clone();
        let mut targets: Vec<DeviceCertificate> = self.directory[to].clone();
        if &sender_addr != to {
            let own = self.clients[from_i].device.id();
            targets.extend(
                self.directory[&sender_addr]
                    .iter()
                    .filter(|c| c.device_id() != own)
                    .cloned(),
            );
        }
        for cert in targets {
            let t = Instant::now();
            let sealed = envelope::seal(
                &self.clients[from_i].device,
                &Outgoing {
                    recipient: &cert,
                    message_id,
                    timestamp: self.now,
                    content,
                },
                &mut self.rng,
            )
            .expect("seal");
            self.seal_us.push(t.elapsed().as_secs_f64() * 1e6);
            let provider = self
                .providers
                .get_mut(cert.address().domain_str())
                .expect("provider");
            provider.stored_bytes += sealed.len();
            provider
                .boxes
                .entry(cert.device_id())
                .or_default()
                .push(sealed);
            self.sent.push((message_id, cert.device_id()));
        }
        message_id
    }

    /// A device fetches its mailbox and opens everything in it.
    fn fetch(&mut self, name: &str) -> Vec<Result<envelope::Opened, OpenError>> {
        let i = self.client(name);
        let id = self.clients[i].device.id();
        let domain = self.clients[i].device.address().domain_str().to_owned();
        let queued = self
            .providers
            .get_mut(&domain)
            .unwrap()
            .boxes
            .remove(&id)
            .unwrap_or_default();
        let known = self.known_devices();
        let now = self.now;
        let c = &mut self.clients[i];
        let mut results = Vec::new();
        for bytes in queued {
            let t = Instant::now();
            let r = envelope::open(bytes, &c.device, &known, &mut c.replay, now);
            self.open_us.push(t.elapsed().as_secs_f64() * 1e6);
            if let Ok(o) = &r {
                c.received.push((o.header.message_id, o.content.clone()));
            }
            results.push(r);
        }
        results
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
        _ => "unknown content".into(),
    }
}

fn show(name: &str, results: &[Result<envelope::Opened, OpenError>]) {
    for r in results {
        match r {
            Ok(o) => println!(
                "    {name} <- {} (device {}): {}",
                o.header.sender,
                &o.header.sender_device.to_string()[..8],
                describe(&o.content)
            ),
            Err(e) => println!("    {name} refused an envelope: {} ({e})", e.code()),
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
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
    println!("Kogge envelope demo (seed {seed}): three providers, four devices, in one process.");
    println!("Providers only store and forward opaque bytes; all checks happen on the devices.\n");

    // 1. Identities and devices. Bob has two devices under one identity.
    let mut directory: BTreeMap<Address, Vec<DeviceCertificate>> = BTreeMap::new();
    let mut clients = Vec::new();
    let mut identities = HashMap::new();
    for (name, addr) in [
        ("alice", "alice@one.example"),
        ("bob-phone", "bob@two.example"),
        ("bob-laptop", "bob@two.example"),
        ("carol", "carol@three.example"),
    ] {
        let address = Address::parse(addr).unwrap();
        let identity = identities
            .entry(address.clone())
            .or_insert_with(|| IdentityKeyPair::generate(&mut rng));
        let device = Device::new(
            identity,
            address.clone(),
            DeviceKeyPair::generate(&mut rng),
            now.saturating_sub(1000),
            now.saturating_add(year),
        )
        .unwrap();
        println!("  {name:<10} {addr:<20} device {}", device.id());
        directory
            .entry(address)
            .or_default()
            .push(device.certificate().clone());
        clients.push(Client {
            name: name.into(),
            device,
            replay: ReplayWindow::default(),
            received: Vec::new(),
        });
    }
    let mut w = World {
        rng,
        now,
        directory,
        providers: ["one.example", "two.example", "three.example"]
            .into_iter()
            .map(|d| (d.to_owned(), Mailboxes::default()))
            .collect(),
        clients,
        seal_us: Vec::new(),
        open_us: Vec::new(),
        sent: Vec::new(),
    };
    let alice = Address::parse("alice@one.example").unwrap();
    let bob = Address::parse("bob@two.example").unwrap();
    let carol = Address::parse("carol@three.example").unwrap();

    // 2. Out-of-band verification: Alice and Bob compare safety numbers.
    let a_id = identities[&alice].public();
    let b_id = identities[&bob].public();
    let from_alice = SafetyNumber::new(&a_id, &alice, &b_id, &bob);
    let from_bob = SafetyNumber::new(&b_id, &bob, &a_id, &alice);
    println!("\nSafety number alice <-> bob: {}", from_alice.grouped());
    let qr_ok = from_alice.verify_scanned(&from_bob.qr_payload()).is_ok();
    println!(
        "  Alice scans Bob's QR code: {}",
        if qr_ok { "match" } else { "MISMATCH" }
    );

    // 3. Conversations across providers.
    println!("\nalice@one -> bob@two (both of Bob's devices):");
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

    // 4. A dishonest provider. two.example holds Bob's mail and misbehaves.
    println!("\nA dishonest provider (two.example) attacks Bob's mail:");
    let mut attacks = 0;
    let mut refused = 0;
    let bob_phone = w.client("bob-phone");
    let bob_phone_id = w.clients[bob_phone].device.id();
    let mut attack = |w: &mut World, what: &str, bytes: Bytes, target: &str| {
        attacks += 1;
        let i = w.client(target);
        let id = w.clients[i].device.id();
        w.providers
            .get_mut("two.example")
            .unwrap()
            .boxes
            .entry(id)
            .or_default()
            .push(bytes);
        let results = w.fetch(target);
        // Anything honest that was already queued opens normally; the injected envelope
        // is the last one.
        show(target, &results[..results.len() - 1]);
        match results.last().expect("the injected envelope") {
            Err(e) => {
                refused += 1;
                println!("  {what:<52} refused: {}", e.code());
            }
            Ok(_) => println!("  {what:<52} ACCEPTED (this is a failure)"),
        }
    };
    let m = w.send(
        "alice",
        &bob,
        &Content::Text(Text::plain("Price is 1,000 EUR.")),
    );
    let queued = w.providers["two.example"].boxes[&bob_phone_id].clone();
    // Bob's phone reads the honest message; the laptop's copy stays queued.
    show("bob-phone", &w.fetch("bob-phone"));
    let honest = queued[0].clone();
    let mut tampered = honest.to_vec();
    let n = tampered.len();
    tampered[n - 80] ^= 0x20; // a ciphertext byte: "1,000" -> something else?
    attack(
        &mut w,
        "flips a ciphertext byte",
        Bytes::from(tampered),
        "bob-phone",
    );
    attack(
        &mut w,
        "replays the message Bob already read",
        honest.clone(),
        "bob-phone",
    );
    attack(
        &mut w,
        "delivers the phone's copy to the laptop",
        honest.clone(),
        "bob-laptop",
    );
    attack(
        &mut w,
        "truncates the envelope",
        honest.slice(..n / 2),
        "bob-phone",
    );
    let forged_sender = {
        // Same length, so the protobuf still parses and the forgery reaches the checks.
        let mut b = honest.to_vec();
        if let Some(pos) = b.windows(17).position(|win| win == b"alice@one.example") {
            b[pos..pos + 17].copy_from_slice(b"mallo@one.example");
        }
        Bytes::from(b)
    };
    attack(
        &mut w,
        "rewrites the sender to mallo@one.example",
        forged_sender,
        "bob-phone",
    );
    let resent_as_own = {
        // The provider re-addresses Alice's envelope to Bob's laptop (same-length ids).
        let laptop_id = w.clients[w.client("bob-laptop")].device.id();
        let mut b = honest.to_vec();
        if let Some(pos) = b.windows(16).position(|win| win == bob_phone_id.as_bytes()) {
            b[pos..pos + 16].copy_from_slice(laptop_id.as_bytes());
        }
        Bytes::from(b)
    };
    attack(
        &mut w,
        "re-addresses the phone's copy to the laptop",
        resent_as_own,
        "bob-laptop",
    );
    attack(
        &mut w,
        "injects 200 KB of garbage",
        Bytes::from(vec![0x0a; 200 * 1024]),
        "bob-phone",
    );
    let _ = m;

    // 5. A backlog: Bob's laptop was offline while Alice sent 200 messages.
    println!("\nBob's laptop comes back online to 200 queued envelopes:");
    for i in 0..200 {
        w.send(
            "alice",
            &bob,
            &Content::Text(Text::plain(format!("catalogue line {i}"))),
        );
    }
    w.fetch("bob-phone"); // the phone reads them one by one
    let laptop = w.client("bob-laptop");
    let laptop_id = w.clients[laptop].device.id();
    let backlog = w
        .providers
        .get_mut("two.example")
        .unwrap()
        .boxes
        .remove(&laptop_id)
        .unwrap_or_default();
    let known = w.known_devices();
    let t = Instant::now();
    let c = &mut w.clients[laptop];
    let results = envelope::open_batch(&backlog, &c.device, &known, &mut c.replay, now);
    let batch_us = t.elapsed().as_secs_f64() * 1e6 / backlog.len().max(1) as f64;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for o in results.into_iter().flatten() {
        c.received.push((o.header.message_id, o.content));
    }
    println!(
        "  opened {ok}/{} with batch signature verification, {batch_us:.1} µs per envelope",
        backlog.len()
    );

    // 6. Exactly-once check and summary.
    let mut delivered: HashMap<(MessageId, DeviceId), usize> = HashMap::new();
    for c in &w.clients {
        for (id, _) in &c.received {
            *delivered.entry((*id, c.device.id())).or_default() += 1;
        }
    }
    let missing = w.sent.iter().filter(|k| !delivered.contains_key(k)).count();
    let duplicated = delivered.values().filter(|n| **n > 1).count();
    let unexpected = delivered.keys().filter(|k| !w.sent.contains(k)).count();
    let stored: usize = w.providers.values().map(|p| p.stored_bytes).sum();
    println!("\nSummary");
    println!("  envelopes sealed           {}", w.sent.len());
    println!("  delivered exactly once     {}", w.sent.len() - missing);
    println!("  missing / duplicated       {missing} / {duplicated}");
    println!("  unexpected deliveries      {unexpected}");
    println!("  attacks refused            {refused}/{attacks}");
    println!("  bytes stored by providers  {stored}");
    println!(
        "  seal p50 / p99             {:.1} / {:.1} µs",
        percentile(&mut w.seal_us, 0.5),
        percentile(&mut w.seal_us, 0.99)
    );
    println!(
        "  open p50 / p99             {:.1} / {:.1} µs (batch: {batch_us:.1} µs)",
        percentile(&mut w.open_us, 0.5),
        percentile(&mut w.open_us, 0.99)
    );
    let ok = missing == 0 && duplicated == 0 && unexpected == 0 && refused == attacks && qr_ok;
    println!(
        "\n{}",
        if ok {
            "OK: every message arrived exactly once; every attack was refused."
        } else {
            "FAILED"
        }
    );
    std::process::exit(if ok { 0 } else { 1 });
}

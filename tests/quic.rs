//! The QUIC transport end to end on loopback: providers and clients over real QUIC
//! connections, each test starting its own servers on 127.0.0.1.
#![cfg(feature = "quic")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kogge::address::{Address, Domain};
use kogge::client::{Client, ClientConfig, ClientEvent};
use kogge::envelope::{Content, MessageId, Text};
use kogge::identity::{Device, DeviceKeyPair, DeviceList, IdentityKeyPair, ProviderKeyPair};
use kogge::protocol::Backoff;
use kogge::provider::ProviderConfig;
use kogge::resolve::{PeerInfo, ResolveError, Resolver, StaticDirectory};
use kogge::session::Account;
use kogge::store::{Contents, MemoryStore, Store, StoreError, StoreOp, Table};
use kogge::transport::quic::{
    self, CLOSE_FRAME_TOO_LARGE, CLOSE_NORMAL, CLOSE_STREAM_ERROR, ClientDriver,
    ClientDriverConfig, DriverEvent, ProviderServer, QuicConfig,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::mpsc::Receiver;

type Rng = ChaCha20Rng;
type Server = ProviderServer<MemoryStore, Rng>;

const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
const WAIT: Duration = Duration::from_secs(30);
const FAST: Backoff = Backoff {
    initial_ms: 50,
    max_ms: 400,
};

/// A directory the test fills in as servers start (their ports are chosen by the OS).
#[derive(Clone, Default)]
struct Directory(Arc<RwLock<StaticDirectory>>);

impl Directory {
    fn add(&self, domain: &Domain, addr: SocketAddr, key: kogge::identity::ProviderKey) {
        self.0.write().unwrap().insert(PeerInfo {
            domain: domain.clone(),
            endpoint: addr.to_string(),
            key,
        });
    }
}

impl Resolver for Directory {
    fn resolve(&self, domain: &Domain) -> Result<PeerInfo, ResolveError> {
        self.0.read().unwrap().resolve(domain)
    }
}

struct Node {
    domain: Domain,
    seed: kogge::crypto::Secret<32>,
}

impl Node {
    fn new(rng: &mut Rng, domain: &str) -> Self {
        Self {
            domain: Domain::parse(domain).unwrap(),
            seed: ProviderKeyPair::generate(rng).secret_bytes(),
        }
    }

    fn key(&self) -> ProviderKeyPair {
        ProviderKeyPair::from_secret_bytes(&self.seed)
    }

    fn config(&self) -> ProviderConfig {
        let mut c = ProviderConfig::new(self.domain.clone(), self.key());
        c.open_registration = true;
        c.backoff = FAST;
        c
    }

    /// Starts the provider on `addr` (retrying while a previous socket is released).
    async fn start(
        &self,
        store: MemoryStore,
        dir: &Directory,
        addr: SocketAddr,
        seed: u8,
    ) -> Server {
        self.start_with(store, dir, addr, seed).await
    }

    async fn start_with<S: Store + Clone + Send + 'static>(
        &self,
        store: S,
        dir: &Directory,
        addr: SocketAddr,
        seed: u8,
    ) -> ProviderServer<S, Rng> {
        let mut last = None;
        for _ in 0..50 {
            match ProviderServer::start(
                self.config(),
                store.clone(),
                Rng::from_seed([seed; 32]),
                dir.clone(),
                addr,
                QuicConfig::default(),
            ) {
                Ok(s) => {
                    dir.add(&self.domain, s.local_addr(), s.public_key());
                    return s;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("provider {} did not start: {last:?}", self.domain);
    }
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A device of a new user `local@node`, with its client pinned to `pinned`.
fn user(
    rng: &mut Rng,
    local: &str,
    node: &Node,
    pinned: kogge::identity::ProviderKey,
) -> (Address, Client<Rng>) {
    let (address, mut clients) = user_devices(rng, local, node, pinned, 1);
    (address, clients.remove(0))
}

/// `n` devices of a new user `local@node` (one signed device list naming them all).
fn user_devices(
    rng: &mut Rng,
    local: &str,
    node: &Node,
    pinned: kogge::identity::ProviderKey,
    n: usize,
) -> (Address, Vec<Client<Rng>>) {
    let now = quic::now();
    let address = Address::new(local, &node.domain).unwrap();
    let identity = IdentityKeyPair::generate(rng);
    let devices: Vec<Device> = (0..n)
        .map(|_| {
            Device::new(
                &identity,
                address.clone(),
                DeviceKeyPair::generate(rng),
                now.saturating_sub(YEAR_MS),
                now.saturating_add(YEAR_MS),
            )
            .unwrap()
        })
        .collect();
    let certs: Vec<_> = devices.iter().map(|d| d.certificate().clone()).collect();
    let list = DeviceList::sign(&identity, &address, 1, now, &certs).unwrap();
    let clients = devices
        .into_iter()
        .map(|device| {
            let mut account = Account::new(device, list.clone(), now, rng).unwrap();
            account.replenish_prekeys(now, rng);
            let mut config = ClientConfig::new(node.domain.clone(), pinned);
            config.backoff = FAST;
            let mut seed = [0u8; 32];
            rand_core::Rng::fill_bytes(rng, &mut seed);
            Client::new(account, config, Rng::from_seed(seed), now)
        })
        .collect();
    (address, clients)
}

async fn drive(
    client: Client<Rng>,
    server: SocketAddr,
) -> (ClientDriver<Rng>, Receiver<DriverEvent>) {
    ClientDriver::start(client, ClientDriverConfig::new(server)).unwrap()
}

/// Waits for an event that `pick` accepts, skipping others; panics after `WAIT`.
async fn wait_for<T>(
    rx: &mut Receiver<DriverEvent>,
    what: &str,
    mut pick: impl FnMut(&DriverEvent) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let e = rx.recv().await.expect("driver stopped");
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn online(rx: &mut Receiver<DriverEvent>, who: &str) {
    wait_for(rx, &format!("{who} online"), |e| {
        matches!(e, DriverEvent::Client(ClientEvent::Online)).then_some(())
    })
    .await
}

/// Waits until `text` arrives, returning (sender, message id).
async fn message(rx: &mut Receiver<DriverEvent>, text: &str) -> (Address, MessageId) {
    let want = Content::Text(Text::plain(text));
    wait_for(rx, &format!("message {text:?}"), |e| match e {
        DriverEvent::Client(ClientEvent::Message(m)) if m.content == want => {
            Some((m.sender.clone(), m.message_id))
        }
        _ => None,
    })
    .await
}

/// Waits for `n` messages from `from`, in whatever order; returns them sorted by text.
async fn messages(
    rx: &mut Receiver<DriverEvent>,
    from: &Address,
    n: usize,
) -> Vec<(Content, MessageId)> {
    let mut got = Vec::new();
    while got.len() < n {
        let what = format!("{n} messages (got {})", got.len());
        let m = wait_for(rx, &what, |e| match e {
            DriverEvent::Client(ClientEvent::Message(m)) => Some(m.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&m.sender, from);
        got.push((m.content.clone(), m.message_id));
    }
    let key = |c: &Content| match c {
        Content::Text(t) => (t.body.len(), t.body.clone()),
        _ => (0, String::new()),
    };
    got.sort_by_key(|(c, _)| key(c));
    got
}

async fn stored(rx: &mut Receiver<DriverEvent>, id: MessageId) {
    wait_for(rx, "delivered to provider", |e| {
        matches!(e, DriverEvent::Client(ClientEvent::DeliveredToProvider { message_id }) if *message_id == id)
            .then_some(())
    })
    .await
}

/// Waits until the provider stores prekeys for `n` devices (so bundles can be fetched).
async fn prekeys_published<S: Store + Prekeys + Send + 'static>(
    server: &ProviderServer<S, Rng>,
    n: usize,
) {
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            if server
                .with_provider(|p| p.store().lock().prekeys())
                .await
                .unwrap()
                >= n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "prekeys never published at {}", server.domain());
}

async fn send(driver: &ClientDriver<Rng>, to: &Address, text: &str) -> MessageId {
    driver
        .send(to.clone(), Content::Text(Text::plain(text)))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_exchange_messages_both_ways() {
    let mut rng = Rng::from_seed([1; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let two = Node::new(&mut rng, "two.example");
    let s1 = one.start(MemoryStore::new(), &dir, local(), 11).await;
    let s2 = two.start(MemoryStore::new(), &dir, local(), 12).await;

    let (alice, a_client) = user(&mut rng, "alice", &one, s1.public_key());
    let (bob, b_client) = user(&mut rng, "bob", &two, s2.public_key());
    let (a, mut a_rx) = drive(a_client, s1.local_addr()).await;
    let (b, mut b_rx) = drive(b_client, s2.local_addr()).await;
    online(&mut a_rx, "alice").await;
    online(&mut b_rx, "bob").await;
    prekeys_published(&s1, 1).await;
    prekeys_published(&s2, 1).await;

    let id = send(&a, &bob, "hello bob").await;
    stored(&mut a_rx, id).await;
    let (from, got) = message(&mut b_rx, "hello bob").await;
    assert_eq!((from, got), (alice.clone(), id));

    let id = send(&b, &alice, "hello alice").await;
    let (from, got) = message(&mut a_rx, "hello alice").await;
    assert_eq!((from, got), (bob.clone(), id));

    // A burst both ways at once: every message arrives, in a coalesced stream.
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(send(&a, &bob, &format!("a{i}")).await);
        send(&b, &alice, &format!("b{i}")).await;
    }
    let texts = |p: &str| -> Vec<Content> {
        (0..20)
            .map(|i| Content::Text(Text::plain(format!("{p}{i}"))))
            .collect()
    };
    let at_bob = messages(&mut b_rx, &alice, 20).await;
    let want: Vec<_> = texts("a").into_iter().zip(sent).collect();
    assert_eq!(at_bob, want);
    let at_alice = messages(&mut a_rx, &bob, 20).await;
    assert_eq!(
        at_alice.into_iter().map(|m| m.0).collect::<Vec<_>>(),
        texts("b")
    );
    let stats = s2.stats().await.unwrap();
    assert_eq!(stats.users, 1);

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    s1.shutdown().await.unwrap();
    s2.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_providers_and_a_user_with_two_devices() {
    let mut rng = Rng::from_seed([2; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let two = Node::new(&mut rng, "two.example");
    let three = Node::new(&mut rng, "three.example");
    let s1 = one.start(MemoryStore::new(), &dir, local(), 21).await;
    let s2 = two.start(MemoryStore::new(), &dir, local(), 22).await;
    let s3 = three.start(MemoryStore::new(), &dir, local(), 23).await;

    let (alice, a_client) = user(&mut rng, "alice", &one, s1.public_key());
    let (bob, mut bobs) = user_devices(&mut rng, "bob", &two, s2.public_key(), 2);
    let (carol, c_client) = user(&mut rng, "carol", &three, s3.public_key());
    let (laptop_client, phone_client) = (bobs.pop().unwrap(), bobs.pop().unwrap());
    let (a, mut a_rx) = drive(a_client, s1.local_addr()).await;
    let (phone, mut p_rx) = drive(phone_client, s2.local_addr()).await;
    let (laptop, mut l_rx) = drive(laptop_client, s2.local_addr()).await;
    let (c, mut c_rx) = drive(c_client, s3.local_addr()).await;
    for (rx, who) in [
        (&mut a_rx, "alice"),
        (&mut p_rx, "bob's phone"),
        (&mut l_rx, "bob's laptop"),
        (&mut c_rx, "carol"),
    ] {
        online(rx, who).await;
    }
    prekeys_published(&s1, 1).await;
    prekeys_published(&s2, 2).await;
    prekeys_published(&s3, 1).await;

    // one -> two: both of bob's devices get it.
    let id = send(&a, &bob, "to both of bob's devices").await;
    assert_eq!(
        message(&mut p_rx, "to both of bob's devices").await,
        (alice.clone(), id)
    );
    assert_eq!(
        message(&mut l_rx, "to both of bob's devices").await,
        (alice.clone(), id)
    );

    // two -> three, from the phone: carol gets it, the laptop gets the sent copy.
    let id = send(&phone, &carol, "from bob's phone").await;
    assert_eq!(
        message(&mut c_rx, "from bob's phone").await,
        (bob.clone(), id)
    );
    let want = Content::Text(Text::plain("from bob's phone"));
    let copy = wait_for(&mut l_rx, "the laptop's copy", |e| match e {
        DriverEvent::Client(ClientEvent::Message(m)) if m.content == want => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (&copy.conversation, &copy.sender, copy.message_id),
        (&carol, &bob, id)
    );

    // three -> one, and one -> three, and an answer from the laptop to carol.
    let id = send(&c, &alice, "carol to alice").await;
    assert_eq!(
        message(&mut a_rx, "carol to alice").await,
        (carol.clone(), id)
    );
    let id = send(&a, &carol, "alice to carol").await;
    assert_eq!(
        message(&mut c_rx, "alice to carol").await,
        (alice.clone(), id)
    );
    let id = send(&laptop, &carol, "from bob's laptop").await;
    assert_eq!(
        message(&mut c_rx, "from bob's laptop").await,
        (bob.clone(), id)
    );
    assert_eq!(
        message(&mut p_rx, "from bob's laptop").await,
        (bob.clone(), id)
    );

    // Nothing arrives twice, nowhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (rx, who) in [
        (&mut a_rx, "alice"),
        (&mut p_rx, "bob's phone"),
        (&mut l_rx, "bob's laptop"),
        (&mut c_rx, "carol"),
    ] {
        while let Ok(e) = rx.try_recv() {
            assert!(
                !matches!(e, DriverEvent::Client(ClientEvent::Message(ref m)) if matches!(m.content, Content::Text(_))),
                "{who} got a message twice: {e:?}"
            );
        }
    }
    assert_eq!(s2.stats().await.unwrap().users, 1);
    for d in [a, phone, laptop, c] {
        d.shutdown().await.unwrap();
    }
    for s in [s1, s2, s3] {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_another_key_is_refused() {
    let mut rng = Rng::from_seed([2; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let two = Node::new(&mut rng, "two.example");
    let s1 = one.start(MemoryStore::new(), &dir, local(), 21).await;
    let s2 = two.start(MemoryStore::new(), &dir, local(), 22).await;

    // A device pinned to another key than its provider's: TLS refuses the provider.
    let impostor = ProviderKeyPair::generate(&mut rng).public();
    let (_, client) = user(&mut rng, "mallory", &one, impostor);
    let (d, mut rx) = drive(client, s1.local_addr()).await;
    let (expected, presented) = wait_for(&mut rx, "refusal", |e| match e {
        DriverEvent::WrongProviderKey {
            expected,
            presented,
        } => Some((*expected, presented.clone())),
        DriverEvent::Client(ClientEvent::Online) => panic!("authenticated to the wrong key"),
        _ => None,
    })
    .await;
    assert_eq!(expected, impostor);
    assert_eq!(presented, s1.public_key().to_string());
    // It keeps retrying (backoff) and keeps being refused; nothing reaches the provider.
    wait_for(&mut rx, "second refusal", |e| match e {
        DriverEvent::WrongProviderKey { .. } => Some(()),
        DriverEvent::Client(ClientEvent::Online) => panic!("authenticated to the wrong key"),
        _ => None,
    })
    .await;
    assert!(!d.is_online().await.unwrap());
    assert_eq!(s1.stats().await.unwrap().users, 0);
    drop(d);

    // Provider to provider: one.example's directory holds a wrong key for two.example.
    let (_, a_client) = user(&mut rng, "alice", &one, s1.public_key());
    let (bob, b_client) = user(&mut rng, "bob", &two, s2.public_key());
    let (a, mut a_rx) = drive(a_client, s1.local_addr()).await;
    let (_b, mut b_rx) = drive(b_client, s2.local_addr()).await;
    online(&mut a_rx, "alice").await;
    online(&mut b_rx, "bob").await;
    prekeys_published(&s2, 1).await;
    dir.add(&two.domain, s2.local_addr(), impostor);
    send(&a, &bob, "never").await;
    let nothing = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(DriverEvent::Client(ClientEvent::Message(_))) = b_rx.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(nothing.is_err(), "a message crossed a refused connection");
    // Nothing was forwarded: two.example never saw one.example authenticate.
    let stats = s2.stats().await.unwrap();
    assert_eq!(
        stats.connections, 1,
        "only bob's device is connected to two.example"
    );
    let fetches = s1.stats().await.unwrap().pending_fetches;
    assert_eq!(fetches, 1, "alice's bundle fetch waits for two.example");
}

/// Opens a raw QUIC connection to a provider, as a device would, and its stream.
async fn raw(
    server: &Server,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let config =
        quic::client_config_for_device(&server.public_key(), &QuicConfig::default()).unwrap();
    let endpoint = quinn::Endpoint::client(local()).unwrap();
    let conn = endpoint
        .connect_with(config, server.local_addr(), server.domain().as_str())
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    (endpoint, conn, send, recv)
}

fn app_code(e: quinn::ConnectionError) -> u64 {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("closed with {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_the_connection_and_nothing_else() {
    let mut rng = Rng::from_seed([3; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let s1 = one.start(MemoryStore::new(), &dir, local(), 31).await;
    let (alice, a_client) = user(&mut rng, "alice", &one, s1.public_key());
    let (carol, c_client) = user(&mut rng, "carol", &one, s1.public_key());
    let (a, mut a_rx) = drive(a_client, s1.local_addr()).await;
    let (c, mut c_rx) = drive(c_client, s1.local_addr()).await;
    online(&mut a_rx, "alice").await;
    online(&mut c_rx, "carol").await;
    prekeys_published(&s1, 2).await;

    // An oversized length prefix: closed before anything is read or allocated for it.
    let (_e1, conn, mut send, _recv) = raw(&s1).await;
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let code = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    assert_eq!(app_code(code), u64::from(CLOSE_FRAME_TOO_LARGE));

    // A length just above MAX_FRAME_LEN, too.
    let (_e2, conn, mut send, _recv) = raw(&s1).await;
    let too_long = u32::try_from(kogge::limits::MAX_FRAME_LEN + 1).unwrap();
    send.write_all(&too_long.to_be_bytes()).await.unwrap();
    let code = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    assert_eq!(app_code(code), u64::from(CLOSE_FRAME_TOO_LARGE));

    // Bytes that are no protobuf Frame: the provider answers Goodbye{bad_frame} and closes.
    let (_e3, conn, mut send, mut recv) = raw(&s1).await;
    let junk = [0xffu8; 7];
    send.write_all(&(junk.len() as u32).to_be_bytes())
        .await
        .unwrap();
    send.write_all(&junk).await.unwrap();
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut frame).await.unwrap();
    assert_eq!(kogge::protocol::check_frame(&frame), Ok("goodbye"));
    let code = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    assert_eq!(app_code(code), u64::from(CLOSE_NORMAL));

    // A stream that ends inside a frame.
    let (_e4, conn, mut send, _recv) = raw(&s1).await;
    send.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap();
    send.finish().unwrap();
    let code = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    assert_eq!(app_code(code), u64::from(CLOSE_STREAM_ERROR));

    // Meanwhile the real users are unaffected.
    let id = send_text(&a, &carol, "still here").await;
    let (from, got) = message(&mut c_rx, "still here").await;
    assert_eq!((from, got), (alice.clone(), id));
    let id = send_text(&c, &alice, "me too").await;
    assert_eq!(message(&mut a_rx, "me too").await.1, id);
    assert_eq!(s1.stats().await.unwrap().connections, 2);
}

async fn send_text(driver: &ClientDriver<Rng>, to: &Address, text: &str) -> MessageId {
    send(driver, to, text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_restarts_lose_nothing_acknowledged() {
    let mut rng = Rng::from_seed([4; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let two = Node::new(&mut rng, "two.example");
    let s1 = one.start(MemoryStore::new(), &dir, local(), 41).await;
    let s2 = two.start(MemoryStore::new(), &dir, local(), 42).await;
    let (addr1, addr2) = (s1.local_addr(), s2.local_addr());

    let (alice, a_client) = user(&mut rng, "alice", &one, s1.public_key());
    let (bob, b_client) = user(&mut rng, "bob", &two, s2.public_key());
    let (a, mut a_rx) = drive(a_client, addr1).await;
    let (b, mut b_rx) = drive(b_client, addr2).await;
    online(&mut a_rx, "alice").await;
    online(&mut b_rx, "bob").await;
    prekeys_published(&s2, 1).await;

    // A first message sets up the session.
    let first = send(&a, &bob, "m0").await;
    assert_eq!(message(&mut b_rx, "m0").await, (alice.clone(), first));

    // Bob goes away and two.example stops (gracefully); alice keeps sending. one.example
    // acknowledges each message: it is stored in its queue for two.example.
    let bob_client = b.shutdown().await.unwrap();
    let store2 = s2.shutdown().await.unwrap().into_store();
    let mut ids = vec![first];
    for i in 1..=5 {
        let id = send(&a, &bob, &format!("m{i}")).await;
        stored(&mut a_rx, id).await;
        ids.push(id);
    }
    let queued = s1.stats().await.unwrap().outbound_items;
    assert_eq!(queued, 5);

    // one.example restarts from its store: the queue survives.
    let store1 = s1.shutdown().await.unwrap().into_store();
    let s1 = one.start(store1, &dir, addr1, 43).await;
    assert_eq!(s1.stats().await.unwrap().outbound_items, 5);
    // ...and so does two.example, which now takes the relayed messages.
    let s2 = two.start(store2, &dir, addr2, 44).await;
    online(&mut a_rx, "alice again").await;

    // Bob comes back and gets every message exactly once.
    let (b, mut b_rx) = drive(bob_client, addr2).await;
    let got = messages(&mut b_rx, &alice, 5).await;
    let want: Vec<_> = (1..=5)
        .map(|i| (Content::Text(Text::plain(format!("m{i}"))), ids[i]))
        .collect();
    assert_eq!(got, want);
    let settled = tokio::time::timeout(WAIT, async {
        loop {
            let (q, m) = (
                s1.stats().await.unwrap().outbound_items,
                s2.stats().await.unwrap().mailbox_items,
            );
            if q == 0 && m == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "queues did not drain");
    // No duplicate shows up later.
    let dup = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Some(DriverEvent::Client(ClientEvent::Message(_))) = b_rx.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(dup.is_err(), "a message arrived twice");
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    s1.shutdown().await.unwrap();
    s2.shutdown().await.unwrap();
}

/// Reads frames off a raw stream into a channel until it ends.
fn frames(mut recv: quinn::RecvStream) -> tokio::sync::mpsc::Receiver<bytes::Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let mut len = [0u8; 4];
            if recv.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            if recv.read_exact(&mut frame).await.is_err() || tx.send(frame.into()).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Connects to `server` as provider `three.example` (provider key `key`) over a raw QUIC
/// connection made with `tls`, runs the protocol handshake with a `Provider` state machine
/// as the connector, and returns whether the handshake succeeded and how the connection
/// ended within two seconds after it (`None`: still open).
async fn connect_as_provider(
    server: &Server,
    key: &ProviderKeyPair,
    tls: quinn::ClientConfig,
) -> (bool, Option<quinn::ConnectionError>) {
    use kogge::protocol::ConnectionId;
    use kogge::provider::{Direction, Provider, ProviderEvent, ProviderInput, ProviderOutput};

    let endpoint = quinn::Endpoint::client(local()).unwrap();
    let conn = endpoint
        .connect_with(tls, server.local_addr(), server.domain().as_str())
        .unwrap()
        .await
        .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut binding = [0u8; quic::BINDING_LEN];
    conn.export_keying_material(&mut binding, quic::BINDING_LABEL, b"")
        .unwrap();
    let domain = Domain::parse("three.example").unwrap();
    let config = ProviderConfig::new(
        domain,
        ProviderKeyPair::from_secret_bytes(&key.secret_bytes()),
    );
    let mut p = Provider::new(
        config,
        MemoryStore::new(),
        Rng::from_seed([5; 32]),
        quic::now(),
    )
    .unwrap();
    let id = ConnectionId(1);
    p.handle_input(
        quic::now(),
        ProviderInput::Connected {
            conn: id,
            direction: Direction::Outbound {
                domain: server.domain().clone(),
                key: server.public_key(),
            },
            binding: bytes::Bytes::copy_from_slice(&binding),
        },
    );
    let mut rx = frames(recv);
    let mut authenticated = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        loop {
            match p.poll_output(quic::now()) {
                ProviderOutput::Transmit { bytes, .. } => {
                    send.write_all(&(bytes.len() as u32).to_be_bytes())
                        .await
                        .unwrap();
                    send.write_all(&bytes).await.unwrap();
                }
                ProviderOutput::Event(ProviderEvent::Authenticated { .. }) => authenticated = true,
                ProviderOutput::Timeout(_) => break,
                _ => {}
            }
        }
        if authenticated {
            break;
        }
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(bytes) => p.handle_input(quic::now(), ProviderInput::Received { conn: id, bytes }),
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => panic!("handshake did not finish"),
        }
    }
    let end = tokio::time::timeout(Duration::from_secs(2), conn.closed())
        .await
        .ok();
    (authenticated, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_tls_key_must_be_its_provider_key() {
    let mut rng = Rng::from_seed([6; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let s1 = one.start(MemoryStore::new(), &dir, local(), 61).await;
    let three = Domain::parse("three.example").unwrap();
    let k3 = ProviderKeyPair::generate(&mut rng);
    dir.add(&three, "127.0.0.1:9".parse().unwrap(), k3.public());
    let q = QuicConfig::default();

    // The right certificate: authenticated, and the connection stays up.
    let cert = quic::provider_certificate(&k3, &three).unwrap();
    let tls = quic::client_config_for_provider(&s1.public_key(), &cert, &q).unwrap();
    let (ok, end) = connect_as_provider(&s1, &k3, tls).await;
    assert!(ok);
    assert!(end.is_none(), "closed: {end:?}");

    // A TLS certificate of another key: the protocol's Auth proves the provider key, but
    // the adapter closes the connection before the Welcome leaves.
    let other = ProviderKeyPair::generate(&mut rng);
    let cert = quic::provider_certificate(&other, &three).unwrap();
    let tls = quic::client_config_for_provider(&s1.public_key(), &cert, &q).unwrap();
    let (ok, end) = connect_as_provider(&s1, &k3, tls).await;
    assert!(!ok, "welcomed");
    assert_eq!(
        app_code(end.expect("not closed")),
        u64::from(quic::CLOSE_KEY_MISMATCH)
    );

    // No client certificate at all (as a device connects), then claiming to be a provider.
    let tls = quic::client_config_for_device(&s1.public_key(), &q).unwrap();
    let (ok, end) = connect_as_provider(&s1, &k3, tls).await;
    assert!(!ok, "welcomed");
    assert_eq!(
        app_code(end.expect("not closed")),
        u64::from(quic::CLOSE_KEY_MISMATCH)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_and_retry() {
    let mut rng = Rng::from_seed([7; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let limited = QuicConfig {
        max_connections: 1,
        ..QuicConfig::default()
    };
    let s1 = ProviderServer::start(
        one.config(),
        MemoryStore::new(),
        Rng::from_seed([71; 32]),
        dir.clone(),
        local(),
        limited,
    )
    .unwrap();
    // The first connection takes the only slot (it need not even open its stream)...
    let config = quic::client_config_for_device(&s1.public_key(), &QuicConfig::default()).unwrap();
    let endpoint = quinn::Endpoint::client(local()).unwrap();
    let first = endpoint
        .connect_with(config.clone(), s1.local_addr(), "one.example")
        .unwrap()
        .await
        .unwrap();
    // ...so the next is refused.
    let second = endpoint
        .connect_with(config, s1.local_addr(), "one.example")
        .unwrap()
        .await;
    match second {
        Err(quinn::ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(c.error_code, quinn::TransportErrorCode::CONNECTION_REFUSED)
        }
        other => panic!("not refused: {other:?}"),
    }
    drop(first);

    // Address validation: with the retry threshold at zero every new address gets a QUIC
    // Retry first, and devices still connect.
    let two = Node::new(&mut rng, "two.example");
    let validating = QuicConfig {
        retry_threshold: 0,
        ..QuicConfig::default()
    };
    let s2 = ProviderServer::start(
        two.config(),
        MemoryStore::new(),
        Rng::from_seed([72; 32]),
        dir.clone(),
        local(),
        validating,
    )
    .unwrap();
    let (_, client) = user(&mut rng, "dora", &two, s2.public_key());
    let (_d, mut rx) = drive(client, s2.local_addr()).await;
    online(&mut rx, "dora").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_take_more_than_its_connections() {
    let mut rng = Rng::from_seed([8; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let limited = QuicConfig {
        max_connections_per_host: 2,
        ..QuicConfig::default()
    };
    let s1 = ProviderServer::start(
        one.config(),
        MemoryStore::new(),
        Rng::from_seed([81; 32]),
        dir.clone(),
        local(),
        limited,
    )
    .unwrap();
    let config = quic::client_config_for_device(&s1.public_key(), &QuicConfig::default()).unwrap();
    let endpoint = quinn::Endpoint::client(local()).unwrap();
    let connect = || async {
        endpoint
            .connect_with(config.clone(), s1.local_addr(), "one.example")
            .unwrap()
            .await
    };
    let first = connect().await.unwrap();
    let _second = connect().await.unwrap();
    match connect().await {
        Err(quinn::ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(c.error_code, quinn::TransportErrorCode::CONNECTION_REFUSED)
        }
        other => panic!("a third connection from one host was not refused: {other:?}"),
    }
    // Closing a connection frees its slot for the next.
    first.close(0u32.into(), b"done");
    let reconnected = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(c) = connect().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reconnected.is_ok(), "a freed slot was never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_unless_kept_alive() {
    let mut rng = Rng::from_seed([8; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let strict = QuicConfig {
        idle_timeout: Duration::from_millis(600),
        stream_open_timeout: Duration::from_millis(300),
        ..QuicConfig::default()
    };
    let s1 = ProviderServer::start(
        one.config(),
        MemoryStore::new(),
        Rng::from_seed([81; 32]),
        dir.clone(),
        local(),
        strict,
    )
    .unwrap();

    // A connection that never opens its stream is closed.
    let config = quic::client_config_for_device(&s1.public_key(), &QuicConfig::default()).unwrap();
    let endpoint = quinn::Endpoint::client(local()).unwrap();
    let silent = endpoint
        .connect_with(config, s1.local_addr(), "one.example")
        .unwrap()
        .await
        .unwrap();
    let end = tokio::time::timeout(WAIT, silent.closed()).await.unwrap();
    assert_eq!(app_code(end), u64::from(CLOSE_STREAM_ERROR));

    // A device that sends keep-alives more often than the idle timeout stays connected.
    let (_, client) = user(&mut rng, "erin", &one, s1.public_key());
    let mut driver_config = ClientDriverConfig::new(s1.local_addr());
    driver_config.quic.keep_alive_interval = Duration::from_millis(150);
    let (d, mut rx) = ClientDriver::start(client, driver_config).unwrap();
    online(&mut rx, "erin").await;
    let offline = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(DriverEvent::Client(ClientEvent::Offline)) = rx.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(offline.is_err(), "dropped although kept alive");
    assert!(d.is_online().await.unwrap());

    // One that does not (keep-alive longer than the idle timeout) is dropped, and
    // reconnects as its client asks.
    let (_, client) = user(&mut rng, "finn", &one, s1.public_key());
    let (_d2, mut rx) = drive(client, s1.local_addr()).await;
    online(&mut rx, "finn").await;
    wait_for(&mut rx, "finn offline", |e| {
        matches!(e, DriverEvent::Client(ClientEvent::Offline)).then_some(())
    })
    .await;
    online(&mut rx, "finn again").await;
}

/// A store that outlives its provider: what a crashed provider's disk still holds.
#[derive(Clone, Default)]
struct SharedStore(Arc<std::sync::Mutex<MemoryStore>>);

impl Store for SharedStore {
    fn load(&mut self) -> Result<Contents, StoreError> {
        self.0.lock().unwrap().load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.0.lock().unwrap().commit(ops)
    }
}

trait Prekeys {
    fn prekeys(&self) -> usize;
}

impl Prekeys for MemoryStore {
    fn prekeys(&self) -> usize {
        self.len(Table::Prekeys)
    }
}

impl Prekeys for SharedStore {
    fn prekeys(&self) -> usize {
        self.0.lock().unwrap().len(Table::Prekeys)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_crash_loses_nothing_acknowledged() {
    let mut rng = Rng::from_seed([9; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let two = Node::new(&mut rng, "two.example");
    let disk = SharedStore::default();
    let s1 = one.start_with(disk.clone(), &dir, local(), 91).await;
    let s2 = two.start(MemoryStore::new(), &dir, local(), 92).await;
    let (addr1, addr2) = (s1.local_addr(), s2.local_addr());
    let (alice, a_client) = user(&mut rng, "alice", &one, s1.public_key());
    let (bob, b_client) = user(&mut rng, "bob", &two, s2.public_key());
    let (a, mut a_rx) = drive(a_client, addr1).await;
    let (b, mut b_rx) = drive(b_client, addr2).await;
    online(&mut a_rx, "alice").await;
    online(&mut b_rx, "bob").await;
    prekeys_published(&s2, 1).await;
    let first = send(&a, &bob, "m0").await;
    assert_eq!(message(&mut b_rx, "m0").await, (alice.clone(), first));

    // two.example goes away; one.example acknowledges alice's messages, then crashes
    // (dropped: no graceful anything) with them queued.
    let bob_client = b.shutdown().await.unwrap();
    let store2 = s2.shutdown().await.unwrap().into_store();
    let mut ids = vec![first];
    for i in 1..=3 {
        let id = send(&a, &bob, &format!("m{i}")).await;
        stored(&mut a_rx, id).await;
        ids.push(id);
    }
    drop(s1);

    // Restarted from what its disk holds, it relays them.
    let s1 = one.start_with(disk.clone(), &dir, addr1, 93).await;
    let s2 = two.start(store2, &dir, addr2, 94).await;
    let (b, mut b_rx) = drive(bob_client, addr2).await;
    let got = messages(&mut b_rx, &alice, 3).await;
    let want: Vec<_> = (1..=3)
        .map(|i| (Content::Text(Text::plain(format!("m{i}"))), ids[i]))
        .collect();
    assert_eq!(got, want);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    s1.shutdown().await.unwrap();
    s2.shutdown().await.unwrap();
}

/// The client driver persists before it acts (SPEC.md 16.7): when the persistence hook
/// fails for the step that decrypted a message, the driver stops without acknowledging
/// it or showing it to the app, and the provider delivers it again to the device
/// restarted from its last stored state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_persist_hook_acknowledges_nothing() {
    use std::sync::Mutex;

    let mut rng = Rng::from_seed([21; 32]);
    let dir = Directory::default();
    let one = Node::new(&mut rng, "one.example");
    let s1 = one.start(MemoryStore::new(), &dir, local(), 22).await;
    let (_alice, a_client) = user(&mut rng, "alice", &one, s1.public_key());
    let (bob, b_client) = user(&mut rng, "bob", &one, s1.public_key());
    let (a, mut a_rx) = drive(a_client, s1.local_addr()).await;
    online(&mut a_rx, "alice").await;

    // Bob's hook keeps the last saved blob and fails ("disk full") on the step that
    // received a message.
    let key = kogge::crypto::Secret::new([7; 32]);
    let saved: Arc<Mutex<Vec<u8>>> = Arc::default();
    let config = |fail_on_message: bool| {
        let saved = Arc::clone(&saved);
        let key = kogge::crypto::Secret::new(*key.expose());
        let mut rng = Rng::from_seed([23; 32]);
        let mut c = ClientDriverConfig::new(s1.local_addr());
        c.persist = Some(Box::new(
            move |account: &Account, events: &[ClientEvent]| {
                if fail_on_message && events.iter().any(|e| matches!(e, ClientEvent::Message(_))) {
                    return Err("disk full".into());
                }
                *saved.lock().unwrap() = account.save(&key, &mut rng);
                Ok(())
            },
        ));
        c
    };
    let (b, mut b_rx) = ClientDriver::start(b_client, config(true)).unwrap();
    online(&mut b_rx, "bob").await;
    prekeys_published(&s1, 2).await;

    let id = send(&a, &bob, "kept until stored").await;
    stored(&mut a_rx, id).await;
    let reason = wait_for(&mut b_rx, "persist failure", |e| match e {
        DriverEvent::Client(ClientEvent::Message(_)) => {
            panic!("the app saw a message whose state was not stored")
        }
        DriverEvent::PersistFailed { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "disk full");
    drop(b);

    // Restarted from the last stored state: the unacknowledged message comes again.
    let blob = saved.lock().unwrap().clone();
    let account = Account::restore(&blob, &key).unwrap();
    let mut config_b = ClientConfig::new(one.domain.clone(), s1.public_key());
    config_b.backoff = FAST;
    let client = Client::new(account, config_b, Rng::from_seed([24; 32]), quic::now());
    let (b, mut b_rx) = ClientDriver::start(client, config(false)).unwrap();
    let (_, got) = message(&mut b_rx, "kept until stored").await;
    assert_eq!(got, id);

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    s1.shutdown().await.unwrap();
}

//! The client state machine against a small scripted provider: every frame the client
//! sends is decoded and checked, every answer is built by hand.

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::*;
use crate::envelope::Text;
use crate::identity::ProviderKeyPair;
use crate::limits::MAX_ONE_TIME_PREKEYS;
use crate::session::tests::{User, user};
use crate::wire::frame::Body;

const NOW: UnixMillis = UnixMillis(1_760_000_000_000);

fn text(s: &str) -> Content {
    Content::Text(Text::plain(s))
}

fn addr(u: &User) -> Address {
    u.list.address().clone()
}

/// The scripted provider: its key and the last handshake's state.
struct Fake {
    domain: Domain,
    key: ProviderKeyPair,
    rng: ChaCha20Rng,
}

impl Fake {
    fn new(domain: &str, seed: u8) -> Self {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        Self {
            domain: Domain::parse(domain).unwrap(),
            key: ProviderKeyPair::generate(&mut rng),
            rng,
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(self.domain.clone(), self.key.public())
    }

    /// A challenge answering `hello`, signed by `key` for `domain`.
    fn challenge_with(
        &mut self,
        key: &ProviderKeyPair,
        domain: &str,
        hello: &wire::Hello,
        binding: &[u8],
    ) -> Bytes {
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        let sig =
            protocol::sign_challenge(key.signing_key(), &hello.nonce, &nonce, domain, binding);
        protocol::encode(Body::Challenge(wire::Challenge {
            nonce: Bytes::copy_from_slice(&nonce),
            domain: domain.to_owned(),
            provider_key: Bytes::copy_from_slice(&key.public().to_bytes()),
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }))
    }
}

/// Everything the client outputs until it would wait, and the deadline it reports.
fn drain<R: CryptoRng>(
    c: &mut Client<R>,
    now: UnixMillis,
) -> (Vec<ClientOutput>, Option<UnixMillis>) {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match c.poll_output(now) {
            ClientOutput::Timeout(t) => return (out, t),
            o => out.push(o),
        }
    }
    panic!("the client never stops producing output");
}

fn one<T: std::fmt::Debug>(v: Vec<T>) -> T {
    assert_eq!(v.len(), 1, "exactly one expected: {v:?}");
    v.into_iter().next().unwrap()
}

fn frames(out: &[ClientOutput]) -> Vec<Body> {
    out.iter()
        .filter_map(|o| match o {
            ClientOutput::Transmit(b) => Some(protocol::decode(b).unwrap()),
            _ => None,
        })
        .collect()
}

fn raw_frames(out: &[ClientOutput]) -> Vec<Bytes> {
    out.iter()
        .filter_map(|o| match o {
            ClientOutput::Transmit(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

fn events(out: &[ClientOutput]) -> Vec<ClientEvent> {
    out.iter()
        .filter_map(|o| match o {
            ClientOutput::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn requests(out: &[ClientOutput]) -> Vec<wire::Request> {
    frames(out)
        .into_iter()
        .filter_map(|b| match b {
            Body::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn acks(out: &[ClientOutput]) -> Vec<u64> {
    frames(out)
        .into_iter()
        .flat_map(|b| match b {
            Body::DeliverAck(a) => a.seqs,
            _ => Vec::new(),
        })
        .collect()
}

fn respond(id: u64, body: wire::response::Body) -> ClientInput {
    ClientInput::Received(protocol::encode(Body::Response(wire::Response {
        id,
        body: Some(body),
    })))
}

fn done(id: u64) -> ClientInput {
    respond(id, wire::response::Body::Done(wire::Done {}))
}

fn error(id: u64, code: ErrorCode, retry_after_ms: u64) -> ClientInput {
    respond(
        id,
        wire::response::Body::Error(
            ProtocolError::new(code, "scripted")
                .retry_after(retry_after_ms)
                .to_wire(),
        ),
    )
}

fn deliver(items: Vec<(u64, wire::mailbox_item::Item)>) -> ClientInput {
    ClientInput::Received(protocol::encode(Body::Deliver(wire::Deliver {
        items: items
            .into_iter()
            .map(|(seq, item)| wire::MailboxItem {
                seq,
                item: Some(item),
            })
            .collect(),
    })))
}

fn envelope_item(e: &Bytes) -> wire::mailbox_item::Item {
    wire::mailbox_item::Item::Envelope(e.clone())
}

/// Runs the handshake as an honest provider; returns what the client sent after
/// `Welcome` (the prekey publish and any resends).
fn connect<R: CryptoRng>(c: &mut Client<R>, p: &mut Fake, now: UnixMillis) -> Vec<ClientOutput> {
    let (out, _) = drain(c, now);
    assert!(out.contains(&ClientOutput::Connect), "{out:?}");
    c.handle_input(
        now,
        ClientInput::Connected {
            binding: Bytes::from_static(b"tls-exporter"),
        },
    );
    let (out, _) = drain(c, now);
    let Body::Hello(hello) = one(frames(&out)) else {
        panic!("expected a hello: {out:?}");
    };
    assert_eq!(hello.acceptor, p.domain.as_str());
    assert_eq!(hello.role, wire::Role::Device as i32);
    let key = ProviderKeyPair::from_secret_bytes(&p.key.secret_bytes());
    let domain = p.domain.as_str().to_owned();
    let challenge = p.challenge_with(&key, &domain, &hello, b"tls-exporter");
    let challenge_nonce = match protocol::decode(&challenge).unwrap() {
        Body::Challenge(ch) => ch.nonce,
        _ => unreachable!(),
    };
    c.handle_input(now, ClientInput::Received(challenge));
    let (out, _) = drain(c, now);
    let Body::Auth(auth) = one(frames(&out)) else {
        panic!("expected an auth: {out:?}");
    };
    let Some(wire::auth::Who::Device(d)) = &auth.who else {
        panic!("device auth expected");
    };
    assert_eq!(&d.certificate, c.account().device().certificate().encoded());
    assert_eq!(&d.device_list, c.account().own_device_list().encoded());
    assert!(protocol::verify_auth(
        c.account().device().certificate().signing_key(),
        &challenge_nonce,
        &hello.nonce,
        p.domain.as_str(),
        b"tls-exporter",
        &d.certificate,
        &auth.signature,
    ));
    c.handle_input(
        now,
        ClientInput::Received(protocol::encode(Body::Welcome(wire::Welcome {
            time_ms: now.0,
        }))),
    );
    let (out, _) = drain(c, now);
    assert_eq!(events(&out).first(), Some(&ClientEvent::Online));
    out
}

/// A client for the first device of `u`, online, with its prekey publish acknowledged.
fn online(u: &mut User, p: &mut Fake, seed: u8) -> Client<ChaCha20Rng> {
    let account = u.accounts.remove(0);
    let mut c = Client::new(account, p.config(), ChaCha20Rng::from_seed([seed; 32]), NOW);
    let out = connect(&mut c, p, NOW);
    let reqs = requests(&out);
    let [publish] = reqs.as_slice() else {
        panic!("expected one publish: {out:?}");
    };
    let Some(wire::request::Body::PublishPrekeys(pk)) = &publish.body else {
        panic!("expected a publish");
    };
    assert_eq!(pk.one_time.len(), MAX_ONE_TIME_PREKEYS);
    c.handle_input(NOW, done(publish.id));
    let (out, _) = drain(&mut c, NOW);
    assert!(out.is_empty(), "{out:?}");
    c
}

/// The bundles `owner`'s accounts would hand out, with a one-time prekey each.
fn bundles(accounts: &[Account]) -> Vec<Bytes> {
    accounts.iter().map(bundle).collect()
}

fn bundles_response(id: u64, u: &User, accounts: &[Account]) -> ClientInput {
    respond(
        id,
        wire::response::Body::Bundles(wire::Bundles {
            device_list: u.list.encoded().clone(),
            bundles: bundles(accounts),
        }),
    )
}

fn submitted(reqs: &[wire::Request]) -> Vec<(u64, Vec<Bytes>)> {
    reqs.iter()
        .filter_map(|r| match &r.body {
            Some(wire::request::Body::Submit(s)) => Some((r.id, s.envelopes.clone())),
            _ => None,
        })
        .collect()
}

fn fetches(reqs: &[wire::Request]) -> Vec<(u64, wire::FetchBundles)> {
    reqs.iter()
        .filter_map(|r| match &r.body {
            Some(wire::request::Body::FetchBundles(f)) => Some((r.id, f.clone())),
            _ => None,
        })
        .collect()
}

// ----------------------------------------------------------------------------------
// Handshake

#[test]
fn handshake_authenticates_both_sides_and_publishes_prekeys() {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let mut p = Fake::new("one.example", 2);
    let c = online(&mut alice, &mut p, 3);
    assert!(c.is_online());
    // Debug shows no secrets.
    let dbg = format!("{c:?}");
    assert!(dbg.contains("online"), "{dbg}");
    assert!(!dbg.contains("secret"), "{dbg}");
}

/// Alice's new client, told its connection is open (with `binding`); its `Hello` is
/// waiting to be drained.
fn alice_connecting(binding: &'static [u8]) -> (Client<ChaCha20Rng>, Fake) {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let p = Fake::new("one.example", 2);
    let mut c = Client::new(
        alice.accounts.remove(0),
        p.config(),
        ChaCha20Rng::from_seed([3; 32]),
        NOW,
    );
    let _ = drain(&mut c, NOW);
    c.handle_input(
        NOW,
        ClientInput::Connected {
            binding: Bytes::from_static(binding),
        },
    );
    (c, p)
}

fn refused_challenge(key_seed: u8, domain: &str) -> Vec<ClientEvent> {
    let (mut c, mut p) = alice_connecting(b"");
    let (out, _) = drain(&mut c, NOW);
    let Body::Hello(hello) = one(frames(&out)) else {
        panic!("hello expected");
    };
    let key = if key_seed == 0 {
        ProviderKeyPair::from_secret_bytes(&p.key.secret_bytes())
    } else {
        ProviderKeyPair::generate(&mut ChaCha20Rng::from_seed([key_seed; 32]))
    };
    let ch = p.challenge_with(&key, domain, &hello, b"");
    c.handle_input(NOW, ClientInput::Received(ch));
    let (out, deadline) = drain(&mut c, NOW);
    assert!(frames(&out).is_empty(), "no auth may be sent: {out:?}");
    assert!(out.contains(&ClientOutput::Close), "{out:?}");
    assert!(!c.is_online());
    // It reconnects after the backoff, not before.
    let retry = deadline.unwrap();
    assert!(retry > NOW);
    c.handle_timeout(retry.saturating_sub(1));
    assert!(
        !drain(&mut c, retry.saturating_sub(1))
            .0
            .contains(&ClientOutput::Connect)
    );
    c.handle_timeout(retry);
    assert!(drain(&mut c, retry).0.contains(&ClientOutput::Connect));
    events(&out)
}

#[test]
fn handshake_refuses_a_wrong_provider_key() {
    let ev = refused_challenge(9, "one.example");
    assert_eq!(ev, vec![ClientEvent::AuthFailed(AuthFailure::WrongKey)]);
}

#[test]
fn handshake_refuses_a_wrong_domain() {
    let ev = refused_challenge(0, "two.example");
    assert_eq!(
        ev,
        vec![ClientEvent::AuthFailed(AuthFailure::WrongProvider {
            domain: "two.example".into()
        })]
    );
}

#[test]
fn handshake_refuses_a_bad_signature_and_a_goodbye() {
    let (mut c, mut p) = alice_connecting(b"a");
    let (out, _) = drain(&mut c, NOW);
    let Body::Hello(hello) = one(frames(&out)) else {
        panic!("hello expected");
    };
    // Signed over another channel binding: a relayed (man-in-the-middle) challenge.
    let key = ProviderKeyPair::from_secret_bytes(&p.key.secret_bytes());
    let ch = p.challenge_with(&key, "one.example", &hello, b"b");
    c.handle_input(NOW, ClientInput::Received(ch));
    let (out, deadline) = drain(&mut c, NOW);
    assert_eq!(
        events(&out),
        vec![ClientEvent::AuthFailed(AuthFailure::BadSignature)]
    );
    assert!(frames(&out).is_empty());

    // Next attempt: the provider refuses the device.
    let t = deadline.unwrap();
    c.handle_timeout(t);
    assert!(drain(&mut c, t).0.contains(&ClientOutput::Connect));
    c.handle_input(
        t,
        ClientInput::Connected {
            binding: Bytes::new(),
        },
    );
    let (out, _) = drain(&mut c, t);
    let Body::Hello(hello) = one(frames(&out)) else {
        panic!("hello expected");
    };
    let ch = p.challenge_with(&key, "one.example", &hello, b"");
    c.handle_input(t, ClientInput::Received(ch));
    let (out, _) = drain(&mut c, t);
    assert!(matches!(frames(&out).as_slice(), [Body::Auth(_)]));
    let bye = ProtocolError::new(ErrorCode::AuthFailed, "unknown device");
    c.handle_input(
        t,
        ClientInput::Received(protocol::encode(Body::Goodbye(wire::Goodbye {
            error: Some(bye.to_wire()),
        }))),
    );
    let (out, _) = drain(&mut c, t);
    assert_eq!(
        events(&out),
        vec![ClientEvent::AuthFailed(AuthFailure::Refused(bye))]
    );
    assert!(out.contains(&ClientOutput::Close));
}

#[test]
fn handshake_times_out() {
    let (mut c, _p) = alice_connecting(b"");
    let (_, deadline) = drain(&mut c, NOW);
    assert_eq!(deadline, Some(NOW.saturating_add(AUTH_TIMEOUT_MS)));
    c.handle_timeout(NOW.saturating_add(AUTH_TIMEOUT_MS));
    let (out, _) = drain(&mut c, NOW.saturating_add(AUTH_TIMEOUT_MS));
    assert_eq!(
        events(&out),
        vec![ClientEvent::AuthFailed(AuthFailure::Timeout)]
    );
    assert!(out.contains(&ClientOutput::Close));
}

// ----------------------------------------------------------------------------------
// Sending

#[test]
fn send_fetches_bundles_seals_once_and_submits() {
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let mut bob = user(&mut rng, "bob@two.example", 2);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 3);

    let id = c.send(NOW, &addr(&bob), text("hello")).unwrap();
    let (out, _) = drain(&mut c, NOW);
    let reqs = requests(&out);
    let (fetch_id, fetch) = one(fetches(&reqs));
    assert_eq!(fetch.address, "bob@two.example");
    assert!(fetch.devices.is_empty(), "list unknown: every device");
    assert!(
        submitted(&reqs).is_empty(),
        "nothing to submit before the bundles"
    );

    c.handle_input(NOW, bundles_response(fetch_id, &bob, &bob.accounts));
    let (out, _) = drain(&mut c, NOW);
    let ev = events(&out);
    assert!(ev.contains(&ClientEvent::IdentityFirstSeen {
        address: addr(&bob),
        identity: *bob.list.identity_key()
    }));
    let reqs = requests(&out);
    let (submit_id, envelopes) = one(submitted(&reqs));
    assert_eq!(envelopes.len(), 2);
    // Each of Bob's devices opens its copy, with the id `send` returned.
    for b in &mut bob.accounts {
        b.update_device_list(alice.list.clone()).unwrap();
        let mine: Vec<_> = envelopes
            .iter()
            .filter_map(|e| b.decrypt(e.clone(), NOW, &mut rng).ok())
            .collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].message_id, id);
        assert_eq!(mine[0].content, text("hello"));
    }
    assert!(!events(&out).contains(&ClientEvent::DeliveredToProvider { message_id: id }));

    c.handle_input(NOW, done(submit_id));
    let (out, _) = drain(&mut c, NOW);
    assert_eq!(
        events(&out),
        vec![ClientEvent::DeliveredToProvider { message_id: id }]
    );
    assert_eq!(c.pending_messages(), 0);
    // A second answer to the same request is ignored.
    c.handle_input(NOW, done(submit_id));
    assert!(drain(&mut c, NOW).0.is_empty());

    // The next message needs no fetch.
    let id2 = c.send(NOW, &addr(&bob), text("again")).unwrap();
    let (out, _) = drain(&mut c, NOW);
    let reqs = requests(&out);
    assert!(fetches(&reqs).is_empty());
    let (sid, envs) = one(submitted(&reqs));
    assert_eq!(envs.len(), 2);
    c.handle_input(NOW, done(sid));
    assert_eq!(
        events(&drain(&mut c, NOW).0),
        vec![ClientEvent::DeliveredToProvider { message_id: id2 }]
    );
}

#[test]
fn unanswered_requests_are_resent_with_identical_bytes() {
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let bob = user(&mut rng, "bob@two.example", 1);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 3);
    c.send(NOW, &addr(&bob), text("hi")).unwrap();
    let (out, _) = drain(&mut c, NOW);
    let fetch_id = requests(&out)[0].id;
    c.handle_input(NOW, bundles_response(fetch_id, &bob, &bob.accounts));
    let (out, deadline) = drain(&mut c, NOW);
    let first = raw_frames(&out);
    assert_eq!(first.len(), 1);
    assert_eq!(deadline, Some(NOW.saturating_add(RESEND_AFTER_MS)));

    // Nothing before the resend time.
    let early = NOW.saturating_add(RESEND_AFTER_MS - 1);
    c.handle_timeout(early);
    assert!(raw_frames(&drain(&mut c, early).0).is_empty());
    // Then the very same bytes.
    let t = NOW.saturating_add(RESEND_AFTER_MS);
    c.handle_timeout(t);
    assert_eq!(raw_frames(&drain(&mut c, t).0), first);

    // A reconnect resends them too, after the handshake.
    c.handle_input(t, ClientInput::Disconnected);
    let (out, deadline) = drain(&mut c, t);
    assert_eq!(events(&out), vec![ClientEvent::Offline]);
    let t = deadline.unwrap();
    c.handle_timeout(t);
    let out = connect(&mut c, &mut p, t);
    assert_eq!(raw_frames(&out), first);

    // A retryable error: the same bytes again once retry_after has passed.
    let submit_id = requests(&out)[0].id;
    c.handle_input(t, error(submit_id, ErrorCode::MailboxFull, 60_000));
    let (out, deadline) = drain(&mut c, t);
    assert!(raw_frames(&out).is_empty());
    assert_eq!(deadline, Some(t.saturating_add(60_000)));
    let t = t.saturating_add(60_000);
    c.handle_timeout(t);
    assert_eq!(raw_frames(&drain(&mut c, t).0), first);
}

#[test]
fn expiry_and_permanent_errors_make_messages_undeliverable() {
    let mut rng = ChaCha20Rng::from_seed([6; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let bob = user(&mut rng, "bob@two.example", 1);
    let mut p = Fake::new("one.example", 2);
    let account = alice.accounts.remove(0);
    let mut config = p.config();
    config.submit_expiry_ms = 60_000;
    let mut c = Client::new(account, config, ChaCha20Rng::from_seed([3; 32]), NOW);
    let out = connect(&mut c, &mut p, NOW);
    c.handle_input(NOW, done(requests(&out)[0].id));
    let _ = drain(&mut c, NOW);

    // The provider never answers: the message expires.
    let id = c.send(NOW, &addr(&bob), text("lost")).unwrap();
    let mut t = NOW;
    let mut undeliverable = Vec::new();
    for _ in 0..1000 {
        let (out, deadline) = drain(&mut c, t);
        undeliverable.extend(events(&out));
        let Some(next) = deadline else { break };
        if next > NOW.saturating_add(120_000) {
            break;
        }
        t = next;
        c.handle_timeout(t);
    }
    let [
        ClientEvent::Undeliverable {
            message_id,
            recipient,
            device: None,
            reason,
        },
    ] = undeliverable.as_slice()
    else {
        panic!("one undeliverable expected: {undeliverable:?}");
    };
    assert_eq!(*message_id, id);
    assert_eq!(recipient, &addr(&bob));
    assert_eq!(reason.code, Some(ErrorCode::Expired));
    assert_eq!(
        t,
        NOW.saturating_add(60_000),
        "reported at the expiry, not later"
    );
    assert_eq!(c.pending_messages(), 0);

    // A permanent error on the fetch.
    let id = c.send(t, &addr(&bob), text("nobody")).unwrap();
    let (out, _) = drain(&mut c, t);
    let fid = requests(&out).last().unwrap().id;
    c.handle_input(t, error(fid, ErrorCode::UnknownUser, 0));
    let ev = events(&drain(&mut c, t).0);
    assert!(
        matches!(ev.as_slice(), [ClientEvent::Undeliverable { message_id, reason, .. }]
            if *message_id == id && reason.code == Some(ErrorCode::UnknownUser)),
        "{ev:?}"
    );

    // A permanent error on the submit.
    let id = c.send(t, &addr(&bob), text("refused")).unwrap();
    let (out, _) = drain(&mut c, t);
    let fid = fetches(&requests(&out)).last().unwrap().0;
    c.handle_input(t, bundles_response(fid, &bob, &bob.accounts));
    let (out, _) = drain(&mut c, t);
    let sid = submitted(&requests(&out))[0].0;
    c.handle_input(t, error(sid, ErrorCode::NotYours, 0));
    let ev = events(&drain(&mut c, t).0);
    assert!(
        matches!(ev.as_slice(), [ClientEvent::Undeliverable { message_id, reason, .. }]
            if *message_id == id && reason.code == Some(ErrorCode::NotYours)),
        "{ev:?}"
    );
}

#[test]
fn sending_to_self_reaches_the_other_devices() {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 2);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 3);
    let mut other = alice.accounts.remove(0);
    let me = addr(&alice);
    let id = c.send(NOW, &me, text("note to self")).unwrap();
    let (out, _) = drain(&mut c, NOW);
    let (fid, f) = one(fetches(&requests(&out)));
    assert_eq!(f.address, "alice@one.example");
    assert_eq!(
        f.devices,
        vec![Bytes::copy_from_slice(other.device().id().as_bytes())]
    );
    c.handle_input(
        NOW,
        bundles_response(fid, &alice, std::slice::from_ref(&other)),
    );
    let (out, _) = drain(&mut c, NOW);
    let (sid, envs) = one(submitted(&requests(&out)));
    let r = other.decrypt(envs[0].clone(), NOW, &mut rng).unwrap();
    assert_eq!(r.message_id, id);
    assert_eq!(r.conversation, me);
    c.handle_input(NOW, done(sid));
    assert_eq!(
        events(&drain(&mut c, NOW).0),
        vec![ClientEvent::DeliveredToProvider { message_id: id }]
    );
}

#[test]
fn sending_to_self_with_no_other_device_completes_at_once() {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 3);
    let id = c.send(NOW, &addr(&alice), text("alone")).unwrap();
    let out = drain(&mut c, NOW).0;
    assert!(frames(&out).is_empty());
    assert_eq!(
        events(&out),
        vec![ClientEvent::DeliveredToProvider { message_id: id }]
    );
}

#[test]
fn a_device_without_a_bundle_is_reported_and_the_others_get_the_message() {
    let mut rng = ChaCha20Rng::from_seed([8; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let bob = user(&mut rng, "bob@two.example", 2);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 3);
    let id = c.send(NOW, &addr(&bob), text("partial")).unwrap();
    let mut t = NOW;
    let mut all = Vec::new();
    // The provider has a bundle for Bob's first device only, every time.
    for _ in 0..10 {
        let (out, _) = drain(&mut c, t);
        all.extend(events(&out));
        let reqs = requests(&out);
        if let Some((sid, envs)) = submitted(&reqs).first() {
            assert_eq!(envs.len(), 1);
            c.handle_input(t, done(*sid));
            all.extend(events(&drain(&mut c, t).0));
            break;
        }
        let (fid, _) = fetches(&reqs)[0].clone();
        c.handle_input(t, bundles_response(fid, &bob, &bob.accounts[..1]));
        t = t.saturating_add(1);
    }
    let missing = bob.accounts[1].device().id();
    assert!(
        all.contains(&ClientEvent::DeliveredToProvider { message_id: id }),
        "{all:?}"
    );
    assert!(
        all.iter().any(|e| matches!(e,
        ClientEvent::Undeliverable { message_id, device: Some(d), .. }
            if *message_id == id && *d == missing)),
        "{all:?}"
    );
}

#[test]
fn commands_are_bounded() {
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let bob = user(&mut rng, "bob@two.example", 1);
    let p = Fake::new("one.example", 2);
    let mut c = Client::new(
        alice.accounts.remove(0),
        p.config(),
        ChaCha20Rng::from_seed([3; 32]),
        NOW,
    );
    for _ in 0..MAX_CLIENT_PENDING {
        c.send(NOW, &addr(&bob), text("x")).unwrap();
    }
    let err = c.send(NOW, &addr(&bob), text("one too many")).unwrap_err();
    assert_eq!(
        err,
        ClientError::Busy {
            max: MAX_CLIENT_PENDING
        }
    );
    assert_eq!(err.code(), "busy");
    assert_eq!(c.pending_messages(), MAX_CLIENT_PENDING);
    // Offline, nothing goes out but the connection request.
    let (out, _) = drain(&mut c, NOW);
    assert_eq!(out, vec![ClientOutput::Connect]);
    // Content too large is refused at once.
    let mut c2 = {
        let mut a = user(&mut rng, "carol@one.example", 1);
        Client::new(
            a.accounts.remove(0),
            p.config(),
            ChaCha20Rng::from_seed([4; 32]),
            NOW,
        )
    };
    let big = text(&"x".repeat(crate::limits::MAX_PLAINTEXT_LEN + 1));
    assert!(matches!(
        c2.send(NOW, &addr(&bob), big),
        Err(ClientError::Content(_))
    ));
    assert_eq!(c2.pending_messages(), 0);
}

// ----------------------------------------------------------------------------------
// Receiving

/// Alice's client is online; Bob (one device, a raw Account) knows Alice's list.
struct Pair {
    rng: ChaCha20Rng,
    alice: User,
    bob: User,
    p: Fake,
    c: Client<ChaCha20Rng>,
}

fn pair(seed: u8, bob_knows_alice: bool, alice_knows_bob: bool) -> Pair {
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let mut bob = user(&mut rng, "bob@two.example", 1);
    if bob_knows_alice {
        bob.accounts[0]
            .update_device_list(alice.list.clone())
            .unwrap();
    }
    if alice_knows_bob {
        alice.accounts[0]
            .update_device_list(bob.list.clone())
            .unwrap();
    }
    // Bob has a session with Alice's device (from her published bundle).
    let a = &alice.accounts[0];
    let otk = a
        .prekeys()
        .published()
        .one_time_prekeys
        .first()
        .map(SignedPrekey::id);
    let bundle = PrekeyBundle::decode(a.prekey_bundle(otk).unwrap().encode()).unwrap();
    if bob_knows_alice {
        bob.accounts[0].add_bundle(&bundle, NOW, &mut rng).unwrap();
    }
    let mut p = Fake::new("one.example", 2);
    let c = online(&mut alice, &mut p, seed.wrapping_add(1));
    Pair {
        rng,
        alice,
        bob,
        p,
        c,
    }
}

fn from_bob(x: &mut Pair, content: &Content) -> (MessageId, Bytes) {
    let sent = x.bob.accounts[0]
        .encrypt(x.alice.list.address(), content, NOW, &mut x.rng)
        .unwrap();
    assert_eq!(sent.envelopes.len(), 1);
    (sent.message_id, sent.envelopes[0].envelope.clone())
}

#[test]
fn received_text_is_reported_receipted_and_acknowledged() {
    let mut x = pair(10, true, true);
    let (id, env) = from_bob(&mut x, &text("hi alice"));
    x.c.handle_input(NOW, deliver(vec![(7, envelope_item(&env))]));
    let (out, _) = drain(&mut x.c, NOW);
    let ev = events(&out);
    let [ClientEvent::Message(m)] = ev.as_slice() else {
        panic!("one message expected: {ev:?}");
    };
    assert_eq!(m.message_id, id);
    assert_eq!(m.sender, addr(&x.bob));
    assert_eq!(m.conversation, addr(&x.bob));
    assert_eq!(m.sender_device, x.bob.accounts[0].device().id());
    assert_eq!(m.content, text("hi alice"));
    assert_eq!(m.identity, IdentityState::Unverified);
    assert_eq!(acks(&out), vec![7]);
    // Logging the event does not log the plaintext.
    let logged = format!("{out:?}");
    assert!(!logged.contains("hi alice"), "{logged}");
    assert!(logged.contains("text"), "{logged}");
    // The automatic delivery receipt goes out at once (a session exists).
    let reqs = requests(&out);
    let (sid, envs) = one(submitted(&reqs));
    let r = x.bob.accounts[0]
        .decrypt(envs[0].clone(), NOW, &mut x.rng)
        .unwrap();
    assert_eq!(
        r.content,
        Content::Receipt(Receipt {
            kind: ReceiptKind::Delivered,
            message_ids: vec![id]
        })
    );
    // The client's own receipt raises no app event.
    x.c.handle_input(NOW, done(sid));
    assert!(events(&drain(&mut x.c, NOW).0).is_empty());

    // The same item again (the ack was lost): acknowledged, not reported, no receipt.
    x.c.handle_input(NOW, deliver(vec![(7, envelope_item(&env))]));
    let (out, _) = drain(&mut x.c, NOW);
    assert!(events(&out).is_empty(), "{out:?}");
    assert_eq!(acks(&out), vec![7]);
    assert!(requests(&out).is_empty());

    // Once verified, the next message says so.
    x.c.mark_verified(&addr(&x.bob), *x.bob.list.identity_key());
    let (_, env2) = from_bob(&mut x, &text("verified now"));
    x.c.handle_input(NOW, deliver(vec![(8, envelope_item(&env2))]));
    let ev = events(&drain(&mut x.c, NOW).0);
    let [ClientEvent::Message(m)] = ev.as_slice() else {
        panic!("{ev:?}");
    };
    assert_eq!(m.identity, IdentityState::Verified);
}

#[test]
fn receipts_become_delivered_and_read_events_and_mark_read_sends_one() {
    let mut x = pair(11, true, true);
    let mid = MessageId::from_bytes([5; 16]);
    let (_, delivered) = from_bob(
        &mut x,
        &Content::Receipt(Receipt {
            kind: ReceiptKind::Delivered,
            message_ids: vec![mid],
        }),
    );
    let (_, read) = from_bob(
        &mut x,
        &Content::Receipt(Receipt {
            kind: ReceiptKind::Read,
            message_ids: vec![mid],
        }),
    );
    x.c.handle_input(
        NOW,
        deliver(vec![
            (1, envelope_item(&delivered)),
            (2, envelope_item(&read)),
        ]),
    );
    let (out, _) = drain(&mut x.c, NOW);
    let by = addr(&x.bob);
    let device = x.bob.accounts[0].device().id();
    assert_eq!(
        events(&out),
        vec![
            ClientEvent::DeliveredToDevice {
                message_id: mid,
                by: by.clone(),
                device
            },
            ClientEvent::Read {
                message_id: mid,
                by: by.clone(),
                device
            },
        ]
    );
    assert_eq!(acks(&out), vec![1, 2]);
    assert!(requests(&out).is_empty(), "receipts are never receipted");

    // Alice reads Bob's message: an end-to-end read receipt.
    let (id, env) = from_bob(&mut x, &text("read me"));
    x.c.handle_input(NOW, deliver(vec![(3, envelope_item(&env))]));
    let _ = drain(&mut x.c, NOW);
    x.c.mark_read(NOW, &by, &[id]).unwrap();
    let (out, _) = drain(&mut x.c, NOW);
    let subs = submitted(&requests(&out));
    let [(_, envs)] = subs.as_slice() else {
        panic!("{out:?}");
    };
    let mut kinds = Vec::new();
    // The delivery receipt (still unanswered) is resent later; this is the read one.
    for e in envs {
        let r = x.bob.accounts[0]
            .decrypt(e.clone(), NOW, &mut x.rng)
            .unwrap();
        kinds.push(r.content);
    }
    assert_eq!(
        kinds,
        vec![Content::Receipt(Receipt {
            kind: ReceiptKind::Read,
            message_ids: vec![id]
        })]
    );
}

#[test]
fn an_unknown_sender_is_held_until_its_device_list_arrives() {
    let mut x = pair(12, true, false);
    let (id, env) = from_bob(&mut x, &text("who am i"));
    x.c.handle_input(NOW, deliver(vec![(3, envelope_item(&env))]));
    let (out, _) = drain(&mut x.c, NOW);
    assert!(events(&out).is_empty());
    assert!(acks(&out).is_empty(), "not acknowledged while held");
    let reqs = requests(&out);
    let [r] = reqs.as_slice() else {
        panic!("{out:?}");
    };
    let Some(wire::request::Body::FetchDeviceList(f)) = &r.body else {
        panic!("device list fetch expected");
    };
    assert_eq!(f.address, "bob@two.example");
    // Delivered again meanwhile: still held once, no second fetch.
    x.c.handle_input(NOW, deliver(vec![(3, envelope_item(&env))]));
    let (out, _) = drain(&mut x.c, NOW);
    assert!(out.is_empty(), "{out:?}");

    x.c.handle_input(
        NOW,
        respond(
            r.id,
            wire::response::Body::DeviceList(wire::DeviceListResponse {
                device_list: x.bob.list.encoded().clone(),
            }),
        ),
    );
    let (out, _) = drain(&mut x.c, NOW);
    let ev = events(&out);
    assert!(
        ev.iter()
            .any(|e| matches!(e, ClientEvent::Message(m) if m.message_id == id)),
        "{ev:?}"
    );
    assert_eq!(acks(&out), vec![3]);
}

#[test]
fn a_sender_still_unknown_after_the_fetch_is_rejected() {
    let mut x = pair(13, true, false);
    let (_, env) = from_bob(&mut x, &text("forged?"));
    x.c.handle_input(NOW, deliver(vec![(4, envelope_item(&env))]));
    let (out, _) = drain(&mut x.c, NOW);
    let rid = requests(&out)[0].id;
    // The provider answers with a list that does not list Bob's device (Carol's list
    // under Bob's name does not even verify for that address).
    let carol = user(&mut x.rng, "carol@one.example", 1);
    x.c.handle_input(
        NOW,
        respond(
            rid,
            wire::response::Body::DeviceList(wire::DeviceListResponse {
                device_list: carol.list.encoded().clone(),
            }),
        ),
    );
    let (out, _) = drain(&mut x.c, NOW);
    assert_eq!(
        events(&out),
        vec![ClientEvent::Rejected {
            seq: 4,
            code: "unknown_sender",
            claimed_sender: Some(addr(&x.bob)),
        }]
    );
    assert_eq!(acks(&out), vec![4]);
}

#[test]
fn malformed_envelopes_are_rejected_and_acknowledged() {
    let mut x = pair(14, true, true);
    let (_, env) = from_bob(&mut x, &text("tamper"));
    let mut bad = env.to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1; // the signature
    x.c.handle_input(
        NOW,
        deliver(vec![
            (1, envelope_item(&Bytes::from(bad))),
            (2, envelope_item(&Bytes::from_static(b"junk"))),
        ]),
    );
    let (out, _) = drain(&mut x.c, NOW);
    let ev = events(&out);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(ev.iter().all(|e| matches!(e, ClientEvent::Rejected { .. })));
    assert_eq!(acks(&out), vec![1, 2]);
    // The genuine one still opens afterwards: nothing changed.
    x.c.handle_input(NOW, deliver(vec![(3, envelope_item(&env))]));
    let ev = events(&drain(&mut x.c, NOW).0);
    assert!(matches!(ev.as_slice(), [ClientEvent::Message(_)]), "{ev:?}");
}

#[test]
fn prekeys_low_mints_and_publishes_more() {
    let mut x = pair(15, true, true);
    let before: Vec<u32> =
        x.c.account()
            .prekeys()
            .published()
            .one_time_prekeys
            .iter()
            .map(SignedPrekey::id)
            .collect();
    assert_eq!(before.len(), MAX_ONE_TIME_PREKEYS);
    let notice = wire::mailbox_item::Item::Notice(wire::Notice {
        body: Some(wire::notice::Body::PrekeysLow(wire::PrekeysLow {
            remaining: 3,
        })),
    });
    x.c.handle_input(NOW, deliver(vec![(9, notice.clone())]));
    let (out, _) = drain(&mut x.c, NOW);
    assert_eq!(events(&out), vec![ClientEvent::PrekeysLow { remaining: 3 }]);
    assert_eq!(acks(&out), vec![9]);
    let reqs = requests(&out);
    let [r] = reqs.as_slice() else {
        panic!("{out:?}");
    };
    let Some(wire::request::Body::PublishPrekeys(pk)) = &r.body else {
        panic!("publish expected");
    };
    assert_eq!(pk.one_time.len(), CLIENT_PREKEY_REFILL);
    let owner = x.c.account().device().certificate().clone();
    let new: Vec<u32> = pk
        .one_time
        .iter()
        .map(|k| SignedPrekey::decode(k.clone(), &owner).unwrap().id())
        .collect();
    assert!(new.iter().all(|id| !before.contains(id)), "fresh prekeys");
    assert!(new.iter().all(|id| *id > *before.iter().max().unwrap()));
    // The local pool stays bounded; the oldest went.
    let after = x.c.account().prekeys().published().one_time_prekeys;
    assert_eq!(after.len(), MAX_ONE_TIME_PREKEYS);
    assert!(!after.iter().any(|k| k.id() == before[0]));
    // A second notice while the publish is pending mints nothing more.
    x.c.handle_input(NOW, deliver(vec![(10, notice)]));
    let (out, _) = drain(&mut x.c, NOW);
    assert!(requests(&out).is_empty());
    x.c.handle_input(NOW, done(r.id));
    assert!(drain(&mut x.c, NOW).0.is_empty());
}

#[test]
fn provider_undeliverable_notices_are_reported_once() {
    let mut x = pair(16, true, true);
    let mid = MessageId::from_bytes([7; 16]);
    let device = x.bob.accounts[0].device().id();
    let notice = wire::mailbox_item::Item::Notice(wire::Notice {
        body: Some(wire::notice::Body::Undeliverable(wire::Undeliverable {
            message_id: Bytes::copy_from_slice(mid.as_bytes()),
            recipient: "bob@two.example".into(),
            device: Bytes::copy_from_slice(device.as_bytes()),
            reason: Some(ProtocolError::new(ErrorCode::Expired, "relay expired").to_wire()),
        })),
    });
    x.c.handle_input(NOW, deliver(vec![(20, notice.clone())]));
    let (out, _) = drain(&mut x.c, NOW);
    assert_eq!(
        events(&out),
        vec![ClientEvent::Undeliverable {
            message_id: mid,
            recipient: addr(&x.bob),
            device: Some(device),
            reason: ProtocolError::new(ErrorCode::Expired, "relay expired"),
        }]
    );
    assert_eq!(acks(&out), vec![20]);
    x.c.handle_input(NOW, deliver(vec![(20, notice)]));
    let (out, _) = drain(&mut x.c, NOW);
    assert!(events(&out).is_empty());
    assert_eq!(acks(&out), vec![20]);
}

// ----------------------------------------------------------------------------------
// Malformed input

#[test]
fn a_garbage_frame_closes_the_connection_and_it_reconnects() {
    let mut x = pair(17, true, true);
    x.c.handle_input(
        NOW,
        ClientInput::Received(Bytes::from_static(b"\xff\xff garbage")),
    );
    let (out, deadline) = drain(&mut x.c, NOW);
    let f = frames(&out);
    let [Body::Goodbye(g)] = f.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!(g.error.as_ref().unwrap().code, "bad_frame");
    assert!(out.contains(&ClientOutput::Close));
    assert_eq!(events(&out), vec![ClientEvent::Offline]);
    assert!(!x.c.is_online());
    let t = deadline.unwrap();
    x.c.handle_timeout(t);
    let _ = connect(&mut x.c, &mut x.p, t);
    assert!(x.c.is_online());
}

#[test]
fn out_of_place_and_unknown_frames_change_nothing() {
    let mut x = pair(18, true, true);
    let junk = [
        // A response to a request never made.
        protocol::encode(Body::Response(wire::Response {
            id: 12345,
            body: Some(wire::response::Body::Done(wire::Done {})),
        })),
        // Handshake frames after the handshake (duplicates).
        protocol::encode(Body::Welcome(wire::Welcome { time_ms: 1 })),
        protocol::encode(Body::DeliverAck(wire::DeliverAck { seqs: vec![1] })),
    ];
    for j in junk {
        x.c.handle_input(NOW, ClientInput::Received(j));
        assert!(drain(&mut x.c, NOW).0.is_empty());
        assert!(x.c.is_online());
    }
    // Before any connection, frames are ignored.
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let mut carol = user(&mut rng, "carol@one.example", 1);
    let mut c = Client::new(
        carol.accounts.remove(0),
        x.p.config(),
        ChaCha20Rng::from_seed([2; 32]),
        NOW,
    );
    let _ = drain(&mut c, NOW);
    c.handle_input(NOW, ClientInput::Received(Bytes::from_static(b"junk")));
    assert!(drain(&mut c, NOW).0.is_empty());
}

#[test]
fn random_frames_never_panic() {
    let mut x = pair(19, true, true);
    let mut rng = ChaCha20Rng::from_seed([99; 32]);
    let mut t = NOW;
    for i in 0..2000u32 {
        let len = (rng.next_u32() % 200) as usize;
        let mut b = vec![0u8; len];
        rng.fill_bytes(&mut b);
        // Some well-formed frames with random content too.
        let frame = match i % 4 {
            0 => protocol::encode(Body::Response(wire::Response {
                id: u64::from(rng.next_u32() % 4),
                body: Some(wire::response::Body::Bundles(wire::Bundles {
                    device_list: Bytes::from(b.clone()),
                    bundles: vec![Bytes::from(b)],
                })),
            })),
            1 => protocol::encode(Body::Deliver(wire::Deliver {
                items: vec![wire::MailboxItem {
                    seq: u64::from(i),
                    item: Some(wire::mailbox_item::Item::Envelope(Bytes::from(b))),
                }],
            })),
            _ => Bytes::from(b),
        };
        x.c.handle_input(t, ClientInput::Received(frame));
        let (out, deadline) = drain(&mut x.c, t);
        if out.contains(&ClientOutput::Close) {
            t = deadline.unwrap();
            x.c.handle_timeout(t);
            let _ = connect(&mut x.c, &mut x.p, t);
        }
    }
}

#[test]
fn at_most_max_in_flight_requests_are_outstanding() {
    let mut x = pair(20, true, true);
    let bob = addr(&x.bob);
    let n = MAX_CLIENT_IN_FLIGHT + 10;
    for i in 0..n {
        x.c.send(NOW, &bob, text(&format!("m{i}"))).unwrap();
    }
    let (out, _) = drain(&mut x.c, NOW);
    let (fid, _) = one(fetches(&requests(&out)));
    x.c.handle_input(NOW, bundles_response(fid, &x.bob, &x.bob.accounts));
    let (out, _) = drain(&mut x.c, NOW);
    let subs = submitted(&requests(&out));
    assert_eq!(subs.len(), MAX_CLIENT_IN_FLIGHT);
    // Each answer lets one more out; the resend timer covers only what was sent.
    x.c.handle_input(NOW, done(subs[0].0));
    let (out, _) = drain(&mut x.c, NOW);
    assert_eq!(submitted(&requests(&out)).len(), 1);
    // After the resend time, the unanswered ones go again (not the waiting ones).
    let t = NOW.saturating_add(RESEND_AFTER_MS);
    x.c.handle_timeout(t);
    let (out, _) = drain(&mut x.c, t);
    assert_eq!(submitted(&requests(&out)).len(), MAX_CLIENT_IN_FLIGHT);
    // Every message is sealed once, in send order: Bob reads them all, in order.
    let mut all: Vec<(u64, Bytes)> = submitted(&requests(&out))
        .into_iter()
        .map(|(id, e)| (id, e[0].clone()))
        .collect();
    all.sort_by_key(|(id, _)| *id);
    let first = x.bob.accounts[0]
        .decrypt(all[0].1.clone(), NOW, &mut x.rng)
        .unwrap();
    assert_eq!(first.content, text("m1"));
}

#[test]
fn an_identity_change_is_reported_and_clears_verification() {
    let mut x = pair(21, true, true);
    let bob_addr = addr(&x.bob);
    x.c.mark_verified(&bob_addr, *x.bob.list.identity_key());
    // Bob reinstalls: a new identity key, a new device, a new list.
    let mut rng = ChaCha20Rng::from_seed([77; 32]);
    let mut bob2 = user(&mut rng, "bob@two.example", 1);
    bob2.accounts[0]
        .update_device_list(x.alice.list.clone())
        .unwrap();
    let a = x.c.account();
    let otk = a
        .prekeys()
        .published()
        .one_time_prekeys
        .first()
        .map(SignedPrekey::id);
    let bundle = PrekeyBundle::decode(a.prekey_bundle(otk).unwrap().encode()).unwrap();
    bob2.accounts[0].add_bundle(&bundle, NOW, &mut rng).unwrap();
    let sent = bob2.accounts[0]
        .encrypt(x.alice.list.address(), &text("new phone"), NOW, &mut rng)
        .unwrap();
    let env = sent.envelopes[0].envelope.clone();
    x.c.handle_input(NOW, deliver(vec![(1, envelope_item(&env))]));
    let (out, _) = drain(&mut x.c, NOW);
    let r = one(requests(&out));
    x.c.handle_input(
        NOW,
        respond(
            r.id,
            wire::response::Body::DeviceList(wire::DeviceListResponse {
                device_list: bob2.list.encoded().clone(),
            }),
        ),
    );
    let (out, _) = drain(&mut x.c, NOW);
    let ev = events(&out);
    assert_eq!(
        ev[0],
        ClientEvent::IdentityChanged {
            address: bob_addr.clone(),
            old: *x.bob.list.identity_key(),
            new: *bob2.list.identity_key(),
        }
    );
    assert!(ev.contains(&ClientEvent::DeviceRemoved {
        address: bob_addr.clone(),
        device: x.bob.accounts[0].device().id()
    }));
    assert!(ev.contains(&ClientEvent::DeviceAdded {
        address: bob_addr.clone(),
        device: bob2.accounts[0].device().id()
    }));
    let Some(ClientEvent::Message(m)) = ev.last() else {
        panic!("{ev:?}");
    };
    assert_eq!(m.identity, IdentityState::Changed);
    assert_eq!(m.identity_key, *bob2.list.identity_key());
    assert_eq!(acks(&out), vec![1]);
}

#[test]
fn copies_from_own_devices_name_the_conversation_and_are_not_receipted() {
    let mut rng = ChaCha20Rng::from_seed([22; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 2);
    let bob = user(&mut rng, "bob@two.example", 1);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 3);
    // Alice's other device has a session with this one and sends to Bob.
    let mut other = alice.accounts.remove(0);
    other.update_device_list(bob.list.clone()).unwrap();
    let a = c.account();
    let otk = a
        .prekeys()
        .published()
        .one_time_prekeys
        .first()
        .map(SignedPrekey::id);
    let mine = PrekeyBundle::decode(a.prekey_bundle(otk).unwrap().encode()).unwrap();
    other.add_bundle(&mine, NOW, &mut rng).unwrap();
    let b = &bob.accounts[0];
    let bb = PrekeyBundle::decode(b.prekey_bundle(None).unwrap().encode()).unwrap();
    other.add_bundle(&bb, NOW, &mut rng).unwrap();
    let sent = other
        .encrypt(&addr(&bob), &text("to bob"), NOW, &mut rng)
        .unwrap();
    let copy = sent
        .envelopes
        .iter()
        .find(|e| e.recipient == addr(&alice))
        .unwrap()
        .envelope
        .clone();
    c.handle_input(NOW, deliver(vec![(1, envelope_item(&copy))]));
    let (out, _) = drain(&mut c, NOW);
    let ev = events(&out);
    let [ClientEvent::Message(m)] = ev.as_slice() else {
        panic!("{ev:?}");
    };
    assert_eq!(m.conversation, addr(&bob));
    assert_eq!(m.sender, addr(&alice));
    assert_eq!(m.identity, IdentityState::Verified);
    assert!(requests(&out).is_empty(), "no receipt to oneself");
    assert_eq!(acks(&out), vec![1]);
}

#[test]
fn an_oversized_binding_fails_authentication() {
    let mut rng = ChaCha20Rng::from_seed([23; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let p = Fake::new("one.example", 2);
    let mut c = Client::new(
        alice.accounts.remove(0),
        p.config(),
        ChaCha20Rng::from_seed([3; 32]),
        NOW,
    );
    let _ = drain(&mut c, NOW);
    let binding = Bytes::from(vec![0u8; crate::limits::MAX_BINDING_LEN + 1]);
    c.handle_input(NOW, ClientInput::Connected { binding });
    let (out, _) = drain(&mut c, NOW);
    assert!(frames(&out).is_empty());
    assert_eq!(
        events(&out),
        vec![ClientEvent::AuthFailed(AuthFailure::BadBinding)]
    );
    assert!(out.contains(&ClientOutput::Close));
}

#[test]
fn a_verified_contact_is_never_replaced_silently() {
    let mut rng = ChaCha20Rng::from_seed([31; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let bob = user(&mut rng, "bob@two.example", 1);
    // A provider's stand-in for Bob: same address, its own identity key.
    let fake = user(&mut rng, "bob@two.example", 1);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 32);
    // Alice compared safety numbers with Bob in person.
    c.mark_verified(&addr(&bob), *bob.list.identity_key());

    let id = c.send(NOW, &addr(&bob), text("for bob only")).unwrap();
    let (out, _) = drain(&mut c, NOW);
    let (fetch_id, _) = one(fetches(&requests(&out)));
    c.handle_input(NOW, bundles_response(fetch_id, &fake, &fake.accounts));
    let (out, _) = drain(&mut c, NOW);
    let ev = events(&out);
    // Reported as a change (not a first contact), and nothing is sealed to it.
    assert!(
        ev.contains(&ClientEvent::IdentityChanged {
            address: addr(&bob),
            old: *bob.list.identity_key(),
            new: *fake.list.identity_key(),
        }),
        "{ev:?}"
    );
    assert!(submitted(&requests(&out)).is_empty());
    let Some(ClientEvent::Undeliverable {
        message_id, reason, ..
    }) = ev
        .iter()
        .find(|e| matches!(e, ClientEvent::Undeliverable { .. }))
    else {
        panic!("{ev:?}");
    };
    assert_eq!(*message_id, id);
    assert_eq!(reason.code, Some(ErrorCode::IdentityMismatch));
    assert_eq!(c.pending_messages(), 0);
}

#[test]
fn an_old_device_list_is_refreshed_before_sealing_and_a_new_device_is_reached() {
    use crate::identity::{Device, DeviceKeyPair, DeviceList};
    let mut rng = ChaCha20Rng::from_seed([41; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let bob = user(&mut rng, "bob@two.example", 1);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 42);
    let id = c.send(NOW, &addr(&bob), text("1")).unwrap();
    let (out, _) = drain(&mut c, NOW);
    let (fid, _) = one(fetches(&requests(&out)));
    c.handle_input(NOW, bundles_response(fid, &bob, &bob.accounts));
    let (out, _) = drain(&mut c, NOW);
    let (sid, envs) = one(submitted(&requests(&out)));
    assert_eq!(envs.len(), 1);
    c.handle_input(NOW, done(sid));
    assert_eq!(
        events(&drain(&mut c, NOW).0),
        vec![ClientEvent::DeliveredToProvider { message_id: id }]
    );

    // Bob adds a tablet.
    let tablet = Device::new(
        &bob.identity,
        addr(&bob),
        DeviceKeyPair::generate(&mut rng),
        NOW.saturating_sub(1000),
        NOW.saturating_add(365 * 24 * 3_600_000),
    )
    .unwrap();
    let certs = [
        bob.accounts[0].device().certificate().clone(),
        tablet.certificate().clone(),
    ];
    let list2 = DeviceList::sign(&bob.identity, &addr(&bob), 2, NOW, &certs).unwrap();
    let mut tablet_account = Account::new(tablet, list2.clone(), NOW, &mut rng).unwrap();
    tablet_account.replenish_prekeys(NOW, &mut rng);

    // Within the refresh period the old list is used as is.
    let soon = NOW.saturating_add(CLIENT_LIST_REFRESH_MS - 1);
    let _ = c.send(soon, &addr(&bob), text("2")).unwrap();
    let (out, _) = drain(&mut c, soon);
    let (sid, envs) = one(submitted(&requests(&out)));
    assert_eq!(envs.len(), 1);
    c.handle_input(soon, done(sid));
    let _ = drain(&mut c, soon);

    // After it, the list is fetched first, and the new device gets its copy.
    let later = NOW.saturating_add(CLIENT_LIST_REFRESH_MS);
    let id3 = c.send(later, &addr(&bob), text("3")).unwrap();
    let (out, _) = drain(&mut c, later);
    let reqs = requests(&out);
    assert!(submitted(&reqs).is_empty(), "sealed before the refresh");
    let list_req = one(
        reqs.iter()
            .filter(|r| matches!(&r.body, Some(wire::request::Body::FetchDeviceList(f)) if f.address == "bob@two.example"))
            .cloned()
            .collect(),
    );
    // Alice's own list is refreshed too (her other devices could have changed).
    let own_req = one(
        reqs.iter()
            .filter(|r| matches!(&r.body, Some(wire::request::Body::FetchDeviceList(f)) if f.address == "alice@one.example"))
            .cloned()
            .collect(),
    );
    c.handle_input(
        later,
        respond(
            own_req.id,
            wire::response::Body::DeviceList(wire::DeviceListResponse {
                device_list: alice.list.encoded().clone(),
            }),
        ),
    );
    c.handle_input(
        later,
        respond(
            list_req.id,
            wire::response::Body::DeviceList(wire::DeviceListResponse {
                device_list: list2.encoded().clone(),
            }),
        ),
    );
    let (out, _) = drain(&mut c, later);
    assert!(events(&out).contains(&ClientEvent::DeviceAdded {
        address: addr(&bob),
        device: tablet_account.device().id(),
    }));
    let (fid, f) = one(fetches(&requests(&out)));
    assert_eq!(
        f.devices,
        vec![Bytes::copy_from_slice(
            tablet_account.device().id().as_bytes()
        )]
    );
    c.handle_input(
        later,
        respond(
            fid,
            wire::response::Body::Bundles(wire::Bundles {
                device_list: list2.encoded().clone(),
                bundles: bundles(std::slice::from_ref(&tablet_account)),
            }),
        ),
    );
    let (out, _) = drain(&mut c, later);
    let (sid, envs) = one(submitted(&requests(&out)));
    assert_eq!(envs.len(), 2);
    tablet_account
        .update_device_list(alice.list.clone())
        .unwrap();
    let got: Vec<_> = envs
        .iter()
        .filter_map(|e| tablet_account.decrypt(e.clone(), later, &mut rng).ok())
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, id3);
    c.handle_input(later, done(sid));
    assert_eq!(
        events(&drain(&mut c, later).0),
        vec![ClientEvent::DeliveredToProvider { message_id: id3 }]
    );
}

#[test]
fn a_device_list_can_be_fetched_before_any_message() {
    let mut rng = ChaCha20Rng::from_seed([40; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let bob = user(&mut rng, "bob@two.example", 2);
    let mut p = Fake::new("one.example", 41);
    let mut c = online(&mut alice, &mut p, 42);
    let b = addr(&bob);
    assert!(!c.is_fetching_device_list(&b));
    c.fetch_device_list(NOW, &b).unwrap();
    // Asking again while it is under way sends nothing more.
    c.fetch_device_list(NOW, &b).unwrap();
    assert!(c.is_fetching_device_list(&b));
    let (out, _) = drain(&mut c, NOW);
    let reqs = requests(&out);
    let [r] = reqs.as_slice() else {
        panic!("one fetch expected: {out:?}");
    };
    let Some(wire::request::Body::FetchDeviceList(f)) = &r.body else {
        panic!("device list fetch expected");
    };
    assert_eq!(f.address, "bob@two.example");
    c.handle_input(
        NOW,
        respond(
            r.id,
            wire::response::Body::DeviceList(wire::DeviceListResponse {
                device_list: bob.list.encoded().clone(),
            }),
        ),
    );
    let (out, _) = drain(&mut c, NOW);
    assert!(!c.is_fetching_device_list(&b));
    assert_eq!(
        c.account().contacts().get(&b).map(DeviceList::identity_key),
        Some(bob.list.identity_key())
    );
    assert!(
        events(&out)
            .iter()
            .any(|e| matches!(e, ClientEvent::IdentityFirstSeen { address, .. } if *address == b)),
        "{out:?}"
    );
}

#[test]
fn a_device_linked_later_gets_the_groups_from_its_own_users_device() {
    use crate::group::GroupChange;
    use crate::identity::{Device, DeviceKeyPair, DeviceList};
    let mut rng = ChaCha20Rng::from_seed([43; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 44);
    let me = addr(&alice);

    // Alice's device creates a group (alone in it); one.example orders the change.
    let group = c.create_group(NOW, "notes", &[]).unwrap();
    let (out, _) = drain(&mut c, NOW);
    let order = one(requests(&out));
    let Some(wire::request::Body::OrderGroupChange(o)) = &order.body else {
        panic!("{order:?}");
    };
    let ordered = GroupChange::decode(o.change.clone())
        .unwrap()
        .sequence(&p.key);
    c.handle_input(
        NOW,
        respond(
            order.id,
            wire::response::Body::GroupChange(wire::GroupChangeOrdered {
                change: ordered.encoded().clone(),
            }),
        ),
    );
    let (out, _) = drain(&mut c, NOW);
    assert!(matches!(
        events(&out).as_slice(),
        [ClientEvent::GroupChanged { epoch: 0, .. }]
    ));

    // Alice links a laptop: her list gains it, and her phone hands it the group.
    let laptop_device = Device::new(
        &alice.identity,
        me.clone(),
        DeviceKeyPair::generate(&mut rng),
        NOW.saturating_sub(1000),
        NOW.saturating_add(365 * 24 * 3_600_000),
    )
    .unwrap();
    let certs = vec![
        c.account().device().certificate().clone(),
        laptop_device.certificate().clone(),
    ];
    let list2 = DeviceList::sign(&alice.identity, &me, 2, NOW, &certs).unwrap();
    let mut laptop = Account::new(laptop_device, list2.clone(), NOW, &mut rng).unwrap();
    laptop.replenish_prekeys(NOW, &mut rng);
    c.fetch_device_list(NOW, &me).unwrap();
    let (out, _) = drain(&mut c, NOW);
    let fetch = one(requests(&out));
    c.handle_input(
        NOW,
        respond(
            fetch.id,
            wire::response::Body::DeviceList(wire::DeviceListResponse {
                device_list: list2.encoded().clone(),
            }),
        ),
    );
    let (out, _) = drain(&mut c, NOW);
    let (fid, f) = one(fetches(&requests(&out)));
    assert_eq!(f.address, "alice@one.example");
    let alice2 = User {
        identity: alice.identity,
        list: list2.clone(),
        accounts: Vec::new(),
    };
    c.handle_input(
        NOW,
        bundles_response(fid, &alice2, std::slice::from_ref(&laptop)),
    );
    let (out, _) = drain(&mut c, NOW);
    let (sid, envs) = one(submitted(&requests(&out)));
    c.handle_input(NOW, done(sid));
    // Looked at on a copy of the laptop's account: the laptop's client opens it below.
    let key = crate::crypto::Secret::new([9; 32]);
    let copy = laptop.save(&key, &mut rng);
    let r = laptop.decrypt(envs[0].clone(), NOW, &mut rng).unwrap();
    let laptop = Account::restore(&copy, &key).unwrap();
    let Content::GroupSync(sync) = &r.content else {
        panic!("{:?}", r.content);
    };
    assert_eq!(sync.state(), c.group(group).unwrap());

    // The laptop's client takes it (from its own user's device only).
    let mut lc = Client::new(laptop, p.config(), ChaCha20Rng::from_seed([45; 32]), NOW);
    let out = connect(&mut lc, &mut p, NOW);
    let publish = one(requests(&out));
    lc.handle_input(NOW, done(publish.id));
    let _ = drain(&mut lc, NOW);
    lc.handle_input(NOW, deliver(vec![(1, envelope_item(&envs[0]))]));
    let (out, _) = drain(&mut lc, NOW);
    assert!(
        events(&out).contains(&ClientEvent::GroupSynced { group, epoch: 0 }),
        "{out:?}"
    );
    assert_eq!(acks(&out), vec![1]);
    assert_eq!(lc.group(group), c.group(group));
}

/// What [`serve`] saw: the events, and the one-to-one envelopes submitted.
#[derive(Default)]
struct Served {
    events: Vec<ClientEvent>,
    envelopes: Vec<Bytes>,
}

/// An honest provider that answers every request at once: device lists and bundles of
/// `users` (a bundle only for the devices marked available), every submission stored,
/// every change ordered. Runs until the client has nothing more to ask at `t`.
fn serve<R: CryptoRng>(
    c: &mut Client<R>,
    p: &Fake,
    t: UnixMillis,
    users: &[(&User, &[bool])],
) -> Served {
    let mut served = Served::default();
    for _ in 0..100 {
        let (out, _) = drain(c, t);
        served.events.extend(events(&out));
        let reqs = requests(&out);
        if reqs.is_empty() {
            return served;
        }
        for r in reqs {
            use wire::request::Body as Req;
            use wire::response::Body as Resp;
            let find = |a: &str| {
                users
                    .iter()
                    .find(|(u, _)| u.list.address().as_str() == a)
                    .unwrap_or_else(|| panic!("no such user {a}"))
            };
            let answer = match r.body.unwrap() {
                Req::FetchDeviceList(f) => respond(
                    r.id,
                    Resp::DeviceList(wire::DeviceListResponse {
                        device_list: find(&f.address).0.list.encoded().clone(),
                    }),
                ),
                Req::FetchBundles(f) => {
                    let (u, available) = find(&f.address);
                    let present: Vec<&Account> = u
                        .accounts
                        .iter()
                        .zip(available.iter())
                        .filter(|(_, on)| **on)
                        .map(|(a, _)| a)
                        .collect();
                    respond(
                        r.id,
                        Resp::Bundles(wire::Bundles {
                            device_list: u.list.encoded().clone(),
                            bundles: present.iter().map(|a| bundle(a)).collect(),
                        }),
                    )
                }
                Req::Submit(s) => {
                    served.envelopes.extend(s.envelopes);
                    done(r.id)
                }
                Req::OrderGroupChange(o) => {
                    let ordered = crate::group::GroupChange::decode(o.change)
                        .unwrap()
                        .sequence(&p.key);
                    respond(
                        r.id,
                        Resp::GroupChange(wire::GroupChangeOrdered {
                            change: ordered.encoded().clone(),
                        }),
                    )
                }
                _ => done(r.id),
            };
            c.handle_input(t, answer);
        }
    }
    panic!("the client keeps asking");
}

/// The bundle `a` would hand out, with a one-time prekey.
fn bundle(a: &Account) -> Bytes {
    let otk = a
        .prekeys()
        .published()
        .one_time_prekeys
        .first()
        .map(SignedPrekey::id);
    a.prekey_bundle(otk).unwrap().encode()
}

/// The sender keys among `envelopes` that `device` can open.
fn sender_keys_for(
    device: &mut Account,
    envelopes: &[Bytes],
    now: UnixMillis,
) -> Vec<crate::group::SenderKey> {
    let mut rng = ChaCha20Rng::from_seed([77; 32]);
    envelopes
        .iter()
        .filter_map(|e| device.decrypt(e.clone(), now, &mut rng).ok())
        .filter_map(|r| match r.content {
            Content::GroupSenderKey(k) => Some(*k),
            _ => None,
        })
        .collect()
}

#[test]
fn a_sender_key_that_missed_a_device_goes_again_without_a_new_message() {
    use crate::group::{GroupAction, GroupRole};
    use crate::limits::{GROUP_KEY_RETRY_MAX_MS, GROUP_KEY_RETRY_MIN_MS};
    let mut rng = ChaCha20Rng::from_seed([50; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let mut bob = user(&mut rng, "bob@two.example", 2);
    let mut carol = user(&mut rng, "carol@three.example", 1);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 51);
    for a in bob.accounts.iter_mut().chain(carol.accounts.iter_mut()) {
        a.update_device_list(alice.list.clone()).unwrap();
    }
    let all: [bool; 2] = [true, true];
    let t0 = NOW;

    // Alice makes a group with Bob; Bob's second device has not published prekeys yet.
    c.fetch_device_list(t0, &addr(&bob)).unwrap();
    c.fetch_device_list(t0, &addr(&carol)).unwrap();
    serve(&mut c, &p, t0, &[(&bob, &all), (&carol, &all)]);
    let group = c.create_group(t0, "g", &[addr(&bob)]).unwrap();
    serve(&mut c, &p, t0, &[(&bob, &all), (&carol, &all)]);
    let bob_first_only: &[bool] = &[true, false];
    c.send_group(t0, group, text("m0")).unwrap();
    let s = serve(&mut c, &p, t0, &[(&bob, bob_first_only), (&carol, &all)]);
    assert_eq!(
        sender_keys_for(&mut bob.accounts[0], &s.envelopes, t0).len(),
        1
    );
    assert!(sender_keys_for(&mut bob.accounts[1], &s.envelopes, t0).is_empty());

    // Carol joins; Alice's next message misses her only device the same way.
    let t1 = t0.saturating_add(1_000);
    let carol_member = c.group_member(&addr(&carol), GroupRole::Member).unwrap();
    c.change_group(t1, group, GroupAction::Add(vec![carol_member]))
        .unwrap();
    serve(
        &mut c,
        &p,
        t1,
        &[(&bob, bob_first_only), (&carol, &[false])],
    );
    c.send_group(t1, group, text("m1")).unwrap();
    let s = serve(
        &mut c,
        &p,
        t1,
        &[(&bob, bob_first_only), (&carol, &[false])],
    );
    assert!(sender_keys_for(&mut carol.accounts[0], &s.envelopes, t1).is_empty());

    // Nothing goes before the retry is due: the first miss plus GROUP_KEY_RETRY_MIN_MS.
    let due = t0.saturating_add(GROUP_KEY_RETRY_MIN_MS);
    let (_, deadline) = drain(&mut c, t1);
    assert_eq!(deadline, Some(due));
    c.handle_timeout(due.saturating_sub(1));
    assert!(requests(&drain(&mut c, due.saturating_sub(1)).0).is_empty());

    // Still unreachable at the first round: the next waits twice as long.
    c.handle_timeout(due);
    let s = serve(
        &mut c,
        &p,
        due,
        &[(&bob, bob_first_only), (&carol, &[false])],
    );
    assert!(sender_keys_for(&mut bob.accounts[1], &s.envelopes, due).is_empty());
    assert!(sender_keys_for(&mut carol.accounts[0], &s.envelopes, due).is_empty());
    let (_, deadline) = drain(&mut c, due);
    let second = due.saturating_add(2 * GROUP_KEY_RETRY_MIN_MS);
    assert_eq!(deadline, Some(second));

    // Both devices have published by the second round: each gets the chain at the first
    // position it was meant to read, with no message from Alice in between. Bob's device
    // (a member when the chain was made) from its start; Carol's from m1, the first
    // message sent to her, not from where the chain is now nor from before she joined.
    c.handle_timeout(second);
    let s = serve(&mut c, &p, second, &[(&bob, &all), (&carol, &[true])]);
    let bob_keys = sender_keys_for(&mut bob.accounts[1], &s.envelopes, second);
    let carol_keys = sender_keys_for(&mut carol.accounts[0], &s.envelopes, second);
    assert_eq!(
        bob_keys.iter().map(|k| k.iteration()).collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(
        carol_keys.iter().map(|k| k.iteration()).collect::<Vec<_>>(),
        vec![1]
    );
    // A key goes to a user's reachable devices, so Bob's first device gets the chain's
    // start again; a receiver keeps a chain it holds as it is (SPEC.md 19.2).
    assert!(
        sender_keys_for(&mut bob.accounts[0], &s.envelopes, second)
            .iter()
            .all(|k| k.iteration() == 0)
    );

    // Everyone reached: no further round is scheduled.
    let (_, deadline) = drain(&mut c, second);
    assert!(
        deadline.is_none_or(|d| d > second.saturating_add(GROUP_KEY_RETRY_MAX_MS)),
        "{deadline:?}"
    );
}

#[test]
fn a_device_that_left_a_group_hands_its_chain_no_more() {
    use crate::group::GroupAction;
    use crate::limits::GROUP_KEY_RETRY_MIN_MS;
    let mut rng = ChaCha20Rng::from_seed([52; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let mut bob = user(&mut rng, "bob@two.example", 2);
    let mut p = Fake::new("one.example", 2);
    let mut c = online(&mut alice, &mut p, 53);
    for a in &mut bob.accounts {
        a.update_device_list(alice.list.clone()).unwrap();
    }
    let t0 = NOW;
    c.fetch_device_list(t0, &addr(&bob)).unwrap();
    serve(&mut c, &p, t0, &[(&bob, &[true, true])]);
    let group = c.create_group(t0, "g", &[addr(&bob)]).unwrap();
    serve(&mut c, &p, t0, &[(&bob, &[true, true])]);
    // Bob's second device misses the key: a round is scheduled.
    c.send_group(t0, group, text("m0")).unwrap();
    serve(&mut c, &p, t0, &[(&bob, &[true, false])]);
    let due = t0.saturating_add(GROUP_KEY_RETRY_MIN_MS);
    assert_eq!(drain(&mut c, t0).1, Some(due));

    // Alice makes Bob an admin and leaves before the round: it hands her chain to nobody.
    let admin = GroupAction::SetRole {
        member: addr(&bob),
        role: crate::group::GroupRole::Admin,
    };
    c.change_group(t0, group, admin).unwrap();
    serve(&mut c, &p, t0, &[(&bob, &[true, false])]);
    c.change_group(t0, group, GroupAction::Leave).unwrap();
    let s = serve(&mut c, &p, t0, &[(&bob, &[true, false])]);
    assert!(
        s.events.iter().any(|e| matches!(
            e,
            ClientEvent::GroupChanged {
                action: GroupAction::Leave,
                ..
            }
        )),
        "{:?}",
        s.events
    );
    c.handle_timeout(due);
    let s = serve(&mut c, &p, due, &[(&bob, &[true, true])]);
    assert!(s.envelopes.is_empty(), "{} envelopes", s.envelopes.len());
}

//! # Kogge
//!
//! Federated, end-to-end-encrypted instant messaging: independent providers speak one
//! open protocol, the way e-mail servers do. No provider can read a message (it is
//! sealed to the recipient device) or forge one (every envelope is signed by the sender
//! device). The wire format is specified in `SPEC.md` and `proto/`.
//!
//! ## Architecture
//!
//! The crate is a *sans-IO* core in the style of `quinn-proto` and `rustls`: it never
//! opens a socket, reads a clock or touches the OS random number generator. Time comes
//! in as [`UnixMillis`] arguments and randomness as a `rand_core::CryptoRng`, so every
//! run is reproducible from its inputs.
//!
//! ```text
//!        sim  (deterministic network: faults, crash-restart, malicious provider, invariants)
//!         │
//!   client ─────────── provider ── store (Store trait, MemoryStore) ── resolve (directory)
//!     │  (device state      │  (mailboxes, federation queues, group fan-out,
//!     │   machine, groups)  │   the groups' sequencer, prekey handout, rate limits)
//!     └──────── protocol ───┘  (frames, handshake transcripts, error codes, backoff)
//!                  │
//!               session  (prekeys, PQ-hybrid setup, Double Ratchet, Account, persistence)
//!                  │        group (member-governed state, sequenced changes, sender keys)
//!                  │
//!  address ── identity ── envelope   (certificates, device lists; signed sealed envelopes)
//!     │          │           │
//!     └──────────┴── crypto ─┴── wire (prost types from proto/, crate-private)
//! ```
//!
//! * [`address`]: `user@provider` addresses and provider domains, one parser each.
//! * [`identity`]: identity, device and provider keys; device certificates; signed device
//!   lists; fingerprints.
//! * [`envelope`]: sealing and opening signed, encrypted envelopes; content; replay
//!   window; batch verification.
//! * [`session`]: end-to-end sessions. [`session::Account`] is what an app holds per
//!   device: it sets up sessions from prekey bundles (X25519 + ML-KEM-768), encrypts to
//!   every device on a user's signed device list, decrypts (also in batches), and saves
//!   and restores its state encrypted under an app key.
//! * [`group`]: groups: states governed by their members' signed changes, ordered by a
//!   sequencer provider (SPEC.md 18); sender-key messages encrypted and signed once (19);
//!   carried by the client and the providers, one copy per recipient provider (20).
//! * [`protocol`]: the client↔provider and provider↔provider frames (SPEC.md 16).
//! * [`client::Client`] and [`provider::Provider`]: the two state machines. Both are
//!   driven the same way: an input (`handle_input(now, …)`, a command, or
//!   `handle_timeout(now)` once the last deadline passed), then `poll_output(now)` until
//!   it returns `Timeout(next deadline)`, acting on every output on the way (send a frame,
//!   open or close a connection, show an event). The provider commits every change to its
//!   [`store::Store`] before it releases an output that depends on it.
//! * [`resolve`]: from a provider domain to its endpoint and provider key.
//! * [`sim`]: the simulator that checks delivery and security invariants over seeds.
//! * [`crypto`]: the primitives wrapped once, with domain-separation [`crypto::Label`]s.
//! * [`limits`]: every bound, by name, as SPEC.md lists them.
//!
//! Every input that comes from a peer gets a typed error with a stable code (SPEC.md 10)
//! and leaves state unchanged; nothing here panics on input.
//!
//! ## Sending and receiving
//!
//! The smallest complete exchange, with one-shot sealing. Conversations use
//! [`session::Account`] the same way (see `examples/attacks.rs`); the [`client`] and
//! [`provider`] state machines carry them over a network (`examples/federation.rs`).
//!
//! ```
//! use bytes::Bytes;
//! use kogge::address::Address;
//! use kogge::envelope::{self, Content, KnownDevices, MessageId, Outgoing, ReplayWindow, Text};
//! use kogge::identity::{Device, DeviceKeyPair, IdentityKeyPair};
//! use kogge::UnixMillis;
//! use rand_core::SeedableRng;
//!
//! # fn main() -> Result<(), kogge::Error> {
//! let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]); // any CryptoRng
//! let now = UnixMillis(1_700_000_000_000);
//! let year = UnixMillis(now.0 + 365 * 24 * 3600 * 1000);
//! let device = |rng: &mut rand_chacha::ChaCha20Rng, addr: &str| -> Result<Device, kogge::Error> {
//!     let identity = IdentityKeyPair::generate(rng);
//!     Ok(Device::new(&identity, Address::parse(addr)?, DeviceKeyPair::generate(rng), now, year)?)
//! };
//! let alice = device(&mut rng, "alice@one.example")?;
//! let bob = device(&mut rng, "bob@two.example")?;
//!
//! let content = Content::Text(Text::plain("hello Bob"));
//! let sealed: Bytes = envelope::seal(&alice, &Outgoing {
//!     recipient: bob.certificate(),
//!     message_id: MessageId::random(&mut rng),
//!     timestamp: now,
//!     content: &content,
//! }, &mut rng)?;
//!
//! let mut known = KnownDevices::new();          // Bob's view of certified devices
//! known.insert(alice.certificate().clone());
//! let mut replay = ReplayWindow::default();
//! let opened = envelope::open(sealed.clone(), &bob, &known, &mut replay, now)?;
//! assert_eq!(opened.content, content);
//! // The same bytes again are a replay, refused without changing any state.
//! assert!(envelope::open(sealed, &bob, &known, &mut replay, now).is_err());
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod address;
pub mod client;
pub mod crypto;
pub mod envelope;
mod error;
pub mod group;
pub mod identity;
pub mod limits;
pub mod protocol;
pub mod provider;
pub mod resolve;
pub mod session;
pub mod sim;
pub mod store;
mod time;
pub mod transport;
#[cfg(test)]
mod vectors;
mod wire;

pub use error::Error;
pub use time::UnixMillis;

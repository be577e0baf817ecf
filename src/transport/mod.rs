//! Transport adapters: the glue between the sans-IO state machines
//! ([`crate::provider::Provider`], [`crate::client::Client`]) and a real network.
//!
//! The core never depends on anything here; each adapter sits behind its own cargo
//! feature.
//!
//! * [`quic`] (feature `quic`): QUIC with quinn and rustls, authenticated with the
//!   providers' own Ed25519 keys instead of the web PKI.

#[cfg(feature = "quic")]
#[cfg_attr(docsrs, doc(cfg(feature = "quic")))]
pub mod quic;

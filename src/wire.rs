//! The prost types generated from `proto/` at build time. Crate-private: the public API
//! speaks in checked domain types, never in raw protobuf structs.

#![allow(
    missing_docs,
    unreachable_pub,
    dead_code,
    clippy::all,
    clippy::pedantic
)]

include!(concat!(env!("OUT_DIR"), "/kogge.v1.rs"));

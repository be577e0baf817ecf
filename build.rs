//! Generates the prost types from `proto/` at build time with `protox`, a pure-Rust
//! protobuf compiler, so that no system `protoc` is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/kogge/v1/envelope.proto",
    "proto/kogge/v1/identity.proto",
    "proto/kogge/v1/content.proto",
    "proto/kogge/v1/session.proto",
    "proto/kogge/v1/state.proto",
    "proto/kogge/v1/protocol.proto",
    "proto/kogge/v1/provider_store.proto",
    "proto/kogge/v1/group.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    prost_build::Config::new()
        .bytes(["."])
        .out_dir(&out)
        .compile_fds(fds)?;
    Ok(())
}

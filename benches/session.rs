//! Session benchmarks (being written).
fn main() {}

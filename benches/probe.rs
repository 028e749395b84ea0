//! Placeholder for the probe benchmarks.
fn main() {}

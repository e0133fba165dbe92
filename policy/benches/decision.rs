//! Decision benchmarks (filled in below).

fn main() {}

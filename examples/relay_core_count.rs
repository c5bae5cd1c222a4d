//! The relay_core loop of `benches/core.rs` (18 publishes of 64 bytes per
//! datagram, one plain subscriber) for a fixed number of iterations, for
//! counting work per message where timing is too noisy: run it under
//! `valgrind --tool=cachegrind` at two iteration counts and divide the
//! difference by the messages between them (docs/BENCHMARKS.md).
//!
//! `cargo build --release --example relay_core_count`, then
//! `target/release/examples/relay_core_count [ITERATIONS] [SUBSCRIBERS]`
//! (default 200,000 and 1; more subscribers measure fan-out).

#[path = "../benches/common/relay_core.rs"]
mod relay_core;

use std::time::Instant;

fn main() {
    let iters: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ITERATIONS is a number"))
        .unwrap_or(200_000);
    let subscribers: u16 = std::env::args()
        .nth(2)
        .map(|s| s.parse().expect("SUBSCRIBERS is a number"))
        .unwrap_or(1);
    let mut bench = relay_core::RelayCoreLoop::with_subscribers(subscribers);
    let start = Instant::now();
    for _ in 0..iters {
        bench.step();
    }
    let el = start.elapsed();
    let msgs = iters * bench.per_datagram;
    eprintln!(
        "msgs={msgs} per_dgram={} out_dgrams={} {:.3} M msg/s",
        bench.per_datagram,
        bench.sent,
        msgs as f64 / el.as_secs_f64() / 1e6
    );
}

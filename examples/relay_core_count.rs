//! The relay_core loop of `benches/core.rs` (18 publishes of 64 bytes per
//! datagram, one plain subscriber) for a fixed number of iterations, for
//! counting work per message where timing is too noisy: run it under
//! `valgrind --tool=cachegrind` at two iteration counts and divide the
//! difference by the messages between them (docs/BENCHMARKS.md).
//!
//! `cargo build --release --example relay_core_count`, then
//! `target/release/examples/relay_core_count [ITERATIONS]` (default 200,000).
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udprelay::config::RelayConfig;
use udprelay::relay::{Now, Relay};
use udprelay::wire::{self, DatagramBuilder, DeliveryMode, Frame, StartPosition};

fn packed_publishes() -> (Vec<u8>, u64) {
    let payload = [0x42u8; 64];
    let frame = Frame::Publish {
        channel: "bench",
        payload: &payload,
    };
    let mut b = DatagramBuilder::new(1400);
    let mut n = 0;
    while b.push(&frame).is_ok() {
        n += 1;
    }
    (b.finish(), n)
}

fn main() {
    let iters: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ITERATIONS is a number"))
        .unwrap_or(200_000);
    let (datagram, per_datagram) = packed_publishes();
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    config.log.segment_size = 8 << 20;
    config.log.retain_bytes = Some(64 << 20);
    let t = Instant::now();
    let mut now = Now {
        instant: t,
        unix_nanos: 1,
    };
    let mut relay = Relay::open(&config, now).unwrap();
    let publisher: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let subscriber: SocketAddr = "127.0.0.1:2000".parse().unwrap();
    let subscribe = wire::encode_datagram(&[Frame::Subscribe {
        sub_id: 1,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel: "bench",
    }])
    .unwrap();
    relay.handle_datagram(now, subscriber, &subscribe);
    while relay.poll_transmit().is_some() {}
    let mut count = 0u64;
    let mut out = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        relay.handle_datagram(now, publisher, black_box(&datagram));
        while let Some(t) = relay.poll_transmit() {
            black_box(t);
            out += 1;
        }
        count += 1;
        if count.is_multiple_of(4096) {
            now = now.after(Duration::from_secs(2));
            relay.handle_timeout(now);
            relay.handle_datagram(now, subscriber, &subscribe);
            while relay.poll_transmit().is_some() {}
        }
    }
    let el = start.elapsed();
    let msgs = iters * per_datagram;
    eprintln!(
        "msgs={msgs} per_dgram={per_datagram} out_dgrams={out} {:.3} M msg/s",
        msgs as f64 / el.as_secs_f64() / 1e6
    );
}

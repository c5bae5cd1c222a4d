//! The reliable path in one process, for counting work per message where
//! timing is too noisy: a reliable publisher and a reliable subscriber (the
//! `client` pieces udpbench uses) and the relay core, passing datagrams
//! directly at simulated times, until every message has been delivered and
//! acknowledged. Run it under `valgrind --tool=cachegrind` at two message
//! counts and divide the difference by the messages between them
//! (docs/BENCHMARKS.md).
//!
//! `cargo build --release --example reliable_core_count`, then
//! `target/release/examples/reliable_core_count [MESSAGES]` (default 200,000).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use udprelay::client::{ReliablePublisher, ReliableSubscription, SubscriptionEvent};
use udprelay::config::RelayConfig;
use udprelay::relay::{Now, Relay};
use udprelay::reliable::ArqConfig;
use udprelay::wire::StartPosition;

/// Simulated time between steps.
const STEP: Duration = Duration::from_micros(20);

fn main() {
    let messages: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("MESSAGES is a number"))
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    config.log.segment_size = 8 << 20;
    config.log.retain_bytes = Some(64 << 20);
    let start = Instant::now();
    let mut now = Now {
        instant: start,
        unix_nanos: 1_700_000_000_000_000_000,
    };
    let mut relay = Relay::open(&config, now).expect("relay");
    let publisher_addr: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let subscriber_addr: SocketAddr = "127.0.0.1:2000".parse().unwrap();
    let arq = ArqConfig::default();
    let mut subscriber =
        ReliableSubscription::new(1, "bench", StartPosition::Latest, arq, now.instant).unwrap();
    let mut publisher = ReliablePublisher::new(7, "bench", arq, 1400).unwrap();
    let payload = vec![0x42u8; 64];
    let (mut pushed, mut received) = (0u64, 0u64);
    let wall = Instant::now();
    while received < messages || !publisher.is_done() {
        if subscriber.is_active() {
            while pushed < messages && publisher.wants_input() {
                publisher.push(payload.clone()).unwrap();
                pushed += 1;
            }
        }
        while let Some(d) = subscriber.poll_transmit(now.instant) {
            relay.handle_datagram(now, subscriber_addr, &d);
        }
        while let Some(d) = publisher.poll_transmit(now.instant) {
            relay.handle_datagram(now, publisher_addr, &d);
        }
        if relay.poll_timeout().is_some_and(|at| at <= now.instant) {
            relay.handle_timeout(now);
        }
        while let Some(t) = relay.poll_transmit() {
            if t.destination == subscriber_addr {
                subscriber.handle_datagram(now.instant, &t.payload, |e| {
                    if let SubscriptionEvent::Message { .. } = e {
                        received += 1;
                    }
                });
            } else {
                publisher.handle_datagram(now.instant, &t.payload, |code, reason| {
                    panic!("relay refused: {code:?} {reason}")
                });
            }
        }
        if publisher.poll_timeout().is_some_and(|at| at <= now.instant) {
            publisher.handle_timeout(now.instant);
        }
        now = now.after(STEP);
    }
    let simulated = now.instant - start;
    eprintln!(
        "msgs={messages} received={received} simulated={simulated:?} wall={:.3} M msg/s",
        messages as f64 / wall.elapsed().as_secs_f64() / 1e6
    );
}

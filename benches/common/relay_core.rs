//! The relay core from datagram in to datagrams out, as `benches/core.rs`
//! measures it and `examples/relay_core_count.rs` counts it: datagrams
//! packed with 64-byte publishes to one channel with one plain subscriber
//! (or several: fan-out).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use udprelay::client::AddressProof;
use udprelay::config::RelayConfig;
use udprelay::relay::{Now, Relay};
use udprelay::wire::{self, DatagramBuilder, DeliveryMode, Frame, StartPosition};

/// A datagram packed with as many 64-byte publishes as fit in 1400 bytes,
/// and how many that is.
pub fn packed_publishes() -> (Vec<u8>, u64) {
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

/// A relay with plain subscribers, fed one packed datagram per step.
pub struct RelayCoreLoop {
    /// The relay under test.
    relay: Relay,
    /// The simulated clock.
    now: Now,
    /// Where the publishes come from.
    publisher: SocketAddr,
    /// The subscribers.
    subscribers: Vec<SocketAddr>,
    /// The SUBSCRIBE that keeps their leases, behind each one's address
    /// token.
    subscribe: Vec<Vec<u8>>,
    /// The packed publishes.
    datagram: Vec<u8>,
    /// Messages in each datagram.
    pub per_datagram: u64,
    /// Steps so far.
    steps: u64,
    /// Datagrams the relay sent.
    pub sent: u64,
    /// The data directory, removed on drop.
    _dir: tempfile::TempDir,
}

impl RelayCoreLoop {
    /// A relay in a fresh data directory with `n` subscribers on "bench",
    /// each at its own address.
    pub fn with_subscribers(n: u16) -> RelayCoreLoop {
        let (datagram, per_datagram) = packed_publishes();
        let dir = tempfile::tempdir().unwrap();
        // Retention keeps a long run from filling the disk: it runs below
        // every few thousand datagrams, on a simulated clock.
        let mut config = RelayConfig {
            data_dir: dir.path().to_path_buf(),
            ..RelayConfig::default()
        };
        config.log.segment_size = 8 << 20;
        config.log.retain_bytes = Some(64 << 20);
        let now = Now {
            instant: Instant::now(),
            unix_nanos: 1,
        };
        let mut relay = Relay::open(&config, now).unwrap();
        let subscribers: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 2000 + i)))
            .collect();
        let subscribe = wire::encode_datagram(&[Frame::Subscribe {
            sub_id: 1,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Latest,
            channel: "bench",
            group: None,
            origins: false,
            resume: udprelay::wire::ResumeVector::EMPTY,
        }])
        .unwrap();
        // Each subscriber proves its address first (a SUBSCRIBE without a
        // token gets only a token), as real clients do.
        let subscribe: Vec<Vec<u8>> = (subscribers.iter())
            .map(|&subscriber| {
                let mut proof = AddressProof::new();
                relay.handle_datagram(now, subscriber, &AddressProof::hello());
                while let Some(t) = relay.poll_transmit() {
                    proof.handle_datagram(now.instant, &t.payload);
                }
                assert!(proof.is_proven(), "the relay sent a token");
                let stamped = proof.stamp(subscribe.clone());
                relay.handle_datagram(now, subscriber, &stamped);
                stamped
            })
            .collect();
        while relay.poll_transmit().is_some() {}
        assert_eq!(relay.subscription_count(), subscribers.len());
        RelayCoreLoop {
            relay,
            now,
            publisher: "127.0.0.1:1000".parse().unwrap(),
            subscribers,
            subscribe,
            datagram,
            per_datagram,
            steps: 0,
            sent: 0,
            _dir: dir,
        }
    }

    /// One packed datagram in, every datagram out collected.
    pub fn step(&mut self) {
        let relay = &mut self.relay;
        relay.handle_datagram(self.now, self.publisher, black_box(&self.datagram));
        while let Some(t) = relay.poll_transmit() {
            black_box(t);
            self.sent += 1;
        }
        self.steps += 1;
        if self.steps.is_multiple_of(4096) {
            self.now = self.now.after(Duration::from_secs(2));
            relay.handle_timeout(self.now);
            // Keep the subscribers' leases alive on the simulated clock.
            for (&subscriber, subscribe) in self.subscribers.iter().zip(&self.subscribe) {
                relay.handle_datagram(self.now, subscriber, subscribe);
            }
            while relay.poll_transmit().is_some() {}
        }
    }
}

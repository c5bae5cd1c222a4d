//! The sans-IO pieces on the hot path, one message at a time: the codec, the
//! ARQ's send/acknowledge cycle and the relay core from datagram in to
//! datagrams out. `cargo bench --bench core`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use udprelay::config::RelayConfig;
use udprelay::relay::{Now, Relay};
use udprelay::reliable::{ArqConfig, Sender};
use udprelay::wire::{self, DatagramBuilder, DeliveryMode, Frame, StartPosition};

/// A datagram packed with as many 64-byte publishes as fit in 1400 bytes.
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

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let (datagram, per_datagram) = packed_publishes();
    group.throughput(Throughput::Elements(per_datagram));
    group.bench_function("encode_64B_publishes", |b| {
        let payload = [0x42u8; 64];
        let frame = Frame::Publish {
            channel: "bench",
            payload: &payload,
        };
        let mut builder = DatagramBuilder::new(1400);
        b.iter(|| {
            for _ in 0..per_datagram {
                builder.push(black_box(&frame)).unwrap();
            }
            black_box(builder.finish())
        })
    });
    group.bench_function("decode_64B_publishes", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for f in wire::decode_datagram(black_box(&datagram)).unwrap() {
                if let Ok(Frame::Publish { payload, .. }) = f {
                    bytes += payload.len();
                }
            }
            black_box(bytes)
        })
    });
    group.finish();
}

fn arq(c: &mut Criterion) {
    let mut group = c.benchmark_group("arq");
    group.throughput(Throughput::Elements(1));
    group.bench_function("send_and_ack_cycle", |b| {
        // Windows of 64 messages sent, then acknowledged together.
        let config = ArqConfig {
            max_cwnd: 1 << 20,
            receive_window: 1 << 20,
            ..ArqConfig::default()
        };
        let mut s = Sender::new(config, 0);
        let mut now = Instant::now();
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut done = 0;
            while done < iters {
                let n = 64.min(iters - done);
                for _ in 0..n {
                    black_box(s.on_send(now));
                }
                now += Duration::from_micros(100);
                s.on_ack(s.next_seq(), [], 1 << 20, now);
                done += n;
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn relay_core(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_core");
    let (datagram, per_datagram) = packed_publishes();
    group.throughput(Throughput::Elements(per_datagram));
    group.bench_function("publish_append_fan_out_to_1", |b| {
        let dir = tempfile::tempdir().unwrap();
        // Retention keeps a long run from filling the disk: it runs below
        // every few thousand datagrams, on a simulated clock.
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
        b.iter(|| {
            relay.handle_datagram(now, publisher, black_box(&datagram));
            while let Some(t) = relay.poll_transmit() {
                black_box(t);
            }
            count += 1;
            if count.is_multiple_of(4096) {
                now = now.after(Duration::from_secs(2));
                relay.handle_timeout(now);
                // Keep the subscriber's lease alive on the simulated clock.
                relay.handle_datagram(now, subscriber, &subscribe);
                while relay.poll_transmit().is_some() {}
            }
        })
    });
    group.finish();
}

criterion_group!(benches, codec, arq, relay_core);
criterion_main!(benches);

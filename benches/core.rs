//! The sans-IO pieces on the hot path, one message at a time: the codec, the
//! ARQ's send/acknowledge cycle and the relay core from datagram in to
//! datagrams out. `cargo bench --bench core`.

mod common {
    pub mod relay_core;
}

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::relay_core::{RelayCoreLoop, packed_publishes};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use udprelay::reliable::{ArqConfig, Sender};
use udprelay::wire::{self, DatagramBuilder, Frame};

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
    let mut bench = RelayCoreLoop::with_subscribers(1);
    group.throughput(Throughput::Elements(bench.per_datagram));
    group.bench_function("publish_append_fan_out_to_1", |b| b.iter(|| bench.step()));
    let mut bench = RelayCoreLoop::with_subscribers(10);
    group.bench_function("publish_append_fan_out_to_10", |b| b.iter(|| bench.step()));
    group.finish();
}

criterion_group!(benches, codec, arq, relay_core);
criterion_main!(benches);

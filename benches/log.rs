//! Log append and replay, beside a plain `write()` append of the same records.
//!
//! `cargo bench --bench log`. Appends go to fresh logs in a temporary
//! directory with `--fsync none` semantics (the page cache), a million
//! records per log, so a long run does not fill the disk.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use udprelay::log::{ChannelLog, DataDir, LogConfig};

const PER_LOG: u64 = 1_000_000;

fn fresh_log() -> (tempfile::TempDir, DataDir, ChannelLog) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open(dir.path(), LogConfig::default()).expect("data dir");
    let log = data.create_channel("bench").expect("channel");
    (dir, data, log)
}

/// Times `iters` appends of `payload`, in fresh logs of at most PER_LOG records.
fn time_appends(iters: u64, payload: &[u8]) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(PER_LOG);
        let (_dir, _data, mut log) = fresh_log();
        let start = Instant::now();
        for i in 0..n {
            black_box(log.append(i, None, payload).expect("append"));
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

/// The same records appended with one plain write() each to an ordinary file.
fn time_writes(iters: u64, payload: &[u8]) -> Duration {
    let record_len = udprelay::log::segment::record_size(payload.len());
    let mut record = vec![0u8; record_len];
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(PER_LOG);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = File::create(dir.path().join("plain.log")).expect("file");
        let start = Instant::now();
        for i in 0..n {
            // Encode like the log does (offset, timestamp, payload, CRC) so
            // the comparison is the storage path, not the encoding.
            udprelay::log::segment::write_record(
                &mut record,
                0,
                i,
                i,
                udprelay::log::segment::RecordMark::None,
                payload,
            );
            file.write_all(&record).expect("write");
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.measurement_time(Duration::from_secs(4));
    for size in [64usize, 512] {
        let payload = vec![0x5A; size];
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("mmap_log_{size}B"), |b| {
            b.iter_custom(|iters| time_appends(iters, &payload))
        });
        group.bench_function(format!("plain_write_{size}B"), |b| {
            b.iter_custom(|iters| time_writes(iters, &payload))
        });
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    for size in [64usize, 512] {
        let (_dir, _data, mut log) = fresh_log();
        let payload = vec![0xA5; size];
        let records = 200_000u64;
        for i in 0..records {
            log.append(i, None, &payload).expect("append");
        }
        let bytes = records * udprelay::log::segment::record_size(size) as u64;
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(format!("scan_{size}B"), |b| {
            // Copy every payload out, as building deliver frames does.
            let mut out = Vec::with_capacity(64 << 10);
            b.iter(|| {
                let mut copied = 0usize;
                log.scan(0, |r| {
                    if out.len() + r.payload.len() > out.capacity() {
                        copied += out.len();
                        black_box(&out);
                        out.clear();
                    }
                    out.extend_from_slice(r.payload);
                    true
                })
                .expect("scan");
                black_box(copied)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append, replay);
criterion_main!(benches);

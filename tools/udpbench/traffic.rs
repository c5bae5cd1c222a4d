//! What the benchmark's messages carry and how a subscriber counts them:
//! the message header (publisher, number, send time), the per-subscriber
//! duplicate and order tracking, and the tallies that become a report.
//! Also the socket every publisher, subscriber and forwarder uses.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use udprelay::auth::Credential;
use udprelay::client::{Handshake, Secured};

use crate::report::{Latency, PERCENTILES_PER_NINE, Percentile};

/// Bytes at the start of every message: publisher, number, send time.
pub const HEADER: usize = 4 + 8 + 8;

/// Width of one step of the throughput timeline.
const STEP_NS: u64 = 100_000_000;

/// A blocking socket on 127.0.0.1 with large buffers (the kernel caps
/// them), whose receive gives up after 5 ms so a loop can see its stop flag.
pub fn socket() -> Result<UdpSocket, String> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| e.to_string())?;
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .map_err(|e| e.to_string())?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(5)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Nanoseconds since `epoch`: the clock in every message's send time.
pub fn epoch_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// The payload of message `number` of publisher `p`.
pub fn message(p: usize, number: u64, size: usize, epoch: Instant) -> Vec<u8> {
    let mut m = Vec::with_capacity(size.max(HEADER));
    fill_message(&mut m, p, number, size, epoch_ns(epoch));
    m
}

/// Writes message `number` of publisher `p`, sent at `stamp` nanoseconds
/// after the epoch, into `m`.
pub fn fill_message(m: &mut Vec<u8>, p: usize, number: u64, size: usize, stamp: u64) {
    m.clear();
    m.extend_from_slice(&(p as u32).to_le_bytes());
    m.extend_from_slice(&number.to_le_bytes());
    m.extend_from_slice(&stamp.to_le_bytes());
    m.resize(size.max(HEADER), 0x5A);
}

/// What one subscriber, or all of them together, counted.
pub struct Tally {
    /// Distinct messages received.
    pub received: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages received after a later one of the same publisher.
    pub reordered: u64,
    /// Payload bytes of the distinct messages.
    pub bytes: u64,
    /// One-way latency of each distinct message, in nanoseconds.
    latency: Histogram<u64>,
    /// Messages received per 100 ms since the epoch.
    buckets: Vec<u64>,
}

impl Tally {
    /// Nothing counted yet.
    pub fn new() -> Tally {
        Tally {
            received: 0,
            duplicates: 0,
            reordered: 0,
            bytes: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("valid histogram bounds"),
            buckets: Vec::new(),
        }
    }

    /// Adds what `other` counted.
    pub fn add(&mut self, other: &Tally) {
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.bytes += other.bytes;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        let _ = self.latency.add(&other.latency);
    }

    /// The latency percentiles, in µs.
    pub fn latency(&self) -> Latency {
        let h = &self.latency;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }

    /// The latency distribution, as [`crate::report::Run::latency_percentiles`]
    /// describes it.
    pub fn latency_percentiles(&self) -> Vec<Percentile> {
        let h = &self.latency;
        if h.is_empty() {
            return Vec::new();
        }
        let steps = PERCENTILES_PER_NINE as f64;
        // Step k is 1 - p = 10^(-k/steps); it has a message to show while
        // 1 - p ≥ 1 / received (with room for rounding at a power of ten).
        let mut points: Vec<Percentile> = (0u32..)
            .map(|k| 10f64.powf(-f64::from(k) / steps))
            .take_while(|tail| tail * h.len() as f64 >= 1.0 - 1e-9)
            .map(|tail| Percentile {
                percentile: 100.0 - 100.0 * tail,
                us: h.value_at_quantile(1.0 - tail) as f64 / 1000.0,
            })
            .collect();
        points.push(Percentile {
            percentile: 100.0,
            us: h.max() as f64 / 1000.0,
        });
        points
    }

    /// Messages received per second in each step, from the step that holds
    /// `start` (nanoseconds after the epoch) on.
    pub fn timeline(&self, start: u64) -> Vec<f64> {
        self.buckets
            .iter()
            .skip((start / STEP_NS) as usize)
            .map(|n| *n as f64 * 1e9 / STEP_NS as f64)
            .collect()
    }
}

/// Per subscriber: the highest number seen from each publisher, and whether
/// a number was seen (for duplicates), kept as a bitmap.
pub struct Seen {
    highest: Vec<Option<u64>>,
    bits: Vec<Vec<u64>>,
}

impl Seen {
    /// Nothing seen yet from any of `publishers`.
    pub fn new(publishers: usize) -> Seen {
        Seen {
            highest: vec![None; publishers],
            bits: vec![Vec::new(); publishers],
        }
    }

    /// Counts `message`, received `now_ns` after the epoch, into `tally`.
    /// A message too short for the header or from an unknown publisher is
    /// not counted.
    pub fn record(&mut self, tally: &mut Tally, message: &[u8], now_ns: u64) {
        if message.len() < HEADER {
            return;
        }
        let publisher = u32::from_le_bytes(message[0..4].try_into().unwrap_or_default()) as usize;
        let number = u64::from_le_bytes(message[4..12].try_into().unwrap_or_default());
        let sent = u64::from_le_bytes(message[12..20].try_into().unwrap_or_default());
        let (Some(highest), Some(bits)) = (
            self.highest.get_mut(publisher),
            self.bits.get_mut(publisher),
        ) else {
            return;
        };
        let (word, bit) = ((number / 64) as usize, number % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            tally.duplicates += 1;
            return;
        }
        bits[word] |= 1 << bit;
        if highest.is_some_and(|h| number < h) {
            tally.reordered += 1;
        }
        *highest = Some(highest.map_or(number, |h| h.max(number)));
        tally.received += 1;
        let step = (now_ns / STEP_NS) as usize;
        if tally.buckets.len() <= step {
            tally.buckets.resize(step + 1, 0);
        }
        tally.buckets[step] += 1;
        tally.bytes += message.len() as u64;
        let _ = tally.latency.record(now_ns.saturating_sub(sent).max(1));
    }
}

/// Opens a keyed session with the relay at `relay` on `socket` (connected
/// to it): the handshake, sent again until answered, for at most 5 s.
pub fn handshake(socket: &UdpSocket, credential: &Credential) -> Result<Secured, String> {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut hs = Handshake::new(credential, unix).map_err(|e| e.to_string())?;
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < give_up {
        if let Some(d) = hs.poll_transmit(Instant::now()) {
            let _ = socket.send(&d);
        }
        // The socket's read timeout (5 ms) paces this loop.
        if let Ok(n) = socket.recv(&mut buf)
            && let Some(done) = hs.handle_datagram(Instant::now(), &buf[..n])
        {
            return done.map_err(|e| e.to_string());
        }
    }
    Err("no handshake answer from the relay within 5 s: does it have the key (--keys)?".into())
}

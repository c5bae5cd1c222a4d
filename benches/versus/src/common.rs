//! What the NATS and Aeron clients share: the message layout, pacing, the
//! lossless-rate search (udpbench's, so the three systems are searched the
//! same way), latency percentiles and the one-line JSON results.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Message size in bytes, as udpbench's default `--size`.
pub const SIZE: usize = 64;

/// Loss a run may have and still count as lossless: a thousandth, as
/// udpbench's `--find-lossless`.
pub const LOSSLESS: f64 = 0.001;

/// Bisection steps after the unpaced run, as udpbench's `--find-lossless`.
pub const PROBES: usize = 7;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Writes message `number`, sent at `stamp_ns` after the epoch, into `m`:
/// the number and the stamp lead, the rest is zeros up to [`SIZE`].
pub fn fill(m: &mut [u8; SIZE], number: u64, stamp_ns: u64) {
    m[0..8].copy_from_slice(&number.to_le_bytes());
    m[8..16].copy_from_slice(&stamp_ns.to_le_bytes());
}

/// The send time a message carries, in nanoseconds after the epoch.
pub fn stamp_of(m: &[u8]) -> u64 {
    m.get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Nanoseconds since `epoch`.
pub fn ns_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Spun at the end of a wait rather than slept: a sleep may end late.
const SPIN: Duration = Duration::from_micros(20);

/// Shortest wait of a paced publisher between bursts, as udpbench's.
const STEP: Duration = Duration::from_micros(50);

/// Waits until `at`, and at least [`STEP`]: sleeps while it is far off,
/// then spins the last stretch. A publisher that waited for each message
/// at a high rate would spin all the time and take a core from the system
/// measured; so one that is ahead waits at least a STEP, and then sends
/// what fell due meanwhile without waiting (a NATS publish or an Aeron
/// offer costs no system call, so sending them one by one is cheap;
/// udpbench's publishers, whose sends are system calls, wait a STEP after
/// each send instead). At 10,000 msg/s and below each message waits for
/// its own time.
pub fn pace(at: Instant) {
    let now = Instant::now();
    if at <= now {
        return;
    }
    let at = at.max(now + STEP);
    if at > now + SPIN {
        std::thread::sleep(at - now - SPIN);
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// Asks the kernel to end this thread's sleeps within a microsecond of
/// their time instead of the default 50 µs slack, as udpbench does.
pub fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// When message `n` is due at `rate` messages per second (0: at once).
pub fn due(start: Instant, rate: u64, n: u64) -> Instant {
    match (u128::from(n) * 1_000_000_000).checked_div(u128::from(rate)) {
        Some(ns) => start + Duration::from_nanos(ns as u64),
        None => start,
    }
}

/// One run of a publisher and its subscribers.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Messages per second asked for (0: unpaced).
    pub rate: u64,
    /// Messages the publisher sent.
    pub sent: u64,
    /// Copies the subscribers got, all together.
    pub received: u64,
    /// Subscribers, each of which should get every message.
    pub subscribers: u64,
    /// How long the publisher sent.
    pub publishing_seconds: f64,
    /// From the first send to the last message received.
    pub seconds: f64,
}

impl Outcome {
    pub fn lost(&self) -> u64 {
        (self.sent * self.subscribers).saturating_sub(self.received)
    }

    pub fn is_lossless(&self) -> bool {
        self.lost() as f64 <= (self.sent * self.subscribers) as f64 * LOSSLESS
    }

    pub fn delivered_per_sec(&self) -> f64 {
        self.received as f64 / self.seconds.max(1e-9)
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "rate": self.rate,
            "sent": self.sent,
            "received": self.received,
            "lost": self.lost(),
            "subscribers": self.subscribers,
            "seconds": self.seconds,
            "delivered_per_sec": self.delivered_per_sec(),
        })
        .to_string()
    }
}

/// udpbench's `--find-lossless`: an unpaced run, and if it lost more than
/// [`LOSSLESS`], [`PROBES`] bisection runs over the rate below what the
/// unpaced publisher sent; the fastest lossless run.
pub fn find_lossless(
    what: &str,
    mut run: impl FnMut(u64) -> Result<Outcome, Error>,
) -> Result<Outcome, Error> {
    let say = |r: &Outcome| {
        eprintln!(
            "{what}: {}: {:.0} delivered/s, {} of {} lost",
            match r.rate {
                0 => "full speed".to_string(),
                rate => format!("{rate} msg/s"),
            },
            r.delivered_per_sec(),
            r.lost(),
            r.sent * r.subscribers
        )
    };
    let first = run(0)?;
    say(&first);
    if first.is_lossless() {
        return Ok(first);
    }
    let mut hi = first.sent as f64 / first.publishing_seconds.max(1e-9);
    let mut lo = 0.0;
    let mut best = None;
    for _ in 0..PROBES {
        let mid = ((lo + hi) / 2.0 / 1000.0).round().max(1.0) * 1000.0;
        let r = run(mid as u64)?;
        say(&r);
        if r.is_lossless() {
            lo = mid;
            best = Some(r);
        } else {
            hi = mid;
        }
    }
    best.ok_or_else(|| format!("no lossless rate found below {hi:.0} msg/s").into())
}

/// A histogram of one-way latencies in nanoseconds (1 ns to 60 s).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// A latency run's result line.
pub fn latency_json(h: &Histogram<u64>, sent: u64, rate: u64) -> String {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "rate": rate,
        "sent": sent,
        "received": h.len(),
        "p50_us": us(0.5),
        "p90_us": us(0.9),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "max_us": h.max() as f64 / 1000.0,
    })
    .to_string()
}

/// `--key value` pairs after the mode.
pub struct Flags(HashMap<String, String>);

impl Flags {
    pub fn parse(args: &[String]) -> Result<Flags, Error> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(key) = it.next() {
            let Some(name) = key.strip_prefix("--") else {
                return Err(format!("unexpected argument {key:?}: flags are --NAME VALUE").into());
            };
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_string(), value.clone());
        }
        Ok(Flags(map))
    }

    pub fn string(&self, name: &str, default: Option<&str>) -> Result<String, Error> {
        match (self.0.get(name), default) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(d)) => Ok(d.to_string()),
            (None, None) => Err(format!("--{name} is required").into()),
        }
    }

    pub fn number(&self, name: &str, default: u64) -> Result<u64, Error> {
        match self.0.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name} {v:?}: expected a whole number").into()),
            None => Ok(default),
        }
    }

    /// Seconds, like `2` or `0.5`.
    pub fn seconds(&self, name: &str, default: f64) -> Result<Duration, Error> {
        match self.0.get(name) {
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && s.is_finite())
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("--{name} {v:?}: expected seconds, like 2 or 0.5").into()),
            None => Ok(Duration::from_secs_f64(default)),
        }
    }
}

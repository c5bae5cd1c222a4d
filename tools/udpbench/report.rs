//! What a run measured, as the types `--json` prints and the text report
//! and the plot read. Depends on nothing but serde, so the tests can read
//! udpbench's output into the same types (tests/bench_tool.rs includes this
//! file).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What carried the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Publishing and subscribing through the relay.
    Relay,
    /// Through the relay, reliable on both sides.
    RelayReliable,
    /// Through the relay's plain-UDP raw-in and raw-out ports.
    RelayRaw,
    /// Straight from the publishers to the subscribers.
    BaselineKernel,
    /// Through a minimal forwarder (receive, send to every subscriber).
    BaselineForwarder,
    /// Through socat.
    BaselineSocat,
}

impl Mode {
    /// The name `--json` and the report use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Relay => "relay",
            Mode::RelayReliable => "relay-reliable",
            Mode::RelayRaw => "relay-raw",
            Mode::BaselineKernel => "baseline-kernel",
            Mode::BaselineForwarder => "baseline-forwarder",
            Mode::BaselineSocat => "baseline-socat",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One-way latency of the received messages at some percentiles, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// The median.
    pub p50_us: f64,
    /// The 90th percentile.
    pub p90_us: f64,
    /// The 99th percentile.
    pub p99_us: f64,
    /// The 99.9th percentile.
    pub p999_us: f64,
    /// The slowest message.
    pub max_us: f64,
}

impl Latency {
    /// The percentiles' names as the text report prints them, in the order
    /// of [`Latency::values`].
    pub const NAMES: [&'static str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

    /// The percentiles, fastest first.
    pub fn values(&self) -> [f64; 5] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
        ]
    }
}

/// One point of the latency distribution: the latency `us` that
/// `percentile` % of the received messages took at most.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentile {
    /// From 0 (the fastest message) to 100 (the slowest).
    pub percentile: f64,
    /// One-way latency, in µs.
    pub us: f64,
}

/// Points of the latency distribution per tenfold step towards 100 %
/// (90 %, 99 %, 99.9 %, ...): evenly spaced on HdrHistogram's 1/(1-p) axis.
pub const PERCENTILES_PER_NINE: u32 = 10;

/// `us` microseconds in the unit that reads best (µs, ms or s) with three
/// significant digits at most: `27.7 ms`, `7.42 µs`, `130 µs`.
pub fn readable_us(us: f64) -> String {
    let mut value = us;
    for unit in ["µs", "ms"] {
        if round3(value) < 1000.0 {
            return format!("{} {unit}", trimmed(value));
        }
        value /= 1000.0;
    }
    format!("{} s", trimmed(value))
}

/// `v` rounded to three significant digits (whole numbers from 100 on).
fn round3(v: f64) -> f64 {
    let decimals = decimals3(v);
    let scale = 10f64.powi(decimals as i32);
    (v * scale).round() / scale
}

/// The decimals that leave `v` three significant digits.
fn decimals3(v: f64) -> usize {
    match v.abs() {
        a if a < 10.0 => 2,
        a if a < 100.0 => 1,
        _ => 0,
    }
}

/// `v` with three significant digits, without trailing zeros.
fn trimmed(v: f64) -> String {
    let text = format!("{:.*}", decimals3(v), round3(v));
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// One measured run. `mode` is its name: no two runs of a report share one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// What carried the traffic.
    pub mode: Mode,
    /// Publishers, each on its own socket and thread.
    pub publishers: usize,
    /// Subscribers; each is sent every message.
    pub subscribers: usize,
    /// Message size in bytes.
    pub size: usize,
    /// The channel published and subscribed on, which stays in the
    /// relay's log; none for a baseline (no relay).
    pub channel: Option<String>,
    /// Messages per second per publisher; 0 was as fast as possible.
    pub rate: u64,
    /// From the first send until the last message arrived (at least the
    /// publishing time): what the throughput is over.
    pub seconds: f64,
    /// How long the publishers sent.
    pub publishing_seconds: f64,
    /// Messages the publishers sent, all together.
    pub sent: u64,
    /// Distinct messages the subscribers received, all together (each
    /// subscriber counts each message once).
    pub received: u64,
    /// Messages a subscriber never got: `sent × subscribers − received`.
    pub lost: u64,
    /// Messages a subscriber got again.
    pub duplicated: u64,
    /// Messages a subscriber got after a later one of the same publisher.
    pub reordered: u64,
    /// Received messages per second over `seconds`.
    pub delivered_per_sec: f64,
    /// Received payload megabytes (10⁶ bytes) per second over `seconds`.
    pub delivered_mb_per_sec: f64,
    /// One-way latency percentiles.
    pub latency: Latency,
    /// The latency distribution: percentiles from 0 % up the 1/(1-p) axis
    /// ([`PERCENTILES_PER_NINE`] a tenfold step) while a message is there to
    /// measure them (1 - p ≥ 1 / received), then 100 % (the slowest).
    /// Empty when nothing was received.
    pub latency_percentiles: Vec<Percentile>,
    /// CPU time (user + system) the spawned relay used during the run; none
    /// without one.
    pub relay_cpu_seconds: Option<f64>,
    /// Messages received per second in each 0.1 s step since the first send.
    pub timeline_per_sec: Vec<f64>,
}

impl Run {
    /// How many deliveries the run asked for: every message to every
    /// subscriber.
    pub fn offered(&self) -> u64 {
        self.sent * self.subscribers as u64
    }
}

/// A relay run beside its baseline, as the relay's figure over the
/// baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Delivered messages per second.
    pub throughput: f64,
    /// Median latency.
    pub latency_p50: f64,
}

impl Ratio {
    /// `relay` measured against `baseline`.
    pub fn of(relay: &Run, baseline: &Run) -> Ratio {
        Ratio {
            throughput: relay.delivered_per_sec / baseline.delivered_per_sec.max(1e-9),
            latency_p50: relay.latency.p50_us / baseline.latency.p50_us.max(1e-9),
        }
    }
}

/// What `--json` prints, one shape whatever ran: `{"runs": [...],
/// "ratio": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The relay's run, then the baseline's; either may be alone.
    pub runs: Vec<Run>,
    /// With two runs, the first's figures over the second's (relay over
    /// baseline); `null` with one.
    pub ratio: Option<Ratio>,
}

impl Report {
    /// The report of `runs` (the relay's, then the baseline's), none without any.
    pub fn of(runs: Vec<Run>) -> Option<Report> {
        let ratio = match &runs[..] {
            [] => return None,
            [relay, baseline] => Some(Ratio::of(relay, baseline)),
            _ => None,
        };
        Some(Report { runs, ratio })
    }
}

/// Loss a run may have and still count as lossless: a thousandth.
pub const LOSSLESS: f64 = 0.001;

impl Run {
    /// Whether under a thousandth of the deliveries were lost.
    pub fn is_lossless(&self) -> bool {
        self.lost as f64 <= self.offered() as f64 * LOSSLESS
    }
}

impl fmt::Display for Run {
    /// The human-readable report of a run, several lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "udpbench: {} ({} publishers x {} subscribers, {} B messages",
            self.mode, self.publishers, self.subscribers, self.size
        )?;
        match &self.channel {
            Some(channel) => writeln!(f, ", channel {channel})")?,
            None => writeln!(f, ")")?,
        }
        writeln!(f, "  sent       {:>14}", self.sent)?;
        writeln!(
            f,
            "  received   {:>14}   lost {}  duplicated {}  reordered {}",
            self.received, self.lost, self.duplicated, self.reordered
        )?;
        writeln!(
            f,
            "  throughput {:>14.0} msg/s  {:.1} MB/s  over {:.2} s",
            self.delivered_per_sec, self.delivered_mb_per_sec, self.seconds
        )?;
        let latency: Vec<String> = (Latency::NAMES.iter().zip(self.latency.values()))
            .map(|(name, us)| format!("{name} {}", readable_us(us)))
            .collect();
        writeln!(f, "  latency    {}", latency.join("  "))?;
        if let Some(cpu) = self.relay_cpu_seconds {
            writeln!(
                f,
                "  relay CPU  {cpu:.2} s ({:.0} % of one core)",
                cpu / self.seconds.max(1e-9) * 100.0
            )?;
        }
        if self.rate == 0 && self.lost as f64 > self.offered() as f64 * 0.01 {
            writeln!(
                f,
                "  (at full speed the publishers offered {:.0} msg/s, more than the path \
                 carries, so the throughput above is a capacity and the latency is queueing; \
                 --find-lossless or --rate give a lossless figure)",
                self.sent as f64 / self.publishing_seconds.max(1e-9)
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    /// Each run's report, then the ratio when there are two.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for run in &self.runs {
            write!(f, "{run}")?;
        }
        if let Some(ratio) = &self.ratio {
            writeln!(
                f,
                "relay / baseline: throughput {:.2}x, latency p50 {:.3}x",
                ratio.throughput, ratio.latency_p50
            )?;
        }
        Ok(())
    }
}

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
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
    /// The slowest message.
    pub max: f64,
}

impl Latency {
    /// The percentiles' names, in the order of [`Latency::values`].
    pub const NAMES: [&'static str; 5] = ["p50", "p90", "p99", "p999", "max"];

    /// The percentiles, fastest first.
    pub fn values(&self) -> [f64; 5] {
        [self.p50, self.p90, self.p99, self.p999, self.max]
    }
}

/// One measured run.
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
    pub latency_us: Latency,
    /// CPU time (user + system) the spawned relay used during the run; none
    /// without one.
    pub relay_cpu_seconds: Option<f64>,
    /// Messages received per second in each 0.1 s step since the first send.
    pub timeline: Vec<f64>,
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
            latency_p50: relay.latency_us.p50 / baseline.latency_us.p50.max(1e-9),
        }
    }
}

/// A relay run and a baseline run of the same traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Through the relay.
    pub relay: Run,
    /// Without it.
    pub baseline: Run,
    /// The relay's figures over the baseline's.
    pub ratio: Ratio,
}

/// What `--json` prints: one run, or a relay run and its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Report {
    /// `--relay`/`--spawn` and `--baseline` together.
    Comparison(Box<Comparison>),
    /// Only one of them.
    Single(Run),
}

impl Report {
    /// The report of `runs`: one run alone, or the relay's then the baseline's.
    pub fn of(mut runs: Vec<Run>) -> Option<Report> {
        let last = runs.pop()?;
        Some(match runs.pop() {
            None => Report::Single(last),
            Some(relay) => Report::Comparison(Box::new(Comparison {
                ratio: Ratio::of(&relay, &last),
                relay,
                baseline: last,
            })),
        })
    }

    /// The runs, the relay's first.
    pub fn runs(&self) -> Vec<&Run> {
        match self {
            Report::Comparison(c) => vec![&c.relay, &c.baseline],
            Report::Single(r) => vec![r],
        }
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
        writeln!(
            f,
            "udpbench: {} ({} publishers x {} subscribers, {} B messages)",
            self.mode, self.publishers, self.subscribers, self.size
        )?;
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
        let l = &self.latency_us;
        writeln!(
            f,
            "  latency µs p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
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
        for run in self.runs() {
            write!(f, "{run}")?;
        }
        if let Report::Comparison(c) = self {
            writeln!(
                f,
                "relay / baseline: throughput {:.2}x, latency p50 {:.3}x",
                c.ratio.throughput, c.ratio.latency_p50
            )?;
        }
        Ok(())
    }
}

//! udpbench's command line (also read by the man page and completion
//! generator, tools/gen_docs.rs).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use udprelay::config::parse_duration;

/// Throughput and latency benchmark for udprelay.
#[derive(Debug, Clone, Parser)]
#[command(name = "udpbench", version)]
pub(crate) struct Args {
    /// Relay to measure, like 127.0.0.1:7070, or several (A,B,C): the one
    /// --pick picks [default: none, give --spawn or --baseline].
    #[arg(long = "relay", value_name = "ADDR", conflicts_with = "spawn")]
    pub(crate) relays: Option<String>,
    /// With several relays in --relay: how to pick one (nearest,
    /// least-loaded, first, two-choices; see udpcat --help).
    #[arg(long, value_name = "HOW", default_value = "two-choices")]
    pub(crate) pick: udprelay::client::Pick,
    /// The relay measured: --relay's, or the one picked among them.
    #[arg(skip)]
    pub(crate) relay: Option<SocketAddr>,
    /// Start a relay (the udprelay next to this binary) on a free port with a temporary data directory [default: off].
    #[arg(long)]
    pub(crate) spawn: bool,
    /// A flag for the relay --spawn starts, like --relay-arg=--busy-poll=200us (repeatable) [default: none].
    #[arg(
        long,
        requires = "spawn",
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    pub(crate) relay_arg: Vec<String>,
    /// With --spawn: run the relay on a thread of this process (default relay settings, so no --relay-arg) instead of as a child process; its CPU time is that thread's [default: off].
    #[arg(long, requires = "spawn", conflicts_with = "relay_arg")]
    pub(crate) in_process: bool,
    /// Publishers, each on its own socket and thread (1 to 1024).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub(crate) publishers: usize,
    /// Subscribers, each on its own socket and thread; every one gets every message (1 to 1024).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub(crate) subscribers: usize,
    /// Message size in bytes, 20 (publisher, number and send time lead) to 65000 (one datagram).
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(20..=65_000))]
    pub(crate) size: usize,
    /// Messages per second per publisher; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// How long to publish (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Stop each publisher after this many messages, or at the end of --duration if sooner
    /// [default: none, publish for --duration].
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Reliable publishing and subscribing (acknowledged, retransmitted) [default: off].
    #[arg(long)]
    pub(crate) reliable: bool,
    /// Pack messages into datagrams up to this size; 0 sends one message per datagram.
    #[arg(long, default_value_t = 1400)]
    pub(crate) batch: usize,
    /// Plain UDP through the relay's raw ports: publishers send bare messages
    /// to a --raw-in port, one per datagram, and each subscriber gets them
    /// from a --raw-out address (needs --spawn; unreliable) [default: off].
    #[arg(long, requires = "spawn", conflicts_with = "reliable")]
    pub(crate) raw: bool,
    /// Measure the same traffic without the relay: `kernel` straight from
    /// publishers to subscribers, `relay` through a minimal forwarder,
    /// `socat` through socat (`socat -u UDP4-RECV UDP4-SENDTO`; one
    /// subscriber; socat must be installed). All send one message per
    /// datagram. With --spawn or --relay too, both run and the report shows
    /// the ratio [default: none, no baseline run].
    #[arg(long, value_enum)]
    pub(crate) baseline: Option<Baseline>,
    /// Find the highest rate with under 0.1 % loss: an unpaced run, then
    /// bisection over --rate (7 more runs of --duration each), for the relay
    /// and the baseline alike; reports the fastest lossless run of each
    /// [default: off].
    #[arg(long, conflicts_with = "rate")]
    pub(crate) find_lossless: bool,
    /// With --spawn: give the relay a key file with one key that may do
    /// everything and `--auth required`, and run every publisher and
    /// subscriber with its credential: handshakes, then every datagram
    /// sealed (authenticated and encrypted) both ways [default: off].
    #[arg(long, requires = "spawn", conflicts_with_all = ["raw", "credential", "credential_file"])]
    pub(crate) auth: bool,
    /// With --relay: the credential (udprelay1:ID:EXPIRES:SECRET) every
    /// publisher and subscriber handshakes with [default: none, plain datagrams].
    #[arg(long, value_name = "STRING", conflicts_with = "credential_file")]
    pub(crate) credential: Option<String>,
    /// With --relay: read the credential from this file (its first line)
    /// [default: none, plain datagrams].
    #[arg(long, value_name = "FILE")]
    pub(crate) credential_file: Option<std::path::PathBuf>,
    /// Print the report as one JSON object [default: off].
    #[arg(long)]
    pub(crate) json: bool,
    /// Draw throughput over time and latency percentiles to an SVG file [default: none, no plot].
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Baseline {
    Kernel,
    Relay,
    Socat,
}

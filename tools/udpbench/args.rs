//! udpbench's command line (also read by the man page and completion
//! generator, tools/gen_docs.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Start a relay (the udprelay next to this binary) on a free port with
    /// a temporary data directory under TMPDIR (or /tmp), removed at the
    /// end; the relay logs every message there, so an unpaced run writes
    /// as fast as it sends (--rate paces it) [default: off].
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
    #[arg(short, long)]
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
    pub(crate) credential_file: Option<PathBuf>,
    /// The channel the publishers and subscribers use. Like any channel it
    /// stays in the log of a --relay relay (a spawned relay's log is
    /// removed) [default: a fresh name each run, bench-PID-N, so runs never
    /// mix].
    #[arg(long, value_name = "NAME", value_parser = parse_channel)]
    pub(crate) channel: Option<String>,
    /// Print the report as one JSON object, the same shape with or without
    /// a baseline: {"runs": [...], "ratio": ...} (see the README) [default: off].
    #[arg(long)]
    pub(crate) json: bool,
    /// Draw two charts into FILE, a PNG or SVG picture as its extension
    /// says (.png or .svg): messages received per second over time, and
    /// the one-way latency distribution (50 %, 90 %, 99 %, 99.9 %, ... on
    /// HdrHistogram's log 1/(1-p) axis); a line per run, with a legend
    /// when a baseline runs beside the relay [default: none, no plot].
    #[arg(long, value_name = "FILE", value_parser = parse_plot)]
    pub(crate) plot: Option<Plot>,
    /// Write the data --plot draws (with or without --plot) to FILE as CSV,
    /// a header and a row a point:
    /// run,series,x,y. Series `throughput`: x the seconds since the first
    /// send at the start of a 0.1 s step, y the messages received per
    /// second in it. Series `latency`: x a percentile (0 to 100), y the
    /// one-way latency in µs. `run` is the run's name (the JSON's mode)
    /// [default: none, no CSV].
    #[arg(long, value_name = "FILE")]
    pub(crate) csv: Option<PathBuf>,
}

impl Args {
    /// Why a flag for the relay udpbench starts cannot go with --relay,
    /// if one is given. clap's `requires = "spawn"` lets these through
    /// beside --relay (which conflicts with --spawn), so they are checked
    /// here, each with its reason.
    pub(crate) fn spawn_only_with_relay(&self) -> Option<String> {
        self.relays.as_ref()?;
        let refused = [
            (
                self.raw,
                "--raw",
                "a relay's raw-in port and raw-out addresses (here the \
                 subscribers' sockets) are set when it starts, so udpbench \
                 measures them only on a relay it starts",
            ),
            (
                !self.relay_arg.is_empty(),
                "--relay-arg",
                "it passes a flag to the relay udpbench starts",
            ),
            (
                self.in_process,
                "--in-process",
                "it runs the relay udpbench starts on one of its threads",
            ),
            (
                self.auth,
                "--auth",
                "it gives the relay udpbench starts a key file; for --relay, \
                 give --credential",
            ),
        ];
        let (_, flag, why) = refused.into_iter().find(|(given, ..)| *given)?;
        Some(format!("{flag} needs --spawn, not --relay: {why}"))
    }
}

/// A picture `--plot` draws, in the format its file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plot {
    /// Where it is written.
    pub(crate) path: PathBuf,
    /// Its format, from the path's extension.
    pub(crate) format: PlotFormat,
}

/// The formats `--plot` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlotFormat {
    /// A bitmap, `.png`.
    Png,
    /// Vector graphics, `.svg`.
    Svg,
}

/// `--plot`'s FILE, whose extension picks the format.
fn parse_plot(file: &str) -> Result<Plot, String> {
    let path = PathBuf::from(file);
    let extension = path.extension().and_then(|e| e.to_str());
    let format = match extension.map(str::to_ascii_lowercase).as_deref() {
        Some("png") => PlotFormat::Png,
        Some("svg") => PlotFormat::Svg,
        _ => return Err("the file name must end in .png or .svg, the picture's format".into()),
    };
    Ok(Plot { path, format })
}

/// A channel name as the relay takes it.
fn parse_channel(name: &str) -> Result<String, String> {
    udprelay::wire::validate_channel(name.as_bytes())
        .map(str::to_string)
        .map_err(|_| "1 to 255 bytes of UTF-8, no control characters".to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Baseline {
    Kernel,
    Relay,
    Socat,
}

//! `udpbench`: end-to-end throughput and latency through a relay, on real
//! sockets. P publishers and S subscribers exchange timestamped messages;
//! the report counts what was sent, received, lost, duplicated and reordered,
//! with one-way latency percentiles (hdrhistogram) and the relay's CPU time.
//! `--baseline kernel` sends the same traffic straight from publishers to
//! subscribers and `--baseline relay` through a minimal forwarder (receive,
//! send, nothing else), so a result reads as a fraction of what the machine
//! can do at all.
//!
//! This file holds the flags and what runs: one run, the relay beside its
//! baseline, or the `--find-lossless` search. [`run()`] makes one run with
//! [`publisher`]s and [`subscriber`]s exchanging [`traffic`] through what
//! [`spawn`] started; [`report`] is its result, [`plot()`] draws it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use udprelay::config::parse_duration;

#[path = "../common/pick.rs"]
mod pick;
mod plot;
mod publisher;
mod report;
mod run;
mod spawn;
mod subscriber;
mod traffic;

use plot::plot;
use report::{Report, Run};
use run::run;

/// Throughput and latency benchmark for udprelay.
#[derive(Debug, Clone, Parser)]
#[command(name = "udpbench", version)]
struct Args {
    /// Relay to measure, like 127.0.0.1:7070, or several (A,B,C): the one
    /// --pick picks [default: none, give --spawn or --baseline].
    #[arg(long = "relay", value_name = "ADDR", conflicts_with = "spawn")]
    relays: Option<String>,
    /// With several relays in --relay: how to pick one (nearest,
    /// least-loaded, first, two-choices; see udpcat --help).
    #[arg(long, value_name = "HOW", default_value = "two-choices")]
    pick: udprelay::client::Pick,
    /// The relay measured: --relay's, or the one picked among them.
    #[arg(skip)]
    relay: Option<SocketAddr>,
    /// Start a relay (the udprelay next to this binary) on a free port with a temporary data directory [default: off].
    #[arg(long)]
    spawn: bool,
    /// A flag for the relay --spawn starts, like --relay-arg=--busy-poll=200us (repeatable) [default: none].
    #[arg(
        long,
        requires = "spawn",
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    relay_arg: Vec<String>,
    /// With --spawn: run the relay on a thread of this process (default relay settings, so no --relay-arg) instead of as a child process; its CPU time is that thread's [default: off].
    #[arg(long, requires = "spawn", conflicts_with = "relay_arg")]
    in_process: bool,
    /// Publishers, each on its own socket and thread.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers, each on its own socket and thread; every one gets every message.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Message size in bytes (at least 20: publisher, number and send time lead).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per second per publisher; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long to publish (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop each publisher after this many messages, or at the end of --duration if sooner
    /// [default: none, publish for --duration].
    #[arg(long)]
    count: Option<u64>,
    /// Reliable publishing and subscribing (acknowledged, retransmitted) [default: off].
    #[arg(long)]
    reliable: bool,
    /// Pack messages into datagrams up to this size; 0 sends one message per datagram.
    #[arg(long, default_value_t = 1400)]
    batch: usize,
    /// Plain UDP through the relay's raw ports: publishers send bare messages
    /// to a --raw-in port, one per datagram, and each subscriber gets them
    /// from a --raw-out address (needs --spawn; unreliable) [default: off].
    #[arg(long, requires = "spawn", conflicts_with = "reliable")]
    raw: bool,
    /// Measure the same traffic without the relay: `kernel` straight from
    /// publishers to subscribers, `relay` through a minimal forwarder,
    /// `socat` through socat (`socat -u UDP4-RECV UDP4-SENDTO`; one
    /// subscriber; socat must be installed). All send one message per
    /// datagram. With --spawn or --relay too, both run and the report shows
    /// the ratio [default: none, no baseline run].
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Find the highest rate with under 0.1 % loss: an unpaced run, then
    /// bisection over --rate (7 more runs of --duration each), for the relay
    /// and the baseline alike; reports the fastest lossless run of each
    /// [default: off].
    #[arg(long, conflicts_with = "rate")]
    find_lossless: bool,
    /// With --spawn: give the relay a key file with one key that may do
    /// everything and `--auth required`, and run every publisher and
    /// subscriber with its credential: handshakes, then every datagram
    /// sealed (authenticated and encrypted) both ways [default: off].
    #[arg(long, requires = "spawn", conflicts_with_all = ["raw", "credential", "credential_file"])]
    auth: bool,
    /// With --relay: the credential (udprelay1:ID:EXPIRES:SECRET) every
    /// publisher and subscriber handshakes with [default: none, plain datagrams].
    #[arg(long, value_name = "STRING", conflicts_with = "credential_file")]
    credential: Option<String>,
    /// With --relay: read the credential from this file (its first line)
    /// [default: none, plain datagrams].
    #[arg(long, value_name = "FILE")]
    credential_file: Option<std::path::PathBuf>,
    /// Print the report as one JSON object [default: off].
    #[arg(long)]
    json: bool,
    /// Draw throughput over time and latency percentiles to an SVG file [default: none, no plot].
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Baseline {
    Kernel,
    Relay,
    Socat,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Err(e) = pick_relay(&mut args) {
        eprintln!("udpbench: {e}");
        return ExitCode::FAILURE;
    }
    match run_all(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udpbench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves --relay, picking one when it lists several.
fn pick_relay(args: &mut Args) -> Result<(), String> {
    let Some(list) = &args.relays else {
        return Ok(());
    };
    let relays = pick::resolve(list).map_err(|e| format!("relay address: {e}"))?;
    args.relay = Some(match relays[..] {
        [one] => one,
        _ => {
            pick::pick("udpbench", &relays, args.pick, Duration::from_secs(2))
                .map_err(|e| match e {
                    pick::PickError::Io(e) => e.to_string(),
                    pick::PickError::NoneAnswered { count, waited } => {
                        format!("none of the {count} relays answered within {waited:?}")
                    }
                })?
                .0
        }
    });
    Ok(())
}

/// The relay run, the baseline run, or both (then with their ratio).
fn run_all(args: &Args) -> Result<(), String> {
    let mut runs = Vec::new();
    if args.spawn || args.relay.is_some() {
        let relay_args = Args {
            baseline: None,
            ..args.clone()
        };
        runs.push(measure(&relay_args)?);
    }
    if let Some(baseline) = args.baseline {
        let base_args = Args {
            baseline: Some(baseline),
            reliable: false,
            raw: false,
            spawn: false,
            relay: None,
            ..args.clone()
        };
        runs.push(measure(&base_args)?);
    }
    let report = Report::of(runs).ok_or("give --relay ADDR, --spawn or --baseline")?;
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&report.runs()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if args.json {
        let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Bisection steps of `--find-lossless` after the unpaced run.
const PROBES: usize = 7;

/// One run, or with --find-lossless the fastest lossless one found.
fn measure(args: &Args) -> Result<Run, String> {
    if !args.find_lossless {
        return run(args);
    }
    let say = |r: &Run| {
        if !args.json {
            eprintln!(
                "udpbench: {}, {}: {:.0} msg/s delivered, {} lost",
                r.mode,
                match r.rate {
                    0 => "full speed".to_string(),
                    rate => format!("{rate} msg/s per publisher"),
                },
                r.delivered_per_sec,
                r.lost
            );
        }
    };
    let first = run(&Args {
        rate: 0,
        ..args.clone()
    })?;
    say(&first);
    if first.is_lossless() {
        return Ok(first); // the senders, not the path, were the limit
    }
    let mut hi = first.sent as f64 / first.publishing_seconds.max(1e-9) / args.publishers as f64;
    let mut lo = 0.0;
    let mut best = None;
    for _ in 0..PROBES {
        let mid = ((lo + hi) / 2.0 / 1000.0).round().max(1.0) * 1000.0;
        let r = run(&Args {
            rate: mid as u64,
            ..args.clone()
        })?;
        say(&r);
        if r.is_lossless() {
            lo = mid;
            best = Some(r);
        } else {
            hi = mid;
        }
    }
    best.ok_or_else(|| format!("no lossless rate found below {hi:.0} msg/s"))
}

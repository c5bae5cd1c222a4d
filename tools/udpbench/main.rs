//! `udpbench`: end-to-end throughput and latency through a relay, on real
//! sockets. P publishers and S subscribers exchange timestamped messages;
//! the report counts what was sent, received, lost, duplicated and reordered,
//! with one-way latency percentiles (hdrhistogram) and the relay's CPU time.
//! `--baseline kernel` sends the same traffic straight from publishers to
//! subscribers and `--baseline relay` through a minimal forwarder (receive,
//! send, nothing else), so a result reads as a fraction of what the machine
//! can do at all.
//!
//! This file holds what runs (the flags are in `args`): one run, the relay beside its
//! baseline, or the `--find-lossless` search. [`run()`] makes one run with
//! [`publisher`]s and [`subscriber`]s exchanging [`traffic`] through what
//! [`spawn`] started; [`report`] is its result, [`plot`] draws it.

use std::process::ExitCode;
use std::time::Duration;

mod args;
#[path = "../common/pick.rs"]
mod pick;
mod plot;
mod publisher;
mod report;
mod run;
mod spawn;
mod subscriber;
mod traffic;
#[path = "../common/usage.rs"]
mod usage;

use args::{Args, Baseline};
use report::{Report, Run};
use run::run;

fn main() -> ExitCode {
    let mut args = usage::parse::<Args>("udpbench");
    if let Some(refused) = args.spawn_only_with_relay() {
        let error = <Args as clap::CommandFactory>::command()
            .error(clap::error::ErrorKind::ArgumentConflict, refused);
        usage::exit("udpbench", error);
    }
    if let Err(e) = spawn::clean_up_on_signals() {
        eprintln!("udpbench: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
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
            pick::pick(
                "udpbench",
                &relays,
                args.pick,
                Duration::from_secs(2),
                false,
            )
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
    if args.spawn && args.rate == 0 {
        // An unpaced publisher fills the disk at its speed (hundreds of
        // MB/s): not something to find out afterwards.
        eprintln!(
            "udpbench: the relay it starts logs every message to a directory under {}, \
             removed at the end; unpaced, that is as fast as it sends (--rate N paces it, \
             TMPDIR=DIR moves it)",
            std::env::temp_dir().display()
        );
    }
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
    if let Some(picture) = &args.plot {
        plot::draw(&report.runs, picture).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &args.csv {
        plot::write_csv(&report.runs, path).map_err(|e| e.to_string())?;
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

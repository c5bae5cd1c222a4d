//! How far the release `udprelay` amplifies datagrams with a forged source
//! address (issue 10): for each request kind, the bytes the claimed address
//! received ÷ the bytes forged in its name.
//!
//! It starts `target/release/udprelay` on a free port with a temporary data
//! directory, stores a channel of `--stored-mb` MB (50) with `udpcat pub`,
//! keeps a second channel carrying 400 KB/s, then forges each kind of request
//! from a raw socket at `--rate` datagrams a second (10) for `--seconds` (10)
//! in the name of a fresh socket that never sends, and counts what that
//! socket receives from the first forged datagram until 1 s after the
//! seconds are over and the relay has handled everything forged (a `udpcat
//! ping` answered). Repeats of a SUBSCRIBE name the same subscription, so
//! they refresh it instead of starting another replay; `--rate 0.1` with
//! `--seconds 10` forges a single datagram per kind and counts for 11 s.
//!
//! Build the binaries first, then run as root (a raw socket):
//! `cargo build --release && cargo run --release --example amplification -- --seconds 10`

// Shared with tests/forged.rs, which uses the parts this does not.
#[allow(dead_code)]
#[path = "../tests/common/forge.rs"]
mod forge;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use forge::{Attack, Forger, LivePublisher, Plan, Targets};

/// The channels the attacks aim at.
const TARGETS: Targets<'static> = Targets {
    live: "live",
    stored: "stored",
};

/// Bytes of each line stored as a message, its newline (not stored) included.
const STORED_LINE: usize = 1000;

/// What the command line asks for.
struct Options {
    /// How long each request kind is forged.
    seconds: f64,
    /// Forged datagrams a second.
    rate: f64,
    /// Megabytes stored on the replayed channel.
    stored_mb: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut opts = Options {
        seconds: 10.0,
        rate: 10.0,
        stored_mb: 50,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => opts.seconds = number(&flag, &value()?)?,
            "--rate" => opts.rate = number(&flag, &value()?)?,
            "--stored-mb" => opts.stored_mb = number(&flag, &value()?)? as usize,
            "-h" | "--help" => {
                return Err(
                    "usage: amplification [--seconds 10] [--rate 10] [--stored-mb 50]".into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

fn number(flag: &str, s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{flag} takes a positive number, not {s:?}")),
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amplification: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let opts = parse_options()?;
    // target/release/examples/amplification -> target/release
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bins = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target directory")?;
    let (udprelay, udpcat) = (bins.join("udprelay"), bins.join("udpcat"));
    for bin in [&udprelay, &udpcat] {
        if !bin.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release` first",
                bin.display()
            ));
        }
    }
    let forger = Forger::try_new()
        .map_err(|e| format!("forging source addresses needs root for a raw socket: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (_relay, addr) = start_relay(&udprelay, dir.path())?;
    println!("relay {} at {addr}", udprelay.display());

    let started = Instant::now();
    let stored = store(&udpcat, addr, dir.path(), opts.stored_mb)?;
    println!(
        "stored {stored} messages of {} bytes on {:?} in {:.1} s",
        STORED_LINE - 1,
        TARGETS.stored,
        started.elapsed().as_secs_f64()
    );
    let _live = LivePublisher::start(addr, TARGETS.live, 400, Duration::from_millis(1));
    println!("{:?} carries 400-byte messages every 1 ms", TARGETS.live);

    let rounds = (opts.seconds * opts.rate).ceil().max(1.0) as u64;
    let plan = Plan {
        rounds,
        every: Duration::from_secs_f64(1.0 / opts.rate),
        then: Duration::from_secs(1),
    };
    println!(
        "each kind: {rounds} forged datagram(s), one every {:?}, counted for {:?} and 1 s more",
        plan.every,
        plan.every * rounds as u32
    );
    println!();
    println!("| request | datagrams forged | bytes forged | bytes received | factor |");
    println!("|---|---:|---:|---:|---:|");
    for attack in Attack::ALL {
        let barrier = || ping(&udpcat, addr);
        let m = forge::measure(&forger, addr, attack, TARGETS, plan, barrier);
        println!(
            "| {} | {} | {} | {} | {:.2}x |",
            attack.name(),
            m.forged_datagrams,
            m.forged_bytes,
            m.received.bytes,
            m.factor()
        );
    }
    Ok(())
}

/// Starts the relay on a free port with its data under `dir`, and returns it
/// with the address it reports.
fn start_relay(udprelay: &Path, dir: &Path) -> Result<(Killed, SocketAddr), String> {
    let stderr = File::create(dir.join("relay.stderr")).map_err(|e| e.to_string())?;
    let child = Command::new(udprelay)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", udprelay.display()))?;
    let mut relay = Killed(child);
    let stdout = relay.0.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(a) = line.strip_prefix("udprelay listening on ") {
            let addr = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
            return Ok((relay, addr));
        }
    }
    Err(format!(
        "udprelay exited without reporting its address; see {}",
        dir.join("relay.stderr").display()
    ))
}

/// Stores `mb` megabytes of lines on the stored channel with `udpcat pub`
/// (paced by the relay's answers), one message each, and returns how many.
fn store(udpcat: &Path, relay: SocketAddr, dir: &Path, mb: usize) -> Result<usize, String> {
    let path: PathBuf = dir.join("stored.txt");
    let lines = mb * 1_000_000 / STORED_LINE;
    let mut line = vec![b's'; STORED_LINE];
    line[STORED_LINE - 1] = b'\n';
    let mut file = std::io::BufWriter::new(File::create(&path).map_err(|e| e.to_string())?);
    for _ in 0..lines {
        file.write_all(&line).map_err(|e| e.to_string())?;
    }
    file.flush().map_err(|e| e.to_string())?;
    drop(file);
    let out = Command::new(udpcat)
        .args(["pub", &relay.to_string(), TARGETS.stored, "--file"])
        .arg(&path)
        .output()
        .map_err(|e| format!("cannot run udpcat: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "udpcat pub failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(lines)
}

/// Returns once the relay answered a ping from another socket: it handles
/// datagrams in order, so everything forged before has been handled.
fn ping(udpcat: &Path, relay: SocketAddr) {
    let out = Command::new(udpcat)
        .args(["ping", &relay.to_string(), "--count", "1"])
        .output()
        .expect("run udpcat ping");
    assert!(
        out.status.success(),
        "the relay did not answer a ping: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! `udpbench`: end-to-end throughput and latency through a relay, on real
//! sockets. P publishers and S subscribers exchange timestamped messages;
//! the report counts what was sent, received, lost, duplicated and reordered,
//! with one-way latency percentiles (hdrhistogram) and the relay's CPU time.
//! `--baseline kernel` sends the same traffic straight from publishers to
//! subscribers and `--baseline relay` through a minimal forwarder (receive,
//! send, nothing else), so a result reads as a fraction of what the machine
//! can do at all.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use udprelay::client::{
    Publisher, ReliablePublisher, ReliableSubscription, Subscription, SubscriptionEvent,
};
use udprelay::config::parse_duration;
use udprelay::driver::batch::{BatchSender, RecvBatch, enable_gro};
use udprelay::relay::Transmit;
use udprelay::reliable::ArqConfig;
use udprelay::wire::StartPosition;

mod report;

use report::{Latency, Mode, Report, Run};

/// Throughput and latency benchmark for udprelay.
#[derive(Debug, Clone, Parser)]
#[command(name = "udpbench", version)]
struct Args {
    /// Relay to measure, like 127.0.0.1:7070 (or use --spawn).
    #[arg(long, conflicts_with = "spawn")]
    relay: Option<SocketAddr>,
    /// Start a relay (the udprelay next to this binary) on a free port with a temporary data directory.
    #[arg(long)]
    spawn: bool,
    /// A flag for the relay --spawn starts, like --relay-arg=--busy-poll=200us (repeatable).
    #[arg(
        long,
        requires = "spawn",
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    relay_arg: Vec<String>,
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
    /// Stop each publisher after this many messages instead.
    #[arg(long)]
    count: Option<u64>,
    /// Reliable publishing and subscribing (acknowledged, retransmitted).
    #[arg(long)]
    reliable: bool,
    /// Pack messages into datagrams up to this size; 0 sends one message per datagram.
    #[arg(long, default_value_t = 1400)]
    batch: usize,
    /// Plain UDP through the relay's raw ports: publishers send bare messages
    /// to a --raw-in port, one per datagram, and each subscriber gets them
    /// from a --raw-out address (needs --spawn; unreliable).
    #[arg(long, requires = "spawn", conflicts_with = "reliable")]
    raw: bool,
    /// Measure the same traffic without the relay: `kernel` straight from
    /// publishers to subscribers, `relay` through a minimal forwarder,
    /// `socat` through socat (`socat -u UDP4-RECV UDP4-SENDTO`; one
    /// subscriber; socat must be installed). All send one message per
    /// datagram. With --spawn or --relay too, both run and the report shows
    /// the ratio.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Find the highest rate with under 0.1 % loss: an unpaced run, then
    /// bisection over --rate (7 more runs of --duration each), for the relay
    /// and the baseline alike; reports the fastest lossless run of each.
    #[arg(long, conflicts_with = "rate")]
    find_lossless: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Draw throughput over time and latency percentiles to an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Baseline {
    Kernel,
    Relay,
    Socat,
}

/// Bytes at the start of every message: publisher, number, send time.
const HEADER: usize = 4 + 8 + 8;

fn main() -> ExitCode {
    let args = Args::parse();
    match run_all(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udpbench: {e}");
            ExitCode::FAILURE
        }
    }
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

/// An SVG with two panels: delivered messages per second over time, and
/// latency at each percentile (log scale), one line per run.
fn plot(runs: &[&Run]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 360.0;
    const PANEL: f64 = 380.0;
    let colors = ["#1f77b4", "#d62728"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    // Panel 1: throughput over time.
    let series: Vec<&[f64]> = runs.iter().map(|r| r.timeline.as_slice()).collect();
    let max_rate = series
        .iter()
        .copied()
        .flatten()
        .copied()
        .fold(1.0, f64::max);
    let max_len = series.iter().map(|s| s.len()).max().unwrap_or(1).max(2);
    let (x0, y0, pw, ph) = (60.0, 30.0, PANEL - 70.0, H - 80.0);
    svg += &format!(
        "<text x=\"{x0}\" y=\"18\">delivered msg/s over time (0.1 s steps, max {max_rate:.0})</text>\n\
         <rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n"
    );
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let x = x0 + pw * j as f64 / (max_len - 1) as f64;
                let y = y0 + ph - ph * v / max_rate;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            colors[i % 2],
            points.join(" ")
        );
    }
    // Panel 2: latency by percentile, log scale.
    let quantiles = Latency::NAMES;
    let lat: Vec<[f64; 5]> = runs
        .iter()
        .map(|r| r.latency_us.values().map(|v| v.max(0.1)))
        .collect();
    let hi = lat
        .iter()
        .flatten()
        .cloned()
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(1.0);
    let lo = lat
        .iter()
        .flatten()
        .cloned()
        .fold(f64::MAX, f64::min)
        .log10()
        .floor()
        .min(hi - 1.0);
    let (x1, pw2) = (PANEL + 100.0, W - PANEL - 130.0);
    svg += &format!(
        "<text x=\"{x1}\" y=\"18\">one-way latency, µs (log scale)</text>\n\
         <rect x=\"{x1}\" y=\"{y0}\" width=\"{pw2}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n"
    );
    for decade in (lo as i32)..=(hi as i32) {
        let y = y0 + ph - ph * (f64::from(decade) - lo) / (hi - lo);
        svg += &format!(
            "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\">{}</text>\n",
            x1 - 6.0,
            10f64.powi(decade)
        );
    }
    for (k, q) in quantiles.iter().enumerate() {
        let x = x1 + pw2 * k as f64 / (quantiles.len() - 1) as f64;
        svg += &format!(
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{q}</text>\n",
            y0 + ph + 16.0
        );
    }
    for (i, l) in lat.iter().enumerate() {
        let points: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let x = x1 + pw2 * k as f64 / (quantiles.len() - 1) as f64;
                let y = y0 + ph - ph * (v.log10() - lo) / (hi - lo);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
            colors[i % 2],
            points.join(" ")
        );
    }
    for (i, r) in runs.iter().enumerate() {
        svg += &format!(
            "<text x=\"{x0}\" y=\"{}\" fill=\"{}\">{}</text>\n",
            H - 22.0 + 14.0 * i as f64 - 14.0 * (runs.len() as f64 - 1.0),
            colors[i % 2],
            r.mode
        );
    }
    svg += "</svg>\n";
    svg
}

/// A relay started for the run, stopped when dropped.
struct Spawned {
    /// The relay's raw-in address, when it was given one.
    raw_in: Option<SocketAddr>,
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_relay(extra: &[String]) -> Result<Spawned, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let relay_bin = exe.with_file_name("udprelay");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // Quiet unless a --relay-arg asks for another log level.
    let quiet: &[&str] = if extra.iter().any(|a| a.starts_with("--log-level")) {
        &[]
    } else {
        &["--log-level", "warn"]
    };
    let mut child = Command::new(&relay_bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(quiet)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", relay_bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    stdout.read_line(&mut line).map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("udprelay listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected first line from udprelay: {line:?}"))?;
    let mut raw_in = None;
    if extra.iter().any(|a| a == "--raw-in") {
        line.clear();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        raw_in = line
            .strip_prefix("raw-in ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
    }
    // Keep reading what else it prints, so it never writes to a closed pipe.
    thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Ok(Spawned {
        child,
        addr,
        raw_in,
        _dir: dir,
    })
}

/// A free UDP port on 127.0.0.1, for a program that must be told its port.
fn free_udp_port() -> Result<SocketAddr, String> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| e.to_string())
}

/// socat, killed when dropped.
struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts socat forwarding datagrams from `listen` to the one subscriber,
/// and waits until it has bound its port.
fn spawn_socat(listen: SocketAddr, subscribers: &[SocketAddr]) -> Result<Socat, String> {
    let [to] = subscribers else {
        return Err("--baseline socat forwards to one subscriber: use --subscribers 1".into());
    };
    let child = Command::new("socat")
        .args([
            "-u".to_string(),
            "-b".to_string(),
            "65536".to_string(),
            format!(
                "UDP4-RECV:{},bind={},rcvbuf=8388608",
                listen.port(),
                listen.ip()
            ),
            format!("UDP4-SENDTO:{to},sndbuf=8388608"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start socat (is it installed?): {e}"))?;
    let socat = Socat(child);
    // Bound once /proc/net/udp lists its port (hex, after the address).
    let needle = format!(":{:04X} ", listen.port());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
        if table.lines().any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|local| format!("{local} ").ends_with(&needle))
        }) {
            return Ok(socat);
        }
        if Instant::now() > deadline {
            return Err(format!("socat did not bind {listen} within 5 s"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// What every subscriber counted.
#[derive(Default)]
struct Tally {
    received: u64,
    duplicates: u64,
    reordered: u64,
    bytes: u64,
    latency: Option<Histogram<u64>>,
    /// Messages received per 100 ms since the epoch.
    buckets: Vec<u64>,
}

/// Width of one step of the throughput timeline.
const STEP_NS: u64 = 100_000_000;

fn socket() -> Result<UdpSocket, String> {
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

fn epoch_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Per subscriber: the highest number seen from each publisher, and whether
/// a number was seen (for duplicates), kept as a bitmap.
struct Seen {
    highest: Vec<Option<u64>>,
    bits: Vec<Vec<u64>>,
}

impl Seen {
    fn new(publishers: usize) -> Seen {
        Seen {
            highest: vec![None; publishers],
            bits: vec![Vec::new(); publishers],
        }
    }

    fn record(&mut self, tally: &mut Tally, message: &[u8], now_ns: u64, progress: &AtomicU64) {
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
        progress.fetch_add(1, Ordering::Relaxed);
        let step = (now_ns / STEP_NS) as usize;
        if tally.buckets.len() <= step {
            tally.buckets.resize(step + 1, 0);
        }
        tally.buckets[step] += 1;
        tally.bytes += message.len() as u64;
        if let Some(h) = tally.latency.as_mut() {
            let _ = h.record(now_ns.saturating_sub(sent).max(1));
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs the subscribers until `stop`, returning their tallies.
fn subscribe_all(
    args: &Args,
    target: SocketAddr,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
    progress: Arc<AtomicU64>,
) -> Result<(Vec<thread::JoinHandle<Tally>>, Vec<SocketAddr>), String> {
    let mut handles = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..args.subscribers {
        let socket = socket()?;
        addrs.push(socket.local_addr().map_err(|e| e.to_string())?);
        let publishers = args.publishers;
        let reliable = args.reliable;
        let via_relay = args.baseline.is_none() && !args.raw;
        let stop = Arc::clone(&stop);
        let ready = Arc::clone(&ready);
        let progress = Arc::clone(&progress);
        handles.push(thread::spawn(move || {
            let mut tally = Tally {
                latency: Some(new_histogram()),
                ..Tally::default()
            };
            let mut seen = Seen::new(publishers);
            // Many datagrams per call; runs the relay sent as one GSO
            // buffer may arrive as one (GRO).
            let mut received = RecvBatch::new();
            enable_gro(&socket);
            let now = Instant::now();
            let mut plain =
                Subscription::new(i as u32 + 1, "bench", StartPosition::Latest, now).ok();
            let mut rel = ReliableSubscription::new(
                i as u32 + 1,
                "bench",
                StartPosition::Latest,
                ArqConfig::default(),
                now,
            )
            .ok();
            if !via_relay {
                ready.fetch_add(1, Ordering::SeqCst);
            }
            let mut counted_ready = !via_relay;
            if via_relay {
                let _ = socket.connect(target);
            }
            while !stop.load(Ordering::SeqCst) {
                let now = Instant::now();
                if via_relay {
                    let out = if reliable {
                        rel.as_mut().and_then(|s| s.poll_transmit(now))
                    } else {
                        plain.as_mut().and_then(|s| s.poll_transmit(now))
                    };
                    if let Some(d) = out {
                        let _ = socket.send(&d);
                    }
                }
                let Ok(n) = received.recv_wait(&socket) else {
                    continue;
                };
                let now_ns = epoch_ns(epoch);
                for k in 0..n {
                    for datagram in received.get(k).0 {
                        if !via_relay {
                            seen.record(&mut tally, datagram, now_ns, &progress);
                            continue;
                        }
                        let mut on_event = |e: SubscriptionEvent<'_>| {
                            if let SubscriptionEvent::Message { payload, .. } = e {
                                seen.record(&mut tally, payload, now_ns, &progress);
                            }
                        };
                        if reliable {
                            if let Some(s) = rel.as_mut() {
                                s.handle_datagram(now, datagram, &mut on_event);
                            }
                        } else if let Some(s) = plain.as_mut() {
                            s.handle_datagram(now, datagram, &mut on_event);
                        }
                    }
                }
                let active = if reliable {
                    rel.as_ref().is_some_and(|s| s.is_active())
                } else {
                    plain.as_ref().is_some_and(|s| s.is_active())
                };
                if active && !counted_ready {
                    counted_ready = true;
                    ready.fetch_add(1, Ordering::SeqCst);
                }
            }
            tally
        }));
    }
    Ok((handles, addrs))
}

/// The payload of message `number` of publisher `p`.
fn message(p: usize, number: u64, size: usize, epoch: Instant) -> Vec<u8> {
    let mut m = Vec::with_capacity(size.max(HEADER));
    fill_message(&mut m, p, number, size, epoch_ns(epoch));
    m
}

/// Writes message `number` of publisher `p`, sent at `stamp` nanoseconds
/// after the epoch, into `m`.
fn fill_message(m: &mut Vec<u8>, p: usize, number: u64, size: usize, stamp: u64) {
    m.clear();
    m.extend_from_slice(&(p as u32).to_le_bytes());
    m.extend_from_slice(&number.to_le_bytes());
    m.extend_from_slice(&stamp.to_le_bytes());
    m.resize(size.max(HEADER), 0x5A);
}

/// Spun at the end of a wait rather than slept: a sleep may end late.
const SPIN: Duration = Duration::from_micros(20);

/// Waits until `at`: sleeps while it is far off, then spins the last
/// stretch. A publisher spinning all the time would take a core from the
/// relay and the subscribers on a small machine, and change what is
/// measured.
fn pace(at: Instant) {
    let now = Instant::now();
    if at > now + SPIN {
        thread::sleep(at - now - SPIN);
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// Asks the kernel to end this thread's sleeps within a microsecond of
/// their time instead of the default 50 µs slack.
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// Runs one publisher; returns how many messages it sent.
fn publish(
    args: &Args,
    p: usize,
    target: SocketAddr,
    direct: &[SocketAddr],
    epoch: Instant,
) -> Result<u64, String> {
    let socket = socket()?;
    precise_sleeps();
    let deadline = Instant::now() + args.duration;
    let limit = args.count.unwrap_or(u64::MAX);
    let paced = args.rate > 0;
    let start = Instant::now();
    let mut sent = 0u64;
    let due = |sent: u64| {
        if paced {
            start + Duration::from_secs_f64(sent as f64 / args.rate as f64)
        } else {
            start
        }
    };
    if args.baseline.is_some() || args.raw {
        // Plain datagrams, one message each: straight to every subscriber,
        // or to the forwarder, socat or the relay's raw-in port.
        let forwarder = [target];
        let destinations: &[SocketAddr] = match args.baseline {
            Some(Baseline::Kernel) => direct,
            _ => &forwarder,
        };
        while sent < limit && Instant::now() < deadline {
            pace(due(sent));
            let m = message(p, sent, args.size, epoch);
            for to in destinations {
                let _ = socket.send_to(&m, to);
            }
            sent += 1;
        }
        return Ok(sent);
    }
    socket.connect(target).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_536];
    // Datagrams go out many per call, as GSO runs where the kernel can.
    let mut batch = BatchSender::new();
    let mut out: Vec<Transmit> = Vec::new();
    if args.reliable {
        let mut rp = ReliablePublisher::new(
            p as u64 + 1,
            "bench",
            ArqConfig::default(),
            args.batch.max(64),
        )
        .map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_micros(200)))
            .map_err(|e| e.to_string())?;
        loop {
            let now = Instant::now();
            let sending = sent < limit && now < deadline;
            // Everything due by now: one message at a low rate, a batch at
            // a high one.
            while sending && rp.wants_input() && now >= due(sent) && sent < limit {
                rp.push(message(p, sent, args.size, epoch))
                    .map_err(|e| e.to_string())?;
                sent += 1;
            }
            if !sending && rp.is_done() {
                break;
            }
            if rp.is_failed() || now > deadline + Duration::from_secs(30) {
                return Err(format!(
                    "publisher {p}: {} messages not acknowledged",
                    rp.unacknowledged()
                ));
            }
            if rp.poll_timeout().is_some_and(|t| t <= now) {
                rp.handle_timeout(now);
            }
            while let Some(d) = rp.poll_transmit(now) {
                out.push(Transmit {
                    destination: target,
                    payload: d,
                });
            }
            send_all(&mut batch, &socket, &mut out);
            if let Ok(n) = socket.recv(&mut buf) {
                rp.handle_datagram(Instant::now(), &buf[..n], |_, _| {});
            }
        }
        return Ok(sent);
    }
    let mut publisher = Publisher::new("bench", args.batch.max(64)).map_err(|e| e.to_string())?;
    let mut m = Vec::with_capacity(args.size.max(HEADER));
    let to_transmit = |payload| Transmit {
        destination: target,
        payload,
    };
    while sent < limit {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now < due(sent) {
            pace(due(sent));
            continue;
        }
        // Everything due by now (unpaced: a burst), stamped with one send
        // time: reading the clock per message cost the publisher more than
        // packing the message.
        let stamp = now.duration_since(epoch).as_nanos() as u64;
        let mut burst = 0;
        while sent < limit && burst < BURST && (!paced || due(sent) <= now) {
            fill_message(&mut m, p, sent, args.size, stamp);
            sent += 1;
            burst += 1;
            if args.batch == 0 {
                let _ = socket.send(
                    &udprelay::wire::encode_datagram(&[udprelay::wire::Frame::Publish {
                        channel: "bench",
                        payload: &m,
                    }])
                    .unwrap_or_default(),
                );
                continue;
            }
            out.extend(
                publisher
                    .push(&m)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(to_transmit),
            );
        }
        // Paced: nothing more is due, so what is packed goes out now; a low
        // rate sends each message at once and a high one still batches.
        if paced {
            out.extend(publisher.flush().map(to_transmit));
        }
        if paced || out.len() >= SEND_BATCH {
            send_all(&mut batch, &socket, &mut out);
        }
    }
    out.extend(publisher.flush().map(to_transmit));
    send_all(&mut batch, &socket, &mut out);
    Ok(sent)
}

/// Most messages a publisher packs between two looks at the clock.
const BURST: usize = 256;

/// Full datagrams an unpaced publisher gathers before sending them in one
/// call.
const SEND_BATCH: usize = 64;

/// Sends `out` in as few calls as the kernel allows, waiting out a full
/// socket buffer, and empties it. A datagram the kernel refuses outright is
/// skipped: the subscribers count it lost.
fn send_all(batch: &mut BatchSender, socket: &UdpSocket, out: &mut Vec<Transmit>) {
    let mut done = 0;
    while done < out.len() {
        match batch.send(socket, &out[done..]) {
            Ok(0) => thread::yield_now(),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::yield_now(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => done += 1,
        }
    }
    out.clear();
}

/// A minimal forwarder: every datagram it receives goes to every subscriber
/// as it is. The floor of what any relay costs.
/// Where the forwarder sends: filled in once the subscribers have sockets.
type Targets = Arc<std::sync::Mutex<Vec<SocketAddr>>>;

fn forwarder(
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, thread::JoinHandle<()>, Targets), String> {
    let socket = socket()?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    let targets = Arc::new(std::sync::Mutex::new(Vec::<SocketAddr>::new()));
    let t = Arc::clone(&targets);
    let handle = thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::SeqCst) {
            let Ok(n) = socket.recv(&mut buf) else {
                continue;
            };
            let targets = t.lock().map(|g| g.clone()).unwrap_or_default();
            for to in targets {
                let _ = socket.send_to(&buf[..n], to);
            }
        }
    });
    Ok((addr, handle, targets))
}

fn run(args: &Args) -> Result<Run, String> {
    if args.size < HEADER {
        return Err(format!("--size must be at least {HEADER}"));
    }
    // A raw run starts its relay once the subscribers have addresses (the
    // relay's --raw-out needs them); every other relay starts first.
    let mut spawned = if args.spawn && args.baseline.is_none() && !args.raw {
        Some(spawn_relay(&args.relay_arg)?)
    } else {
        None
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut forward = None;
    let target = match (args.baseline, &spawned, args.relay) {
        (Some(Baseline::Relay), _, _) => {
            let (addr, handle, targets) = forwarder(Arc::clone(&stop))?;
            forward = Some((handle, targets));
            addr
        }
        (Some(Baseline::Kernel), _, _) => SocketAddr::from(([127, 0, 0, 1], 9)),
        (Some(Baseline::Socat), _, _) => free_udp_port()?,
        (None, Some(s), _) => s.addr,
        (None, None, Some(a)) => a,
        (None, None, None) if args.raw => SocketAddr::from(([127, 0, 0, 1], 9)),
        (None, None, None) => return Err("give --relay ADDR or --spawn".into()),
    };
    let epoch = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(AtomicU64::new(0));
    let (subs, sub_addrs) = subscribe_all(
        args,
        target,
        epoch,
        Arc::clone(&stop),
        Arc::clone(&ready),
        Arc::clone(&progress),
    )?;
    if let Some((_, targets)) = &forward
        && let Ok(mut t) = targets.lock()
    {
        *t = sub_addrs.clone();
    }
    let mut target = target;
    if args.raw {
        let mut relay_args = args.relay_arg.clone();
        relay_args.extend(["--raw-in".to_string(), "127.0.0.1:0=bench".to_string()]);
        for a in &sub_addrs {
            relay_args.extend(["--raw-out".to_string(), format!("bench={a}")]);
        }
        let relay = spawn_relay(&relay_args)?;
        target = relay
            .raw_in
            .ok_or("the relay did not report its raw-in port")?;
        spawned = Some(relay);
    }
    let _socat = match args.baseline {
        Some(Baseline::Socat) => Some(spawn_socat(target, &sub_addrs)?),
        _ => None,
    };
    let relay_pid = spawned.as_ref().map(|s| s.child.id());
    let cpu_before = relay_pid.and_then(cpu_seconds);
    let wait = Instant::now() + Duration::from_secs(5);
    while ready.load(Ordering::SeqCst) < args.subscribers as u64
        && args.baseline.is_none()
        && !args.raw
    {
        if Instant::now() > wait {
            stop.store(true, Ordering::SeqCst);
            return Err(format!(
                "the relay at {target} did not accept the subscriptions within 5 s"
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    // A progress bar on a terminal only: scripts get clean output.
    let show = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let publishing_done = Arc::new(AtomicBool::new(false));
    let bar = show.then(|| {
        let total = args.duration.as_millis() as u64;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{msg} {prefix}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{:?}", args.duration));
        let (bar2, done, progress) = (
            bar.clone(),
            Arc::clone(&publishing_done),
            Arc::clone(&progress),
        );
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                bar2.set_position(started.elapsed().as_millis() as u64);
                bar2.set_prefix(format!("{} received", progress.load(Ordering::Relaxed)));
                thread::sleep(Duration::from_millis(100));
            }
        });
        bar
    });
    thread::scope(|scope| {
        let mut pubs = Vec::new();
        for p in 0..args.publishers {
            let addrs = &sub_addrs;
            pubs.push(scope.spawn(move || publish(args, p, target, addrs, epoch)));
        }
        let results: Vec<Result<u64, String>> = pubs
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("publisher panicked".into()))
            })
            .collect();
        results
    })
    .into_iter()
    .try_fold(0u64, |acc, r| r.map(|n| acc + n))
    .and_then(|sent| {
        let publishing = started.elapsed();
        publishing_done.store(true, Ordering::SeqCst);
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        // Let what is in flight arrive: until everything did, or nothing more
        // came for a second (what is lost stays lost), at most 30 s.
        let expected = sent * args.subscribers as u64;
        let give_up = Instant::now() + Duration::from_secs(30);
        let mut last = (progress.load(Ordering::SeqCst), Instant::now());
        while progress.load(Ordering::SeqCst) < expected && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(10));
            let now = progress.load(Ordering::SeqCst);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
        // Messages are counted as delivered over the time until the last
        // one arrived: a subscriber that lags the publishers is not credited
        // with the publishers' speed.
        let delivered_by = if progress.load(Ordering::SeqCst) >= expected {
            Instant::now()
        } else {
            last.1
        };
        let delivering = delivered_by.duration_since(started).max(publishing);
        stop.store(true, Ordering::SeqCst);
        let mut total = Tally {
            latency: Some(new_histogram()),
            ..Tally::default()
        };
        for h in subs {
            let t = h.join().map_err(|_| "subscriber panicked".to_string())?;
            total.received += t.received;
            total.duplicates += t.duplicates;
            total.reordered += t.reordered;
            total.bytes += t.bytes;
            if total.buckets.len() < t.buckets.len() {
                total.buckets.resize(t.buckets.len(), 0);
            }
            for (a, b) in total.buckets.iter_mut().zip(&t.buckets) {
                *a += b;
            }
            if let (Some(all), Some(one)) = (total.latency.as_mut(), t.latency.as_ref()) {
                let _ = all.add(one);
            }
        }
        if let Some((handle, _)) = forward {
            let _ = handle.join();
        }
        let cpu = match (cpu_before, relay_pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let h = total.latency.unwrap_or_else(new_histogram);
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let secs = delivering.as_secs_f64().max(1e-9);
        Ok(Run {
            mode: match args.baseline {
                Some(Baseline::Kernel) => Mode::BaselineKernel,
                Some(Baseline::Relay) => Mode::BaselineForwarder,
                Some(Baseline::Socat) => Mode::BaselineSocat,
                None if args.raw => Mode::RelayRaw,
                None if args.reliable => Mode::RelayReliable,
                None => Mode::Relay,
            },
            publishers: args.publishers,
            subscribers: args.subscribers,
            size: args.size,
            rate: args.rate,
            seconds: secs,
            publishing_seconds: publishing.as_secs_f64(),
            sent,
            received: total.received,
            lost: expected.saturating_sub(total.received),
            duplicated: total.duplicates,
            reordered: total.reordered,
            delivered_per_sec: total.received as f64 / secs,
            delivered_mb_per_sec: total.bytes as f64 / secs / 1e6,
            latency_us: Latency {
                p50: us(0.5),
                p90: us(0.9),
                p99: us(0.99),
                p999: us(0.999),
                max: h.max() as f64 / 1000.0,
            },
            relay_cpu_seconds: cpu,
            timeline: total
                .buckets
                .iter()
                .skip((started.duration_since(epoch).as_nanos() as u64 / STEP_NS) as usize)
                .map(|n| *n as f64 * 1e9 / STEP_NS as f64)
                .collect(),
        })
    })
}

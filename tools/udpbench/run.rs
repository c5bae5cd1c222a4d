//! One run from start to report: start what carries the traffic, the
//! subscribers, then the publishers; wait for what is in flight; add up the
//! tallies into a [`Run`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::publisher::publish;
use crate::report::{Mode, Run};
use udprelay::auth::{Credential, KeyFile, NewKey};

use crate::spawn::{forwarder, free_udp_port, run_in_process, spawn_relay, spawn_socat};
use crate::subscriber::subscribe_all;

use crate::traffic::{HEADER, Tally};
use crate::{Args, Baseline};

/// Runs made so far, numbering the fresh channel names.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// The channel of one run: --channel's, or a fresh `bench-PID-N`, so that
/// no run receives what another sent (a relay's log keeps every channel).
fn channel(args: &Args) -> String {
    let fresh = || {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        format!("bench-{}-{n}", std::process::id())
    };
    args.channel.clone().unwrap_or_else(fresh)
}

/// Measures the traffic `args` describes once.
pub fn run(args: &Args) -> Result<Run, String> {
    if args.size < HEADER {
        return Err(format!("--size must be at least {HEADER}"));
    }
    let channel = channel(args);
    // --auth: a key file with one key that may do everything, and the
    // relay told to require it.
    let keys_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let keys = keys_dir.path().join("keys.toml");
    let mut relay_arg = args.relay_arg.clone();
    let credential = if args.auth && args.baseline.is_none() {
        let everything = NewKey {
            name: "udpbench".into(),
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            ..NewKey::default()
        };
        let (file, id) = KeyFile::add_key(&keys, &everything).map_err(|e| e.to_string())?;
        let key = file.key(id).ok_or("the new key is not in the key file")?;
        relay_arg.extend(["--keys".into(), keys.display().to_string()]);
        relay_arg.extend(["--auth".into(), "required".into()]);
        Some(key.credential())
    } else if args.baseline.is_none() {
        Credential::from_flags(args.credential.as_deref(), args.credential_file.as_deref())?
    } else {
        None
    };
    let keys_for_relay = args.auth.then_some(keys.as_path());
    // A raw run starts its relay once the subscribers have addresses (the
    // relay's --raw-out needs them); every other relay starts first.
    let mut spawned = if args.spawn && args.baseline.is_none() && !args.raw {
        Some(if args.in_process {
            run_in_process(None, &channel, keys_for_relay)?
        } else {
            spawn_relay(&relay_arg)?
        })
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
        &channel,
        target,
        epoch,
        Arc::clone(&stop),
        Arc::clone(&ready),
        Arc::clone(&progress),
        credential.clone(),
    )?;
    if let Some((_, targets)) = &forward
        && let Ok(mut t) = targets.lock()
    {
        *t = sub_addrs.clone();
    }
    let mut target = target;
    if args.raw {
        let mut relay_args = args.relay_arg.clone();
        relay_args.extend(["--raw-in".to_string(), format!("127.0.0.1:0={channel}")]);
        for a in &sub_addrs {
            relay_args.extend(["--raw-out".to_string(), format!("{channel}={a}")]);
        }
        let relay = if args.in_process {
            run_in_process(Some(&sub_addrs), &channel, None)?
        } else {
            spawn_relay(&relay_args)?
        };
        target = relay
            .raw_in
            .ok_or("the relay did not report its raw-in port")?;
        spawned = Some(relay);
    }
    let _socat = match args.baseline {
        Some(Baseline::Socat) => Some(spawn_socat(target, &sub_addrs)?),
        _ => None,
    };
    let cpu_before = spawned.as_ref().and_then(|s| s.cpu_seconds());
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
    let publishing_done = Arc::new(AtomicBool::new(false));
    let bar = progress_bar(args, started, &publishing_done, &progress);
    thread::scope(|scope| {
        let mut pubs = Vec::new();
        for p in 0..args.publishers {
            let addrs = &sub_addrs;
            let (credential, channel) = (credential.as_ref(), channel.as_str());
            pubs.push(
                scope.spawn(move || publish(args, channel, p, target, addrs, epoch, credential)),
            );
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
        let expected = sent * args.subscribers as u64;
        let delivering = wait_for_in_flight(&progress, expected)
            .duration_since(started)
            .max(publishing);
        stop.store(true, Ordering::SeqCst);
        let mut total = Tally::new();
        for h in subs {
            let t = h.join().map_err(|_| "subscriber panicked".to_string())?;
            total.add(&t);
        }
        if let Some((handle, _)) = forward {
            let _ = handle.join();
        }
        let cpu = match (cpu_before, spawned.as_ref().and_then(|s| s.cpu_seconds())) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let secs = delivering.as_secs_f64().max(1e-9);
        Ok(Run {
            mode: mode(args),
            publishers: args.publishers,
            subscribers: args.subscribers,
            size: args.size,
            channel: args.baseline.is_none().then(|| channel.clone()),
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
            latency: total.latency(),
            latency_percentiles: total.latency_percentiles(),
            relay_cpu_seconds: cpu,
            timeline_per_sec: total.timeline(started.duration_since(epoch).as_nanos() as u64),
        })
    })
}

/// What carries the traffic of `args`.
fn mode(args: &Args) -> Mode {
    match args.baseline {
        Some(Baseline::Kernel) => Mode::BaselineKernel,
        Some(Baseline::Relay) => Mode::BaselineForwarder,
        Some(Baseline::Socat) => Mode::BaselineSocat,
        None if args.raw => Mode::RelayRaw,
        None if args.reliable => Mode::RelayReliable,
        None => Mode::Relay,
    }
}

/// A progress bar of the publishing time and the messages received, until
/// `done`; on a terminal only: scripts get clean output.
fn progress_bar(
    args: &Args,
    started: Instant,
    done: &Arc<AtomicBool>,
    progress: &Arc<AtomicU64>,
) -> Option<indicatif::ProgressBar> {
    let show = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    show.then(|| {
        let total = args.duration.as_millis() as u64;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{msg} {prefix}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{:?}", args.duration));
        let (bar2, done, progress) = (bar.clone(), Arc::clone(done), Arc::clone(progress));
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                bar2.set_position(started.elapsed().as_millis() as u64);
                bar2.set_prefix(format!("{} received", progress.load(Ordering::Relaxed)));
                thread::sleep(Duration::from_millis(100));
            }
        });
        bar
    })
}

/// Lets what is in flight arrive: until `progress` reaches `expected`, or
/// nothing more came for a second (what is lost stays lost), at most 30 s.
/// Returns when the last message arrived: messages are counted as delivered
/// over the time until then, so a subscriber that lags the publishers is
/// not credited with the publishers' speed.
fn wait_for_in_flight(progress: &AtomicU64, expected: u64) -> Instant {
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
    if progress.load(Ordering::SeqCst) >= expected {
        Instant::now()
    } else {
        last.1
    }
}

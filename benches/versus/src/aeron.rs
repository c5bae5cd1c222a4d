//! Aeron: real UDP on 127.0.0.1 through a media driver (Aeron C, as the
//! rusteron crates build it), default driver settings, backoff idle
//! strategies. Every thread, the driver's included, parks with a 1 µs
//! timer slack instead of Linux's default 50 µs, as udpbench's clients do:
//! with the default, each of the path's four backoff parks can end up to
//! 50 µs late, and Aeron's latency would be the kernel's slack, not Aeron's.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusteron_client::{Aeron, BackoffIdleStrategy, IdleStrategy, cformat};

use crate::common::{
    Error, Flags, Outcome, SIZE, due, fill, find_lossless, histogram, latency_json, ns_since, pace,
    precise_sleeps, stamp_of,
};

const STREAM_ID: i32 = 1013;

/// A subscriber that has seen nothing for this long after the publisher
/// finished has all it will get.
const QUIET: Duration = Duration::from_millis(500);

/// How long a publication or subscription may take to connect.
const CONNECT: Duration = Duration::from_secs(10);

/// `aeron-driver --dir DIR`: runs a media driver with default settings in
/// DIR until killed; prints `aeron driver ready` once clients may connect.
pub fn driver(flags: &Flags) -> Result<(), Error> {
    use rusteron_media_driver::{AeronDriver, AeronDriverContext, IntoCString};
    let dir = flags.string("dir", None)?;
    // Before the driver starts its sender and receiver threads, which
    // inherit it.
    precise_sleeps();
    let context = AeronDriverContext::new()?;
    context.set_dir_delete_on_start(true)?;
    context.set_dir_delete_on_shutdown(true)?;
    context.set_dir(&dir.clone().into_c_string())?;
    let driver = AeronDriver::new(&context)
        .map_err(|e| format!("cannot start the Aeron media driver in {dir}: {e}"))?;
    driver
        .start(true)
        .map_err(|e| format!("cannot start the Aeron media driver in {dir}: {e}"))?;
    println!("aeron driver ready");
    loop {
        driver.main_idle_strategy(driver.main_do_work()?);
    }
}

/// A free UDP port on 127.0.0.1 (free when asked).
fn free_port() -> Result<u16, Error> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn client(dir: &str) -> Result<Aeron, Error> {
    Aeron::connect_dir(dir)
        .map_err(|e| format!("cannot connect to the Aeron media driver in {dir}: {e}").into())
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), Error> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > CONNECT {
            return Err(format!("{what} did not connect within {CONNECT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// One run: one publication for `duration`, paced to `rate` (0: unpaced,
/// offering as fast as back pressure lets it), and `subscribers`
/// subscriptions polled by one thread of their own. One subscriber: a
/// unicast publication to its endpoint; more: multi-destination-cast, a
/// manual-control publication with a destination per subscriber.
fn run(
    dir: &str,
    subscribers: usize,
    rate: u64,
    duration: Duration,
    latency: bool,
) -> Result<(Outcome, hdrhistogram::Histogram<u64>), Error> {
    let ports = (0..subscribers)
        .map(|_| free_port())
        .collect::<Result<Vec<_>, _>>()?;
    let endpoints: Vec<String> = ports
        .iter()
        .map(|p| format!("aeron:udp?endpoint=127.0.0.1:{p}"))
        .collect();
    let epoch = Instant::now();
    let sent_total = Arc::new(AtomicU64::new(u64::MAX));
    let published = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));

    let subscriber = {
        let dir = dir.to_string();
        let endpoints = endpoints.clone();
        let (sent_total, published, connected, created, failed) = (
            sent_total.clone(),
            published.clone(),
            connected.clone(),
            created.clone(),
            failed.clone(),
        );
        std::thread::spawn(
            move || -> Result<(Vec<u64>, Instant, hdrhistogram::Histogram<u64>), String> {
                precise_sleeps();
                let result = (|| -> Result<_, Error> {
                    let aeron = client(&dir)?;
                    let mut subs = Vec::new();
                    for e in &endpoints {
                        subs.push(
                            aeron
                                .async_add_subscription(
                                    &cformat!("{e}"),
                                    STREAM_ID,
                                    rusteron_client::Handlers::NONE,
                                    rusteron_client::Handlers::NONE,
                                )?
                                .poll_blocking(CONNECT)?,
                        );
                    }
                    created.store(true, Ordering::Release);
                    wait_for("a subscription", || {
                        failed.load(Ordering::Acquire) || subs.iter().all(|s| s.is_connected())
                    })?;
                    connected.store(subs.len(), Ordering::Release);
                    let mut got = vec![0u64; subs.len()];
                    let mut last = epoch;
                    let mut h = histogram();
                    let mut idle = BackoffIdleStrategy::new();
                    loop {
                        let mut work = 0;
                        for (i, s) in subs.iter().enumerate() {
                            let count = &mut got[i];
                            work += s.poll_fn(
                                |buffer: &[u8], _header| {
                                    *count += 1;
                                    if latency {
                                        let now = ns_since(epoch);
                                        let _ =
                                            h.record(now.saturating_sub(stamp_of(buffer)).max(1));
                                    }
                                },
                                256,
                            )?;
                        }
                        if work > 0 {
                            last = Instant::now();
                        }
                        let total = sent_total.load(Ordering::Acquire);
                        if got.iter().all(|g| *g >= total) {
                            break;
                        }
                        if published.load(Ordering::Acquire) && last.elapsed() > QUIET {
                            break;
                        }
                        if failed.load(Ordering::Acquire) {
                            return Err("the publisher failed".into());
                        }
                        idle.idle(work);
                    }
                    Ok((got, last, h))
                })();
                result.map_err(|e| {
                    failed.store(true, Ordering::Release);
                    e.to_string()
                })
            },
        )
    };

    let done = Arc::new(AtomicBool::new(false));
    let (counted, count_rx) = std::sync::mpsc::channel();
    let publisher = {
        let dir = dir.to_string();
        let (connected, created, failed, done) = (
            connected.clone(),
            created.clone(),
            failed.clone(),
            done.clone(),
        );
        std::thread::spawn(move || -> Result<(u64, Instant, f64), String> {
            precise_sleeps();
            let result = (|| -> Result<_, Error> {
                let aeron = client(&dir)?;
                wait_for("the subscriber", || {
                    failed.load(Ordering::Acquire) || created.load(Ordering::Acquire)
                })?;
                let channel = if subscribers == 1 {
                    endpoints[0].clone()
                } else {
                    format!(
                        "aeron:udp?control=127.0.0.1:{}|control-mode=manual",
                        free_port()?
                    )
                };
                let publication = aeron
                    .async_add_publication(&cformat!("{channel}"), STREAM_ID)?
                    .poll_blocking(CONNECT)?;
                if subscribers > 1 {
                    for e in &endpoints {
                        publication.add_destination(&cformat!("{e}"), CONNECT)?;
                    }
                }
                wait_for("the publication", || {
                    failed.load(Ordering::Acquire)
                        || connected.load(Ordering::Acquire) == subscribers
                })?;
                if failed.load(Ordering::Acquire) {
                    return Err("the subscriber failed".into());
                }
                let mut m = [0u8; SIZE];
                let start = Instant::now();
                let end = start + duration;
                let mut n = 0u64;
                let mut idle = BackoffIdleStrategy::new();
                'send: while Instant::now() < end {
                    if rate > 0 {
                        pace(due(start, rate, n));
                    }
                    fill(&mut m, n, ns_since(epoch));
                    // Back pressure: retry the same message until taken.
                    loop {
                        match publication.offer(&m) {
                            Ok(_) => {
                                idle.reset();
                                break;
                            }
                            Err(e) if e.is_retryable() => {
                                if Instant::now() >= end + Duration::from_secs(5) {
                                    break 'send;
                                }
                                idle.idle(0);
                            }
                            Err(e) => return Err(format!("offer failed: {e}").into()),
                        }
                    }
                    n += 1;
                }
                let publishing = start.elapsed().as_secs_f64();
                Ok((n, start, publishing, publication, aeron))
            })();
            match result {
                Ok((n, start, publishing, publication, aeron)) => {
                    let _ = counted.send(n);
                    // Open until the subscriber is done, so that the driver
                    // can still send (and resend) the tail.
                    while !done.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    drop((publication, aeron));
                    Ok((n, start, publishing))
                }
                Err(e) => {
                    failed.store(true, Ordering::Release);
                    Err(e.to_string())
                }
            }
        })
    };
    // The publisher's count, once it has stopped sending (none: it failed).
    let sent = count_rx.recv().unwrap_or(0);
    sent_total.store(sent, Ordering::Release);
    published.store(true, Ordering::Release);
    let sub_result = subscriber
        .join()
        .map_err(|_| "the subscriber thread panicked")?;
    done.store(true, Ordering::Release);
    let pub_result = publisher
        .join()
        .map_err(|_| "the publisher thread panicked")?;
    let (sent, start, publishing_seconds) = pub_result?;
    let (got, last, h) = sub_result?;
    let outcome = Outcome {
        rate,
        sent,
        received: got.iter().sum(),
        subscribers: subscribers as u64,
        publishing_seconds,
        seconds: last.duration_since(start).as_secs_f64(),
    };
    Ok((outcome, h))
}

/// `aeron-lossless --dir DIR [--subscribers N] [--duration S]`.
pub fn lossless(flags: &Flags) -> Result<(), Error> {
    let dir = flags.string("dir", None)?;
    let subscribers = flags.number("subscribers", 1)?.clamp(1, 64) as usize;
    let duration = flags.seconds("duration", 2.0)?;
    let best = find_lossless("aeron", |rate| {
        Ok(run(&dir, subscribers, rate, duration, false)?.0)
    })?;
    println!("{}", best.json());
    Ok(())
}

/// `aeron-latency --dir DIR [--rate R] [--duration S]`.
pub fn latency(flags: &Flags) -> Result<(), Error> {
    let dir = flags.string("dir", None)?;
    let rate = flags.number("rate", 10_000)?.max(1);
    let duration = flags.seconds("duration", 5.0)?;
    let (outcome, h) = run(&dir, 1, rate, duration, true)?;
    println!("{}", latency_json(&h, outcome.sent, rate));
    Ok(())
}

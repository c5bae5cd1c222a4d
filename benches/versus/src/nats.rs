//! NATS core pub/sub and JetStream, through the official client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Runtime;

use crate::common::{
    Error, Flags, Outcome, SIZE, due, fill, find_lossless, histogram, latency_json, ns_since, pace,
    precise_sleeps, stamp_of,
};

/// A subscriber that has seen nothing for this long after the publisher
/// finished has all it will get.
const QUIET: Duration = Duration::from_millis(500);

fn runtime() -> Result<Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn connect(url: &str) -> Result<async_nats::Client, Error> {
    async_nats::connect(url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {url}: {e}").into())
}

/// Distinct subjects, so that runs never see each other's messages.
fn subject(kind: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "versus.{kind}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One run: a publisher paced to `rate` (0: unpaced) for `duration`, each
/// of `subscribers` on a connection of its own. With `latency`, the
/// subscribers' one-way latencies too.
fn run(
    rt: &Runtime,
    url: &str,
    subscribers: u64,
    rate: u64,
    duration: Duration,
    latency: bool,
) -> Result<(Outcome, hdrhistogram::Histogram<u64>), Error> {
    let subject = subject("core");
    let epoch = Instant::now();
    let sent_total = Arc::new(AtomicU64::new(u64::MAX));
    let published = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let client = rt.block_on(connect(url))?;
        let mut sub = rt.block_on(client.subscribe(subject.clone()))?;
        rt.block_on(client.flush())?;
        let (sent_total, published) = (sent_total.clone(), published.clone());
        tasks.push(rt.spawn(async move {
            let mut got = 0u64;
            let mut last = epoch;
            let mut h = histogram();
            loop {
                if got >= sent_total.load(Ordering::Acquire) {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                    Ok(Some(m)) => {
                        got += 1;
                        last = Instant::now();
                        if latency {
                            let now = ns_since(epoch);
                            let _ = h.record(now.saturating_sub(stamp_of(&m.payload)).max(1));
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        if published.load(Ordering::Acquire) && last.elapsed() > QUIET {
                            break;
                        }
                    }
                }
            }
            drop(client);
            (got, last, h)
        }));
    }
    let client = rt.block_on(connect(url))?;
    let handle = rt.handle().clone();
    let publisher = std::thread::spawn(move || -> Result<(u64, Instant, f64), String> {
        precise_sleeps();
        handle.block_on(async {
            let mut m = [0u8; SIZE];
            let start = Instant::now();
            let end = start + duration;
            let mut n = 0u64;
            while Instant::now() < end {
                if rate > 0 {
                    pace(due(start, rate, n));
                }
                fill(&mut m, n, ns_since(epoch));
                client
                    .publish(subject.clone(), Bytes::copy_from_slice(&m))
                    .await
                    .map_err(|e| e.to_string())?;
                n += 1;
            }
            client.flush().await.map_err(|e| e.to_string())?;
            Ok((n, start, start.elapsed().as_secs_f64()))
        })
    });
    let (sent, start, publishing_seconds) = publisher
        .join()
        .map_err(|_| "the publisher thread panicked")??;
    sent_total.store(sent, Ordering::Release);
    published.store(true, Ordering::Release);
    let mut outcome = Outcome {
        rate,
        sent,
        subscribers,
        publishing_seconds,
        ..Outcome::default()
    };
    let mut all = histogram();
    let mut last = start;
    for t in tasks {
        let (got, at, h) = rt.block_on(t)?;
        outcome.received += got;
        last = last.max(at);
        all.add(&h)?;
    }
    outcome.seconds = last.duration_since(start).as_secs_f64();
    Ok((outcome, all))
}

/// `nats-lossless --url URL [--subscribers N] [--duration S]`.
pub fn lossless(flags: &Flags) -> Result<(), Error> {
    let url = flags.string("url", None)?;
    let subscribers = flags.number("subscribers", 1)?.max(1);
    let duration = flags.seconds("duration", 2.0)?;
    let rt = runtime()?;
    let best = find_lossless("nats", |rate| {
        Ok(run(&rt, &url, subscribers, rate, duration, false)?.0)
    })?;
    println!("{}", best.json());
    Ok(())
}

/// `nats-latency --url URL [--rate R] [--duration S]`.
pub fn latency(flags: &Flags) -> Result<(), Error> {
    let url = flags.string("url", None)?;
    let rate = flags.number("rate", 10_000)?.max(1);
    let duration = flags.seconds("duration", 5.0)?;
    let rt = runtime()?;
    let (outcome, h) = run(&rt, &url, 1, rate, duration, true)?;
    println!("{}", latency_json(&h, outcome.sent, rate));
    Ok(())
}

async fn fresh_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> Result<stream::Stream, Error> {
    let _ = js.delete_stream(name).await;
    Ok(js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create JetStream stream {name}: {e}"))?)
}

/// Publishes to `subject` with at most `window` acknowledgements
/// outstanding, for `duration` or `count` messages, whichever ends first;
/// returns how many were acknowledged and the seconds until the last ack.
async fn acked_publish(
    js: &jetstream::Context,
    subject: &str,
    window: usize,
    duration: Duration,
    count: u64,
) -> Result<(u64, f64), Error> {
    let mut m = [0u8; SIZE];
    let start = Instant::now();
    let end = start + duration;
    let mut pending = VecDeque::with_capacity(window);
    let mut n = 0u64;
    while n < count && Instant::now() < end {
        fill(&mut m, n, 0);
        pending.push_back(
            js.publish(subject.to_string(), Bytes::copy_from_slice(&m))
                .await?,
        );
        n += 1;
        if pending.len() >= window
            && let Some(ack) = pending.pop_front()
        {
            ack.await?;
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// `js-publish --url URL [--window W] [--duration S]`: acknowledged
/// publishes to a file-stored stream.
pub fn js_publish(flags: &Flags) -> Result<(), Error> {
    let url = flags.string("url", None)?;
    let window = flags.number("window", 256)?.max(1) as usize;
    let duration = flags.seconds("duration", 3.0)?;
    let rt = runtime()?;
    rt.block_on(async {
        let js = jetstream::new(connect(&url).await?);
        fresh_stream(&js, "VERSUS_PUBLISH", "versus.js.publish").await?;
        let (n, secs) = acked_publish(&js, "versus.js.publish", window, duration, u64::MAX).await?;
        let _ = js.delete_stream("VERSUS_PUBLISH").await;
        println!(
            "{}",
            serde_json::json!({"acked": n, "window": window, "seconds": secs, "msg_per_sec": n as f64 / secs})
        );
        Ok(())
    })
}

/// `js-replay --url URL [--count N] [--batch B]`: stores N messages (not
/// timed), then times a pull consumer fetching them all in batches of B,
/// acknowledging each batch by its last message (AckPolicy::All).
pub fn js_replay(flags: &Flags) -> Result<(), Error> {
    let url = flags.string("url", None)?;
    let count = flags.number("count", 1_000_000)?.max(1);
    let batch = flags.number("batch", 1000)?.max(1) as usize;
    let rt = runtime()?;
    rt.block_on(async {
        let js = jetstream::new(connect(&url).await?);
        let stream = fresh_stream(&js, "VERSUS_REPLAY", "versus.js.replay").await?;
        let (stored, secs) = acked_publish(
            &js,
            "versus.js.replay",
            4096,
            Duration::from_secs(3600),
            count,
        )
        .await?;
        eprintln!("jetstream: stored {stored} messages in {secs:.1} s");
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("replay".into()),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::All,
                max_ack_pending: (batch as i64 * 4).max(1000),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create the pull consumer: {e}"))?;
        let start = Instant::now();
        let mut got = 0u64;
        while got < count {
            let mut messages = consumer
                .batch()
                // The last batch asks for what is left: a batch asking for
                // more waits out its expiry.
                .max_messages(batch.min((count - got) as usize))
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            let mut last = None;
            let mut in_batch = 0;
            while let Some(m) = messages.next().await {
                last = Some(m?);
                in_batch += 1;
            }
            if in_batch == 0 {
                return Err(format!("the pull consumer stalled after {got} of {count}").into());
            }
            got += in_batch;
            if let Some(m) = last {
                m.ack().await?;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let _ = js.delete_stream("VERSUS_REPLAY").await;
        println!(
            "{}",
            serde_json::json!({"replayed": got, "batch": batch, "seconds": secs, "msg_per_sec": got as f64 / secs})
        );
        Ok(())
    })
}

//! The relay core and the reliable clients, driven together through the
//! seeded network simulator in simulated time: exactly-once, in-order
//! delivery across a matrix of loss rates, with duplication and reordering.
//!
//! A failure prints its seed; `UDPRELAY_SEED=N cargo test --test simulation`
//! replays it.

use std::time::Duration;

use udprelay::log::inspect;
use udprelay::reliable::ArqConfig;
use udprelay::sim::scenario::{self, Scenario};
use udprelay::sim::{LinkConfig, seed_from_env};

/// Runs `scenario` and checks that every subscriber got every message once,
/// in order, and that the log holds each once, in order.
fn check(scenario: Scenario) -> scenario::Outcome {
    let dir = tempfile::tempdir().unwrap();
    let seed = scenario.seed;
    let total = scenario.messages;
    let out = scenario::run(&scenario, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<u64> = (0..total).collect();
    for (i, got) in out.received.iter().enumerate() {
        assert!(
            got == &want,
            "seed {seed}: subscriber {i} got {} messages, not 0..{total} once in order",
            got.len()
        );
    }
    let mut log = Vec::new();
    inspect::dump(dir.path(), "sim", 0, u64::MAX, &mut |r| {
        log.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap()));
    })
    .unwrap();
    assert!(
        log == want,
        "seed {seed}: the log holds {} records, not each message once in order",
        log.len()
    );
    eprintln!(
        "loss {}: {total} messages in {:?} of simulated time (seed {seed})",
        scenario.link.loss, out.simulated
    );
    out
}

fn matrix(loss: f64, default_seed: u64) {
    check(Scenario {
        seed: seed_from_env(default_seed),
        link: LinkConfig {
            loss,
            duplicate: 0.02,
            reorder: 0.05,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(4),
            rate: None,
            fifo: false,
        },
        messages: 100_000,
        payload: 16,
        interval: None,
        subscribers: 2,
        limit: Duration::from_secs(3600),
        arq: ArqConfig::default(),
    });
}

#[test]
fn no_loss() {
    matrix(0.0, 1);
}

#[test]
fn one_percent_loss() {
    matrix(0.01, 2);
}

#[test]
fn ten_percent_loss() {
    matrix(0.10, 3);
}

#[test]
fn thirty_percent_loss() {
    matrix(0.30, 4);
}

#[test]
fn bandwidth_cap_slows_but_loses_nothing() {
    let out = check(Scenario {
        seed: seed_from_env(5),
        link: LinkConfig {
            loss: 0.05,
            rate: Some(200_000), // 200 KB/s per sender
            ..LinkConfig::default()
        },
        messages: 5_000,
        payload: 16,
        interval: None,
        subscribers: 2,
        limit: Duration::from_secs(3600),
        arq: ArqConfig::default(),
    });
    assert!(
        out.simulated > Duration::from_millis(200),
        "the cap holds: {:?}",
        out.simulated
    );
}

#[test]
fn large_messages_arrive_whole_through_loss() {
    let out = check(Scenario {
        seed: seed_from_env(6),
        link: LinkConfig {
            loss: 0.10,
            delay: Duration::from_millis(10),
            ..LinkConfig::default()
        },
        messages: 20,
        payload: 100_000, // 72 pieces each
        interval: None,
        subscribers: 2,
        limit: Duration::from_secs(3600),
        arq: ArqConfig::default(),
    });
    // Subscribers report the pieces they hold, and the relay resends only
    // the others: sending whole messages again carried 13.6 to 15.9 MB here
    // (seeds 1 to 6), piece by piece 10.4 to 11.2 MB. The floor, every byte
    // once over three legs, is 6 MB.
    let payload = 20 * 100_000;
    eprintln!("{:?}", out.network);
    assert!(
        out.network.bytes < 6 * payload,
        "lost pieces only: {} bytes on the wire for {payload} bytes to each of 2 subscribers",
        out.network.bytes
    );
}

/// A thin stream (a message every 20 ms over a 60 to 124 ms round trip, 10 %
/// loss each way on both legs): with redundant bundling, a lost datagram is
/// repaired by the next one, so almost nothing waits for loss detection and
/// a retransmission; without it, every loss costs a round trip or more.
#[test]
fn thin_streams_repair_losses_with_the_next_datagram() {
    let seed = seed_from_env(7);
    let run = |bundle_limit| {
        let dir = tempfile::tempdir().unwrap();
        let out = scenario::run(
            &Scenario {
                seed,
                link: LinkConfig {
                    loss: 0.10,
                    delay: Duration::from_millis(30),
                    jitter: Duration::from_millis(32),
                    fifo: true,
                    ..LinkConfig::default()
                },
                messages: 500,
                payload: 8,
                interval: Some(Duration::from_millis(20)),
                subscribers: 1,
                limit: Duration::from_secs(3600),
                arq: ArqConfig {
                    bundle_limit,
                    ..ArqConfig::default()
                },
            },
            dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mean = out.latencies.iter().sum::<Duration>() / out.latencies.len() as u32;
        (out.publisher, mean, out.network)
    };
    let (with, with_mean, with_net) = run(ArqConfig::default().bundle_limit);
    let (without, without_mean, without_net) = run(0);
    eprintln!("seed {seed}: bundled {with:?} mean {with_mean:?} {with_net:?}");
    eprintln!("seed {seed}: plain   {without:?} mean {without_mean:?} {without_net:?}");
    assert_eq!(without.bundled, 0);
    assert!(
        with.bundled > 400,
        "seed {seed}: copies rode along: {with:?}"
    );
    assert!(
        without.retransmits >= 20 && with.retransmits * 4 <= without.retransmits,
        "seed {seed}: bundling repairs most losses without a retransmission: \
         {} against {}",
        with.retransmits,
        without.retransmits
    );
    assert!(
        with_mean + Duration::from_millis(15) < without_mean,
        "seed {seed}: bundling cuts the mean latency: {with_mean:?} against {without_mean:?}"
    );
    assert!(
        with_net.sent <= without_net.sent + without_net.sent / 10,
        "seed {seed}: bundling adds bytes, not datagrams: {} against {}",
        with_net.sent,
        without_net.sent
    );
}

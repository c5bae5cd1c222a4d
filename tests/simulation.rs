//! The relay core and the reliable clients, driven together through the
//! seeded network simulator in simulated time: exactly-once, in-order
//! delivery across a matrix of loss rates, with duplication and reordering.
//!
//! A failure prints its seed; `UDPRELAY_SEED=N cargo test --test simulation`
//! replays it.

use std::time::Duration;

use udprelay::log::inspect;
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
        },
        messages: 100_000,
        payload: 16,
        interval: None,
        subscribers: 2,
        limit: Duration::from_secs(3600),
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
    });
    assert!(
        out.simulated > Duration::from_millis(200),
        "the cap holds: {:?}",
        out.simulated
    );
}

#[test]
fn large_messages_arrive_whole_through_loss() {
    check(Scenario {
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
    });
}

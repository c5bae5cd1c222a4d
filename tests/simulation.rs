//! The relay core and the reliable clients, driven together through the
//! seeded network simulator in simulated time: exactly-once, in-order
//! delivery across a matrix of loss rates, with duplication and reordering.
//!
//! A failure prints its seed; `UDPRELAY_SEED=N cargo test --test simulation`
//! replays it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use udprelay::client::{ReliablePublisher, ReliableSubscription, SubscriptionEvent};
use udprelay::config::RelayConfig;
use udprelay::log::inspect;
use udprelay::relay::{Now, Relay};
use udprelay::reliable::ArqConfig;
use udprelay::sim::{LinkConfig, Network, seed_from_env};
use udprelay::wire::StartPosition;

const RELAY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7070);

fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Outcome {
    received: Vec<Vec<u64>>,
    simulated: Duration,
    log: Vec<u64>,
}

/// Publishes `total` messages reliably through `link` to a relay with two
/// reliable subscribers, until both have everything or simulated time runs
/// out.
fn run(seed: u64, link: LinkConfig, total: u64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let wall = 1_800_000_000_000_000_000u64;
    let at = |t: Instant| Now {
        instant: t,
        unix_nanos: wall + (t - start).as_nanos() as u64,
    };
    let config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        lease: Duration::from_secs(3600),
        ..RelayConfig::default()
    };
    let mut relay = Relay::open(&config, at(start)).unwrap();
    let mut net = Network::new(seed, link);
    let arq = ArqConfig::default();
    let publisher_addr = client(1000);
    let mut publisher = ReliablePublisher::new(seed, "sim", arq, 1400).unwrap();
    let sub_addrs = [client(2001), client(2002)];
    let mut subs: Vec<ReliableSubscription> = (0..2)
        .map(|i| {
            ReliableSubscription::new(i + 1, "sim", StartPosition::Earliest, arq, start).unwrap()
        })
        .collect();
    let mut received = vec![Vec::new(), Vec::new()];
    let mut next_payload = 0u64;
    let mut now = start;
    let limit = start + Duration::from_secs(3600);
    loop {
        if received.iter().all(|r| r.len() as u64 >= total) && publisher.is_done() {
            break;
        }
        assert!(
            now < limit,
            "seed {seed}: stuck after an hour of simulated time: received {:?} of {total}, \
             publisher acknowledged {} {:?}",
            received.iter().map(Vec::len).collect::<Vec<_>>(),
            publisher.acknowledged(),
            publisher.stats()
        );
        // Deliver whatever arrived.
        while let Some(d) = net.poll_arrival(now) {
            if d.to == RELAY {
                relay.handle_datagram(at(now), d.from, &d.bytes);
            } else if d.to == publisher_addr {
                publisher.handle_datagram(now, &d.bytes, |code, reason| {
                    panic!("seed {seed}: relay refused ({}): {reason}", code.name())
                });
            } else if let Some(i) = sub_addrs.iter().position(|a| *a == d.to) {
                let got = &mut received[i];
                subs[i].handle_datagram(now, &d.bytes, |e| match e {
                    SubscriptionEvent::Message {
                        offset, payload, ..
                    } => {
                        let value = u64::from_le_bytes(payload.try_into().unwrap());
                        assert_eq!(value, offset, "seed {seed}: payload matches its offset");
                        got.push(offset);
                    }
                    SubscriptionEvent::Error { reason, .. } => {
                        panic!("seed {seed}: subscriber {i} got error: {reason}")
                    }
                    SubscriptionEvent::Subscribed { .. } => {}
                });
            }
        }
        // Let everyone act.
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            relay.handle_timeout(at(now));
        }
        while let Some(t) = relay.poll_transmit() {
            net.send(now, RELAY, t.destination, t.payload);
        }
        while publisher.wants_input() && next_payload < total {
            publisher.push(next_payload.to_le_bytes().to_vec()).unwrap();
            next_payload += 1;
        }
        if publisher.poll_timeout().is_some_and(|t| t <= now) {
            publisher.handle_timeout(now);
        }
        assert!(!publisher.is_failed(), "seed {seed}: publisher gave up");
        while let Some(d) = publisher.poll_transmit(now) {
            net.send(now, publisher_addr, RELAY, d);
        }
        for (sub, addr) in subs.iter_mut().zip(sub_addrs) {
            while let Some(d) = sub.poll_transmit(now) {
                net.send(now, addr, RELAY, d);
            }
        }
        // Jump to the next thing that happens.
        let next = [
            net.next_arrival(),
            relay.poll_timeout(),
            publisher.poll_timeout(),
            Some(subs[0].poll_timeout()),
            Some(subs[1].poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_millis(1));
        now = next.max(now + Duration::from_micros(10));
    }
    let mut log = Vec::new();
    drop(relay);
    inspect::dump(dir.path(), "sim", 0, u64::MAX, &mut |r| {
        log.push(u64::from_le_bytes(r.payload.try_into().unwrap()));
    })
    .unwrap();
    Outcome {
        received,
        simulated: now - start,
        log,
    }
}

fn check(loss: f64, total: u64, default_seed: u64) {
    let seed = seed_from_env(default_seed);
    let link = LinkConfig {
        loss,
        duplicate: 0.02,
        reorder: 0.05,
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(4),
        rate: None,
    };
    let out = run(seed, link, total);
    let want: Vec<u64> = (0..total).collect();
    for (i, got) in out.received.iter().enumerate() {
        assert!(
            got == &want,
            "seed {seed}, loss {loss}: subscriber {i} got {} messages, not 0..{total} once in order",
            got.len()
        );
    }
    assert!(
        out.log == want,
        "seed {seed}, loss {loss}: the log holds {} records, not each message once in order",
        out.log.len()
    );
    eprintln!(
        "loss {loss}: {total} messages in {:?} of simulated time (seed {seed})",
        out.simulated
    );
}

#[test]
fn no_loss() {
    check(0.0, 100_000, 1);
}

#[test]
fn one_percent_loss() {
    check(0.01, 100_000, 2);
}

#[test]
fn ten_percent_loss() {
    check(0.10, 100_000, 3);
}

#[test]
fn thirty_percent_loss() {
    check(0.30, 100_000, 4);
}

#[test]
fn bandwidth_cap_slows_but_loses_nothing() {
    let seed = seed_from_env(5);
    let link = LinkConfig {
        loss: 0.05,
        rate: Some(200_000), // 200 KB/s per sender
        ..LinkConfig::default()
    };
    let out = run(seed, link, 5_000);
    let want: Vec<u64> = (0..5_000).collect();
    assert!(out.received.iter().all(|r| r == &want), "seed {seed}");
    assert!(
        out.simulated > Duration::from_millis(200),
        "the cap holds: {:?}",
        out.simulated
    );
}

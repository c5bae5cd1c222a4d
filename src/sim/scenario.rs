//! A whole reliable path in simulated time: one reliable publisher, a relay
//! core and reliable subscribers, all exchanging datagrams through the seeded
//! [`Network`]. Shared by the simulation tests and the reliability benchmark.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{LinkConfig, Network, NetworkStats};
use crate::client::{ReliablePublisher, ReliableSubscription, SubscriptionEvent};
use crate::config::RelayConfig;
use crate::relay::{Now, Relay};
use crate::reliable::{ArqConfig, SenderStats};
use crate::wire::StartPosition;

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Decides every network fate.
    pub seed: u64,
    /// The network, both directions of every path.
    pub link: LinkConfig,
    /// Messages to publish.
    pub messages: u64,
    /// Bytes per message (at least 8: the message number leads).
    pub payload: usize,
    /// Time between messages; `None` publishes as fast as the windows allow.
    /// Publishing starts once every subscriber is subscribed.
    pub interval: Option<Duration>,
    /// Reliable subscribers, all from the earliest offset.
    pub subscribers: usize,
    /// Give up after this much simulated time.
    pub limit: Duration,
    /// The ARQ settings of the publisher and the subscribers.
    pub arq: ArqConfig,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Offsets each subscriber received, in the order it received them.
    pub received: Vec<Vec<u64>>,
    /// For the first subscriber, per message: from handing it to the
    /// publisher to receiving it in order.
    pub latencies: Vec<Duration>,
    /// Simulated time until every subscriber had every message.
    pub simulated: Duration,
    /// The publisher's ARQ counters.
    pub publisher: SenderStats,
    /// What the network carried, both directions of every path.
    pub network: NetworkStats,
}

const RELAY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7070);

fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs `scenario` with the relay's log in `data_dir`. Fails, naming the seed,
/// if the run did not complete in its simulated time limit, the payloads came
/// back wrong, or anyone gave up.
pub fn run(scenario: &Scenario, data_dir: &Path) -> Result<Outcome, String> {
    let seed = scenario.seed;
    let start = Instant::now();
    let wall = 1_800_000_000_000_000_000u64;
    let at = |t: Instant| Now {
        instant: t,
        unix_nanos: wall + (t - start).as_nanos() as u64,
    };
    let config = RelayConfig {
        data_dir: data_dir.to_path_buf(),
        lease: Duration::from_secs(3600),
        arq: scenario.arq,
        ..RelayConfig::default()
    };
    let mut relay = Relay::open(&config, at(start)).map_err(|e| e.to_string())?;
    let mut net = Network::new(seed, scenario.link);
    let arq = scenario.arq;
    let publisher_addr = client(1000);
    let mut publisher =
        ReliablePublisher::new(seed, "sim", arq, 1400).map_err(|e| e.to_string())?;
    let sub_addrs: Vec<SocketAddr> = (0..scenario.subscribers)
        .map(|i| client(2000 + i as u16))
        .collect();
    let mut subs = Vec::new();
    for i in 0..scenario.subscribers {
        let sub =
            ReliableSubscription::new(i as u32 + 1, "sim", StartPosition::Earliest, arq, start)
                .map_err(|e| e.to_string())?;
        subs.push(sub);
    }
    let total = scenario.messages;
    let mut received = vec![Vec::new(); scenario.subscribers];
    let mut pushed_at = Vec::with_capacity(total as usize);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut failure: Option<String> = None;
    let mut now = start;
    // When publishing started: once every subscriber was subscribed.
    let mut first_at: Option<Instant> = None;
    let limit = start + scenario.limit;
    loop {
        if let Some(f) = failure {
            return Err(format!("seed {seed}: {f}"));
        }
        if received.iter().all(|r| r.len() as u64 >= total) && publisher.is_done() {
            break;
        }
        if now >= limit {
            return Err(format!(
                "seed {seed}: not done after {:?} of simulated time: received {:?} of {total}",
                scenario.limit,
                received.iter().map(Vec::len).collect::<Vec<_>>()
            ));
        }
        while let Some(d) = net.poll_arrival(now) {
            if d.to == RELAY {
                relay.handle_datagram(at(now), d.from, &d.bytes);
            } else if d.to == publisher_addr {
                publisher.handle_datagram(now, &d.bytes, |code, reason| {
                    failure = Some(format!("relay refused ({}): {reason}", code.name()));
                });
            } else if let Some(i) = sub_addrs.iter().position(|a| *a == d.to) {
                let got = &mut received[i];
                let lat = &mut latencies;
                let pushed = &pushed_at;
                subs[i].handle_datagram(now, &d.bytes, |e| match e {
                    SubscriptionEvent::Message {
                        offset, payload, ..
                    } => {
                        let number = payload
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes);
                        if number != Some(offset) {
                            failure = Some(format!("offset {offset} carried the wrong payload"));
                        }
                        if i == 0
                            && let Some(&sent) = pushed.get(offset as usize)
                        {
                            lat.push(now - sent);
                        }
                        got.push(offset);
                    }
                    SubscriptionEvent::Error { reason, .. } => {
                        failure = Some(format!("subscriber {i} got error: {reason}"));
                    }
                    SubscriptionEvent::Subscribed { .. } => {}
                });
            }
        }
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            relay.handle_timeout(at(now));
        }
        while let Some(t) = relay.poll_transmit() {
            net.send(now, RELAY, t.destination, t.payload.to_vec());
        }
        if first_at.is_none() && subs.iter().all(|s| s.is_active()) {
            first_at = Some(now);
        }
        let next_message_at = match (scenario.interval, first_at) {
            (Some(every), Some(first)) => first + every * pushed_at.len() as u32,
            (None, Some(_)) => now,
            (_, None) => limit,
        };
        while (pushed_at.len() as u64) < total && publisher.wants_input() && next_message_at <= now
        {
            let mut payload = (pushed_at.len() as u64).to_le_bytes().to_vec();
            payload.resize(scenario.payload.max(8), 0xA5);
            publisher.push(payload).map_err(|e| e.to_string())?;
            pushed_at.push(now);
            if scenario.interval.is_some() {
                break;
            }
        }
        if publisher.poll_timeout().is_some_and(|t| t <= now) {
            publisher.handle_timeout(now);
        }
        if publisher.is_failed() {
            return Err(format!("seed {seed}: the publisher gave up"));
        }
        while let Some(d) = publisher.poll_transmit(now) {
            net.send(now, publisher_addr, RELAY, d);
        }
        for (sub, addr) in subs.iter_mut().zip(&sub_addrs) {
            while let Some(d) = sub.poll_transmit(now) {
                net.send(now, *addr, RELAY, d);
            }
        }
        let mut next = [
            net.next_arrival(),
            relay.poll_timeout(),
            publisher.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .chain(subs.iter().map(|s| s.poll_timeout()))
        .min()
        .unwrap_or(now + Duration::from_millis(1));
        if let (Some(every), Some(first)) = (scenario.interval, first_at)
            && (pushed_at.len() as u64) < total
        {
            next = next.min(first + every * pushed_at.len() as u32);
        }
        now = next.max(now + Duration::from_micros(10));
    }
    Ok(Outcome {
        received,
        latencies,
        simulated: now - start,
        publisher: publisher.stats(),
        network: net.stats(),
    })
}

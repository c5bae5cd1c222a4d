//! A seeded network simulator: datagrams between addresses, with loss,
//! duplication, reordering, delay with jitter and a bandwidth cap, all in
//! simulated time. Tests drive the sans-IO relay and clients through it, so
//! hours of bad network run in milliseconds and every run replays from its
//! seed.
//!
//! The seed comes from `UDPRELAY_SEED` when set; print it on failure.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rng::Rng;

pub mod scenario;

/// How one direction of the network treats datagrams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by an extra delay, so later
    /// ones overtake it.
    pub reorder: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter`.
    pub jitter: Duration,
    /// Bytes per second one sender can put on the wire; `None` for no cap.
    pub rate: Option<u64>,
    /// Datagrams from one address to another arrive in the order sent: one
    /// given a long delay holds back those behind it, like a queue in a
    /// router (and like KCP's test simulator). Jitter then never reorders.
    pub fifo: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: Duration::from_millis(5),
            jitter: Duration::ZERO,
            rate: None,
            fifo: false,
        }
    }
}

/// A datagram on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender.
    pub from: SocketAddr,
    /// Receiver.
    pub to: SocketAddr,
    /// Bytes.
    pub bytes: Vec<u8>,
}

/// What the network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Datagrams sent into the network.
    pub sent: u64,
    /// Bytes of those datagrams.
    pub bytes: u64,
    /// Lost on the way.
    pub lost: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Held back to arrive out of order.
    pub reordered: u64,
}

/// The seed to use: `UDPRELAY_SEED` if set, else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("UDPRELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The simulated network.
#[derive(Debug)]
pub struct Network {
    rng: Rng,
    config: LinkConfig,
    /// Datagrams in flight by arrival time; the counter keeps equal times in
    /// sending order.
    in_flight: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    /// Storage for `in_flight`, by slot.
    slots: Vec<Option<Datagram>>,
    /// Free entries of `slots`.
    free: Vec<usize>,
    counter: u64,
    /// When each sender's link is free again (bandwidth cap).
    link_free_at: HashMap<SocketAddr, Instant>,
    /// The latest arrival so far per path, under `fifo`.
    last_arrival: HashMap<(SocketAddr, SocketAddr), Instant>,
    stats: NetworkStats,
}

impl Network {
    /// A network treating every direction per `config`, deciding by `seed`.
    pub fn new(seed: u64, config: LinkConfig) -> Network {
        Network {
            rng: Rng::new(seed),
            config,
            in_flight: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            counter: 0,
            link_free_at: HashMap::new(),
            last_arrival: HashMap::new(),
            stats: NetworkStats::default(),
        }
    }

    /// What happened so far.
    pub fn stats(&self) -> NetworkStats {
        self.stats
    }

    /// Puts a datagram on the network at `now`.
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.stats.sent += 1;
        self.stats.bytes += bytes.len() as u64;
        let c = self.config;
        let mut depart = now;
        if let Some(rate) = c.rate {
            let free = self.link_free_at.entry(from).or_insert(now);
            depart = (*free).max(now);
            let wire_time = Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
            *free = depart + wire_time;
        }
        if self.rng.chance(c.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(c.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = c.delay + self.jitter();
            if self.rng.chance(c.reorder) {
                self.stats.reordered += 1;
                delay += c.delay + self.jitter();
            }
            let mut arrive = depart + delay;
            if c.fifo {
                let last = self.last_arrival.entry((from, to)).or_insert(arrive);
                arrive = arrive.max(*last);
                *last = arrive;
            }
            let datagram = Datagram {
                from,
                to,
                bytes: bytes.clone(),
            };
            self.schedule(arrive, datagram);
        }
    }

    fn jitter(&mut self) -> Duration {
        let j = self.config.jitter.as_nanos() as u64;
        Duration::from_nanos(self.rng.below(j))
    }

    fn schedule(&mut self, at: Instant, datagram: Datagram) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(datagram);
                i
            }
            None => {
                self.slots.push(Some(datagram));
                self.slots.len() - 1
            }
        };
        self.counter += 1;
        self.in_flight.push(Reverse((at, self.counter, slot)));
    }

    /// When the next datagram arrives, if any is in flight.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((at, ..))| *at)
    }

    /// The next datagram that has arrived by `now`.
    pub fn poll_arrival(&mut self, now: Instant) -> Option<Datagram> {
        let &Reverse((at, _, slot)) = self.in_flight.peek()?;
        if at > now {
            return None;
        }
        self.in_flight.pop();
        self.free.push(slot);
        self.slots[slot].take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn same_seed_same_fate() {
        let config = LinkConfig {
            loss: 0.3,
            duplicate: 0.1,
            reorder: 0.2,
            jitter: Duration::from_millis(3),
            ..LinkConfig::default()
        };
        let run = |seed| {
            let t = Instant::now();
            let mut n = Network::new(seed, config);
            for i in 0..1000u32 {
                n.send(t, addr(1), addr(2), i.to_le_bytes().to_vec());
            }
            let mut got = Vec::new();
            while let Some(d) = n.poll_arrival(t + Duration::from_secs(1)) {
                got.push(d.bytes);
            }
            (got, n.stats())
        };
        assert_eq!(run(5), run(5));
        let (got, stats) = run(5);
        assert_ne!(got, run(6).0);
        assert!(stats.lost > 200 && stats.lost < 400, "{stats:?}");
        assert_eq!(got.len() as u64, 1000 - stats.lost + stats.duplicated);
        let in_order = got.windows(2).all(|w| w[0] < w[1]);
        assert!(!in_order, "reordering happened");
    }

    #[test]
    fn fifo_paths_never_reorder_but_hold_back() {
        let config = LinkConfig {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(32),
            fifo: true,
            ..LinkConfig::default()
        };
        let t = Instant::now();
        let mut n = Network::new(9, config);
        for i in 0..200u32 {
            let at = t + Duration::from_millis(i as u64);
            n.send(at, addr(1), addr(2), i.to_le_bytes().to_vec());
            n.send(at, addr(3), addr(2), (1000 + i).to_le_bytes().to_vec());
        }
        let mut from_1 = Vec::new();
        let mut from_3 = Vec::new();
        let mut interleaved = false;
        let mut last_from = None;
        while let Some(d) = n.poll_arrival(t + Duration::from_secs(1)) {
            let v = u32::from_le_bytes(d.bytes[..4].try_into().unwrap());
            if last_from.is_some_and(|f| f != d.from) {
                interleaved = true;
            }
            last_from = Some(d.from);
            if d.from == addr(1) {
                from_1.push(v)
            } else {
                from_3.push(v)
            }
        }
        assert_eq!(from_1, (0..200).collect::<Vec<_>>());
        assert_eq!(from_3, (1000..1200).collect::<Vec<_>>());
        assert!(interleaved, "two paths are independent queues");
        // Without fifo, the same jitter reorders.
        let mut n = Network::new(
            9,
            LinkConfig {
                fifo: false,
                ..config
            },
        );
        for i in 0..200u32 {
            let at = t + Duration::from_millis(i as u64);
            n.send(at, addr(1), addr(2), i.to_le_bytes().to_vec());
        }
        let mut got = Vec::new();
        while let Some(d) = n.poll_arrival(t + Duration::from_secs(1)) {
            got.push(u32::from_le_bytes(d.bytes[..4].try_into().unwrap()));
        }
        assert!(got.windows(2).any(|w| w[0] > w[1]), "jitter reorders");
    }

    #[test]
    fn delay_and_rate_decide_arrival_times() {
        let t = Instant::now();
        let config = LinkConfig {
            delay: Duration::from_millis(10),
            rate: Some(1000), // 1000 bytes/s: 100 bytes take 100 ms
            ..LinkConfig::default()
        };
        let mut n = Network::new(1, config);
        n.send(t, addr(1), addr(2), vec![0; 100]);
        n.send(t, addr(1), addr(2), vec![1; 100]);
        assert_eq!(n.next_arrival(), Some(t + Duration::from_millis(10)));
        assert!(n.poll_arrival(t + Duration::from_millis(9)).is_none());
        assert_eq!(
            n.poll_arrival(t + Duration::from_millis(10)).unwrap().bytes[0],
            0
        );
        // The second waited for the first to leave the link.
        assert_eq!(n.next_arrival(), Some(t + Duration::from_millis(110)));
    }
}

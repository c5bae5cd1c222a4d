//! Routing in the client: which of several relays to use, by distance
//! (round trips of pings) and by load (the figure each relay reports in
//! its PONG).
//!
//! A [`Picker`] pings every relay a few times, keeps each one's lowest round
//! trip and its last reported load, and then picks by a [`Pick`] rule.
//! Relays that have not answered a while after the others finished are left
//! out; none answering is a timeout.
//!
//! A [`Routes`] table keeps what rounds of probing measured while a client
//! runs: each relay's round trip as an EWMA of its rounds' lowest, its last
//! load, and whether it answered the last round. A client probes again at
//! [`Routes::next_probe`], every [`REPROBE_EVERY`] with jitter (so that many
//! clients started together do not probe together), and, when its relay
//! stops answering, picks the next one from the table at once.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::{PingOutcome, Pinger};
use crate::rng::Rng;

/// Round trips measured per relay.
pub const PROBES: u32 = 3;

/// How long the others are waited for once one relay has answered all its
/// probes: a relay slower than this is not worth picking.
pub const STRAGGLER_WAIT: Duration = Duration::from_millis(500);

/// A relay's round trip counts as near the best one's up to this factor
/// (for [`Pick::TwoChoices`]).
pub const NEAR_FACTOR: f64 = 1.5;

/// How often a running client probes its relays again, on average; each
/// wait is drawn between half and one and a half times this.
pub const REPROBE_EVERY: Duration = Duration::from_secs(10);

/// The weight of a new round's round trip in a relay's EWMA.
pub const RTT_GAIN: f64 = 0.25;

/// How to pick among relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pick {
    /// The lowest round trip.
    Nearest,
    /// The lowest load (then the lowest round trip).
    LeastLoaded,
    /// The first in the list that answers.
    First,
    /// Two at random among those within 1.5× the best round trip, then the
    /// less loaded of them (the power of two choices).
    #[default]
    TwoChoices,
}

impl FromStr for Pick {
    type Err = String;

    fn from_str(s: &str) -> Result<Pick, String> {
        Ok(match s {
            "nearest" => Pick::Nearest,
            "least-loaded" => Pick::LeastLoaded,
            "first" => Pick::First,
            "two-choices" => Pick::TwoChoices,
            other => {
                return Err(format!(
                    "unknown pick {other:?}: nearest, least-loaded, first or two-choices"
                ));
            }
        })
    }
}

impl fmt::Display for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pick::Nearest => "nearest",
            Pick::LeastLoaded => "least-loaded",
            Pick::First => "first",
            Pick::TwoChoices => "two-choices",
        })
    }
}

/// What is known of one relay.
#[derive(Debug)]
pub struct Candidate {
    /// Its address.
    pub addr: SocketAddr,
    /// Lowest round trip measured, once it answered.
    pub rtt: Option<Duration>,
    /// Its last reported load, in thousandths of its event loop's time.
    pub load: Option<u32>,
    /// Probes answered.
    pub answered: u32,
    /// It stopped being asked: all probes answered, or timed out.
    pub done: bool,
    pinger: Pinger,
}

/// Probes several relays and picks one.
#[derive(Debug)]
pub struct Picker {
    pick: Pick,
    candidates: Vec<Candidate>,
    /// Once one relay has answered every probe: when the others stop
    /// being waited for.
    stragglers_until: Option<Instant>,
    rng: Rng,
}

impl Picker {
    /// Starts probing `relays` at `now`, each probe giving up after
    /// `reply_timeout`; `seed` draws the two choices.
    pub fn new(
        relays: &[SocketAddr],
        pick: Pick,
        now: Instant,
        reply_timeout: Duration,
        seed: u64,
    ) -> Picker {
        let mut rng = Rng::new(seed);
        let candidates = relays
            .iter()
            .map(|&addr| {
                let mut pinger = Pinger::new(rng.next_u64(), reply_timeout).ask_load();
                pinger.start(now);
                Candidate {
                    addr,
                    rtt: None,
                    load: None,
                    answered: 0,
                    done: false,
                    pinger,
                }
            })
            .collect();
        Picker {
            pick,
            candidates,
            stragglers_until: None,
            rng,
        }
    }

    /// What is known of each relay, in the order given.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The next ping due at `now`, and where to send it.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.candidates
            .iter_mut()
            .filter(|c| !c.done)
            .find_map(|c| Some((c.addr, c.pinger.poll_transmit(now)?)))
    }

    /// When there is something to do next, if probing is not over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pings = (self.candidates.iter())
            .filter(|c| !c.done)
            .filter_map(|c| c.pinger.poll_timeout());
        pings.chain(self.stragglers_until).min()
    }

    /// Ends what is due at `now`: probes past their reply timeout, and the
    /// wait for stragglers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let give_up = self.stragglers_until.is_some_and(|at| now >= at);
        for c in self.candidates.iter_mut().filter(|c| !c.done) {
            c.pinger.handle_timeout(now);
            if give_up || c.pinger.poll_outcome() == Some(PingOutcome::TimedOut) {
                c.done = true;
            }
        }
    }

    /// Reads a datagram that came from `from` at `now`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let Some(c) = self
            .candidates
            .iter_mut()
            .find(|c| c.addr == from && !c.done)
        else {
            return;
        };
        c.pinger.handle_datagram(now, datagram, |_, _| {});
        let Some(PingOutcome::Answered { rtt, load }) = c.pinger.poll_outcome() else {
            return;
        };
        // The lowest round trip: a late answer says more about a busy
        // machine at either end than about the path.
        c.rtt = Some(c.rtt.map_or(rtt, |r| r.min(rtt)));
        c.load = load.or(c.load);
        c.answered += 1;
        if c.answered >= PROBES {
            c.done = true;
            self.stragglers_until.get_or_insert(now + STRAGGLER_WAIT);
        } else {
            c.pinger.start(now);
        }
    }

    /// True once probing is over: every relay answered all its probes or
    /// is no longer waited for.
    pub fn is_done(&self) -> bool {
        self.candidates.iter().all(|c| c.done)
    }

    /// The relay picked (its index in the list), once probing is over;
    /// `None` if none answered.
    pub fn choice(&mut self) -> Option<usize> {
        let measured: Vec<(usize, Duration, Option<u32>)> = (self.candidates.iter().enumerate())
            .filter_map(|(i, c)| Some((i, c.rtt?, c.load)))
            .collect();
        choose(self.pick, &measured, &mut self.rng)
    }
}

/// The one of `measured` (index, round trip, load) that `pick` picks;
/// `None` if it is empty. `measured` is in the list's order.
fn choose(pick: Pick, measured: &[(usize, Duration, Option<u32>)], rng: &mut Rng) -> Option<usize> {
    let load = |m: &(usize, Duration, Option<u32>)| m.2.unwrap_or(u32::MAX);
    match pick {
        Pick::First => measured.first().map(|m| m.0),
        Pick::Nearest => measured.iter().min_by_key(|m| (m.1, m.0)).map(|m| m.0),
        Pick::LeastLoaded => measured.iter().min_by_key(|m| (load(m), m.1)).map(|m| m.0),
        Pick::TwoChoices => {
            let best = measured.iter().map(|m| m.1).min()?;
            let near: Vec<&(usize, Duration, Option<u32>)> = (measured.iter())
                .filter(|m| m.1.as_secs_f64() <= best.as_secs_f64() * NEAR_FACTOR)
                .collect();
            let a = near[rng.below(near.len() as u64) as usize];
            if near.len() == 1 {
                return Some(a.0);
            }
            let mut b = near[rng.below(near.len() as u64 - 1) as usize];
            if b.0 == a.0 {
                b = near[near.len() - 1];
            }
            Some(std::cmp::min_by_key(a, b, |m| (load(m), m.1)).0)
        }
    }
}

/// What one relay of a [`Routes`] table is known by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    /// Its address.
    pub addr: SocketAddr,
    /// Its round trip: an EWMA of its rounds' lowest, once it answered.
    pub rtt: Option<Duration>,
    /// Its last reported load, in thousandths.
    pub load: Option<u32>,
    /// It answered the last round it was probed in.
    pub up: bool,
}

/// What rounds of probing measured of a client's relays, while it runs.
#[derive(Debug)]
pub struct Routes {
    pick: Pick,
    routes: Vec<Route>,
    next_probe: Instant,
    rng: Rng,
}

impl Routes {
    /// A table of `relays`, none measured yet; the first round is due at
    /// `now`; `seed` draws the jitter and the two choices.
    pub fn new(relays: &[SocketAddr], pick: Pick, now: Instant, seed: u64) -> Routes {
        Routes {
            pick,
            routes: (relays.iter())
                .map(|&addr| Route {
                    addr,
                    rtt: None,
                    load: None,
                    up: false,
                })
                .collect(),
            next_probe: now,
            rng: Rng::new(seed),
        }
    }

    /// What is known of each relay, in the order given.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// When the next round of probing is due.
    pub fn next_probe(&self) -> Instant {
        self.next_probe
    }

    /// Takes what a finished round measured (`picker`, over the same
    /// relays) at `now`, and draws when the next is due.
    pub fn update(&mut self, picker: &Picker, now: Instant) {
        for (route, c) in self.routes.iter_mut().zip(picker.candidates()) {
            route.up = c.rtt.is_some();
            let Some(sample) = c.rtt else { continue };
            route.rtt = Some(match route.rtt {
                None => sample,
                Some(old) => old.mul_f64(1.0 - RTT_GAIN) + sample.mul_f64(RTT_GAIN),
            });
            route.load = c.load.or(route.load);
        }
        let jitter = 0.5 + self.rng.below(1001) as f64 / 1000.0;
        self.next_probe = now + REPROBE_EVERY.mul_f64(jitter);
    }

    /// The relay of `among` to use (when the one in use stopped answering,
    /// the others not given up on): the one [`Pick`] picks among those that
    /// answered their last round; `None` if none did.
    pub fn choice(&mut self, among: &[SocketAddr]) -> Option<SocketAddr> {
        let measured: Vec<(usize, Duration, Option<u32>)> = (self.routes.iter().enumerate())
            .filter(|(_, r)| r.up && among.contains(&r.addr))
            .filter_map(|(i, r)| Some((i, r.rtt?, r.load)))
            .collect();
        let i = choose(self.pick, &measured, &mut self.rng)?;
        Some(self.routes[i].addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Frame};

    const MS: Duration = Duration::from_millis(1);

    /// Probes three relays that answer after `rtts` (None: never) with
    /// `loads`, and returns the picker once done, with how long it took.
    fn probed(
        pick: Pick,
        rtts: [Option<u64>; 3],
        loads: [u32; 3],
        seed: u64,
    ) -> (Picker, Duration) {
        let relays: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("127.0.0.{i}:7070").parse().unwrap())
            .collect();
        let t = Instant::now();
        let mut p = Picker::new(&relays, pick, t, Duration::from_secs(2), seed);
        let mut now = t;
        // Pongs in flight: (arrival, from, datagram).
        let mut flying: Vec<(Instant, SocketAddr, Vec<u8>)> = Vec::new();
        for _ in 0..10_000 {
            if p.is_done() {
                return (p, now - t);
            }
            while let Some((to, ping)) = p.poll_transmit(now) {
                let i = relays.iter().position(|&r| r == to).unwrap();
                let Some(rtt) = rtts[i] else { continue };
                let nonce = match wire::decode_datagram(&ping)
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                {
                    Frame::Ping { nonce, load: true } => nonce,
                    other => panic!("{other:?}"),
                };
                let pong = Frame::Pong {
                    nonce,
                    load: Some(loads[i]),
                };
                flying.push((
                    now + MS * rtt as u32,
                    to,
                    wire::encode_datagram(&[pong]).unwrap(),
                ));
            }
            flying.sort_by_key(|f| f.0);
            let next = [p.poll_timeout(), flying.first().map(|f| f.0)]
                .into_iter()
                .flatten()
                .min()
                .expect("something to wait for");
            now = now.max(next);
            while flying.first().is_some_and(|f| f.0 <= now) {
                let (_, from, d) = flying.remove(0);
                p.handle_datagram(now, from, &d);
            }
            p.handle_timeout(now);
        }
        panic!("probing never ended");
    }

    #[test]
    fn nearest_is_the_lowest_round_trip_and_least_loaded_the_lowest_load() {
        let (mut p, _) = probed(
            Pick::Nearest,
            [Some(40), Some(1), Some(20)],
            [5, 900, 10],
            1,
        );
        assert_eq!(p.choice(), Some(1));
        assert_eq!(p.candidates()[0].answered, PROBES);
        let (mut p, _) = probed(
            Pick::LeastLoaded,
            [Some(40), Some(1), Some(20)],
            [5, 900, 10],
            1,
        );
        assert_eq!(p.choice(), Some(0));
        let (mut p, _) = probed(Pick::First, [None, Some(1), Some(20)], [5, 900, 10], 1);
        assert_eq!(p.choice(), Some(1), "the first that answers");
    }

    #[test]
    fn a_silent_relay_is_waited_for_only_a_while_after_the_others() {
        let (mut p, took) = probed(Pick::Nearest, [Some(2), None, Some(3)], [0, 0, 0], 1);
        assert_eq!(p.choice(), Some(0));
        assert!(p.candidates()[1].rtt.is_none());
        // Three round trips of 2 ms, then the wait for stragglers: not the
        // 2 s reply timeout.
        assert_eq!(took, 6 * MS + STRAGGLER_WAIT);
        let (mut none, took) = probed(Pick::TwoChoices, [None, None, None], [0, 0, 0], 1);
        assert_eq!(none.choice(), None);
        assert_eq!(took, Duration::from_secs(2), "the reply timeout");
    }

    #[test]
    fn two_choices_takes_the_less_loaded_of_two_near_ones_and_never_a_far_one() {
        // Relay 2 is far (over 1.5x the best): never picked. Of the two
        // near ones the less loaded wins whenever both are drawn; with two
        // near ones both are always drawn.
        for seed in 0..50 {
            let (mut p, _) = probed(
                Pick::TwoChoices,
                [Some(10), Some(12), Some(40)],
                [700, 100, 0],
                seed,
            );
            assert_eq!(p.choice(), Some(1), "seed {seed}");
        }
        // Three near ones: the most loaded is never picked (it loses to
        // whichever other is drawn), and both others are, over seeds.
        let mut picked = [0; 3];
        for seed in 0..200 {
            let (mut p, _) = probed(
                Pick::TwoChoices,
                [Some(10), Some(11), Some(12)],
                [500, 100, 900],
                seed,
            );
            picked[p.choice().unwrap()] += 1;
        }
        assert_eq!(picked[2], 0, "{picked:?}");
        assert!(picked[0] > 0 && picked[1] > picked[0], "{picked:?}");
    }

    #[test]
    fn a_table_of_rounds_keeps_an_ewma_and_picks_the_next_relay_at_once() {
        let relays: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("127.0.0.{i}:7070").parse().unwrap())
            .collect();
        let t = Instant::now();
        let mut routes = Routes::new(&relays, Pick::Nearest, t, 1);
        assert_eq!(routes.next_probe(), t, "the first round is due at once");
        assert_eq!(routes.choice(&relays), None, "nothing measured yet");
        let (round, _) = probed(Pick::Nearest, [Some(40), Some(1), Some(20)], [0; 3], 1);
        routes.update(&round, t);
        assert_eq!(routes.choice(&relays), Some(relays[1]));
        let others = [relays[0], relays[2]];
        assert_eq!(routes.choice(&others), Some(relays[2]), "the next nearest");
        // Relay 1 slows to 100 ms: its EWMA moves a quarter of the way.
        let (round, _) = probed(Pick::Nearest, [Some(40), Some(100), Some(20)], [0; 3], 1);
        routes.update(&round, t);
        let rtt = routes.routes()[1].rtt.unwrap();
        assert_eq!(rtt.as_micros(), 25_750, "0.75 x 1 ms + 0.25 x 100 ms");
        assert_eq!(routes.choice(&relays), Some(relays[2]));
        // A relay that did not answer its last round is not picked.
        let (round, _) = probed(Pick::Nearest, [Some(40), Some(1), None], [0; 3], 1);
        routes.update(&round, t);
        assert!(!routes.routes()[2].up);
        assert_eq!(routes.choice(&others), Some(relays[0]));
        // Rounds come every REPROBE_EVERY, give or take a half, not in step.
        let mut waits = std::collections::BTreeSet::new();
        for _ in 0..50 {
            routes.update(&round, t);
            let wait = routes.next_probe() - t;
            assert!(
                wait >= REPROBE_EVERY / 2 && wait <= REPROBE_EVERY * 3 / 2,
                "{wait:?}"
            );
            waits.insert(wait);
        }
        assert!(waits.len() > 10, "drawn, not fixed: {waits:?}");
    }

    #[test]
    fn picks_are_spelled_as_the_flag_takes_them() {
        for pick in [
            Pick::Nearest,
            Pick::LeastLoaded,
            Pick::First,
            Pick::TwoChoices,
        ] {
            assert_eq!(pick.to_string().parse::<Pick>(), Ok(pick));
        }
        assert!(
            "closest"
                .parse::<Pick>()
                .unwrap_err()
                .contains("two-choices")
        );
    }
}

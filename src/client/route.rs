//! Routing in the client: which of several relays to use, by distance
//! (round trips of pings) and by load (the figure each relay reports in
//! its PONG).
//!
//! A [`Picker`] pings every relay a few times, keeps each one's lowest round
//! trip and its last reported load, and then picks by a [`Pick`] rule. Relays that have not answered a while after
//! the others finished are left out; none answering is a timeout.

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
        let answered: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| self.candidates[i].rtt.is_some())
            .collect();
        let rtt = |i: usize| self.candidates[i].rtt.unwrap_or(Duration::MAX);
        let load = |i: usize| self.candidates[i].load.unwrap_or(u32::MAX);
        match self.pick {
            Pick::First => answered.first().copied(),
            Pick::Nearest => answered.iter().copied().min_by_key(|&i| (rtt(i), i)),
            Pick::LeastLoaded => answered.iter().copied().min_by_key(|&i| (load(i), rtt(i))),
            Pick::TwoChoices => {
                let best = answered.iter().map(|&i| rtt(i)).min()?;
                let near: Vec<usize> = (answered.iter().copied())
                    .filter(|&i| rtt(i).as_secs_f64() <= best.as_secs_f64() * NEAR_FACTOR)
                    .collect();
                let a = near[self.rng.below(near.len() as u64) as usize];
                if near.len() == 1 {
                    return Some(a);
                }
                let mut b = near[self.rng.below(near.len() as u64 - 1) as usize];
                if b == a {
                    b = near[near.len() - 1];
                }
                Some(std::cmp::min_by_key(a, b, |&i| (load(i), rtt(i))))
            }
        }
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

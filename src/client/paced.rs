//! Plain publishing paced by ping round trips.
//!
//! Plain publishing is not acknowledged, but the relay handles the datagrams
//! of one socket in order and answers a ping only after everything before it.
//! So a ping after every [`PING_EVERY`] datagrams, and no further datagram
//! past the next window until its pong is in, keeps at most two windows in
//! flight: the relay's socket buffer cannot overflow however fast the input
//! comes, and the last pong says the relay has handled everything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{ClientError, PingOutcome, Pinger, Publisher};
use crate::wire::ErrorCode;

/// Datagrams sent between flow-control pings.
pub const PING_EVERY: u64 = 64;

/// Where a paced publisher stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first ping is out: nothing is read or sent before someone answers.
    Probing,
    /// Publishing.
    Publishing,
    /// Input ended; the last ping, after everything, is out or due.
    Finishing {
        /// The last ping was sent: its pong ends the run.
        last_ping_sent: bool,
    },
    /// The relay answered the last ping: it has handled everything.
    Done,
    /// A ping went unanswered for the reply timeout.
    Failed,
}

/// A plain publisher paced by ping round trips: [`PacedPublisher::push`]
/// messages while [`PacedPublisher::wants_input`], send what
/// [`PacedPublisher::poll_transmit`] returns, feed the relay's datagrams to
/// [`PacedPublisher::handle_datagram`], call
/// [`PacedPublisher::handle_timeout`] at [`PacedPublisher::poll_timeout`],
/// and [`PacedPublisher::finish`] at the end of the input; it is done when
/// the relay has handled everything.
#[derive(Debug)]
pub struct PacedPublisher {
    publisher: Publisher,
    pinger: Pinger,
    /// Datagrams packed and not yet sent.
    queued: VecDeque<Vec<u8>>,
    /// Datagrams of messages sent.
    sent: u64,
    /// A window closed: its ping goes as soon as the previous ping's pong is
    /// in, and no datagram goes before it.
    ping_owed: bool,
    phase: Phase,
    /// The input ended ([`PacedPublisher::finish`]).
    finished: bool,
    /// How long a ping may go unanswered.
    reply_timeout: Duration,
}

impl PacedPublisher {
    /// A paced publisher to `channel` packing datagrams of up to
    /// `datagram_size` bytes, whose first ping (is anyone there?) is due at
    /// `now`; pings use nonces from `first_nonce` on and give up after
    /// `reply_timeout`.
    pub fn new(
        channel: &str,
        datagram_size: usize,
        first_nonce: u64,
        reply_timeout: Duration,
        now: Instant,
    ) -> Result<PacedPublisher, ClientError> {
        let mut pinger = Pinger::new(first_nonce, reply_timeout);
        pinger.start(now);
        Ok(PacedPublisher {
            publisher: Publisher::new(channel, datagram_size)?,
            pinger,
            queued: VecDeque::new(),
            sent: 0,
            ping_owed: false,
            phase: Phase::Probing,
            finished: false,
            reply_timeout,
        })
    }

    /// True while the relay has answered and little waits to be sent: read
    /// more input only then, so memory stays bounded.
    pub fn wants_input(&self) -> bool {
        self.phase == Phase::Publishing && (self.queued.len() as u64) < PING_EVERY
    }

    /// Adds a message (packed with others; see [`Publisher::push`]).
    pub fn push(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.queued.extend(self.publisher.push(payload)?);
        Ok(())
    }

    /// Closes the datagram being filled, so it goes now (the input paused).
    pub fn flush(&mut self) {
        self.queued.extend(self.publisher.flush());
    }

    /// The input ended: send the rest, then ping once more.
    pub fn finish(&mut self) {
        self.flush();
        self.finished = true;
        if matches!(self.phase, Phase::Probing | Phase::Publishing) {
            self.phase = Phase::Finishing {
                last_ping_sent: false,
            };
        }
    }

    /// True once the relay answered the ping after the last datagram: it has
    /// handled everything.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// How long a ping went unanswered, once one did: the relay is gone.
    pub fn failed_after(&self) -> Option<Duration> {
        (self.phase == Phase::Failed).then_some(self.reply_timeout)
    }

    /// Goes on at another relay after this one stopped answering, its
    /// pings giving up after `reply_timeout` from now on: asks it whether
    /// it is there, then sends what is queued. What the old relay was sent
    /// and may not have handled is lost: plain publishing is
    /// fire-and-forget.
    pub fn moved(&mut self, now: Instant, reply_timeout: Duration) {
        self.ping_owed = false;
        self.reply_timeout = reply_timeout;
        self.pinger.set_reply_timeout(reply_timeout);
        self.pinger.start(now);
        self.phase = Phase::Probing;
    }

    /// Datagrams of messages sent so far.
    pub fn datagrams_sent(&self) -> u64 {
        self.sent
    }

    /// The next datagram to send at `now`: a ping that is due, else a
    /// message datagram if the pacing allows, else the last ping.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(ping) = self.pinger.poll_transmit(now) {
            return Some(ping);
        }
        if self.ping_owed {
            if self.pinger.is_busy() {
                return None;
            }
            self.ping_owed = false;
            return self.start_ping(now);
        }
        match self.phase {
            Phase::Publishing | Phase::Finishing { .. } if !self.queued.is_empty() => {
                let datagram = self.queued.pop_front();
                self.sent += 1;
                self.ping_owed = self.sent.is_multiple_of(PING_EVERY);
                datagram
            }
            Phase::Finishing {
                last_ping_sent: false,
            } if !self.pinger.is_busy() => {
                self.phase = Phase::Finishing {
                    last_ping_sent: true,
                };
                self.start_ping(now)
            }
            _ => None,
        }
    }

    fn start_ping(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.pinger.start(now);
        self.pinger.poll_transmit(now)
    }

    /// When [`PacedPublisher::poll_transmit`] or
    /// [`PacedPublisher::handle_timeout`] next has work because of time
    /// (a ping retry or its reply deadline); `None` if only input or the
    /// relay can move it on.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pinger.poll_timeout()
    }

    /// Fires the ping's retry and reply deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pinger.handle_timeout(now);
        self.on_ping_outcome();
    }

    /// Reads a datagram from the relay: pongs move the pacing on, errors go
    /// to `on_error`. Returns false if the datagram did not decode.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        on_error: impl FnMut(ErrorCode, &str),
    ) -> bool {
        let decoded = self.pinger.handle_datagram(now, datagram, on_error);
        self.on_ping_outcome();
        decoded
    }

    fn on_ping_outcome(&mut self) {
        match self.pinger.poll_outcome() {
            Some(PingOutcome::TimedOut) => self.phase = Phase::Failed,
            Some(PingOutcome::Answered { .. }) => match self.phase {
                // After a move the input may have ended already.
                Phase::Probing if self.finished => {
                    self.phase = Phase::Finishing {
                        last_ping_sent: false,
                    }
                }
                Phase::Probing => self.phase = Phase::Publishing,
                Phase::Finishing {
                    last_ping_sent: true,
                } => self.phase = Phase::Done,
                _ => {}
            },
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Frame};

    const MS: Duration = Duration::from_millis(1);

    /// What one datagram is: a ping (its nonce) or publishes (how many).
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Ping(u64),
        Messages(usize),
    }

    fn read(datagram: &[u8]) -> Out {
        let frames: Vec<Frame<'_>> = wire::decode_datagram(datagram)
            .unwrap()
            .map(|f| f.unwrap())
            .collect();
        match frames[..] {
            [Frame::Ping { nonce, .. }] => Out::Ping(nonce),
            _ => {
                assert!(frames.iter().all(|f| matches!(f, Frame::Publish { .. })));
                Out::Messages(frames.len())
            }
        }
    }

    fn pong(nonce: u64) -> Vec<u8> {
        wire::encode_datagram(&[Frame::Pong { nonce, load: None }]).unwrap()
    }

    /// Everything sendable at `now`.
    fn drain(p: &mut PacedPublisher, now: Instant) -> Vec<Out> {
        std::iter::from_fn(|| p.poll_transmit(now).map(|d| read(&d))).collect()
    }

    /// A publisher whose relay answered the first ping at `t`.
    fn publishing(t: Instant) -> PacedPublisher {
        // 100-byte datagrams hold two 30-byte messages.
        let mut p = PacedPublisher::new("news", 100, 1, 2000 * MS, t).unwrap();
        assert!(!p.wants_input(), "no input before anyone answered");
        assert_eq!(drain(&mut p, t), [Out::Ping(1)]);
        p.handle_datagram(t + MS, &pong(1), |_, _| panic!("no error"));
        assert!(p.wants_input());
        p
    }

    #[test]
    fn a_window_waits_for_the_previous_pong_then_pings_again() {
        let t = Instant::now();
        let mut p = publishing(t);
        // Three windows of input: 64 datagrams of two messages each.
        for _ in 0..3 * 2 * PING_EVERY {
            p.push(&[b'x'; 30]).unwrap();
        }
        p.flush();
        let first = drain(&mut p, t + 2 * MS);
        assert_eq!(first.len() as u64, PING_EVERY + 1 + PING_EVERY);
        assert!(
            first[..PING_EVERY as usize]
                .iter()
                .all(|o| *o == Out::Messages(2))
        );
        assert_eq!(first[PING_EVERY as usize], Out::Ping(2), "after the window");
        // The second window closed, but its ping waits for pong 2, and no
        // datagram goes before it.
        assert_eq!(drain(&mut p, t + 3 * MS), []);
        p.handle_datagram(t + 4 * MS, &pong(2), |_, _| {});
        let second = drain(&mut p, t + 4 * MS);
        assert_eq!(second[0], Out::Ping(3));
        assert_eq!(second.len() as u64, 1 + PING_EVERY);
        assert_eq!(p.datagrams_sent(), 3 * PING_EVERY);
    }

    #[test]
    fn done_only_when_the_ping_after_everything_is_answered() {
        let t = Instant::now();
        let mut p = publishing(t);
        p.push(b"a").unwrap();
        assert_eq!(drain(&mut p, t), [], "packed, waiting for more");
        p.finish();
        assert!(!p.wants_input());
        assert_eq!(drain(&mut p, t + 2 * MS), [Out::Messages(1), Out::Ping(2)]);
        assert!(!p.is_done());
        p.handle_datagram(t + 3 * MS, &pong(1), |_, _| {});
        assert!(
            !p.is_done(),
            "an old pong says nothing of the last datagram"
        );
        p.handle_datagram(t + 3 * MS, &pong(2), |_, _| {});
        assert!(p.is_done());
        assert_eq!(drain(&mut p, t + 4 * MS), []);
    }

    #[test]
    fn a_lost_ping_is_retried_and_silence_fails_at_the_reply_timeout() {
        let t = Instant::now();
        let mut p = PacedPublisher::new("news", 1400, 10, 1000 * MS, t).unwrap();
        assert_eq!(drain(&mut p, t), [Out::Ping(10)]);
        assert_eq!(p.poll_timeout(), Some(t + 250 * MS));
        assert_eq!(drain(&mut p, t + 250 * MS), [Out::Ping(11)]);
        p.handle_timeout(t + 999 * MS);
        assert_eq!(p.failed_after(), None);
        p.handle_timeout(t + 1000 * MS);
        assert_eq!(p.failed_after(), Some(1000 * MS));
        assert!(!p.wants_input());
    }

    #[test]
    fn after_a_move_the_new_relay_is_asked_first_then_gets_what_was_left() {
        let t = Instant::now();
        let mut p = PacedPublisher::new("news", 100, 1, 1000 * MS, t).unwrap();
        assert_eq!(drain(&mut p, t), [Out::Ping(1)]);
        p.handle_datagram(t + MS, &pong(1), |_, _| {});
        // Three windows of input; two go before the relay dies unanswering.
        for _ in 0..3 * 2 * PING_EVERY {
            p.push(&[b'x'; 30]).unwrap();
        }
        p.finish();
        let sent = drain(&mut p, t + 2 * MS);
        assert_eq!(sent.len() as u64, 2 * PING_EVERY + 1);
        p.handle_timeout(t + 1002 * MS);
        assert!(p.failed_after().is_some());
        let mut now = t + 1003 * MS;
        p.moved(now, 1000 * MS);
        assert_eq!(p.failed_after(), None);
        // Nothing but the question until the new relay answers.
        assert_eq!(drain(&mut p, now), [Out::Ping(3)]);
        let mut pending = Some(3);
        let mut messages = 0;
        while let Some(nonce) = pending.take() {
            now += MS;
            p.handle_datagram(now, &pong(nonce), |_, _| {});
            for out in drain(&mut p, now) {
                match out {
                    Out::Ping(n) => pending = Some(n),
                    Out::Messages(_) => messages += 1,
                }
            }
        }
        assert_eq!(messages, PING_EVERY, "the window left, to the new relay");
        assert!(p.is_done(), "and the ping after everything answered");
    }

    #[test]
    fn relay_errors_are_reported() {
        let t = Instant::now();
        let mut p = publishing(t);
        let error = wire::encode_datagram(&[Frame::Error {
            code: ErrorCode::TOO_LARGE,
            reason: "big",
        }])
        .unwrap();
        let mut seen = Vec::new();
        p.handle_datagram(t, &error, |code, reason| {
            seen.push((code, reason.to_string()))
        });
        assert_eq!(seen, [(ErrorCode::TOO_LARGE, "big".to_string())]);
    }
}

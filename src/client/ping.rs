//! The ping client: one probe at a time, a round trip measured from the send
//! of the ping that was answered.
//!
//! A ping may be lost, so an unanswered probe sends a new ping every
//! [`PING_RETRY`], each with a nonce of its own and the time it was handed
//! out for sending: a pong then names the very send it answers, and a late
//! pong for the first ping cannot pass for a fast answer to the retry.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::each_frame;
use crate::wire::{self, ErrorCode, Frame};

/// How long a probe waits for a pong before sending a new ping.
pub const PING_RETRY: Duration = Duration::from_millis(250);

/// Sends of one probe remembered for matching pongs; a pong for an older
/// send is ignored (it is at least `PING_RETRY * 64` late).
const SENDS_REMEMBERED: usize = 64;

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    /// A pong came back: the time from the send of the ping it answers.
    Answered {
        /// Round-trip time of the answered ping.
        rtt: Duration,
        /// The relay's load, if asked for (see [`Pinger::ask_load`]).
        load: Option<u32>,
    },
    /// No pong within the reply timeout of the probe's first send.
    TimedOut,
}

/// One probe under way.
#[derive(Debug)]
struct Probe {
    /// When its first ping was due: the reply timeout runs from here.
    started: Instant,
    /// When the next ping (first or retry) is due.
    next_send: Instant,
    /// Nonces sent and when each was handed out for sending, oldest first.
    sent: VecDeque<(u64, Instant)>,
}

/// A ping client: [`Pinger::start`] a probe, send what
/// [`Pinger::poll_transmit`] returns, feed what comes back to
/// [`Pinger::handle_datagram`], call [`Pinger::handle_timeout`] at
/// [`Pinger::poll_timeout`], and read the result from
/// [`Pinger::poll_outcome`].
#[derive(Debug)]
pub struct Pinger {
    /// Nonce of the next ping; random per run so a relay's answers to an
    /// earlier run on the same port cannot match.
    next_nonce: u64,
    /// How long a probe waits in all before it has timed out.
    reply_timeout: Duration,
    /// The probe under way, if any.
    probe: Option<Probe>,
    /// How the last probe ended, until taken.
    outcome: Option<PingOutcome>,
    /// Pings ask for the relay's load.
    ask_load: bool,
}

impl Pinger {
    /// A ping client whose first nonce is `first_nonce` and whose probes give
    /// up after `reply_timeout` without a pong.
    pub fn new(first_nonce: u64, reply_timeout: Duration) -> Pinger {
        Pinger {
            next_nonce: first_nonce,
            reply_timeout,
            probe: None,
            outcome: None,
            ask_load: false,
        }
    }

    /// Makes every ping ask for the relay's load, reported with the round
    /// trip (the ping is 4 bytes larger, to leave the answer room).
    pub fn ask_load(mut self) -> Pinger {
        self.ask_load = true;
        self
    }

    /// From the next probe on, gives up after `reply_timeout` without a pong.
    pub fn set_reply_timeout(&mut self, reply_timeout: Duration) {
        self.reply_timeout = reply_timeout;
    }

    /// Begins a probe whose first ping is due at `now` (a probe under way is
    /// abandoned, its pongs ignored from then on).
    pub fn start(&mut self, now: Instant) {
        self.outcome = None;
        self.probe = Some(Probe {
            started: now,
            next_send: now,
            sent: VecDeque::new(),
        });
    }

    /// True while a probe waits for its pong.
    pub fn is_busy(&self) -> bool {
        self.probe.is_some()
    }

    /// The ping due at `now`, if any. `now` is taken as its send time, so
    /// call this right before sending.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let probe = self.probe.as_mut()?;
        if now < probe.next_send || now >= probe.started + self.reply_timeout {
            return None;
        }
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        if probe.sent.len() == SENDS_REMEMBERED {
            probe.sent.pop_front();
        }
        probe.sent.push_back((nonce, now));
        probe.next_send = now + PING_RETRY;
        wire::encode_datagram(&[Frame::Ping {
            nonce,
            load: self.ask_load,
        }])
        .ok()
    }

    /// When [`Pinger::poll_transmit`] or [`Pinger::handle_timeout`] next has
    /// work: the next retry or the probe's reply deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = self.probe.as_ref()?;
        Some(probe.next_send.min(probe.started + self.reply_timeout))
    }

    /// Ends the probe as timed out once its reply deadline has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(probe) = &self.probe
            && now >= probe.started + self.reply_timeout
        {
            self.probe = None;
            self.outcome = Some(PingOutcome::TimedOut);
        }
    }

    /// Reads a datagram from the relay: a pong for one of the probe's pings
    /// ends it, relay errors go to `on_error`. `now` is when the datagram
    /// arrived. Returns false if the datagram did not decode.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        mut on_error: impl FnMut(ErrorCode, &str),
    ) -> bool {
        each_frame(datagram, |frame| match frame {
            Frame::Pong { nonce, load } => self.on_pong(now, nonce, load),
            Frame::Error { code, reason } => on_error(code, reason),
            _ => {}
        })
    }

    fn on_pong(&mut self, now: Instant, nonce: u64, load: Option<u32>) {
        let Some(probe) = &self.probe else { return };
        let Some(&(_, sent_at)) = probe.sent.iter().find(|(n, _)| *n == nonce) else {
            return;
        };
        self.probe = None;
        self.outcome = Some(PingOutcome::Answered {
            rtt: now.saturating_duration_since(sent_at),
            load,
        });
    }

    /// How the last probe ended, once it has; taken, so each probe reports
    /// once.
    pub fn poll_outcome(&mut self) -> Option<PingOutcome> {
        self.outcome.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn nonce_of(datagram: &[u8]) -> u64 {
        match wire::decode_datagram(datagram).unwrap().next().unwrap() {
            Ok(Frame::Ping { nonce, .. }) => nonce,
            other => panic!("not a ping: {other:?}"),
        }
    }

    fn pong(nonce: u64) -> Vec<u8> {
        wire::encode_datagram(&[Frame::Pong { nonce, load: None }]).unwrap()
    }

    fn answer(p: &mut Pinger, at: Instant, nonce: u64) {
        assert!(p.handle_datagram(at, &pong(nonce), |_, _| panic!("no error expected")));
    }

    #[test]
    fn rtt_is_from_the_send_not_from_when_the_caller_looked() {
        let t = Instant::now();
        let mut p = Pinger::new(7, 2000 * MS);
        p.start(t);
        let nonce = nonce_of(&p.poll_transmit(t).unwrap());
        assert_eq!(nonce, 7);
        // The pong was already waiting when the caller came to read it.
        answer(&mut p, t + 3 * MS, nonce);
        assert_eq!(
            p.poll_outcome(),
            Some(PingOutcome::Answered {
                rtt: 3 * MS,
                load: None
            })
        );
        assert!(!p.is_busy());
        assert_eq!(p.poll_outcome(), None, "reported once");
    }

    #[test]
    fn pong_for_the_retried_ping_measures_from_the_retry() {
        let t = Instant::now();
        let mut p = Pinger::new(100, 2000 * MS);
        p.start(t);
        let first = nonce_of(&p.poll_transmit(t).unwrap());
        assert!(p.poll_transmit(t + PING_RETRY - MS).is_none());
        assert_eq!(p.poll_timeout(), Some(t + PING_RETRY));
        let retry = nonce_of(&p.poll_transmit(t + PING_RETRY).unwrap());
        assert_ne!(first, retry, "each send has its own nonce");
        answer(&mut p, t + PING_RETRY + 4 * MS, retry);
        assert_eq!(
            p.poll_outcome(),
            Some(PingOutcome::Answered {
                rtt: 4 * MS,
                load: None
            })
        );
    }

    #[test]
    fn late_pong_for_the_first_ping_measures_from_the_first() {
        let t = Instant::now();
        let mut p = Pinger::new(0, 2000 * MS);
        p.start(t);
        let first = nonce_of(&p.poll_transmit(t).unwrap());
        p.poll_transmit(t + PING_RETRY).unwrap();
        answer(&mut p, t + PING_RETRY + MS, first);
        assert_eq!(
            p.poll_outcome(),
            Some(PingOutcome::Answered {
                rtt: PING_RETRY + MS,
                load: None
            })
        );
    }

    #[test]
    fn probe_times_out_at_the_reply_timeout_not_before() {
        let t = Instant::now();
        let timeout = 600 * MS;
        let mut p = Pinger::new(0, timeout);
        p.start(t);
        let mut sends = 0;
        let mut now = t;
        while let Some(at) = p.poll_timeout() {
            now = at;
            p.handle_timeout(now);
            if p.poll_transmit(now).is_some() {
                sends += 1;
            }
        }
        assert_eq!(now, t + timeout);
        assert_eq!(sends, 3, "at 0, 250 and 500 ms");
        assert_eq!(p.poll_outcome(), Some(PingOutcome::TimedOut));
        // One millisecond earlier it was still waiting.
        let mut q = Pinger::new(0, timeout);
        q.start(t);
        q.handle_timeout(t + timeout - MS);
        assert!(q.is_busy());
        assert_eq!(q.poll_outcome(), None);
    }

    #[test]
    fn stray_pongs_are_ignored_and_errors_reported() {
        let t = Instant::now();
        let mut p = Pinger::new(50, 2000 * MS);
        answer(&mut p, t, 50);
        assert_eq!(p.poll_outcome(), None, "no probe under way");
        p.start(t);
        let nonce = nonce_of(&p.poll_transmit(t).unwrap());
        answer(&mut p, t + MS, nonce + 9);
        answer(&mut p, t + MS, 49);
        assert!(p.is_busy(), "a pong for a nonce never sent ends nothing");
        let error = wire::encode_datagram(&[Frame::Error {
            code: ErrorCode::MALFORMED,
            reason: "no",
        }])
        .unwrap();
        let mut errors = Vec::new();
        assert!(p.handle_datagram(t + MS, &error, |c, r| errors.push((c, r.to_string()))));
        assert_eq!(errors, [(ErrorCode::MALFORMED, "no".to_string())]);
        assert!(!p.handle_datagram(t + MS, b"garbage", |_, _| {}));
        assert!(p.is_busy());
    }
}

//! The congestion window and the loss-rate logic that moves it.
//!
//! [`Congestion`] owns the window (slow start, then a scalable increase),
//! the slow-start threshold, the recovery point that allows one reduction
//! per round, and the per-round loss accounting that tells a path's usual
//! random loss from a congestion spike. It counts messages, not sequence
//! numbers or bytes, and keeps no timers: the sender tells it what was
//! acknowledged, found lost or timed out, and passes in the sequence-space
//! positions and RTT figures it needs.

use std::time::Duration;

use super::config::ArqConfig;

/// Window growth per acknowledged message above ssthresh.
const CA_GROWTH: f64 = 0.05;
/// Message fates (acknowledged or lost) to learn the path's usual loss rate
/// from before a round's losses can count as a spike.
const LOSS_LEARNED: u64 = 500;
/// How many more times a round's count of lost messages varies than
/// independent losses would: a lost datagram of small messages loses them
/// together (up to about 16 of 64 bytes in 1400). Measured through udpchaos
/// at a steady 10 % datagram loss: single rounds lost 17 to 27 % of their
/// messages, which without this were taken for congestion, cutting the
/// window round after round (10,000 messages took 1 to 13 s).
const LOSS_CLUMP: f64 = 16.0;
/// Fraction of the window given up on congestion.
const CA_DECREASE: f64 = 0.3;

/// A congestion window in messages.
#[derive(Debug, Clone)]
pub struct Congestion {
    /// The window never shrinks below this.
    min_cwnd: u32,
    /// Nor grows above this.
    max_cwnd: u32,
    /// The window, fractional so that slow growth accumulates.
    cwnd: f64,
    /// Slow start below, congestion avoidance above.
    ssthresh: f64,
    /// No second window reduction until `snd_una` passes this.
    recovery_until: u64,
    /// The current round ends when `snd_una` reaches this.
    round_end: u64,
    /// Losses found in the current round.
    round_lost: u64,
    /// Messages newly acknowledged in the current round. A round's loss
    /// rate is its losses over its losses plus these: both count messages
    /// whose fate the round learned. Dividing by the round's transmissions
    /// instead made a round after a reduction (fewer sent, the previous
    /// round's losses still being found) look like a loss spike, which cut
    /// the window again, round after round.
    round_acked: u64,
    /// Smoothed loss rate per round: the path's usual random loss.
    loss_ewma: f64,
    /// Fates learned so far, acknowledged or lost: the loss rate is the
    /// plain ratio of `fates_lost` to these until `LOSS_LEARNED` fates are
    /// known, and only then can a round be a spike.
    fates: u64,
    /// Losses among `fates`.
    fates_lost: u64,
}

impl Congestion {
    /// The window of a stream whose first sequence number is `first`.
    pub fn new(config: &ArqConfig, first: u64) -> Congestion {
        Congestion {
            min_cwnd: config.min_cwnd,
            max_cwnd: config.max_cwnd,
            cwnd: f64::from(config.initial_cwnd),
            ssthresh: f64::from(config.max_cwnd),
            recovery_until: first,
            round_end: first,
            round_lost: 0,
            round_acked: 0,
            loss_ewma: 0.0,
            fates: 0,
            fates_lost: 0,
        }
    }

    /// The window, in messages, with its fraction.
    pub fn window(&self) -> f64 {
        self.cwnd
    }

    /// The window, in whole messages.
    pub fn cwnd(&self) -> u64 {
        self.cwnd as u64
    }

    /// True if a new message may join the `pipe` messages in the network.
    pub fn allows_new(&self, pipe: u64) -> bool {
        (pipe as f64) < self.cwnd
    }

    /// True if a retransmission may join the `pipe` messages in the
    /// network: one always may when the network is empty, whatever the
    /// window.
    pub fn allows_retransmit(&self, pipe: u64) -> bool {
        (pipe as f64) < self.cwnd.max(1.0)
    }

    /// Takes `acked` newly acknowledged messages: the window grows.
    pub fn on_acked(&mut self, acked: u64) {
        // Slow start below ssthresh (also right after an RTO); above it the
        // window grows by a twentieth per round trip (scalable, not Reno's
        // one message per round trip, which takes minutes to refill a large
        // window after a reduction).
        let step = if self.cwnd < self.ssthresh {
            1.0
        } else {
            CA_GROWTH
        };
        self.cwnd = (self.cwnd + step * acked as f64).min(f64::from(self.max_cwnd));
        self.round_acked += acked;
    }

    /// Takes one message found lost by later acknowledgements (not by a
    /// timer): it counts toward this round's loss rate.
    pub fn on_loss_detected(&mut self) {
        self.round_lost += 1;
    }

    /// After an acknowledgement was taken, with the stream at `snd_una` and
    /// `next_seq`: if that closed a round (one window of data
    /// acknowledged), decides whether the path is congested and if so
    /// reduces the window. Returns whether it did.
    ///
    /// Congested means queues building (the smoothed RTT well above the
    /// smallest seen), or a round whose loss rate clearly exceeds the path's
    /// usual rate, once that rate has been learned. Random loss at a steady
    /// rate (a lossy radio link) is not congestion: reacting to every loss,
    /// as Reno does, would hold the window at its floor on a path with 10 %
    /// random loss.
    pub fn on_ack_taken(
        &mut self,
        snd_una: u64,
        next_seq: u64,
        srtt: Option<Duration>,
        min_rtt: Option<Duration>,
    ) -> bool {
        if snd_una < self.round_end {
            return false;
        }
        let fates = self.round_acked + self.round_lost;
        let rate = self.round_lost as f64 / fates.max(1) as f64;
        let queueing = match (srtt, min_rtt) {
            (Some(srtt), Some(min)) => srtt > min.mul_f64(1.5) + Duration::from_millis(5),
            _ => false,
        };
        // More losses than the usual rate explains: three standard deviations
        // above the expected count, so a small window's bad luck is not
        // taken for congestion. Messages are lost in clumps (a datagram
        // holds many), so the count varies LOSS_CLUMP times more than
        // independent losses would.
        let expected = self.loss_ewma * fates as f64;
        let loss_spike = self.fates >= LOSS_LEARNED
            && self.round_lost as f64 > expected + 3.0 * (expected * LOSS_CLUMP).sqrt() + 2.0
            && rate > self.loss_ewma * 1.5 + 0.02;
        let reduced = (queueing || loss_spike) && snd_una >= self.recovery_until;
        if reduced {
            self.ssthresh = self.reduced_window();
            self.cwnd = self.ssthresh;
            self.recovery_until = next_seq;
        }
        self.fates += fates;
        self.fates_lost += self.round_lost;
        self.loss_ewma = if self.fates < LOSS_LEARNED {
            self.fates_lost as f64 / self.fates.max(1) as f64
        } else if fates > 0 {
            self.loss_ewma * 0.875 + rate * 0.125
        } else {
            self.loss_ewma
        };
        self.round_end = next_seq.max(snd_una + 1);
        self.round_lost = 0;
        self.round_acked = 0;
        reduced
    }

    /// Takes an RTO expiry, the `timeouts_in_a_row`-th, with the stream at
    /// `snd_una` and `next_seq`. Returns whether the window was reduced.
    ///
    /// A timeout on a lossy path is often just a lost tail, not a dead or
    /// congested one: it gives up a congestion step, once per round, and
    /// leaves the doubling RTO to slow a path that is gone. Slow start ends
    /// only on a second timeout in a row: one early timeout (the first
    /// acknowledgements lost, before any round trip was measured) would
    /// otherwise leave the window to grow a twentieth per round trip from a
    /// few dozen messages, which took seconds in simulation (3.2 s against
    /// 1.0 s for 10,000 messages at 10 % loss).
    pub fn on_timeout(&mut self, snd_una: u64, next_seq: u64, timeouts_in_a_row: u32) -> bool {
        if snd_una < self.recovery_until {
            return false;
        }
        let stepped = self.reduced_window();
        if timeouts_in_a_row > 1 {
            self.ssthresh = stepped;
        }
        self.cwnd = stepped;
        self.recovery_until = next_seq;
        true
    }

    /// The window after one congestion step down.
    fn reduced_window(&self) -> f64 {
        (self.cwnd * (1.0 - CA_DECREASE)).max(f64::from(self.min_cwnd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn window(initial: u32) -> Congestion {
        let config = ArqConfig {
            initial_cwnd: initial,
            min_cwnd: 16,
            max_cwnd: 1000,
            ..ArqConfig::default()
        };
        Congestion::new(&config, 0)
    }

    #[test]
    fn slow_start_adds_one_per_acknowledged_message_up_to_the_maximum() {
        let mut cc = window(32);
        cc.on_acked(10);
        assert_eq!(cc.cwnd(), 42);
        cc.on_acked(5000);
        assert_eq!(cc.cwnd(), 1000);
    }

    #[test]
    fn above_ssthresh_the_window_grows_a_twentieth_per_message() {
        let mut cc = window(100);
        // The second timeout in a row ends slow start: ssthresh = cwnd = 49.
        assert!(cc.on_timeout(0, 10, 1));
        assert_eq!(cc.cwnd(), 70);
        assert!(cc.on_timeout(10, 20, 2));
        assert_eq!(cc.cwnd(), 49);
        cc.on_acked(20);
        assert_eq!(cc.cwnd(), 50, "49 + 20 * 0.05");
    }

    #[test]
    fn one_timeout_steps_down_but_stays_in_slow_start() {
        let mut cc = window(100);
        assert!(cc.on_timeout(0, 10, 1));
        assert_eq!(cc.cwnd(), 70);
        cc.on_acked(10);
        assert_eq!(cc.cwnd(), 80, "still one per message");
    }

    #[test]
    fn one_reduction_per_round_and_never_below_the_floor() {
        let mut cc = window(20);
        assert!(cc.on_timeout(0, 50, 1));
        assert_eq!(cc.cwnd(), 16, "20 * 0.7 = 14, raised to the floor");
        assert!(!cc.on_timeout(49, 60, 2), "snd_una 49 is before 50");
        assert!(cc.on_timeout(50, 60, 3));
        assert_eq!(cc.cwnd(), 16);
    }

    #[test]
    fn a_round_ends_when_snd_una_reaches_its_end() {
        let mut cc = window(100);
        // The first round ends at once (round_end = first); the next at 100.
        assert!(!cc.on_ack_taken(0, 100, None, None));
        // Queueing would reduce, but the round is not over.
        assert!(!cc.on_ack_taken(99, 100, Some(100 * MS), Some(10 * MS)));
        assert!(cc.on_ack_taken(100, 150, Some(100 * MS), Some(10 * MS)));
        assert_eq!(cc.cwnd(), 70);
    }

    #[test]
    fn queueing_is_congestion_but_a_steady_rtt_is_not() {
        let mut cc = window(100);
        cc.on_ack_taken(0, 100, None, None);
        // 20 ms against 10 ms: 1.5 * 10 + 5 = 20 is the limit, not above it.
        assert!(!cc.on_ack_taken(100, 200, Some(20 * MS), Some(10 * MS)));
        assert!(cc.on_ack_taken(200, 300, Some(21 * MS), Some(10 * MS)));
    }

    /// A round of `acked` acknowledged and `lost` lost messages ending at
    /// `end`; returns whether the window was cut.
    fn round(cc: &mut Congestion, end: u64, acked: u64, lost: u64) -> bool {
        cc.on_acked(acked);
        for _ in 0..lost {
            cc.on_loss_detected();
        }
        cc.on_ack_taken(end, end + acked + lost, None, None)
    }

    #[test]
    fn a_loss_spike_counts_only_once_the_usual_rate_is_learned() {
        let mut cc = window(1000);
        cc.on_ack_taken(0, 200, None, None);
        // 30 % loss before 500 fates are known: learning, not congestion.
        assert!(!round(&mut cc, 200, 140, 60));
        let mut end = 400;
        // Thirty rounds of 2 %: the usual rate comes down to about 2 %.
        for _ in 0..30 {
            assert!(!round(&mut cc, end, 196, 4));
            end += 200;
        }
        let before = cc.window();
        assert!(round(&mut cc, end, 140, 60), "30 % now is a spike");
        assert!((cc.window() - before * 0.7).abs() < 1e-9, "a 30 % cut");
    }

    #[test]
    fn steady_random_loss_never_cuts_the_window() {
        let mut cc = window(200);
        cc.on_ack_taken(0, 200, None, None);
        let mut end = 200;
        for _ in 0..40 {
            assert!(!round(&mut cc, end, 180, 20), "10 % every round");
            end += 200;
        }
    }
}

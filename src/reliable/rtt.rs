//! The round-trip estimate and the timeouts derived from it.
//!
//! [`RttEstimator`] owns the smoothed RTT and its variance (RFC 6298 section
//! 2, alpha 1/8, beta 1/4, K 4, a 1 ms clock), the smallest RTT seen, the
//! retransmission timeout with its exponential backoff, and the tail-loss
//! probe timeout. It applies Karn's rule to the samples it is given. It knows
//! nothing of sequence numbers, windows or timers: the sender decides which
//! acknowledgement gives a sample and when a timeout fired, and arms its own
//! timers from what this says.
//!
//! Deviation from RFC 6298, on purpose: the minimum RTO is 20 ms and the
//! initial one 200 ms (not 1 s), as KCP, QUIC and Linux do for links where a
//! second is an eternity. Both are settings.

use std::time::Duration;

use super::config::ArqConfig;

/// Shortest tail-loss probe timeout once the RTT is known.
const MIN_PTO: Duration = Duration::from_millis(10);
/// Backoff doublings beyond this are not counted (the RTO is long capped by
/// then, and the shift must not overflow).
const MAX_BACKOFF_SHIFT: u32 = 16;

/// RFC 6298 round-trip estimation with backoff.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    /// RTO before any sample.
    initial_rto: Duration,
    /// Lower bound of the RTO.
    min_rto: Duration,
    /// Upper bound of the RTO, backoff included.
    max_rto: Duration,
    /// How long the peer may hold an acknowledgement back, which the
    /// variance alone does not cover on a steady path.
    delayed_ack: Duration,
    /// Smoothed RTT, once a sample was taken.
    srtt: Option<Duration>,
    /// RTT variation.
    rttvar: Duration,
    /// The RTO without backoff.
    rto: Duration,
    /// Consecutive RTO expiries without progress: each doubles the RTO.
    backoff: u32,
    /// Smallest RTT seen: the path without queues.
    min_rtt: Option<Duration>,
}

impl RttEstimator {
    /// An estimator with no sample yet: the RTO is `config.initial_rto`.
    pub fn new(config: &ArqConfig) -> RttEstimator {
        RttEstimator {
            initial_rto: config.initial_rto,
            min_rto: config.min_rto,
            max_rto: config.max_rto,
            delayed_ack: config.delayed_ack,
            srtt: None,
            rttvar: Duration::ZERO,
            rto: config.initial_rto,
            backoff: 0,
            min_rtt: None,
        }
    }

    /// Smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Smallest round-trip time measured.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The current RTO, backoff included.
    pub fn rto(&self) -> Duration {
        (self.rto * 2u32.saturating_pow(self.backoff.min(MAX_BACKOFF_SHIFT))).min(self.max_rto)
    }

    /// The tail-loss probe timeout: as QUIC's probe timeout, less the
    /// variance margin of the RTO, since a probe costs one message and a
    /// late one costs a round trip.
    pub fn pto(&self) -> Duration {
        match self.srtt {
            Some(srtt) => (srtt + self.rttvar * 2 + self.delayed_ack).max(MIN_PTO),
            None => self.initial_rto / 2,
        }
    }

    /// Takes the round trip `rtt` of a newly acknowledged message. An
    /// `ambiguous` one (sent more than once, or ever declared lost, so the
    /// acknowledgement may answer another copy or have waited behind a gap)
    /// is skipped: Karn's rule. Returns whether the sample was used.
    pub fn sample(&mut self, rtt: Duration, ambiguous: bool) -> bool {
        if ambiguous {
            return false;
        }
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        let srtt = match self.srtt {
            None => {
                self.rttvar = rtt / 2;
                rtt
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                (srtt * 7 + rtt) / 8
            }
        };
        self.srtt = Some(srtt);
        // As QUIC's PTO: the peer's delayed-ack time on top of the variance.
        let rto = srtt + (self.rttvar * 4).max(Duration::from_millis(1)) + self.delayed_ack;
        self.rto = rto.clamp(self.min_rto, self.max_rto);
        true
    }

    /// Records an RTO expiry: the RTO doubles. Returns how many expired in
    /// a row.
    pub fn on_timeout(&mut self) -> u32 {
        self.backoff += 1;
        self.backoff
    }

    /// Records that the peer acknowledged something new: the backoff ends.
    pub fn on_progress(&mut self) {
        self.backoff = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn estimator() -> RttEstimator {
        RttEstimator::new(&ArqConfig::default())
    }

    #[test]
    fn before_any_sample_the_rto_is_the_initial_one_and_the_probe_half_of_it() {
        let rtt = estimator();
        assert_eq!(rtt.srtt(), None);
        assert_eq!(rtt.rto(), 200 * MS);
        assert_eq!(rtt.pto(), 100 * MS);
    }

    #[test]
    fn samples_follow_rfc_6298() {
        let mut rtt = estimator();
        assert!(rtt.sample(40 * MS, false));
        // SRTT = R, RTTVAR = R/2; RTO = SRTT + 4 RTTVAR + 5 ms delayed ack.
        assert_eq!(rtt.srtt(), Some(40 * MS));
        assert_eq!(rtt.rto(), 125 * MS);
        // PTO = SRTT + 2 RTTVAR + delayed ack.
        assert_eq!(rtt.pto(), 85 * MS);
        rtt.sample(80 * MS, false);
        // RTTVAR = 3/4 * 20 + 1/4 * 40 = 25; SRTT = 7/8 * 40 + 1/8 * 80 = 45.
        assert_eq!(rtt.srtt(), Some(45 * MS));
        assert_eq!(rtt.rto(), 150 * MS);
        assert_eq!(rtt.min_rtt(), Some(40 * MS));
    }

    #[test]
    fn karn_skips_an_ambiguous_sample() {
        let mut rtt = estimator();
        rtt.sample(40 * MS, false);
        assert!(!rtt.sample(900 * MS, true));
        assert_eq!(rtt.srtt(), Some(40 * MS));
        assert_eq!(rtt.rto(), 125 * MS);
        assert_eq!(rtt.min_rtt(), Some(40 * MS));
    }

    #[test]
    fn the_rto_is_clamped_to_its_bounds() {
        let mut rtt = estimator();
        // 1 ms round trips: 1 + max(4 * 0.5, 1) + 5 = 8 ms, below the 20 ms floor.
        rtt.sample(MS, false);
        assert_eq!(rtt.rto(), 20 * MS);
        let mut rtt = estimator();
        rtt.sample(Duration::from_secs(5), false);
        assert_eq!(rtt.rto(), Duration::from_secs(2));
    }

    #[test]
    fn the_probe_timeout_has_a_floor() {
        let config = ArqConfig {
            delayed_ack: Duration::ZERO,
            ..ArqConfig::default()
        };
        let mut rtt = RttEstimator::new(&config);
        rtt.sample(2 * MS, false);
        // 2 + 2 * 1 = 4 ms, raised to 10 ms.
        assert_eq!(rtt.pto(), 10 * MS);
    }

    #[test]
    fn each_timeout_doubles_the_rto_until_the_cap_and_progress_ends_it() {
        let mut rtt = estimator();
        assert_eq!(rtt.on_timeout(), 1);
        assert_eq!(rtt.rto(), 400 * MS);
        assert_eq!(rtt.on_timeout(), 2);
        assert_eq!(rtt.rto(), 800 * MS);
        rtt.on_timeout();
        assert_eq!(rtt.rto(), 1600 * MS);
        rtt.on_timeout();
        assert_eq!(rtt.rto(), 2000 * MS, "max_rto caps the backoff");
        for _ in 0..100 {
            rtt.on_timeout();
        }
        assert_eq!(rtt.rto(), 2000 * MS, "no overflow however many");
        rtt.on_progress();
        assert_eq!(rtt.rto(), 200 * MS);
    }
}

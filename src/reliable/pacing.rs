//! The pacer: spreads a window of new messages over a round trip.
//!
//! [`Pacer`] owns the pacing schedule, the time the next new message may
//! go. It knows nothing of windows, sequence numbers or timers: the sender
//! passes in the RTT and the window at each transmission and arms its pacing
//! timer at the time this returns.

use std::time::{Duration, Instant};

/// How far ahead of its pacing schedule the sender may run, so that
/// messages sent close together still share datagrams.
pub const PACING_BURST: Duration = Duration::from_millis(1);
/// The pacing rate over the window's rate: above 1, so the window, not the
/// pacer, is what limits.
const PACING_GAIN: f64 = 1.25;

/// A pacing schedule.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    /// When the next message may go by the pacing rate, once a rate is
    /// known; up to [`PACING_BURST`] ahead of now is allowed.
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer that lets the first message go at once.
    pub fn new() -> Pacer {
        Pacer::default()
    }

    /// True if the schedule lets a message go at `now`.
    pub fn allows(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| t <= now + PACING_BURST)
    }

    /// Records a transmission at `now`, with the path's smoothed `srtt` and
    /// a `window` of messages per round trip. Returns when the pacing timer
    /// must fire for the next one to go, or None if it may go at once.
    pub fn on_transmit(&mut self, now: Instant, srtt: Duration, window: f64) -> Option<Instant> {
        let gap = srtt.div_f64(window.max(1.0) * PACING_GAIN);
        let next = self.next.map_or(now, |t| t.max(now)) + gap;
        self.next = Some(next);
        (next > now + PACING_BURST).then(|| next - PACING_BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_new_pacer_allows_at_once() {
        let now = Instant::now();
        assert!(Pacer::new().allows(now));
    }

    #[test]
    fn messages_go_a_burst_ahead_then_wait_for_the_schedule() {
        let t = Instant::now();
        let mut pacer = Pacer::new();
        // 10 messages per 50 ms round trip at 1.25 times: one per 4 ms.
        assert_eq!(pacer.on_transmit(t, 50 * MS, 10.0), Some(t + 3 * MS));
        assert!(!pacer.allows(t + 3 * MS - Duration::from_micros(1)));
        assert!(pacer.allows(t + 3 * MS), "1 ms of burst before t + 4 ms");
        // Sent at 3 ms: the next is due at 8 ms, from the schedule, not now.
        assert_eq!(
            pacer.on_transmit(t + 3 * MS, 50 * MS, 10.0),
            Some(t + 7 * MS)
        );
    }

    #[test]
    fn a_short_gap_needs_no_timer() {
        let t = Instant::now();
        let mut pacer = Pacer::new();
        // 1000 per 10 ms at 1.25: 8 us apart, well within the burst.
        assert_eq!(pacer.on_transmit(t, 10 * MS, 1000.0), None);
        assert!(pacer.allows(t));
    }

    #[test]
    fn an_idle_pacer_restarts_from_now() {
        let t = Instant::now();
        let mut pacer = Pacer::new();
        pacer.on_transmit(t, 50 * MS, 10.0);
        // A second later the schedule is long past: the next gap counts from then.
        let later = t + Duration::from_secs(1);
        assert_eq!(
            pacer.on_transmit(later, 50 * MS, 10.0),
            Some(later + 3 * MS)
        );
    }

    #[test]
    fn a_window_below_one_paces_as_one() {
        let t = Instant::now();
        let mut pacer = Pacer::new();
        assert_eq!(pacer.on_transmit(t, 50 * MS, 0.5), Some(t + 39 * MS));
    }
}

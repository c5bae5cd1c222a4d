//! The receive side of a reliable stream.
//!
//! [`Receiver`] owns what arrived: the cumulative point, the items that came
//! early (held until the gap before them fills), the in-order items the
//! application has not taken, the flow window they use up, and when to
//! acknowledge (at once on a gap, a duplicate or a reopened window,
//! otherwise after two messages or the delayed-ack time). It knows nothing
//! of the sender's state and sends nothing itself: it hands out [`Ack`]s.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::config::{ArqConfig, MAX_ACK_RANGES};
use crate::timer::{TimerName, TimerTable};

/// The receiver's one timer, in a table like every timer of the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// In-order data waits at most this long for its acknowledgement.
    DelayedAck,
}

impl TimerName<1> for Timer {
    const ALL: [Timer; 1] = [Timer::DelayedAck];
    fn index(self) -> usize {
        self as usize
    }
}

/// What the receiver made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// New: it is (or will be, once the gap before it fills) delivered.
    New,
    /// Seen before: dropped.
    Duplicate,
    /// Beyond the advertised window: dropped (the sender broke the window).
    OutOfWindow,
}

/// An acknowledgement to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Every sequence number below this was received.
    pub cumulative: u64,
    /// Received ranges `[start, end)` above `cumulative`, lowest first.
    pub ranges: Vec<(u64, u64)>,
    /// How many more messages past `cumulative` the receiver will take.
    pub window: u32,
}

/// What the receiver counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// New messages.
    pub received: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Messages that arrived before an earlier one.
    pub out_of_order: u64,
    /// Messages dropped for being past the window.
    pub out_of_window: u64,
}

/// The receive side of a reliable stream, holding out-of-order items until
/// the gap before them fills.
#[derive(Debug)]
pub struct Receiver<T> {
    config: ArqConfig,
    /// Next sequence number expected in order.
    cumulative: u64,
    /// Arrived early, waiting for the gap to fill.
    early: BTreeMap<u64, T>,
    /// In order, not yet taken by the application.
    ready: VecDeque<(u64, T)>,
    /// In-order messages since the last acknowledgement.
    unacked: u32,
    /// Acknowledge at the next chance.
    ack_now: bool,
    /// The delayed-ack timer.
    timers: TimerTable<Timer, 1>,
    stats: ReceiverStats,
}

impl<T> Receiver<T> {
    /// A receiver expecting `first` next.
    pub fn new(config: ArqConfig, first: u64) -> Receiver<T> {
        Receiver {
            config,
            cumulative: first,
            early: BTreeMap::new(),
            ready: VecDeque::new(),
            unacked: 0,
            ack_now: false,
            timers: TimerTable::new(),
            stats: ReceiverStats::default(),
        }
    }

    /// Next sequence number expected in order.
    pub fn cumulative(&self) -> u64 {
        self.cumulative
    }

    /// What was counted.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    fn free_window(&self) -> u32 {
        let held = self.early.len() + self.ready.len();
        (self.config.receive_window as usize).saturating_sub(held) as u32
    }

    /// True if [`Receiver::on_data`] would keep message `seq`: it is new
    /// and inside the window (so a caller can refuse to spend anything on
    /// a duplicate or a message past the window).
    pub fn would_take(&self, seq: u64) -> bool {
        let room = (self.config.receive_window as usize).saturating_sub(self.ready.len());
        seq >= self.cumulative
            && !self.early.contains_key(&seq)
            && seq < self.cumulative.saturating_add(room as u64)
    }

    /// Takes message `seq`.
    pub fn on_data(&mut self, seq: u64, item: T, now: Instant) -> Arrival {
        if seq < self.cumulative || self.early.contains_key(&seq) {
            self.stats.duplicates += 1;
            // The sender missed an acknowledgement: tell it again.
            self.ack_now = true;
            return Arrival::Duplicate;
        }
        // Items the application has not taken yet use the window up.
        let room = (self.config.receive_window as usize).saturating_sub(self.ready.len());
        if seq >= self.cumulative.saturating_add(room as u64) {
            self.stats.out_of_window += 1;
            self.ack_now = true;
            return Arrival::OutOfWindow;
        }
        self.stats.received += 1;
        if seq > self.cumulative {
            self.stats.out_of_order += 1;
            self.early.insert(seq, item);
            self.ack_now = true; // a gap: the sender should hear of it now
            return Arrival::New;
        }
        self.ready.push_back((seq, item));
        self.cumulative += 1;
        let filled_gap = !self.early.is_empty();
        while let Some(item) = self.early.remove(&self.cumulative) {
            self.ready.push_back((self.cumulative, item));
            self.cumulative += 1;
        }
        self.unacked += 1;
        if filled_gap || self.unacked >= 2 {
            self.ack_now = true;
        } else {
            if self.timers.get(Timer::DelayedAck).is_none() {
                self.timers
                    .set(Timer::DelayedAck, now + self.config.delayed_ack);
            }
        }
        Arrival::New
    }

    /// The next message in order, if it arrived.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let item = self.ready.pop_front();
        if item.is_some() && self.free_window() == 1 {
            // The window reopens: say so, or a blocked sender waits for RTO.
            self.ack_now = true;
        }
        item
    }

    /// Asks for an acknowledgement by `at` at the latest.
    pub fn ack_by(&mut self, at: Instant) {
        let earliest = self.timers.get(Timer::DelayedAck).map_or(at, |t| t.min(at));
        self.timers.set(Timer::DelayedAck, earliest);
    }

    /// Asks for an acknowledgement at the next [`Receiver::poll_ack`].
    pub fn request_ack(&mut self) {
        self.ack_now = true;
    }

    /// When the delayed acknowledgement is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ack_now {
            None
        } else {
            self.timers.next_deadline()
        }
    }

    /// The acknowledgement to send at `now`, if one is due.
    pub fn poll_ack(&mut self, now: Instant) -> Option<Ack> {
        let due = self.ack_now || self.timers.is_expired(Timer::DelayedAck, now);
        if !due {
            return None;
        }
        self.ack_now = false;
        self.timers.stop(Timer::DelayedAck);
        self.unacked = 0;
        Some(self.ack())
    }

    /// The acknowledgement as it stands, whether due or not.
    ///
    /// With more received ranges than fit, it keeps the lowest few (the
    /// holes to fill first) and the highest (what arrived last, which is how
    /// the sender tells that older messages are lost).
    pub fn ack(&self) -> Ack {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &seq in self.early.keys() {
            match ranges.last_mut() {
                Some((_, end)) if *end == seq => *end += 1,
                _ => ranges.push((seq, seq + 1)),
            }
        }
        if ranges.len() > MAX_ACK_RANGES {
            let keep_low = MAX_ACK_RANGES / 4;
            let cut = ranges.len() - (MAX_ACK_RANGES - keep_low);
            ranges.drain(keep_low..cut);
        }
        Ack {
            cumulative: self.cumulative,
            ranges,
            window: self.free_window(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> ArqConfig {
        ArqConfig::default()
    }

    #[test]
    fn receiver_orders_suppresses_duplicates_and_acks_gaps_at_once() {
        let t = Instant::now();
        let mut r: Receiver<&str> = Receiver::new(cfg(), 0);
        assert_eq!(r.on_data(0, "a", t), Arrival::New);
        assert_eq!(
            r.poll_timeout(),
            Some(t + cfg().delayed_ack),
            "one message: delayed"
        );
        assert!(r.poll_ack(t + cfg().delayed_ack - MS).is_none());
        let ack = r
            .poll_ack(t + cfg().delayed_ack)
            .expect("ack at the delayed-ack time");
        assert_eq!(ack.cumulative, 1);

        assert_eq!(r.on_data(2, "c", t), Arrival::New);
        let ack = r.poll_ack(t).expect("a gap is acknowledged at once");
        assert_eq!((ack.cumulative, ack.ranges.clone()), (1, vec![(2, 3)]));
        assert_eq!(r.on_data(2, "c", t), Arrival::Duplicate);
        assert_eq!(r.on_data(1, "b", t), Arrival::New);
        assert_eq!(r.on_data(0, "a", t), Arrival::Duplicate);
        let got: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(got, [(0, "a"), (1, "b"), (2, "c")]);
        assert_eq!(r.stats().duplicates, 2);
        assert_eq!(r.poll_ack(t).unwrap().cumulative, 3);
    }

    #[test]
    fn two_in_order_messages_are_acked_without_waiting() {
        let t = Instant::now();
        let mut r: Receiver<()> = Receiver::new(cfg(), 5);
        r.on_data(5, (), t);
        assert!(r.poll_ack(t).is_none());
        r.on_data(6, (), t);
        assert_eq!(r.poll_ack(t).unwrap().cumulative, 7);
    }

    #[test]
    fn the_advertised_window_shrinks_until_the_application_reads() {
        let t = Instant::now();
        let config = ArqConfig {
            receive_window: 4,
            ..cfg()
        };
        let mut r: Receiver<u8> = Receiver::new(config, 0);
        for seq in 0..4 {
            assert_eq!(r.on_data(seq, 0, t), Arrival::New);
        }
        assert_eq!(r.on_data(4, 0, t), Arrival::OutOfWindow);
        assert_eq!(r.poll_ack(t).unwrap().window, 0);
        r.pop();
        let ack = r.poll_ack(t).expect("the window reopened: say so");
        assert_eq!(ack.window, 1);
    }
}

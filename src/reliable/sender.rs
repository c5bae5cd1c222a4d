//! The send side of a reliable stream: the conductor of the ARQ.
//!
//! [`Sender`] owns the sequence space (`snd_una..next_seq`), the in-flight
//! set with each message's send time and fate, the retransmit queue, RACK
//! loss detection (RFC 8985, simplified, with classic fast retransmit until
//! reordering is seen), the tail-loss probe, the receiver's flow window, the
//! byte bound on what is in flight, thin-stream bundling and every timer of
//! the send side. It uses [`RttEstimator`] for the timeouts, [`Congestion`]
//! for the window and [`Pacer`] for spacing, telling each what happened;
//! they know nothing of it. It keeps no payloads: its owner keeps (or can
//! re-read) them, a client a copy, the relay its log.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::{ArqConfig, MAX_ACK_RANGES};
use super::congestion::Congestion;
use super::pacing::Pacer;
use super::rtt::RttEstimator;
use super::runs::AckedRuns;
use crate::timer::{TimerName, TimerTable};

/// The sender's timers; every timer lives in `Sender::timers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Retransmission timeout.
    Rto,
    /// Tail-loss probe.
    Tlp,
    /// Pacing: the next new message may go at this time.
    Pacing,
    /// Time-based loss detection: a message sent before a delivered one is
    /// lost once it is a round trip and a reordering window old.
    Rack,
}

impl TimerName<4> for Timer {
    const ALL: [Timer; 4] = [Timer::Rto, Timer::Tlp, Timer::Pacing, Timer::Rack];
    fn index(self) -> usize {
        self as usize
    }
}

/// State of one sent sequence number.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Time of the last transmission.
    sent_at: Instant,
    /// Times sent; more than 1 means no RTT sample (Karn).
    transmissions: u32,
    /// Selectively acknowledged.
    acked: bool,
    /// Declared lost and waiting in the retransmit queue.
    lost: bool,
    /// Was ever declared lost: its acknowledgement may have waited behind
    /// a gap, so it gives no RTT sample even if sent once.
    suspect: bool,
    /// The message's size, for `Sender::in_flight_bytes`.
    bytes: u64,
}

/// What the sender counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// New messages sent.
    pub sent: u64,
    /// Retransmissions of any cause.
    pub retransmits: u64,
    /// Losses found by later acknowledgements.
    pub fast_retransmits: u64,
    /// Tail-loss probes sent.
    pub tail_loss_probes: u64,
    /// RTO expiries.
    pub timeouts: u64,
    /// Copies carried again beside new messages (thin-stream redundancy).
    pub bundled: u64,
}

/// The send side of a reliable stream.
#[derive(Debug)]
pub struct Sender {
    config: ArqConfig,
    /// Lowest sequence number not cumulatively acknowledged.
    snd_una: u64,
    /// Next new sequence number.
    next_seq: u64,
    /// Slots for `snd_una..next_seq`.
    slots: VecDeque<Slot>,
    /// Messages in the network: sent, not acknowledged, not declared lost.
    pipe: u64,
    /// Declared lost, to send again, oldest first.
    lost: VecDeque<u64>,
    /// Round trip, RTO and probe timeout.
    rtt: RttEstimator,
    /// The congestion window.
    congestion: Congestion,
    /// The pacing schedule; its timer is `Timer::Pacing`.
    pacer: Pacer,
    /// Highest selectively acknowledged sequence number plus one.
    highest_acked: u64,
    /// Runs known selectively acknowledged (a subset of the `acked` slots).
    acked_runs: AckedRuns,
    /// How far past `snd_una` the receiver allows.
    peer_window: u64,
    /// Every timer of the send side.
    timers: TimerTable<Timer, 4>,
    /// (send time, sequence number) of the most recently sent message known
    /// delivered: anything sent before it and still unacknowledged a round
    /// trip plus `reo_wnd` later is lost (RACK, RFC 8985, simplified).
    rack: Option<(Instant, u64)>,
    /// How much reordering to tolerate; grows when a retransmission turns
    /// out to have been spurious.
    reo_wnd: Duration,
    /// RTO expiries since the peer last acknowledged anything at all.
    silent_timeouts: u32,
    /// Bytes of the messages sent and not yet acknowledged.
    in_flight_bytes: u64,
    /// The tail-loss probe of this flight was sent.
    probed: bool,
    stats: SenderStats,
}

impl Sender {
    /// A sender whose first sequence number is `first`.
    pub fn new(config: ArqConfig, first: u64) -> Sender {
        Sender {
            config,
            snd_una: first,
            next_seq: first,
            slots: VecDeque::new(),
            pipe: 0,
            lost: VecDeque::new(),
            rtt: RttEstimator::new(&config),
            congestion: Congestion::new(&config, first),
            pacer: Pacer::new(),
            highest_acked: first,
            acked_runs: AckedRuns::default(),
            peer_window: u64::from(config.receive_window),
            timers: TimerTable::new(),
            rack: None,
            reo_wnd: Duration::ZERO,
            silent_timeouts: 0,
            in_flight_bytes: 0,
            probed: false,
            stats: SenderStats::default(),
        }
    }

    /// Lowest sequence number not yet acknowledged.
    pub fn snd_una(&self) -> u64 {
        self.snd_una
    }

    /// The sequence number the next new message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// True when everything sent was acknowledged.
    pub fn is_idle(&self) -> bool {
        self.snd_una == self.next_seq
    }

    /// True once the peer stopped answering for `max_timeouts` RTOs.
    pub fn is_failed(&self) -> bool {
        self.silent_timeouts > self.config.max_timeouts
    }

    /// Smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// The current RTO, backoff included.
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }

    /// Congestion window, in messages.
    pub fn cwnd(&self) -> u64 {
        self.congestion.cwnd()
    }

    /// What was counted.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.next_seq - self.snd_una
    }

    /// True if a new message may be sent at `now`: the congestion window,
    /// the receiver's window and pacing all allow it, and no retransmission
    /// is waiting.
    pub fn can_send(&self, now: Instant) -> bool {
        !self.is_failed()
            && self.lost.is_empty()
            && self.congestion.allows_new(self.pipe)
            && self.next_seq < self.snd_una + self.peer_window
            && self.pacer.allows(now)
            && (self.in_flight_bytes < self.config.max_in_flight_bytes || self.in_flight() == 0)
    }

    /// Records that the next new message was sent; returns its sequence number.
    pub fn on_send(&mut self, now: Instant) -> u64 {
        self.on_send_bytes(now, 0)
    }

    /// As [`Sender::on_send`], for a message of `bytes` bytes: counted
    /// against [`ArqConfig::max_in_flight_bytes`] until acknowledged.
    pub fn on_send_bytes(&mut self, now: Instant, bytes: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back(Slot {
            sent_at: now,
            transmissions: 1,
            acked: false,
            lost: false,
            suspect: false,
            bytes: bytes as u64,
        });
        self.in_flight_bytes += bytes as u64;
        self.pipe += 1;
        self.stats.sent += 1;
        self.after_transmission(now);
        seq
    }

    /// Thin-stream redundancy (see [`ArqConfig::bundle_limit`]): while few
    /// messages are in flight, calls `carry` with each unacknowledged message
    /// below `below` that is not waiting for a retransmission, oldest first,
    /// until `carry` returns false because the datagram is full. Call it
    /// after putting new messages from `below` on into a datagram.
    pub fn bundle(&mut self, below: u64, mut carry: impl FnMut(u64) -> bool) {
        if self.in_flight() > u64::from(self.config.bundle_limit) || self.is_failed() {
            return;
        }
        for seq in self.snd_una..below.min(self.next_seq) {
            let slot = &self.slots[(seq - self.snd_una) as usize];
            if slot.acked || slot.lost {
                continue;
            }
            if !carry(seq) {
                break;
            }
            self.stats.bundled += 1;
        }
    }

    /// The next sequence number to send again, if one is due and the window
    /// allows; the caller must send it at once.
    pub fn poll_retransmit(&mut self, now: Instant) -> Option<u64> {
        if !self.congestion.allows_retransmit(self.pipe) {
            return None;
        }
        while let Some(seq) = self.lost.pop_front() {
            let Some(slot) = self.slot_mut(seq) else {
                continue;
            };
            if slot.acked || !slot.lost {
                continue;
            }
            slot.lost = false;
            slot.transmissions += 1;
            slot.sent_at = now;
            self.pipe += 1;
            self.stats.retransmits += 1;
            self.after_transmission(now);
            return Some(seq);
        }
        None
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = seq.checked_sub(self.snd_una)?;
        self.slots.get_mut(usize::try_from(i).ok()?)
    }

    fn after_transmission(&mut self, now: Instant) {
        if self.timers.get(Timer::Rto).is_none() {
            self.timers.set(Timer::Rto, now + self.rto());
        }
        self.arm_tlp(now);
        // Without a round trip measured there is no rate to pace at.
        if let Some(srtt) = self.rtt.srtt() {
            self.timers.set_or_stop(
                Timer::Pacing,
                self.pacer.on_transmit(now, srtt, self.congestion.window()),
            );
        }
    }

    fn arm_tlp(&mut self, now: Instant) {
        if !self.probed {
            self.timers.set(Timer::Tlp, now + self.rtt.pto());
        }
    }

    /// Takes an acknowledgement: everything below `cumulative`, plus the
    /// `[start, end)` ranges, with the receiver's free window. Values outside
    /// what was sent are ignored (a hostile or confused peer cannot make the
    /// sender skip data). Returns how many messages it newly acknowledged.
    pub fn on_ack(
        &mut self,
        cumulative: u64,
        ranges: impl IntoIterator<Item = (u64, u64)>,
        window: u32,
        now: Instant,
    ) -> u64 {
        let cumulative = cumulative.min(self.next_seq);
        self.peer_window = u64::from(window).max(1);
        self.silent_timeouts = 0;
        let mut newly = 0u64;
        let srtt = self.rtt.srtt();
        let mut rack = self.rack;
        let mut spurious = false;
        // The RTT sample comes from the newest message this ack newly covers
        // (the one whose arrival most likely triggered it), and only if it
        // was sent once and never suspected lost (Karn's rule, widened: an
        // acknowledgement that waited behind a gap measures the gap).
        let mut newest: Option<(u64, Slot)> = None;
        let mut sample = |seq: u64, slot: &Slot| {
            if newest.is_none_or(|(s, _)| seq > s) {
                newest = Some((seq, *slot));
            }
            if rack.is_none_or(|r| (slot.sent_at, seq) > r) {
                rack = Some((slot.sent_at, seq));
            }
            // Acknowledged within half a round trip of its retransmission:
            // the original got there, the retransmission was spurious.
            if slot.transmissions > 1
                && srtt.is_some_and(|r| now.saturating_duration_since(slot.sent_at) < r / 2)
            {
                spurious = true;
            }
        };
        // A hostile peer could send thousands of ranges, each spanning the
        // window: no more are read than an honest receiver sends.
        // Only what no earlier acknowledgement covered is walked.
        for (start, end) in ranges.into_iter().take(MAX_ACK_RANGES) {
            let end = end.min(self.next_seq);
            let (snd_una, slots) = (self.snd_una, &mut self.slots);
            let (pipe, in_flight_bytes) = (&mut self.pipe, &mut self.in_flight_bytes);
            self.acked_runs
                .insert(start.max(cumulative).max(snd_una), end, |from, to| {
                    for seq in from..to {
                        let Some(slot) = slots.get_mut((seq - snd_una) as usize) else {
                            continue;
                        };
                        if !slot.acked {
                            if !slot.lost {
                                *pipe -= 1;
                            }
                            slot.acked = true;
                            *in_flight_bytes -= slot.bytes;
                            newly += 1;
                            sample(seq, slot);
                        }
                    }
                });
            self.highest_acked = self.highest_acked.max(end);
        }
        while self.snd_una < cumulative {
            let slot = self
                .slots
                .pop_front()
                .expect("a slot for every unacked seq");
            if !slot.acked {
                if !slot.lost {
                    self.pipe -= 1;
                }
                self.in_flight_bytes -= slot.bytes;
                newly += 1;
                sample(self.snd_una, &slot);
            }
            self.snd_una += 1;
        }
        self.acked_runs.forget_below(self.snd_una);
        self.highest_acked = self.highest_acked.max(self.snd_una);
        if let Some((_, slot)) = newest {
            let ambiguous = slot.transmissions > 1 || slot.suspect;
            self.rtt
                .sample(now.saturating_duration_since(slot.sent_at), ambiguous);
        }
        self.rack = rack;
        if spurious && let Some(srtt) = self.rtt.srtt() {
            self.reo_wnd = (self.reo_wnd + srtt / 16).min(srtt / 4);
        }
        if newly > 0 {
            self.rtt.on_progress();
            self.probed = false;
            self.congestion.on_acked(newly);
        }
        self.detect_losses(now);
        self.congestion.on_ack_taken(
            self.snd_una,
            self.next_seq,
            self.rtt.srtt(),
            self.rtt.min_rtt(),
        );
        if self.is_idle() {
            self.timers.stop(Timer::Rto);
            self.timers.stop(Timer::Tlp);
        } else if newly > 0 {
            // RFC 6298 5.3: restart the timer when new data is acknowledged.
            self.timers.set(Timer::Rto, now + self.rto());
            self.arm_tlp(now);
        }
        newly
    }

    /// Declares lost every unacknowledged message that was sent before a
    /// delivered one (by send time, then sequence number) and is older than
    /// a round trip plus the reordering window. Until reordering was seen (a
    /// spurious retransmission), `dupthresh` later acknowledged messages are
    /// enough, at once: classic fast retransmit. A message not old enough yet
    /// arms the RACK timer for when it will be.
    fn detect_losses(&mut self, now: Instant) {
        self.timers.stop(Timer::Rack);
        let Some(rack) = self.rack else {
            return;
        };
        let srtt = self.rtt.srtt().unwrap_or(self.config.initial_rto);
        let min_rtt = self.rtt.min_rtt().unwrap_or(srtt);
        let wait = srtt + self.reo_wnd.max(min_rtt / 4).max(Duration::from_millis(1));
        let mut next_check: Option<Instant> = None;
        let (snd_una, highest_acked) = (self.snd_una, self.highest_acked);
        let (dupthresh, reo_wnd) = (self.config.dupthresh, self.reo_wnd);
        let (slots, lost, pipe) = (&mut self.slots, &mut self.lost, &mut self.pipe);
        let (stats, congestion) = (&mut self.stats, &mut self.congestion);
        // What selective acknowledgements covered cannot be lost: only the
        // gaps between them are walked.
        self.acked_runs.gaps(snd_una, highest_acked, |from, to| {
            for seq in from..to {
                let Some(slot) = slots.get_mut((seq - snd_una) as usize) else {
                    return;
                };
                if slot.acked || slot.lost || (slot.sent_at, seq) >= rack {
                    continue;
                }
                let dupthresh_hit = seq + dupthresh < highest_acked;
                let deadline = slot.sent_at + wait;
                if now < deadline && !(dupthresh_hit && reo_wnd.is_zero()) {
                    next_check = Some(next_check.map_or(deadline, |n| n.min(deadline)));
                    continue;
                }
                slot.lost = true;
                slot.suspect = true;
                *pipe -= 1;
                lost.push_back(seq);
                stats.fast_retransmits += 1;
                congestion.on_loss_detected();
            }
        });
        self.timers.set_or_stop(Timer::Rack, next_check);
    }

    /// The peer is another one now (a client moved to another relay):
    /// what this one acknowledged selectively is not known there, and its
    /// path is a new one. Everything not cumulatively acknowledged goes
    /// again, first; the round trip, the congestion window and the timeout
    /// start afresh, as on a new stream (RFC 9000 section 9.4 does the same
    /// on a new path).
    pub fn new_path(&mut self) {
        self.lost.clear();
        self.acked_runs.clear();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.acked {
                slot.acked = false;
                self.in_flight_bytes += slot.bytes;
            }
            // The new peer never saw it: its first acknowledgement there is
            // a round-trip sample of the new path.
            slot.lost = true;
            slot.suspect = false;
            slot.transmissions = 0;
            self.lost.push_back(self.snd_una + i as u64);
        }
        self.pipe = 0;
        self.highest_acked = self.snd_una;
        self.rtt = RttEstimator::new(&self.config);
        self.congestion = Congestion::new(&self.config, self.next_seq);
        self.pacer = Pacer::new();
        self.peer_window = u64::from(self.config.receive_window);
        self.timers = TimerTable::new();
        self.rack = None;
        self.reo_wnd = Duration::ZERO;
        self.silent_timeouts = 0;
        self.probed = false;
    }

    /// The earliest time [`Sender::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Fires the timers due at `now`: a tail-loss probe resends the newest
    /// unacknowledged message; an RTO declares everything in flight lost,
    /// collapses the window and doubles the timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.is_expired(Timer::Pacing, now) {
            self.timers.stop(Timer::Pacing);
        }
        if self.timers.is_expired(Timer::Rack, now) {
            self.detect_losses(now);
        }
        if self.timers.is_expired(Timer::Tlp, now) {
            self.timers.stop(Timer::Tlp);
            self.on_tail_loss_probe();
        }
        if self.timers.is_expired(Timer::Rto, now) {
            self.on_rto(now);
        }
    }

    /// The probe timeout fired: the newest unacknowledged message goes
    /// again, once per flight, so a lost tail is found without an RTO.
    fn on_tail_loss_probe(&mut self) {
        if self.is_idle() || self.probed {
            return;
        }
        self.probed = true;
        self.stats.tail_loss_probes += 1;
        let newest = (0..self.slots.len())
            .rev()
            .find(|&i| !self.slots[i].acked && !self.slots[i].lost);
        if let Some(i) = newest {
            let slot = &mut self.slots[i];
            slot.lost = true;
            slot.suspect = true;
            self.pipe -= 1;
            self.lost.push_front(self.snd_una + i as u64);
        }
    }

    /// The retransmission timeout fired.
    fn on_rto(&mut self, now: Instant) {
        self.stats.timeouts += 1;
        let timeouts_in_a_row = self.rtt.on_timeout();
        self.silent_timeouts += 1;
        self.timers.stop(Timer::Rack);
        self.probed = true; // no probe until new data is acknowledged
        self.timers.stop(Timer::Tlp);
        // Everything unacknowledged that has been out for a whole
        // timeout is lost; what was sent since may still arrive and is
        // left alone (resending it would only add to a bad moment).
        //
        // From the second timeout without progress on, selective
        // acknowledgements are forgotten too (RFC 2018 section 8: the
        // receiver may have reneged). A relay that restarted knows nothing
        // of what it reported received but had not yet made durable; if
        // those stayed marked, nothing would ever fill the gap it now waits
        // on, and the session would stall until it failed. One timeout
        // alone is usually loss, and resending what arrived would waste it.
        let reneged = timeouts_in_a_row >= 2;
        if reneged {
            self.acked_runs.clear();
        }
        self.lost.clear();
        let rto = self.rto();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.acked && reneged {
                slot.acked = false;
                slot.lost = true;
                slot.suspect = true;
                self.in_flight_bytes += slot.bytes;
                self.lost.push_back(self.snd_una + i as u64);
                continue;
            }
            let old = now.saturating_duration_since(slot.sent_at) >= rto / 2 || i == 0;
            if !slot.acked && (slot.lost || old) {
                if !slot.lost {
                    self.pipe -= 1;
                }
                slot.lost = true;
                slot.suspect = true;
                self.lost.push_back(self.snd_una + i as u64);
            }
        }
        self.congestion
            .on_timeout(self.snd_una, self.next_seq, timeouts_in_a_row);
        self.timers.stop(Timer::Pacing);
        self.timers
            .set_or_stop(Timer::Rto, (!self.is_idle()).then(|| now + self.rto()));
    }
}

#[cfg(test)]
#[path = "sender_tests.rs"]
mod tests;

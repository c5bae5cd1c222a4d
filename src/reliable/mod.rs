//! Sans-IO ARQ: the send side and the receive side of one reliable stream of
//! sequence numbers, with no sockets, no clock and no payloads.
//!
//! A [`Sender`] decides *when* sequence numbers go out and come back: the
//! in-flight window, cumulative and selective acknowledgements, the
//! retransmission timeout of RFC 6298 (with Karn's rule and exponential
//! backoff), fast retransmit when three later messages were acknowledged
//! before one, a tail-loss probe so the last message of a burst does not wait
//! a whole RTO, a congestion window with pacing, and the receiver's
//! flow-control window. Its owner keeps (or can re-read) the payloads: a
//! client keeps a copy, the relay re-reads its log.
//!
//! A [`Receiver`] suppresses duplicates, puts messages back in order and says
//! when to acknowledge (at once on a gap or a duplicate, otherwise after two
//! messages or the delayed-ack time).
//!
//! Deviation from RFC 6298, on purpose: the minimum RTO is 20 ms and the
//! initial one 200 ms (not 1 s), as KCP, QUIC and Linux do for links where a
//! second is an eternity. Both are settings.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Settings shared by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArqConfig {
    /// RTO before any round trip was measured.
    pub initial_rto: Duration,
    /// Lower bound of the RTO.
    pub min_rto: Duration,
    /// Upper bound of the RTO, backoff included.
    pub max_rto: Duration,
    /// Consecutive RTO expiries after which the peer is declared lost.
    pub max_timeouts: u32,
    /// Congestion window at the start and after idle, in messages.
    pub initial_cwnd: u32,
    /// The congestion window never shrinks below this, in messages. RFC 5681
    /// goes down to one after a timeout; on a lossy but uncongested path
    /// (30 % random loss) that starves the ack clock, so every loss becomes
    /// a timeout. A floor keeps enough in flight for losses to be found by
    /// later acknowledgements instead (KCP's fast mode goes further and has
    /// no window at all).
    pub min_cwnd: u32,
    /// Largest congestion window, in messages.
    pub max_cwnd: u32,
    /// Later messages acknowledged before one is declared lost.
    pub dupthresh: u64,
    /// Longest wait before acknowledging in-order data.
    pub delayed_ack: Duration,
    /// Messages the receiver may buffer beyond what the application took.
    pub receive_window: u32,
    /// Thin-stream redundancy: while at most this many messages are in
    /// flight, a datagram of new messages that has room also carries the
    /// unacknowledged earlier ones again, so the loss of one datagram is
    /// repaired by the next instead of a round trip later. It costs bytes,
    /// never datagrams; 0 turns it off.
    pub bundle_limit: u32,
    /// Most bytes of messages sent and not yet acknowledged (one message
    /// may always go when none is in flight). The windows count messages;
    /// this bounds a window of large ones, each many datagrams: 8 MiB holds
    /// eight 1 MiB messages, as many as a subscriber reports pieces of.
    pub max_in_flight_bytes: u64,
}

impl Default for ArqConfig {
    fn default() -> Self {
        ArqConfig {
            initial_rto: Duration::from_millis(200),
            min_rto: Duration::from_millis(20),
            max_rto: Duration::from_secs(2),
            max_timeouts: 20,
            initial_cwnd: 32,
            min_cwnd: 16,
            max_cwnd: 8192,
            dupthresh: 3,
            delayed_ack: Duration::from_millis(5),
            receive_window: 4096,
            bundle_limit: 8,
            max_in_flight_bytes: 8 << 20,
        }
    }
}

/// How far ahead of its pacing schedule the sender may run.
const PACING_BURST: Duration = Duration::from_millis(1);
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

/// The sender's timers; every timer lives in [`Sender::timers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Timer {
    /// Retransmission timeout.
    Rto = 0,
    /// Tail-loss probe.
    Tlp = 1,
    /// Pacing: the next new message may go at this time.
    Pacing = 2,
    /// Time-based loss detection: a message sent before a delivered one is
    /// lost once it is a round trip and a reordering window old.
    Rack = 3,
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
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    /// Consecutive RTO expiries without progress.
    backoff: u32,
    cwnd: f64,
    ssthresh: f64,
    /// No second window reduction until `snd_una` passes this.
    recovery_until: u64,
    /// Highest selectively acknowledged sequence number plus one.
    highest_acked: u64,
    /// How far past `snd_una` the receiver allows.
    peer_window: u64,
    /// Every timer, indexed by [`Timer`].
    timers: [Option<Instant>; 4],
    /// (send time, sequence number) of the most recently sent message known
    /// delivered: anything sent before it and still unacknowledged a round
    /// trip plus `reo_wnd` later is lost (RACK, RFC 8985, simplified).
    rack: Option<(Instant, u64)>,
    /// How much reordering to tolerate; grows when a retransmission turns
    /// out to have been spurious.
    reo_wnd: Duration,
    /// RTO expiries since the peer last acknowledged anything at all.
    silent_timeouts: u32,
    /// When the next message may go, by the pacing rate; up to
    /// [`PACING_BURST`] ahead of now is allowed, so messages still share
    /// datagrams.
    pace_next: Option<Instant>,
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
    /// Fates learned so far, acknowledged or lost, and the losses among
    /// them: the loss rate is their plain ratio until `LOSS_LEARNED` fates
    /// are known, and only then can a round be a spike.
    fates: u64,
    fates_lost: u64,
    /// Smallest RTT seen: the path without queues.
    min_rtt: Option<Duration>,
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
            srtt: None,
            rttvar: Duration::ZERO,
            rto: config.initial_rto,
            backoff: 0,
            cwnd: f64::from(config.initial_cwnd),
            ssthresh: f64::from(config.max_cwnd),
            recovery_until: first,
            highest_acked: first,
            peer_window: u64::from(config.receive_window),
            timers: [None; 4],
            rack: None,
            reo_wnd: Duration::ZERO,
            silent_timeouts: 0,
            pace_next: None,
            round_end: first,
            round_lost: 0,
            round_acked: 0,
            loss_ewma: 0.0,
            fates: 0,
            fates_lost: 0,
            min_rtt: None,
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
        self.srtt
    }

    /// The current RTO, backoff included.
    pub fn rto(&self) -> Duration {
        (self.rto * 2u32.saturating_pow(self.backoff.min(16))).min(self.config.max_rto)
    }

    /// Congestion window, in messages.
    pub fn cwnd(&self) -> u64 {
        self.cwnd as u64
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
            && (self.pipe as f64) < self.cwnd
            && self.next_seq < self.snd_una + self.peer_window
            && self.pace_next.is_none_or(|t| t <= now + PACING_BURST)
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
        if (self.pipe as f64) >= self.cwnd.max(1.0) {
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
        if self.timers[Timer::Rto as usize].is_none() {
            self.timers[Timer::Rto as usize] = Some(now + self.rto());
        }
        self.arm_tlp(now);
        // Pacing: a window per round trip, at 1.25 times the rate so the
        // window, not the pacer, is what limits; bursts of up to
        // PACING_BURST go back to back.
        if let Some(srtt) = self.srtt {
            let gap = srtt.div_f64(self.cwnd.max(1.0) * 1.25);
            let next = self.pace_next.map_or(now, |t| t.max(now)) + gap;
            self.pace_next = Some(next);
            self.timers[Timer::Pacing as usize] =
                (next > now + PACING_BURST).then(|| next - PACING_BURST);
        }
    }

    fn arm_tlp(&mut self, now: Instant) {
        if self.probed {
            return;
        }
        // As QUIC's probe timeout, less the variance margin of the RTO: a
        // probe costs one message, a late one costs a round trip.
        let pto = match self.srtt {
            Some(srtt) => {
                (srtt + self.rttvar * 2 + self.config.delayed_ack).max(Duration::from_millis(10))
            }
            None => self.config.initial_rto / 2,
        };
        self.timers[Timer::Tlp as usize] = Some(now + pto);
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
        let srtt = self.srtt;
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
        for (start, end) in ranges.into_iter().take(MAX_ACK_RANGES) {
            let start = start.max(cumulative);
            let end = end.min(self.next_seq);
            for seq in start..end {
                let Some(i) = seq.checked_sub(self.snd_una) else {
                    continue;
                };
                let Some(slot) = self.slots.get_mut(i as usize) else {
                    continue;
                };
                if !slot.acked {
                    if !slot.lost {
                        self.pipe -= 1;
                    }
                    slot.acked = true;
                    self.in_flight_bytes -= slot.bytes;
                    newly += 1;
                    sample(seq, slot);
                }
            }
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
        self.highest_acked = self.highest_acked.max(self.snd_una);
        if let Some((_, slot)) = newest
            && slot.transmissions == 1
            && !slot.suspect
        {
            self.update_rtt(now.saturating_duration_since(slot.sent_at));
        }
        self.rack = rack;
        if spurious && let Some(srtt) = self.srtt {
            self.reo_wnd = (self.reo_wnd + srtt / 16).min(srtt / 4);
        }
        if newly > 0 {
            self.backoff = 0;
            self.probed = false;
            self.grow_window(newly);
            self.round_acked += newly;
        }
        self.detect_losses(now);
        if self.snd_una >= self.round_end {
            self.end_round();
        }
        if self.is_idle() {
            self.timers[Timer::Rto as usize] = None;
            self.timers[Timer::Tlp as usize] = None;
        } else if newly > 0 {
            // RFC 6298 5.3: restart the timer when new data is acknowledged.
            self.timers[Timer::Rto as usize] = Some(now + self.rto());
            self.arm_tlp(now);
        }
        newly
    }

    /// RFC 6298 section 2, with alpha 1/8, beta 1/4, K 4 and a 1 ms clock.
    fn update_rtt(&mut self, r: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.expect("set above");
        // As QUIC's PTO: the peer may hold an acknowledgement back for up to
        // its delayed-ack time, which the variance alone does not cover
        // on a steady path.
        let rto = srtt + (self.rttvar * 4).max(Duration::from_millis(1)) + self.config.delayed_ack;
        self.rto = rto.clamp(self.config.min_rto, self.config.max_rto);
    }

    fn grow_window(&mut self, acked: u64) {
        // Slow start below ssthresh (also right after an RTO); above it the
        // window grows by a twentieth per round trip (scalable, not Reno's
        // one message per round trip, which takes minutes to refill a large
        // window after a reduction).
        let step = if self.cwnd < self.ssthresh {
            1.0
        } else {
            CA_GROWTH
        };
        self.cwnd = (self.cwnd + step * acked as f64).min(f64::from(self.config.max_cwnd));
    }

    /// Closes a round (one window of data acknowledged) and decides whether
    /// the path is congested: queues building (the smoothed RTT well above
    /// the smallest seen), or a round whose loss rate clearly exceeds the
    /// path's usual rate, once that rate has been learned. Random loss at a
    /// steady rate (a lossy radio link) is not congestion: reacting to every
    /// loss, as Reno does, would hold the window at its floor on a path with
    /// 10 % random loss.
    fn end_round(&mut self) {
        let fates = self.round_acked + self.round_lost;
        let rate = self.round_lost as f64 / fates.max(1) as f64;
        let queueing = match (self.srtt, self.min_rtt) {
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
        let congested = queueing || loss_spike;
        if congested && self.snd_una >= self.recovery_until {
            self.ssthresh = (self.cwnd * (1.0 - CA_DECREASE)).max(f64::from(self.config.min_cwnd));
            self.cwnd = self.ssthresh;
            self.recovery_until = self.next_seq;
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
        self.round_end = self.next_seq.max(self.snd_una + 1);
        self.round_lost = 0;
        self.round_acked = 0;
    }

    /// Declares lost every unacknowledged message that was sent before a
    /// delivered one (by send time, then sequence number) and is older than
    /// a round trip plus the reordering window. Until reordering was seen (a
    /// spurious retransmission), `dupthresh` later acknowledged messages are
    /// enough, at once: classic fast retransmit. A message not old enough yet
    /// arms the RACK timer for when it will be.
    fn detect_losses(&mut self, now: Instant) {
        self.timers[Timer::Rack as usize] = None;
        let Some(rack) = self.rack else {
            return;
        };
        let srtt = self.srtt.unwrap_or(self.config.initial_rto);
        let min_rtt = self.min_rtt.unwrap_or(srtt);
        let wait = srtt + self.reo_wnd.max(min_rtt / 4).max(Duration::from_millis(1));
        let end = self.highest_acked.saturating_sub(self.snd_una) as usize;
        let mut next_check: Option<Instant> = None;
        for (i, slot) in self.slots.iter_mut().enumerate().take(end) {
            let seq = self.snd_una + i as u64;
            if slot.acked || slot.lost || (slot.sent_at, seq) >= rack {
                continue;
            }
            let dupthresh_hit = seq + self.config.dupthresh < self.highest_acked;
            let deadline = slot.sent_at + wait;
            if now < deadline && !(dupthresh_hit && self.reo_wnd.is_zero()) {
                next_check = Some(next_check.map_or(deadline, |n| n.min(deadline)));
                continue;
            }
            slot.lost = true;
            slot.suspect = true;
            self.pipe -= 1;
            self.lost.push_back(seq);
            self.stats.fast_retransmits += 1;
            self.round_lost += 1;
        }
        self.timers[Timer::Rack as usize] = next_check;
    }

    /// The earliest time [`Sender::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rto = self.timers[Timer::Rto as usize];
        let tlp = self.timers[Timer::Tlp as usize];
        // Pacing only matters while it is what holds the next message back.
        let pacing = self.timers[Timer::Pacing as usize];
        let rack = self.timers[Timer::Rack as usize];
        [rto, tlp, pacing, rack].into_iter().flatten().min()
    }

    /// Fires the timers due at `now`: a tail-loss probe resends the newest
    /// unacknowledged message; an RTO declares everything in flight lost,
    /// collapses the window and doubles the timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers[Timer::Pacing as usize].is_some_and(|t| t <= now) {
            self.timers[Timer::Pacing as usize] = None;
        }
        if self.timers[Timer::Rack as usize].is_some_and(|t| t <= now) {
            self.detect_losses(now);
        }
        if self.timers[Timer::Tlp as usize].is_some_and(|t| t <= now) {
            self.timers[Timer::Tlp as usize] = None;
            if !self.is_idle() && !self.probed {
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
        }
        if self.timers[Timer::Rto as usize].is_some_and(|t| t <= now) {
            self.stats.timeouts += 1;
            self.backoff += 1;
            self.silent_timeouts += 1;
            self.timers[Timer::Rack as usize] = None;
            self.probed = true; // no probe until new data is acknowledged
            self.timers[Timer::Tlp as usize] = None;
            // Everything unacknowledged that has been out for a whole
            // timeout is lost; what was sent since may still arrive and is
            // left alone (resending it would only add to a bad moment).
            self.lost.clear();
            let rto = self.rto();
            for (i, slot) in self.slots.iter_mut().enumerate() {
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
            // A timeout on a lossy path is often just a lost tail, not a
            // dead or congested one: give up a congestion step, once per
            // round, and let the doubling timer slow a path that is gone.
            // Slow start ends only on a second timeout in a row: one early
            // timeout (the first acknowledgements lost, before any round
            // trip was measured) would otherwise leave the window to grow a
            // twentieth per round trip from a few dozen messages, which
            // took seconds in simulation (3.2 s against 1.0 s for 10,000
            // messages at 10 % loss).
            if self.snd_una >= self.recovery_until {
                let stepped =
                    (self.cwnd * (1.0 - CA_DECREASE)).max(f64::from(self.config.min_cwnd));
                if self.backoff > 1 {
                    self.ssthresh = stepped;
                }
                self.cwnd = stepped;
                self.recovery_until = self.next_seq;
            }
            self.timers[Timer::Pacing as usize] = None;
            self.timers[Timer::Rto as usize] = (!self.is_idle()).then(|| now + self.rto());
        }
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

/// Most selective ranges in one acknowledgement.
pub const MAX_ACK_RANGES: usize = 32;

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
    ack_at: Option<Instant>,
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
            ack_at: None,
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
        if seq >= self.cumulative + room as u64 {
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
            self.ack_at.get_or_insert(now + self.config.delayed_ack);
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
        self.ack_at = Some(self.ack_at.map_or(at, |t| t.min(at)));
    }

    /// Asks for an acknowledgement at the next [`Receiver::poll_ack`].
    pub fn request_ack(&mut self) {
        self.ack_now = true;
    }

    /// When the delayed acknowledgement is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ack_now { None } else { self.ack_at }
    }

    /// The acknowledgement to send at `now`, if one is due.
    pub fn poll_ack(&mut self, now: Instant) -> Option<Ack> {
        let due = self.ack_now || self.ack_at.is_some_and(|t| t <= now);
        if !due {
            return None;
        }
        self.ack_now = false;
        self.ack_at = None;
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
mod tests;

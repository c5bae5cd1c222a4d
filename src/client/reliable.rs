//! The client halves of reliable mode: a publishing session that keeps each
//! message until the relay acknowledges it, and a reliable subscription that
//! acknowledges offsets and hands messages over in order, exactly once.

use std::collections::VecDeque;
use std::time::Instant;

use super::{
    AddressProof, ClientError, FromRelay, Positions, Reassembler, SUBSCRIBE_RETRY,
    SubscriptionEvent, check_channel, read_from_relay,
};
use crate::reliable::{ArqConfig, MAX_ACK_RANGES, Receiver, ReceiverStats, Sender, SenderStats};
use crate::wire::{
    self, AckKind, DatagramBuilder, DeliveryMode, ErrorCode, Frame, HEADER_LEN, MAX_DATAGRAM,
    StartPosition,
};

/// Fixed bytes of a reliable publish frame besides channel and payload.
const RELIABLE_PUBLISH_FIXED: usize = wire::FRAME_HEADER_LEN + 8 + 8 + 8 + 1;

/// A reliable publishing session: messages are numbered, kept until the
/// relay acknowledges them (which it does once they are in its log), and sent
/// again when the ARQ says they were lost.
#[derive(Debug)]
pub struct ReliablePublisher {
    session: u64,
    channel: String,
    sender: Sender,
    /// Pieces of the sequence numbers `snd_una..next_seq`, for resending,
    /// each with its "more follows" flag.
    in_flight: VecDeque<(Vec<u8>, bool)>,
    /// Pieces not sent yet. A message larger than the packing limit is
    /// split into several, one sequence number each, so a loss costs one
    /// piece, not the message.
    queued: VecDeque<(Vec<u8>, bool)>,
    /// Packing limit for one datagram.
    datagram_size: usize,
    /// A retransmission that did not fit in the last datagram.
    carry: Option<u64>,
    /// Since when the relay has been silent while something waits for its
    /// acknowledgement: the last acknowledgement, or the send that ended an
    /// idle spell (an idle publisher expects nothing, so its quiet is no
    /// silence).
    silent_since: Option<Instant>,
    /// The address token sent with every datagram.
    proof: AddressProof,
}

/// The RELIABLE_PUBLISH frame of session `session` for in-flight message
/// `seq`, where `in_flight[0]` is message `snd_una`.
fn in_flight_frame<'a>(
    session: u64,
    channel: &'a str,
    in_flight: &'a VecDeque<(Vec<u8>, bool)>,
    snd_una: u64,
    seq: u64,
) -> Frame<'a> {
    let (payload, more) = &in_flight[(seq - snd_una) as usize];
    Frame::ReliablePublish {
        session,
        seq,
        acked_below: snd_una,
        more: *more,
        channel,
        payload,
    }
}

impl ReliablePublisher {
    /// A session `session` (unique per run) publishing to `channel`.
    pub fn new(
        session: u64,
        channel: &str,
        config: ArqConfig,
        datagram_size: usize,
    ) -> Result<ReliablePublisher, ClientError> {
        check_channel(channel)?;
        Ok(ReliablePublisher {
            session,
            channel: channel.to_string(),
            sender: Sender::new(config, 0),
            in_flight: VecDeque::new(),
            queued: VecDeque::new(),
            datagram_size,
            carry: None,
            silent_since: None,
            proof: AddressProof::new(),
        })
    }

    /// Bytes of frames a datagram holds: the packing limit less the token.
    fn packing(&self) -> usize {
        self.datagram_size.saturating_sub(wire::VALIDATE_LEN)
    }

    /// Queues a message (of any size; the relay enforces its maximum).
    pub fn push(&mut self, payload: Vec<u8>) -> Result<(), ClientError> {
        let piece = self
            .packing()
            .saturating_sub(HEADER_LEN + RELIABLE_PUBLISH_FIXED + self.channel.len());
        let piece = piece.max(256);
        if payload.len() <= piece {
            self.queued.push_back((payload, false));
            return Ok(());
        }
        let pieces = payload.len().div_ceil(piece);
        for (i, chunk) in payload.chunks(piece).enumerate() {
            self.queued.push_back((chunk.to_vec(), i + 1 < pieces));
        }
        Ok(())
    }

    /// True while fewer messages wait to be sent than one window: read more
    /// input only then, so memory stays bounded however large the input.
    pub fn wants_input(&self) -> bool {
        self.queued.len() < 4096
    }

    /// True when every message pushed was acknowledged.
    pub fn is_done(&self) -> bool {
        self.queued.is_empty() && self.sender.is_idle()
    }

    /// True once the relay stopped answering (the ARQ gave up).
    pub fn is_failed(&self) -> bool {
        self.sender.is_failed()
    }

    /// Pieces not yet acknowledged (queued or in flight; a large message
    /// counts once per piece).
    pub fn unacknowledged(&self) -> u64 {
        self.queued.len() as u64 + self.sender.in_flight()
    }

    /// Messages not yet acknowledged whole (queued or in flight), each
    /// counted once however many pieces it went in.
    pub fn unacknowledged_messages(&self) -> u64 {
        let ends =
            |pieces: &VecDeque<(Vec<u8>, bool)>| pieces.iter().filter(|(_, more)| !more).count();
        (ends(&self.queued) + ends(&self.in_flight)) as u64
    }

    /// Pieces acknowledged so far (a large message counts once per piece).
    pub fn acknowledged(&self) -> u64 {
        self.sender.snd_una()
    }

    /// The ARQ's counters.
    pub fn stats(&self) -> SenderStats {
        self.sender.stats()
    }

    /// The ARQ's smoothed round-trip time and congestion window.
    pub fn path(&self) -> (Option<std::time::Duration>, u64) {
        (self.sender.srtt(), self.sender.cwnd())
    }

    /// Since when the relay has not answered while messages wait for its
    /// acknowledgement; `None` while nothing is in flight. The caller decides
    /// how long a silence means the relay is gone: an unreachable relay (one
    /// restarting, say) is silent, not refused.
    pub fn silent_since(&self) -> Option<Instant> {
        // Waiting for the address token is waiting for the relay too.
        self.silent_since
            .filter(|_| !self.sender.is_idle() || !self.proof.is_proven())
    }

    /// When [`ReliablePublisher::handle_timeout`] (or, before the address
    /// The relay is another one now (the client failed over): a token is
    /// asked of it, and the session goes on there; a relay that does not
    /// know the session takes it from what was acknowledged.
    pub fn moved(&mut self) {
        self.proof = AddressProof::new();
        // A piece kept for the next datagram goes from the lost queue.
        self.carry = None;
        self.sender.new_path();
    }

    /// token came, [`ReliablePublisher::poll_transmit`]) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.proof.poll_timeout().or(self.sender.poll_timeout())
    }

    /// Fires the ARQ's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sender.handle_timeout(now);
    }

    /// The next datagram to send at `now`: retransmissions first, then new
    /// messages, as many as the windows allow and the datagram holds.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.proof.is_proven() {
            // The relay's silence counts from the first hello.
            self.silent_since.get_or_insert(now);
            return self.proof.poll_hello(now);
        }
        let datagram = self.next_datagram(now)?;
        Some(self.proof.stamp(datagram))
    }

    fn next_datagram(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.sender.is_idle() {
            self.silent_since = Some(now);
        }
        let mut b = DatagramBuilder::new(self.packing());
        // The first new message in this datagram, and whether it carries a
        // retransmission (then it is not a thin stream's datagram).
        let mut first_new = None;
        let mut resent = false;
        loop {
            let seq = match self
                .carry
                .take()
                .or_else(|| self.sender.poll_retransmit(now))
            {
                Some(seq) => {
                    resent = true;
                    seq
                }
                None => {
                    let Some((next, _)) = self.queued.front() else {
                        break;
                    };
                    let len = RELIABLE_PUBLISH_FIXED + self.channel.len() + next.len();
                    if !self.sender.can_send(now) || (!b.is_empty() && len > b.remaining()) {
                        break;
                    }
                    let payload = self.queued.pop_front().expect("front() was Some");
                    let seq = self.sender.on_send_bytes(now, payload.0.len());
                    self.in_flight.push_back(payload);
                    first_new.get_or_insert(seq);
                    seq
                }
            };
            let frame = in_flight_frame(
                self.session,
                &self.channel,
                &self.in_flight,
                self.sender.snd_una(),
                seq,
            );
            if b.push(&frame).is_ok() {
                continue;
            }
            if b.is_empty() {
                // Larger than the packing limit: alone, as large as UDP allows.
                let mut alone = DatagramBuilder::new(MAX_DATAGRAM);
                // push() checked the size, so this fits.
                let _ = alone.push(&frame);
                return Some(alone.finish());
            }
            self.carry = Some(seq);
            break;
        }
        if let (Some(below), false, None) = (first_new, resent, self.carry) {
            let (session, channel, in_flight) = (self.session, &self.channel, &self.in_flight);
            let snd_una = self.sender.snd_una();
            self.sender.bundle(below, |seq| {
                b.push(&in_flight_frame(session, channel, in_flight, snd_una, seq))
                    .is_ok()
            });
        }
        (!b.is_empty()).then(|| b.finish())
    }

    /// Reads a datagram from the relay: acknowledgements advance the session,
    /// errors go to `on_error`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        mut on_error: impl FnMut(ErrorCode, &str),
    ) {
        // What the relay refused for a stale token (it restarted) the ARQ
        // sends again, with the new one.
        self.proof.handle_datagram(now, datagram);
        let Ok(frames) = wire::decode_datagram(datagram) else {
            return;
        };
        for frame in frames.flatten() {
            match frame {
                Frame::AddressToken { .. } => self.silent_since = Some(now),
                Frame::Ack {
                    kind: AckKind::Publish,
                    id,
                    cumulative,
                    window,
                    ranges,
                } if id == self.session => {
                    self.silent_since = Some(now);
                    self.sender
                        .on_ack(cumulative, wire::ack_ranges(ranges), window, now);
                    let in_flight = self.sender.in_flight() as usize;
                    while self.in_flight.len() > in_flight {
                        self.in_flight.pop_front();
                    }
                    if self.carry.is_some_and(|c| c < self.sender.snd_una()) {
                        self.carry = None;
                    }
                }
                Frame::Error { code, reason } => on_error(code, reason),
                _ => {}
            }
        }
    }
}

/// A message a reliable subscription holds until the ones before it came:
/// its timestamp, origin and bytes.
type Held = (u64, Option<wire::Origin>, Vec<u8>);

/// A reliable subscription's client side: asks (and keeps asking, as a
/// keepalive) for the subscription, acknowledges offsets, and hands messages
/// over in offset order, each exactly once, whatever the network did.
#[derive(Debug)]
pub struct ReliableSubscription {
    sub_id: u32,
    channel: String,
    start: StartPosition,
    config: ArqConfig,
    /// Created by the relay's first answer, at the offset it starts from;
    /// holds each message's timestamp and origin beside its bytes.
    receiver: Option<Receiver<Held>>,
    /// Lease the relay granted; `None` until the first answer.
    lease: Option<std::time::Duration>,
    /// When the next subscribe (retry or keepalive) is due.
    next_subscribe: Instant,
    /// Large messages arriving in pieces.
    pieces: Reassembler,
    /// The address token sent with every datagram.
    proof: AddressProof,
    /// The queue group it joins, if any.
    group: Option<String>,
    /// With origins asked for: what it holds of each source, to resume at
    /// another relay of a cluster.
    positions: Option<Positions>,
    /// The resume vector a moved subscription sends until answered.
    resume: Vec<u8>,
}

impl ReliableSubscription {
    /// A subscription that sends its first request at `now`.
    pub fn new(
        sub_id: u32,
        channel: &str,
        start: StartPosition,
        config: ArqConfig,
        now: Instant,
    ) -> Result<ReliableSubscription, ClientError> {
        check_channel(channel)?;
        Ok(ReliableSubscription {
            sub_id,
            channel: channel.to_string(),
            start,
            config,
            receiver: None,
            lease: None,
            next_subscribe: now,
            pieces: Reassembler::default(),
            proof: AddressProof::new(),
            group: None,
            positions: None,
            resume: Vec::new(),
        })
    }

    /// Asks the relay for each message's origin, and keeps what it holds of
    /// each source, so that [`ReliableSubscription::moved`] resumes at
    /// another relay of a cluster without loss or duplicate. `floor` (ns
    /// since the Unix epoch): should it move before any message came, what
    /// was stored before this is not wanted (for a start at the latest
    /// message, about when it subscribed; 0 otherwise).
    pub fn with_origins(mut self, floor: u64) -> ReliableSubscription {
        self.positions = Some(Positions::new(floor));
        self
    }

    /// What it holds of each source, if it asked for origins.
    pub fn positions(&self) -> Option<&Positions> {
        self.positions.as_ref()
    }

    /// Makes it a member of reliable queue group `group` of its channel:
    /// the group's members share the channel's messages, each to one of
    /// them, and a message a member leaves without acknowledging goes to
    /// another. A member's offsets are its own (0, 1, 2... for the
    /// messages it was given), not the channel's.
    pub fn join(mut self, group: &str) -> Result<ReliableSubscription, ClientError> {
        check_channel(group)?;
        self.group = Some(group.to_string());
        self.start = StartPosition::Latest;
        Ok(self)
    }

    /// True once the relay has answered.
    pub fn is_active(&self) -> bool {
        self.receiver.is_some()
    }

    /// The offset of the next message expected (resume from here).
    pub fn next_offset(&self) -> Option<u64> {
        self.receiver.as_ref().map(|r| r.cumulative())
    }

    /// The receive side's counters.
    pub fn stats(&self) -> ReceiverStats {
        self.receiver
            .as_ref()
            .map(|r| r.stats())
            .unwrap_or_default()
    }

    /// When [`ReliableSubscription::poll_transmit`] next has something to send.
    pub fn poll_timeout(&self) -> Instant {
        if let Some(hello) = self.proof.poll_timeout() {
            return hello;
        }
        let ack = self.receiver.as_ref().and_then(|r| r.poll_timeout());
        ack.map_or(self.next_subscribe, |a| a.min(self.next_subscribe))
    }

    /// The datagram due at `now`, if any: the subscribe (retry or keepalive)
    /// and the acknowledgement.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.proof.is_proven() {
            return self.proof.poll_hello(now);
        }
        let mut frames_due = Vec::new();
        let ack = self.receiver.as_mut().and_then(|r| r.poll_ack(now));
        let ranges = ack.as_ref().map(|a| wire::encode_ack_ranges(&a.ranges));
        // Messages that came in part: say which pieces are in, so the relay
        // resends only the others. The lowest first: everything waits for
        // them.
        let pieces: Vec<(u64, Vec<u8>)> = match &ack {
            Some(a) => self
                .pieces
                .offsets()
                .into_iter()
                .filter(|&offset| offset >= a.cumulative)
                .take(wire::MAX_PIECES_REPORTED)
                .filter_map(|offset| {
                    let have = self.pieces.received(offset, MAX_ACK_RANGES)?;
                    Some((offset, wire::encode_ack_ranges(&have)))
                })
                .collect(),
            None => Vec::new(),
        };
        for (offset, have) in &pieces {
            frames_due.push(Frame::Ack {
                kind: AckKind::Pieces,
                id: u64::from(self.sub_id),
                cumulative: *offset,
                window: 0,
                ranges: have,
            });
        }
        if let (Some(ack), Some(ranges)) = (&ack, &ranges) {
            frames_due.push(Frame::Ack {
                kind: AckKind::Subscription,
                id: u64::from(self.sub_id),
                cumulative: ack.cumulative,
                window: ack.window,
                ranges,
            });
        }
        if now >= self.next_subscribe {
            self.next_subscribe = now + self.lease.map_or(SUBSCRIBE_RETRY, |l| l / 3);
            // A member asks to be numbered on from where its receiver is,
            // should the relay have let it go; a new one from the start.
            let start = match (&self.group, self.next_offset()) {
                (_, Some(next)) => StartPosition::Offset(next),
                (Some(_), None) => StartPosition::Latest,
                (None, None) => self.start,
            };
            let resume = match start {
                StartPosition::Resume { .. } => wire::ResumeVector::new(&self.resume),
                _ => Some(wire::ResumeVector::EMPTY),
            };
            frames_due.push(Frame::Subscribe {
                sub_id: self.sub_id,
                mode: DeliveryMode::Reliable,
                start,
                channel: &self.channel,
                group: self.group.as_deref(),
                origins: self.positions.is_some(),
                resume: resume.unwrap_or_default(),
            });
        }
        self.proof.stamp_frames(&frames_due)
    }

    /// Reads a datagram from the relay, reporting the subscription, each
    /// message in order, and errors.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        mut on_event: impl FnMut(SubscriptionEvent<'_>),
    ) {
        if self.proof.handle_datagram(now, datagram) {
            self.next_subscribe = now;
        }
        // Before the relay answers, no piece is worth collecting.
        let received_below = self.receiver.as_ref().map_or(u64::MAX, |r| r.cumulative());
        let (sub_id, pieces) = (self.sub_id, &mut self.pieces);
        read_from_relay(
            datagram,
            sub_id,
            pieces,
            received_below,
            |item| match item {
                FromRelay::Subscribed {
                    first_offset,
                    next_offset,
                    lease,
                } => {
                    self.lease = Some(lease);
                    if self.receiver.is_none() {
                        self.receiver = Some(Receiver::new(self.config, first_offset));
                        self.next_subscribe = now + lease / 3;
                        on_event(SubscriptionEvent::Subscribed {
                            first_offset,
                            next_offset,
                        });
                    }
                }
                FromRelay::Message {
                    offset,
                    timestamp,
                    origin,
                    payload,
                } => {
                    // An empty payload for an offset already received still
                    // counts as a duplicate, which asks for an acknowledgement.
                    if let Some(r) = self.receiver.as_mut() {
                        r.on_data(offset, (timestamp, origin, payload.into_owned()), now);
                    }
                }
                // A relay of an earlier build refuses the ORIGIN flag:
                // without origins, then (a move starts at the head).
                FromRelay::Error { code, .. }
                    if code == wire::ErrorCode::MALFORMED
                        && self.receiver.is_none()
                        && self.positions.take().is_some() =>
                {
                    self.resume.clear();
                    if matches!(self.start, StartPosition::Resume { .. }) {
                        self.start = StartPosition::Latest;
                    }
                    self.next_subscribe = now;
                }
                FromRelay::Error { code, reason } => {
                    on_event(SubscriptionEvent::Error { code, reason })
                }
            },
        );
        if let Some(r) = self.receiver.as_mut() {
            // Pieces of the message everything waits for: acknowledge them
            // soon (see poll_transmit), or a lost piece costs the whole
            // message again.
            if !self.pieces.is_empty() {
                r.ack_by(now + self.config.delayed_ack);
            }
            while let Some((offset, (timestamp, origin, payload))) = r.pop() {
                // After a move, the new relay starts a little early: what
                // this subscriber holds of a source is not handed over again.
                if let Some(positions) = self.positions.as_mut()
                    && !positions.take(timestamp, origin)
                {
                    continue;
                }
                on_event(SubscriptionEvent::Message {
                    offset,
                    timestamp,
                    payload: &payload,
                });
            }
        }
    }

    /// The relay is another one now (the client failed over): a token is
    /// asked of it, then the subscription is sent again at once, with a
    /// fresh receiver (each relay has offsets of its own). With origins
    /// (see [`ReliableSubscription::with_origins`]) and every message's
    /// origin known, it resumes after what it holds of each source and
    /// returns true; otherwise it starts at that relay's head.
    pub fn moved(&mut self, now: Instant) -> bool {
        self.proof = AddressProof::new();
        self.next_subscribe = now;
        self.start = StartPosition::Latest;
        self.resume.clear();
        let resumes = self.group.is_none() && self.positions.as_ref().is_some_and(|p| p.is_exact());
        if let Some(positions) = self.positions.as_mut().filter(|_| resumes) {
            self.start = StartPosition::Resume {
                since: positions.since(),
            };
            self.resume = positions.vector();
            positions.resumed();
        }
        self.receiver = None;
        self.lease = None;
        self.pieces = Reassembler::default();
        resumes
    }

    /// The datagram that ends the subscription.
    pub fn unsubscribe(&self) -> Vec<u8> {
        let frame = Frame::Unsubscribe {
            sub_id: self.sub_id,
        };
        self.proof
            .stamp(wire::encode_datagram(&[frame]).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ack(session: u64, cumulative: u64) -> Vec<u8> {
        wire::encode_datagram(&[Frame::Ack {
            kind: AckKind::Publish,
            id: session,
            cumulative,
            window: 4096,
            ranges: &[],
        }])
        .unwrap()
    }

    #[test]
    fn silence_counts_from_the_last_acknowledgement_while_messages_wait() {
        let t = Instant::now();
        let mut p = ReliablePublisher::new(9, "news", ArqConfig::default(), 1400).unwrap();
        assert_eq!(p.silent_since(), None, "nothing sent, nothing awaited");
        p.push(b"a".to_vec()).unwrap();
        assert_eq!(p.poll_transmit(t), Some(AddressProof::hello()));
        assert_eq!(p.silent_since(), Some(t), "the hello awaits its token");
        p.handle_datagram(t, &super::super::token_datagram(), |_, _| {});
        let first = p.poll_transmit(t).expect("the message, with the token");
        assert!(matches!(
            super::super::after_token(&first)[..],
            [Frame::ReliablePublish { seq: 0, .. }]
        ));
        assert!(first.len() <= 1400);
        assert_eq!(p.silent_since(), Some(t));
        p.handle_datagram(t + 5 * MS, &ack(9, 1), |_, _| {});
        assert_eq!(p.silent_since(), None, "all acknowledged");

        // Ten idle seconds are no silence: it counts from the next send.
        let later = t + Duration::from_secs(10);
        p.push(b"b".to_vec()).unwrap();
        p.push(b"c".to_vec()).unwrap();
        assert!(p.poll_transmit(later).is_some());
        assert_eq!(p.silent_since(), Some(later));
        p.handle_datagram(later + 3 * MS, &ack(9, 2), |_, _| {});
        assert_eq!(p.silent_since(), Some(later + 3 * MS));
        // Another session's acknowledgement is not the relay answering us.
        p.handle_datagram(later + 9 * MS, &ack(8, 3), |_, _| {});
        assert_eq!(p.silent_since(), Some(later + 3 * MS));
    }

    #[test]
    fn a_relay_that_refuses_origins_is_asked_again_without_them() {
        let t = Instant::now();
        let mut sub =
            ReliableSubscription::new(4, "news", StartPosition::Latest, ArqConfig::default(), t)
                .unwrap()
                .with_origins(0);
        assert_eq!(sub.poll_transmit(t), Some(AddressProof::hello()));
        sub.handle_datagram(t, &super::super::token_datagram(), |_| {});
        let first = sub.poll_transmit(t).expect("the subscribe");
        assert!(matches!(
            super::super::after_token(&first)[..],
            [Frame::Subscribe { origins: true, .. }]
        ));
        let refusal = wire::encode_datagram(&[Frame::Error {
            code: wire::ErrorCode::MALFORMED,
            reason: "frame type 0x02 has undefined flags 0x02",
        }])
        .unwrap();
        let mut told = Vec::new();
        sub.handle_datagram(t, &refusal, |e| told.push(format!("{e:?}")));
        assert!(told.is_empty(), "handled, not reported: {told:?}");
        assert!(sub.positions().is_none());
        let again = sub.poll_transmit(t).expect("the subscribe again, at once");
        assert!(matches!(
            super::super::after_token(&again)[..],
            [Frame::Subscribe { origins: false, .. }]
        ));
    }
}

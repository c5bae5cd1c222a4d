//! The relay's side of reliable publishing sessions: the receive half of the
//! ARQ per session, holding out-of-order messages and the pieces of a large
//! one until they can be stored, so that each message is appended exactly
//! once and in the session's order; and, for sessions that ended or were
//! known before a restart, how far they had stored.
//!
//! A session never touches the log or a socket: it takes pieces and hands
//! back whole messages to store, and says what to acknowledge. The
//! conductor in [`super`] stores them and sends the acknowledgement.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use foldhash::{HashMap, HashMapExt};

use super::channels::ChannelId;
use crate::reliable::{Ack, ArqConfig, Arrival, Receiver};

/// The allocator's share of one held piece besides its bytes.
pub(super) const PIECE_OVERHEAD: usize = 32;

/// What one message piece held by a session is charged against the
/// sessions' shared budget: its bytes, the allocation and its map entry.
pub(super) fn held_cost(len: usize) -> usize {
    PIECE_OVERHEAD + len
}

/// One RELIABLE_PUBLISH frame's piece of a message.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece<'a> {
    /// Its sequence number.
    pub(super) seq: u64,
    /// The message continues in the next sequence number.
    pub(super) more: bool,
    /// Its bytes.
    pub(super) payload: &'a [u8],
}

/// Memory held by all sessions together, against one budget.
#[derive(Debug)]
pub(super) struct SessionMemory {
    /// What is held, as charged (see [`held_cost`]).
    pub(super) held: usize,
    /// The most `held` may be.
    pub(super) budget: usize,
}

/// A message a session has complete, in order, to be stored.
#[derive(Debug)]
pub(super) struct Ready {
    /// Sequence number of its first piece: where the session goes back to
    /// if it cannot be stored.
    pub(super) first: u64,
    /// Sequence number of its last piece: what its record's mark says.
    pub(super) seq: u64,
    /// Its channel.
    pub(super) channel: ChannelId,
    /// The whole message.
    pub(super) payload: Vec<u8>,
}

/// What taking a piece came to.
#[derive(Debug)]
pub(super) struct Taken {
    /// The session's client tag, for the marks of the ready messages.
    pub(super) client: u64,
    /// New, a duplicate, or past the window.
    pub(super) arrival: Arrival,
    /// Messages now complete and in order, to store in this order.
    pub(super) ready: Vec<Ready>,
    /// The first sequence number of a message that grew past the largest
    /// allowed: it and everything after it were dropped.
    pub(super) too_large: Option<u64>,
}

/// Names a client's address in the log's session marks: the CRC-32 of its
/// IP (as IPv6) above its port. Two clients that chose the same session id
/// are then two sessions; the same client after a relay restart is the
/// same one.
pub(super) fn client_tag(addr: SocketAddr) -> u64 {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    (u64::from(crc32fast::hash(&ip.octets())) << 16) | u64::from(addr.port())
}

/// One reliable publishing session.
#[derive(Debug)]
pub(super) struct PublishSession {
    /// Chosen by the client.
    pub(super) id: u64,
    /// The client's address, as the log's marks name it.
    pub(super) client: u64,
    /// Duplicate suppression and reordering; items are (channel, payload,
    /// the message continues in the next sequence number).
    receiver: Receiver<(ChannelId, Vec<u8>, bool)>,
    /// A large message being put together: its first sequence number,
    /// channel and bytes so far. Not acknowledged until complete and stored.
    partial: Option<(u64, ChannelId, Vec<u8>)>,
    /// What this session's held messages are charged (see [`held_cost`]):
    /// out of order in `receiver`, and the bytes of `partial`.
    held: usize,
    /// Under `--fsync interval`: stored messages not yet known durable, as
    /// (sequence number, channel, offset), in order. Acknowledgements stop at
    /// the first of them.
    not_durable: VecDeque<(u64, ChannelId, u64)>,
    /// Channels this session has named, each holding one `Channel::holds`.
    pub(super) channels: Vec<ChannelId>,
}

impl PublishSession {
    /// True if it holds nothing out of order or in part and every message
    /// it stored is acknowledged or may be (none waits for a sync).
    pub(super) fn is_settled(&self) -> bool {
        self.held == 0 && self.partial.is_none() && self.not_durable.is_empty()
    }

    /// Session `id` of the client tagged `client`, expecting `first` next.
    pub(super) fn new(id: u64, client: u64, arq: ArqConfig, first: u64) -> PublishSession {
        PublishSession {
            id,
            client,
            receiver: Receiver::new(arq, first),
            partial: None,
            held: 0,
            not_durable: VecDeque::new(),
            channels: Vec::new(),
        }
    }

    /// True if the session would keep a piece with this sequence number:
    /// new and inside its window. Otherwise see [`PublishSession::refuse`].
    pub(super) fn would_take(&self, seq: u64) -> bool {
        self.receiver.would_take(seq)
    }

    /// Counts a piece the session does not keep (a duplicate, or past the
    /// window), so its acknowledgement says again what it has.
    pub(super) fn refuse(&mut self, seq: u64, now: std::time::Instant) -> Arrival {
        // Nothing is kept: `would_take` said no, so the item is dropped.
        self.receiver
            .on_data(seq, (usize::MAX, Vec::new(), false), now)
    }

    /// True if the shared budget has room for `piece`, or it needs none: a
    /// whole message in order goes straight to the log, and a duplicate is
    /// not held. Its sender sends a refused one again.
    pub(super) fn admits(&self, piece: Piece<'_>, memory: &SessionMemory) -> bool {
        let next = self.receiver.cumulative();
        let passes_through = piece.seq == next && !piece.more && self.partial.is_none();
        piece.seq < next
            || passes_through
            || memory.held + held_cost(piece.payload.len()) <= memory.budget
    }

    /// Takes a piece for `channel`, and hands back what is now complete.
    pub(super) fn take(
        &mut self,
        piece: Piece<'_>,
        channel: ChannelId,
        now: std::time::Instant,
        memory: &mut SessionMemory,
        max_message_size: usize,
    ) -> Taken {
        let charge = held_cost(piece.payload.len());
        let item = (channel, piece.payload.to_vec(), piece.more);
        let arrival = self.receiver.on_data(piece.seq, item, now);
        if arrival == Arrival::New {
            self.charge(memory, charge as isize);
        }
        // Whole messages, in order: pieces of a large one are joined first.
        // A piece moved into `partial` stays charged for its bytes.
        let mut ready = Vec::new();
        let mut too_large = None;
        while let Some((seq, (ch, bytes, more))) = self.receiver.pop() {
            self.charge(memory, -(PIECE_OVERHEAD as isize));
            let (first, ch, whole) = match self.partial.take() {
                Some((first, partial_ch, mut buf)) => {
                    buf.extend_from_slice(&bytes);
                    (first, partial_ch, buf)
                }
                None => (seq, ch, bytes),
            };
            if whole.len() > max_message_size {
                // Never stored; whatever follows it is not taken either.
                self.charge(memory, -(whole.len() as isize));
                too_large = Some(first);
                break;
            }
            if more {
                self.partial = Some((first, ch, whole));
            } else {
                self.charge(memory, -(whole.len() as isize));
                ready.push(Ready {
                    first,
                    seq,
                    channel: ch,
                    payload: whole,
                });
            }
        }
        Taken {
            client: self.client,
            arrival,
            ready,
            too_large,
        }
    }

    fn charge(&mut self, memory: &mut SessionMemory, bytes: isize) {
        self.held = self.held.wrapping_add_signed(bytes);
        memory.held = memory.held.wrapping_add_signed(bytes);
    }

    /// Goes back to sequence number `first`: everything from there on is
    /// forgotten (and its memory returned), as if it had never arrived. For
    /// a message that could not be stored.
    pub(super) fn rewind(&mut self, first: u64, arq: ArqConfig, memory: &mut SessionMemory) {
        memory.held -= self.held;
        self.held = 0;
        self.partial = None;
        self.receiver = Receiver::new(arq, first);
    }

    /// Notes a stored message whose acknowledgement waits for a sync.
    pub(super) fn stored_not_durable(&mut self, seq: u64, channel: ChannelId, offset: u64) {
        self.not_durable.push_back((seq, channel, offset));
    }

    /// Everything below this sequence number is stored.
    pub(super) fn stored_below(&self) -> u64 {
        self.partial
            .as_ref()
            .map_or(self.receiver.cumulative(), |(first, ..)| *first)
    }

    /// What to acknowledge: cumulative up to what is stored (and durable,
    /// where `durable_to` says a channel's offsets below it are on disk),
    /// selective above it. True as well if the acknowledgement waits for a
    /// sync.
    pub(super) fn ack(&mut self, durable_to: impl Fn(ChannelId) -> u64) -> (Ack, bool) {
        while let Some(&(_, ch, offset)) = self.not_durable.front() {
            if durable_to(ch) > offset {
                self.not_durable.pop_front();
            } else {
                break;
            }
        }
        let received = self.receiver.ack();
        // Pieces of a message not yet complete are held, not stored: report
        // them received (so they are not resent), not acknowledged.
        let stored = self.stored_below();
        let mut ranges = Vec::with_capacity(received.ranges.len() + 2);
        let cumulative = match self.not_durable.front() {
            // Stored, not yet durable: "received, do not resend", but not
            // acknowledged until the sync.
            Some(&(seq, ..)) => seq,
            None => stored,
        };
        ranges.extend(
            [(cumulative, stored), (stored, received.cumulative)]
                .into_iter()
                .filter(|(a, b)| a < b),
        );
        ranges.extend(received.ranges);
        let waits = self.not_durable.front().is_some();
        let ack = Ack {
            cumulative,
            ranges,
            window: received.window,
        };
        (ack, waits)
    }

    /// What the session holds against the shared budget.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// The receiver's counters and window, for STATS.
    pub(super) fn receiver(&self) -> &Receiver<(ChannelId, Vec<u8>, bool)> {
        &self.receiver
    }
}

/// Sessions not open now, by id, with the sequence number below which
/// everything they sent is stored: from the logs' session marks at start,
/// and from sessions that ended. A session that opens again starts there,
/// so a retransmission of a stored message is not stored twice, across a
/// restart too.
#[derive(Debug)]
pub(super) struct StoredSessions {
    /// (client tag, session id) -> stored below.
    stored: HashMap<(u64, u64), u64>,
    /// The keys, oldest first, for the bound.
    order: VecDeque<(u64, u64)>,
    /// The most remembered; past it the oldest half goes (the per-channel
    /// tables in the log still know them after a restart).
    max: usize,
}

impl StoredSessions {
    /// Remembers at most `max` sessions.
    pub(super) fn new(max: usize) -> StoredSessions {
        StoredSessions {
            stored: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    /// Notes that session `session` of `client` stored everything below
    /// `below`.
    pub(super) fn remember(&mut self, client: u64, session: u64, below: u64) {
        let key = (client, session);
        if let Some(known) = self.stored.get_mut(&key) {
            *known = (*known).max(below);
            return;
        }
        if self.stored.len() >= self.max {
            let keep = self.order.split_off(self.order.len() / 2);
            for gone in std::mem::replace(&mut self.order, keep) {
                self.stored.remove(&gone);
            }
        }
        self.order.push_back(key);
        self.stored.insert(key, below);
    }

    /// Where session `session` of `client` starts if it opens again: 0 if
    /// unknown.
    pub(super) fn stored_below(&self, client: u64, session: u64) -> u64 {
        self.stored.get(&(client, session)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn piece(seq: u64, more: bool, payload: &[u8]) -> Piece<'_> {
        Piece { seq, more, payload }
    }

    #[test]
    fn pieces_in_any_order_come_out_as_whole_messages_in_order() {
        let mut memory = SessionMemory {
            held: 0,
            budget: 1 << 20,
        };
        let mut s = PublishSession::new(1, 0, ArqConfig::default(), 0);
        let t = Instant::now();
        let taken = s.take(piece(2, false, b"c"), 0, t, &mut memory, 100);
        assert!(taken.ready.is_empty());
        let taken = s.take(piece(1, false, b"ab2"), 0, t, &mut memory, 100);
        assert!(taken.ready.is_empty(), "1 closes a message 0 opened");
        assert!(memory.held > 0);
        let taken = s.take(piece(0, true, b"ab1-"), 0, t, &mut memory, 100);
        let got: Vec<_> = taken
            .ready
            .iter()
            .map(|r| (r.first, r.seq, r.payload.clone()))
            .collect();
        assert_eq!(got, [(0, 1, b"ab1-ab2".to_vec()), (2, 2, b"c".to_vec())]);
        assert_eq!(memory.held, 0, "nothing held once all is handed out");
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_piece_of_an_incomplete_message_is_acknowledged_only_as_received() {
        let mut memory = SessionMemory {
            held: 0,
            budget: 1 << 20,
        };
        let mut s = PublishSession::new(1, 0, ArqConfig::default(), 0);
        let t = Instant::now();
        s.take(piece(0, false, b"a"), 0, t, &mut memory, 100);
        s.take(piece(1, true, b"b"), 0, t, &mut memory, 100);
        let (ack, waits) = s.ack(|_| 0);
        assert_eq!(
            (ack.cumulative, ack.ranges, waits),
            (1, vec![(1, 2)], false)
        );
        // Under --fsync interval, message 0 stored at offset 5 waits for
        // the sync that makes offset 5 durable.
        s.stored_not_durable(0, 0, 5);
        let (ack, waits) = s.ack(|_| 5);
        assert_eq!(
            (ack.cumulative, ack.ranges, waits),
            (0, vec![(0, 1), (1, 2)], true)
        );
        let (ack, waits) = s.ack(|_| 6);
        assert_eq!((ack.cumulative, waits), (1, false));
    }

    #[test]
    fn the_budget_admits_only_what_passes_straight_through_when_full() {
        let memory = SessionMemory { held: 0, budget: 0 };
        let s = PublishSession::new(1, 0, ArqConfig::default(), 5);
        assert!(s.admits(piece(5, false, b"whole, in order"), &memory));
        assert!(s.admits(piece(4, false, b"a duplicate"), &memory));
        assert!(!s.admits(piece(6, false, b"early"), &memory));
        assert!(!s.admits(piece(5, true, b"first of many"), &memory));
    }

    #[test]
    fn a_rewound_session_forgets_and_frees_what_it_held() {
        let mut memory = SessionMemory {
            held: 0,
            budget: 1 << 20,
        };
        let mut s = PublishSession::new(1, 0, ArqConfig::default(), 0);
        let t = Instant::now();
        s.take(piece(0, true, b"part"), 0, t, &mut memory, 100);
        s.take(piece(3, false, b"early"), 0, t, &mut memory, 100);
        s.rewind(0, ArqConfig::default(), &mut memory);
        assert_eq!(memory.held, 0);
        assert_eq!(s.stored_below(), 0);
    }

    #[test]
    fn remembered_sessions_keep_the_highest_and_stay_bounded() {
        let mut stored = StoredSessions::new(4);
        stored.remember(0, 1, 10);
        stored.remember(0, 1, 7);
        assert_eq!(stored.stored_below(0, 1), 10);
        assert_eq!(stored.stored_below(5, 1), 0, "another client's session 1");
        for s in 2..20 {
            stored.remember(0, s, s);
        }
        assert!(stored.stored.len() <= 4);
        assert_eq!(stored.stored_below(0, 19), 19, "the newest is kept");
        assert_eq!(stored.stored_below(0, 1), 0, "the oldest went");
    }
}

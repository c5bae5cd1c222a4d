//! The table of reliable publishing sessions: opening one within the limits
//! (starting after what the log says it stored before), taking its pieces
//! within the shared memory budget and the channels it may name, what it
//! has stored and when that is durable, its acknowledgements, and what it
//! leaves behind when it ends.
//!
//! Owns the counts, the shared memory budget, how far ended sessions had
//! stored, and the sessions waiting for a sync. The sessions themselves
//! live in their peer (found by address, ended with its lease); the peers,
//! the channel table and the outbox come as arguments. Storing is the
//! conductor's: this hands back whole messages and is told where they went.

use std::net::SocketAddr;
use std::time::Instant;

use super::channels::{ChannelId, Channels, Storage};
use super::counters::Counters;
use super::outbox::Outbox;
use super::peers::{Owner, Peers};
use super::sessions::{self, Piece, PublishSession, SessionMemory, StoredSessions, Taken};
use crate::reliable::{ArqConfig, Arrival};
use crate::wire::{self, Frame};

/// Most channels one reliable publishing session may name: each it names
/// keeps its channel's slot while the session lives.
const MAX_SESSION_CHANNELS: usize = 64;

/// Limits and settings of publishing sessions, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Most sessions across all clients.
    pub(super) max: usize,
    /// Most sessions of one address.
    pub(super) max_per_client: usize,
    /// Bytes all sessions together may hold (out of order, or pieces).
    pub(super) memory: usize,
    /// ARQ settings of the sessions' receive side.
    pub(super) arq: ArqConfig,
}

/// What became of one piece offered to a session.
#[derive(Debug)]
pub(super) enum Offered {
    /// A duplicate or past the window: nothing kept; acknowledge again.
    NotTaken,
    /// No room in the shared budget: dropped (counted), for its sender to
    /// send again.
    OverBudget,
    /// The session cannot open, or names too many channels (counted): why.
    Refused(&'static str),
    /// Kept: with the messages now complete, to store in order.
    Taken(Taken),
}

/// Every reliable publishing session's bookkeeping outside its peer.
#[derive(Debug)]
pub(super) struct Publishing {
    /// The limits this table enforces.
    limits: Limits,
    /// What the sessions hold, against `--session-memory`.
    pub(super) memory: SessionMemory,
    /// Open sessions across all clients.
    pub(super) count: usize,
    /// How far sessions not open now had stored.
    stored: StoredSessions,
    /// Sessions waiting for a sync (or the cluster) before they can be
    /// acknowledged further.
    awaiting_sync: Vec<(SocketAddr, u64)>,
    /// In a cluster: sessions are named by their id alone (see
    /// [`crate::log::CLUSTER_SESSION`]), and what the cluster brought of
    /// one counts as stored.
    pub(super) cluster_wide: bool,
}

impl Publishing {
    /// No sessions yet.
    pub(super) fn new(limits: Limits) -> Publishing {
        Publishing {
            limits,
            memory: SessionMemory {
                held: 0,
                budget: limits.memory,
            },
            count: 0,
            stored: StoredSessions::new(2 * limits.max),
            awaiting_sync: Vec::new(),
            cluster_wide: false,
        }
    }

    /// New limits for new sessions and what they hold (those there are
    /// stay).
    pub(super) fn set_limits(&mut self, limits: Limits) {
        self.memory.budget = limits.memory;
        self.limits = limits;
    }

    /// The index in its peer of session `session` of `from`, opened if new
    /// and the limits allow (counted, and the reason returned, if not).
    ///
    /// A session starts where the client says everything before was
    /// acknowledged (0 for a new one), or after what this relay had stored
    /// of it before it restarted or forgot the session, if that is later:
    /// those messages are acknowledged, never stored twice. What the log
    /// says is per channel: the channel of the piece that opens the session
    /// gives its stored prefix (a session that published to several
    /// channels may store a retransmission for another one twice).
    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        now: Instant,
        from: SocketAddr,
        owner: Owner,
        (session, acked_below): (u64, u64),
        channel: &str,
        channels: &Channels,
        peers: &mut Peers,
        counters: &mut Counters,
    ) -> Result<usize, &'static str> {
        if let Some(i) = peers
            .get(&from)
            .and_then(|p| p.sessions.iter().position(|s| s.id == session))
        {
            return Ok(i);
        }
        let per_client = peers.get(&from).map_or(0, |p| p.sessions.len());
        if per_client >= self.limits.max_per_client {
            counters.dropped_limit += 1;
            return Err("this address holds its maximum number of sessions");
        }
        if let Some(key) = owner.key
            && peers.held_by(key).sessions >= owner.max_sessions
        {
            counters.dropped_limit += 1;
            return Err("this key holds its maximum number of sessions");
        }
        if self.count >= self.limits.max {
            counters.dropped_limit += 1;
            return Err("the relay holds its maximum number of sessions");
        }
        let client = match self.cluster_wide {
            true => crate::log::CLUSTER_SESSION,
            false => sessions::client_tag(from),
        };
        let in_log = channels
            .id(channel)
            .and_then(|id| match &channels[id].storage {
                // Only what this relay stored: a copy on one channel says
                // nothing of what the session left unbridged on another.
                Storage::Open(log) => log.session_last_seq(client, session),
                _ => None,
            });
        let logged = in_log.map_or(0, |last| last.saturating_add(1));
        let stored = self.stored.stored_below(client, session).max(logged);
        self.count += 1;
        counters.sessions_opened += 1;
        let new = PublishSession::new(session, client, self.limits.arq, acked_below.max(stored));
        Ok(peers.add_session(now, from, owner.key, new))
    }

    /// Offers a piece of session `session` of `from` for `channel`,
    /// opening the session if new. The channel is created if the session
    /// keeps the piece; the caller has checked it may be.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn offer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        owner: Owner,
        (session, acked_below): (u64, u64),
        piece: Piece<'_>,
        channel: &str,
        max_message_size: usize,
        channels: &mut Channels,
        peers: &mut Peers,
        counters: &mut Counters,
    ) -> Offered {
        let opened = self.open(
            now,
            from,
            owner,
            (session, acked_below),
            channel,
            channels,
            peers,
            counters,
        );
        let index = match opened {
            Ok(index) => index,
            Err(reason) => return Offered::Refused(reason),
        };
        let Some(s) = peers.get_mut(&from).map(|p| &mut p.sessions[index]) else {
            return Offered::NotTaken;
        };
        if !s.would_take(piece.seq) {
            // Nothing is kept, so nothing (no channel, no memory) is spent.
            if s.refuse(piece.seq, now) == Arrival::Duplicate {
                counters.duplicates_dropped += 1;
            }
            return Offered::NotTaken;
        }
        if !s.admits(piece, &self.memory) {
            counters.dropped_limit += 1;
            return Offered::OverBudget;
        }
        let known = channels.id(channel);
        if known.is_none_or(|id| !s.channels.contains(&id))
            && s.channels.len() >= MAX_SESSION_CHANNELS
        {
            counters.dropped_limit += 1;
            return Offered::Refused("this session names its maximum number of channels");
        }
        let id = known.unwrap_or_else(|| channels.find_or_create(channel));
        if !s.channels.contains(&id) {
            // Held messages name their channel by id: it must not be
            // forgotten (and its slot reused) while this session may append.
            s.channels.push(id);
            channels[id].holds += 1;
        }
        let taken = s.take(piece, id, now, &mut self.memory, max_message_size);
        if taken.arrival == Arrival::Duplicate {
            counters.duplicates_dropped += 1;
        }
        Offered::Taken(taken)
    }

    /// Notes that message `seq` of the session was stored at `offset` of
    /// `channel` but is not durable yet: its acknowledgement waits for it.
    pub(super) fn stored_not_durable(
        &mut self,
        peers: &mut Peers,
        from: SocketAddr,
        session: u64,
        seq: u64,
        channel: ChannelId,
        offset: u64,
    ) {
        if let Some(s) = session_mut(peers, from, session) {
            s.stored_not_durable(seq, channel, offset);
        }
    }

    /// Takes the session back to sequence number `first` (a message that
    /// was not stored: its sender sends it again).
    pub(super) fn rewind(&mut self, peers: &mut Peers, from: SocketAddr, session: u64, first: u64) {
        if let Some(s) = session_mut(peers, from, session) {
            s.rewind(first, self.limits.arq, &mut self.memory);
        }
    }

    /// Queues the session's acknowledgement: cumulative up to what is
    /// stored (and durable, under `--fsync interval`), selective above it.
    pub(super) fn ack(
        &mut self,
        from: SocketAddr,
        session: u64,
        acked_to: impl Fn(ChannelId) -> u64,
        peers: &mut Peers,
        outbox: &mut Outbox,
    ) {
        let Some(s) = session_mut(peers, from, session) else {
            return;
        };
        let (ack, waits) = s.ack(acked_to);
        if waits && !self.awaiting_sync.contains(&(from, session)) {
            self.awaiting_sync.push((from, session));
        }
        let raw = wire::encode_ack_ranges(&ack.ranges);
        outbox.push_frame(
            from,
            &Frame::Ack {
                kind: wire::AckKind::Publish,
                id: session,
                cumulative: ack.cumulative,
                window: ack.window,
                ranges: &raw,
            },
        );
    }

    /// The sessions that waited for a sync, to acknowledge again now that
    /// one finished.
    pub(super) fn take_awaiting_sync(&mut self) -> Vec<(SocketAddr, u64)> {
        std::mem::take(&mut self.awaiting_sync)
    }

    /// Returns what a session that is gone held: its memory, its slot, its
    /// claim on the channels it appended to. A client that comes back to it
    /// starts after what it stored.
    pub(super) fn release(
        &mut self,
        s: PublishSession,
        channels: &mut Channels,
        counters: &mut Counters,
    ) {
        self.memory.held -= s.held();
        self.count -= 1;
        self.stored.remember(s.client, s.id, s.stored_below());
        for id in s.channels {
            channels[id].holds -= 1;
            channels.forget_idle(id, counters);
        }
    }
}

/// Session `session` of `from`, if open.
fn session_mut(peers: &mut Peers, from: SocketAddr, session: u64) -> Option<&mut PublishSession> {
    peers
        .get_mut(&from)?
        .sessions
        .iter_mut()
        .find(|s| s.id == session)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max: 3,
            max_per_client: 2,
            memory: 1 << 20,
            arq: ArqConfig::default(),
        }
    }

    fn piece(seq: u64, more: bool, payload: &[u8]) -> Piece<'_> {
        Piece { seq, more, payload }
    }

    #[test]
    fn sessions_open_within_the_limits_and_release_what_they_held() {
        let mut publishing = Publishing::new(limits());
        let mut channels = Channels::new(10);
        let mut peers = Peers::new(Duration::from_secs(10));
        let mut counters = Counters::default();
        let t = Instant::now();
        let alice: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let mut offer = |p: &mut Publishing, peers: &mut Peers, session, piece| {
            let c = &mut channels;
            p.offer(
                t,
                alice,
                Owner::ADDRESS,
                (session, 0),
                piece,
                "news",
                1 << 16,
                c,
                peers,
                &mut counters,
            )
        };
        // In order, whole: ready to store at once.
        let Offered::Taken(taken) = offer(&mut publishing, &mut peers, 1, piece(0, false, b"a"))
        else {
            panic!("a new session takes its first piece");
        };
        assert_eq!(taken.ready.len(), 1);
        // The first piece of a large message is held, and charged.
        assert!(matches!(
            offer(&mut publishing, &mut peers, 2, piece(0, true, b"bb")),
            Offered::Taken(t) if t.ready.is_empty()
        ));
        assert!(publishing.memory.held > 0);
        // A third session of the same address is over its limit.
        assert!(matches!(
            offer(&mut publishing, &mut peers, 3, piece(0, false, b"c")),
            Offered::Refused(_)
        ));
        assert_eq!(publishing.count, 2);
        let news = channels.id("news").unwrap();
        assert_eq!(channels[news].holds, 2);
        let peer = peers.remove(&alice).unwrap();
        for s in peer.sessions {
            publishing.release(s, &mut channels, &mut counters);
        }
        assert_eq!(publishing.count, 0);
        assert_eq!(publishing.memory.held, 0);
        assert_eq!(counters.dropped_limit, 1);
        // Nothing was stored in it, so with the holds gone it is forgotten.
        assert_eq!(channels.id("news"), None);
    }
}

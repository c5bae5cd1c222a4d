//! The relay core: channels and their logs, subscriptions as leases, fan-out,
//! replay from the log, plain-UDP ingest and egress, and the counters that say
//! what happened.
//!
//! It owns no socket and reads no clock; its only I/O is appending to and
//! reading from its channels' logs (memory writes and reads, except the syncs
//! it asks the driver to run). Everything a peer sends is hostile until
//! decoded: bad input becomes a counted drop (and a rate-limited ERROR reply
//! where the sender speaks the protocol), never a panic.
//!
//! # Calling it
//!
//! As quinn-proto's `Connection` is driven, in this order:
//!
//! 1. `handle_*` with what happened: [`Relay::handle_datagram`] and
//!    [`Relay::handle_raw`] for each datagram read, [`Relay::handle_timeout`]
//!    once [`Relay::poll_timeout`] is reached, [`Relay::handle_sync_done`]
//!    when a background sync finished.
//! 2. `poll_*` until `None`: [`Relay::poll_transmit`] for the datagrams to
//!    send (after every batch of input: frames for one destination are
//!    packed together until it is called), [`Relay::poll_sync`] for the syncs
//!    to run off the event loop.
//! 3. [`Relay::poll_timeout`] for when to call again, if nothing arrives.
//!
//! # The pieces
//!
//! `Relay` is the conductor: it decodes, checks limits, and wires together
//! pieces that each own their state, take what they need as arguments, say
//! what happened, and are tested alone:
//!
//! - `channels`: the channel table (by name, within the limit, idle ones
//!   forgotten), each channel's storage, subscribers and raw egress.
//! - `sessions`: reliable publishing sessions (reordering, pieces of large
//!   messages, what to acknowledge) and how far ended ones had stored.
//! - `reassembly`: unreliable messages arriving in pieces, within a budget.
//! - `delivery`: fan-out of a stored message, replay, and the reliable
//!   subscriber's sends (all read from the log).
//! - `peers`: client addresses holding state, and their leases.
//! - `durability`: when appended records are synced, and retention.
//! - `replies`: the reply budget and the relay's own addresses.
//! - `stats`: the paged STATS answer.
//! - `outbox`: datagrams packed per destination; `counters`: what happened.

mod channels;
mod counters;
mod delivery;
mod durability;
mod outbox;
mod peers;
mod reassembly;
mod replies;
mod sessions;
mod stats;

pub use crate::time::Now;
pub use counters::Counters;
pub use durability::SyncRequest;
pub use outbox::{Payload, Transmit};
pub use replies::OwnAddressError;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::RelayConfig;
use crate::log::{DataDir, LogError, SessionMark};
use crate::reliable::{ArqConfig, Sender};
use crate::wire::{self, DeliveryMode, ErrorCode, Frame, StartPosition, WireError};
use channels::{Channel, ChannelId, Channels, Refused, Storage, Subscriber, subscriber};
use durability::Durability;
use outbox::Outbox;
use peers::{Peer, Peers};
use reassembly::{Added, Reassembler};
use replies::{OwnAddresses, TokenBucket, truncate_utf8};
use sessions::{Piece, PublishSession, SessionMemory, StoredSessions};

/// Most channels one reliable publishing session may name: each it names
/// keeps its channel's slot while the session lives.
const MAX_SESSION_CHANNELS: usize = 64;

/// How often replaying subscriptions are fed from the log.
const REPLAY_TICK: Duration = Duration::from_millis(1);

/// The relay's whole state, driven by calls that carry the time.
#[derive(Debug)]
pub struct Relay {
    /// Lease length handed to subscribers.
    lease: Duration,
    /// Largest payload accepted.
    max_message_size: usize,
    /// Limit on all subscriptions.
    max_subscriptions: usize,
    /// Limit on one address's subscriptions.
    max_subscriptions_per_client: usize,
    /// Every channel, by id and by name.
    channels: Channels,
    /// Addresses holding subscriptions or sessions, with their leases.
    peers: Peers,
    /// Total live subscriptions.
    subscription_count: usize,
    /// Channel of each raw ingest port, by the driver's index.
    raw_in: Vec<ChannelId>,
    /// Limits replies that anyone can ask for from any source address:
    /// errors and STATS pages.
    error_replies: TokenBucket,
    /// The relay's own socket addresses, never sent to.
    own: OwnAddresses,
    /// Datagrams waiting to be sent.
    outbox: Outbox,
    /// What happened, for operators.
    counters: Counters,
    /// The locked data directory, where new channel logs are created.
    data_dir: DataDir,
    /// When appended records are synced, and old segments deleted.
    durability: Durability,
    /// Subscriptions behind their channel's head, fed from the log in turn:
    /// (channel, subscriber address, sub_id).
    replay_queue: VecDeque<(ChannelId, SocketAddr, u32)>,
    /// Bytes of deliveries one replaying subscription gets per tick.
    replay_budget: usize,
    /// ARQ settings for reliable sessions and subscriptions.
    arq: ArqConfig,
    /// Sessions waiting for a sync before they can be acknowledged further.
    awaiting_sync: Vec<(SocketAddr, u64)>,
    /// Unreliable messages arriving in pieces.
    reassembly: Reassembler,
    /// What publishing sessions hold, against `--session-memory`.
    session_memory: SessionMemory,
    /// Reliable publishing sessions across all clients.
    session_count: usize,
    /// The most `session_count` may be.
    max_sessions: usize,
    /// How far sessions not open now had stored.
    stored_sessions: StoredSessions,
    /// Deadlines of reliable subscriptions' ARQ timers, earliest first:
    /// (when, subscriber, sub_id, channel). Pushed whenever a deadline
    /// changes; an entry that is no longer the sender's deadline is skipped.
    arq_timers: BinaryHeap<Reverse<(Instant, SocketAddr, u32, ChannelId)>>,
    /// When the next replay tick is due, while the queue is not empty.
    next_replay: Option<Instant>,
}

impl Relay {
    /// Opens (and locks) the data directory, recovers every channel in it,
    /// and creates the channels named by the raw ports. A channel whose log
    /// cannot be trusted is kept, refused to clients, and logged.
    pub fn open(config: &RelayConfig, now: Now) -> Result<Relay, LogError> {
        let data_dir = DataDir::open(&config.data_dir, config.log.clone())?;
        let opened = data_dir.open_channels(&config.truncate_corrupt)?;
        let retention = config.log.retain_bytes.is_some() || config.log.retain_age.is_some();
        let mut relay = Relay {
            lease: config.lease,
            channels: Channels::new(config.max_channels),
            max_message_size: config.max_message_size,
            max_subscriptions: config.max_subscriptions,
            max_subscriptions_per_client: config.max_subscriptions_per_client,
            peers: Peers::new(config.lease),
            subscription_count: 0,
            raw_in: Vec::new(),
            error_replies: TokenBucket::new(config.error_replies_per_sec),
            own: OwnAddresses::default(),
            outbox: Outbox::new(config.datagram_size),
            counters: Counters::default(),
            data_dir,
            durability: Durability::new(config.log.fsync, retention.then_some(now.instant)),
            replay_queue: VecDeque::new(),
            replay_budget: (config.replay_rate / 1000).max(1) as usize,
            arq: config.arq,
            awaiting_sync: Vec::new(),
            arq_timers: BinaryHeap::new(),
            reassembly: Reassembler::new(config.reassembly_memory, config.max_message_size),
            session_memory: SessionMemory {
                held: 0,
                budget: config.session_memory,
            },
            session_count: 0,
            max_sessions: config.max_sessions,
            stored_sessions: StoredSessions::new(2 * config.max_sessions),
            next_replay: None,
        };
        for opened in opened {
            let storage = Storage::recovered(&opened.name, opened.log);
            let id = relay.find_or_create_channel(&opened.name);
            relay.channels[id].storage = storage;
        }
        // Channels named in the configuration exist from the start, whatever
        // the limit on channels that clients create.
        for (_, name) in &config.raw_in {
            let id = relay.find_or_create_channel(name);
            relay.channels[id].pinned = true;
            relay.raw_in.push(id);
        }
        for (name, addr) in &config.raw_out {
            let id = relay.find_or_create_channel(name);
            relay.channels[id].pinned = true;
            relay.channels[id].raw_out.push(*addr);
        }
        Ok(relay)
    }

    /// Tells the core the addresses of the relay's own sockets (and, where
    /// one is bound to every address, the machine's addresses), so that it
    /// never sends to them: a datagram claiming to come from one is dropped
    /// unanswered, and a raw egress to one is refused.
    pub fn set_own_addresses(
        &mut self,
        sockets: Vec<SocketAddr>,
        local_ips: Vec<IpAddr>,
    ) -> Result<(), OwnAddressError> {
        self.own = OwnAddresses { sockets, local_ips };
        for channel in self.channels.iter() {
            if let Some(&addr) = channel.raw_out.iter().find(|a| self.own.contains(**a)) {
                return Err(OwnAddressError {
                    channel: channel.name.to_string(),
                    addr,
                });
            }
        }
        Ok(())
    }

    /// What happened so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// For the driver to count what happens at the socket.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Live subscriptions across all clients.
    pub fn subscription_count(&self) -> usize {
        self.subscription_count
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.channels.count()
    }

    /// The offset the channel's next message will get, if the channel exists.
    pub fn next_offset(&self, channel: &str) -> Option<u64> {
        self.channels.next_offset(channel)
    }

    /// Channels that cannot be served, with the reason.
    pub fn failed_channels(&self) -> Vec<(&str, &str)> {
        self.channels
            .iter()
            .filter_map(|c| match &c.storage {
                Storage::Failed(reason) => Some((&*c.name, reason.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Handles one datagram that arrived at the protocol socket from `from`.
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, datagram: &[u8]) {
        self.counters.datagrams_received += 1;
        self.counters.bytes_received += datagram.len() as u64;
        if self.own.contains(from) {
            // Forged, or a loop: any answer would come back to us.
            self.counters.dropped_own_address += 1;
            return;
        }
        self.peers.heard_from(from, now.instant);
        let frames = match wire::decode_datagram(datagram) {
            Ok(frames) => frames,
            Err(WireError::BadMagic) => {
                // Not our protocol at all: answering could aim us at a third party.
                self.counters.dropped_not_protocol += 1;
                return;
            }
            Err(e @ WireError::UnsupportedVersion(_)) => {
                self.counters.dropped_bad_version += 1;
                self.reply_error(now, from, ErrorCode::UNSUPPORTED_VERSION, &e.to_string());
                return;
            }
            Err(e @ WireError::UnsupportedFlags(_)) => {
                self.counters.dropped_unsupported += 1;
                self.reply_error(now, from, ErrorCode::UNSUPPORTED, &e.to_string());
                return;
            }
            Err(_) => {
                self.counters.dropped_malformed += 1;
                return;
            }
        };
        for frame in frames {
            match frame {
                Ok(frame) => {
                    self.counters.frames_received += 1;
                    self.handle_frame(now, from, frame);
                }
                Err(e) => {
                    self.counters.dropped_malformed += 1;
                    self.reply_error(now, from, ErrorCode::MALFORMED, &e.to_string());
                    break;
                }
            }
        }
    }

    /// Handles one datagram that arrived at raw ingest port `index` (in the
    /// order of the configuration's `raw_in`): it becomes one message.
    pub fn handle_raw(&mut self, now: Now, index: usize, datagram: &[u8]) {
        self.counters.raw_received += 1;
        self.counters.bytes_received += datagram.len() as u64;
        let Some(&channel) = self.raw_in.get(index) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if datagram.len() > self.max_message_size {
            self.counters.dropped_too_large += 1;
            return;
        }
        // A plain sender cannot be told why; the drop is counted.
        let _ = self.append(now, channel, None, datagram);
    }

    /// The earliest time at which [`Relay::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lease = self.peers.next_deadline();
        let arq = self.arq_timers.peek().map(|Reverse((at, ..))| *at);
        let pieces = self.reassembly.next_deadline();
        [
            lease,
            arq,
            pieces,
            self.next_replay,
            self.durability.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Does whatever is due at `now`: lapsed leases, replay, interval sync,
    /// retention.
    pub fn handle_timeout(&mut self, now: Now) {
        self.expire_leases(now.instant);
        self.counters.fragments_expired += self.reassembly.expire(now.instant);
        while let Some(&Reverse((at, peer, sub_id, ch))) = self.arq_timers.peek() {
            if at > now.instant {
                break;
            }
            self.arq_timers.pop();
            let live = subscriber(&mut self.channels[ch].subscribers, peer, sub_id)
                .filter(|s| s.timer_at == Some(at));
            let Some(sub) = live else {
                continue; // stale: the subscription has a later entry, or is gone
            };
            sub.timer_at = None;
            if let Some(arq) = sub.arq.as_deref_mut()
                && arq.poll_timeout().is_some_and(|t| t <= now.instant)
            {
                arq.handle_timeout(now.instant);
            }
            // Sends what is due and arms the timer again.
            self.pump(now, ch, peer, sub_id);
        }
        if self.next_replay.is_some_and(|at| at <= now.instant) {
            self.replay_tick();
            self.next_replay = (!self.replay_queue.is_empty()).then(|| now.instant + REPLAY_TICK);
        }
        self.durability
            .handle_timeout(now, &mut self.channels, &mut self.counters);
    }

    fn expire_leases(&mut self, now: Instant) {
        while let Some(addr) = self.peers.pop_lapsed(now) {
            let expired = self.remove_peer(addr);
            self.counters.subscriptions_expired += expired as u64;
        }
    }

    /// The next sync to run in the background, if any.
    pub fn poll_sync(&mut self) -> Option<SyncRequest> {
        self.durability.poll_sync()
    }

    /// Reports how a background sync ended. A failed sync stops the channel:
    /// its writes are refused from then on, never retried into silence.
    pub fn handle_sync_done(&mut self, channel: usize, result: Result<u64, LogError>) {
        if self
            .durability
            .handle_sync_done(&mut self.channels, &mut self.counters, channel, result)
        {
            for (addr, session) in std::mem::take(&mut self.awaiting_sync) {
                self.ack_session(addr, session);
            }
        }
    }

    /// Syncs every channel's unsynced records now, whatever the mode: for a
    /// clean shutdown.
    pub fn sync_all(&mut self) {
        self.durability
            .sync_all(&mut self.channels, &mut self.counters);
    }

    /// Feeds each subscription that is behind its channel's head up to
    /// its budget of stored messages, read straight from the log.
    fn replay_tick(&mut self) {
        for _ in 0..self.replay_queue.len() {
            let Some((id, peer, sub_id)) = self.replay_queue.pop_front() else {
                break;
            };
            let Channel {
                storage,
                subscribers,
                name,
                ..
            } = &mut self.channels[id];
            let sub = subscriber(subscribers, peer, sub_id).filter(|s| s.replaying);
            let Some(sub) = sub else {
                continue; // unsubscribed or expired meanwhile
            };
            let Storage::Open(log) = storage else {
                sub.replaying = false;
                continue;
            };
            let fed = delivery::replay(
                sub,
                log,
                &mut self.outbox,
                &mut self.counters,
                self.replay_budget,
            );
            match fed {
                Ok(true) => self.replay_queue.push_back((id, peer, sub_id)),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(channel = %name, "not serving channel: {e}");
                    self.counters.log_errors += 1;
                    *storage = Storage::Failed(e.to_string());
                }
            }
        }
    }

    /// The next datagram to send, if any. Call until `None` after every batch
    /// of input: frames for one destination are packed into one datagram until
    /// this is called.
    ///
    /// Under `--fsync always`, records appended since the last call are
    /// synced first, so nothing that depends on them leaves before they are
    /// on disk; one sync covers the whole batch (group commit).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.durability
            .before_send(&mut self.channels, &mut self.counters);
        self.outbox.pop()
    }

    fn handle_frame(&mut self, now: Now, from: SocketAddr, frame: Frame<'_>) {
        match frame {
            Frame::Publish { channel, payload } => self.publish(now, from, channel, payload),
            Frame::Subscribe {
                sub_id,
                mode,
                start,
                channel,
            } => self.subscribe(now, from, sub_id, mode, start, channel),
            Frame::Unsubscribe { sub_id } => {
                if self.unsubscribe(from, sub_id) {
                    self.counters.subscriptions_closed += 1;
                } else {
                    self.counters.dropped_unknown_subscription += 1;
                    self.reply_error(
                        now,
                        from,
                        ErrorCode::UNKNOWN_SUBSCRIPTION,
                        &format!("no subscription {sub_id} for this address"),
                    );
                }
            }
            Frame::ReliablePublish {
                session,
                seq,
                acked_below,
                more,
                channel,
                payload,
            } => {
                let piece = Piece { seq, more, payload };
                self.reliable_publish(now, from, session, acked_below, channel, piece)
            }
            Frame::Fragment {
                msg_id,
                index,
                count,
                channel,
                chunk,
            } => self.fragment(now, from, msg_id, index, count, channel, chunk),
            Frame::Ping { nonce } => {
                self.outbox.push_frame(from, &Frame::Pong { nonce });
            }
            Frame::StatsRequest { cursor, padding } => self.stats(now, from, cursor, padding),
            Frame::Ack {
                kind: kind @ (wire::AckKind::Subscription | wire::AckKind::Pieces),
                id,
                cumulative,
                window,
                ranges,
            } => self.subscription_ack(now, from, kind, id, cumulative, window, ranges),
            // Frames a relay sends, never receives. No reply: answering an
            // ERROR with an ERROR could loop between two relays forever.
            Frame::Subscribed { .. }
            | Frame::Ack { .. }
            | Frame::Deliver { .. }
            | Frame::DeliverFragment { .. }
            | Frame::Pong { .. }
            | Frame::Error { .. }
            | Frame::Stats { .. } => self.counters.dropped_unexpected += 1,
        }
    }

    /// The channel a client's message of `len` bytes goes to, or `None`
    /// (counted, and the client told why) if it is too large or the channel
    /// cannot be created.
    fn accept_message(
        &mut self,
        now: Now,
        from: SocketAddr,
        channel: &str,
        len: usize,
    ) -> Option<ChannelId> {
        if len > self.max_message_size {
            self.refuse_too_large(now, from, len);
            return None;
        }
        if !self.channel_allowed(channel) {
            self.refuse_channel(now, from);
            return None;
        }
        Some(self.find_or_create_channel(channel))
    }

    /// True if a client may name `channel`: it exists, or the channel
    /// limit has room for it.
    fn channel_allowed(&self, channel: &str) -> bool {
        self.channels.allowed(channel)
    }

    fn refuse_channel(&mut self, now: Now, from: SocketAddr) {
        self.counters.dropped_limit += 1;
        self.reply_error(now, from, ErrorCode::LIMIT_REACHED, "too many channels");
    }

    fn refuse_too_large(&mut self, now: Now, from: SocketAddr, len: usize) {
        self.counters.dropped_too_large += 1;
        let reason = format!(
            "message of {len} bytes exceeds the maximum of {}",
            self.max_message_size
        );
        self.reply_error(now, from, ErrorCode::TOO_LARGE, &reason);
    }

    fn publish(&mut self, now: Now, from: SocketAddr, channel: &str, payload: &[u8]) {
        let Some(id) = self.accept_message(now, from, channel, payload.len()) else {
            return;
        };
        match self.append(now, id, None, payload) {
            Ok(_) => self.counters.messages_published += 1,
            Err(reason) => self.reply_error(now, from, ErrorCode::UNAVAILABLE, &reason),
        }
    }

    /// Appends `payload` to the channel's log, then sends it to every live
    /// subscriber and raw egress of the channel. On error nothing was stored
    /// or sent; the drop is counted and the reason returned.
    fn append(
        &mut self,
        now: Now,
        id: ChannelId,
        session: Option<SessionMark>,
        payload: &[u8],
    ) -> Result<u64, String> {
        let channel = &mut self.channels[id];
        let stored = channel.store(&self.data_dir, now.unix_nanos, session, payload);
        let offset = stored.map_err(|refused| {
            match refused {
                Refused::NoSpace(_) => self.counters.dropped_log_full += 1,
                Refused::NotServed(_) => self.counters.dropped_unavailable += 1,
                Refused::Failed(_) => self.counters.dropped_log_error += 1,
            }
            refused.to_string()
        })?;
        self.durability.appended(now.instant, id);
        let reliable = delivery::fan_out(
            channel,
            offset,
            now.unix_nanos,
            payload,
            &mut self.outbox,
            &mut self.counters,
        );
        for (sub_id, peer) in reliable {
            self.pump(now, id, peer, sub_id);
        }
        Ok(offset)
    }

    fn reliable_publish(
        &mut self,
        now: Now,
        from: SocketAddr,
        session: u64,
        acked_below: u64,
        channel: &str,
        piece: Piece<'_>,
    ) {
        if piece.payload.len() > self.max_message_size {
            self.refuse_too_large(now, from, piece.payload.len());
            return;
        }
        if !self.channel_allowed(channel) {
            self.refuse_channel(now, from);
            return;
        }
        let Some(index) = self.session_index(now, from, session, acked_below, channel) else {
            return;
        };
        let s = &mut self.peers.get_mut(&from).expect("opened above").sessions[index];
        if !s.would_take(piece.seq) {
            // A duplicate, or past the window: nothing is kept, so nothing
            // (no channel, no memory) is spent; the acknowledgement says
            // again what the session has.
            if s.refuse(piece.seq, now.instant) == crate::reliable::Arrival::Duplicate {
                self.counters.duplicates_dropped += 1;
            }
            self.ack_session(from, session);
            return;
        }
        if !s.admits(piece, &self.session_memory) {
            self.counters.dropped_limit += 1;
            return;
        }
        let known = self.channels.id(channel);
        if known.is_none_or(|id| !s.channels.contains(&id))
            && s.channels.len() >= MAX_SESSION_CHANNELS
        {
            self.counters.dropped_limit += 1;
            let reason = "this session names its maximum number of channels";
            self.reply_error(now, from, ErrorCode::LIMIT_REACHED, reason);
            return;
        }
        let id = self.find_or_create_channel(channel);
        let Some(s) = self.peers.get_mut(&from).map(|p| &mut p.sessions[index]) else {
            return;
        };
        if !s.channels.contains(&id) {
            // Held messages name their channel by id: it must not be
            // forgotten (and its slot reused) while this session may append.
            s.channels.push(id);
            self.channels[id].holds += 1;
        }
        let taken = s.take(
            piece,
            id,
            now.instant,
            &mut self.session_memory,
            self.max_message_size,
        );
        if taken.arrival == crate::reliable::Arrival::Duplicate {
            self.counters.duplicates_dropped += 1;
        }
        for ready in taken.ready {
            let mark = SessionMark {
                client: sessions::client_tag(from),
                session,
                seq: ready.seq,
            };
            match self.append(now, ready.channel, Some(mark), &ready.payload) {
                Ok(offset) => {
                    self.counters.messages_published += 1;
                    if self.durability.acks_wait_for_sync()
                        && let Some(s) = self.session_mut(from, session)
                    {
                        s.stored_not_durable(ready.seq, ready.channel, offset);
                    }
                }
                Err(reason) => {
                    // Not stored, so never acknowledged: the session goes
                    // back to this message, which its sender will resend.
                    self.reply_error(now, from, ErrorCode::UNAVAILABLE, &reason);
                    self.rewind_session(from, session, ready.first);
                    self.ack_session(from, session);
                    return;
                }
            }
        }
        if let Some(first) = taken.too_large {
            self.refuse_too_large(now, from, self.max_message_size + 1);
            self.rewind_session(from, session, first);
        }
        self.ack_session(from, session);
    }

    /// Session `session` of `from`, if open.
    fn session_mut(&mut self, from: SocketAddr, session: u64) -> Option<&mut PublishSession> {
        self.peers
            .get_mut(&from)?
            .sessions
            .iter_mut()
            .find(|s| s.id == session)
    }

    /// Takes session `session` of `from` back to sequence number `first`.
    fn rewind_session(&mut self, from: SocketAddr, session: u64, first: u64) {
        let arq = self.arq;
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if let Some(s) = peer.sessions.iter_mut().find(|s| s.id == session) {
            s.rewind(first, arq, &mut self.session_memory);
        }
    }

    /// The index of session `session` of `from`, opened if new and the
    /// session limits allow (refused and counted otherwise).
    fn session_index(
        &mut self,
        now: Now,
        from: SocketAddr,
        session: u64,
        acked_below: u64,
        channel: &str,
    ) -> Option<usize> {
        if let Some(i) = self
            .peers
            .get(&from)
            .and_then(|p| p.sessions.iter().position(|s| s.id == session))
        {
            return Some(i);
        }
        let per_client = self.peers.get(&from).map_or(0, |p| p.sessions.len());
        if self.session_count >= self.max_sessions
            || per_client >= self.max_subscriptions_per_client
        {
            self.counters.dropped_limit += 1;
            let reason = if per_client >= self.max_subscriptions_per_client {
                "this address holds its maximum number of sessions"
            } else {
                "the relay holds its maximum number of sessions"
            };
            self.reply_error(now, from, ErrorCode::LIMIT_REACHED, reason);
            return None;
        }
        // A session starts where the client says everything before was
        // acknowledged (0 for a new one), or after what this relay had
        // stored of it before it restarted or forgot the session, if that
        // is later: those messages are acknowledged, never stored twice.
        // What the log says is per channel: the channel of this piece gives
        // the session's stored prefix (a session that published to several
        // channels may store a retransmission for another one twice).
        let client = sessions::client_tag(from);
        let in_log = self
            .channels
            .id(channel)
            .and_then(|id| match &self.channels[id].storage {
                Storage::Open(log) => log.session_last_seq(client, session),
                _ => None,
            })
            .map_or(0, |last| last.saturating_add(1));
        let stored = self
            .stored_sessions
            .stored_below(client, session)
            .max(in_log);
        let arq = self.arq;
        self.session_count += 1;
        self.counters.sessions_opened += 1;
        let peer = self.peer_entry(now.instant, from);
        peer.sessions.push(PublishSession::new(
            session,
            client,
            arq,
            acked_below.max(stored),
        ));
        Some(peer.sessions.len() - 1)
    }

    /// A piece of an unreliable message too large for one datagram: held
    /// (within `--reassembly-memory`) until all pieces are in, then
    /// published as one message.
    #[allow(clippy::too_many_arguments)]
    fn fragment(
        &mut self,
        now: Now,
        from: SocketAddr,
        msg_id: u32,
        index: u16,
        count: u16,
        channel: &str,
        chunk: &[u8],
    ) {
        let allowed = self.channel_allowed(channel);
        let piece = reassembly::Piece {
            from,
            msg_id,
            index,
            count,
            channel,
            chunk,
        };
        match self.reassembly.add(now.instant, piece, allowed) {
            Added::Held | Added::Duplicate => {}
            Added::Malformed => self.counters.dropped_malformed += 1,
            Added::OverBudget => self.counters.dropped_limit += 1,
            Added::ChannelRefused => self.refuse_channel(now, from),
            Added::TooLarge(len) => self.refuse_too_large(now, from, len),
            Added::Complete { channel, message } => {
                let Some(id) = self.accept_message(now, from, &channel, message.len()) else {
                    return;
                };
                match self.append(now, id, None, &message) {
                    Ok(_) => self.counters.messages_published += 1,
                    Err(reason) => self.reply_error(now, from, ErrorCode::UNAVAILABLE, &reason),
                }
            }
        }
    }

    /// Returns what a session that is gone held: its memory, its slot, its
    /// claim on the channels it appended to. A client that comes back to
    /// it starts after what it stored.
    fn release_session(&mut self, s: PublishSession) {
        self.session_memory.held -= s.held();
        self.session_count -= 1;
        self.stored_sessions
            .remember(s.client, s.id, s.stored_below());
        for id in s.channels {
            self.channels[id].holds -= 1;
            self.forget_if_idle(id);
        }
    }

    /// Sends session `session` of `from` its acknowledgement: cumulative up
    /// to what is stored (and durable, under `--fsync interval`), selective
    /// above it.
    fn ack_session(&mut self, from: SocketAddr, session: u64) {
        let channels = &self.channels;
        let Some(s) = self
            .peers
            .get_mut(&from)
            .and_then(|p| p.sessions.iter_mut().find(|s| s.id == session))
        else {
            return;
        };
        let (ack, waits) = s.ack(|ch| channels[ch].durable_to);
        if waits && !self.awaiting_sync.contains(&(from, session)) {
            self.awaiting_sync.push((from, session));
        }
        let raw = wire::encode_ack_ranges(&ack.ranges);
        self.outbox.push_frame(
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

    fn subscribe(
        &mut self,
        now: Now,
        from: SocketAddr,
        sub_id: u32,
        mode: DeliveryMode,
        start: StartPosition,
        channel: &str,
    ) {
        let Some(id) = self.accept_message(now, from, channel, 0) else {
            return;
        };
        let (first, next_offset) = match self.channels[id].storage.offsets() {
            Some(range) => range,
            None => {
                self.counters.dropped_unavailable += 1;
                let reason = format!("channel {channel} is not served: its log is damaged");
                self.reply_error(now, from, ErrorCode::UNAVAILABLE, &reason);
                return;
            }
        };
        // A start before the oldest stored message begins at the oldest one;
        // SUBSCRIBED then shows the gap. A start in the future waits for it.
        let cursor = match start {
            StartPosition::Latest => next_offset,
            StartPosition::Earliest => first,
            StartPosition::Offset(o) => o.max(first),
        };
        let existing = self
            .peers
            .get(&from)
            .and_then(|p| p.subscriptions.iter().find(|(s, _)| *s == sub_id))
            .copied();
        match existing {
            Some((_, ch)) if ch == id => {
                // A keepalive or a retried subscribe: the subscription stays
                // as it is; tell the client where it stands.
            }
            _ => {
                if existing.is_some() {
                    self.unsubscribe(from, sub_id);
                }
                let arq = (mode == DeliveryMode::Reliable)
                    .then(|| Box::new(Sender::new(self.arq, cursor)));
                if let Err(reason) = self.add_subscription(now, from, sub_id, id, cursor, arq) {
                    self.forget_if_idle(id);
                    self.counters.dropped_limit += 1;
                    self.reply_error(now, from, ErrorCode::LIMIT_REACHED, reason);
                    return;
                }
                self.counters.subscriptions_opened += 1;
                if matches!(start, StartPosition::Offset(o) if o < first) {
                    self.counters.replay_gaps += 1;
                }
            }
        }
        let Some(sub) = subscriber(&mut self.channels[id].subscribers, from, sub_id) else {
            return; // cannot happen: it was found or added above
        };
        let first_offset = match &sub.arq {
            Some(arq) => arq.snd_una(),
            None => sub.cursor,
        };
        let reliable = sub.arq.is_some();
        if !reliable && sub.cursor < next_offset && !sub.replaying {
            sub.replaying = true;
            self.replay_queue.push_back((id, from, sub_id));
            self.next_replay.get_or_insert(now.instant);
        }
        let lease_ms = self.lease.as_millis().min(u128::from(u32::MAX)) as u32;
        self.outbox.push_frame(
            from,
            &Frame::Subscribed {
                sub_id,
                first_offset,
                next_offset,
                lease_ms,
            },
        );
        if reliable {
            self.pump(now, id, from, sub_id);
        }
    }

    /// Answers a STATS request: anyone may ask, with any source address,
    /// so the answer is one page at the reply rate, never larger than the
    /// request (its padding is the answer's room): a forged source cannot
    /// make the relay an amplifier.
    fn stats(&mut self, now: Now, from: SocketAddr, cursor: u32, padding: u16) {
        let Some(room) = stats::room(padding) else {
            // Unpadded (as earlier builds asked): no answer fits.
            self.counters.dropped_unsupported += 1;
            return;
        };
        if !self.error_replies.take(now.instant) {
            self.counters.errors_suppressed += 1;
            return;
        }
        let counters = self
            .counters
            .entries(self.channel_count(), self.subscription_count);
        let streams = stats::stream_stats(&self.peers, &self.channels);
        stats::push_page(&mut self.outbox, from, counters, &streams, cursor, room);
    }

    /// An acknowledgement from a reliable subscriber.
    #[allow(clippy::too_many_arguments)] // the ACK frame's fields, as decoded
    fn subscription_ack(
        &mut self,
        now: Now,
        from: SocketAddr,
        kind: wire::AckKind,
        id: u64,
        cumulative: u64,
        window: u32,
        ranges: &[u8],
    ) {
        let found = u32::try_from(id).ok().and_then(|sub_id| {
            let peer = self.peers.get(&from)?;
            let &(_, ch) = peer.subscriptions.iter().find(|(s, _)| *s == sub_id)?;
            Some((sub_id, ch))
        });
        let Some((sub_id, ch)) = found else {
            self.counters.dropped_unknown_subscription += 1;
            return;
        };
        let sub = subscriber(&mut self.channels[ch].subscribers, from, sub_id);
        let ack = delivery::SubscriberAck {
            kind,
            cumulative,
            window,
            ranges,
        };
        match sub.map(|s| delivery::on_ack(s, ack, now.instant)) {
            Some(Some(true)) => self.pump(now, ch, from, sub_id),
            Some(Some(false)) => {}
            _ => self.counters.dropped_unexpected += 1,
        }
    }

    /// Sends a reliable subscription what its ARQ allows: retransmissions
    /// re-read from the log, then new messages from its next offset. Drops
    /// the subscription if its subscriber stopped answering or retention
    /// deleted what it still needed.
    fn pump(&mut self, now: Now, ch: ChannelId, peer: SocketAddr, sub_id: u32) {
        let Channel {
            storage,
            subscribers,
            name,
            ..
        } = &mut self.channels[ch];
        let Some(sub) = subscriber(subscribers, peer, sub_id) else {
            return;
        };
        let pumped = delivery::pump(sub, storage, &mut self.outbox, &mut self.counters, now);
        if let Some(reason) = &pumped.damaged {
            tracing::error!(channel = %name, "not serving channel: {reason}");
            self.counters.log_errors += 1;
            *storage = Storage::Failed(reason.clone());
        }
        if let Some(at) = pumped.timer
            && sub.timer_at.is_none_or(|t| at < t)
        {
            sub.timer_at = Some(at);
            self.arq_timers.push(Reverse((at, peer, sub_id, ch)));
        }
        let trouble = pumped.trouble;
        if let Some(reason) = trouble {
            self.unsubscribe(peer, sub_id);
            self.counters.subscribers_lost += 1;
            let reason = format!("reliable subscription {sub_id} dropped: {reason}");
            tracing::info!(%peer, "{reason}");
            self.reply_error(now, peer, ErrorCode::UNAVAILABLE, &reason);
        }
    }

    fn add_subscription(
        &mut self,
        now: Now,
        from: SocketAddr,
        sub_id: u32,
        id: ChannelId,
        cursor: u64,
        arq: Option<Box<Sender>>,
    ) -> Result<(), &'static str> {
        if self.subscription_count >= self.max_subscriptions {
            return Err("the relay holds its maximum number of subscriptions");
        }
        let max = self.max_subscriptions_per_client;
        let peer = self.peer_entry(now.instant, from);
        if peer.subscriptions.len() >= max {
            return Err("this address holds its maximum number of subscriptions");
        }
        peer.subscriptions.push((sub_id, id));
        self.channels[id].subscribers.push(Subscriber {
            peer: from,
            sub_id,
            cursor,
            replaying: false,
            arq,
            timer_at: None,
            pieces_in: Vec::new(),
        });
        self.subscription_count += 1;
        Ok(())
    }

    /// Removes one subscription; false if there was none.
    fn unsubscribe(&mut self, from: SocketAddr, sub_id: u32) -> bool {
        let Some(peer) = self.peers.get_mut(&from) else {
            return false;
        };
        let Some(pos) = peer.subscriptions.iter().position(|(s, _)| *s == sub_id) else {
            return false;
        };
        let (_, ch) = peer.subscriptions.swap_remove(pos);
        if peer.is_empty() {
            self.peers.remove(&from);
        }
        self.detach(ch, from, sub_id);
        true
    }

    /// The peer entry of `addr`, created (with its lease) if new.
    fn peer_entry(&mut self, now: Instant, addr: SocketAddr) -> &mut Peer {
        self.peers.entry(now, addr)
    }

    /// Removes a peer, its subscriptions and its sessions; returns how many
    /// subscriptions there were.
    fn remove_peer(&mut self, addr: SocketAddr) -> usize {
        let Some(peer) = self.peers.remove(&addr) else {
            return 0;
        };
        self.counters.sessions_expired += peer.sessions.len() as u64;
        for &(sub_id, ch) in &peer.subscriptions {
            self.detach(ch, addr, sub_id);
        }
        let subscriptions = peer.subscriptions.len();
        for s in peer.sessions {
            self.release_session(s);
        }
        subscriptions
    }

    fn detach(&mut self, ch: ChannelId, peer: SocketAddr, sub_id: u32) {
        let subs = &mut self.channels[ch].subscribers;
        if let Some(pos) = subs
            .iter()
            .position(|s| s.peer == peer && s.sub_id == sub_id)
        {
            subs.swap_remove(pos);
            self.subscription_count -= 1;
        }
        self.forget_if_idle(ch);
    }

    fn find_or_create_channel(&mut self, name: &str) -> ChannelId {
        self.channels.find_or_create(name)
    }

    /// Forgets channel `id` if it holds nothing and serves no one, so that
    /// names only ever subscribed to (or refused) do not keep channel slots.
    fn forget_if_idle(&mut self, id: ChannelId) {
        if self.channels.forget_if_idle(id) {
            self.counters.channels_forgotten += 1;
        }
    }

    fn reply_error(&mut self, now: Now, to: SocketAddr, code: ErrorCode, reason: &str) {
        if self.error_replies.take(now.instant) {
            self.counters.errors_sent += 1;
            let reason = truncate_utf8(reason, 200);
            self.outbox.push_frame(to, &Frame::Error { code, reason });
        } else {
            self.counters.errors_suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests;

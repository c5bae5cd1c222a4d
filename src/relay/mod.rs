//! The relay core: channels and their logs, subscriptions as leases, fan-out,
//! replay from the log, plain-UDP ingest and egress, and the counters that say
//! what happened.
//!
//! It owns no socket and reads no clock; its only I/O is appending to and
//! reading from its channels' logs (memory writes and reads, except the syncs
//! it asks the driver to run). The driver feeds it datagrams with
//! [`Relay::handle_datagram`] and [`Relay::handle_raw`], calls
//! [`Relay::handle_timeout`] when [`Relay::poll_timeout`] says so, and sends
//! whatever [`Relay::poll_transmit`] hands back. Everything a peer sends is
//! hostile until decoded: bad input becomes a counted drop (and a rate-limited
//! ERROR reply where the sender speaks the protocol), never a panic.

mod counters;
mod outbox;

pub use counters::Counters;
pub use outbox::Transmit;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::RelayConfig;
use crate::log::{ChannelLog, DataDir, FsyncMode, LogError, SyncJob};
use crate::wire::{self, DeliveryMode, ErrorCode, Frame, StartPosition, WireError};
use outbox::Outbox;

/// The current time, as the core sees it: a monotonic instant for timers and
/// a wall-clock stamp for message timestamps. Only the driver makes one from
/// the real clocks; tests make them at will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for leases and deadlines.
    pub instant: Instant,
    /// Wall-clock time in nanoseconds since the Unix epoch, stamped on messages.
    pub unix_nanos: u64,
}

impl Now {
    /// Reads the real clocks.
    pub fn system() -> Now {
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Now {
            instant: Instant::now(),
            unix_nanos,
        }
    }

    /// This time moved forward by `d` on both clocks.
    pub fn after(self, d: Duration) -> Now {
        Now {
            instant: self.instant + d,
            unix_nanos: self.unix_nanos + d.as_nanos() as u64,
        }
    }
}

/// Index of a channel in [`Relay::channels`]; stable for the relay's life.
type ChannelId = usize;

/// A sync the driver should run off the event loop, then report with
/// [`Relay::handle_sync_done`].
#[derive(Debug)]
pub struct SyncRequest {
    /// Which channel (opaque to the driver; hand it back).
    pub channel: usize,
    /// The work.
    pub job: SyncJob,
}

/// Where a channel's messages are kept.
#[derive(Debug)]
enum Storage {
    /// Nothing published yet: no files on disk (a subscription alone creates
    /// none, so subscribing to typos costs no disk).
    Empty,
    /// The channel's log.
    Open(ChannelLog),
    /// The log cannot be trusted or written (corruption, failed sync): the
    /// channel is not served until an operator acts.
    Failed(String),
}

impl Storage {
    /// The stored offset range (first, next), or `None` if not served.
    fn offsets(&self) -> Option<(u64, u64)> {
        match self {
            Storage::Empty => Some((0, 0)),
            Storage::Open(log) => Some((log.first_offset(), log.next_offset())),
            Storage::Failed(_) => None,
        }
    }
}

/// How often replaying subscriptions are fed from the log.
const REPLAY_TICK: Duration = Duration::from_millis(1);
/// How often retention limits are checked, when any are set.
const RETENTION_CHECK: Duration = Duration::from_secs(1);

/// One named stream of messages.
#[derive(Debug)]
struct Channel {
    /// The channel's name, as clients spell it.
    name: Box<str>,
    /// Its log.
    storage: Storage,
    /// Who receives live messages.
    subscribers: Vec<Subscriber>,
    /// Plain-UDP destinations that get every message as-is.
    raw_out: Vec<SocketAddr>,
}

/// A subscription as seen from its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subscriber {
    /// The subscriber's address.
    peer: SocketAddr,
    /// The id the subscriber chose.
    sub_id: u32,
    /// The next offset to send. Equal to the channel's next offset for a live
    /// subscription; below it while replaying from the log; above it for a
    /// start in the future.
    cursor: u64,
    /// True while the subscription is in the replay queue.
    replaying: bool,
}

/// A client address that holds subscriptions. Publishers that never subscribe
/// get no entry, so they cost the relay no memory.
#[derive(Debug)]
struct Peer {
    /// Last time anything arrived from this address; the lease runs from here.
    last_seen: Instant,
    /// The address's subscriptions: id and channel.
    subscriptions: Vec<(u32, ChannelId)>,
}

/// Allows a burst of `capacity` events, refilled at `per_sec`.
#[derive(Debug)]
struct TokenBucket {
    tokens: u32,
    capacity: u32,
    per_sec: u32,
    last_refill: Option<Instant>,
}

impl TokenBucket {
    fn new(per_sec: u32) -> Self {
        let capacity = per_sec.clamp(1, 1000);
        TokenBucket {
            tokens: capacity,
            capacity,
            per_sec,
            last_refill: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let last = *self.last_refill.get_or_insert(now);
        let earned =
            now.saturating_duration_since(last).as_millis() as u64 * u64::from(self.per_sec) / 1000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(self.capacity)) as u32;
            self.last_refill = Some(now);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// The relay's whole state, driven by calls that carry the time.
#[derive(Debug)]
pub struct Relay {
    /// Lease length handed to subscribers.
    lease: Duration,
    /// Largest payload accepted.
    max_message_size: usize,
    /// Channel limit.
    max_channels: usize,
    /// Limit on all subscriptions.
    max_subscriptions: usize,
    /// Limit on one address's subscriptions.
    max_subscriptions_per_client: usize,
    /// Channels by id.
    channels: Vec<Channel>,
    /// Channel ids by name.
    by_name: HashMap<Box<str>, ChannelId>,
    /// Addresses holding subscriptions.
    peers: HashMap<SocketAddr, Peer>,
    /// Lease deadlines, earliest first. An entry may be stale (its peer was
    /// heard from since, or is gone): it is checked when it comes due, so a
    /// refresh costs one field write, not a heap update.
    leases: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    /// Total live subscriptions.
    subscription_count: usize,
    /// Channel of each raw ingest port, by the driver's index.
    raw_in: Vec<ChannelId>,
    /// Limits error replies.
    error_replies: TokenBucket,
    /// Datagrams waiting to be sent.
    outbox: Outbox,
    /// What happened, for operators.
    counters: Counters,
    /// The locked data directory, where new channel logs are created.
    data_dir: DataDir,
    /// When appended records are synced.
    fsync: FsyncMode,
    /// Channels with appended records not yet synced.
    dirty: Vec<ChannelId>,
    /// When the interval sync is due, if anything is dirty.
    next_sync: Option<Instant>,
    /// Syncs for the driver to run in the background.
    sync_requests: VecDeque<SyncRequest>,
    /// When retention is next checked (None: no retention configured).
    next_retention: Option<Instant>,
    /// Subscriptions behind their channel's head, fed from the log in turn:
    /// (channel, subscriber address, sub_id).
    replay_queue: VecDeque<(ChannelId, SocketAddr, u32)>,
    /// Bytes of deliveries one replaying subscription gets per tick.
    replay_budget: usize,
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
            max_message_size: config.max_message_size,
            max_channels: config.max_channels,
            max_subscriptions: config.max_subscriptions,
            max_subscriptions_per_client: config.max_subscriptions_per_client,
            channels: Vec::new(),
            by_name: HashMap::new(),
            peers: HashMap::new(),
            leases: BinaryHeap::new(),
            subscription_count: 0,
            raw_in: Vec::new(),
            error_replies: TokenBucket::new(config.error_replies_per_sec),
            outbox: Outbox::new(config.datagram_size),
            counters: Counters::default(),
            data_dir,
            fsync: config.log.fsync,
            dirty: Vec::new(),
            next_sync: None,
            sync_requests: VecDeque::new(),
            next_retention: retention.then_some(now.instant),
            replay_queue: VecDeque::new(),
            replay_budget: (config.replay_rate / 1000).max(1) as usize,
            next_replay: None,
        };
        for opened in opened {
            let storage = match opened.log {
                Ok((log, recovery)) => {
                    if let Some(at) = recovery.damage_at {
                        tracing::warn!(
                            channel = %opened.name,
                            position = at,
                            zeroed_bytes = recovery.torn_bytes,
                            truncated_corruption = recovery.truncated_corruption,
                            "recovered a damaged log tail; kept every record before it"
                        );
                    }
                    Storage::Open(log)
                }
                Err(e @ LogError::NoSpace(_)) => {
                    // A channel whose first segment could not be allocated
                    // holds nothing yet; its next message tries again.
                    tracing::warn!(channel = %opened.name, "{e}");
                    Storage::Empty
                }
                Err(e) => {
                    tracing::error!(channel = %opened.name, "not serving channel: {e}");
                    Storage::Failed(e.to_string())
                }
            };
            let id = relay.find_or_create_channel(&opened.name);
            relay.channels[id].storage = storage;
        }
        // Channels named in the configuration exist from the start, whatever
        // the limit on channels that clients create.
        for (_, name) in &config.raw_in {
            let id = relay.find_or_create_channel(name);
            relay.raw_in.push(id);
        }
        for (name, addr) in &config.raw_out {
            let id = relay.find_or_create_channel(name);
            relay.channels[id].raw_out.push(*addr);
        }
        Ok(relay)
    }

    /// The data directory's path.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
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
        self.channels.len()
    }

    /// The offset the channel's next message will get, if the channel exists.
    pub fn next_offset(&self, channel: &str) -> Option<u64> {
        self.by_name
            .get(channel)
            .and_then(|&id| self.channels[id].storage.offsets())
            .map(|(_, next)| next)
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
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.last_seen = now.instant;
        }
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
        let _ = self.append(now, channel, datagram);
    }

    /// The earliest time at which [`Relay::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lease = self.leases.peek().map(|Reverse((at, _))| *at);
        [lease, self.next_replay, self.next_sync, self.next_retention]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does whatever is due at `now`: lapsed leases, replay, interval sync,
    /// retention.
    pub fn handle_timeout(&mut self, now: Now) {
        self.expire_leases(now.instant);
        if self.next_replay.is_some_and(|at| at <= now.instant) {
            self.replay_tick();
            self.next_replay = (!self.replay_queue.is_empty()).then(|| now.instant + REPLAY_TICK);
        }
        if self.next_sync.is_some_and(|at| at <= now.instant) {
            self.request_syncs();
        }
        if self.next_retention.is_some_and(|at| at <= now.instant) {
            self.enforce_retention(now);
            self.next_retention = Some(now.instant + RETENTION_CHECK);
        }
    }

    fn expire_leases(&mut self, now: Instant) {
        while let Some(&Reverse((at, addr))) = self.leases.peek() {
            if at > now {
                break;
            }
            self.leases.pop();
            let Some(peer) = self.peers.get(&addr) else {
                continue;
            };
            let expires = peer.last_seen + self.lease;
            if expires > now {
                self.leases.push(Reverse((expires, addr)));
                continue;
            }
            let expired = self.remove_peer(addr);
            self.counters.subscriptions_expired += expired as u64;
        }
    }

    /// Hands the dirty channels' syncs to the driver (`--fsync interval`).
    fn request_syncs(&mut self) {
        self.next_sync = None;
        for id in std::mem::take(&mut self.dirty) {
            if let Storage::Open(log) = &mut self.channels[id].storage
                && let Some(job) = log.begin_sync()
            {
                self.sync_requests
                    .push_back(SyncRequest { channel: id, job });
            }
        }
    }

    /// The next sync to run in the background, if any.
    pub fn poll_sync(&mut self) -> Option<SyncRequest> {
        self.sync_requests.pop_front()
    }

    /// Reports how a background sync ended. A failed sync stops the channel:
    /// its writes are refused from then on, never retried into silence.
    pub fn handle_sync_done(&mut self, channel: usize, result: Result<u64, LogError>) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        self.counters.log_syncs += 1;
        if let Err(e) = result {
            tracing::error!(channel = %ch.name, "sync failed, channel stopped: {e}");
            self.counters.log_errors += 1;
            ch.storage = Storage::Failed(format!("sync failed: {e}"));
        }
    }

    /// Syncs every channel's unsynced records now, whatever the mode: for a
    /// clean shutdown.
    pub fn sync_all(&mut self) {
        self.dirty = (0..self.channels.len()).collect();
        self.sync_dirty();
    }

    /// Syncs every channel with unsynced records, here and now. A failed sync
    /// stops the channel, as in [`Relay::handle_sync_done`].
    fn sync_dirty(&mut self) {
        self.next_sync = None;
        for id in std::mem::take(&mut self.dirty) {
            let channel = &mut self.channels[id];
            if let Storage::Open(log) = &mut channel.storage
                && log.is_dirty()
            {
                self.counters.log_syncs += 1;
                if let Err(e) = log.sync() {
                    tracing::error!(channel = %channel.name, "sync failed, channel stopped: {e}");
                    self.counters.log_errors += 1;
                    channel.storage = Storage::Failed(format!("sync failed: {e}"));
                }
            }
        }
    }

    fn enforce_retention(&mut self, now: Now) {
        for channel in &mut self.channels {
            if let Storage::Open(log) = &mut channel.storage {
                match log.enforce_retention(now.unix_nanos) {
                    Ok(n) => self.counters.segments_deleted += n as u64,
                    Err(e) => {
                        tracing::warn!(channel = %channel.name, "retention: {e}");
                        self.counters.log_errors += 1;
                    }
                }
            }
        }
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
            let Some(sub) = subscribers
                .iter_mut()
                .find(|s| s.peer == peer && s.sub_id == sub_id)
            else {
                continue; // unsubscribed or expired meanwhile
            };
            let Storage::Open(log) = storage else {
                sub.replaying = false;
                continue;
            };
            if sub.cursor < log.first_offset() {
                // Retention removed what it was about to read.
                self.counters.replay_gaps += 1;
                sub.cursor = log.first_offset();
            }
            let mut spent = 0;
            let mut cursor = sub.cursor;
            let budget = self.replay_budget;
            let outbox = &mut self.outbox;
            let counters = &mut self.counters;
            let result = log.scan(cursor, |record| {
                let frame = Frame::Deliver {
                    sub_id,
                    offset: record.offset,
                    timestamp: record.timestamp,
                    payload: record.payload,
                };
                spent += frame.encoded_len();
                if outbox.push_frame(peer, &frame) {
                    counters.messages_replayed += 1;
                }
                cursor = record.offset + 1;
                spent < budget
            });
            if let Err(e) = result {
                tracing::error!(channel = %name, "not serving channel: {e}");
                counters.log_errors += 1;
                *storage = Storage::Failed(e.to_string());
                sub.replaying = false;
                continue;
            }
            sub.cursor = cursor;
            if cursor >= log.next_offset() {
                sub.replaying = false;
            } else {
                self.replay_queue.push_back((id, peer, sub_id));
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
        if self.fsync == FsyncMode::Always && !self.dirty.is_empty() {
            self.sync_dirty();
        }
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
            Frame::Ping { nonce } => {
                self.outbox.push_frame(from, &Frame::Pong { nonce });
            }
            Frame::StatsRequest => {
                let list = self
                    .counters
                    .entries(self.channels.len(), self.subscription_count);
                self.outbox.push_frame(
                    from,
                    &Frame::Stats {
                        entries: wire::StatEntries::List(&list),
                    },
                );
            }
            Frame::Ack { .. } => {
                self.counters.dropped_unsupported += 1;
                self.reply_error(
                    now,
                    from,
                    ErrorCode::UNSUPPORTED,
                    "reliable delivery is not supported by this relay yet",
                );
            }
            // Frames a relay sends, never receives. No reply: answering an
            // ERROR with an ERROR could loop between two relays forever.
            Frame::Subscribed { .. }
            | Frame::Deliver { .. }
            | Frame::Pong { .. }
            | Frame::Error { .. }
            | Frame::Stats { .. } => self.counters.dropped_unexpected += 1,
        }
    }

    fn publish(&mut self, now: Now, from: SocketAddr, channel: &str, payload: &[u8]) {
        if payload.len() > self.max_message_size {
            self.counters.dropped_too_large += 1;
            let reason = format!(
                "message of {} bytes exceeds the maximum of {}",
                payload.len(),
                self.max_message_size
            );
            self.reply_error(now, from, ErrorCode::TOO_LARGE, &reason);
            return;
        }
        let Some(id) = self.client_channel(channel) else {
            self.counters.dropped_limit += 1;
            self.reply_error(now, from, ErrorCode::LIMIT_REACHED, "too many channels");
            return;
        };
        match self.append(now, id, payload) {
            Ok(()) => self.counters.messages_published += 1,
            Err(reason) => self.reply_error(now, from, ErrorCode::UNAVAILABLE, &reason),
        }
    }

    /// Appends `payload` to the channel's log, then sends it to every live
    /// subscriber and raw egress of the channel. On error nothing was stored
    /// or sent; the drop is counted and the reason returned.
    fn append(&mut self, now: Now, id: ChannelId, payload: &[u8]) -> Result<(), String> {
        let channel = &mut self.channels[id];
        if matches!(channel.storage, Storage::Empty) {
            match self.data_dir.create_channel(&channel.name) {
                Ok(log) => channel.storage = Storage::Open(log),
                Err(e) => {
                    // Most likely a full disk: the channel stays empty and
                    // the next message tries again.
                    self.counters.dropped_log_full += 1;
                    tracing::warn!(channel = %channel.name, "cannot create log: {e}");
                    return Err(format!("cannot store the message: {e}"));
                }
            }
        }
        let log = match &mut channel.storage {
            Storage::Open(log) => log,
            Storage::Failed(reason) => {
                self.counters.dropped_unavailable += 1;
                return Err(format!("channel not served: {reason}"));
            }
            Storage::Empty => unreachable!("created above"),
        };
        let offset = match log.append(now.unix_nanos, payload) {
            Ok(offset) => offset,
            Err(e @ LogError::NoSpace(_)) => {
                self.counters.dropped_log_full += 1;
                tracing::warn!(channel = %channel.name, "{e}");
                return Err(format!("cannot store the message: {e}"));
            }
            Err(e) => {
                self.counters.dropped_log_error += 1;
                tracing::error!(channel = %channel.name, "append failed, channel stopped: {e}");
                channel.storage = Storage::Failed(e.to_string());
                return Err(format!("cannot store the message: {e}"));
            }
        };
        if self.fsync != FsyncMode::None && !self.dirty.contains(&id) {
            self.dirty.push(id);
            if let FsyncMode::Interval(every) = self.fsync {
                self.next_sync.get_or_insert(now.instant + every);
            }
        }
        for sub in &mut channel.subscribers {
            // Only a subscription at the head gets it live; one that is
            // replaying reads it from the log when it gets there.
            if sub.cursor != offset {
                continue;
            }
            sub.cursor += 1;
            let frame = Frame::Deliver {
                sub_id: sub.sub_id,
                offset,
                timestamp: now.unix_nanos,
                payload,
            };
            if self.outbox.push_frame(sub.peer, &frame) {
                self.counters.messages_delivered += 1;
            } else {
                self.counters.send_dropped += 1;
            }
        }
        for &addr in &channel.raw_out {
            self.outbox.push_raw(addr, payload);
            self.counters.raw_forwarded += 1;
        }
        Ok(())
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
        if mode == DeliveryMode::Reliable {
            self.counters.dropped_unsupported += 1;
            let reason = "reliable subscriptions are not supported by this relay yet";
            self.reply_error(now, from, ErrorCode::UNSUPPORTED, reason);
            return;
        }
        let Some(id) = self.client_channel(channel) else {
            self.counters.dropped_limit += 1;
            self.reply_error(now, from, ErrorCode::LIMIT_REACHED, "too many channels");
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
                if let Err(reason) = self.add_subscription(now, from, sub_id, id, cursor) {
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
        let Some(sub) = self.channels[id]
            .subscribers
            .iter_mut()
            .find(|s| s.peer == from && s.sub_id == sub_id)
        else {
            return; // cannot happen: it was found or added above
        };
        let first_offset = sub.cursor;
        if sub.cursor < next_offset && !sub.replaying {
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
    }

    fn add_subscription(
        &mut self,
        now: Now,
        from: SocketAddr,
        sub_id: u32,
        id: ChannelId,
        cursor: u64,
    ) -> Result<(), &'static str> {
        if self.subscription_count >= self.max_subscriptions {
            return Err("the relay holds its maximum number of subscriptions");
        }
        let lease = self.lease;
        let peer = self.peers.entry(from).or_insert_with(|| {
            self.leases.push(Reverse((now.instant + lease, from)));
            Peer {
                last_seen: now.instant,
                subscriptions: Vec::new(),
            }
        });
        if peer.subscriptions.len() >= self.max_subscriptions_per_client {
            return Err("this address holds its maximum number of subscriptions");
        }
        peer.subscriptions.push((sub_id, id));
        self.channels[id].subscribers.push(Subscriber {
            peer: from,
            sub_id,
            cursor,
            replaying: false,
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
        if peer.subscriptions.is_empty() {
            self.peers.remove(&from);
        }
        self.detach(ch, from, sub_id);
        true
    }

    /// Removes a peer and all its subscriptions; returns how many there were.
    fn remove_peer(&mut self, addr: SocketAddr) -> usize {
        let Some(peer) = self.peers.remove(&addr) else {
            return 0;
        };
        for &(sub_id, ch) in &peer.subscriptions {
            self.detach(ch, addr, sub_id);
        }
        peer.subscriptions.len()
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
    }

    /// The id of a channel a client names, creating the channel if it is new
    /// and the channel limit allows.
    fn client_channel(&mut self, name: &str) -> Option<ChannelId> {
        if !self.by_name.contains_key(name) && self.channels.len() >= self.max_channels {
            return None;
        }
        Some(self.find_or_create_channel(name))
    }

    fn find_or_create_channel(&mut self, name: &str) -> ChannelId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.channels.len();
        self.channels.push(Channel {
            name: name.into(),
            storage: Storage::Empty,
            subscribers: Vec::new(),
            raw_out: Vec::new(),
        });
        self.by_name.insert(self.channels[id].name.clone(), id);
        id
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

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;

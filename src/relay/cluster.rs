//! The relay's side of a cluster (`--cluster`): which stored messages go up
//! to the cluster next and how far each channel is bridged, which subjects
//! this relay wants from the cluster (its channels with subscribers, its
//! wildcard patterns), and messages of other relays appended once each.
//!
//! Sans-IO like the rest of the core: the driver's bridge thread talks to
//! NATS JetStream; this decides. The backlog of what is not yet bridged is
//! the log itself: at most [`WINDOW`] messages (and [`WINDOW_BYTES`]) are
//! copied out at a time, each reported back as stored or not by the
//! cluster.
//!
//! A message of another relay is appended to the local channel of the same
//! name with a remote session mark (source relay id, its offset there), so
//! replay, reliable delivery and raw egress serve it as any other; the
//! channel's session table says how far each source got, across restarts,
//! so a message the cluster delivers twice is stored once. Copies are never
//! bridged up again.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::channels::{ChannelId, Channels, Storage};
use super::counters::Counters;
use crate::log::{LogError, SessionMark};

/// Most messages handed to the bridge and not yet reported.
pub const WINDOW: usize = 4096;
/// Most payload bytes handed to the bridge and not yet reported.
pub const WINDOW_BYTES: usize = 16 << 20;
/// How long a channel waits to be tried again after the cluster refused or
/// lost one of its messages.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often the subjects this relay wants are worked out again.
const INTEREST_EVERY: Duration = Duration::from_millis(100);
/// Most subjects a relay follows at once: each is a durable consumer in
/// JetStream, and clients choose the channels they subscribe to.
pub const MAX_FOLLOWED: usize = 4096;
/// Most messages taken from one channel in a turn, so that one busy
/// channel does not hold back the others.
const TURN: usize = 256;

/// A stored message to publish to the cluster.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The channel, for [`super::Relay::handle_bridged`].
    pub channel: usize,
    /// Its name.
    pub name: Box<str>,
    /// The message's offset in this relay's log.
    pub offset: u64,
    /// The lowest offset this report covers: the message and the copies of
    /// other relays' messages just before it, which are not sent.
    pub covers_from: u64,
    /// The message.
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// What to report about it, once the cluster answered.
    pub fn receipt(&self) -> Receipt {
        Receipt {
            channel: self.channel,
            covers_from: self.covers_from,
            offset: self.offset,
            bytes: self.payload.len(),
        }
    }
}

/// What [`super::Relay::handle_bridged`] needs of an [`Outgoing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The channel.
    pub channel: usize,
    /// The lowest offset it covers.
    pub covers_from: u64,
    /// The message's offset.
    pub offset: u64,
    /// Its payload's length.
    pub bytes: usize,
}

/// What the cluster did with a message handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bridged {
    /// Stored (PubAck).
    Stored,
    /// Not stored this time (an outage, a timeout): sent again.
    Failed,
    /// Never storable (larger than the cluster's largest message): kept
    /// here only, counted.
    Refused,
}

/// A change in what this relay wants from the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Start consuming this channel name or pattern.
    Follow(String),
    /// Stop consuming it.
    Unfollow(String),
}

/// What became of a message from another relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    /// Stored and delivered: acknowledge it to the cluster.
    Appended,
    /// Stored before (or it is this relay's own): acknowledge it.
    Duplicate,
    /// An earlier message of the same source is missing: ask for it again
    /// later, after the one before it.
    Ahead,
    /// Could not be stored now (disk full, channel not served): ask again
    /// later.
    Refused,
}

/// The cluster state of the relay.
#[derive(Debug)]
pub(super) struct Cluster {
    /// This relay's id.
    pub(super) id: u64,
    /// Channels with stored messages not yet handed to the bridge, in turn.
    queue: VecDeque<ChannelId>,
    /// Messages and bytes handed out and not yet reported.
    in_flight: (usize, usize),
    /// Channels waiting after a failure, until when.
    waiting: Vec<(Instant, ChannelId)>,
    /// Names and patterns followed, as last told.
    followed: BTreeSet<String>,
    /// Changes not yet asked for.
    changes: VecDeque<Interest>,
    /// When the wanted subjects are next worked out.
    interest_at: Instant,
    /// More were wanted than [`MAX_FOLLOWED`] last time (said once).
    over_limit: bool,
    /// The bridged-to offsets changed since the driver last asked.
    pub(super) progressed: bool,
}

impl Cluster {
    /// A relay with id `id`; `bridged` says how far each channel was
    /// bridged before (as kept in the data directory).
    pub(super) fn new(
        id: u64,
        bridged: &[(String, u64)],
        channels: &mut Channels,
        now: Instant,
    ) -> Cluster {
        let mut cluster = Cluster {
            id,
            queue: VecDeque::new(),
            in_flight: (0, 0),
            waiting: Vec::new(),
            followed: BTreeSet::new(),
            changes: VecDeque::new(),
            interest_at: now,
            over_limit: false,
            progressed: false,
        };
        for (name, offset) in bridged {
            if let Some(ch) = channels.id(name) {
                // Never past the log's end (a recovery may have cut it).
                let channel = &mut channels[ch];
                let end = channel.storage.offsets().map_or(0, |(_, next)| next);
                let offset = (*offset).min(end);
                channel.bridged_to = offset;
                channel.bridge_next = offset;
                channel.bridge_cover = offset;
            }
        }
        for ch in channels.ids() {
            cluster.appended(channels, ch);
        }
        cluster
    }

    /// A message was stored in channel `ch`: it may have something to send.
    pub(super) fn appended(&mut self, channels: &mut Channels, ch: ChannelId) {
        let channel = &mut channels[ch];
        let behind = channel
            .storage
            .offsets()
            .is_some_and(|(_, next)| channel.bridge_next < next);
        if behind && !channel.bridge_queued && !channel.bridge_waiting {
            channel.bridge_queued = true;
            self.queue.push_back(ch);
        }
    }

    /// The earliest time [`Cluster::handle_timeout`] has work.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let waiting = self.waiting.iter().map(|(at, _)| *at).min();
        Some(waiting.map_or(self.interest_at, |w| w.min(self.interest_at)))
    }

    /// Channels whose wait is over go back in turn; the wanted subjects are
    /// worked out again when due.
    pub(super) fn handle_timeout(
        &mut self,
        now: Instant,
        channels: &mut Channels,
        patterns: impl Iterator<Item = String>,
    ) {
        let mut due = Vec::new();
        self.waiting.retain(|&(at, ch)| {
            let over = at <= now;
            if over {
                due.push(ch);
            }
            !over
        });
        for ch in due {
            channels[ch].bridge_waiting = false;
            self.appended(channels, ch);
        }
        if now < self.interest_at {
            return;
        }
        self.interest_at = now + INTEREST_EVERY;
        let mut wanted: BTreeSet<String> = patterns.collect();
        for channel in channels.iter() {
            let served = !channel.subscribers.is_empty() || !channel.raw_out.is_empty();
            if served && crate::subject::is_bridgeable(&channel.name) {
                wanted.insert(channel.name.to_string());
            }
        }
        if wanted.len() > MAX_FOLLOWED {
            // Those followed already stay; new ones wait for room.
            let mut kept: BTreeSet<String> = wanted.intersection(&self.followed).cloned().collect();
            for name in &wanted {
                if kept.len() >= MAX_FOLLOWED {
                    break;
                }
                kept.insert(name.clone());
            }
            if !self.over_limit {
                tracing::warn!(
                    wanted = wanted.len(),
                    "cluster: more channels and patterns subscribed to than the {MAX_FOLLOWED} followed at most; the others are served from this relay only"
                );
            }
            self.over_limit = true;
            wanted = kept;
        } else {
            self.over_limit = false;
        }
        for gone in self.followed.difference(&wanted) {
            self.changes.push_back(Interest::Unfollow(gone.clone()));
        }
        for new in wanted.difference(&self.followed) {
            self.changes.push_back(Interest::Follow(new.clone()));
        }
        self.followed = wanted;
    }

    /// The next change in what this relay wants from the cluster.
    pub(super) fn poll_interest(&mut self) -> Option<Interest> {
        self.changes.pop_front()
    }

    /// Stored messages for the bridge to publish, within the window; each
    /// must be reported with [`Cluster::handle_bridged`]. With
    /// `durable_only`, only messages below a channel's `durable_to` (on
    /// disk) go. A channel whose log fails to read is returned beside them,
    /// to be stopped.
    pub(super) fn poll_outgoing(
        &mut self,
        channels: &mut Channels,
        counters: &mut Counters,
        durable_only: bool,
    ) -> (Vec<Outgoing>, Option<(ChannelId, LogError)>) {
        let mut out = Vec::new();
        let mut failed = None;
        let mut turns = self.queue.len();
        while turns > 0 && self.in_flight.0 < WINDOW && self.in_flight.1 < WINDOW_BYTES {
            turns -= 1;
            let Some(ch) = self.queue.pop_front() else {
                break;
            };
            let channel = &mut channels[ch];
            let Storage::Open(log) = &mut channel.storage else {
                channel.bridge_queued = false;
                continue;
            };
            if channel.bridge_waiting {
                // Queued again when its wait is over.
                channel.bridge_queued = false;
                continue;
            }
            let limit = match durable_only {
                true => channel.durable_to.min(log.next_offset()),
                false => log.next_offset(),
            };
            if !crate::subject::is_bridgeable(&channel.name) {
                // Not a NATS subject (a space, an empty token): kept here only.
                counters.bridge_skipped += limit.saturating_sub(channel.bridge_next);
                channel.bridge_next = channel.bridge_next.max(limit);
                channel.bridge_cover = channel.bridge_next;
                channel.bridged_to = channel.bridge_next;
                channel.bridge_queued = false;
                continue;
            }
            if channel.bridge_next < log.first_offset() {
                // Retention deleted what was never bridged.
                counters.bridge_skipped += log.first_offset() - channel.bridge_next;
                channel.bridge_next = log.first_offset();
                channel.bridge_cover = channel.bridge_cover.max(log.first_offset());
                channel.bridged_to = channel.bridged_to.max(log.first_offset());
            }
            // `covers_from`: the first offset no message handed out covers
            // (copies scanned since the last one sent, in earlier turns too).
            let (mut next, mut covers_from) = (channel.bridge_next, channel.bridge_cover);
            let mut taken = 0;
            let in_flight = &mut self.in_flight;
            let name = &channel.name;
            let scanned = if next < limit {
                log.scan(next, |r| {
                    if r.offset >= limit
                        || taken >= TURN
                        || in_flight.0 >= WINDOW
                        || in_flight.1 >= WINDOW_BYTES
                    {
                        return false;
                    }
                    next = r.offset + 1;
                    if r.mark.is_remote() {
                        return true; // a copy: the cluster has it from its source
                    }
                    in_flight.0 += 1;
                    in_flight.1 += r.payload.len();
                    taken += 1;
                    out.push(Outgoing {
                        channel: ch,
                        name: name.clone(),
                        offset: r.offset,
                        covers_from,
                        payload: r.payload.to_vec(),
                    });
                    covers_from = r.offset + 1;
                    true
                })
            } else {
                Ok(next)
            };
            channel.bridge_next = next;
            channel.bridge_cover = covers_from;
            if let Err(e) = scanned {
                channel.bridge_queued = false;
                failed = Some((ch, e));
                continue;
            }
            if next < limit {
                self.queue.push_back(ch);
            } else {
                // Queued again by the next append (or sync).
                channel.bridge_queued = false;
                if covers_from < next && covers_from == channel.bridged_to {
                    // Only copies since the last message sent: nothing to
                    // wait for.
                    channel.bridged_to = next;
                    channel.bridge_cover = next;
                    self.progressed = true;
                }
            }
        }
        (out, failed)
    }

    /// What the cluster did with the message of `receipt`.
    pub(super) fn handle_bridged(
        &mut self,
        now: Instant,
        channels: &mut Channels,
        counters: &mut Counters,
        receipt: Receipt,
        outcome: Bridged,
    ) {
        let Receipt {
            channel: ch,
            covers_from,
            offset,
            bytes,
        } = receipt;
        self.in_flight.0 = self.in_flight.0.saturating_sub(1);
        self.in_flight.1 = self.in_flight.1.saturating_sub(bytes);
        let Some(channel) = channels.get_mut(ch) else {
            return;
        };
        if outcome != Bridged::Failed {
            match outcome {
                Bridged::Stored => counters.bridge_published += 1,
                _ => counters.bridge_skipped += 1,
            }
            if covers_from <= channel.bridged_to && channel.bridged_to <= offset {
                channel.bridged_to = offset + 1;
                self.progressed = true;
                if channel.bridged_to == channel.bridge_cover
                    && channel.bridge_cover < channel.bridge_next
                {
                    // Only copies lie between it and the next to hand out.
                    channel.bridged_to = channel.bridge_next;
                    channel.bridge_cover = channel.bridge_next;
                }
            }
            return;
        }
        counters.bridge_failed += 1;
        // Everything from the first message not stored goes again (the
        // cluster drops what it has by message id), after a pause.
        if channel.bridge_next > channel.bridged_to {
            channel.bridge_next = channel.bridged_to;
            channel.bridge_cover = channel.bridged_to;
        }
        if !channel.bridge_waiting {
            channel.bridge_waiting = true;
            self.waiting.push((now + RETRY_AFTER, ch));
        }
    }
}

/// The mark and decision for message `offset` of relay `source` in a
/// channel whose log says `last` is the last it stored from there.
pub(super) fn place(
    id: u64,
    source: u64,
    offset: u64,
    last: Option<u64>,
) -> Result<SessionMark, Remote> {
    if source == id {
        return Err(Remote::Duplicate);
    }
    match last {
        Some(last) if offset <= last => Err(Remote::Duplicate),
        Some(last) if offset > last + 1 => Err(Remote::Ahead),
        _ => Ok(SessionMark::remote(source, offset)),
    }
}

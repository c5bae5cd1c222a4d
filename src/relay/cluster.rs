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
//! Each message goes up under its [`Source`]: a reliable publishing
//! session's messages under the session (numbered by their sequence
//! numbers, whichever relay they were published through, so that a
//! publisher that moves to another relay goes on in the same numbering and
//! the cluster drops what it already has), every other message under this
//! relay (numbered by its offsets). Each says what its source's message
//! before it was ([`Origin::prior_below`]), so that a relay receiving it
//! can tell a gap (a message the cluster stored later, after a resend)
//! from the copies and other sources' messages that lie between.
//!
//! A message of another relay is appended to the local channel of the same
//! name with a remote session mark (its source, its position there), so
//! replay, reliable delivery and raw egress serve it as any other; the
//! channel's session table says how far each source got, across restarts,
//! so a message the cluster delivers twice is stored once. Copies are never
//! bridged up again.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use foldhash::HashMap;

use super::channels::{ChannelId, Channels, Storage};
use super::counters::Counters;
use crate::log::{CLUSTER_SESSION, LogError, RecordMark, SessionMark};

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
/// Most sessions a channel's [`Chain`] remembers; past it one is forgotten
/// for each new one (its next message says nothing of what it follows).
pub(super) const CHAIN_SESSIONS: usize = 1024;

pub use crate::wire::Source;

/// Where a message bridged between relays stands in its source's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Whose numbering.
    pub source: Source,
    /// Its number there: the offset, or the last piece's sequence number.
    pub position: u64,
    /// Every earlier message of its source is numbered below this; `None`
    /// when that is not known (the first a relay hands out after a restart
    /// or a resend): then it only has to be later than the last stored.
    pub prior_below: Option<u64>,
}

/// Where each source's numbering stands in a channel at its `bridge_next`:
/// what the next message handed out follows.
#[derive(Debug, Default)]
pub(super) struct Chain {
    /// False until the scan's start is looked up: after a restart, a resend
    /// or a jump over deleted messages.
    started: bool,
    /// The last marked record's mark (what a step mark continues).
    mark: Option<SessionMark>,
    /// The offset after this relay's last message handed out.
    relay: Option<u64>,
    /// Each session's last sequence number handed out.
    sessions: HashMap<u64, u64>,
}

impl Chain {
    /// Forgets where the numbering stands: the scan jumps.
    fn reset(&mut self) {
        *self = Chain::default();
    }

    /// The origin of the record at `offset` marked `mark` (resolved:
    /// `resolved`), relay `id`'s; moves the chain past it.
    fn origin(
        &mut self,
        id: u64,
        offset: u64,
        mark: RecordMark,
        resolved: Option<SessionMark>,
    ) -> Origin {
        match resolved {
            Some(m) if m.client == CLUSTER_SESSION => {
                let prior_below = match mark {
                    // A step from the record before, which is this
                    // session's message before: it ended just below.
                    RecordMark::Next { step } => Some((m.seq + 1).saturating_sub(u64::from(step))),
                    _ => self.sessions.get(&m.session).map(|&seq| seq + 1),
                };
                if self.sessions.len() >= CHAIN_SESSIONS
                    && !self.sessions.contains_key(&m.session)
                    && let Some(&any) = self.sessions.keys().next()
                {
                    // One forgotten, not all: its next message says
                    // nothing of what it follows.
                    self.sessions.remove(&any);
                }
                self.sessions.insert(m.session, m.seq);
                Origin {
                    source: Source::Session(m.session),
                    position: m.seq,
                    prior_below,
                }
            }
            // Unmarked, or marked by a session of an address (stored before
            // this relay was in a cluster): this relay's numbering.
            _ => {
                let prior_below = self.relay;
                self.relay = Some(offset + 1);
                Origin {
                    source: Source::Relay(id),
                    position: offset,
                    prior_below,
                }
            }
        }
    }
}

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
    /// Its place in its source's numbering, for the relays that receive it.
    pub origin: Origin,
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
    Follow {
        /// The channel name or pattern.
        name: String,
        /// Where a consumer that does not exist yet starts (ns since the
        /// Unix epoch): what the cluster stored from then on; `None` from
        /// now.
        since: Option<u64>,
    },
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
    /// Nothing of its source is stored here yet and it says earlier ones
    /// exist, near the source's start: they may be on their way (sent
    /// again after a failure) or long gone (this relay began following
    /// after them). Held a short while, then taken.
    Unsure,
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
    /// A bridged-to offset moved since the core last asked (publishers
    /// waiting on it may be acknowledged).
    pub(super) moved: bool,
}

impl Cluster {
    /// True if this relay consumes `channel` from the cluster already (by
    /// name; a pattern that covers it is not asked about).
    pub(super) fn follows(&self, channel: &str) -> bool {
        self.followed.contains(channel)
    }

    /// True if nothing stored here waits to be handed to the bridge or for
    /// its answer.
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.0 == 0 && self.waiting.is_empty()
    }

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
            moved: false,
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
        for name in wanted.intersection(&self.followed) {
            // Followed already: it has what a resume asked for.
            if let Some(ch) = channels.id(name) {
                channels[ch].follow_since = None;
            }
        }
        for new in wanted.difference(&self.followed) {
            // A subscriber that resumed here needs what was stored since.
            let since = (channels.id(new)).and_then(|ch| channels[ch].follow_since.take());
            self.changes.push_back(Interest::Follow {
                name: new.clone(),
                since,
            });
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
                self.moved = true;
                continue;
            }
            if channel.bridge_next < log.first_offset() {
                // Retention deleted what was never bridged.
                counters.bridge_skipped += log.first_offset() - channel.bridge_next;
                channel.bridge_next = log.first_offset();
                channel.bridge_cover = channel.bridge_cover.max(log.first_offset());
                channel.bridged_to = channel.bridged_to.max(log.first_offset());
                channel.bridge_chain.reset();
                self.moved = true;
            }
            let chain = &mut channel.bridge_chain;
            if !chain.started && channel.bridge_next < limit {
                // What a step mark at the start continues, and, from a
                // channel's very start, that nothing came before.
                let at = channel.bridge_next;
                let known =
                    (channel.bridge_mark_at).and_then(|(o, mark)| (o == at).then_some(mark));
                match known.map_or_else(|| log.mark_before(at), Ok) {
                    Ok(mark) => {
                        chain.mark = mark;
                        channel.bridge_mark_at = Some((at, mark));
                        // The last marked record before is its session's
                        // last message before (session marks are whole in
                        // a cluster, so its next says what it follows).
                        if let Some(m) = mark.filter(|m| m.client == CLUSTER_SESSION) {
                            chain.sessions.insert(m.session, m.seq);
                        }
                    }
                    Err(e) => {
                        channel.bridge_queued = false;
                        failed = Some((ch, e));
                        continue;
                    }
                }
                if channel.bridge_next == 0 {
                    chain.relay = Some(0);
                }
                chain.started = true;
            }
            // `covers_from`: the first offset no message handed out covers
            // (copies scanned since the last one sent, in earlier turns too).
            let (mut next, mut covers_from) = (channel.bridge_next, channel.bridge_cover);
            let mut taken = 0;
            let in_flight = &mut self.in_flight;
            let name = &channel.name;
            let id = self.id;
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
                    // Damage the recovery warned of (a step with nothing
                    // before it) goes up as this relay's own.
                    let resolved = r.mark.resolve(chain.mark).ok().flatten();
                    if resolved.is_some() {
                        chain.mark = resolved;
                    }
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
                        origin: chain.origin(id, r.offset, r.mark, resolved),
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
                    self.moved = true;
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
                self.moved = true;
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
            channel.bridge_chain.reset();
        }
        if !channel.bridge_waiting {
            channel.bridge_waiting = true;
            self.waiting.push((now + RETRY_AFTER, ch));
        }
    }
}

/// The mark and decision for a message of `origin` in a channel whose log
/// says `last` is the last it stored from that source, at relay `id`; with
/// `past_a_gap` (the earlier ones are given up for lost) one that would
/// wait goes in, and the second value says whether it went past a gap.
pub(super) fn place(
    id: u64,
    origin: Origin,
    last: Option<u64>,
    past_a_gap: bool,
) -> Result<(SessionMark, bool), Remote> {
    let Origin {
        source,
        position,
        prior_below,
    } = origin;
    if source == Source::Relay(id) {
        return Err(Remote::Duplicate);
    }
    let mut gap = false;
    match (last, prior_below) {
        (Some(last), _) if position <= last => return Err(Remote::Duplicate),
        (Some(last), Some(prior)) if prior > last.saturating_add(1) => match past_a_gap {
            true => gap = true,
            false => return Err(Remote::Ahead),
        },
        (None, Some(prior)) if prior > 0 && prior <= WINDOW as u64 && !past_a_gap => {
            return Err(Remote::Unsure);
        }
        _ => {}
    }
    let mark = match source {
        Source::Relay(relay) => SessionMark::remote(relay, position),
        Source::Session(session) => SessionMark::remote_session(session, position),
    };
    Ok((mark, gap))
}

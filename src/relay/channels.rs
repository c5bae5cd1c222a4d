//! The relay's channels: each channel's storage, its subscribers and raw
//! egress, and the table that finds a channel by name, creates it within the
//! channel limit, and forgets it once it holds nothing and serves no one.
//!
//! Owns no protocol logic: the conductor in [`super`] decides what to store
//! and send; this keeps the slots, the names and the idle rule.

use std::net::SocketAddr;
use std::time::Instant;

// Seeded per process (in every map of the relay core): fast on the
// per-frame lookups (SipHash was 17 % of the relay's CPU under reliable
// load), and an attacker who cannot learn the seed cannot aim collisions;
// the relay's limits bound every map anyway.
use foldhash::{HashMap, HashMapExt};

use super::counters::Counters;
use super::groups::{Group, Share};
use crate::log::{ChannelLog, DataDir, LogError, Recovery, SessionMark};
use crate::reliable::Sender;

/// Index of a channel in [`Channels`]; stable while the channel is known (a
/// forgotten channel's index is given to the next new one).
pub(super) type ChannelId = usize;

/// Where a channel's messages are kept. The log is held inline, not boxed:
/// one per channel, and reached on every append and read.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Storage {
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
    /// What a channel found in the data directory is served from, given how
    /// opening its log went (logged: an operator must see damage).
    pub(super) fn recovered(
        name: &str,
        opened: Result<(ChannelLog, Recovery), LogError>,
    ) -> Storage {
        match opened {
            Ok((log, recovery)) => {
                if let Some(at) = recovery.damage_at {
                    let file = recovery
                        .damaged_file
                        .as_deref()
                        .map(|f| f.display().to_string());
                    tracing::warn!(
                        channel = %name,
                        file = file.as_deref().unwrap_or("?"),
                        position = at,
                        zeroed_bytes = recovery.torn_bytes,
                        truncated_corruption = recovery.truncated_corruption,
                        deleted_segments = recovery.deleted_segments,
                        "recovered a damaged log; kept every record before the damage"
                    );
                }
                Storage::Open(log)
            }
            Err(e @ LogError::NoSpace(_)) => {
                // A channel whose first segment could not be allocated holds
                // nothing yet; its next message tries again.
                tracing::warn!(channel = %name, "{e}");
                Storage::Empty
            }
            Err(e) => {
                tracing::error!(channel = %name, "not serving channel: {e}");
                Storage::Failed(e.to_string())
            }
        }
    }

    /// The stored offset range (first, next), or `None` if not served.
    pub(super) fn offsets(&self) -> Option<(u64, u64)> {
        match self {
            Storage::Empty => Some((0, 0)),
            Storage::Open(log) => Some((log.first_offset(), log.next_offset())),
            Storage::Failed(_) => None,
        }
    }
}

/// One named stream of messages.
#[derive(Debug)]
pub(super) struct Channel {
    /// The channel's name, as clients spell it.
    pub(super) name: Box<str>,
    /// Its log.
    pub(super) storage: Storage,
    /// Who receives live messages.
    pub(super) subscribers: Vec<Subscriber>,
    /// Its reliable queue groups (a plain group is only its members'
    /// `group`).
    pub(super) groups: Vec<Group>,
    /// Plain-UDP destinations that get every message as-is.
    pub(super) raw_out: Vec<SocketAddr>,
    /// Offsets below this are known to be on disk (`--fsync interval`).
    pub(super) durable_to: u64,
    /// Where it stands in the durability bookkeeping.
    pub(super) sync_marks: super::durability::SyncMarks,
    /// Named in the configuration (raw ports): never forgotten.
    pub(super) pinned: bool,
    /// Reliable publishing sessions that may still append to it: while any
    /// does, its slot is not reused.
    pub(super) holds: usize,
    /// With a cluster: every message of this relay below this offset is
    /// stored in the cluster (as it reported).
    pub(super) bridged_to: u64,
    /// With a cluster: the next offset to hand to the bridge.
    pub(super) bridge_next: u64,
    /// With a cluster: the first offset no message handed out covers (the
    /// copies of other relays' messages scanned since the last one).
    pub(super) bridge_cover: u64,
    /// In the cluster's queue of channels with messages to hand out.
    pub(super) bridge_queued: bool,
    /// Waiting to be tried again after the cluster did not store one.
    pub(super) bridge_waiting: bool,
    /// With a cluster: where each source's numbering stands at
    /// `bridge_next`, to tell the cluster what each message follows.
    pub(super) bridge_chain: super::cluster::Chain,
    /// With a cluster: the step mark a scan starting at this offset
    /// continues, as last looked up (a resend looks it up once, not once a
    /// try).
    pub(super) bridge_mark_at: Option<(u64, Option<crate::log::SessionMark>)>,
    /// With a cluster: the open reliable sessions that stored messages
    /// here, by id, with what each stint of theirs stored (copies of theirs
    /// outside those, from the relays they used between, still go in).
    pub(super) sessions_here: HashMap<u64, Stints>,
    /// With a cluster: a subscriber resumed here from another relay and
    /// needs the cluster's messages stored from this time (ns) on; taken
    /// when the channel is next followed (a new consumer starts there).
    pub(super) follow_since: Option<u64>,
}

/// In a cluster: the stretches of one reliable session's messages a relay
/// stored itself on a channel, one per address the session came from while
/// open (a publisher that moves away and back is a second stint).
#[derive(Debug, Default)]
pub(super) struct Stints {
    /// (address, first seq stored, last seq stored).
    pub(super) open: Vec<(SocketAddr, u64, u64)>,
    /// A stint ended while another was open: what it stored is no longer
    /// known here.
    pub(super) forgot: bool,
}

impl Stints {
    /// Notes message `seq` stored here by the session from `from`.
    pub(super) fn stored(&mut self, from: SocketAddr, seq: u64) {
        match self.open.iter_mut().find(|s| s.0 == from) {
            Some(stint) => stint.2 = stint.2.max(seq),
            None => self.open.push((from, seq, seq)),
        }
    }
}

impl Channel {
    /// The stint of session `session` from `from` ended (its peer is gone).
    pub(super) fn session_ended(&mut self, session: u64, from: SocketAddr) {
        let Some(stints) = self.sessions_here.get_mut(&session) else {
            return;
        };
        stints.open.retain(|s| s.0 != from);
        if stints.open.is_empty() {
            self.sessions_here.remove(&session);
        } else {
            stints.forgot = true;
        }
    }
}

/// Why a channel did not store a message.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// No disk space (for a new channel's first segment or the next one).
    #[error("cannot store the message: {0}")]
    NoSpace(LogError),
    /// The channel is not served (damaged log, failed sync).
    #[error("channel not served: {0}")]
    NotServed(String),
    /// The log failed to write: the channel stopped.
    #[error("cannot store the message: {0}")]
    Failed(LogError),
}

impl Refused {
    /// Counts the drop by its reason, and says the reason, for the client.
    pub(super) fn counted(self, counters: &mut Counters) -> String {
        match self {
            Refused::NoSpace(_) => counters.dropped_log_full += 1,
            Refused::NotServed(_) => counters.dropped_unavailable += 1,
            Refused::Failed(_) => counters.dropped_log_error += 1,
        }
        self.to_string()
    }
}

impl Channel {
    /// Appends a message to the channel's log (creating the log for the
    /// first one) and returns its offset. On error nothing was stored; a
    /// failed write stops the channel.
    pub(super) fn store(
        &mut self,
        data_dir: &DataDir,
        timestamp: u64,
        session: Option<SessionMark>,
        payload: &[u8],
    ) -> Result<u64, Refused> {
        if matches!(self.storage, Storage::Empty) {
            match data_dir.create_channel(&self.name) {
                Ok(log) => self.storage = Storage::Open(log),
                Err(e) => {
                    // Most likely a full disk: the channel stays empty and
                    // the next message tries again (the caller says so,
                    // once in a while).
                    return Err(Refused::NoSpace(e));
                }
            }
        }
        let log = match &mut self.storage {
            Storage::Open(log) => log,
            Storage::Failed(reason) => return Err(Refused::NotServed(reason.clone())),
            Storage::Empty => unreachable!("created above"),
        };
        match log.append(timestamp, session, payload) {
            Ok(offset) => Ok(offset),
            Err(e @ LogError::NoSpace(_)) => Err(Refused::NoSpace(e)),
            Err(e) => {
                tracing::error!(channel = %self.name, "append failed, channel stopped: {e}");
                self.storage = Storage::Failed(e.to_string());
                Err(Refused::Failed(e))
            }
        }
    }

    /// Holds nothing and serves no one: its slot can be given back.
    pub(super) fn is_idle(&self) -> bool {
        matches!(self.storage, Storage::Empty)
            && self.subscribers.is_empty()
            && self.raw_out.is_empty()
            && !self.pinned
            && self.holds == 0
    }
}

/// A subscription as seen from its channel.
#[derive(Debug)]
pub(super) struct Subscriber {
    /// The subscriber's address.
    pub(super) peer: SocketAddr,
    /// The id the subscriber chose.
    pub(super) sub_id: u32,
    /// The next offset to send. Equal to the channel's next offset for a live
    /// subscription; below it while replaying from the log; above it for a
    /// start in the future.
    pub(super) cursor: u64,
    /// True while the subscription is in the replay queue.
    pub(super) replaying: bool,
    /// For a reliable subscription, the send half of the ARQ over the
    /// channel's offsets: its whole state is this and the log; no copy of a
    /// message is kept.
    pub(super) arq: Option<Box<Sender>>,
    /// The time of this subscription's live entry in `Relay::arq_timers`.
    /// A later deadline is not pushed while an earlier one waits (when that
    /// one fires, the current deadline is pushed), so acknowledgements that
    /// move the deadline do not pile stale entries into the heap.
    pub(super) timer_at: Option<Instant>,
    /// For a reliable subscription, the byte ranges the subscriber holds of
    /// large messages it has only in part (`AckKind::Pieces`), lowest offset
    /// first, at most `wire::MAX_PIECES_REPORTED`: resending one leaves them
    /// out.
    pub(super) pieces_in: Vec<(u64, Vec<(u64, u64)>)>,
    /// The queue group it is a member of, if any: each message goes to one
    /// member of each group, the least loaded.
    pub(super) group: Option<Box<str>>,
    /// With a cluster, for a reliable subscription that asked for origins:
    /// this relay's id (its own messages' source), and each DELIVER says
    /// where its message came from.
    pub(super) origins: Option<u64>,
    /// A group member's recent deliveries, decaying with a time constant
    /// of a second, and when that was last brought up to date (the
    /// message timestamp, ns): its load.
    pub(super) recent: (f64, u64),
    /// For a member of a reliable queue group, the channel offsets of the
    /// messages its ARQ numbers (a member's sequence numbers are its own).
    pub(super) share: Option<Box<Share>>,
}

impl Subscriber {
    /// Its recent deliveries as of `at` (ns).
    pub(super) fn load_at(&self, at: u64) -> f64 {
        let (value, since) = self.recent;
        let elapsed = at.saturating_sub(since) as f64 / 1e9;
        value * (-elapsed).exp()
    }
}

/// Subscription `sub_id` of `peer` among a channel's `subscribers`.
pub(super) fn subscriber(
    subscribers: &mut [Subscriber],
    peer: SocketAddr,
    sub_id: u32,
) -> Option<&mut Subscriber> {
    subscribers
        .iter_mut()
        .find(|s| s.peer == peer && s.sub_id == sub_id)
}

/// Every channel, by id and by name.
#[derive(Debug)]
pub(super) struct Channels {
    /// Channels by id. A forgotten channel's slot stays, empty, in `free`
    /// until a new channel takes it.
    slots: Vec<Channel>,
    /// Channel ids by name.
    by_name: HashMap<Box<str>, ChannelId>,
    /// The channel found last: a batch of messages names the same channel
    /// over and over, and comparing the name is cheaper than hashing it.
    last: Option<ChannelId>,
    /// Slots of forgotten channels.
    free: Vec<ChannelId>,
    /// The most channels clients may make.
    max: usize,
}

impl Channels {
    /// No channels yet; clients may make up to `max`.
    pub(super) fn new(max: usize) -> Channels {
        Channels {
            slots: Vec::new(),
            by_name: HashMap::new(),
            last: None,
            free: Vec::new(),
            max,
        }
    }

    /// Channels known.
    pub(super) fn count(&self) -> usize {
        self.by_name.len()
    }

    /// Every slot's id, forgotten ones included (they hold nothing).
    pub(super) fn ids(&self) -> std::ops::Range<ChannelId> {
        0..self.slots.len()
    }

    /// Every slot, forgotten ones included (empty, with no name).
    pub(super) fn iter(&self) -> impl Iterator<Item = &Channel> {
        self.slots.iter()
    }

    /// Every slot, mutably.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Channel> {
        self.slots.iter_mut()
    }

    /// Channel `id`, if there is such a slot.
    pub(super) fn get_mut(&mut self, id: ChannelId) -> Option<&mut Channel> {
        self.slots.get_mut(id)
    }

    /// Channels that cannot be served, with the reason.
    pub(super) fn failed(&self) -> Vec<(&str, &str)> {
        self.slots
            .iter()
            .filter_map(|c| match &c.storage {
                Storage::Failed(reason) => Some((&*c.name, reason.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The channel named in the configuration (a raw port's), created if
    /// new whatever the limit, and never forgotten.
    pub(super) fn pin(&mut self, name: &str) -> ChannelId {
        let id = self.find_or_create(name);
        self.slots[id].pinned = true;
        id
    }

    /// Most channels from now on (those there are stay).
    pub(super) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// No channel is pinned or sends raw egress any more (a reload names
    /// them again).
    pub(super) fn unpin_all(&mut self) {
        for channel in self.iter_mut() {
            channel.pinned = false;
            channel.raw_out.clear();
        }
    }

    /// The offset the named channel's next message will get, if it exists
    /// and is served.
    pub(super) fn next_offset(&self, name: &str) -> Option<u64> {
        let &id = self.by_name.get(name)?;
        self.slots[id].storage.offsets().map(|(_, next)| next)
    }

    /// The id of `name`, if it is known.
    pub(super) fn id(&self, name: &str) -> Option<ChannelId> {
        if let Some(id) = self.last
            && *self.slots[id].name == *name
        {
            return Some(id);
        }
        self.by_name.get(name).copied()
    }

    /// True if a client may name `name`: it exists, or the limit has room.
    pub(super) fn allowed(&self, name: &str) -> bool {
        self.by_name.len() < self.max || self.by_name.contains_key(name)
    }

    /// The id of `name`, created empty if new (whatever the limit: callers
    /// check [`Channels::allowed`] where a client asks).
    pub(super) fn find_or_create(&mut self, name: &str) -> ChannelId {
        if let Some(id) = self.last
            && *self.slots[id].name == *name
        {
            return id;
        }
        if let Some(&id) = self.by_name.get(name) {
            self.last = Some(id);
            return id;
        }
        let channel = Channel {
            name: name.into(),
            storage: Storage::Empty,
            subscribers: Vec::new(),
            groups: Vec::new(),
            raw_out: Vec::new(),
            durable_to: 0,
            sync_marks: Default::default(),
            pinned: false,
            holds: 0,
            bridged_to: 0,
            bridge_next: 0,
            bridge_cover: 0,
            bridge_queued: false,
            bridge_waiting: false,
            bridge_chain: Default::default(),
            bridge_mark_at: None,
            sessions_here: HashMap::new(),
            follow_since: None,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = channel;
                id
            }
            None => {
                self.slots.push(channel);
                self.slots.len() - 1
            }
        };
        self.by_name.insert(self.slots[id].name.clone(), id);
        id
    }

    /// Forgets channel `id` if it holds nothing and serves no one (see
    /// [`Channel::is_idle`]), so that names only ever subscribed to (or
    /// refused) do not keep channel slots; counted.
    pub(super) fn forget_idle(&mut self, id: ChannelId, counters: &mut Counters) {
        let channel = &mut self.slots[id];
        if !channel.is_idle() || channel.name.is_empty() {
            return;
        }
        let name = std::mem::take(&mut channel.name);
        self.by_name.remove(&name);
        if self.last == Some(id) {
            self.last = None;
        }
        self.free.push(id);
        counters.channels_forgotten += 1;
    }
}

impl std::ops::Index<ChannelId> for Channels {
    type Output = Channel;

    fn index(&self, id: ChannelId) -> &Channel {
        &self.slots[id]
    }
}

impl std::ops::IndexMut<ChannelId> for Channels {
    fn index_mut(&mut self, id: ChannelId) -> &mut Channel {
        &mut self.slots[id]
    }
}

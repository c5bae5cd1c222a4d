//! Reliable queue groups: the members of a group share a channel's
//! messages, each message to one of them, acknowledged, and given to
//! another member if the one that had it leaves (its lease lapses, it stops
//! answering, it unsubscribes) before acknowledging it.
//!
//! A member is a reliable subscription whose ARQ numbers its own messages
//! 0, 1, 2... (its receiver must see no holes), with a map from those
//! numbers to the channel offsets it was given ([`Share`]). The group keeps
//! the next offset no member has had and the offsets left by members that
//! went ([`Group`]). [`dispatch`] hands out messages, older ones first, each
//! to the member with the fewest unacknowledged messages (then the fewest
//! recent deliveries) whose window has room: a slow member, whose
//! acknowledgements come late, is given fewer.
//!
//! Nothing here keeps a copy of a message: what is sent is read from the log.

use std::collections::VecDeque;
use std::time::Instant;

use super::channels::{Channel, Storage, Subscriber};
use super::counters::Counters;
use super::outbox::Outbox;
use crate::log::LogError;

/// Most offsets a group holds to give again (512 KiB): members that join,
/// take a window of messages and leave cannot make it hold more. Past it
/// the oldest are dropped, counted as replay gaps.
const MAX_ORPHANS: usize = 1 << 16;

/// One reliable queue group of a channel.
#[derive(Debug)]
pub(super) struct Group {
    /// Its name, as members spell it.
    pub(super) name: Box<str>,
    /// The next channel offset no member was given.
    next: u64,
    /// Offsets given to members that left without acknowledging them,
    /// lowest first: given again before anything new. At most
    /// [`MAX_ORPHANS`].
    orphans: VecDeque<u64>,
}

impl Group {
    /// True if the group gave out everything below `next` and has nothing
    /// to give again.
    pub(super) fn is_done(&self, next: u64) -> bool {
        self.next >= next && self.orphans.is_empty()
    }

    /// A group whose first message is the one stored at `next`.
    pub(super) fn new(name: &str, next: u64) -> Group {
        Group {
            name: name.into(),
            next,
            orphans: VecDeque::new(),
        }
    }
}

/// A reliable member's messages: the channel offset of each of its
/// sequence numbers from `base` on (those not yet acknowledged).
#[derive(Debug, Default)]
pub(super) struct Share {
    /// The member sequence number of `offsets[0]`.
    base: u64,
    /// Channel offsets, by member sequence number from `base`.
    offsets: VecDeque<u64>,
}

impl Share {
    /// The channel offset of member sequence number `seq`, if it was sent
    /// and is not acknowledged.
    pub(super) fn offset(&self, seq: u64) -> Option<u64> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.offsets.get(i).copied()
    }

    /// Forgets the offsets of sequence numbers below `acked` (all
    /// acknowledged).
    pub(super) fn acknowledged(&mut self, acked: u64) {
        while self.base < acked && self.offsets.pop_front().is_some() {
            self.base += 1;
        }
    }
}

/// True if `sub` is a reliable member of group `name`.
fn is_member(sub: &Subscriber, name: &str) -> bool {
    sub.share.is_some() && sub.group.as_deref() == Some(name)
}

/// A member is leaving: what it was given and had not acknowledged
/// cumulatively goes back
/// to its group, for another member; a group with no members left is
/// ended. Returns true if there is something to give again.
pub(super) fn leaving(channel: &mut Channel, sub: &Subscriber, counters: &mut Counters) -> bool {
    let (Some(share), Some(arq), Some(name)) = (&sub.share, &sub.arq, &sub.group) else {
        return false;
    };
    let Some(gi) = channel.groups.iter().position(|g| g.name == *name) else {
        return false;
    };
    if !channel.subscribers.iter().any(|s| is_member(s, name)) {
        // The last member: the group ends, and what it had not
        // acknowledged with it.
        channel.groups.swap_remove(gi);
        return false;
    }
    let group = &mut channel.groups[gi];
    let mut given_back = 0;
    // Everything not acknowledged cumulatively: what the member holds
    // above a gap never reached its application (its receiver delivers
    // in order).
    for seq in arq.snd_una()..arq.next_seq() {
        if let Some(offset) = share.offset(seq) {
            let at = group.orphans.partition_point(|&o| o < offset);
            if group.orphans.get(at) != Some(&offset) {
                group.orphans.insert(at, offset);
                given_back += 1;
            }
        }
    }
    while group.orphans.len() > MAX_ORPHANS {
        group.orphans.pop_front();
        counters.replay_gaps += 1;
    }
    counters.group_redeliveries += given_back;
    given_back > 0
}

/// What handing out a group's messages came to.
#[derive(Debug, Default)]
pub(super) struct Dispatched {
    /// Indices (in the channel's subscribers) of the members sent something.
    pub(super) sent_to: Vec<usize>,
    /// A record failed its check: the channel must stop, for this reason.
    pub(super) damaged: Option<LogError>,
}

/// Hands out group `gi`'s waiting messages (those given back first, then
/// new ones in offset order) to its members while one has room, each to
/// the least loaded.
pub(super) fn dispatch(
    channel: &mut Channel,
    gi: usize,
    outbox: &mut Outbox,
    counters: &mut Counters,
    now: Instant,
    timestamp: u64,
) -> Dispatched {
    let mut out = Dispatched::default();
    let Channel {
        storage,
        subscribers,
        groups,
        ..
    } = channel;
    let (Storage::Open(log), Some(group)) = (storage, groups.get_mut(gi)) else {
        return out;
    };
    let first = log.first_offset();
    // Retention removed what no member had yet: a gap, as in replay.
    while group.orphans.front().is_some_and(|&o| o < first) {
        group.orphans.pop_front();
        counters.replay_gaps += 1;
    }
    if group.next < first {
        counters.replay_gaps += 1;
        group.next = first;
    }
    let Group {
        name,
        next,
        orphans,
    } = group;
    let name = &**name;
    let mut give = |offset: u64, r: crate::log::Record<'_>, out: &mut Dispatched| -> bool {
        let Some(i) = least_loaded(subscribers, name, now, timestamp) else {
            return false;
        };
        let sub = &mut subscribers[i];
        let (Some(arq), Some(share)) = (sub.arq.as_deref_mut(), sub.share.as_deref_mut()) else {
            return false;
        };
        let seq = arq.on_send_bytes(now, r.payload.len());
        if share.offsets.is_empty() {
            share.base = seq;
        }
        share.offsets.push_back(offset);
        sub.recent = (sub.load_at(timestamp) + 1.0, timestamp);
        counters.messages_delivered += 1;
        outbox.push_delivery(sub.peer, sub.sub_id, seq, r.timestamp, r.payload);
        if !out.sent_to.contains(&i) {
            out.sent_to.push(i);
        }
        true
    };
    while let Some(&offset) = orphans.front() {
        let mut given = false;
        if let Err(e) = log.scan(offset, |r| {
            given = r.offset == offset && give(offset, r, &mut out);
            false
        }) {
            out.damaged = Some(e);
            return out;
        }
        if !given {
            return out;
        }
        orphans.pop_front();
    }
    if *next < log.next_offset()
        && let Err(e) = log.scan(*next, |r| {
            if !give(r.offset, r, &mut out) {
                return false;
            }
            *next = r.offset + 1;
            true
        })
    {
        out.damaged = Some(e);
    }
    out
}

/// The member of group `name` to give the next message to: among those
/// whose window has room, the fewest unacknowledged messages, then the
/// fewest recent deliveries.
fn least_loaded(subscribers: &[Subscriber], name: &str, now: Instant, at: u64) -> Option<usize> {
    let mut best: Option<(usize, u64, f64)> = None;
    for (i, sub) in subscribers.iter().enumerate() {
        if !is_member(sub, name) {
            continue;
        }
        let Some(arq) = sub.arq.as_deref() else {
            continue;
        };
        if !arq.can_send(now) {
            continue;
        }
        let (unacked, recent) = (arq.in_flight(), sub.load_at(at));
        let better = match best {
            None => true,
            Some((_, u, r)) => unacked < u || (unacked == u && recent < r),
        };
        if better {
            best = Some((i, unacked, recent));
        }
    }
    best.map(|(i, ..)| i)
}

//! Subscriptions: opening one (live, replaying or reliable) within the
//! limits, the queue of replaying subscriptions fed from the log in turn, the
//! reliable subscriptions' ARQ timers and acknowledgements, and ending one.
//!
//! Owns the counts, the replay queue and the timers. Each subscription is
//! kept where it is used: as a [`Subscriber`] in its channel (for fan-out)
//! and as (sub_id, channel) in its peer (found by address, ended with the
//! lease). The channel table, the peers, the outbox and the counters come as
//! arguments. A subscription that has to be dropped is ended here and
//! reported as a [`Lost`], for the conductor to tell its client.

use foldhash::{HashMap, HashMapExt};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::channels::{Channel, ChannelId, Channels, Storage, Subscriber, subscriber};
use super::counters::Counters;
use super::delivery::{self, SubscriberAck};
use super::groups::{self, Group};
use super::outbox::Outbox;
use super::peers::{Owner, Peers};
use crate::reliable::{ArqConfig, Sender};
use crate::time::Now;
use crate::wire::{DeliveryMode, ErrorCode, Frame, StartPosition};

/// How often replaying subscriptions are fed from the log.
const REPLAY_TICK: Duration = Duration::from_millis(1);

/// Limits and settings of subscriptions, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Most live subscriptions across all clients.
    pub(super) max: usize,
    /// Most live subscriptions of one address.
    pub(super) max_per_client: usize,
    /// Lease handed to subscribers.
    pub(super) lease: Duration,
    /// Bytes of replayed deliveries one client address gets per tick, its
    /// replaying subscriptions taking turns: a quota per client, so that
    /// opening many replays gets no larger a share.
    pub(super) replay_budget: usize,
    /// ARQ settings of reliable subscriptions.
    pub(super) arq: ArqConfig,
}

/// What a SUBSCRIBE asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request<'a> {
    /// The id the client chose.
    pub(super) sub_id: u32,
    /// Plain or reliable delivery.
    pub(super) mode: DeliveryMode,
    /// Where in the channel to start.
    pub(super) start: StartPosition,
    /// Who a new subscription is charged to besides the address.
    pub(super) owner: Owner,
    /// The wildcard subscription this one follows a channel for, if any:
    /// its client is told with MATCHED instead of SUBSCRIBED.
    pub(super) wildcard: Option<u32>,
    /// The queue group it joins, if any.
    pub(super) group: Option<&'a str>,
    /// In a cluster, for a reliable subscription that asked for origins:
    /// this relay's id (see [`Subscriber::origins`]).
    pub(super) origins: Option<u64>,
}

/// A SUBSCRIBE that was refused (counted), with what to tell the client.
#[derive(Debug)]
pub(super) struct Refusal {
    /// The ERROR code.
    pub(super) code: ErrorCode,
    /// Why, for the client.
    pub(super) reason: String,
}

/// A reliable subscription dropped because its subscriber stopped answering
/// or retention deleted what it still needed: already ended and counted.
#[derive(Debug)]
pub(super) struct Lost {
    /// The subscriber's address.
    pub(super) peer: SocketAddr,
    /// Why, for the subscriber.
    pub(super) reason: String,
}

/// Every subscription's bookkeeping outside its channel and peer.
#[derive(Debug)]
pub(super) struct Subscriptions {
    /// The limits this table enforces.
    limits: Limits,
    /// Live subscriptions across all clients.
    count: usize,
    /// Subscriptions behind their channel's head, fed from the log in turn:
    /// (channel, subscriber address, sub_id).
    replay_queue: VecDeque<(ChannelId, SocketAddr, u32)>,
    /// When the next replay tick is due, while the queue is not empty.
    next_replay: Option<Instant>,
    /// Bytes each client address was sent in the current replay tick
    /// (emptied at every tick; kept to reuse its memory).
    replay_spent: HashMap<SocketAddr, usize>,
    /// Deadlines of reliable subscriptions' ARQ timers, earliest first:
    /// (when, subscriber, sub_id, channel). Pushed whenever a deadline
    /// moves earlier; an entry that is no longer its subscription's
    /// deadline is skipped when it comes due.
    timers: BinaryHeap<Reverse<(Instant, SocketAddr, u32, ChannelId)>>,
    /// Subscriptions dropped since the conductor last asked.
    lost: Vec<Lost>,
    /// Channels whose reliable queue groups have messages to give again
    /// (a member left), handed out in [`Subscriptions::settle`].
    regroup: Vec<ChannelId>,
}

impl Subscriptions {
    /// New limits (the subscriptions there are stay; a new lease counts
    /// from each one's next datagram).
    pub(super) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// No subscriptions yet.
    pub(super) fn new(limits: Limits) -> Subscriptions {
        Subscriptions {
            limits,
            count: 0,
            replay_queue: VecDeque::new(),
            next_replay: None,
            replay_spent: HashMap::new(),
            timers: BinaryHeap::new(),
            lost: Vec::new(),
            regroup: Vec::new(),
        }
    }

    /// Live subscriptions across all clients.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// The lease handed to subscribers, in SUBSCRIBED's unit.
    pub(super) fn lease_ms(&self) -> u32 {
        self.limits.lease.as_millis().min(u128::from(u32::MAX)) as u32
    }

    /// True if `peer` holds subscription `sub_id` on channel `ch`.
    pub(super) fn holds(peers: &Peers, peer: SocketAddr, sub_id: u32, ch: ChannelId) -> bool {
        peers.channel_of(&peer, sub_id) == Some(ch)
    }

    /// Why `from` (and `owner`'s key) may hold no more subscriptions, if
    /// so: a wildcard subscription counts as one too.
    pub(super) fn room(
        &self,
        peers: &Peers,
        from: SocketAddr,
        owner: Owner,
    ) -> Result<(), &'static str> {
        let held = peers
            .get(&from)
            .map_or(0, |p| p.subscriptions.len() + p.wildcards());
        if held >= self.limits.max_per_client {
            return Err("this address holds its maximum number of subscriptions");
        }
        if let Some(key) = owner.key
            && peers.held_by(key).subscriptions >= owner.max_subscriptions
        {
            return Err("this key holds its maximum number of subscriptions");
        }
        Ok(())
    }

    /// Entries in the ARQ timer heap, live or stale.
    #[cfg(test)]
    pub(super) fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// The earliest time [`Subscriptions::handle_timeout`] has work to do.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let arq = self.timers.peek().map(|Reverse((at, ..))| *at);
        arq.into_iter().chain(self.next_replay).min()
    }

    /// A subscription dropped since the last call, for its client to be told.
    pub(super) fn poll_lost(&mut self) -> Option<Lost> {
        self.lost.pop()
    }

    /// Opens subscription `request.sub_id` of `from` to channel `id`, or
    /// keeps it if it exists (a keepalive), answers SUBSCRIBED, and starts
    /// what it needs: replay from the log, or a reliable subscription's
    /// first sends. A subscription of the same id to another channel is
    /// replaced.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn subscribe(
        &mut self,
        now: Now,
        from: SocketAddr,
        request: Request<'_>,
        id: ChannelId,
        channels: &mut Channels,
        peers: &mut Peers,
        outbox: &mut Outbox,
        counters: &mut Counters,
    ) -> Result<(), Refusal> {
        let Request {
            sub_id,
            mode,
            start,
            owner,
            wildcard,
            group,
            origins,
        } = request;
        let Some((first, next_offset)) = channels[id].storage.offsets() else {
            counters.dropped_unavailable += 1;
            let name = &channels[id].name;
            let reason = format!("channel {name} is not served: its log is damaged");
            return Err(Refusal {
                code: ErrorCode::UNAVAILABLE,
                reason,
            });
        };
        // A start before the oldest stored message begins at the oldest one;
        // SUBSCRIBED then shows the gap. A start in the future waits for it.
        let cursor = match start {
            StartPosition::Latest => next_offset,
            StartPosition::Earliest => first,
            StartPosition::Offset(o) => o.max(first),
            // Worked out by the relay before (`Relay::resume`); one
            // that gets here anyway starts at the head.
            StartPosition::Resume { .. } => next_offset,
        };
        let reliable = mode == DeliveryMode::Reliable;
        let existing = peers.channel_of(&from, sub_id);
        // The same subscription, unless it joins or leaves a group.
        let same = existing == Some(id)
            && subscriber(&mut channels[id].subscribers, from, sub_id)
                .is_some_and(|s| s.group.as_deref() == group);
        let is_new = !same;
        if is_new {
            // New, or replacing one of the same id; a keepalive or a
            // retried subscribe leaves it as it is.
            if let Some(name) = group {
                check_group(&channels[id], name, reliable, counters)?;
            }
            if existing.is_some() {
                self.unsubscribe(from, sub_id, channels, peers, counters);
            }
            // A reliable member's ARQ numbers its own messages: from 0, or
            // from where its client's receiver is (a member the relay had
            // let go and takes in again).
            let member = reliable && group.is_some();
            let first_seq = match (member, start) {
                (false, _) => cursor,
                (true, StartPosition::Offset(o)) => o,
                (true, _) => 0,
            };
            let arq = reliable.then(|| Box::new(Sender::new(self.limits.arq, first_seq)));
            let new = (sub_id, id, cursor);
            if let Err(reason) = self.add(now.instant, from, owner, new, arq, channels, peers) {
                channels.forget_idle(id, counters);
                counters.dropped_limit += 1;
                return Err(Refusal {
                    code: ErrorCode::LIMIT_REACHED,
                    reason: reason.to_string(),
                });
            }
            counters.subscriptions_opened += 1;
            if matches!(start, StartPosition::Offset(o) if o < first) && group.is_none() {
                counters.replay_gaps += 1;
            }
            if let Some(sub) = subscriber(&mut channels[id].subscribers, from, sub_id) {
                // Origins are told on a subscription's own numbering only.
                sub.origins = origins.filter(|_| reliable && group.is_none());
            }
            if let Some(name) = group {
                let channel = &mut channels[id];
                if member && !channel.groups.iter().any(|g| *g.name == *name) {
                    channel.groups.push(Group::new(name, next_offset));
                }
                if let Some(sub) = subscriber(&mut channel.subscribers, from, sub_id) {
                    sub.group = Some(name.into());
                    sub.share = member.then(Box::default);
                }
            }
        }
        let Some(sub) = subscriber(&mut channels[id].subscribers, from, sub_id) else {
            return Ok(()); // cannot happen: it was found or added above
        };
        let first_offset = match &sub.arq {
            Some(arq) => arq.snd_una(),
            None => sub.cursor,
        };
        let reliable = sub.arq.is_some();
        // A reliable member's offsets are its own.
        let next_offset = match (&sub.arq, &sub.share) {
            (Some(arq), Some(_)) => arq.next_seq(),
            _ => next_offset,
        };
        // Behind the head, plain or reliable, it replays: within its
        // client's replay budget, from the replay queue. (A live reliable
        // one a little behind, its window full, is not made to replay by
        // its keepalive; a group member is given what the group has.)
        let behind = match &sub.arq {
            Some(arq) => is_new && sub.share.is_none() && arq.next_seq() < next_offset,
            None => sub.cursor < next_offset,
        };
        if behind && !sub.replaying {
            sub.replaying = true;
            self.replay_queue.push_back((id, from, sub_id));
            self.next_replay.get_or_insert(now.instant);
        }
        let lease_ms = self.lease_ms();
        let answer = match wildcard {
            None => Frame::Subscribed {
                sub_id,
                first_offset,
                next_offset,
                lease_ms,
            },
            Some(wildcard) => Frame::Matched {
                sub_id: wildcard,
                channel_sub_id: sub_id,
                first_offset,
                next_offset,
                channel: &channels[id].name,
            },
        };
        outbox.push_frame(from, &answer);
        if reliable {
            self.pump(now, id, from, sub_id, channels, peers, outbox, counters);
        }
        Ok(())
    }

    /// Adds a subscription to its channel and its peer, within the limits.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        now: Instant,
        from: SocketAddr,
        owner: Owner,
        (sub_id, id, cursor): (u32, ChannelId, u64),
        arq: Option<Box<Sender>>,
        channels: &mut Channels,
        peers: &mut Peers,
    ) -> Result<(), &'static str> {
        if self.count >= self.limits.max {
            return Err("the relay holds its maximum number of subscriptions");
        }
        self.room(peers, from, owner)?;
        peers.add_subscription(now, from, owner.key, (sub_id, id));
        channels[id].subscribers.push(Subscriber {
            peer: from,
            sub_id,
            cursor,
            replaying: false,
            arq,
            timer_at: None,
            pieces_in: Vec::new(),
            group: None,
            recent: (0.0, 0),
            share: None,
            origins: None,
        });
        self.count += 1;
        Ok(())
    }

    /// Ends subscription `sub_id` of `from` at its client's request;
    /// counted either way.
    pub(super) fn close(
        &mut self,
        from: SocketAddr,
        sub_id: u32,
        channels: &mut Channels,
        peers: &mut Peers,
        counters: &mut Counters,
    ) -> Result<(), Refusal> {
        if self.unsubscribe(from, sub_id, channels, peers, counters) {
            counters.subscriptions_closed += 1;
            Ok(())
        } else {
            counters.dropped_unknown_subscription += 1;
            Err(Refusal {
                code: ErrorCode::UNKNOWN_SUBSCRIPTION,
                reason: format!("no subscription {sub_id} for this address"),
            })
        }
    }

    /// Ends subscription `sub_id` of `from`; false if there was none.
    pub(super) fn unsubscribe(
        &mut self,
        from: SocketAddr,
        sub_id: u32,
        channels: &mut Channels,
        peers: &mut Peers,
        counters: &mut Counters,
    ) -> bool {
        let Some(pos) = peers
            .get(&from)
            .and_then(|p| p.subscriptions.iter().position(|(s, _)| *s == sub_id))
        else {
            return false;
        };
        let Some((_, ch)) = peers.remove_subscription(&from, pos) else {
            return false;
        };
        self.detach(ch, from, sub_id, channels, counters);
        true
    }

    /// Ends every subscription of a peer that is gone.
    pub(super) fn peer_gone(
        &mut self,
        addr: SocketAddr,
        subscriptions: &[(u32, ChannelId)],
        channels: &mut Channels,
        counters: &mut Counters,
    ) {
        for &(sub_id, ch) in subscriptions {
            self.detach(ch, addr, sub_id, channels, counters);
        }
    }

    /// Takes a subscription out of its channel (its queue and timer entries
    /// go stale and are skipped), and forgets the channel if idle.
    fn detach(
        &mut self,
        ch: ChannelId,
        peer: SocketAddr,
        sub_id: u32,
        channels: &mut Channels,
        counters: &mut Counters,
    ) {
        let channel = &mut channels[ch];
        if let Some(pos) = (channel.subscribers)
            .iter()
            .position(|s| s.peer == peer && s.sub_id == sub_id)
        {
            let sub = channel.subscribers.swap_remove(pos);
            self.count -= 1;
            if groups::leaving(channel, &sub, counters) && !self.regroup.contains(&ch) {
                self.regroup.push(ch);
            }
        }
        channels.forget_idle(ch, counters);
    }

    /// Sends reliable subscription `sub_id` of `peer` on channel `ch` what
    /// its ARQ allows: retransmissions re-read from the log, then new
    /// messages from its next offset. Drops it (see [`Lost`]) if its
    /// subscriber stopped answering or retention deleted what it needed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pump(
        &mut self,
        now: Now,
        ch: ChannelId,
        peer: SocketAddr,
        sub_id: u32,
        channels: &mut Channels,
        peers: &mut Peers,
        outbox: &mut Outbox,
        counters: &mut Counters,
    ) {
        let Channel {
            storage,
            subscribers,
            name,
            groups,
            ..
        } = &mut channels[ch];
        let Some(sub) = subscriber(subscribers, peer, sub_id) else {
            return;
        };
        // A reliable subscription catching up is charged to its client's
        // replay budget for the tick, as a plain replay is; a live one is
        // not held back.
        let budget = match sub.replaying {
            true => (self.limits.replay_budget)
                .saturating_sub(self.replay_spent.get(&peer).copied().unwrap_or(0)),
            false => usize::MAX,
        };
        let pumped = delivery::pump(sub, storage, outbox, counters, now, budget);
        if sub.replaying {
            *self.replay_spent.entry(peer).or_default() += pumped.spent;
            sub.replaying = !pumped.caught_up;
        }
        if let Some(reason) = &pumped.damaged {
            tracing::error!(channel = %name, "not serving channel: {reason}");
            counters.log_errors += 1;
            *storage = Storage::Failed(reason.clone());
        }
        self.arm(sub, ch, pumped.timer);
        // A reliable member's new messages come from its group.
        let group = match sub.share {
            Some(_) => groups
                .iter()
                .position(|g| Some(&*g.name) == sub.group.as_deref()),
            None => None,
        };
        if let Some(reason) = pumped.trouble {
            self.unsubscribe(peer, sub_id, channels, peers, counters);
            counters.subscribers_lost += 1;
            let reason = format!("reliable subscription {sub_id} dropped: {reason}");
            tracing::info!(%peer, "{reason}");
            self.lost.push(Lost { peer, reason });
        } else if let Some(gi) = group {
            self.dispatch(now, ch, gi, channels, outbox, counters);
        }
    }

    /// Puts subscription `sub` of channel `ch`'s ARQ deadline `at` in the
    /// timer heap, unless an earlier entry for it waits there already.
    fn arm(&mut self, sub: &mut Subscriber, ch: ChannelId, at: Option<Instant>) {
        if let Some(at) = at
            && sub.timer_at.is_none_or(|t| at < t)
        {
            sub.timer_at = Some(at);
            self.timers.push(Reverse((at, sub.peer, sub.sub_id, ch)));
        }
    }

    /// Hands out the waiting messages of every reliable queue group of
    /// channel `ch` (after an append).
    pub(super) fn dispatch_all(
        &mut self,
        now: Now,
        ch: ChannelId,
        channels: &mut Channels,
        outbox: &mut Outbox,
        counters: &mut Counters,
    ) {
        for gi in 0..channels[ch].groups.len() {
            self.dispatch(now, ch, gi, channels, outbox, counters);
        }
    }

    /// Hands out the messages that members who left had not acknowledged.
    pub(super) fn settle(
        &mut self,
        now: Now,
        channels: &mut Channels,
        outbox: &mut Outbox,
        counters: &mut Counters,
    ) {
        while let Some(ch) = self.regroup.pop() {
            self.dispatch_all(now, ch, channels, outbox, counters);
        }
    }

    /// Hands out reliable queue group `gi` of channel `ch`'s waiting
    /// messages to its members (see [`groups::dispatch`]), and arms the
    /// timers of those sent something.
    fn dispatch(
        &mut self,
        now: Now,
        ch: ChannelId,
        gi: usize,
        channels: &mut Channels,
        outbox: &mut Outbox,
        counters: &mut Counters,
    ) {
        let channel = &mut channels[ch];
        let out = groups::dispatch(channel, gi, outbox, counters, now.instant, now.unix_nanos);
        for i in out.sent_to {
            let sub = &mut channel.subscribers[i];
            let at = sub.arq.as_deref().and_then(Sender::poll_timeout);
            self.arm(sub, ch, at);
        }
        if let Some(e) = out.damaged {
            tracing::error!(channel = %channel.name, "not serving channel: {e}");
            counters.log_errors += 1;
            channel.storage = Storage::Failed(e.to_string());
        }
    }

    /// Takes an acknowledgement from reliable subscription `id` of `from`,
    /// and sends what it allows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_ack(
        &mut self,
        now: Now,
        from: SocketAddr,
        id: u64,
        ack: SubscriberAck<'_>,
        channels: &mut Channels,
        peers: &mut Peers,
        outbox: &mut Outbox,
        counters: &mut Counters,
    ) {
        let found = u32::try_from(id)
            .ok()
            .and_then(|sub_id| Some((sub_id, peers.channel_of(&from, sub_id)?)));
        let Some((sub_id, ch)) = found else {
            counters.dropped_unknown_subscription += 1;
            return;
        };
        let sub = subscriber(&mut channels[ch].subscribers, from, sub_id);
        match sub.map(|s| delivery::on_ack(s, ack, now.instant)) {
            Some(Some(true)) => self.pump(now, ch, from, sub_id, channels, peers, outbox, counters),
            Some(Some(false)) => {}
            _ => counters.dropped_unexpected += 1,
        }
    }

    /// Runs the ARQ timers that are due and feeds replaying subscriptions
    /// when their tick is due.
    pub(super) fn handle_timeout(
        &mut self,
        now: Now,
        channels: &mut Channels,
        peers: &mut Peers,
        outbox: &mut Outbox,
        counters: &mut Counters,
    ) {
        while let Some(&Reverse((at, peer, sub_id, ch))) = self.timers.peek() {
            if at > now.instant {
                break;
            }
            self.timers.pop();
            let live = subscriber(&mut channels[ch].subscribers, peer, sub_id)
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
            self.pump(now, ch, peer, sub_id, channels, peers, outbox, counters);
        }
        if self.next_replay.is_some_and(|at| at <= now.instant) {
            self.replay_tick(now, channels, peers, outbox, counters);
            self.next_replay = (!self.replay_queue.is_empty()).then(|| now.instant + REPLAY_TICK);
        }
    }

    /// Feeds the subscriptions that are behind their channel's head from the
    /// log, in turn, each client address up to its budget for the tick: a
    /// subscription whose client has spent it waits for the next tick,
    /// keeping its place.
    #[allow(clippy::too_many_arguments)]
    fn replay_tick(
        &mut self,
        now: Now,
        channels: &mut Channels,
        peers: &mut Peers,
        outbox: &mut Outbox,
        counters: &mut Counters,
    ) {
        self.replay_spent.clear();
        for _ in 0..self.replay_queue.len() {
            let Some((id, peer, sub_id)) = self.replay_queue.pop_front() else {
                break;
            };
            let left = self
                .limits
                .replay_budget
                .saturating_sub(self.replay_spent.get(&peer).copied().unwrap_or(0));
            if left == 0 {
                self.replay_queue.push_back((id, peer, sub_id));
                continue;
            }
            let replaying = subscriber(&mut channels[id].subscribers, peer, sub_id)
                .filter(|s| s.replaying)
                .map(|s| s.arq.is_some());
            if replaying == Some(true) {
                // Reliable: what its ARQ allows, within the budget left (the
                // pump charges it).
                self.pump(now, id, peer, sub_id, channels, peers, outbox, counters);
                if subscriber(&mut channels[id].subscribers, peer, sub_id)
                    .is_some_and(|s| s.replaying)
                {
                    self.replay_queue.push_back((id, peer, sub_id));
                }
                continue;
            }
            let Channel {
                storage,
                subscribers,
                name,
                ..
            } = &mut channels[id];
            let sub = subscriber(subscribers, peer, sub_id).filter(|s| s.replaying);
            let Some(sub) = sub else {
                continue; // unsubscribed or expired meanwhile
            };
            let Storage::Open(log) = storage else {
                sub.replaying = false;
                continue;
            };
            match delivery::replay(sub, log, outbox, counters, left) {
                Ok((behind, bytes)) => {
                    // At least one message went: a client's turn costs it
                    // something even when one message is over its budget.
                    *self.replay_spent.entry(peer).or_default() += bytes.max(1);
                    if behind {
                        self.replay_queue.push_back((id, peer, sub_id));
                    }
                }
                Err(e) => {
                    tracing::error!(channel = %name, "not serving channel: {e}");
                    counters.log_errors += 1;
                    *storage = Storage::Failed(e.to_string());
                }
            }
        }
    }
}

/// Refuses (counted) a new member of group `name` of `channel` whose kind
/// (reliable or plain) is not the group's: a group's members are all one
/// or all the other.
fn check_group(
    channel: &Channel,
    name: &str,
    reliable: bool,
    counters: &mut Counters,
) -> Result<(), Refusal> {
    let group_is_reliable = channel.groups.iter().any(|g| *g.name == *name);
    let group_is_plain = (channel.subscribers)
        .iter()
        .any(|s| s.share.is_none() && s.group.as_deref() == Some(name));
    let clash = match reliable {
        true => group_is_plain.then_some("plain"),
        false => group_is_reliable.then_some("reliable"),
    };
    match clash {
        None => Ok(()),
        Some(kind) => {
            counters.dropped_unsupported += 1;
            Err(Refusal {
                code: ErrorCode::UNSUPPORTED,
                reason: format!(
                    "queue group {name} of channel {} is {kind}: its members must all be",
                    channel.name
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode_datagram;

    struct Parts {
        subs: Subscriptions,
        channels: Channels,
        peers: Peers,
        outbox: Outbox,
        counters: Counters,
    }

    fn parts(max_per_client: usize) -> Parts {
        let limits = Limits {
            max: 100,
            max_per_client,
            lease: Duration::from_secs(10),
            replay_budget: 1 << 20,
            arq: ArqConfig::default(),
        };
        Parts {
            subs: Subscriptions::new(limits),
            channels: Channels::new(10),
            peers: Peers::new(limits.lease),
            outbox: Outbox::new(1400),
            counters: Counters::default(),
        }
    }

    fn now() -> Now {
        Now {
            instant: Instant::now(),
            unix_nanos: 1,
        }
    }

    fn subscribe(p: &mut Parts, from: SocketAddr, sub_id: u32, name: &str) -> Result<(), Refusal> {
        let id = p.channels.find_or_create(name);
        let request = Request {
            sub_id,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Latest,
            owner: Owner::ADDRESS,
            wildcard: None,
            group: None,
            origins: None,
        };
        let (channels, peers) = (&mut p.channels, &mut p.peers);
        (p.subs).subscribe(
            now(),
            from,
            request,
            id,
            channels,
            peers,
            &mut p.outbox,
            &mut p.counters,
        )
    }

    /// The sub_ids of the SUBSCRIBED frames queued, all for `to`.
    fn subscribed(outbox: &mut Outbox, to: SocketAddr) -> Vec<u32> {
        let mut ids = Vec::new();
        while let Some(t) = outbox.pop() {
            assert_eq!(t.destination, to);
            for frame in decode_datagram(&t.payload).unwrap() {
                if let Frame::Subscribed { sub_id, .. } = frame.unwrap() {
                    ids.push(sub_id);
                }
            }
        }
        ids
    }

    #[test]
    fn a_keepalive_keeps_one_subscription_and_is_answered_each_time() {
        let mut p = parts(4);
        let alice: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        for _ in 0..3 {
            subscribe(&mut p, alice, 7, "news").unwrap();
        }
        assert_eq!(p.subs.count(), 1);
        assert_eq!(p.counters.subscriptions_opened, 1);
        assert_eq!(subscribed(&mut p.outbox, alice), [7, 7, 7]);
        let (channels, peers) = (&mut p.channels, &mut p.peers);
        assert!(
            p.subs
                .close(alice, 7, channels, peers, &mut p.counters)
                .is_ok()
        );
        assert_eq!(p.subs.count(), 0);
        assert_eq!(
            p.counters.channels_forgotten, 1,
            "nothing holds the channel"
        );
        let again = p
            .subs
            .close(alice, 7, &mut p.channels, &mut p.peers, &mut p.counters);
        assert_eq!(again.unwrap_err().code, ErrorCode::UNKNOWN_SUBSCRIPTION);
    }

    #[test]
    fn a_subscription_over_the_limit_is_refused_and_keeps_no_channel() {
        let mut p = parts(2);
        let alice: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        subscribe(&mut p, alice, 1, "a").unwrap();
        subscribe(&mut p, alice, 2, "b").unwrap();
        let refused = subscribe(&mut p, alice, 3, "c").unwrap_err();
        assert_eq!(refused.code, ErrorCode::LIMIT_REACHED);
        assert_eq!(p.counters.dropped_limit, 1);
        assert_eq!(p.subs.count(), 2);
        assert_eq!(p.channels.id("c"), None, "the refused name took no slot");
        assert_eq!(p.channels.count(), 2);
    }
}

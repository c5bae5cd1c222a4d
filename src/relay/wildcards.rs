//! Wildcard subscriptions: a SUBSCRIBE whose channel is a pattern
//! (`sensors.*`, `sensors.>`, NATS syntax, see [`crate::subject`]) follows
//! every channel the pattern matches, those that exist when it starts and
//! those created while it lives.
//!
//! Each channel it follows is an ordinary subscription of the same client
//! (its own offsets, its own ARQ when reliable, charged to the same limits),
//! under an id the relay picks from [`RELAY_SUB_IDS`] up and tells the
//! client in a MATCHED frame. This table owns the patterns, which channels
//! each one follows under which id, and the ids; the conductor opens and ends
//! the channels' subscriptions through `subscriptions`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use super::channels::{ChannelId, Storage};
use super::peers::Owner;
use super::secure::Who;
use super::subscriptions::{self, Subscriptions};
use super::{Now, Relay};
use crate::auth::Action;
use crate::subject::Pattern;
use crate::wire::{DeliveryMode, ErrorCode, Frame, RELAY_SUB_IDS, StartPosition};

/// How often a keepalive may have a wildcard's channels told again: each
/// telling costs a MATCHED per channel.
const RETELL_EVERY: Duration = Duration::from_secs(1);

/// One wildcard subscription.
#[derive(Debug)]
pub(super) struct Wildcard {
    /// What it matches.
    pub(super) pattern: Pattern,
    /// How each channel's messages are delivered.
    pub(super) mode: DeliveryMode,
    /// Whose permissions say which channels it may follow.
    pub(super) who: Who,
    /// Who its channels' subscriptions are charged to besides the address.
    pub(super) owner: Owner,
    /// The channels it follows and the relay's id for each.
    pub(super) channels: Vec<(ChannelId, u32)>,
    /// When its channels were last told (MATCHED) in answer to a keepalive.
    pub(super) told_at: Option<Instant>,
}

/// Why a wildcard subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// The relay holds its maximum number of wildcard subscriptions.
    Relay,
    /// This address holds its maximum number.
    Client,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Full::Relay => "the relay holds its maximum number of wildcard subscriptions",
            Full::Client => "this address holds its maximum number of wildcard subscriptions",
        })
    }
}

/// Every wildcard subscription, by client address and the client's id.
#[derive(Debug)]
pub(super) struct Wildcards {
    by_id: HashMap<(SocketAddr, u32), Wildcard>,
    /// Most wildcard subscriptions in all, and of one address.
    max: usize,
    max_per_client: usize,
    /// The next id to try for a followed channel.
    next_id: u32,
}

impl Wildcards {
    /// None yet; at most `max` in all and `max_per_client` per address.
    pub(super) fn new(max: usize, max_per_client: usize) -> Wildcards {
        Wildcards {
            by_id: HashMap::new(),
            max,
            max_per_client,
            next_id: RELAY_SUB_IDS,
        }
    }

    /// New limits (those there are stay).
    pub(super) fn set_limits(&mut self, max: usize, max_per_client: usize) {
        (self.max, self.max_per_client) = (max, max_per_client);
    }

    /// The patterns subscribed to (each as often as it is).
    pub(super) fn patterns(&self) -> impl Iterator<Item = &str> {
        self.by_id.values().map(|w| w.pattern.as_str())
    }

    /// Wildcard subscriptions in all.
    pub(super) fn count(&self) -> usize {
        self.by_id.len()
    }

    /// True if `peer` holds wildcard subscription `sub_id`.
    pub(super) fn contains(&self, peer: SocketAddr, sub_id: u32) -> bool {
        self.by_id.contains_key(&(peer, sub_id))
    }

    /// Wildcard subscription `sub_id` of `peer`, if it exists.
    pub(super) fn get(&self, peer: SocketAddr, sub_id: u32) -> Option<&Wildcard> {
        self.by_id.get(&(peer, sub_id))
    }

    /// Wildcard subscription `sub_id` of `peer`, if it exists, to change.
    pub(super) fn get_mut(&mut self, peer: SocketAddr, sub_id: u32) -> Option<&mut Wildcard> {
        self.by_id.get_mut(&(peer, sub_id))
    }

    /// Adds one of `peer`, which holds `held` already (its peer entry
    /// counts them), within the limits.
    pub(super) fn add(
        &mut self,
        peer: SocketAddr,
        sub_id: u32,
        w: Wildcard,
        held: usize,
    ) -> Result<(), Full> {
        if self.by_id.len() >= self.max {
            return Err(Full::Relay);
        }
        if held >= self.max_per_client {
            return Err(Full::Client);
        }
        self.by_id.insert((peer, sub_id), w);
        Ok(())
    }

    /// Takes wildcard subscription `sub_id` of `peer` out, if it exists.
    pub(super) fn remove(&mut self, peer: SocketAddr, sub_id: u32) -> Option<Wildcard> {
        self.by_id.remove(&(peer, sub_id))
    }

    /// Every wildcard subscription: (address, id), in a fixed order.
    pub(super) fn all(&self) -> Vec<(SocketAddr, u32)> {
        let mut all: Vec<(SocketAddr, u32)> = self.by_id.keys().copied().collect();
        all.sort_unstable();
        all
    }

    /// The ids of `peer`'s wildcard subscriptions.
    pub(super) fn of(&self, peer: SocketAddr) -> Vec<u32> {
        let mut ids: Vec<u32> = (self.by_id.keys())
            .filter(|(p, _)| *p == peer)
            .map(|&(_, id)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The wildcard subscriptions whose pattern matches `name` and that do
    /// not follow channel `id` yet: (address, id).
    pub(super) fn matching(&self, name: &str, id: ChannelId) -> Vec<(SocketAddr, u32)> {
        let mut found: Vec<(SocketAddr, u32)> = (self.by_id.iter())
            .filter(|(_, w)| w.pattern.matches(name) && !w.channels.iter().any(|&(c, _)| c == id))
            .map(|(&key, _)| key)
            .collect();
        // In a fixed order, so that what a client is sent does not depend
        // on the hasher.
        found.sort_unstable();
        found
    }

    /// An id for a channel `peer` will follow, not among `taken` (the ids
    /// its subscriptions hold): from [`RELAY_SUB_IDS`] up, wrapping.
    pub(super) fn new_id(&mut self, taken: impl Fn(u32) -> bool) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = match id.checked_add(1) {
                Some(next) => next,
                None => RELAY_SUB_IDS,
            };
            if !taken(id) {
                return id;
            }
        }
    }
}

impl Relay {
    /// A SUBSCRIBE to a pattern: opens (or keeps alive) wildcard
    /// subscription `request.sub_id` of `from`, answers SUBSCRIBED, and
    /// follows every stored channel the pattern matches from `request.start`.
    pub(super) fn subscribe_pattern(
        &mut self,
        now: Now,
        from: SocketAddr,
        request: subscriptions::Request,
        text: &str,
    ) {
        let pattern = match Pattern::parse(text) {
            Ok(p) => p,
            Err(e) => {
                self.counters.dropped_malformed += 1;
                return self.reply_error(now, from, ErrorCode::BAD_CHANNEL, &e.to_string());
            }
        };
        if !self.pattern_permitted(now, from, &pattern) {
            return;
        }
        let sub_id = request.sub_id;
        match self.wildcards.get_mut(from, sub_id) {
            Some(w) if w.pattern == pattern && w.mode == request.mode => {
                return self.keep_pattern(now, from, sub_id);
            }
            // The same id for another pattern or mode replaces it.
            Some(_) => self.end_pattern(from, sub_id),
            None => {}
        }
        // A pattern counts as a subscription of its address and its key.
        if let Err(reason) = self.subscriptions.room(&self.peers, from, request.owner) {
            self.counters.dropped_limit += 1;
            return self.reply_error(now, from, ErrorCode::LIMIT_REACHED, reason);
        }
        // A new one scans every channel: a source gets a few a second.
        if !self.pattern_opens.take(now.instant, from) {
            self.counters.dropped_limit += 1;
            let reason = "too many new wildcard subscriptions from this source; at most 2 a second";
            return self.reply_error(now, from, ErrorCode::LIMIT_REACHED, reason);
        }
        // So does one for a single channel.
        let (channels, peers) = (&mut self.channels, &mut self.peers);
        (self.subscriptions).unsubscribe(from, sub_id, channels, peers, &mut self.counters);
        let wildcard = Wildcard {
            pattern,
            mode: request.mode,
            who: self.who,
            owner: request.owner,
            channels: Vec::new(),
            // Everything is told as it is followed, just below.
            told_at: Some(now.instant),
        };
        let held = self.peers.get(&from).map_or(0, |p| p.wildcards());
        if let Err(full) = self.wildcards.add(from, sub_id, wildcard, held) {
            self.counters.dropped_limit += 1;
            return self.reply_error(now, from, ErrorCode::LIMIT_REACHED, &full.to_string());
        }
        self.peers
            .add_wildcard(now.instant, from, request.owner.key);
        self.counters.subscriptions_opened += 1;
        self.answer_pattern(from, sub_id);
        self.follow_matching(now, from, sub_id, request.start);
    }

    /// Makes wildcard subscription `sub_id` of `from` follow, from `start`,
    /// every open channel its pattern matches that it does not follow yet
    /// (and its key may subscribe to), until a limit stops it.
    pub(super) fn follow_matching(
        &mut self,
        now: Now,
        from: SocketAddr,
        sub_id: u32,
        start: StartPosition,
    ) {
        let Some(w) = self.wildcards.get(from, sub_id) else {
            return;
        };
        let matching: Vec<ChannelId> = (self.channels.ids())
            .filter(|&id| {
                let c = &self.channels[id];
                matches!(c.storage, Storage::Open(_))
                    && w.pattern.matches(&c.name)
                    && !w.channels.iter().any(|&(ch, _)| ch == id)
            })
            .collect();
        for id in matching {
            if !self.follow(now, from, sub_id, id, start) {
                break;
            }
        }
    }

    /// SUBSCRIBED for wildcard subscription `sub_id` (its offsets are its
    /// channels', in MATCHED).
    fn answer_pattern(&mut self, to: SocketAddr, sub_id: u32) {
        let frame = Frame::Subscribed {
            sub_id,
            first_offset: 0,
            next_offset: 0,
            lease_ms: self.subscriptions.lease_ms(),
        };
        self.outbox.push_frame(to, &frame);
    }

    /// A keepalive of wildcard subscription `sub_id`: answered, and every
    /// channel it still follows told again in MATCHED (so a client that
    /// missed one learns it), at most once a second.
    fn keep_pattern(&mut self, now: Now, from: SocketAddr, sub_id: u32) {
        self.answer_pattern(from, sub_id);
        let Some(w) = self.wildcards.get_mut(from, sub_id) else {
            return;
        };
        if w.told_at.is_some_and(|t| now.instant < t + RETELL_EVERY) {
            return;
        }
        w.told_at = Some(now.instant);
        // Channels whose subscription ended (its client unsubscribed it, or
        // it was dropped) are not followed again.
        let peers = &self.peers;
        w.channels
            .retain(|&(ch, id)| Subscriptions::holds(peers, from, id, ch));
        let (mode, owner, followed) = (w.mode, w.owner, w.channels.clone());
        for (ch, channel_sub_id) in followed {
            let request = subscriptions::Request {
                sub_id: channel_sub_id,
                mode,
                start: StartPosition::Latest,
                owner,
                wildcard: Some(sub_id),
                group: None,
                origins: None,
            };
            if let Err(refusal) = self.open_subscription(now, from, request, ch) {
                self.reply_error(now, from, refusal.code, &refusal.reason);
            }
        }
    }

    /// Ends wildcard subscription `sub_id` of `from` and every channel
    /// subscription it holds.
    pub(super) fn end_pattern(&mut self, from: SocketAddr, sub_id: u32) {
        let Some(w) = self.wildcards.remove(from, sub_id) else {
            return;
        };
        for (ch, id) in w.channels {
            if Subscriptions::holds(&self.peers, from, id, ch) {
                let (channels, peers) = (&mut self.channels, &mut self.peers);
                (self.subscriptions).unsubscribe(from, id, channels, peers, &mut self.counters);
            }
        }
        self.peers.remove_wildcard(&from);
    }

    /// Channel `id` got its first message, at `offset`: every wildcard
    /// subscription matching it follows it from there.
    pub(super) fn follow_new(&mut self, now: Now, id: ChannelId, offset: u64) {
        let matching = self.wildcards.matching(&self.channels[id].name, id);
        for (peer, sub_id) in matching {
            self.follow(now, peer, sub_id, id, StartPosition::Offset(offset));
        }
    }

    /// Makes wildcard subscription `sub_id` of `peer` follow channel `ch`
    /// from `start`, under a new id of the relay's, if the wildcard's key
    /// may subscribe to it (a channel a deny pattern names is left out).
    /// False if a limit stopped it (the client was told): no more channels
    /// are worth trying now.
    fn follow(
        &mut self,
        now: Now,
        peer: SocketAddr,
        sub_id: u32,
        ch: ChannelId,
        start: StartPosition,
    ) -> bool {
        let Some(w) = self.wildcards.get_mut(peer, sub_id) else {
            return false;
        };
        let (who, mode, owner) = (w.who, w.mode, w.owner);
        let name = &self.channels[ch].name;
        if let Some(secure) = self.secure.as_mut()
            && secure.check(who, Action::Subscribe, name).is_err()
        {
            return true;
        }
        let peers = &self.peers;
        let channel_sub_id = (self.wildcards).new_id(|id| peers.channel_of(&peer, id).is_some());
        let request = subscriptions::Request {
            sub_id: channel_sub_id,
            mode,
            start,
            owner,
            wildcard: Some(sub_id),
            group: None,
            origins: None,
        };
        match self.open_subscription(now, peer, request, ch) {
            Ok(()) => {
                if let Some(w) = self.wildcards.get_mut(peer, sub_id) {
                    w.channels.push((ch, channel_sub_id));
                }
                true
            }
            Err(refusal) => {
                let reason = format!(
                    "wildcard subscription {sub_id} does not follow {:?}: {}",
                    self.channels[ch].name, refusal.reason
                );
                self.reply_error(now, peer, refusal.code, &reason);
                false
            }
        }
    }

    /// True if the sender of the datagram being handled may subscribe to
    /// `pattern` (an allow pattern covers it); a keyed client is told
    /// otherwise, anyone else is not.
    fn pattern_permitted(&mut self, now: Now, from: SocketAddr, pattern: &Pattern) -> bool {
        let who = self.who;
        let Some(Err(denied)) = (self.secure.as_ref())
            .and_then(|s| s.permissions(who))
            .map(|p| p.subscribe_pattern(pattern))
        else {
            return true;
        };
        self.counters.dropped_denied += 1;
        if matches!(who, Who::Keyed { .. }) {
            self.reply_error(now, from, ErrorCode::DENIED, &denied.to_string());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wildcard(pattern: &str) -> Wildcard {
        Wildcard {
            pattern: Pattern::parse(pattern).unwrap(),
            mode: DeliveryMode::Unreliable,
            who: Who::Open,
            owner: Owner::ADDRESS,
            channels: Vec::new(),
            told_at: None,
        }
    }

    #[test]
    fn limits_hold_per_address_and_in_all_and_come_back() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut w = Wildcards::new(3, 2);
        // `held` is what the address's peer entry counts.
        w.add(a, 1, wildcard("a.*"), 0).unwrap();
        w.add(a, 2, wildcard("b.*"), 1).unwrap();
        assert_eq!(w.add(a, 3, wildcard("c.*"), 2), Err(Full::Client));
        w.add(b, 1, wildcard(">"), 0).unwrap();
        assert_eq!(w.add(b, 2, wildcard("d.*"), 1), Err(Full::Relay));
        assert_eq!(w.of(a), [1, 2]);
        assert!(w.remove(a, 1).is_some());
        assert!(w.remove(a, 1).is_none());
        w.add(b, 2, wildcard("d.*"), 1).unwrap();
        assert_eq!(w.count(), 3);
        assert_eq!(w.matching("d.x", 0), [(b, 1), (b, 2)], "> matches it too");
        let mut matched = w.matching("b.x", 7);
        matched.sort_unstable();
        assert_eq!(matched, [(a, 2), (b, 1)]);
        w.get_mut(b, 1).unwrap().channels.push((7, RELAY_SUB_IDS));
        assert_eq!(w.matching("b.x", 7), [(a, 2)], "followed already");
    }

    #[test]
    fn relay_ids_skip_taken_ones_and_wrap_within_their_range() {
        let mut w = Wildcards::new(1, 1);
        assert_eq!(w.new_id(|id| id == RELAY_SUB_IDS), RELAY_SUB_IDS + 1);
        w.next_id = u32::MAX;
        assert_eq!(w.new_id(|_| false), u32::MAX);
        assert_eq!(w.new_id(|_| false), RELAY_SUB_IDS);
    }
}

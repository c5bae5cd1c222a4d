//! The client addresses the relay holds state for, and their leases: an
//! address with subscriptions or reliable publishing sessions keeps them
//! while it is heard from at least once a lease; past that, they go.
//! Publishers that never subscribe and hold no session get no entry, so
//! they cost the relay no memory.
//!
//! A lease is refreshed by one field write per proven datagram (one with a
//! valid address token: a forged one must not keep a victim's
//! subscriptions alive): the deadline heap is checked lazily, when an entry
//! comes due.
//!
//! What a peer holds is also charged to its owner, the key its session was
//! opened under, if any: [`Peers::held_by`] is what a key holds across all
//! its addresses, kept as subscriptions and sessions come and go, so a
//! per-key limit costs one lookup.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use super::channels::ChannelId;
use super::sessions::PublishSession;

/// A client address that holds subscriptions or sessions.
#[derive(Debug)]
pub(super) struct Peer {
    /// Last time anything arrived from this address; the lease runs from here.
    last_seen: Instant,
    /// The deadline of this peer's one live entry in the lease heap: any
    /// other entry for its address is stale (left by an earlier peer there).
    lease_at: Instant,
    /// The address's subscriptions: id and channel.
    pub(super) subscriptions: Vec<(u32, ChannelId)>,
    /// The address's reliable publishing sessions.
    pub(super) sessions: Vec<PublishSession>,
    /// How many wildcard subscriptions the address holds (kept in
    /// `wildcards`; counted here so that one holding nothing else keeps
    /// its lease).
    wildcards: usize,
    /// The key (its stable index, see `secure::Secure`) what the address holds is charged
    /// to, if it was opened under one.
    owner: Option<usize>,
}

impl Peer {
    /// The key what the address holds is charged to, if any.
    pub(super) fn owner(&self) -> Option<usize> {
        self.owner
    }

    /// How many wildcard subscriptions the address holds.
    pub(super) fn wildcards(&self) -> usize {
        self.wildcards
    }

    /// Holds nothing: the entry can go.
    pub(super) fn is_empty(&self) -> bool {
        self.subscriptions.is_empty() && self.sessions.is_empty() && self.wildcards == 0
    }
}

/// Who a new subscription or session is charged to besides its address,
/// and how much that one may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    /// The key (its stable index, see `secure::Secure`), if the request was sealed under one.
    pub(super) key: Option<usize>,
    /// Most subscriptions the key may hold across its addresses.
    pub(super) max_subscriptions: usize,
    /// Most reliable publishing sessions the key may hold.
    pub(super) max_sessions: usize,
}

impl Owner {
    /// Charged to the address alone.
    pub(super) const ADDRESS: Owner = Owner {
        key: None,
        max_subscriptions: usize::MAX,
        max_sessions: usize::MAX,
    };
}

/// What one key holds across its addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Held {
    /// Subscriptions.
    pub(super) subscriptions: usize,
    /// Reliable publishing sessions.
    pub(super) sessions: usize,
}

/// Every peer, by address, with lease deadlines.
#[derive(Debug)]
pub(super) struct Peers {
    /// By address.
    peers: HashMap<SocketAddr, Peer>,
    /// Lease deadlines, earliest first. An entry may be stale (its peer was
    /// heard from since, or is gone): it is checked when it comes due.
    leases: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    /// How long a peer lives without being heard from.
    lease: Duration,
    /// What each key holds, by its stable index (see `secure::Secure`; grown to the
    /// highest index seen: one entry per key, whatever the clients do).
    held: Vec<Held>,
}

impl Peers {
    /// No peers; each will live `lease` past the last datagram from it.
    pub(super) fn new(lease: Duration) -> Peers {
        Peers {
            peers: HashMap::new(),
            leases: BinaryHeap::new(),
            lease,
            held: Vec::new(),
        }
    }

    /// Each peer lives `lease` past the next datagram from it.
    pub(super) fn set_lease(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// Notes a datagram from `addr` at `now`: its lease runs from here.
    pub(super) fn heard_from(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&addr) {
            peer.last_seen = now;
        }
    }

    /// The entry of `addr`, created (with its lease, charged to `key`) if
    /// new.
    fn entry(&mut self, now: Instant, addr: SocketAddr, key: Option<usize>) -> &mut Peer {
        let lease = self.lease;
        self.peers.entry(addr).or_insert_with(|| {
            self.leases.push(Reverse((now + lease, addr)));
            Peer {
                last_seen: now,
                lease_at: now + lease,
                subscriptions: Vec::new(),
                sessions: Vec::new(),
                wildcards: 0,
                owner: key,
            }
        })
    }

    /// The tally of key `key`, grown to hold it.
    fn tally(&mut self, key: usize) -> &mut Held {
        if self.held.len() <= key {
            self.held.resize(key + 1, Held::default());
        }
        &mut self.held[key]
    }

    /// What key `key` holds across all its addresses.
    pub(super) fn held_by(&self, key: usize) -> Held {
        self.held.get(key).copied().unwrap_or_default()
    }

    /// Adds subscription `sub` to `addr` (its entry created if new, owned
    /// by `key`), charged to the entry's owner.
    pub(super) fn add_subscription(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        key: Option<usize>,
        sub: (u32, ChannelId),
    ) {
        let peer = self.entry(now, addr, key);
        peer.subscriptions.push(sub);
        if let Some(owner) = peer.owner {
            self.tally(owner).subscriptions += 1;
        }
    }

    /// Removes the subscription at `pos` of `addr`'s entry (the entry too,
    /// if that was all it held); `None` if there is no such entry.
    pub(super) fn remove_subscription(
        &mut self,
        addr: &SocketAddr,
        pos: usize,
    ) -> Option<(u32, ChannelId)> {
        let peer = self.peers.get_mut(addr)?;
        if pos >= peer.subscriptions.len() {
            return None;
        }
        let sub = peer.subscriptions.swap_remove(pos);
        if let Some(owner) = peer.owner {
            self.tally(owner).subscriptions -= 1;
        }
        if self.peers[addr].is_empty() {
            self.peers.remove(addr);
        }
        Some(sub)
    }

    /// Counts a wildcard subscription of `addr` (its entry created if new,
    /// owned by `key`).
    pub(super) fn add_wildcard(&mut self, now: Instant, addr: SocketAddr, key: Option<usize>) {
        let peer = self.entry(now, addr, key);
        peer.wildcards += 1;
        // Charged to the key as a subscription.
        if let Some(owner) = peer.owner {
            self.tally(owner).subscriptions += 1;
        }
    }

    /// Uncounts a wildcard subscription of `addr` (the entry goes too, if
    /// that was all it held).
    pub(super) fn remove_wildcard(&mut self, addr: &SocketAddr) {
        let Some(peer) = self.peers.get_mut(addr) else {
            return;
        };
        if peer.wildcards == 0 {
            return;
        }
        peer.wildcards -= 1;
        if let Some(owner) = peer.owner {
            self.tally(owner).subscriptions -= 1;
        }
        if self.peers[addr].is_empty() {
            self.peers.remove(addr);
        }
    }

    /// Adds reliable publishing session `session` to `addr` (its entry
    /// created if new, owned by `key`), charged to the entry's owner;
    /// returns its index in the entry.
    pub(super) fn add_session(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        key: Option<usize>,
        session: PublishSession,
    ) -> usize {
        let peer = self.entry(now, addr, key);
        peer.sessions.push(session);
        let index = peer.sessions.len() - 1;
        if let Some(owner) = peer.owner {
            self.tally(owner).sessions += 1;
        }
        index
    }

    /// Takes reliable publishing session `id` out of `addr`'s entry (the
    /// entry too, if that was all it held), and from its owner's tally.
    pub(super) fn remove_session(&mut self, addr: &SocketAddr, id: u64) -> Option<PublishSession> {
        let peer = self.peers.get_mut(addr)?;
        let pos = peer.sessions.iter().position(|s| s.id == id)?;
        let session = peer.sessions.swap_remove(pos);
        if let Some(owner) = peer.owner {
            self.tally(owner).sessions -= 1;
        }
        if self.peers[addr].is_empty() {
            self.peers.remove(addr);
        }
        Some(session)
    }

    /// The channel of subscription `sub_id` of `addr`, if it holds one.
    pub(super) fn channel_of(&self, addr: &SocketAddr, sub_id: u32) -> Option<ChannelId> {
        let peer = self.peers.get(addr)?;
        let &(_, ch) = peer.subscriptions.iter().find(|(s, _)| *s == sub_id)?;
        Some(ch)
    }

    /// The entry of `addr`, if any.
    pub(super) fn get(&self, addr: &SocketAddr) -> Option<&Peer> {
        self.peers.get(addr)
    }

    /// The entry of `addr`, if any, to change.
    pub(super) fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut Peer> {
        self.peers.get_mut(addr)
    }

    /// Removes the entry of `addr`, and what it held from its owner's
    /// tally.
    pub(super) fn remove(&mut self, addr: &SocketAddr) -> Option<Peer> {
        let peer = self.peers.remove(addr)?;
        if let Some(owner) = peer.owner {
            let held = self.tally(owner);
            held.subscriptions -= peer.subscriptions.len() + peer.wildcards;
            held.sessions -= peer.sessions.len();
        }
        Some(peer)
    }

    /// Every peer.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Peer)> {
        self.peers.iter()
    }

    /// When the earliest lease may lapse.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.leases.peek().map(|Reverse((at, _))| *at)
    }

    /// A peer whose lease lapsed by `now`, if any (its entry stays until the
    /// caller removes it, with what it held).
    pub(super) fn pop_lapsed(&mut self, now: Instant) -> Option<SocketAddr> {
        while let Some(&Reverse((at, addr))) = self.leases.peek() {
            if at > now {
                break;
            }
            self.leases.pop();
            let Some(peer) = self.peers.get_mut(&addr) else {
                continue; // gone already
            };
            if peer.lease_at != at {
                continue; // left by an earlier peer at this address
            }
            let expires = peer.last_seen + self.lease;
            if expires > now {
                peer.lease_at = expires;
                self.leases.push(Reverse((expires, addr)));
                continue;
            }
            return Some(addr);
        }
        None
    }
}

impl std::ops::Index<&SocketAddr> for Peers {
    type Output = Peer;

    fn index(&self, addr: &SocketAddr) -> &Peer {
        &self.peers[addr]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_comes_and_goes_leaves_one_live_lease_entry() {
        let lease = Duration::from_secs(1);
        let mut peers = Peers::new(lease);
        let t = Instant::now();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for i in 0..1000 {
            let now = t + Duration::from_micros(i);
            peers.entry(now, addr, None);
            peers.remove(&addr);
        }
        let last = t + Duration::from_millis(1);
        peers.entry(last, addr, None);
        // The 1000 stale entries go as they come due; the live one stays.
        assert_eq!(
            peers.pop_lapsed(t + lease + Duration::from_micros(999)),
            None
        );
        assert_eq!(peers.leases.len(), 1, "only the live entry is left");
        assert_eq!(peers.pop_lapsed(last + lease), Some(addr));
    }

    #[test]
    fn a_lease_lapses_exactly_a_lease_after_the_last_datagram() {
        let lease = Duration::from_secs(1);
        let mut peers = Peers::new(lease);
        let t = Instant::now();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        peers.entry(t, addr, None);
        let heard = t + Duration::from_millis(600);
        peers.heard_from(addr, heard);
        assert_eq!(peers.next_deadline(), Some(t + lease));
        assert_eq!(peers.pop_lapsed(t + lease), None, "heard from since");
        let lapses = heard + lease;
        assert_eq!(peers.next_deadline(), Some(lapses));
        assert_eq!(peers.pop_lapsed(lapses - Duration::from_millis(1)), None);
        assert_eq!(peers.pop_lapsed(lapses), Some(addr));
        peers.remove(&addr);
        assert_eq!(peers.pop_lapsed(lapses + lease), None);
    }

    #[test]
    fn a_key_is_charged_what_its_addresses_hold_until_they_let_go() {
        let t = Instant::now();
        let mut peers = Peers::new(Duration::from_secs(1));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let plain: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let ch: ChannelId = 0;
        peers.add_subscription(t, a, Some(2), (1, ch));
        peers.add_subscription(t, a, Some(2), (2, ch));
        peers.add_subscription(t, b, Some(2), (1, ch));
        peers.add_subscription(t, plain, None, (1, ch));
        let held = |peers: &Peers| peers.held_by(2).subscriptions;
        assert_eq!(held(&peers), 3, "both addresses of key 2");
        assert_eq!(peers.held_by(0), Held::default(), "key 0 holds nothing");
        assert_eq!(peers.remove_subscription(&a, 0), Some((1, ch)));
        assert_eq!(held(&peers), 2);
        assert_eq!(
            peers.remove_subscription(&a, 5),
            None,
            "no such subscription"
        );
        assert!(peers.remove(&b).is_some());
        assert_eq!(held(&peers), 1, "a removed peer gives back all it held");
        assert_eq!(peers.remove_subscription(&a, 0), Some((2, ch)));
        assert!(peers.get(&a).is_none(), "the emptied entry is gone");
        assert_eq!(held(&peers), 0);
        assert_eq!(peers.get(&plain).unwrap().owner(), None);
        assert_eq!(peers.get(&a).map(Peer::owner), None);
    }
}

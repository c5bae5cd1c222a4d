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
}

impl Peer {
    /// Holds nothing: the entry can go.
    pub(super) fn is_empty(&self) -> bool {
        self.subscriptions.is_empty() && self.sessions.is_empty()
    }
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
}

impl Peers {
    /// No peers; each will live `lease` past the last datagram from it.
    pub(super) fn new(lease: Duration) -> Peers {
        Peers {
            peers: HashMap::new(),
            leases: BinaryHeap::new(),
            lease,
        }
    }

    /// Notes a datagram from `addr` at `now`: its lease runs from here.
    pub(super) fn heard_from(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&addr) {
            peer.last_seen = now;
        }
    }

    /// The entry of `addr`, created (with its lease) if new.
    pub(super) fn entry(&mut self, now: Instant, addr: SocketAddr) -> &mut Peer {
        let lease = self.lease;
        self.peers.entry(addr).or_insert_with(|| {
            self.leases.push(Reverse((now + lease, addr)));
            Peer {
                last_seen: now,
                lease_at: now + lease,
                subscriptions: Vec::new(),
                sessions: Vec::new(),
            }
        })
    }

    /// The entry of `addr`, if any.
    pub(super) fn get(&self, addr: &SocketAddr) -> Option<&Peer> {
        self.peers.get(addr)
    }

    /// The entry of `addr`, if any, to change.
    pub(super) fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut Peer> {
        self.peers.get_mut(addr)
    }

    /// Removes the entry of `addr`.
    pub(super) fn remove(&mut self, addr: &SocketAddr) -> Option<Peer> {
        self.peers.remove(addr)
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
            peers.entry(now, addr);
            peers.remove(&addr);
        }
        let last = t + Duration::from_millis(1);
        peers.entry(last, addr);
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
        peers.entry(t, addr);
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
}

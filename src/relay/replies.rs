//! What the relay may send back, and where: the budget its replies are
//! charged to (errors and STATS answers, at a fixed rate whoever asks), and
//! its own sockets' addresses, which it never sends to (a forged source
//! there would make it feed itself).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::counters::Counters;
use crate::wire::{ErrorCode, WireError};

/// A raw egress that would send to one of the relay's own sockets.
#[derive(Debug, thiserror::Error)]
#[error("--raw-out {channel}={addr} names one of the relay's own sockets: it would feed itself")]
pub struct OwnAddressError {
    /// The channel of the raw egress.
    pub channel: String,
    /// The address it names.
    pub addr: SocketAddr,
}

/// The relay's own sockets: the core never sends to them.
#[derive(Debug, Default)]
pub(super) struct OwnAddresses {
    /// Each socket's bound address.
    pub(super) sockets: Vec<SocketAddr>,
    /// The machine's addresses, for sockets bound to every address.
    pub(super) local_ips: Vec<IpAddr>,
}

impl OwnAddresses {
    /// True if a datagram sent to `addr` would arrive at one of our sockets.
    pub(super) fn contains(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.sockets.iter().any(|own| {
            let own_ip = own.ip().to_canonical();
            own.port() == addr.port()
                && (own_ip == ip
                    || own_ip.is_unspecified()
                        && (ip.is_loopback()
                            || ip.is_unspecified()
                            || self.local_ips.contains(&ip)))
        })
    }
}

/// False for an address no datagram can truly come from: port 0, an
/// unspecified, broadcast or multicast IP (IPv4-mapped forms included).
pub(super) fn can_be_a_source(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// Allows a burst of `capacity` events, refilled at `per_sec`.
#[derive(Debug)]
pub(super) struct TokenBucket {
    tokens: u32,
    capacity: u32,
    per_sec: u32,
    last_refill: Option<Instant>,
}

impl TokenBucket {
    pub(super) fn new(per_sec: u32) -> Self {
        let capacity = per_sec.clamp(1, 1000);
        TokenBucket {
            tokens: capacity,
            capacity,
            per_sec,
            last_refill: None,
        }
    }

    pub(super) fn take(&mut self, now: Instant) -> bool {
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

/// Buckets in the table of sources: a power of two.
const SOURCE_SLOTS: usize = 4096;
/// Replies to unproven datagrams one source may have per second (and in a
/// burst): enough for a client's hello and a few refusals, little for a
/// flood.
const SOURCE_REPLIES_PER_SEC: u32 = 20;

/// A small bucket of replies to unproven datagrams per source (an IPv4
/// address, an IPv6 /64), in a table of fixed size made at start: a
/// stranger's flood spends its own bucket, not the relay-wide reply budget
/// that every other newcomer needs for its hello. Sources are placed by a
/// hash with a key made at random for this process, so nobody can aim at
/// another's bucket; two sources that hash alike share one, and the table
/// never grows. Loopback sources are not limited: no remote host can send
/// from them, and every local client shares one.
#[derive(Debug)]
pub(super) struct SourceBuckets {
    slots: Vec<TokenBucket>,
    hasher: foldhash::fast::RandomState,
}

impl SourceBuckets {
    pub(super) fn new() -> SourceBuckets {
        SourceBuckets::with_rate(SOURCE_REPLIES_PER_SEC)
    }

    /// Buckets of `per_sec` a second (and as many at once) per source.
    pub(super) fn with_rate(per_sec: u32) -> SourceBuckets {
        SourceBuckets {
            slots: (0..SOURCE_SLOTS)
                .map(|_| TokenBucket::new(per_sec))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// True (and one reply spent) if `addr`'s source may be answered now.
    pub(super) fn take(&mut self, now: Instant, addr: SocketAddr) -> bool {
        use std::hash::BuildHasher;
        let source = match addr.ip().to_canonical() {
            IpAddr::V4(v4) if v4.is_loopback() => return true,
            IpAddr::V6(v6) if v6.is_loopback() => return true,
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            // The /64: one host is given a whole one.
            IpAddr::V6(v6) => u128::from(v6) >> 64 | 1 << 127,
        };
        let slot = self.hasher.hash_one(source) as usize & (SOURCE_SLOTS - 1);
        self.slots[slot].take(now)
    }
}

/// Counts a datagram that did not decode, and says what to answer it, if
/// anything: only a sender that speaks the protocol is answered (with what
/// it got wrong); anything else could aim the relay at a third party.
pub(super) fn undecodable(e: &WireError, counters: &mut Counters) -> Option<ErrorCode> {
    match e {
        WireError::BadMagic => {
            counters.dropped_not_protocol += 1;
            None
        }
        WireError::UnsupportedVersion(_) => {
            counters.dropped_bad_version += 1;
            Some(ErrorCode::UNSUPPORTED_VERSION)
        }
        WireError::UnsupportedFlags(_) => {
            counters.dropped_unsupported += 1;
            Some(ErrorCode::UNSUPPORTED)
        }
        _ => {
            counters.dropped_malformed += 1;
            None
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
pub(super) fn truncate_utf8(s: &str, max: usize) -> &str {
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
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_source_has_its_own_small_bucket_and_loopback_none() {
        let t = Instant::now();
        let mut buckets = SourceBuckets::new();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let same_host: SocketAddr = "10.0.0.1:6000".parse().unwrap();
        let same_64: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let same_64_other: SocketAddr = "[2001:db8::ffff]:7000".parse().unwrap();
        for _ in 0..SOURCE_REPLIES_PER_SEC {
            assert!(buckets.take(t, a));
            assert!(buckets.take(t, same_64));
        }
        assert!(
            !buckets.take(t, same_host),
            "one bucket per IP, whatever the port"
        );
        assert!(!buckets.take(t, same_64_other), "one bucket per IPv6 /64");
        let others = (2..200u32)
            .filter(|i| buckets.take(t, SocketAddr::from(([10, 0, 1, *i as u8], 1))))
            .count();
        assert!(
            others >= 190,
            "strangers elsewhere are answered: {others} of 198"
        );
        // Refilled with time.
        let later = t + Duration::from_millis(1000 / u64::from(SOURCE_REPLIES_PER_SEC));
        assert!(buckets.take(later, a));
        assert!(!buckets.take(later, a));
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(
            (0..1000).all(|_| buckets.take(t, local)),
            "loopback is not limited"
        );
    }

    #[test]
    fn a_burst_then_one_reply_per_interval() {
        let mut bucket = TokenBucket::new(1000);
        let t = Instant::now();
        for i in 0..1000 {
            assert!(bucket.take(t), "reply {i} of the burst");
        }
        assert!(!bucket.take(t), "the burst is spent");
        assert!(
            !bucket.take(t + Duration::from_micros(999)),
            "nothing before 1 ms"
        );
        assert!(
            bucket.take(t + Duration::from_millis(1)),
            "one token a millisecond"
        );
        assert!(!bucket.take(t + Duration::from_millis(1)));
    }

    #[test]
    fn own_addresses_cover_every_local_address_of_a_wildcard_socket() {
        let own = OwnAddresses {
            sockets: vec![
                "127.0.0.1:7070".parse().unwrap(),
                "0.0.0.0:5514".parse().unwrap(),
            ],
            local_ips: vec!["192.0.2.7".parse().unwrap()],
        };
        for addr in [
            "127.0.0.1:7070",
            "[::ffff:127.0.0.1]:7070",
            "127.0.0.9:5514",
            "192.0.2.7:5514",
            "0.0.0.0:5514",
        ] {
            assert!(own.contains(addr.parse().unwrap()), "{addr}");
        }
        for addr in ["127.0.0.2:7070", "127.0.0.1:7071", "192.0.2.8:5514"] {
            assert!(!own.contains(addr.parse().unwrap()), "{addr}");
        }
    }
}

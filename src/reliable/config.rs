//! The ARQ's settings and the limits both sides share.
//!
//! Owns [`ArqConfig`] and [`MAX_ACK_RANGES`]; holds no state and depends on
//! nothing else in `reliable`, so every other piece may use it.

use std::time::Duration;

/// Settings shared by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArqConfig {
    /// RTO before any round trip was measured.
    pub initial_rto: Duration,
    /// Lower bound of the RTO.
    pub min_rto: Duration,
    /// Upper bound of the RTO, backoff included.
    pub max_rto: Duration,
    /// Consecutive RTO expiries after which the peer is declared lost.
    pub max_timeouts: u32,
    /// Congestion window at the start and after idle, in messages.
    pub initial_cwnd: u32,
    /// The congestion window never shrinks below this, in messages. RFC 5681
    /// goes down to one after a timeout; on a lossy but uncongested path
    /// (30 % random loss) that starves the ack clock, so every loss becomes
    /// a timeout. A floor keeps enough in flight for losses to be found by
    /// later acknowledgements instead (KCP's fast mode goes further and has
    /// no window at all).
    pub min_cwnd: u32,
    /// Largest congestion window, in messages.
    pub max_cwnd: u32,
    /// Later messages acknowledged before one is declared lost.
    pub dupthresh: u64,
    /// Longest wait before acknowledging in-order data.
    pub delayed_ack: Duration,
    /// Messages the receiver may buffer beyond what the application took.
    pub receive_window: u32,
    /// Thin-stream redundancy: while at most this many messages are in
    /// flight, a datagram of new messages that has room also carries the
    /// unacknowledged earlier ones again, so the loss of one datagram is
    /// repaired by the next instead of a round trip later. It costs bytes,
    /// never datagrams; 0 turns it off.
    pub bundle_limit: u32,
    /// Most bytes of messages sent and not yet acknowledged (one message
    /// may always go when none is in flight). The windows count messages;
    /// this bounds a window of large ones, each many datagrams: 8 MiB holds
    /// eight 1 MiB messages, as many as a subscriber reports pieces of.
    pub max_in_flight_bytes: u64,
}

impl Default for ArqConfig {
    fn default() -> Self {
        ArqConfig {
            initial_rto: Duration::from_millis(200),
            min_rto: Duration::from_millis(20),
            max_rto: Duration::from_secs(2),
            max_timeouts: 20,
            initial_cwnd: 32,
            min_cwnd: 16,
            max_cwnd: 8192,
            dupthresh: 3,
            delayed_ack: Duration::from_millis(5),
            receive_window: 4096,
            bundle_limit: 8,
            max_in_flight_bytes: 8 << 20,
        }
    }
}

/// Most selective ranges in one acknowledgement: the receiver sends no more,
/// and the sender reads no more (a hostile peer could send thousands).
pub const MAX_ACK_RANGES: usize = 32;

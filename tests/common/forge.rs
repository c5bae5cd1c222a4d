//! Datagrams with a forged source address, and what the claimed address gets
//! back for them: the harness of `tests/forged.rs` and
//! `examples/amplification.rs` (which includes this file by `#[path]`, so
//! nothing here may use the rest of `tests/common`).
//!
//! - [`Forger`]: a raw IPv4 socket that writes the IP and UDP headers itself,
//!   so a datagram can claim any source ip:port (needs root or CAP_NET_RAW).
//! - [`Victim`]: the socket whose address is claimed; it never sends, and
//!   counts what arrives.
//! - [`Attack`]: each request kind an attacker can forge, as datagrams built
//!   with the library's encoder.
//! - [`measure`]: forged bytes against the bytes the victim received.
//! - [`LivePublisher`]: a channel carrying traffic, for live subscriptions to
//!   be worth forging.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use udprelay::wire::{self, AckKind, DeliveryMode, Frame, StartPosition};

/// Receive buffer asked for the sockets here (the kernel caps it at
/// `net.core.rmem_max`): a replay arrives at `--replay-rate`, and a byte the
/// kernel drops for want of room is a byte not counted.
const RECV_BUFFER: usize = 8 << 20;

/// Length of an IPv4 header without options.
const IPV4_HEADER_LEN: usize = 20;
/// Length of a UDP header.
const UDP_HEADER_LEN: usize = 8;

/// The IPv4 header checksum (RFC 791, RFC 1071): the ones' complement of the
/// ones' complement sum of the header's 16-bit words, with the checksum field
/// taken as zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One IPv4 packet carrying a UDP datagram from `from` to `to`: a 20-byte IP
/// header with its checksum, a UDP header with checksum 0 (legal over IPv4:
/// "not computed"), then `payload`.
pub fn ipv4_udp_packet(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let total = IPV4_HEADER_LEN + udp_len;
    let total16 = u16::try_from(total).expect("an IPv4 packet is at most 65,535 bytes");
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]); // version 4, 5 words of header; TOS 0
    packet.extend_from_slice(&total16.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
    packet.extend_from_slice(&[64, 17, 0, 0]); // TTL, protocol UDP, checksum below
    packet.extend_from_slice(&from.ip().octets());
    packet.extend_from_slice(&to.ip().octets());
    let checksum = ipv4_checksum(&packet);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    packet
}

/// A raw IPv4 socket that sends UDP datagrams with any source address: the
/// attacker. It writes the whole IP header (`IP_HDRINCL`), so the kernel puts
/// in neither its own source address nor a port of its own.
pub struct Forger {
    /// The raw socket, `IPPROTO_UDP` with the header included.
    socket: Socket,
}

impl Forger {
    /// The raw socket, or why it cannot be had (EPERM without root).
    pub fn try_new() -> io::Result<Forger> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))?;
        socket.set_header_included_v4(true)?;
        Ok(Forger { socket })
    }

    /// The raw socket; panics with one clear line where it cannot be had.
    pub fn new() -> Forger {
        match Forger::try_new() {
            Ok(forger) => forger,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                panic!("forged-source tests need root for a raw socket ({e})")
            }
            Err(e) => panic!("cannot open a raw IPv4 socket: {e}"),
        }
    }

    /// Sends `payload` as one UDP datagram to `to` that claims to come from
    /// `from`; returns the UDP payload bytes sent (what the receiver counts).
    pub fn send(&self, from: SocketAddr, to: SocketAddr, payload: &[u8]) -> usize {
        let (from, to) = (v4(from), v4(to));
        let packet = ipv4_udp_packet(from, to, payload);
        // The port of a raw socket's destination is not used: the UDP header
        // above says where the datagram goes.
        let dest = SocketAddr::V4(SocketAddrV4::new(*to.ip(), 0));
        let sent = self
            .socket
            .send_to(&packet, &dest.into())
            .unwrap_or_else(|e| panic!("cannot send a forged datagram to {to}: {e}"));
        assert_eq!(sent, packet.len(), "a forged datagram went out short");
        payload.len()
    }
}

impl Default for Forger {
    fn default() -> Forger {
        Forger::new()
    }
}

/// The IPv4 address a forged datagram uses; loopback tests have no other.
fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("forging needs IPv4 addresses, not {a}"),
    }
}

/// A UDP socket on 127.0.0.1 with a large receive buffer.
pub fn bind_loopback() -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let _ = SockRef::from(&socket).set_recv_buffer_size(RECV_BUFFER);
    socket
}

/// What arrived at a [`Victim`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Datagrams received.
    pub datagrams: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
}

/// The address an attacker claims: a socket that never sends, counting on a
/// thread of its own (so a fast replay does not overflow its buffer) every
/// datagram that arrives until [`Victim::finish`].
pub struct Victim {
    /// The claimed address.
    pub addr: SocketAddr,
    /// Tells the counting thread to stop.
    stop: Arc<AtomicBool>,
    /// The counting thread; it returns the count.
    counter: Option<JoinHandle<Received>>,
}

impl Victim {
    /// A fresh socket on 127.0.0.1, counting from now.
    pub fn start() -> Victim {
        let socket = bind_loopback();
        let addr = socket.local_addr().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let counter = thread::spawn(move || {
            let mut got = Received::default();
            let mut buf = vec![0u8; 65_536];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    got.datagrams += 1;
                    got.bytes += n as u64;
                }
            }
            got
        });
        Victim {
            addr,
            stop,
            counter: Some(counter),
        }
    }

    /// Stops counting and returns what arrived.
    pub fn finish(mut self) -> Received {
        self.stop.store(true, Ordering::Relaxed);
        self.counter.take().unwrap().join().expect("victim thread")
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(counter) = self.counter.take() {
            let _ = counter.join();
        }
    }
}

/// Channel names and ids the attacks use: the channels a test or the example
/// filled, and ids that are no client's.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    /// A channel that has live traffic.
    pub live: &'a str,
    /// A channel that holds stored messages.
    pub stored: &'a str,
}

/// Subscription id of every forged SUBSCRIBE and UNSUBSCRIBE.
const FORGED_SUB_ID: u32 = 0x00f0_4ced;
/// Session id of every forged RELIABLE_PUBLISH.
const FORGED_SESSION: u64 = 0x00f0_4ced_5e55_1000;

/// One kind of request an attacker sends in a victim's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// PING, answered by PONG.
    Ping,
    /// SUBSCRIBE from latest to a channel with live traffic.
    SubscribeLive,
    /// SUBSCRIBE from earliest to a channel holding stored messages.
    SubscribeEarliest,
    /// Eight such SUBSCRIBEs (eight sub ids) in one datagram.
    SubscribeEarliestEight,
    /// A reliable SUBSCRIBE from earliest to the stored channel, never
    /// acknowledged.
    SubscribeEarliestReliable,
    /// The same, then ACKs of everything sent in the later rounds.
    SubscribeEarliestReliableAcked,
    /// One STATS_REQUEST padded to 1400 bytes, as `udpcat stats` sends.
    StatsRequest,
    /// 300 STATS_REQUESTs in one datagram, each padded for one answer
    /// entry.
    StatsRequests300,
    /// A datagram whose one frame does not decode.
    Malformed,
    /// A datagram of another protocol version.
    BadVersion,
    /// UNSUBSCRIBE of a sub id the claimed address does not hold.
    UnknownUnsubscribe,
    /// RELIABLE_PUBLISH of one-byte messages in a new session, every other
    /// sequence number, so that each ACK carries the ranges held.
    ReliablePublish,
}

impl Attack {
    /// Every attack, in the order the example prints them.
    pub const ALL: [Attack; 12] = [
        Attack::Ping,
        Attack::SubscribeLive,
        Attack::SubscribeEarliest,
        Attack::SubscribeEarliestEight,
        Attack::SubscribeEarliestReliable,
        Attack::SubscribeEarliestReliableAcked,
        Attack::StatsRequest,
        Attack::StatsRequests300,
        Attack::Malformed,
        Attack::BadVersion,
        Attack::UnknownUnsubscribe,
        Attack::ReliablePublish,
    ];

    /// How a report names it.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Ping => "PING",
            Attack::SubscribeLive => "SUBSCRIBE latest, live channel",
            Attack::SubscribeEarliest => "SUBSCRIBE earliest, stored channel",
            Attack::SubscribeEarliestEight => "SUBSCRIBE earliest x8 in a datagram",
            Attack::SubscribeEarliestReliable => "SUBSCRIBE earliest reliable, never acked",
            Attack::SubscribeEarliestReliableAcked => "SUBSCRIBE earliest reliable + forged ACKs",
            Attack::StatsRequest => "STATS_REQUEST (1400 B)",
            Attack::StatsRequests300 => "STATS_REQUEST x300 in a datagram",
            Attack::Malformed => "malformed frame",
            Attack::BadVersion => "bad version",
            Attack::UnknownUnsubscribe => "UNSUBSCRIBE unknown id",
            Attack::ReliablePublish => "RELIABLE_PUBLISH",
        }
    }

    /// The datagram forged in round `round` (0 first). Repeats name the same
    /// subscription, so they refresh it rather than start another replay; a
    /// repeated PING or RELIABLE_PUBLISH takes the next nonce or sequence
    /// number.
    pub fn datagram(self, targets: Targets<'_>, round: u64) -> Vec<u8> {
        let subscribe = |sub_id, start, channel| Frame::Subscribe {
            sub_id,
            mode: DeliveryMode::Unreliable,
            start,
            channel,
            group: None,
            origins: false,
            resume: udprelay::wire::ResumeVector::EMPTY,
        };
        let reliable = Frame::Subscribe {
            sub_id: FORGED_SUB_ID,
            mode: DeliveryMode::Reliable,
            start: StartPosition::Earliest,
            channel: targets.stored,
            group: None,
            origins: false,
            resume: udprelay::wire::ResumeVector::EMPTY,
        };
        let frames = match self {
            Attack::Ping => vec![Frame::Ping {
                nonce: round,
                load: false,
            }],
            Attack::SubscribeLive => {
                vec![subscribe(
                    FORGED_SUB_ID,
                    StartPosition::Latest,
                    targets.live,
                )]
            }
            Attack::SubscribeEarliest => {
                vec![subscribe(
                    FORGED_SUB_ID,
                    StartPosition::Earliest,
                    targets.stored,
                )]
            }
            Attack::SubscribeEarliestEight => (0..8)
                .map(|i| subscribe(FORGED_SUB_ID + i, StartPosition::Earliest, targets.stored))
                .collect(),
            Attack::SubscribeEarliestReliable => vec![reliable],
            Attack::SubscribeEarliestReliableAcked if round == 0 => vec![reliable],
            Attack::SubscribeEarliestReliableAcked => return ack_everything(FORGED_SUB_ID),
            Attack::StatsRequest => {
                let padding =
                    1400 - wire::HEADER_LEN - wire::FRAME_HEADER_LEN - wire::STATS_REQUEST_FIXED;
                vec![Frame::StatsRequest {
                    cursor: 0,
                    padding: padding as u16,
                }]
            }
            Attack::StatsRequests300 => (0..300)
                .map(|_| Frame::StatsRequest {
                    cursor: 0,
                    padding: 32,
                })
                .collect(),
            Attack::Malformed => {
                // A frame header of a type no version defines.
                let mut d = wire::encode_datagram(&[]).unwrap();
                d.extend_from_slice(&[0xff, 0, 0, 0]);
                return d;
            }
            Attack::BadVersion => {
                let mut d = wire::encode_datagram(&[Frame::Ping {
                    nonce: round,
                    load: false,
                }])
                .unwrap();
                d[2] = wire::VERSION + 1;
                return d;
            }
            Attack::UnknownUnsubscribe => vec![Frame::Unsubscribe {
                sub_id: FORGED_SUB_ID,
            }],
            Attack::ReliablePublish => vec![Frame::ReliablePublish {
                session: FORGED_SESSION,
                seq: 2 * round + 1,
                acked_below: 0,
                more: false,
                channel: targets.live,
                payload: b"x",
            }],
        };
        wire::encode_datagram(&frames).expect("encode a forged datagram")
    }
}

/// Subscription-ACK frame that acknowledges everything subscription `sub_id`
/// was sent: a relay takes a cumulative number past what it sent as all it
/// sent.
pub fn ack_everything(sub_id: u32) -> Vec<u8> {
    wire::encode_datagram(&[Frame::Ack {
        kind: AckKind::Subscription,
        id: u64::from(sub_id),
        cumulative: u64::MAX,
        window: 4096,
        ranges: &[],
    }])
    .expect("encode ack")
}

/// Bytes forged in a victim's name against the bytes it received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amplification {
    /// Forged datagrams sent.
    pub forged_datagrams: u64,
    /// Their UDP payload bytes.
    pub forged_bytes: u64,
    /// What the victim received in the window.
    pub received: Received,
}

impl Amplification {
    /// Bytes received per byte forged.
    pub fn factor(&self) -> f64 {
        self.received.bytes as f64 / self.forged_bytes.max(1) as f64
    }
}

/// How an attack is forged and measured.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Datagrams forged, one a round.
    pub rounds: u64,
    /// Time from one round to the next; the attack lasts `rounds` of them.
    pub every: Duration,
    /// How long the victim's arrivals are still counted once the relay has
    /// handled the last forged datagram.
    pub then: Duration,
}

/// Forges `attack` at `relay` in the name of a fresh [`Victim`] as `plan`
/// says; once the attack's time is over, calls `barrier` (which must return
/// once the relay has handled everything sent before it: a PING from another
/// socket, answered) and counts what the victim receives from the first
/// forged datagram until `plan.then` after the barrier.
pub fn measure(
    forger: &Forger,
    relay: SocketAddr,
    attack: Attack,
    targets: Targets<'_>,
    plan: Plan,
    barrier: impl FnOnce(),
) -> Amplification {
    let victim = Victim::start();
    let start = Instant::now();
    let mut forged = Amplification::default();
    for round in 0..plan.rounds {
        // Pacing the attack, not waiting for anything to happen.
        let due = start + plan.every * round as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let datagram = attack.datagram(targets, round);
        forged.forged_bytes += forger.send(victim.addr, relay, &datagram) as u64;
        forged.forged_datagrams += 1;
    }
    let over = start + plan.every * plan.rounds as u32;
    thread::sleep(over.saturating_duration_since(Instant::now()));
    barrier();
    // The measurement window: what the relay goes on sending the victim.
    thread::sleep(plan.then);
    forged.received = victim.finish();
    forged
}

/// A publisher on its own socket sending one `size`-byte message to
/// `channel` every `every` until dropped: a channel with live traffic.
pub struct LivePublisher {
    /// Tells the publishing thread to stop.
    stop: Arc<AtomicBool>,
    /// The publishing thread.
    thread: Option<JoinHandle<()>>,
}

impl LivePublisher {
    /// Starts publishing at once.
    pub fn start(relay: SocketAddr, channel: &str, size: usize, every: Duration) -> LivePublisher {
        let socket = bind_loopback();
        socket.connect(relay).expect("connect");
        let payload = vec![b'l'; size];
        let datagram = wire::encode_datagram(&[Frame::Publish {
            channel,
            payload: &payload,
        }])
        .expect("encode publish");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut sent = 0u32;
            while !stopping.load(Ordering::Relaxed) {
                let _ = socket.send(&datagram);
                sent += 1;
                // Pacing the traffic, not waiting for anything to happen.
                thread::sleep((start + every * sent).saturating_duration_since(Instant::now()));
            }
        });
        LivePublisher {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for LivePublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

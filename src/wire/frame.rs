//! Frame types: the typed units inside a datagram, what each field means,
//! and the fixed sizes of their bodies.
//!
//! This file owns the vocabulary shared by the encoder (`encode.rs`) and the
//! decoder (`decode.rs`); it holds no byte handling itself beyond the type
//! codes.

use super::{NOISE_MESSAGE_LEN, StatEntries, TOKEN_LEN};

/// Frame type codes (the first byte of every frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// A message for a channel, client to relay.
    Publish = 0x01,
    /// Start (or keep alive) a subscription, client to relay.
    Subscribe = 0x02,
    /// End a subscription, client to relay.
    Unsubscribe = 0x03,
    /// A subscription was accepted, relay to client.
    Subscribed = 0x04,
    /// A stored message for a subscription, relay to client.
    Deliver = 0x05,
    /// Cumulative and selective acknowledgement (reliable mode).
    Ack = 0x06,
    /// Keepalive and round-trip probe; answered by a pong.
    Ping = 0x07,
    /// Answer to a ping, echoing its nonce.
    Pong = 0x08,
    /// Something the peer sent was refused, and why.
    Error = 0x09,
    /// Ask the relay for its counters.
    StatsRequest = 0x0A,
    /// The relay's counters, as name and value pairs.
    Stats = 0x0B,
    /// A message of a reliable publishing session, client to relay.
    ReliablePublish = 0x0C,
    /// A piece of a message too large for one datagram, client to relay.
    Fragment = 0x0D,
    /// A piece of a stored message too large for one datagram, relay to
    /// client.
    DeliverFragment = 0x0E,
    /// A token proving the client receives at its address, relay to client.
    AddressToken = 0x0F,
    /// The client's address token, first in a datagram, client to relay.
    Validate = 0x10,
    /// The first handshake message of a keyed client, client to relay.
    Handshake = 0x11,
    /// The relay's answer to a handshake: the session it opened, relay to
    /// client.
    HandshakeReply = 0x12,
    /// A channel that a wildcard subscription matches, and the id its
    /// messages come under, relay to client.
    Matched = 0x13,
}

/// Subscription ids from here up are the relay's, for the channels that
/// wildcard subscriptions match; a client names its own below it.
pub const RELAY_SUB_IDS: u32 = 0x8000_0000;

/// Frame flag of RELIABLE_PUBLISH: the message continues in the next
/// sequence number.
pub const FLAG_MORE: u8 = 0x01;

/// Frame flag of SUBSCRIBE (send me origins) and of DELIVER and
/// DELIVER_FRAGMENT (an [`Origin`] follows the timestamp).
pub const FLAG_ORIGIN: u8 = 0x02;

/// Bytes of an origin on the wire: kind, id, position.
pub const ORIGIN_LEN: usize = 1 + 8 + 8;

/// Most sources a resuming SUBSCRIBE names.
pub const MAX_RESUME_SOURCES: usize = 64;

impl FrameType {
    /// The frame type whose code is `v`, if this build knows it.
    pub(super) fn from_u8(v: u8) -> Option<FrameType> {
        Some(match v {
            0x01 => FrameType::Publish,
            0x02 => FrameType::Subscribe,
            0x03 => FrameType::Unsubscribe,
            0x04 => FrameType::Subscribed,
            0x05 => FrameType::Deliver,
            0x06 => FrameType::Ack,
            0x07 => FrameType::Ping,
            0x08 => FrameType::Pong,
            0x09 => FrameType::Error,
            0x0A => FrameType::StatsRequest,
            0x0B => FrameType::Stats,
            0x0C => FrameType::ReliablePublish,
            0x0D => FrameType::Fragment,
            0x0E => FrameType::DeliverFragment,
            0x0F => FrameType::AddressToken,
            0x10 => FrameType::Validate,
            0x11 => FrameType::Handshake,
            0x12 => FrameType::HandshakeReply,
            0x13 => FrameType::Matched,
            _ => return None,
        })
    }
}

/// How a subscription wants its messages delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Best effort: a lost datagram is a lost message.
    Unreliable,
    /// Acknowledged and retransmitted: no loss, no duplicates, in order.
    Reliable,
}

/// Where a subscription starts reading its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// Only messages published from now on.
    Latest,
    /// The oldest message the relay still holds.
    Earliest,
    /// A given offset (or the oldest retained one, if that is later).
    Offset(u64),
    /// Where a subscriber that moved from another relay of a cluster left
    /// off: past the positions of the subscribe's [`ResumeVector`], and, for
    /// a source it does not name, from messages stored at or after `since`
    /// (ns since the Unix epoch) on.
    Resume {
        /// Messages of sources the vector does not name stored before this
        /// are not wanted.
        since: u64,
    },
}

/// Whose numbering a message follows across the relays of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A relay's messages that no reliable session published, numbered by
    /// their offsets there.
    Relay(u64),
    /// A reliable publishing session's messages, numbered by the sequence
    /// number of their last piece, through whichever relay.
    Session(u64),
}

/// Where a delivered message stands in its source's numbering: the same
/// at every relay of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Whose numbering.
    pub source: Source,
    /// Its number there.
    pub position: u64,
}

impl Origin {
    /// The 17 bytes of the origin.
    pub fn to_bytes(self) -> [u8; ORIGIN_LEN] {
        let (kind, id) = match self.source {
            Source::Relay(id) => (0, id),
            Source::Session(id) => (1, id),
        };
        let mut out = [0; ORIGIN_LEN];
        out[0] = kind;
        out[1..9].copy_from_slice(&id.to_le_bytes());
        out[9..].copy_from_slice(&self.position.to_le_bytes());
        out
    }

    /// The origin in `bytes`; `None` for an unknown kind.
    pub fn from_bytes(bytes: &[u8; ORIGIN_LEN]) -> Option<Origin> {
        let id = u64::from_le_bytes(bytes[1..9].try_into().unwrap_or_default());
        let position = u64::from_le_bytes(bytes[9..].try_into().unwrap_or_default());
        let source = match bytes[0] {
            0 => Source::Relay(id),
            1 => Source::Session(id),
            _ => return None,
        };
        Some(Origin { source, position })
    }
}

/// The last position a subscriber holds of each of up to
/// [`MAX_RESUME_SOURCES`] sources, as a resuming SUBSCRIBE carries them:
/// [`ORIGIN_LEN`]-byte entries, each checked when decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResumeVector<'a> {
    bytes: &'a [u8],
}

impl<'a> ResumeVector<'a> {
    /// No sources.
    pub const EMPTY: ResumeVector<'static> = ResumeVector { bytes: &[] };

    /// The vector in `bytes` (entries back to back), if every entry is
    /// whole and of a known kind and there are at most
    /// [`MAX_RESUME_SOURCES`].
    pub fn new(bytes: &'a [u8]) -> Option<ResumeVector<'a>> {
        let whole = bytes.len().is_multiple_of(ORIGIN_LEN);
        let valid = whole
            && bytes.len() / ORIGIN_LEN <= MAX_RESUME_SOURCES
            && bytes
                .chunks_exact(ORIGIN_LEN)
                .all(|e| e.try_into().ok().and_then(Origin::from_bytes).is_some());
        valid.then_some(ResumeVector { bytes })
    }

    /// The bytes of `origins` (at most [`MAX_RESUME_SOURCES`] are taken),
    /// for [`ResumeVector::new`].
    pub fn encode(origins: &[Origin]) -> Vec<u8> {
        (origins.iter().take(MAX_RESUME_SOURCES))
            .flat_map(|o| o.to_bytes())
            .collect()
    }

    /// How many sources it names.
    pub fn len(&self) -> usize {
        self.bytes.len() / ORIGIN_LEN
    }

    /// True if it names none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Its entries as they are on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Each source and the last position the subscriber holds of it.
    pub fn iter(&self) -> impl Iterator<Item = Origin> + 'a {
        (self.bytes.chunks_exact(ORIGIN_LEN))
            .filter_map(|e| e.try_into().ok().and_then(Origin::from_bytes))
    }
}

/// What an [`Frame::Ack`] acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// Sequence numbers of a reliable publishing session (relay to publisher).
    Publish,
    /// Offsets delivered on a reliable subscription (subscriber to relay).
    Subscription,
    /// The pieces received so far of one large message of a reliable
    /// subscription (subscriber to relay): `id` is the subscription,
    /// `cumulative` the message's offset, `window` 0, and the ranges are byte
    /// ranges of the message. The relay then resends only the other pieces.
    Pieces,
}

/// An error code carried by [`Frame::Error`]. Unknown codes decode as they are,
/// so a newer peer's codes still reach the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// A frame could not be decoded.
    pub const MALFORMED: ErrorCode = ErrorCode(1);
    /// The datagram's protocol version is not spoken here.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(2);
    /// A known request this relay does not (yet) serve.
    pub const UNSUPPORTED: ErrorCode = ErrorCode(3);
    /// The channel name is not valid.
    pub const BAD_CHANNEL: ErrorCode = ErrorCode(4);
    /// The message exceeds the relay's maximum message size.
    pub const TOO_LARGE: ErrorCode = ErrorCode(5);
    /// The subscription id is not known for this address.
    pub const UNKNOWN_SUBSCRIPTION: ErrorCode = ErrorCode(6);
    /// A relay limit (channels, subscriptions) is reached.
    pub const LIMIT_REACHED: ErrorCode = ErrorCode(7);
    /// The channel exists but cannot be served right now.
    pub const UNAVAILABLE: ErrorCode = ErrorCode(8);
    /// The client's key lacks the permission the request needs.
    pub const DENIED: ErrorCode = ErrorCode(9);

    /// A short lowercase name for the code.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MALFORMED => "malformed",
            ErrorCode::UNSUPPORTED_VERSION => "unsupported-version",
            ErrorCode::UNSUPPORTED => "unsupported",
            ErrorCode::BAD_CHANNEL => "bad-channel",
            ErrorCode::TOO_LARGE => "too-large",
            ErrorCode::UNKNOWN_SUBSCRIPTION => "unknown-subscription",
            ErrorCode::LIMIT_REACHED => "limit-reached",
            ErrorCode::UNAVAILABLE => "unavailable",
            ErrorCode::DENIED => "denied",
            _ => "unknown",
        }
    }
}

/// One decoded frame, borrowing its variable-length fields from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Append `payload` to `channel` and deliver it to the channel's subscribers.
    Publish {
        /// Channel name, validated.
        channel: &'a str,
        /// Message bytes.
        payload: &'a [u8],
    },
    /// Subscribe to `channel`, or refresh the subscription `sub_id` if it exists.
    Subscribe {
        /// Chosen by the client; names the subscription in later frames.
        sub_id: u32,
        /// Reliable or best effort.
        mode: DeliveryMode,
        /// Where to start reading.
        start: StartPosition,
        /// Channel name, validated.
        channel: &'a str,
        /// The queue group it joins, if any: the group's members share the
        /// channel's messages, each to one of them.
        group: Option<&'a str>,
        /// Deliveries should say where each message came from (frame flag
        /// [`FLAG_ORIGIN`]; a relay in a cluster does so for reliable
        /// subscriptions).
        origins: bool,
        /// With [`StartPosition::Resume`], the positions the subscriber
        /// holds; empty otherwise.
        resume: ResumeVector<'a>,
    },
    /// End subscription `sub_id`.
    Unsubscribe {
        /// The subscription to end.
        sub_id: u32,
    },
    /// The relay accepted (or refreshed) subscription `sub_id`.
    Subscribed {
        /// The subscription.
        sub_id: u32,
        /// Offset of the first message this subscription will be sent.
        first_offset: u64,
        /// Offset the channel's next published message will get.
        next_offset: u64,
        /// How long the relay keeps the subscription without hearing from the
        /// client, in milliseconds.
        lease_ms: u32,
    },
    /// Wildcard subscription `sub_id` matches `channel`: its messages come
    /// as subscription `channel_sub_id`, an id the relay chose (at or above
    /// [`RELAY_SUB_IDS`]), acknowledged under that id when reliable.
    Matched {
        /// The wildcard subscription.
        sub_id: u32,
        /// The id the channel's deliveries carry.
        channel_sub_id: u32,
        /// Offset of the first message of the channel it will be sent.
        first_offset: u64,
        /// Offset the channel's next published message will get.
        next_offset: u64,
        /// The channel's name, validated.
        channel: &'a str,
    },
    /// A message of the channel behind `sub_id`.
    Deliver {
        /// The subscription this is for.
        sub_id: u32,
        /// The message's offset in its channel.
        offset: u64,
        /// When the relay stored it, in nanoseconds since the Unix epoch.
        timestamp: u64,
        /// Where it came from, for a subscription that asked (frame flag
        /// [`FLAG_ORIGIN`]).
        origin: Option<Origin>,
        /// Message bytes.
        payload: &'a [u8],
    },
    /// Acknowledges everything below `cumulative`, plus the given ranges.
    Ack {
        /// Which stream the numbers belong to.
        kind: AckKind,
        /// Publishing session id, or subscription id.
        id: u64,
        /// Every number below this was received.
        cumulative: u64,
        /// How many more messages past `cumulative` the receiver will take.
        window: u32,
        /// Further received ranges above `cumulative`, `[start, end)`, as raw
        /// little-endian pairs of u64 (16 bytes each).
        ranges: &'a [u8],
    },
    /// Message `seq` of reliable publishing session `session`.
    ReliablePublish {
        /// Chosen by the client, unique per run; with the client's address it
        /// names the session.
        session: u64,
        /// The message's sequence number in the session, from 0.
        seq: u64,
        /// Everything below this was acknowledged already: a relay that does
        /// not know the session (it restarted) starts it here.
        acked_below: u64,
        /// The message continues in `seq + 1` (frame flag [`FLAG_MORE`]):
        /// a large message is sent as consecutive sequence numbers, so only
        /// lost pieces are sent again.
        more: bool,
        /// Channel name, validated.
        channel: &'a str,
        /// Message bytes.
        payload: &'a [u8],
    },
    /// Piece `index` of `count` of unreliable message `msg_id` (a message
    /// too large for one datagram).
    Fragment {
        /// Chosen by the client; with its address it names the message.
        msg_id: u32,
        /// This piece's position, from 0.
        index: u16,
        /// How many pieces the message has.
        count: u16,
        /// Channel name, validated.
        channel: &'a str,
        /// This piece's bytes.
        chunk: &'a [u8],
    },
    /// Bytes `at..at + chunk.len()` of the stored message at `offset`, which
    /// is `total` bytes long.
    DeliverFragment {
        /// The subscription this is for.
        sub_id: u32,
        /// The message's offset in its channel.
        offset: u64,
        /// When the relay stored it, in nanoseconds since the Unix epoch.
        timestamp: u64,
        /// Where it came from, as in [`Frame::Deliver`].
        origin: Option<Origin>,
        /// The whole message's length.
        total: u32,
        /// Where this piece starts in the message.
        at: u32,
        /// This piece's bytes.
        chunk: &'a [u8],
    },
    /// A token for the address the relay sent it to: echoed in a VALIDATE
    /// frame, it proves that the client receives there.
    AddressToken {
        /// The token, opaque to the client.
        token: [u8; TOKEN_LEN],
    },
    /// The address token the client was given, as the first frame of a
    /// datagram; all zeros (or any invalid token) asks for one.
    Validate {
        /// The token.
        token: [u8; TOKEN_LEN],
    },
    /// A keyed client's first handshake message: which credential, and
    /// Noise's first message, which only a holder of its secret can make.
    Handshake {
        /// The key id the credential names.
        key_id: u32,
        /// The credential's expiry, unix seconds; 0 for a key's own.
        expires: u64,
        /// Noise NNpsk0's first message.
        message: [u8; NOISE_MESSAGE_LEN],
    },
    /// The relay's handshake answer: the session it opened, and Noise's
    /// second message, which only a holder of the same secret can make.
    HandshakeReply {
        /// The session id: the key id field of every sealed datagram.
        session: u32,
        /// Noise NNpsk0's second message.
        message: [u8; NOISE_MESSAGE_LEN],
    },
    /// Keepalive and round-trip probe.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
        /// Asks for the relay's load in the pong (4 zero bytes follow the
        /// nonce: room for it, so the answer is no larger than the ping).
        load: bool,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
        /// The relay's load, if the ping asked: the share of the last
        /// second its event loop was busy, in thousandths (0 to 1000).
        load: Option<u32>,
    },
    /// A refusal, with a code and a human-readable reason.
    Error {
        /// What kind of refusal.
        code: ErrorCode,
        /// Why, in words (UTF-8).
        reason: &'a str,
    },
    /// Ask for one page of the relay's counters. The request is padded: the
    /// answer is never larger than the datagram that asked.
    StatsRequest {
        /// Index of the first entry wanted (0 for the first page).
        cursor: u32,
        /// Zero bytes after the cursor: room for the answer, which needs
        /// 4 more than the request's cursor for its own fixed part.
        padding: u16,
    },
    /// One page of the relay's counters.
    Stats {
        /// The request's cursor: the index of this page's first entry.
        cursor: u32,
        /// Where the next page starts; `None` on the last page.
        next: Option<u32>,
        /// Counter names and values.
        entries: StatEntries<'a>,
    },
}

impl<'a> Frame<'a> {
    /// The frame's type code.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Publish { .. } => FrameType::Publish,
            Frame::Subscribe { .. } => FrameType::Subscribe,
            Frame::Unsubscribe { .. } => FrameType::Unsubscribe,
            Frame::Subscribed { .. } => FrameType::Subscribed,
            Frame::Deliver { .. } => FrameType::Deliver,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::Error { .. } => FrameType::Error,
            Frame::StatsRequest { .. } => FrameType::StatsRequest,
            Frame::Stats { .. } => FrameType::Stats,
            Frame::ReliablePublish { .. } => FrameType::ReliablePublish,
            Frame::Fragment { .. } => FrameType::Fragment,
            Frame::DeliverFragment { .. } => FrameType::DeliverFragment,
            Frame::AddressToken { .. } => FrameType::AddressToken,
            Frame::Validate { .. } => FrameType::Validate,
            Frame::Handshake { .. } => FrameType::Handshake,
            Frame::HandshakeReply { .. } => FrameType::HandshakeReply,
            Frame::Matched { .. } => FrameType::Matched,
        }
    }
}

/// Fixed part of a deliver frame body: sub_id, offset, timestamp.
pub(super) const DELIVER_FIXED: usize = 4 + 8 + 8;
/// Fixed part of a deliver-fragment frame body: sub_id, offset, timestamp,
/// total, at.
pub(super) const DELIVER_FRAGMENT_FIXED: usize = 4 + 8 + 8 + 4 + 4;

//! Frames: the typed units inside a datagram, and their byte layout.

use super::{FRAME_HEADER_LEN, MAX_FRAME_BODY, WireError, validate_channel};

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
}

/// Frame flag of RELIABLE_PUBLISH: the message continues in the next
/// sequence number.
pub const FLAG_MORE: u8 = 0x01;

impl FrameType {
    fn from_u8(v: u8) -> Option<FrameType> {
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
            _ => "unknown",
        }
    }
}

/// A list of `(name, value)` counters: a slice when encoding, the raw bytes of
/// a received frame when decoding (iterate with [`StatEntries::iter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatEntries<'a> {
    /// Entries to encode.
    List(&'a [(&'a str, u64)]),
    /// Entries as received, already validated by the decoder.
    Encoded(&'a [u8]),
}

impl<'a> StatEntries<'a> {
    /// Iterates over the entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        let (list, mut raw): (&'a [(&'a str, u64)], &'a [u8]) = match *self {
            StatEntries::List(l) => (l, &[]),
            StatEntries::Encoded(b) => (&[], b),
        };
        let decoded = std::iter::from_fn(move || {
            let mut r = Reader::new(raw);
            let entry = r.stat_entry().ok()?;
            raw = r.rest();
            Some(entry)
        });
        list.iter().copied().chain(decoded)
    }

    fn encoded_len(&self) -> usize {
        match *self {
            StatEntries::List(l) => l.iter().map(|(n, _)| stat_entry_len(n)).sum(),
            StatEntries::Encoded(b) => b.len(),
        }
    }
}

/// Bytes one STATS entry takes: length, name (cut at 255 bytes), value.
pub fn stat_entry_len(name: &str) -> usize {
    1 + name.len().min(255) + 8
}

/// Fixed part of a STATS frame body: the cursor it answers and the next one.
pub const STATS_FIXED: usize = 4 + 4;
/// Fixed part of a STATS_REQUEST frame body: the cursor.
pub const STATS_REQUEST_FIXED: usize = 4;
/// The `next` of the last page of STATS.
const STATS_LAST_PAGE: u32 = u32::MAX;

/// The page of `entries` that starts at entry `cursor` and fits in `room`
/// bytes of entries, and the cursor of the page after it (`None` if this
/// page reaches the end).
pub fn stats_page<'a>(
    entries: impl IntoIterator<Item = (&'a str, u64)>,
    cursor: u32,
    room: usize,
) -> (Vec<(&'a str, u64)>, Option<u32>) {
    let mut page = Vec::new();
    let mut used = 0;
    let mut rest = entries.into_iter().skip(cursor as usize).peekable();
    while let Some(&(name, value)) = rest.peek() {
        // The last cursor value means "no next page", so a page never
        // reaches it.
        if used + stat_entry_len(name) > room
            || cursor as usize + page.len() >= STATS_LAST_PAGE as usize
        {
            break;
        }
        used += stat_entry_len(name);
        page.push((name, value));
        rest.next();
    }
    let next = rest.peek().map(|_| cursor + page.len() as u32);
    (page, next)
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
    /// A message of the channel behind `sub_id`.
    Deliver {
        /// The subscription this is for.
        sub_id: u32,
        /// The message's offset in its channel.
        offset: u64,
        /// When the relay stored it, in nanoseconds since the Unix epoch.
        timestamp: u64,
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
        /// The whole message's length.
        total: u32,
        /// Where this piece starts in the message.
        at: u32,
        /// This piece's bytes.
        chunk: &'a [u8],
    },
    /// Keepalive and round-trip probe.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
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
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Frame::Publish { channel, payload } => 1 + channel.len() + payload.len(),
            Frame::Subscribe { channel, .. } => 4 + 1 + 1 + 8 + 1 + channel.len(),
            Frame::Unsubscribe { .. } => 4,
            Frame::Subscribed { .. } => 4 + 8 + 8 + 4,
            Frame::Deliver { payload, .. } => DELIVER_FIXED + payload.len(),
            Frame::Ack { ranges, .. } => 1 + 8 + 8 + 4 + ranges.len(),
            Frame::ReliablePublish {
                channel, payload, ..
            } => 8 + 8 + 8 + 1 + channel.len() + payload.len(),
            Frame::Fragment { channel, chunk, .. } => 4 + 2 + 2 + 1 + channel.len() + chunk.len(),
            Frame::DeliverFragment { chunk, .. } => DELIVER_FRAGMENT_FIXED + chunk.len(),
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
            Frame::Error { reason, .. } => 2 + reason.len(),
            Frame::StatsRequest { padding, .. } => STATS_REQUEST_FIXED + usize::from(*padding),
            Frame::Stats { entries, .. } => STATS_FIXED + entries.encoded_len(),
        }
    }

    /// Bytes this frame takes on the wire, frame header included.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len()
    }

    /// Appends the frame to `out`. Fails with [`WireError::TooLarge`] when the
    /// body exceeds 65,535 bytes and with [`WireError::BadChannel`] for an
    /// invalid channel name; `out` is unchanged on error.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let body = self.body_len();
        if body > MAX_FRAME_BODY {
            return Err(WireError::TooLarge);
        }
        match self {
            Frame::Publish { channel, .. }
            | Frame::Subscribe { channel, .. }
            | Frame::ReliablePublish { channel, .. }
            | Frame::Fragment { channel, .. } => {
                validate_channel(channel.as_bytes())?;
            }
            Frame::Ack { ranges, .. } if !ranges.len().is_multiple_of(16) => {
                return Err(WireError::BadLength);
            }
            _ => {}
        }
        out.reserve(FRAME_HEADER_LEN + body);
        out.push(self.frame_type() as u8);
        out.push(match self {
            Frame::ReliablePublish { more: true, .. } => FLAG_MORE,
            _ => 0,
        });
        out.extend_from_slice(&(body as u16).to_le_bytes());
        match *self {
            Frame::Publish { channel, payload } => {
                out.push(channel.len() as u8);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(payload);
            }
            Frame::Subscribe {
                sub_id,
                mode,
                start,
                channel,
            } => {
                out.extend_from_slice(&sub_id.to_le_bytes());
                out.push(match mode {
                    DeliveryMode::Unreliable => 0,
                    DeliveryMode::Reliable => 1,
                });
                let (kind, offset) = match start {
                    StartPosition::Latest => (0, 0),
                    StartPosition::Earliest => (1, 0),
                    StartPosition::Offset(o) => (2, o),
                };
                out.push(kind);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(channel.len() as u8);
                out.extend_from_slice(channel.as_bytes());
            }
            Frame::Unsubscribe { sub_id } => out.extend_from_slice(&sub_id.to_le_bytes()),
            Frame::Subscribed {
                sub_id,
                first_offset,
                next_offset,
                lease_ms,
            } => {
                out.extend_from_slice(&sub_id.to_le_bytes());
                out.extend_from_slice(&first_offset.to_le_bytes());
                out.extend_from_slice(&next_offset.to_le_bytes());
                out.extend_from_slice(&lease_ms.to_le_bytes());
            }
            Frame::Deliver {
                sub_id,
                offset,
                timestamp,
                payload,
            } => {
                out.extend_from_slice(&sub_id.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&timestamp.to_le_bytes());
                out.extend_from_slice(payload);
            }
            Frame::Ack {
                kind,
                id,
                cumulative,
                window,
                ranges,
            } => {
                out.push(match kind {
                    AckKind::Publish => 0,
                    AckKind::Subscription => 1,
                    AckKind::Pieces => 2,
                });
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&cumulative.to_le_bytes());
                out.extend_from_slice(&window.to_le_bytes());
                out.extend_from_slice(ranges);
            }
            Frame::ReliablePublish {
                session,
                seq,
                acked_below,
                channel,
                payload,
                more: _,
            } => {
                out.extend_from_slice(&session.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&acked_below.to_le_bytes());
                out.push(channel.len() as u8);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(payload);
            }
            Frame::Fragment {
                msg_id,
                index,
                count,
                channel,
                chunk,
            } => {
                out.extend_from_slice(&msg_id.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.push(channel.len() as u8);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(chunk);
            }
            Frame::DeliverFragment {
                sub_id,
                offset,
                timestamp,
                total,
                at,
                chunk,
            } => {
                out.extend_from_slice(&sub_id.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&timestamp.to_le_bytes());
                out.extend_from_slice(&total.to_le_bytes());
                out.extend_from_slice(&at.to_le_bytes());
                out.extend_from_slice(chunk);
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => {
                out.extend_from_slice(&nonce.to_le_bytes())
            }
            Frame::Error { code, reason } => {
                out.extend_from_slice(&code.0.to_le_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
            Frame::StatsRequest { cursor, padding } => {
                out.extend_from_slice(&cursor.to_le_bytes());
                out.resize(out.len() + usize::from(padding), 0);
            }
            Frame::Stats {
                cursor,
                next,
                entries,
            } => {
                out.extend_from_slice(&cursor.to_le_bytes());
                out.extend_from_slice(&next.unwrap_or(STATS_LAST_PAGE).to_le_bytes());
                match entries {
                    StatEntries::List(list) => {
                        for (name, value) in list {
                            let name = &name.as_bytes()[..name.len().min(255)];
                            out.push(name.len() as u8);
                            out.extend_from_slice(name);
                            out.extend_from_slice(&value.to_le_bytes());
                        }
                    }
                    StatEntries::Encoded(raw) => out.extend_from_slice(raw),
                }
            }
        }
        Ok(())
    }

    /// Decodes the frame at the start of `input`, returning it and the bytes
    /// after it.
    pub fn decode(input: &'a [u8]) -> Result<(Frame<'a>, &'a [u8]), WireError> {
        let Some((head, rest)) = input.split_first_chunk::<FRAME_HEADER_LEN>() else {
            return Err(WireError::Truncated);
        };
        let kind = FrameType::from_u8(head[0]).ok_or(WireError::UnknownFrame(head[0]))?;
        let allowed = if kind == FrameType::ReliablePublish {
            FLAG_MORE
        } else {
            0
        };
        if head[1] & !allowed != 0 {
            return Err(WireError::BadFrameFlags(head[0], head[1]));
        }
        let len = u16::from_le_bytes([head[2], head[3]]) as usize;
        if rest.len() < len {
            return Err(WireError::Truncated);
        }
        let (body, after) = rest.split_at(len);
        let mut r = Reader::new(body);
        let frame = match kind {
            FrameType::Publish => {
                let channel = r.channel()?;
                Frame::Publish {
                    channel,
                    payload: r.rest(),
                }
            }
            FrameType::Subscribe => {
                let sub_id = r.u32()?;
                let mode = match r.u8()? {
                    0 => DeliveryMode::Unreliable,
                    1 => DeliveryMode::Reliable,
                    _ => return Err(WireError::InvalidField("delivery mode")),
                };
                let kind = r.u8()?;
                let offset = r.u64()?;
                let start = match kind {
                    0 => StartPosition::Latest,
                    1 => StartPosition::Earliest,
                    2 => StartPosition::Offset(offset),
                    _ => return Err(WireError::InvalidField("start position")),
                };
                let channel = r.channel()?;
                r.end()?;
                Frame::Subscribe {
                    sub_id,
                    mode,
                    start,
                    channel,
                }
            }
            FrameType::Unsubscribe => {
                let sub_id = r.u32()?;
                r.end()?;
                Frame::Unsubscribe { sub_id }
            }
            FrameType::Subscribed => {
                let f = Frame::Subscribed {
                    sub_id: r.u32()?,
                    first_offset: r.u64()?,
                    next_offset: r.u64()?,
                    lease_ms: r.u32()?,
                };
                r.end()?;
                f
            }
            FrameType::Deliver => Frame::Deliver {
                sub_id: r.u32()?,
                offset: r.u64()?,
                timestamp: r.u64()?,
                payload: r.rest(),
            },
            FrameType::Ack => {
                let kind = match r.u8()? {
                    0 => AckKind::Publish,
                    1 => AckKind::Subscription,
                    2 => AckKind::Pieces,
                    _ => return Err(WireError::InvalidField("ack kind")),
                };
                let id = r.u64()?;
                let cumulative = r.u64()?;
                let window = r.u32()?;
                let ranges = r.rest();
                if !ranges.len().is_multiple_of(16) {
                    return Err(WireError::BadLength);
                }
                Frame::Ack {
                    kind,
                    id,
                    cumulative,
                    window,
                    ranges,
                }
            }
            FrameType::ReliablePublish => {
                let session = r.u64()?;
                let seq = r.u64()?;
                let acked_below = r.u64()?;
                let channel = r.channel()?;
                Frame::ReliablePublish {
                    session,
                    seq,
                    acked_below,
                    more: head[1] & FLAG_MORE != 0,
                    channel,
                    payload: r.rest(),
                }
            }
            FrameType::Fragment => {
                let msg_id = r.u32()?;
                let index = r.u16()?;
                let count = r.u16()?;
                if count < 2 || index >= count {
                    return Err(WireError::InvalidField("fragment index"));
                }
                let channel = r.channel()?;
                let chunk = r.rest();
                // An empty piece would let a peer make the relay hold a
                // message's piece table for no bytes at all.
                if chunk.is_empty() {
                    return Err(WireError::InvalidField("fragment chunk"));
                }
                Frame::Fragment {
                    msg_id,
                    index,
                    count,
                    channel,
                    chunk,
                }
            }
            FrameType::DeliverFragment => {
                let sub_id = r.u32()?;
                let offset = r.u64()?;
                let timestamp = r.u64()?;
                let total = r.u32()?;
                let at = r.u32()?;
                let chunk = r.rest();
                if u64::from(at) + chunk.len() as u64 > u64::from(total) || chunk.is_empty() {
                    return Err(WireError::InvalidField("fragment position"));
                }
                Frame::DeliverFragment {
                    sub_id,
                    offset,
                    timestamp,
                    total,
                    at,
                    chunk,
                }
            }
            FrameType::Ping | FrameType::Pong => {
                let nonce = r.u64()?;
                r.end()?;
                if kind == FrameType::Ping {
                    Frame::Ping { nonce }
                } else {
                    Frame::Pong { nonce }
                }
            }
            FrameType::Error => {
                let code = ErrorCode(r.u16()?);
                let reason = std::str::from_utf8(r.rest())
                    .map_err(|_| WireError::InvalidField("error reason"))?;
                Frame::Error { code, reason }
            }
            FrameType::StatsRequest => {
                // An empty body is the unpaged request of earlier builds:
                // the first page, with no room for any answer.
                let cursor = if body.is_empty() { 0 } else { r.u32()? };
                // Padding is room for the answer, whatever its bytes.
                let padding = r.rest().len();
                Frame::StatsRequest {
                    cursor,
                    // The body length is 16 bits, so this fits.
                    padding: padding as u16,
                }
            }
            FrameType::Stats => {
                let cursor = r.u32()?;
                let next = Some(r.u32()?).filter(|&n| n != STATS_LAST_PAGE);
                // Validate every entry now so that iteration later cannot fail.
                let raw = r.buf;
                while !r.rest_is_empty() {
                    r.stat_entry()?;
                }
                Frame::Stats {
                    cursor,
                    next,
                    entries: StatEntries::Encoded(raw),
                }
            }
        };
        Ok((frame, after))
    }
}

/// Fixed part of a deliver frame body: sub_id, offset, timestamp.
pub(crate) const DELIVER_FIXED: usize = 4 + 8 + 8;
/// Fixed part of a deliver-fragment frame body: sub_id, offset, timestamp,
/// total, at.
pub(crate) const DELIVER_FRAGMENT_FIXED: usize = 4 + 8 + 8 + 4 + 4;

/// A bounds-checked cursor over a frame body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(WireError::BadLength)?;
        self.buf = rest;
        Ok(*head)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::BadLength);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.take().map(u64::from_le_bytes)
    }

    fn channel(&mut self) -> Result<&'a str, WireError> {
        let len = self.u8()? as usize;
        validate_channel(self.bytes(len)?)
    }

    fn stat_entry(&mut self) -> Result<(&'a str, u64), WireError> {
        let len = self.u8()? as usize;
        let name = std::str::from_utf8(self.bytes(len)?)
            .map_err(|_| WireError::InvalidField("stat name"))?;
        Ok((name, self.u64()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn rest_is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::BadLength)
        }
    }
}

/// Encodes acknowledgement ranges `[start, end)` into the raw form carried by
/// [`Frame::Ack`].
pub fn encode_ack_ranges(ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ranges.len() * 16);
    for (start, end) in ranges {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
    out
}

/// Iterates over the raw ranges of a decoded [`Frame::Ack`].
pub fn ack_ranges(raw: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    raw.chunks_exact(16).map(|c| {
        let mut r = Reader::new(c);
        // chunks_exact guarantees 16 bytes, so both reads succeed.
        (r.u64().unwrap_or(0), r.u64().unwrap_or(0))
    })
}

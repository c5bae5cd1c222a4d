//! The encoder: frame body sizes and the bytes of each frame.
//!
//! The encoder refuses a frame whose bytes could not be read back (a body
//! over 65,535 bytes, an invalid channel name, ack ranges not a multiple of
//! 16 bytes) before it writes anything, so `out` is unchanged on error.

use bytes::BufMut;

use super::frame::{DELIVER_FIXED, DELIVER_FRAGMENT_FIXED};
use super::stats::{STATS_LAST_PAGE, StatEntries};
use super::{
    AckKind, DeliveryMode, FLAG_MORE, FLAG_ORIGIN, FRAME_HEADER_LEN, Frame, FrameType,
    MAX_FRAME_BODY, NOISE_MESSAGE_LEN, ORIGIN_LEN, STATS_FIXED, STATS_REQUEST_FIXED, StartPosition,
    TOKEN_LEN, WireError, check_channel_str,
};

impl Frame<'_> {
    fn body_len(&self) -> usize {
        match self {
            Frame::Publish { channel, payload } => 1 + channel.len() + payload.len(),
            Frame::Subscribe {
                channel,
                group,
                start,
                resume,
                ..
            } => {
                let vector = match start {
                    StartPosition::Resume { .. } => 1 + resume.as_bytes().len(),
                    _ => 0,
                };
                4 + 1 + 1 + 8 + 1 + channel.len() + group.map_or(0, |g| 1 + g.len()) + vector
            }
            Frame::Unsubscribe { .. } => 4,
            Frame::Subscribed { .. } => 4 + 8 + 8 + 4,
            Frame::Matched { channel, .. } => 4 + 4 + 8 + 8 + 1 + channel.len(),
            Frame::Deliver {
                payload, origin, ..
            } => DELIVER_FIXED + origin.map_or(0, |_| ORIGIN_LEN) + payload.len(),
            Frame::Ack { ranges, .. } => 1 + 8 + 8 + 4 + ranges.len(),
            Frame::ReliablePublish {
                channel, payload, ..
            } => 8 + 8 + 8 + 1 + channel.len() + payload.len(),
            Frame::Fragment { channel, chunk, .. } => 4 + 2 + 2 + 1 + channel.len() + chunk.len(),
            Frame::DeliverFragment { chunk, origin, .. } => {
                DELIVER_FRAGMENT_FIXED + origin.map_or(0, |_| ORIGIN_LEN) + chunk.len()
            }
            Frame::Ping { load, .. } => 8 + if *load { 4 } else { 0 },
            Frame::Pong { load, .. } => 8 + if load.is_some() { 4 } else { 0 },
            Frame::AddressToken { .. } | Frame::Validate { .. } => TOKEN_LEN,
            Frame::Handshake { .. } => 4 + 8 + NOISE_MESSAGE_LEN,
            Frame::HandshakeReply { .. } => 4 + NOISE_MESSAGE_LEN,
            Frame::Error { reason, .. } => 2 + reason.len(),
            Frame::StatsRequest { padding, .. } => STATS_REQUEST_FIXED + usize::from(*padding),
            Frame::Stats { entries, .. } => STATS_FIXED + entries.encoded_len(),
        }
    }

    /// Bytes this frame takes on the wire, frame header included.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len()
    }

    /// Appends the frame to `out` (a `Vec<u8>`, or the `BytesMut` a datagram
    /// is sent from). Fails with [`WireError::TooLarge`] when the body exceeds
    /// 65,535 bytes and with [`WireError::BadChannel`] for an invalid channel
    /// name; `out` is unchanged on error.
    pub fn encode<B: BufMut>(&self, out: &mut B) -> Result<(), WireError> {
        let body = self.body_len();
        if body > MAX_FRAME_BODY {
            return Err(WireError::TooLarge);
        }
        match self {
            Frame::Subscribe {
                group: Some(group), ..
            } if check_channel_str(group).is_err() => {
                return Err(WireError::BadChannel);
            }
            // A resume names one channel outside any group, and only a
            // resume carries a vector.
            Frame::Subscribe {
                start: StartPosition::Resume { .. },
                group: Some(_),
                ..
            } => return Err(WireError::InvalidField("start position")),
            Frame::Subscribe { start, resume, .. }
                if !resume.is_empty() && !matches!(start, StartPosition::Resume { .. }) =>
            {
                return Err(WireError::InvalidField("start position"));
            }
            Frame::Publish { channel, .. }
            | Frame::Subscribe { channel, .. }
            | Frame::ReliablePublish { channel, .. }
            | Frame::Fragment { channel, .. }
            | Frame::Matched { channel, .. } => {
                check_channel_str(channel)?;
            }
            Frame::Ack { ranges, .. } if !ranges.len().is_multiple_of(16) => {
                return Err(WireError::BadLength);
            }
            _ => {}
        }
        out.put_u8(self.frame_type() as u8);
        out.put_u8(match self {
            Frame::ReliablePublish { more: true, .. } => FLAG_MORE,
            Frame::Subscribe { origins: true, .. }
            | Frame::Deliver {
                origin: Some(_), ..
            }
            | Frame::DeliverFragment {
                origin: Some(_), ..
            } => FLAG_ORIGIN,
            _ => 0,
        });
        out.put_slice(&(body as u16).to_le_bytes());
        match *self {
            Frame::Publish { channel, payload } => {
                put_len_prefixed(out, channel.as_bytes());
                out.put_slice(payload);
            }
            Frame::Subscribe {
                sub_id,
                mode,
                start,
                channel,
                group,
                origins: _,
                resume,
            } => {
                out.put_slice(&sub_id.to_le_bytes());
                out.put_u8(match mode {
                    DeliveryMode::Unreliable => 0,
                    DeliveryMode::Reliable => 1,
                });
                let (kind, offset) = match start {
                    StartPosition::Latest => (0, 0),
                    StartPosition::Earliest => (1, 0),
                    StartPosition::Offset(o) => (2, o),
                    StartPosition::Resume { since } => (3, since),
                };
                out.put_u8(kind);
                out.put_slice(&offset.to_le_bytes());
                put_len_prefixed(out, channel.as_bytes());
                if let Some(group) = group {
                    put_len_prefixed(out, group.as_bytes());
                }
                if kind == 3 {
                    out.put_u8(resume.len() as u8);
                    out.put_slice(resume.as_bytes());
                }
            }
            Frame::Unsubscribe { sub_id } => out.put_slice(&sub_id.to_le_bytes()),
            Frame::Subscribed {
                sub_id,
                first_offset,
                next_offset,
                lease_ms,
            } => {
                out.put_slice(&sub_id.to_le_bytes());
                out.put_slice(&first_offset.to_le_bytes());
                out.put_slice(&next_offset.to_le_bytes());
                out.put_slice(&lease_ms.to_le_bytes());
            }
            Frame::Matched {
                sub_id,
                channel_sub_id,
                first_offset,
                next_offset,
                channel,
            } => {
                out.put_slice(&sub_id.to_le_bytes());
                out.put_slice(&channel_sub_id.to_le_bytes());
                out.put_slice(&first_offset.to_le_bytes());
                out.put_slice(&next_offset.to_le_bytes());
                put_len_prefixed(out, channel.as_bytes());
            }
            Frame::Deliver {
                sub_id,
                offset,
                timestamp,
                origin,
                payload,
            } => {
                out.put_slice(&sub_id.to_le_bytes());
                out.put_slice(&offset.to_le_bytes());
                out.put_slice(&timestamp.to_le_bytes());
                if let Some(origin) = origin {
                    out.put_slice(&origin.to_bytes());
                }
                out.put_slice(payload);
            }
            Frame::Ack {
                kind,
                id,
                cumulative,
                window,
                ranges,
            } => {
                out.put_u8(match kind {
                    AckKind::Publish => 0,
                    AckKind::Subscription => 1,
                    AckKind::Pieces => 2,
                });
                out.put_slice(&id.to_le_bytes());
                out.put_slice(&cumulative.to_le_bytes());
                out.put_slice(&window.to_le_bytes());
                out.put_slice(ranges);
            }
            Frame::ReliablePublish {
                session,
                seq,
                acked_below,
                channel,
                payload,
                more: _,
            } => {
                out.put_slice(&session.to_le_bytes());
                out.put_slice(&seq.to_le_bytes());
                out.put_slice(&acked_below.to_le_bytes());
                put_len_prefixed(out, channel.as_bytes());
                out.put_slice(payload);
            }
            Frame::Fragment {
                msg_id,
                index,
                count,
                channel,
                chunk,
            } => {
                out.put_slice(&msg_id.to_le_bytes());
                out.put_slice(&index.to_le_bytes());
                out.put_slice(&count.to_le_bytes());
                put_len_prefixed(out, channel.as_bytes());
                out.put_slice(chunk);
            }
            Frame::DeliverFragment {
                sub_id,
                offset,
                timestamp,
                origin,
                total,
                at,
                chunk,
            } => {
                out.put_slice(&sub_id.to_le_bytes());
                out.put_slice(&offset.to_le_bytes());
                out.put_slice(&timestamp.to_le_bytes());
                if let Some(origin) = origin {
                    out.put_slice(&origin.to_bytes());
                }
                out.put_slice(&total.to_le_bytes());
                out.put_slice(&at.to_le_bytes());
                out.put_slice(chunk);
            }
            Frame::Ping { nonce, load } => {
                out.put_slice(&nonce.to_le_bytes());
                if load {
                    out.put_slice(&[0; 4]);
                }
            }
            Frame::Pong { nonce, load } => {
                out.put_slice(&nonce.to_le_bytes());
                if let Some(load) = load {
                    out.put_slice(&load.to_le_bytes());
                }
            }
            Frame::AddressToken { token } | Frame::Validate { token } => out.put_slice(&token),
            Frame::Handshake {
                key_id,
                expires,
                message,
            } => {
                out.put_slice(&key_id.to_le_bytes());
                out.put_slice(&expires.to_le_bytes());
                out.put_slice(&message);
            }
            Frame::HandshakeReply { session, message } => {
                out.put_slice(&session.to_le_bytes());
                out.put_slice(&message);
            }
            Frame::Error { code, reason } => {
                out.put_slice(&code.0.to_le_bytes());
                out.put_slice(reason.as_bytes());
            }
            Frame::StatsRequest { cursor, padding } => {
                out.put_slice(&cursor.to_le_bytes());
                out.put_bytes(0, usize::from(padding));
            }
            Frame::Stats {
                cursor,
                next,
                entries,
            } => {
                out.put_slice(&cursor.to_le_bytes());
                out.put_slice(&next.unwrap_or(STATS_LAST_PAGE).to_le_bytes());
                match entries {
                    StatEntries::List(list) => {
                        for (name, value) in list {
                            let name = &name.as_bytes()[..name.len().min(255)];
                            put_len_prefixed(out, name);
                            out.put_slice(&value.to_le_bytes());
                        }
                    }
                    StatEntries::Encoded(raw) => out.put_slice(raw),
                }
            }
        }
        Ok(())
    }
}

/// The bytes of `Frame::Publish { channel, payload }` appended to `out`,
/// without [`Frame::encode`]'s check of the name: for a caller that checked
/// it once and sends many messages with it (the plain publisher). Fails
/// with [`WireError::TooLarge`] for a body over 65,535 bytes, `out`
/// unchanged.
pub(crate) fn encode_publish(
    channel: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    debug_assert!(check_channel_str(channel).is_ok());
    let body = 1 + channel.len() + payload.len();
    if body > MAX_FRAME_BODY {
        return Err(WireError::TooLarge);
    }
    out.reserve(FRAME_HEADER_LEN + body);
    let [lo, hi] = (body as u16).to_le_bytes();
    out.extend_from_slice(&[FrameType::Publish as u8, 0, lo, hi, channel.len() as u8]);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends `bytes` after a one-byte length, the form of channel and counter
/// names. Callers have cut or validated them to at most 255 bytes.
fn put_len_prefixed<B: BufMut>(out: &mut B, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u8::MAX));
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

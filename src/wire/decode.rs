//! The decoder: one frame from the start of a byte slice.
//!
//! It borrows every variable-length field from the input, allocates nothing
//! and never panics: each length is checked by [`Reader`] before it is used,
//! and every value outside its range is a typed [`WireError`].

use super::reader::Reader;
use super::stats::{STATS_LAST_PAGE, StatEntries};
use super::{
    AckKind, DeliveryMode, ErrorCode, FLAG_MORE, FLAG_ORIGIN, FRAME_HEADER_LEN, Frame, FrameType,
    ORIGIN_LEN, Origin, ResumeVector, StartPosition, TOKEN_LEN, WireError,
};

/// The origin after a delivery's timestamp, if its frame is flagged so.
fn origin(r: &mut Reader<'_>, flagged: bool) -> Result<Option<Origin>, WireError> {
    if !flagged {
        return Ok(None);
    }
    let bytes: &[u8; ORIGIN_LEN] = (r.bytes(ORIGIN_LEN)?)
        .try_into()
        .map_err(|_| WireError::Truncated)?;
    Origin::from_bytes(bytes)
        .map(Some)
        .ok_or(WireError::InvalidField("origin"))
}

impl<'a> Frame<'a> {
    /// Decodes the frame at the start of `input`, returning it and the bytes
    /// after it.
    pub fn decode(input: &'a [u8]) -> Result<(Frame<'a>, &'a [u8]), WireError> {
        Frame::decode_after(input, None)
    }

    /// [`Frame::decode`] of a frame that follows one naming channel
    /// `last`, a name already checked: a publish frame naming the same
    /// bytes takes it without checking them again (most datagrams carry
    /// many messages of one channel).
    pub(super) fn decode_after(
        input: &'a [u8],
        last: Option<&'a str>,
    ) -> Result<(Frame<'a>, &'a [u8]), WireError> {
        let Some((head, rest)) = input.split_first_chunk::<FRAME_HEADER_LEN>() else {
            return Err(WireError::Truncated);
        };
        let kind = FrameType::from_u8(head[0]).ok_or(WireError::UnknownFrame(head[0]))?;
        let allowed = match kind {
            FrameType::ReliablePublish => FLAG_MORE,
            FrameType::Subscribe | FrameType::Deliver | FrameType::DeliverFragment => FLAG_ORIGIN,
            _ => 0,
        };
        let flagged = head[1] & FLAG_ORIGIN != 0;
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
                let channel = r.channel_after(last)?;
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
                    3 => StartPosition::Resume { since: offset },
                    _ => return Err(WireError::InvalidField("start position")),
                };
                let channel = r.channel()?;
                let (group, resume) = match start {
                    // A resume's vector follows; it joins no group.
                    StartPosition::Resume { .. } => {
                        let count = usize::from(r.u8()?);
                        let bytes = r.bytes(count * ORIGIN_LEN)?;
                        let vector = ResumeVector::new(bytes)
                            .ok_or(WireError::InvalidField("resume vector"))?;
                        (None, vector)
                    }
                    // A queue group, named as a channel is, may follow.
                    _ => match r.rest_is_empty() {
                        true => (None, ResumeVector::EMPTY),
                        false => (Some(r.channel()?), ResumeVector::EMPTY),
                    },
                };
                r.end()?;
                Frame::Subscribe {
                    sub_id,
                    mode,
                    start,
                    channel,
                    group,
                    origins: flagged,
                    resume,
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
            FrameType::Matched => {
                let f = Frame::Matched {
                    sub_id: r.u32()?,
                    channel_sub_id: r.u32()?,
                    first_offset: r.u64()?,
                    next_offset: r.u64()?,
                    channel: r.channel()?,
                };
                r.end()?;
                f
            }
            FrameType::Deliver => Frame::Deliver {
                sub_id: r.u32()?,
                offset: r.u64()?,
                timestamp: r.u64()?,
                origin: origin(&mut r, flagged)?,
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
                let channel = r.channel_after(last)?;
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
                let origin = origin(&mut r, flagged)?;
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
                    origin,
                    total,
                    at,
                    chunk,
                }
            }
            FrameType::AddressToken | FrameType::Validate => {
                let token: [u8; TOKEN_LEN] =
                    r.rest().try_into().map_err(|_| WireError::BadLength)?;
                if kind == FrameType::Validate {
                    Frame::Validate { token }
                } else {
                    Frame::AddressToken { token }
                }
            }
            FrameType::Handshake => {
                let key_id = r.u32()?;
                let expires = r.u64()?;
                let message = r.rest().try_into().map_err(|_| WireError::BadLength)?;
                Frame::Handshake {
                    key_id,
                    expires,
                    message,
                }
            }
            FrameType::HandshakeReply => {
                let session = r.u32()?;
                let message = r.rest().try_into().map_err(|_| WireError::BadLength)?;
                Frame::HandshakeReply { session, message }
            }
            FrameType::Ping | FrameType::Pong => {
                let nonce = r.u64()?;
                // The load, or the room for it, is the only thing that may
                // follow.
                let load = match r.rest() {
                    [] => None,
                    &[a, b, c, d] => Some(u32::from_le_bytes([a, b, c, d])),
                    _ => return Err(WireError::BadLength),
                };
                if kind == FrameType::Ping {
                    Frame::Ping {
                        nonce,
                        load: load.is_some(),
                    }
                } else {
                    Frame::Pong { nonce, load }
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
                let raw = r.remaining();
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

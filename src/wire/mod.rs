//! Wire protocol v1: datagram header and frames, encoded and decoded as pure
//! functions on byte slices.
//!
//! This module owns the byte layout described in `docs/PROTOCOL.md` and nothing
//! else: it knows no sockets, no clock and no relay state. Every integer is
//! little-endian. The decoder borrows from the input (`Frame<'a>` points into the
//! datagram), never allocates, and never panics on any input: every length is
//! checked before it is used.

mod frame;

pub use frame::{
    AckKind, DeliveryMode, ErrorCode, FLAG_MORE, Frame, FrameType, STATS_FIXED,
    STATS_REQUEST_FIXED, StartPosition, StatEntries, ack_ranges, encode_ack_ranges, stat_entry_len,
    stats_page,
};

/// Bytes a deliver frame adds around its payload (frame header, subscription id,
/// offset, timestamp).
pub const DELIVER_OVERHEAD: usize = FRAME_HEADER_LEN + frame::DELIVER_FIXED;
/// Bytes a deliver-fragment frame adds around its piece.
pub const DELIVER_FRAGMENT_OVERHEAD: usize = FRAME_HEADER_LEN + frame::DELIVER_FRAGMENT_FIXED;

use thiserror::Error;

/// First two bytes of every udprelay datagram: ASCII `UR`.
pub const MAGIC: [u8; 2] = *b"UR";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the datagram header in bytes.
pub const HEADER_LEN: usize = 8;
/// Size of a frame header (type, flags, body length) in bytes.
pub const FRAME_HEADER_LEN: usize = 4;
/// The largest UDP payload over IPv4; no datagram we build is larger.
pub const MAX_DATAGRAM: usize = 65_507;
/// The largest frame body the 16-bit length field can express.
pub const MAX_FRAME_BODY: usize = u16::MAX as usize;
/// Longest channel name in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Messages held in part whose pieces one acknowledgement reports (ACK kind
/// 2, one frame each); a relay keeps as many per subscription.
pub const MAX_PIECES_REPORTED: usize = 8;
/// Header flag: an authentication trailer follows the frames (reserved; v1 peers
/// reject it with [`ErrorCode::UNSUPPORTED`]).
pub const FLAG_AUTH: u8 = 0x01;

/// Why a datagram or frame could not be decoded or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// The datagram does not start with the udprelay magic: not our protocol.
    #[error("not a udprelay datagram (bad magic)")]
    BadMagic,
    /// The datagram is shorter than the fixed header.
    #[error("datagram shorter than its header")]
    ShortHeader,
    /// The datagram speaks a protocol version this build does not.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Header flags or key id ask for something v1 does not implement.
    #[error("unsupported header flags {0:#04x}")]
    UnsupportedFlags(u8),
    /// A frame header or body runs past the end of the datagram.
    #[error("frame truncated")]
    Truncated,
    /// A frame type this build does not know.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrame(u8),
    /// A frame's flags byte has bits set that its type does not define.
    #[error("frame type {0:#04x} has undefined flags {1:#04x}")]
    BadFrameFlags(u8, u8),
    /// A field holds a value outside its defined range.
    #[error("invalid {0}")]
    InvalidField(&'static str),
    /// A frame body is longer or shorter than its fields say.
    #[error("frame body length does not match its fields")]
    BadLength,
    /// A channel name is empty, too long, not UTF-8 or holds control characters.
    #[error("invalid channel name")]
    BadChannel,
    /// The encoded frame would not fit in the space left.
    #[error("frame does not fit in the datagram")]
    TooLarge,
}

/// The fixed 8-byte datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Header flags; v1 defines none that a peer may set.
    pub flags: u8,
    /// Authentication key id; 0 means none (the only value v1 accepts).
    pub key_id: u32,
}

impl Header {
    /// Encodes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.flags);
        out.extend_from_slice(&self.key_id.to_le_bytes());
    }

    /// Parses the header of `datagram`, returning it and the frame bytes after it.
    pub fn decode(datagram: &[u8]) -> Result<(Header, &[u8]), WireError> {
        if datagram.len() < 2 || datagram[..2] != MAGIC {
            return Err(WireError::BadMagic);
        }
        let Some((head, rest)) = datagram.split_first_chunk::<HEADER_LEN>() else {
            return Err(WireError::ShortHeader);
        };
        if head[2] != VERSION {
            return Err(WireError::UnsupportedVersion(head[2]));
        }
        let flags = head[3];
        let key_id = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if flags != 0 || key_id != 0 {
            return Err(WireError::UnsupportedFlags(flags));
        }
        Ok((Header { flags, key_id }, rest))
    }
}

/// Iterator over the frames of one datagram. Yields `Err` once and then stops
/// when the rest of the datagram cannot be decoded.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Frames in `body`, the bytes after the datagram header.
    pub fn new(body: &'a [u8]) -> Self {
        Frames { rest: body }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = Frame::decode(self.rest);
        match result {
            Ok((frame, rest)) => {
                self.rest = rest;
                Some(Ok(frame))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Parses a datagram: checks the header and returns an iterator over its frames.
pub fn decode_datagram(datagram: &[u8]) -> Result<Frames<'_>, WireError> {
    let (_, body) = Header::decode(datagram)?;
    Ok(Frames::new(body))
}

/// Checks a channel name: UTF-8, 1 to 255 bytes, no control characters.
pub fn validate_channel(name: &[u8]) -> Result<&str, WireError> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(WireError::BadChannel);
    }
    let s = std::str::from_utf8(name).map_err(|_| WireError::BadChannel)?;
    if s.chars().any(char::is_control) {
        return Err(WireError::BadChannel);
    }
    Ok(s)
}

/// Builds one datagram of frames, never larger than its limit.
///
/// Frames are appended with [`DatagramBuilder::push`] until one does not fit;
/// the caller then sends [`DatagramBuilder::finish`] and starts another.
#[derive(Debug, Clone)]
pub struct DatagramBuilder {
    buf: Vec<u8>,
    limit: usize,
}

impl DatagramBuilder {
    /// An empty datagram that will hold at most `limit` bytes (clamped to
    /// [`HEADER_LEN`]..=[`MAX_DATAGRAM`]).
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(HEADER_LEN + FRAME_HEADER_LEN, MAX_DATAGRAM);
        let mut buf = Vec::with_capacity(limit.min(2048));
        Header::default().encode(&mut buf);
        DatagramBuilder { buf, limit }
    }

    /// True when no frame has been pushed.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// Bytes used so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes still free for frames (frame headers included).
    pub fn remaining(&self) -> usize {
        self.limit - self.buf.len()
    }

    /// Appends `frame`, or returns [`WireError::TooLarge`] leaving the datagram
    /// unchanged when it does not fit.
    pub fn push(&mut self, frame: &Frame<'_>) -> Result<(), WireError> {
        let len = frame.encoded_len();
        if len > self.remaining() {
            return Err(WireError::TooLarge);
        }
        frame.encode(&mut self.buf)
    }

    /// Takes the finished datagram and leaves this builder empty, ready for the
    /// next one.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut next = Vec::with_capacity(self.limit.min(2048));
        Header::default().encode(&mut next);
        std::mem::replace(&mut self.buf, next)
    }
}

/// Encodes `frames` as one datagram; fails if they exceed [`MAX_DATAGRAM`].
pub fn encode_datagram(frames: &[Frame<'_>]) -> Result<Vec<u8>, WireError> {
    let mut b = DatagramBuilder::new(MAX_DATAGRAM);
    for f in frames {
        b.push(f)?;
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests;

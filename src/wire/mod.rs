//! Wire protocol v1: datagram header and frames, encoded and decoded as pure
//! functions on byte slices.
//!
//! This module owns the byte layout described in `docs/PROTOCOL.md` and nothing
//! else: it knows no sockets, no clock and no relay state. Every integer is
//! little-endian. The decoder borrows from the input (`Frame<'a>` points into the
//! datagram), never allocates, and never panics on any input: every length is
//! checked before it is used.
//!
//! The files, one responsibility each (this one holds the constants, the error
//! type and the channel name rule they all share):
//!
//! - `frame.rs`: the frame types and what each field means.
//! - `encode.rs`: frame body sizes and the encoder.
//! - `decode.rs`: the decoder, over `reader.rs`'s bounds-checked cursor.
//! - `datagram.rs`: the datagram header, the frame iterator and the
//!   datagram builder.
//! - `stats.rs`: STATS entries and paging.
//! - `ack.rs`: the ranges an ACK frame carries.

mod ack;
mod datagram;
mod decode;
mod encode;
mod frame;
mod reader;
mod stats;

pub use ack::{ack_ranges, encode_ack_ranges};
pub use datagram::{
    DatagramBuilder, Frames, Header, decode_datagram, encode_datagram, frame_bodies,
};
pub use frame::{
    AckKind, DeliveryMode, ErrorCode, FLAG_MORE, FLAG_ORIGIN, Frame, FrameType, MAX_RESUME_SOURCES,
    ORIGIN_LEN, Origin, RELAY_SUB_IDS, ResumeVector, Source, StartPosition,
};
pub use stats::{STATS_FIXED, STATS_REQUEST_FIXED, StatEntries, stat_entry_len, stats_page};

use thiserror::Error;

/// Bytes a deliver frame adds around its payload (frame header, subscription id,
/// offset, timestamp).
pub const DELIVER_OVERHEAD: usize = FRAME_HEADER_LEN + frame::DELIVER_FIXED;
/// Bytes a deliver-fragment frame adds around its piece.
pub const DELIVER_FRAGMENT_OVERHEAD: usize = FRAME_HEADER_LEN + frame::DELIVER_FRAGMENT_FIXED;

/// First two bytes of every udprelay datagram: ASCII `UR`.
pub const MAGIC: [u8; 2] = *b"UR";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the datagram header in bytes.
pub const HEADER_LEN: usize = 8;
/// Size of a frame header (type, flags, body length) in bytes.
pub const FRAME_HEADER_LEN: usize = 4;
/// Bytes of an address token (ADDRESS_TOKEN and VALIDATE frame bodies).
pub const TOKEN_LEN: usize = 20;
/// Bytes a VALIDATE frame adds to a datagram.
pub const VALIDATE_LEN: usize = FRAME_HEADER_LEN + TOKEN_LEN;
/// The largest UDP payload over IPv4; no datagram we build is larger.
pub const MAX_DATAGRAM: usize = 65_507;
/// The largest frame body the 16-bit length field can express.
pub const MAX_FRAME_BODY: usize = u16::MAX as usize;
/// Longest channel name in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Messages held in part whose pieces one acknowledgement reports (ACK kind
/// 2, one frame each); a relay keeps as many per subscription.
pub const MAX_PIECES_REPORTED: usize = 8;
/// Header flag: the datagram is sealed (see [`SEALED_HEADER_LEN`]): the key
/// id field names a session, a nonce follows the header, and the frames
/// after it are encrypted, with an AEAD tag at the end.
pub const FLAG_AUTH: u8 = 0x01;
/// Bytes of a Noise NNpsk0 handshake message (an ephemeral public key and
/// a tag): the body of HANDSHAKE and HANDSHAKE_REPLY after their ids.
pub const NOISE_MESSAGE_LEN: usize = 48;
/// Bytes before the ciphertext in a sealed datagram: the header and the
/// 8-byte nonce.
pub const SEALED_HEADER_LEN: usize = HEADER_LEN + 8;
/// Bytes of the AEAD tag that ends a sealed datagram.
pub const TAG_LEN: usize = 16;
/// Bytes sealing adds to a datagram: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = SEALED_HEADER_LEN - HEADER_LEN + TAG_LEN;

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

/// Checks a channel name: UTF-8, 1 to 255 bytes, no control characters.
pub fn validate_channel(name: &[u8]) -> Result<&str, WireError> {
    let s = std::str::from_utf8(name).map_err(|_| WireError::BadChannel)?;
    check_channel_str(s)?;
    Ok(s)
}

/// [`validate_channel`] for a name already known to be UTF-8 (a `&str`):
/// 1 to 255 bytes, no control characters.
pub(crate) fn check_channel_str(name: &str) -> Result<(), WireError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_CHANNEL_LEN {
        return Err(WireError::BadChannel);
    }
    // Most names are printable ASCII: one branch-free pass over the bytes
    // (every publish frame names its channel), chars only otherwise.
    let printable = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x20) < 0x5f));
    if printable || !name.chars().any(char::is_control) {
        return Ok(());
    }
    Err(WireError::BadChannel)
}

#[cfg(test)]
mod tests;

//! Datagrams: the fixed header, the frames after it, and a builder that packs
//! frames into datagrams no larger than a limit.
//!
//! Frame bytes themselves are `encode.rs`'s and `decode.rs`'s; this file only
//! puts the header in front and walks or packs the frames behind it.

use bytes::BufMut;

use super::{FRAME_HEADER_LEN, Frame, HEADER_LEN, MAGIC, MAX_DATAGRAM, VERSION, WireError};

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
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.flags);
        out.put_slice(&self.key_id.to_le_bytes());
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
    /// The channel the last publish frame named, checked.
    last_channel: Option<&'a str>,
}

impl<'a> Frames<'a> {
    /// Frames in `body`, the bytes after the datagram header.
    pub fn new(body: &'a [u8]) -> Self {
        Frames {
            rest: body,
            last_channel: None,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = Frame::decode_after(self.rest, self.last_channel);
        match result {
            Ok((frame, rest)) => {
                self.rest = rest;
                if let Frame::Publish { channel, .. } | Frame::ReliablePublish { channel, .. } =
                    frame
                {
                    self.last_channel = Some(channel);
                }
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

    /// Appends a PUBLISH frame of `payload` to `channel`, a name the caller
    /// has checked (a [`crate::client::Publisher`] checks it once, not per
    /// message); the same bytes as [`DatagramBuilder::push`] of a
    /// [`Frame::Publish`], and the same [`WireError::TooLarge`] when it does
    /// not fit.
    pub(crate) fn push_publish(&mut self, channel: &str, payload: &[u8]) -> Result<(), WireError> {
        if FRAME_HEADER_LEN + 1 + channel.len() + payload.len() > self.remaining() {
            return Err(WireError::TooLarge);
        }
        super::encode::encode_publish(channel, payload, &mut self.buf)
    }

    /// Takes the finished datagram and leaves this builder empty, ready for the
    /// next one.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut next = Vec::with_capacity(self.limit.min(2048));
        Header::default().encode(&mut next);
        std::mem::replace(&mut self.buf, next)
    }
}

/// The type code and body of each frame of a datagram, read from the frame
/// headers alone: no body is decoded, so it costs a few instructions a frame
/// (for a client that looks for one frame type among many deliveries). Ends
/// at the first frame that runs past the datagram; nothing for a datagram
/// without a valid header.
pub fn frame_bodies(datagram: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = match Header::decode(datagram) {
        Ok((_, rest)) => rest,
        Err(_) => &[][..],
    };
    std::iter::from_fn(move || {
        let (head, after) = rest.split_first_chunk::<FRAME_HEADER_LEN>()?;
        let len = usize::from(u16::from_le_bytes([head[2], head[3]]));
        if after.len() < len {
            rest = &[];
            return None;
        }
        let (body, next) = after.split_at(len);
        rest = next;
        Some((head[0], body))
    })
}

/// Encodes `frames` as one datagram; fails if they exceed [`MAX_DATAGRAM`].
pub fn encode_datagram(frames: &[Frame<'_>]) -> Result<Vec<u8>, WireError> {
    let mut b = DatagramBuilder::new(MAX_DATAGRAM);
    for f in frames {
        b.push(f)?;
    }
    Ok(b.finish())
}

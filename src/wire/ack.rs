//! Acknowledgement ranges: the `[start, end)` pairs an ACK frame carries
//! after its fixed fields, as raw little-endian u64 pairs.

use super::reader::Reader;

/// Encodes acknowledgement ranges `[start, end)` into the raw form carried by
/// [`Frame::Ack`](super::Frame::Ack).
pub fn encode_ack_ranges(ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ranges.len() * 16);
    for (start, end) in ranges {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
    out
}

/// Iterates over the raw ranges of a decoded [`Frame::Ack`](super::Frame::Ack).
pub fn ack_ranges(raw: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    raw.chunks_exact(16).map(|c| {
        let mut r = Reader::new(c);
        // chunks_exact guarantees 16 bytes, so both reads succeed.
        (r.u64().unwrap_or(0), r.u64().unwrap_or(0))
    })
}

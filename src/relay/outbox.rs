//! Outgoing datagrams: frames for one destination are packed together until
//! the datagram is full or the driver collects them.
//!
//! Finished datagrams are copied into one shared arena and handed out as
//! [`Bytes`] views of it (`BytesMut::split().freeze()`): no allocation per
//! datagram, and one message sent to many raw-out addresses is one buffer
//! shared by all its datagrams. The driver gets each destination's datagrams
//! one after another, so equal-size ones form a run it can send as one GSO
//! buffer, also when many destinations were filled side by side.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;

use bytes::{Bytes, BytesMut};
use foldhash::{HashMap, HashMapExt};

use crate::wire::{
    DELIVER_FRAGMENT_OVERHEAD, DELIVER_OVERHEAD, FRAME_HEADER_LEN, Frame, HEADER_LEN, Header,
    MAX_DATAGRAM,
};

/// Arena block size: a new block is taken when the last one is full, and
/// freed when every datagram in it has been sent.
const ARENA_BLOCK: usize = 64 << 10;
/// Most closed datagram buffers kept for reuse: enough for the destinations
/// of a busy round, without keeping one per subscriber of a huge fan-out.
const SPARE_LIMIT: usize = 64;
/// Largest closed datagram buffer kept for reuse (or the packing limit, if
/// larger); one grown by a message that went alone is freed.
const SPARE_CAPACITY: usize = 2048;

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram's bytes.
    pub payload: Payload,
}

/// A datagram's bytes: a cheap-to-clone view that may share its buffer with
/// other datagrams. Derefs to `[u8]`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Payload(Bytes);

impl Payload {
    /// The bytes as a [`Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload(bytes)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload(bytes.into())
    }
}

impl PartialEq<[u8]> for Payload {
    fn eq(&self, other: &[u8]) -> bool {
        *self.0 == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Payload {
    fn eq(&self, other: &[u8; N]) -> bool {
        *self.0 == other[..]
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Payload {
    fn eq(&self, other: &&[u8; N]) -> bool {
        *self.0 == other[..]
    }
}

impl PartialEq<Vec<u8>> for Payload {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self.0 == other[..]
    }
}

/// A datagram being filled with frames, header already written.
#[derive(Debug)]
struct OpenDatagram {
    buf: Vec<u8>,
}

impl OpenDatagram {
    fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// Appends `frame` if the datagram stays within `limit`; leaves it
    /// unchanged if not.
    fn push(&mut self, frame: &Frame<'_>, limit: usize) -> bool {
        frame.encoded_len() <= limit.saturating_sub(self.buf.len())
            && frame.encode(&mut self.buf).is_ok()
    }
}

/// What is queued for one destination: finished datagrams in send order,
/// then the one still open for frames.
#[derive(Debug)]
struct Pending {
    done: Vec<Bytes>,
    open: Option<OpenDatagram>,
}

/// Datagrams being filled, one per destination, and datagrams ready to go.
#[derive(Debug)]
pub(super) struct Outbox {
    /// Packing limit for one datagram (clamped as the wire allows).
    datagram_size: usize,
    /// What each destination has queued since the driver last collected.
    pending: HashMap<SocketAddr, Pending>,
    /// Destinations of `pending` in the order they were first queued to, so
    /// flushing is deterministic.
    pending_order: Vec<SocketAddr>,
    /// Collected datagrams, each destination's together, in send order.
    ready: VecDeque<Transmit>,
    /// Where finished datagrams are copied; each is split off frozen.
    arena: BytesMut,
    /// The last raw datagram queued: the same message to the next raw-out
    /// address shares its bytes.
    last_raw: Bytes,
    /// Buffers of datagrams closed when the driver collected, for reuse.
    spare: Vec<Vec<u8>>,
}

impl Outbox {
    pub(super) fn new(datagram_size: usize) -> Self {
        Outbox {
            datagram_size: datagram_size.clamp(HEADER_LEN + FRAME_HEADER_LEN, MAX_DATAGRAM),
            pending: HashMap::new(),
            pending_order: Vec::new(),
            ready: VecDeque::new(),
            arena: BytesMut::new(),
            last_raw: Bytes::new(),
            spare: Vec::new(),
        }
    }

    /// A frozen copy of `bytes` in the arena.
    fn freeze(arena: &mut BytesMut, bytes: &[u8]) -> Bytes {
        if arena.capacity() < bytes.len() {
            // The old block lives on in the datagrams cut from it.
            *arena = BytesMut::with_capacity(ARENA_BLOCK.max(bytes.len()));
        }
        arena.extend_from_slice(bytes);
        arena.split().freeze()
    }

    /// Queues `frame` for `to`; false if it cannot be encoded at all (larger
    /// than the largest datagram).
    pub(super) fn push_frame(&mut self, to: SocketAddr, frame: &Frame<'_>) -> bool {
        let limit = self.datagram_size;
        let spare = &mut self.spare;
        let arena = &mut self.arena;
        let pending = pending_for(&mut self.pending, &mut self.pending_order, to);
        let open = pending.open.get_or_insert_with(|| {
            let mut buf = spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(limit.min(SPARE_CAPACITY)));
            Header::default().encode(&mut buf);
            OpenDatagram { buf }
        });
        if open.push(frame, limit) {
            return true;
        }
        if !open.is_empty() {
            pending.done.push(Self::freeze(arena, &open.buf));
            open.buf.truncate(HEADER_LEN);
            if open.push(frame, limit) {
                return true;
            }
        }
        // Larger than the packing limit: it goes alone, as large as UDP
        // allows, in the open datagram's buffer (empty again after).
        if !open.push(frame, MAX_DATAGRAM) {
            return false;
        }
        pending.done.push(Self::freeze(arena, &open.buf));
        open.buf.truncate(HEADER_LEN);
        true
    }

    /// Queues a stored message for subscription `sub_id` of `to`: one
    /// DELIVER frame, or DELIVER_FRAGMENT pieces that each fit the packing
    /// limit when the message does not fit in one datagram. Returns the bytes
    /// queued.
    pub(super) fn push_delivery(
        &mut self,
        to: SocketAddr,
        sub_id: u32,
        offset: u64,
        timestamp: u64,
        payload: &[u8],
    ) -> usize {
        self.push_delivery_except(to, sub_id, offset, timestamp, payload, &[])
            .0
    }

    /// As [`Outbox::push_delivery`], but a message that goes in pieces
    /// leaves out each piece inside the byte ranges `have` (what the
    /// subscriber said it holds). Returns the bytes queued and the pieces
    /// left out.
    pub(super) fn push_delivery_except(
        &mut self,
        to: SocketAddr,
        sub_id: u32,
        offset: u64,
        timestamp: u64,
        payload: &[u8],
        have: &[(u64, u64)],
    ) -> (usize, u64) {
        if payload.len() <= MAX_DATAGRAM - HEADER_LEN - DELIVER_OVERHEAD {
            let frame = Frame::Deliver {
                sub_id,
                offset,
                timestamp,
                payload,
            };
            let queued = if self.push_frame(to, &frame) {
                frame.encoded_len()
            } else {
                0
            };
            return (queued, 0);
        }
        let piece = (self.datagram_size - HEADER_LEN - DELIVER_FRAGMENT_OVERHEAD).max(256);
        let mut queued = 0;
        let mut left_out = 0;
        for (i, chunk) in payload.chunks(piece).enumerate() {
            let (start, end) = ((i * piece) as u64, (i * piece + chunk.len()) as u64);
            if have.iter().any(|&(s, e)| s <= start && end <= e) {
                left_out += 1;
                continue;
            }
            let frame = Frame::DeliverFragment {
                sub_id,
                offset,
                timestamp,
                total: payload.len() as u32,
                at: (i * piece) as u32,
                chunk,
            };
            if self.push_frame(to, &frame) {
                queued += frame.encoded_len();
            }
        }
        (queued, left_out)
    }

    /// Queues a stored message for `to` only if it fits in the datagram
    /// already open for `to`, so it adds bytes but never a datagram. Returns
    /// whether it was queued.
    pub(super) fn push_delivery_if_room(
        &mut self,
        to: SocketAddr,
        sub_id: u32,
        offset: u64,
        timestamp: u64,
        payload: &[u8],
    ) -> bool {
        let frame = Frame::Deliver {
            sub_id,
            offset,
            timestamp,
            payload,
        };
        // push() leaves the datagram as it was when the frame does not fit.
        let limit = self.datagram_size;
        match self.pending.get_mut(&to).and_then(|p| p.open.as_mut()) {
            Some(open) if !open.is_empty() => open.push(&frame, limit),
            _ => false,
        }
    }

    /// Queues a plain datagram (raw egress) for `to`. The same message
    /// queued for several addresses in a row is one shared buffer.
    pub(super) fn push_raw(&mut self, to: SocketAddr, payload: &[u8]) {
        if *self.last_raw != *payload || self.last_raw.is_empty() {
            self.last_raw = Self::freeze(&mut self.arena, payload);
        }
        pending_for(&mut self.pending, &mut self.pending_order, to)
            .done
            .push(self.last_raw.clone());
    }

    /// The next datagram to send. When the collected ones run out, every
    /// destination's queue is collected, open datagrams closed.
    pub(super) fn pop(&mut self) -> Option<Transmit> {
        if self.ready.is_empty() {
            for to in self.pending_order.drain(..) {
                let Some(pending) = self.pending.remove(&to) else {
                    continue;
                };
                let payloads = pending.done.into_iter().map(Payload);
                self.ready.extend(payloads.map(|payload| Transmit {
                    destination: to,
                    payload,
                }));
                if let Some(mut open) = pending.open {
                    if !open.is_empty() {
                        self.ready.push_back(Transmit {
                            destination: to,
                            payload: Payload(Self::freeze(&mut self.arena, &open.buf)),
                        });
                    }
                    let keep = self.datagram_size.max(SPARE_CAPACITY);
                    if self.spare.len() < SPARE_LIMIT && open.buf.capacity() <= keep {
                        open.buf.clear();
                        self.spare.push(open.buf);
                    }
                }
            }
            // A message a raw-out address got before this collection is
            // not shared with one queued after it.
            self.last_raw = Bytes::new();
        }
        self.ready.pop_front()
    }
}

/// What `to` has queued, created empty (and put in `order`) on first use.
fn pending_for<'a>(
    pending: &'a mut HashMap<SocketAddr, Pending>,
    order: &mut Vec<SocketAddr>,
    to: SocketAddr,
) -> &'a mut Pending {
    pending.entry(to).or_insert_with(|| {
        order.push(to);
        Pending {
            done: Vec::new(),
            open: None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn drain(outbox: &mut Outbox) -> Vec<Transmit> {
        std::iter::from_fn(|| outbox.pop()).collect()
    }

    /// The DELIVER offsets in a datagram.
    fn offsets(t: &Transmit) -> Vec<u64> {
        wire::decode_datagram(&t.payload)
            .unwrap()
            .map(|f| match f.unwrap() {
                Frame::Deliver { offset, .. } => offset,
                other => panic!("not a delivery: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn datagrams_filled_side_by_side_leave_each_destination_together() {
        let mut outbox = Outbox::new(200);
        let (a, b) = (addr(1), addr(2));
        // Fan-out: each message to both, so their datagrams fill in step.
        for offset in 0..20 {
            for to in [a, b] {
                outbox.push_delivery(to, 1, offset, 0, &[7; 40]);
            }
        }
        let sent = drain(&mut outbox);
        let destinations: Vec<SocketAddr> = sent.iter().map(|t| t.destination).collect();
        let per_destination = sent.len() / 2;
        assert!(per_destination > 2, "several datagrams each: {sent:?}");
        let mut want = vec![a; per_destination];
        want.extend(vec![b; per_destination]);
        assert_eq!(destinations, want, "a's datagrams, then b's");
        for to in [a, b] {
            let got: Vec<u64> = sent
                .iter()
                .filter(|t| t.destination == to)
                .flat_map(offsets)
                .collect();
            assert_eq!(got, (0..20).collect::<Vec<_>>(), "in order for {to}");
        }
        // All but the last of a run are the same size: one GSO buffer.
        let sizes: Vec<usize> = sent[..per_destination - 1]
            .iter()
            .map(|t| t.payload.len())
            .collect();
        assert!(sizes.iter().all(|&s| s == sizes[0]), "{sizes:?}");
    }

    #[test]
    fn one_raw_message_to_many_addresses_is_one_shared_buffer() {
        let mut outbox = Outbox::new(1400);
        for port in 1..=3 {
            outbox.push_raw(addr(port), b"line one");
        }
        outbox.push_raw(addr(1), b"line two");
        let sent = drain(&mut outbox);
        let to_1: Vec<&[u8]> = sent
            .iter()
            .filter(|t| t.destination == addr(1))
            .map(|t| &t.payload[..])
            .collect();
        assert_eq!(to_1, [&b"line one"[..], b"line two"]);
        let first: Vec<&Transmit> = sent.iter().filter(|t| t.payload == b"line one").collect();
        assert_eq!(first.len(), 3);
        assert!(
            first
                .iter()
                .all(|t| t.payload.as_ptr() == first[0].payload.as_ptr()),
            "the three datagrams share one copy of the message"
        );
    }

    #[test]
    fn each_destination_keeps_its_order_across_raw_and_frames() {
        let mut outbox = Outbox::new(100);
        let to = addr(1);
        outbox.push_delivery(to, 1, 0, 0, &[1; 60]);
        // Does not fit beside the first: closes it.
        outbox.push_delivery(to, 1, 1, 0, &[2; 60]);
        outbox.push_raw(to, b"raw");
        outbox.push_raw(addr(2), b"raw");
        let sent = drain(&mut outbox);
        let to_1: Vec<&Transmit> = sent.iter().filter(|t| t.destination == to).collect();
        assert_eq!(to_1.len(), 3);
        assert_eq!(offsets(to_1[0]), [0]);
        assert_eq!(to_1[1].payload, b"raw");
        assert_eq!(offsets(to_1[2]), [1], "the open datagram closes last");
        assert!(drain(&mut outbox).is_empty());
    }

    #[test]
    fn a_frame_larger_than_the_packing_limit_goes_alone_between_packed_ones() {
        let mut outbox = Outbox::new(200);
        let to = addr(1);
        outbox.push_delivery(to, 1, 0, 0, b"small");
        outbox.push_frame(
            to,
            &Frame::Deliver {
                sub_id: 1,
                offset: 1,
                timestamp: 0,
                payload: &[b'L'; 1000],
            },
        );
        outbox.push_delivery(to, 1, 2, 0, b"small");
        let sent = drain(&mut outbox);
        let got: Vec<Vec<u64>> = sent.iter().map(offsets).collect();
        assert_eq!(got, [vec![0], vec![1], vec![2]]);
        assert!(sent[1].payload.len() > 1000);
    }
}

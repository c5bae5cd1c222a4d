//! Outgoing datagrams: frames for one destination are packed together until
//! the datagram is full or the driver collects them.
//!
//! Each datagram is encoded straight into a region of one shared arena and
//! handed out as a [`Bytes`] view of it (`BytesMut::freeze`): no copy and no
//! allocation per datagram, and one message sent to many raw-out addresses
//! is one buffer shared by all its datagrams. When a block runs out and
//! every datagram cut from it has been sent, the block is reused from its
//! start, so the bytes written are ones the cache still holds. The driver
//! gets each destination's datagrams one after another, so equal-size ones
//! form a run it can send as one GSO buffer, also when many destinations
//! were filled side by side.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;

use bytes::{Bytes, BytesMut};
use foldhash::HashMap;

use crate::wire::{
    self, DELIVER_FRAGMENT_OVERHEAD, DELIVER_OVERHEAD, FRAME_HEADER_LEN, Frame, HEADER_LEN, Header,
    MAX_DATAGRAM,
};

/// What a delivery's frame says before its payload: sub_id, offset (or a
/// queue group member's number), timestamp, and origin (for a subscription
/// that asked for origins).
pub(super) type DeliveryHead = (u32, u64, u64, Option<wire::Origin>);

/// Arena block size. A block is replaced when it is full and a datagram cut
/// from it is still unsent, and reused from its start when none is. Small on
/// purpose: measured with cachegrind on the relay core loop, a reused 4 KiB
/// block stays in the L1 cache (1.5 write misses a message, as with one
/// reused `Vec`), while 8 KiB and 16 KiB ones are evicted between uses by
/// the log's writes (2.6 and 2.8).
const ARENA_BLOCK: usize = 4 << 10;

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

/// A datagram being filled with frames, header already written, in a region
/// of the arena with room for a full datagram.
#[derive(Debug)]
struct OpenDatagram {
    buf: BytesMut,
}

impl OpenDatagram {
    fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// Appends `frame` if the datagram stays within `limit`; leaves it
    /// unchanged if not. (Beyond the region's room, the buffer grows into a
    /// copy of its own.)
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
    /// What each destination has queued since the driver last collected,
    /// in the order each was first queued to, so flushing is deterministic.
    pending: Pendings,
    /// Collected datagrams, each destination's together, in send order.
    ready: VecDeque<Transmit>,
    /// The unused rest of the current block; datagram regions are split off
    /// its front.
    arena: BytesMut,
    /// The last raw datagram queued: the same message to the next raw-out
    /// address shares its bytes.
    last_raw: Bytes,
    /// One DELIVER frame encoded for fan-out ([`Outbox::encode_delivery`]),
    /// copied to each subscriber with its id written in.
    encoded: Vec<u8>,
}

/// Where a DELIVER frame's subscription id sits in its encoding: after the
/// frame header.
const SUB_ID_AT: std::ops::Range<usize> = FRAME_HEADER_LEN..FRAME_HEADER_LEN + 4;

impl Outbox {
    /// Packs up to `datagram_size` from the next datagram on.
    pub(super) fn set_datagram_size(&mut self, datagram_size: usize) {
        self.datagram_size = datagram_size.clamp(HEADER_LEN + FRAME_HEADER_LEN, MAX_DATAGRAM);
    }

    pub(super) fn new(datagram_size: usize) -> Self {
        Outbox {
            datagram_size: datagram_size.clamp(HEADER_LEN + FRAME_HEADER_LEN, MAX_DATAGRAM),
            pending: Pendings::default(),
            ready: VecDeque::new(),
            arena: BytesMut::new(),
            last_raw: Bytes::new(),
            encoded: Vec::new(),
        }
    }

    /// An empty buffer with room for `len` bytes, split off the arena.
    fn region(arena: &mut BytesMut, len: usize) -> BytesMut {
        if arena.capacity() < len && !arena.try_reclaim(ARENA_BLOCK.max(len)) {
            // The old block lives on in the datagrams cut from it.
            *arena = BytesMut::with_capacity(ARENA_BLOCK.max(len));
        }
        let rest = arena.split_off(len);
        std::mem::replace(arena, rest)
    }

    /// A new open datagram, header written.
    fn open(arena: &mut BytesMut, limit: usize) -> OpenDatagram {
        let mut buf = Self::region(arena, limit);
        Header::default().encode(&mut buf);
        OpenDatagram { buf }
    }

    /// Queues `frame` for `to`; false if it cannot be encoded at all (larger
    /// than the largest datagram).
    pub(super) fn push_frame(&mut self, to: SocketAddr, frame: &Frame<'_>) -> bool {
        let (pending, arena, limit) = (&mut self.pending, &mut self.arena, self.datagram_size);
        Self::push_written(pending, arena, limit, to, frame.encoded_len(), |buf| {
            frame.encode(buf).is_ok()
        })
    }

    /// Queues for `to` a frame of `len` bytes that `write` appends: in the
    /// datagram open for `to` if it fits, else in a new one, else (larger
    /// than the packing limit) alone, as large as UDP allows. False if it
    /// cannot go at all.
    fn push_written(
        pending: &mut Pendings,
        arena: &mut BytesMut,
        limit: usize,
        to: SocketAddr,
        len: usize,
        write: impl FnOnce(&mut BytesMut) -> bool,
    ) -> bool {
        let pending = pending.entry(to);
        let open = pending.open.get_or_insert_with(|| Self::open(arena, limit));
        if len <= limit.saturating_sub(open.buf.len()) {
            return write(&mut open.buf);
        }
        if !open.is_empty() {
            let full = std::mem::replace(open, Self::open(arena, limit));
            pending.done.push(full.buf.freeze());
            if len <= limit.saturating_sub(open.buf.len()) {
                return write(&mut open.buf);
            }
        }
        if len > MAX_DATAGRAM - HEADER_LEN {
            return false;
        }
        // Larger than the packing limit: it goes alone, in a region of its
        // own.
        let mut alone = Self::region(arena, HEADER_LEN + len);
        Header::default().encode(&mut alone);
        if !write(&mut alone) {
            return false;
        }
        pending.done.push(alone.freeze());
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
        self.push_delivery_except(to, (sub_id, offset, timestamp, None), payload, &[])
            .0
    }

    /// As [`Outbox::push_delivery`], with the message's origin when the
    /// subscription asked for origins (`head` is sub_id, offset,
    /// timestamp, origin), and a message that goes in pieces leaves out
    /// each piece inside the byte ranges `have` (what the subscriber said
    /// it holds). Returns the bytes queued and the pieces left out.
    pub(super) fn push_delivery_except(
        &mut self,
        to: SocketAddr,
        head: DeliveryHead,
        payload: &[u8],
        have: &[(u64, u64)],
    ) -> (usize, u64) {
        let (sub_id, offset, timestamp, origin) = head;
        let origin_len = origin.map_or(0, |_| wire::ORIGIN_LEN);
        if payload.len() <= MAX_DATAGRAM - HEADER_LEN - DELIVER_OVERHEAD - origin_len {
            let frame = Frame::Deliver {
                sub_id,
                offset,
                timestamp,
                origin,
                payload,
            };
            let queued = if self.push_frame(to, &frame) {
                frame.encoded_len()
            } else {
                0
            };
            return (queued, 0);
        }
        let piece =
            (self.datagram_size - HEADER_LEN - DELIVER_FRAGMENT_OVERHEAD - origin_len).max(256);
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
                origin,
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

    /// Encodes the DELIVER frame of a stored message once, for
    /// [`Outbox::push_encoded_delivery`] to every live subscriber: false if
    /// it does not fit in one datagram (then each goes by
    /// [`Outbox::push_delivery`], in pieces).
    pub(super) fn encode_delivery(&mut self, offset: u64, timestamp: u64, payload: &[u8]) -> bool {
        if payload.len() > MAX_DATAGRAM - HEADER_LEN - DELIVER_OVERHEAD {
            return false;
        }
        let frame = Frame::Deliver {
            sub_id: 0,
            offset,
            timestamp,
            origin: None,
            payload,
        };
        self.encoded.clear();
        frame.encode(&mut self.encoded).is_ok()
    }

    /// Queues the frame [`Outbox::encode_delivery`] made for subscription
    /// `sub_id` of `to`, as [`Outbox::push_delivery`] would have: the same
    /// bytes with the id written in, packed the same way, without encoding
    /// it again. Returns the bytes queued.
    pub(super) fn push_encoded_delivery(&mut self, to: SocketAddr, sub_id: u32) -> usize {
        let (encoded, len) = (&self.encoded, self.encoded.len());
        let (pending, arena, limit) = (&mut self.pending, &mut self.arena, self.datagram_size);
        let queued = len > 0
            && Self::push_written(pending, arena, limit, to, len, |buf| {
                let at = buf.len();
                buf.extend_from_slice(encoded);
                buf[at + SUB_ID_AT.start..at + SUB_ID_AT.end]
                    .copy_from_slice(&sub_id.to_le_bytes());
                true
            });
        if queued { len } else { 0 }
    }

    /// Queues a stored message for `to` only if it fits in the datagram
    /// already open for `to`, so it adds bytes but never a datagram. Returns
    /// whether it was queued.
    pub(super) fn push_delivery_if_room(
        &mut self,
        to: SocketAddr,
        head: DeliveryHead,
        payload: &[u8],
    ) -> bool {
        let (sub_id, offset, timestamp, origin) = head;
        let frame = Frame::Deliver {
            sub_id,
            offset,
            timestamp,
            origin,
            payload,
        };
        // push() leaves the datagram as it was when the frame does not fit.
        let limit = self.datagram_size;
        match self.pending.get_mut(to).and_then(|p| p.open.as_mut()) {
            Some(open) if !open.is_empty() => open.push(&frame, limit),
            _ => false,
        }
    }

    /// True if a frame of `len` bytes for `to` would start a datagram (and
    /// so add a header to what `to` is sent): nothing is open for `to`, or
    /// the frame does not fit in what is.
    pub(super) fn opens_datagram(&mut self, to: SocketAddr, len: usize) -> bool {
        let limit = self.datagram_size;
        match self.pending.get_mut(to).and_then(|p| p.open.as_ref()) {
            Some(open) if !open.is_empty() => len > limit.saturating_sub(open.buf.len()),
            _ => true,
        }
    }

    /// Queues a plain datagram (raw egress) for `to`. The same message
    /// queued for several addresses in a row is one shared buffer.
    pub(super) fn push_raw(&mut self, to: SocketAddr, payload: &[u8]) {
        if *self.last_raw != *payload || self.last_raw.is_empty() {
            let mut buf = Self::region(&mut self.arena, payload.len());
            buf.extend_from_slice(payload);
            self.last_raw = buf.freeze();
        }
        self.pending.entry(to).done.push(self.last_raw.clone());
    }

    /// The next datagram to send. When the collected ones run out, every
    /// destination's queue is collected, open datagrams closed.
    pub(super) fn pop(&mut self) -> Option<Transmit> {
        if self.ready.is_empty() {
            for (to, pending) in self.pending.drain() {
                let payloads = pending.done.into_iter().map(Payload);
                self.ready.extend(payloads.map(|payload| Transmit {
                    destination: to,
                    payload,
                }));
                if let Some(open) = pending.open
                    && !open.is_empty()
                {
                    self.ready.push_back(Transmit {
                        destination: to,
                        payload: Payload(open.buf.freeze()),
                    });
                }
            }
            // A message a raw-out address got before this collection is
            // not shared with one queued after it.
            self.last_raw = Bytes::new();
        }
        self.ready.pop_front()
    }
}

/// What each destination has queued, in first-queued order, with the last
/// destination looked up remembered: frames for one destination mostly come
/// in a row, and comparing an address is cheaper than hashing it. Fan-out
/// visits a channel's subscribers in the same order for every message, so
/// the destination after the last one is tried next.
#[derive(Debug, Default)]
struct Pendings {
    /// Each destination and what it has queued.
    list: Vec<(SocketAddr, Pending)>,
    /// Where each destination is in `list`.
    index: HashMap<SocketAddr, usize>,
    /// The last destination looked up and where it is in `list`.
    last: Option<(SocketAddr, usize)>,
}

impl Pendings {
    fn position(&mut self, to: SocketAddr) -> Option<usize> {
        if let Some((addr, i)) = self.last {
            if addr == to {
                return Some(i);
            }
            let next = if i + 1 < self.list.len() { i + 1 } else { 0 };
            if self.list.get(next).is_some_and(|(a, _)| *a == to) {
                self.last = Some((to, next));
                return Some(next);
            }
        }
        let i = *self.index.get(&to)?;
        self.last = Some((to, i));
        Some(i)
    }

    /// What `to` has queued, if anything.
    fn get_mut(&mut self, to: SocketAddr) -> Option<&mut Pending> {
        let i = self.position(to)?;
        Some(&mut self.list[i].1)
    }

    /// What `to` has queued, created empty on first use.
    fn entry(&mut self, to: SocketAddr) -> &mut Pending {
        let i = match self.position(to) {
            Some(i) => i,
            None => {
                let i = self.list.len();
                self.list.push((
                    to,
                    Pending {
                        done: Vec::new(),
                        open: None,
                    },
                ));
                self.index.insert(to, i);
                self.last = Some((to, i));
                i
            }
        };
        &mut self.list[i].1
    }

    /// Every destination's queue, in first-queued order, leaving none.
    fn drain(&mut self) -> std::vec::Drain<'_, (SocketAddr, Pending)> {
        self.index.clear();
        self.last = None;
        self.list.drain(..)
    }
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

    #[test]
    fn a_delivery_encoded_once_is_the_same_bytes_as_one_encoded_per_subscriber() {
        // Sizes that fit many to a datagram, a few, one, one only alone
        // (past the packing limit), interleaved across three subscribers.
        let sizes = [0, 1, 64, 300, 1300, 1372, 1373, 5000, 64, 9000, 2];
        let mut by_frame = Outbox::new(1400);
        let mut once = Outbox::new(1400);
        for (offset, &size) in sizes.iter().enumerate() {
            let payload = vec![offset as u8; size];
            let (offset, timestamp) = (offset as u64 + 7, 1_700_000_000_000 + offset as u64);
            assert!(once.encode_delivery(offset, timestamp, &payload));
            for (port, sub_id) in [(1, 3), (2, 0x0102_0304), (3, u32::MAX)] {
                let a = by_frame.push_delivery(addr(port), sub_id, offset, timestamp, &payload);
                let b = once.push_encoded_delivery(addr(port), sub_id);
                assert_eq!(a, b, "bytes queued, size {size}");
            }
        }
        let (a, b) = (drain(&mut by_frame), drain(&mut once));
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.destination, b.destination);
            assert_eq!(a.payload, b.payload.to_vec());
        }
        // Too large for one datagram: the caller goes by pieces.
        assert!(!once.encode_delivery(1, 1, &vec![0; MAX_DATAGRAM]));
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
    fn fan_out_order_and_every_other_order_reach_the_right_destination() {
        // Round after round to the same destinations in the same order
        // (what the next-destination hint guesses), with rounds that skip
        // one, go backwards, or meet a destination that joins mid-way.
        let mut outbox = Outbox::new(200);
        let mut want: HashMap<SocketAddr, Vec<u64>> = HashMap::default();
        for offset in 0..60u64 {
            let mut round: Vec<u16> = (1..=5).collect();
            match offset % 4 {
                1 => round.retain(|&p| p != 3),
                2 => round.reverse(),
                3 if offset > 30 => round.insert(2, 9),
                _ => {}
            }
            for port in round {
                outbox.push_delivery(addr(port), u32::from(port), offset, 0, &[port as u8; 30]);
                want.entry(addr(port)).or_default().push(offset);
            }
        }
        let mut got: HashMap<SocketAddr, Vec<u64>> = HashMap::default();
        for t in drain(&mut outbox) {
            for frame in wire::decode_datagram(&t.payload).unwrap() {
                let Frame::Deliver {
                    sub_id,
                    offset,
                    payload,
                    ..
                } = frame.unwrap()
                else {
                    panic!("not a delivery");
                };
                assert_eq!(
                    u32::from(t.destination.port()),
                    sub_id,
                    "frame for another destination"
                );
                assert!(
                    payload
                        .iter()
                        .all(|&b| u16::from(b) == t.destination.port())
                );
                got.entry(t.destination).or_default().push(offset);
            }
        }
        assert_eq!(
            got, want,
            "every delivery once, in order, to its own destination"
        );
    }

    #[test]
    fn a_block_whose_datagrams_were_all_sent_is_written_again_from_its_start() {
        let mut outbox = Outbox::new(1400);
        // Two datagrams of three 400-byte messages: two regions of a block
        // that has no room for a third.
        const { assert!(2 * 1400 <= ARENA_BLOCK && 3 * 1400 > ARENA_BLOCK) };
        let round = |outbox: &mut Outbox| -> Vec<*const u8> {
            for offset in 0..6 {
                outbox.push_delivery(addr(1), 1, offset, 0, &[7; 400]);
            }
            let sent = drain(outbox);
            assert_eq!(sent.len(), 2);
            sent.iter().map(|t| t.payload.as_ptr()).collect()
            // Every datagram is dropped (sent) here.
        };
        let first = round(&mut outbox);
        for _ in 0..10 {
            assert_eq!(
                round(&mut outbox),
                first,
                "the same bytes, still in the cache, not a walk through memory"
            );
        }
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
                origin: None,
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

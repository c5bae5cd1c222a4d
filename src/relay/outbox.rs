//! Outgoing datagrams: frames for one destination are packed together until
//! the datagram is full or the driver collects them.

use std::collections::VecDeque;
use std::net::SocketAddr;

use foldhash::{HashMap, HashMapExt};

use crate::wire::{
    DELIVER_FRAGMENT_OVERHEAD, DELIVER_OVERHEAD, DatagramBuilder, Frame, HEADER_LEN, MAX_DATAGRAM,
};

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram's bytes.
    pub payload: Vec<u8>,
}

/// Datagrams being filled, one per destination, and datagrams ready to go.
#[derive(Debug)]
pub(super) struct Outbox {
    /// Packing limit for one datagram.
    datagram_size: usize,
    /// Datagrams still open for more frames, by destination.
    open: HashMap<SocketAddr, DatagramBuilder>,
    /// Destinations of `open` in the order they were opened, so flushing is
    /// deterministic.
    open_order: Vec<SocketAddr>,
    /// Finished datagrams, in send order.
    ready: VecDeque<Transmit>,
}

impl Outbox {
    pub(super) fn new(datagram_size: usize) -> Self {
        Outbox {
            datagram_size,
            open: HashMap::new(),
            open_order: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// Queues `frame` for `to`; false if it cannot be encoded at all (larger
    /// than the largest datagram).
    pub(super) fn push_frame(&mut self, to: SocketAddr, frame: &Frame<'_>) -> bool {
        let builder = self.open.entry(to).or_insert_with(|| {
            self.open_order.push(to);
            DatagramBuilder::new(self.datagram_size)
        });
        if builder.push(frame).is_ok() {
            return true;
        }
        if !builder.is_empty() {
            let payload = builder.finish();
            self.ready.push_back(Transmit {
                destination: to,
                payload,
            });
            if builder.push(frame).is_ok() {
                return true;
            }
        }
        // Larger than the packing limit: it goes alone, as large as UDP allows.
        let mut alone = DatagramBuilder::new(MAX_DATAGRAM);
        if alone.push(frame).is_err() {
            return false;
        }
        self.ready.push_back(Transmit {
            destination: to,
            payload: alone.finish(),
        });
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
        match self.open.get_mut(&to) {
            Some(b) if !b.is_empty() => b.push(&frame).is_ok(),
            _ => false,
        }
    }

    /// Queues a plain datagram (raw egress) for `to`.
    pub(super) fn push_raw(&mut self, to: SocketAddr, payload: &[u8]) {
        self.ready.push_back(Transmit {
            destination: to,
            payload: payload.to_vec(),
        });
    }

    /// The next datagram to send; closes the open datagrams when the ready
    /// ones run out.
    pub(super) fn pop(&mut self) -> Option<Transmit> {
        if self.ready.is_empty() {
            for to in self.open_order.drain(..) {
                if let Some(mut builder) = self.open.remove(&to)
                    && !builder.is_empty()
                {
                    self.ready.push_back(Transmit {
                        destination: to,
                        payload: builder.finish(),
                    });
                }
            }
        }
        self.ready.pop_front()
    }
}

//! Large messages from the relay put back together from their pieces,
//! within a bounded amount of memory.

use std::collections::VecDeque;

/// Largest message a client puts together from pieces: a relay's pieces
/// announcing more are ignored, so a bad relay cannot make it allocate
/// without bound.
pub const MAX_REASSEMBLED: usize = 64 << 20;

/// Large messages arriving in pieces (DELIVER_FRAGMENT), by offset. Holds at
/// most [`MAX_REASSEMBLED`] bytes at once: an unreliable message whose pieces
/// stop coming is evicted by newer ones.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: VecDeque<PartialMessage>,
}

/// A message some of whose pieces arrived.
#[derive(Debug)]
struct PartialMessage {
    offset: u64,
    total: usize,
    bytes: Vec<u8>,
    /// `[start, end)` of every piece in, so a duplicate is not counted twice
    /// and the sender can be told what arrived.
    pieces: Vec<(u32, u32)>,
    /// Bytes in so far.
    received: usize,
}

impl Reassembler {
    /// Adds a piece; returns the whole message once every byte is in.
    pub fn add(&mut self, offset: u64, total: u32, at: u32, chunk: &[u8]) -> Option<Vec<u8>> {
        let total = total as usize;
        let end = at as usize + chunk.len();
        if total > MAX_REASSEMBLED || end > total || chunk.is_empty() {
            return None;
        }
        let i = match self.partial.iter().position(|p| p.offset == offset) {
            Some(i) => i,
            None => {
                let held: usize = self.partial.iter().map(|p| p.total).sum();
                let mut room = MAX_REASSEMBLED.saturating_sub(held);
                while room < total {
                    let Some(evicted) = self.partial.pop_front() else {
                        break;
                    };
                    room += evicted.total;
                }
                self.partial.push_back(PartialMessage {
                    offset,
                    total,
                    bytes: vec![0; total],
                    pieces: Vec::new(),
                    received: 0,
                });
                self.partial.len() - 1
            }
        };
        let p = &mut self.partial[i];
        if p.total != total || p.pieces.iter().any(|&(start, _)| start == at) {
            return None;
        }
        p.bytes[at as usize..end].copy_from_slice(chunk);
        p.pieces.push((at, end as u32));
        p.received += chunk.len();
        if p.received < total {
            return None;
        }
        self.partial.remove(i).map(|p| p.bytes)
    }

    /// True if no message is held in part.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }

    /// The offsets of the messages held in part, lowest first.
    pub fn offsets(&self) -> Vec<u64> {
        let mut offsets: Vec<u64> = self.partial.iter().map(|p| p.offset).collect();
        offsets.sort_unstable();
        offsets
    }

    /// The byte ranges of message `offset` that arrived, merged and in
    /// order, at most `max` of them (the lowest); `None` if none of its
    /// pieces is held.
    pub fn received(&self, offset: u64, max: usize) -> Option<Vec<(u64, u64)>> {
        let p = self.partial.iter().find(|p| p.offset == offset)?;
        let mut pieces = p.pieces.clone();
        pieces.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (start, end) in pieces {
            let (start, end) = (u64::from(start), u64::from(end));
            if let Some(last) = ranges.last_mut()
                && start <= last.1
            {
                last.1 = last.1.max(end);
            } else if ranges.len() == max {
                break;
            } else {
                ranges.push((start, end));
            }
        }
        Some(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembler_joins_pieces_in_any_order_once() {
        let mut r = Reassembler::default();
        let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let pieces: Vec<(u32, &[u8])> = msg
            .chunks(300)
            .enumerate()
            .map(|(i, c)| (i as u32 * 300, c))
            .collect();
        assert!(r.add(5, 1000, pieces[3].0, pieces[3].1).is_none());
        assert!(r.add(5, 1000, pieces[0].0, pieces[0].1).is_none());
        assert!(
            r.add(5, 1000, pieces[0].0, pieces[0].1).is_none(),
            "a duplicate piece"
        );
        assert!(r.add(5, 1000, pieces[2].0, pieces[2].1).is_none());
        // What it holds, merged: [0, 300) and [600, 1000).
        assert_eq!(r.offsets(), [5]);
        assert_eq!(r.received(5, 32), Some(vec![(0, 300), (600, 1000)]));
        assert_eq!(r.received(5, 1), Some(vec![(0, 300)]), "the lowest first");
        assert_eq!(r.received(4, 32), None);
        assert_eq!(r.add(5, 1000, pieces[1].0, pieces[1].1), Some(msg));
        assert!(r.offsets().is_empty(), "a whole message is no longer held");
        // Hostile sizes are ignored.
        assert!(r.add(6, u32::MAX, 0, b"x").is_none());
        assert!(r.add(6, 10, 8, b"xyz").is_none());
    }
}

//! The plain publisher: packs messages for one channel into datagrams, and
//! sends a message too large for one datagram in pieces.

use super::{ClientError, check_channel};
use crate::wire::{self, DatagramBuilder, Frame, HEADER_LEN, MAX_DATAGRAM, WireError};

/// Packs publish frames for one channel into datagrams of at most a given size.
#[derive(Debug)]
pub struct Publisher {
    channel: String,
    builder: DatagramBuilder,
    /// Id of the next message sent in pieces.
    next_msg_id: u32,
}

impl Publisher {
    /// A publisher for `channel` that fills datagrams up to `datagram_size`
    /// bytes (a message too large for that still goes, alone).
    pub fn new(channel: &str, datagram_size: usize) -> Result<Publisher, ClientError> {
        check_channel(channel)?;
        Ok(Publisher {
            channel: channel.to_string(),
            builder: DatagramBuilder::new(datagram_size),
            next_msg_id: 0,
        })
    }

    /// The largest message this publisher can send in one datagram; larger
    /// ones go in pieces.
    pub fn max_message_size(&self) -> usize {
        MAX_DATAGRAM - HEADER_LEN - wire::FRAME_HEADER_LEN - 1 - self.channel.len()
    }

    /// Adds a message. Returns the datagrams that closed to make room for it
    /// (zero, one, or two when the message itself had to go alone), or, for
    /// a message larger than one datagram, its pieces (FRAGMENT frames, each
    /// a datagram of its own).
    pub fn push(&mut self, payload: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        if payload.len() > self.max_message_size() {
            return self.push_in_pieces(payload);
        }
        let max = self.max_message_size();
        let mut done = Vec::new();
        // The name was checked in new(); packing a message is a copy.
        if self.builder.push_publish(&self.channel, payload) == Err(WireError::TooLarge) {
            if !self.builder.is_empty() {
                done.push(self.builder.finish());
            }
            if self.builder.push_publish(&self.channel, payload).is_err() {
                let mut alone = DatagramBuilder::new(MAX_DATAGRAM);
                alone
                    .push_publish(&self.channel, payload)
                    .map_err(|_| ClientError::TooLarge {
                        size: payload.len(),
                        max,
                    })?;
                done.push(alone.finish());
            }
        }
        Ok(done)
    }

    fn push_in_pieces(&mut self, payload: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        let piece = self
            .builder_limit()
            .saturating_sub(HEADER_LEN + 4 + 9 + self.channel.len());
        let piece = piece.max(256);
        let count = payload.len().div_ceil(piece);
        let Ok(count) = u16::try_from(count) else {
            return Err(ClientError::TooLarge {
                size: payload.len(),
                max: piece * usize::from(u16::MAX),
            });
        };
        let msg_id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        let mut done: Vec<Vec<u8>> = self.flush().into_iter().collect();
        for (index, chunk) in payload.chunks(piece).enumerate() {
            let frame = Frame::Fragment {
                msg_id,
                index: index as u16,
                count,
                channel: &self.channel,
                chunk,
            };
            let datagram = wire::encode_datagram(&[frame]).map_err(|_| ClientError::TooLarge {
                size: payload.len(),
                max: piece,
            })?;
            done.push(datagram);
        }
        Ok(done)
    }

    fn builder_limit(&self) -> usize {
        self.builder.len() + self.builder.remaining()
    }

    /// The datagram being filled, if it holds any message.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        (!self.builder.is_empty()).then(|| self.builder.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_packs_until_full_and_sends_big_messages_alone() {
        let mut p = Publisher::new("news", 100).unwrap();
        let mut datagrams = Vec::new();
        for _ in 0..5 {
            datagrams.extend(p.push(&[b'x'; 30]).unwrap());
        }
        // 8 header + 2 * (4 + 1 + 4 + 30) = 86 bytes per datagram: two fit.
        assert_eq!(datagrams.len(), 2);
        datagrams.extend(p.push(&[b'y'; 500]).unwrap());
        assert_eq!(
            datagrams.len(),
            4,
            "the open datagram closes, the big one goes alone"
        );
        assert!(p.flush().is_none());
        // Larger than a datagram: pieces, each a datagram of its own.
        let pieces = p.push(&vec![7; MAX_DATAGRAM]).unwrap();
        assert_eq!(pieces.len(), MAX_DATAGRAM.div_ceil(256));
        for (i, d) in pieces.iter().enumerate() {
            let frame = wire::decode_datagram(d).unwrap().next().unwrap().unwrap();
            assert!(
                matches!(frame, Frame::Fragment { index, count, .. } if usize::from(index) == i && usize::from(count) == pieces.len()),
                "{frame:?}"
            );
        }
        assert!(matches!(
            p.push(&vec![0; 256 * 65_536]),
            Err(ClientError::TooLarge { .. })
        ));
        assert!(Publisher::new("bad\nname", 100).is_err());
    }
}

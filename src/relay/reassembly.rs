//! Unreliable messages that arrive in pieces (FRAGMENT frames), held until
//! the last piece is in, dropped if they do not all arrive within
//! [`FRAGMENT_TIMEOUT`].
//!
//! Everything held is charged to one budget before it is allocated: a new
//! message's piece table and bookkeeping, then each piece with its
//! allocation. A peer that names 65,535 pieces of one byte each pays for the
//! table it asks for, so a datagram of such frames cannot make the relay
//! allocate more than the budget. Each message is also charged to its
//! holder, the sender's key or its address, within the holder's share: one
//! client cannot take the whole budget from the others. Knows nothing of
//! channels or the log: a whole message is handed back with its channel's
//! name.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

/// How long an unreliable message may take to arrive in full.
pub const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bookkeeping of one incomplete message besides its piece table: the map
/// entry, its key, its deadline entry and the allocator's share.
const REASSEMBLY_OVERHEAD: usize = 256;
/// The allocator's share of one stored piece besides its bytes.
const PIECE_OVERHEAD: usize = 32;

/// What a new incomplete message of `count` pieces for `channel` is charged
/// before any piece is stored.
pub fn reassembly_cost(channel: &str, count: u16) -> usize {
    REASSEMBLY_OVERHEAD
        + channel.len()
        + usize::from(count) * std::mem::size_of::<Option<Box<[u8]>>>()
}

/// What one stored piece of `len` bytes is charged.
pub fn piece_cost(len: usize) -> usize {
    PIECE_OVERHEAD + len
}

/// Who the pieces of a message are charged to besides the shared budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A key (by its stable index, see `secure::Secure`) that sets its own quota.
    Key(usize),
    /// The sender's address.
    Address(SocketAddr),
}

/// One FRAGMENT frame, as decoded.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// Who sent it: with `msg_id`, it names the message.
    pub from: SocketAddr,
    /// Chosen by the sender.
    pub msg_id: u32,
    /// This piece's position, below `count`.
    pub index: u16,
    /// How many pieces the message has.
    pub count: u16,
    /// The channel the message goes to.
    pub channel: &'a str,
    /// This piece's bytes (at least one: the decoder refuses empty ones).
    pub chunk: &'a [u8],
}

/// What became of a piece.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Held; the message is not complete yet.
    Held,
    /// This piece was already held.
    Duplicate,
    /// It disagrees with the pieces before it (count or channel).
    Malformed,
    /// The budget has no room for it: dropped.
    OverBudget,
    /// It would start a message for a channel the caller does not allow.
    ChannelRefused,
    /// The message grew past the largest allowed; dropped whole, with the
    /// size it reached.
    TooLarge(usize),
    /// The last piece: the whole message, for `channel`.
    Complete {
        /// The channel the pieces named.
        channel: Box<str>,
        /// The pieces in order.
        message: Vec<u8>,
    },
}

/// An incomplete message.
#[derive(Debug)]
struct Reassembly {
    /// The channel it goes to, by name: no channel slot is taken until the
    /// message is whole.
    channel: Box<str>,
    /// Pieces by index; `None` until it arrives.
    pieces: Vec<Option<Box<[u8]>>>,
    /// Pieces arrived.
    have: usize,
    /// Bytes arrived.
    bytes: usize,
    /// What this message is charged against the budget.
    charged: usize,
    /// Who it is charged to.
    holder: Holder,
    /// When it gives up: its entry in `deadlines` (another entry for the
    /// same key was left by an earlier message that completed).
    deadline: Instant,
}

/// Every incomplete message, within a memory budget.
#[derive(Debug)]
pub struct Reassembler {
    /// By sender and message id.
    messages: HashMap<(SocketAddr, u32), Reassembly>,
    /// When each gives up, in arrival order (one timeout for all, so this
    /// is also deadline order). An entry whose message completed is skipped.
    deadlines: VecDeque<(Instant, SocketAddr, u32)>,
    /// What `messages` holds, as charged.
    charged: usize,
    /// The most `charged` may be.
    budget: usize,
    /// What each holder holds, as charged; no entry for one holding nothing.
    held: HashMap<Holder, usize>,
    /// The largest message accepted.
    max_message_size: usize,
}

impl Reassembler {
    /// Nothing held; at most `budget` bytes will be, for messages of at most
    /// `max_message_size`.
    pub fn new(budget: usize, max_message_size: usize) -> Reassembler {
        Reassembler {
            messages: HashMap::new(),
            deadlines: VecDeque::new(),
            charged: 0,
            budget,
            held: HashMap::new(),
            max_message_size,
        }
    }

    /// A new budget and largest message (what is held stays).
    pub fn set_limits(&mut self, budget: usize, max_message_size: usize) {
        (self.budget, self.max_message_size) = (budget, max_message_size);
    }

    /// Takes one piece, charged to `holder`, which may hold at most
    /// `share` bytes. `channel_allowed` says whether a new message may
    /// name its channel (asked only when the piece starts one).
    pub fn add(
        &mut self,
        now: Instant,
        piece: Piece<'_>,
        (holder, share): (Holder, usize),
        channel_allowed: bool,
    ) -> Added {
        let Piece {
            from,
            msg_id,
            index,
            count,
            channel,
            chunk,
        } = piece;
        let key = (from, msg_id);
        let charge = match self.messages.get(&key) {
            Some(m) if m.pieces.len() != usize::from(count) || *m.channel != *channel => {
                return Added::Malformed;
            }
            Some(m) if m.pieces[usize::from(index)].is_some() => return Added::Duplicate,
            Some(_) => piece_cost(chunk.len()),
            None if !channel_allowed => return Added::ChannelRefused,
            None => reassembly_cost(channel, count) + piece_cost(chunk.len()),
        };
        // A message keeps the holder it started with.
        let holder = self.messages.get(&key).map_or(holder, |m| m.holder);
        let held = self.held.get(&holder).copied().unwrap_or(0);
        if self.charged + charge > self.budget || held + charge > share {
            return Added::OverBudget;
        }
        self.charged += charge;
        *self.held.entry(holder).or_insert(0) += charge;
        let m = self.messages.entry(key).or_insert_with(|| {
            let deadline = now + FRAGMENT_TIMEOUT;
            self.deadlines.push_back((deadline, from, msg_id));
            Reassembly {
                channel: channel.into(),
                pieces: vec![None; usize::from(count)],
                have: 0,
                bytes: 0,
                charged: 0,
                holder,
                deadline,
            }
        });
        m.pieces[usize::from(index)] = Some(chunk.into());
        m.have += 1;
        m.bytes += chunk.len();
        m.charged += charge;
        let too_large = m.bytes > self.max_message_size;
        if m.have < m.pieces.len() && !too_large {
            return Added::Held;
        }
        let Some(done) = self.messages.remove(&key) else {
            return Added::Held;
        };
        self.release(&done);
        if too_large {
            return Added::TooLarge(done.bytes);
        }
        let mut message = Vec::with_capacity(done.bytes);
        for piece in done.pieces.iter().flatten() {
            message.extend_from_slice(piece);
        }
        Added::Complete {
            channel: done.channel,
            message,
        }
    }

    /// Drops the messages whose time ran out at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let mut expired = 0;
        while let Some(&(at, from, msg_id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let key = (from, msg_id);
            if self.messages.get(&key).is_some_and(|m| m.deadline == at)
                && let Some(m) = self.messages.remove(&key)
            {
                self.release(&m);
                expired += 1;
            }
        }
        expired
    }

    /// Gives back what a message that is gone was charged.
    fn release(&mut self, m: &Reassembly) {
        self.charged -= m.charged;
        if let Some(held) = self.held.get_mut(&m.holder) {
            *held -= m.charged;
            if *held == 0 {
                self.held.remove(&m.holder);
            }
        }
    }

    /// The share of the budget one holder gets unless its key sets its
    /// own: an eighth, so that one client cannot take what others need
    /// (never less than two of the largest messages).
    pub fn default_share(&self) -> usize {
        (self.budget / 8).max(2 * self.max_message_size)
    }

    /// What `holder` holds, as charged.
    #[cfg(test)]
    pub fn held_by(&self, holder: Holder) -> usize {
        self.held.get(&holder).copied().unwrap_or(0)
    }

    /// When [`Reassembler::expire`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(at, ..)| at)
    }

    /// What is held, as charged.
    #[cfg(test)]
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// The budget.
    #[cfg(test)]
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Incomplete messages held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True if nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "127.0.0.1:4000";

    /// Adds a piece charged to its address, with no share of its own.
    fn add(r: &mut Reassembler, now: Instant, p: Piece<'_>, allowed: bool) -> Added {
        r.add(now, p, (Holder::Address(p.from), usize::MAX), allowed)
    }

    fn piece<'a>(msg_id: u32, index: u16, count: u16, chunk: &'a [u8]) -> Piece<'a> {
        Piece {
            from: FROM.parse().unwrap(),
            msg_id,
            index,
            count,
            channel: "c",
            chunk,
        }
    }

    #[test]
    fn pieces_in_any_order_make_the_message_once() {
        let mut r = Reassembler::new(1 << 20, 1 << 20);
        let t = Instant::now();
        assert_eq!(add(&mut r, t, piece(1, 2, 3, b"c"), true), Added::Held);
        assert_eq!(add(&mut r, t, piece(1, 0, 3, b"a"), true), Added::Held);
        assert_eq!(add(&mut r, t, piece(1, 0, 3, b"a"), true), Added::Duplicate);
        assert_eq!(add(&mut r, t, piece(1, 1, 4, b"b"), true), Added::Malformed);
        assert_eq!(
            add(&mut r, t, piece(1, 1, 3, b"b"), true),
            Added::Complete {
                channel: "c".into(),
                message: b"abc".to_vec()
            }
        );
        assert_eq!(r.charged(), 0);
        assert_eq!(r.expire(t + FRAGMENT_TIMEOUT), 0, "nothing left to expire");
    }

    #[test]
    fn a_piece_table_is_charged_before_it_is_allocated() {
        let table = reassembly_cost("c", u16::MAX) + piece_cost(1);
        let mut r = Reassembler::new(3 * table, 1 << 20);
        let t = Instant::now();
        for msg_id in 0..3 {
            assert_eq!(
                add(&mut r, t, piece(msg_id, 0, u16::MAX, b"x"), true),
                Added::Held
            );
        }
        assert_eq!(
            add(&mut r, t, piece(3, 0, u16::MAX, b"x"), true),
            Added::OverBudget
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r.charged(), 3 * table);
        // Nothing at the deadline less a microsecond; all three at it.
        let deadline = t + FRAGMENT_TIMEOUT;
        assert_eq!(r.next_deadline(), Some(deadline));
        assert_eq!(r.expire(deadline - Duration::from_micros(1)), 0);
        assert_eq!(r.expire(deadline), 3);
        assert_eq!(r.charged(), 0);
        assert_eq!(
            add(&mut r, deadline, piece(4, 0, u16::MAX, b"x"), true),
            Added::Held
        );
    }

    #[test]
    fn a_message_id_used_again_gets_its_own_time() {
        let mut r = Reassembler::new(1 << 20, 1 << 20);
        let t = Instant::now();
        add(&mut r, t, piece(1, 0, 2, b"a"), true);
        assert!(matches!(
            add(&mut r, t, piece(1, 1, 2, b"b"), true),
            Added::Complete { .. }
        ));
        let later = t + FRAGMENT_TIMEOUT / 2;
        assert_eq!(add(&mut r, later, piece(1, 0, 2, b"c"), true), Added::Held);
        assert_eq!(
            r.expire(t + FRAGMENT_TIMEOUT),
            0,
            "not at the first one's deadline"
        );
        assert_eq!(r.expire(later + FRAGMENT_TIMEOUT), 1);
    }

    #[test]
    fn a_new_message_for_a_refused_channel_takes_nothing() {
        let mut r = Reassembler::new(1 << 20, 1 << 20);
        let t = Instant::now();
        assert_eq!(
            add(&mut r, t, piece(1, 0, 2, b"a"), false),
            Added::ChannelRefused
        );
        assert!(r.is_empty());
        assert_eq!(r.charged(), 0);
    }

    #[test]
    fn a_message_past_the_largest_is_dropped_whole() {
        let mut r = Reassembler::new(1 << 20, 3);
        let t = Instant::now();
        assert_eq!(add(&mut r, t, piece(1, 0, 3, b"ab"), true), Added::Held);
        assert_eq!(
            add(&mut r, t, piece(1, 1, 3, b"cd"), true),
            Added::TooLarge(4)
        );
        assert_eq!(r.charged(), 0);
    }

    #[test]
    fn each_holder_stays_within_its_share_and_gets_it_back() {
        let mut r = Reassembler::new(1 << 20, 1 << 20);
        let t = Instant::now();
        let one = reassembly_cost("c", 2) + piece_cost(100);
        let key = (Holder::Key(3), 2 * one);
        let chunk = [7u8; 100];
        // Key 3 may start two messages, from any of its addresses; not a third.
        let mut p = piece(1, 0, 2, &chunk);
        assert_eq!(r.add(t, p, key, true), Added::Held);
        p.from = "127.0.0.1:4001".parse().unwrap();
        assert_eq!(r.add(t, p, key, true), Added::Held);
        p.msg_id = 2;
        assert_eq!(r.add(t, p, key, true), Added::OverBudget);
        assert_eq!(r.held_by(Holder::Key(3)), 2 * one);
        // Another holder is not held back by key 3.
        let other = piece(9, 0, 2, &chunk);
        let by_address = (Holder::Address(other.from), one);
        assert_eq!(r.add(t, other, by_address, true), Added::Held);
        // The second piece of a message goes to the holder it started
        // with, whatever the caller says now; it is over the key's share.
        let second = Piece {
            index: 1,
            ..piece(1, 0, 2, &chunk)
        };
        assert_eq!(r.add(t, second, by_address, true), Added::OverBudget);
        // Expiry gives every holder back what it held.
        assert_eq!(r.expire(t + FRAGMENT_TIMEOUT), 3);
        assert_eq!(r.held_by(Holder::Key(3)), 0);
        assert!(
            r.held.is_empty(),
            "no entry left for holders holding nothing"
        );
        assert_eq!(r.add(t + FRAGMENT_TIMEOUT, p, key, true), Added::Held);
    }
}

//! What a reliable subscriber holds of each source, so that it can move to
//! another relay of a cluster and go on without loss or duplicate.
//!
//! A subscription that asks for origins is told, with each message, its
//! source and its position there (the same at every relay). A relay stores
//! a source's messages in the source's order, except that copies still on
//! their way when a publisher moved to that relay are stored after the
//! publisher's next messages; so [`Positions`] keeps, per source, the
//! highest position handed over and which of the [`WINDOW`] positions below
//! it were, drops a message it holds (a new relay starts a little early),
//! and says what to resume from: for the sources heard from most recently,
//! a position at or below which it holds everything ([`WINDOW`] below the
//! highest), and a time before which nothing of the other sources is
//! wanted (the last message's time less [`RESUME_MARGIN`], which covers how
//! much later one relay may store a message than another).

use std::time::Duration;

use foldhash::HashMap;

use crate::wire::{MAX_RESUME_SOURCES, Origin, ResumeVector, Source};

/// How much earlier than the last message received a resume asks for the
/// messages of sources the subscriber had not heard from: what a relay
/// that was behind the cluster by up to this much had not yet delivered.
pub const RESUME_MARGIN: Duration = Duration::from_secs(10);

/// Positions below a source's highest whose messages may still come (a
/// copy stored late) and are told apart from ones held; one further below
/// is taken as held. As many as the bridge has in flight per relay.
pub const WINDOW: u64 = 4096;

/// Most sources remembered; past it the one heard from longest ago is
/// forgotten (a message of it, should one come again, is then judged by
/// time).
pub const MAX_SOURCES_KEPT: usize = 16_384;

const WORDS: usize = (WINDOW / 64) as usize;

/// One source: the first and the highest position handed over, which of
/// the [`WINDOW`] positions up to the highest were (bit `p % WINDOW`), and
/// when it was heard.
#[derive(Debug, Clone)]
struct Held {
    first: u64,
    highest: u64,
    seen: Box<[u64; WORDS]>,
    heard: u64,
}

impl Held {
    fn new(position: u64, heard: u64) -> Held {
        let mut held = Held {
            first: position,
            highest: position,
            seen: Box::new([0; WORDS]),
            heard,
        };
        held.mark(position);
        held
    }

    fn bit(p: u64) -> (usize, u64) {
        let i = p % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn mark(&mut self, p: u64) {
        let (word, bit) = Held::bit(p);
        self.seen[word] |= bit;
    }

    /// True (and noted) if `p` was not handed over before (one before the
    /// first handed over came before the subscription).
    fn take(&mut self, p: u64) -> bool {
        if p > self.highest {
            // The positions the window moves over are free again.
            if p - self.highest >= WINDOW {
                self.seen.fill(0);
            } else {
                for q in self.highest + 1..p {
                    let (word, bit) = Held::bit(q);
                    self.seen[word] &= !bit;
                }
            }
            self.highest = p;
            self.mark(p);
            return true;
        }
        if self.highest - p >= WINDOW || p < self.first {
            return false; // below the window: taken as held
        }
        let (word, bit) = Held::bit(p);
        let new = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        new
    }

    /// A position at or below which everything is held, came before the
    /// subscription, or is older than anything the window tells apart.
    fn floor(&self) -> u64 {
        self.highest.saturating_sub(WINDOW).max(self.first)
    }

    /// Notes `p` as handed over, whatever came before.
    fn note(&mut self, p: u64) {
        if !self.take(p) && p < self.first {
            self.first = p;
            self.mark(p);
        }
    }
}

/// The subscriber's place in each source's numbering.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    last: HashMap<Source, Held>,
    /// Counts messages handed over (for "heard from most recently").
    tick: u64,
    /// The store time of the last message handed over.
    last_timestamp: Option<u64>,
    /// When it subscribed (client clock, less the margin): `since` for a
    /// move before any message came.
    start: u64,
    /// After a resume: messages of a source not held stored before this
    /// are not wanted.
    floor: Option<u64>,
    /// A message came without an origin: a resume cannot be exact.
    unknown: bool,
    /// It moved: from now on, what it holds is not handed over again.
    moved: bool,
}

impl Positions {
    /// Nothing held; `start` (ns since the Unix epoch): should it move
    /// before any message came, what was stored before this is not wanted.
    pub fn new(start: u64) -> Positions {
        Positions {
            start,
            ..Positions::default()
        }
    }

    /// Whether the message stored at `timestamp` with `origin` is one to
    /// hand over (not one held already); if so it is noted.
    pub fn take(&mut self, timestamp: u64, origin: Option<Origin>) -> bool {
        let Some(origin) = origin else {
            self.unknown = true;
            self.last_timestamp = Some(timestamp);
            return true;
        };
        self.tick += 1;
        let tick = self.tick;
        match self.last.get_mut(&origin.source) {
            // Before a move the relay sends each message once: all go.
            Some(held) if !self.moved => {
                held.note(origin.position);
                held.heard = tick;
            }
            Some(held) => {
                if !held.take(origin.position) {
                    return false;
                }
                held.heard = tick;
            }
            None if self.floor.is_some_and(|floor| timestamp < floor) => return false,
            None => {
                if self.last.len() >= MAX_SOURCES_KEPT
                    && let Some(oldest) = (self.last.iter())
                        .min_by_key(|(_, held)| held.heard)
                        .map(|(source, _)| *source)
                {
                    self.last.remove(&oldest);
                }
                (self.last).insert(origin.source, Held::new(origin.position, tick));
            }
        }
        self.last_timestamp = Some(timestamp);
        true
    }

    /// True if every message handed over said where it came from: a
    /// resume then misses nothing and repeats nothing.
    pub fn is_exact(&self) -> bool {
        !self.unknown
    }

    /// How many sources it holds positions of.
    pub fn sources(&self) -> usize {
        self.last.len()
    }

    /// The time a resume asks from for sources it does not name: the last
    /// message's store time less the margin (or, before any came, when it
    /// subscribed), never before an earlier resume's.
    pub fn since(&self) -> u64 {
        let margin = RESUME_MARGIN.as_nanos() as u64;
        let since = match self.last_timestamp {
            Some(t) => t.saturating_sub(margin),
            None => self.start,
        };
        since.max(self.floor.unwrap_or(0))
    }

    /// The resume vector's bytes: the sources heard from most recently
    /// (at most [`MAX_RESUME_SOURCES`]), each with a position at or below
    /// which it holds everything.
    pub fn vector(&self) -> Vec<u8> {
        let mut recent: Vec<(&Source, &Held)> = self.last.iter().collect();
        recent.sort_unstable_by_key(|(_, held)| std::cmp::Reverse(held.heard));
        let origins: Vec<Origin> = (recent.into_iter().take(MAX_RESUME_SOURCES))
            .map(|(&source, held)| Origin {
                source,
                position: held.floor(),
            })
            .collect();
        ResumeVector::encode(&origins)
    }

    /// Resuming at another relay from [`Positions::since`]: from now on, a
    /// source not held is taken only from there.
    pub fn resumed(&mut self) {
        self.floor = Some(self.since());
        self.moved = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(source: Source, position: u64) -> Option<Origin> {
        Some(Origin { source, position })
    }

    #[test]
    fn after_a_move_a_message_held_is_dropped_and_a_late_one_below_the_highest_is_not() {
        let mut p = Positions::new(0);
        let (a, s) = (Source::Relay(1), Source::Session(9));
        assert!(p.take(10, at(a, 5)));
        assert!(p.take(11, at(s, 2)));
        assert!(
            p.take(12, at(s, 1)),
            "before a move, everything the relay sends goes"
        );
        p.resumed();
        assert!(!p.take(12, at(a, 5)), "the same message again");
        assert!(
            !p.take(12, at(a, 3)),
            "one before the first: before the subscription"
        );
        assert!(p.take(13, at(a, 7)));
        assert!(p.take(13, at(a, 6)), "an earlier one that came late");
        assert!(!p.take(13, at(a, 6)), "and again");
        assert!(!p.take(14, at(s, 1)), "held");
        let far = 7 + WINDOW + 100;
        assert!(p.take(15, at(a, far)));
        assert!(!p.take(15, at(a, far - WINDOW)), "below the window: held");
        assert!(
            p.take(15, at(a, far - WINDOW + 1)),
            "inside it: not seen yet"
        );
        assert!(p.is_exact());
        assert_eq!(p.sources(), 2);
    }

    #[test]
    fn before_a_move_every_new_source_is_taken_whatever_the_clock() {
        let mut p = Positions::new(u64::MAX / 2);
        assert!(
            p.take(1, at(Source::Relay(1), 0)),
            "stored long before it subscribed"
        );
        assert_eq!(p.since(), 0, "the last message's time less the margin");
    }

    #[test]
    fn after_a_resume_a_new_source_is_taken_from_the_margin_before_the_last_message() {
        let margin = RESUME_MARGIN.as_nanos() as u64;
        let t = 100 * margin;
        let mut p = Positions::new(0);
        assert!(p.take(t, at(Source::Relay(1), 0)));
        assert_eq!(p.since(), t - margin);
        p.resumed();
        assert!(
            !p.take(t - margin - 1, at(Source::Relay(2), 7)),
            "stored before the margin"
        );
        assert!(p.take(t - margin, at(Source::Relay(3), 7)));
        assert!(
            p.take(t - 5 * margin, at(Source::Relay(1), 1)),
            "a held source is judged by position"
        );
    }

    #[test]
    fn the_vector_names_the_sources_heard_from_most_recently_a_window_below_their_highest() {
        let mut p = Positions::new(0);
        for id in 0..(MAX_RESUME_SOURCES as u64 + 10) {
            assert!(p.take(id, at(Source::Session(id), 0)));
            assert!(p.take(id, at(Source::Session(id), WINDOW + id)));
        }
        let bytes = p.vector();
        let vector = ResumeVector::new(&bytes).expect("a valid vector");
        assert_eq!(vector.len(), MAX_RESUME_SOURCES);
        let named: Vec<Origin> = vector.iter().collect();
        let newest = MAX_RESUME_SOURCES as u64 + 9;
        assert_eq!(named[0], at(Source::Session(newest), newest).unwrap());
        assert!(
            named.iter().all(|o| o.source >= Source::Session(10)),
            "{named:?}"
        );
    }

    #[test]
    fn a_message_without_an_origin_makes_a_resume_inexact() {
        let mut p = Positions::new(0);
        assert!(p.take(1, None));
        assert!(p.take(1, None), "it cannot be told from one held");
        assert!(!p.is_exact());
    }
}

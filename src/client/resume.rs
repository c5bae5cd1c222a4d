//! What a reliable subscriber holds of each source, so that it can move to
//! another relay of a cluster and go on without loss or duplicate.
//!
//! A subscription that asks for origins is told, with each message, its
//! source and its position there (the same at every relay). [`Positions`]
//! keeps the last position handed over per source, drops a message at or
//! below it (one the subscriber has: a new relay starts a little early),
//! and says what to resume from: the most recently heard sources with
//! their positions, and a time before which nothing of the other sources
//! is wanted (the last message's time less [`RESUME_MARGIN`], which covers
//! how much later one relay may store a message than another).

use std::time::Duration;

use foldhash::HashMap;

use crate::wire::{MAX_RESUME_SOURCES, Origin, ResumeVector, Source};

/// How much earlier than the last message received a resume asks for the
/// messages of sources the subscriber had not heard from: what a relay
/// that was behind the cluster by up to this much had not yet delivered.
pub const RESUME_MARGIN: Duration = Duration::from_secs(10);

/// Most sources remembered; past it the one heard from longest ago is
/// forgotten (a message of it, should one come again, is then judged by
/// time).
pub const MAX_SOURCES_KEPT: usize = 65_536;

/// The subscriber's place in each source's numbering.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    /// Source -> (last position handed over, when it was heard: a count).
    last: HashMap<Source, (u64, u64)>,
    /// Counts messages handed over (for "heard from most recently").
    tick: u64,
    /// The store time of the last message handed over.
    last_timestamp: Option<u64>,
    /// Messages of a source not in `last` stored before this are not
    /// wanted (set by a resume; 0 takes everything).
    floor: u64,
    /// A message came without an origin: a resume cannot be exact.
    unknown: bool,
}

impl Positions {
    /// Nothing held, and nothing stored before `floor` (ns since the Unix
    /// epoch) wanted of any source when resuming before a message came.
    pub fn new(floor: u64) -> Positions {
        Positions {
            floor,
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
        match self.last.get_mut(&origin.source) {
            Some((held, _)) if origin.position <= *held => return false,
            Some(entry) => *entry = (origin.position, self.tick),
            None if timestamp < self.floor => return false,
            None => {
                if self.last.len() >= MAX_SOURCES_KEPT
                    && let Some(oldest) = (self.last.iter())
                        .min_by_key(|(_, (_, heard))| *heard)
                        .map(|(source, _)| *source)
                {
                    self.last.remove(&oldest);
                }
                self.last
                    .insert(origin.source, (origin.position, self.tick));
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

    /// The time a resume asks from for sources it does not name.
    pub fn since(&self) -> u64 {
        let margin = RESUME_MARGIN.as_nanos() as u64;
        match self.last_timestamp {
            Some(t) => t.saturating_sub(margin).max(self.floor.min(t)),
            None => self.floor,
        }
    }

    /// The resume vector's bytes: the sources heard from most recently
    /// (at most [`MAX_RESUME_SOURCES`]) and the last position of each.
    pub fn vector(&self) -> Vec<u8> {
        let mut recent: Vec<(&Source, &(u64, u64))> = self.last.iter().collect();
        recent.sort_unstable_by_key(|(_, (_, heard))| std::cmp::Reverse(*heard));
        let origins: Vec<Origin> = (recent.into_iter().take(MAX_RESUME_SOURCES))
            .map(|(&source, &(position, _))| Origin { source, position })
            .collect();
        ResumeVector::encode(&origins)
    }

    /// Resuming at another relay from [`Positions::since`]: from now on, a
    /// source not held is taken only from there.
    pub fn resumed(&mut self) {
        self.floor = self.since();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(source: Source, position: u64) -> Option<Origin> {
        Some(Origin { source, position })
    }

    #[test]
    fn a_message_at_or_below_what_is_held_of_its_source_is_dropped() {
        let mut p = Positions::new(0);
        let (a, s) = (Source::Relay(1), Source::Session(9));
        assert!(p.take(10, at(a, 5)));
        assert!(p.take(11, at(s, 0)));
        assert!(!p.take(12, at(a, 5)), "the same message again");
        assert!(!p.take(12, at(a, 3)), "an earlier one of the same source");
        assert!(p.take(13, at(a, 6)));
        assert!(
            p.take(14, at(s, 2)),
            "a later one, past a gap the source left"
        );
        assert!(p.is_exact());
        assert_eq!(p.sources(), 2);
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
    fn the_vector_names_the_sources_heard_from_most_recently() {
        let mut p = Positions::new(0);
        for id in 0..(MAX_RESUME_SOURCES as u64 + 10) {
            assert!(p.take(id, at(Source::Session(id), id * 2)));
        }
        let bytes = p.vector();
        let vector = ResumeVector::new(&bytes).expect("a valid vector");
        assert_eq!(vector.len(), MAX_RESUME_SOURCES);
        let named: Vec<Origin> = vector.iter().collect();
        let newest = MAX_RESUME_SOURCES as u64 + 9;
        assert_eq!(named[0], at(Source::Session(newest), newest * 2).unwrap());
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

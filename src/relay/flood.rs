//! Bad input said in the log once per interval, never once per datagram: the
//! refusal counters that rose in the last [`SUMMARY_EVERY`], and the
//! sources that sent most of it.
//!
//! Which source sent what is kept in a table of [`TOP_SOURCES`] entries
//! (the Misra–Gries summary: a source outside the table takes a place by
//! lowering every count), so a flood from a million forged addresses costs
//! the same few bytes as one from a single host, and a source that sent
//! more than 1/[`TOP_SOURCES`] of the interval's refusals is always named.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::counters::Counters;

/// How often the log may say what was refused.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Sources kept per interval.
pub const TOP_SOURCES: usize = 8;

/// The refusals since the last summary and who sent them.
#[derive(Debug, Default)]
pub(super) struct Flood {
    /// The refusal counters as the last summary left them (empty: all 0).
    said: Vec<(&'static str, u64)>,
    /// `Counters::refused` when a source was last charged.
    seen: u64,
    /// At most [`TOP_SOURCES`] sources with a lower bound of what each sent
    /// (each count is at most the true one, by at most what went to no one).
    sources: Vec<(IpAddr, u64)>,
    /// When the next summary is due: `None` while nothing was refused.
    due: Option<Instant>,
}

impl Flood {
    /// After a datagram from `from` (`None`: a raw port or a timer): what
    /// the counters refused since the last call is charged to it.
    pub(super) fn after(&mut self, now: Instant, from: Option<IpAddr>, counters: &Counters) {
        let refused = counters.refused();
        if refused == self.seen {
            return;
        }
        let n = refused.wrapping_sub(self.seen);
        self.seen = refused;
        self.due.get_or_insert(now + SUMMARY_EVERY);
        let Some(ip) = from.map(|ip| ip.to_canonical()) else {
            return;
        };
        if let Some(entry) = self.sources.iter_mut().find(|(s, _)| *s == ip) {
            entry.1 += n;
        } else if self.sources.len() < TOP_SOURCES {
            self.sources.push((ip, n));
        } else {
            // Every count, and the newcomer's, goes down by the smallest;
            // whoever reaches nothing leaves.
            let least = (self.sources.iter().map(|&(_, c)| c)).fold(n, u64::min);
            for entry in &mut self.sources {
                entry.1 -= least;
            }
            self.sources.retain(|&(_, c)| c > 0);
            if n > least {
                self.sources.push((ip, n - least));
            }
        }
    }

    /// When [`Flood::summary`] has something to say.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.due
    }

    /// The line to log, once an interval with refusals has passed: each
    /// refusal counter that rose, by how much, and the sources that sent
    /// most of it.
    pub(super) fn summary(&mut self, now: Instant, counters: &Counters) -> Option<String> {
        if self.due.is_none_or(|at| now < at) {
            return None;
        }
        self.summary_now(counters)
    }

    /// The line to log for the refusals since the last summary, whether
    /// the interval has passed or not (at shutdown).
    pub(super) fn summary_now(&mut self, counters: &Counters) -> Option<String> {
        self.due = None;
        let counts = counters.refusals();
        // Nothing said yet is all from zero.
        let old = |i: usize| self.said.get(i).map_or(0, |&(_, n)| n);
        let rose: Vec<String> = (counts.iter().enumerate())
            .filter(|&(i, &(_, new))| new > old(i))
            .map(|(i, (name, new))| format!("{name}={}", new - old(i)))
            .collect();
        self.said = counts;
        self.seen = counters.refused();
        let mut sources = std::mem::take(&mut self.sources);
        if rose.is_empty() {
            return None;
        }
        sources.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let from = match sources.is_empty() {
            true => String::new(),
            false => {
                let named: Vec<String> = (sources.iter())
                    .map(|(ip, n)| format!("{ip} (at least {n})"))
                    .collect();
                format!("; most from {}", named.join(", "))
            }
        };
        Some(format!(
            "refused in the last {}s at most: {}{from}",
            SUMMARY_EVERY.as_secs(),
            rose.join(" ")
        ))
    }
}

/// A line that could come once per message (a full disk refusing each
/// one), said at most once per [`SUMMARY_EVERY`] with how many were not.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Quiet {
    /// When it was last said.
    said_at: Option<Instant>,
    /// Times it was not said since.
    unsaid: u64,
}

impl Quiet {
    /// `Some(times not said since the last)` if the line may be said at
    /// `now`, `None` if it is counted.
    pub(super) fn may_say(&mut self, now: Instant) -> Option<u64> {
        match self.said_at {
            Some(at) if now.saturating_duration_since(at) < SUMMARY_EVERY => {
                self.unsaid += 1;
                None
            }
            _ => {
                self.said_at = Some(now);
                Some(std::mem::take(&mut self.unsaid))
            }
        }
    }
}

/// ` (and N more like it since)` when `unsaid` is more than 0.
pub(super) fn more(unsaid: u64) -> String {
    match unsaid {
        0 => String::new(),
        n => format!(" (and {n} more like it since)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([203, 0, 113, last]))
    }

    #[test]
    fn a_flood_is_one_line_per_interval_naming_its_reasons_and_sources() {
        let t = Instant::now();
        let mut counters = Counters::default();
        let mut flood = Flood::default();
        assert_eq!(flood.next_deadline(), None, "nothing refused, no timer");
        for i in 0..10_000u32 {
            counters.dropped_not_protocol += 1;
            flood.after(t, ip(7), &counters);
            if i % 100 == 0 {
                counters.dropped_malformed += 1;
                flood.after(t, ip((i / 100 % 200) as u8 + 20), &counters);
            }
            assert_eq!(flood.summary(t, &counters), None, "not before the interval");
        }
        // A datagram that refused nothing charges no one.
        counters.messages_published += 1;
        flood.after(t, ip(9), &counters);
        let at = flood.next_deadline().expect("a summary is due");
        assert_eq!(at, t + SUMMARY_EVERY);
        let line = flood.summary(at, &counters).expect("one line");
        assert!(
            line.starts_with(
                "refused in the last 10s at most: dropped_not_protocol=10000 dropped_malformed=100; most from 203.0.113.7 (at least "
            ),
            "{line}"
        );
        assert!(!line.contains("203.0.113.9"), "{line}");
        assert_eq!(flood.next_deadline(), None, "quiet again");
        // The next interval starts from nothing.
        counters.dropped_forged += 3;
        flood.after(at, ip(1), &counters);
        let next = flood.next_deadline().unwrap();
        assert_eq!(
            flood.summary(next, &counters).as_deref(),
            Some(
                "refused in the last 10s at most: dropped_forged=3; most from 203.0.113.1 (at least 3)"
            )
        );
    }

    #[test]
    fn the_table_keeps_a_heavy_source_among_a_million_forged_ones() {
        let t = Instant::now();
        let mut counters = Counters::default();
        let mut flood = Flood::default();
        for i in 0..1_000_000u32 {
            counters.dropped_unproven += 1;
            let from = if i % 4 == 0 {
                ip(1)
            } else {
                Some(IpAddr::from(i.to_be_bytes()))
            };
            flood.after(t, from, &counters);
            assert!(flood.sources.len() <= TOP_SOURCES);
        }
        let line = flood.summary(t + SUMMARY_EVERY, &counters).unwrap();
        let named = line.split("most from ").nth(1).unwrap();
        assert!(named.starts_with("203.0.113.1 (at least "), "{line}");
    }

    #[test]
    fn a_line_per_message_is_said_once_per_interval_with_the_rest_counted() {
        let mut quiet = Quiet::default();
        let t = Instant::now();
        assert_eq!(quiet.may_say(t), Some(0));
        for i in 1..1000 {
            assert_eq!(quiet.may_say(t + Duration::from_micros(i)), None);
        }
        assert_eq!(quiet.may_say(t + SUMMARY_EVERY), Some(999));
        assert_eq!(more(999), " (and 999 more like it since)");
        assert_eq!(more(0), "");
    }

    #[test]
    fn the_relays_own_trouble_is_not_bad_input() {
        let names: Vec<&str> = Counters::default().refusals().iter().map(|r| r.0).collect();
        assert!(names.contains(&"dropped_malformed") && names.contains(&"tokens_refused"));
        for ours in [
            "dropped_log_full",
            "dropped_log_error",
            "dropped_unavailable",
        ] {
            assert!(!names.contains(&ours), "{ours}");
        }
    }

    #[test]
    fn refusals_without_a_source_are_said_without_one() {
        let t = Instant::now();
        let mut counters = Counters::default();
        let mut flood = Flood::default();
        counters.dropped_too_large += 2;
        flood.after(t, None, &counters);
        assert_eq!(
            flood.summary(t + SUMMARY_EVERY, &counters).as_deref(),
            Some("refused in the last 10s at most: dropped_too_large=2")
        );
    }
}

//! The runs of sequence numbers a sender knows are selectively
//! acknowledged, so that an acknowledgement costs what it newly covers.
//!
//! A relay under `--fsync interval` reports everything stored but not yet
//! durable as one selective range on every acknowledgement: thousands of
//! sequence numbers, the same ones again and again. Without this, the
//! sender walked every one of them on every acknowledgement, and its loss
//! scan walked the whole window behind them (62 % of a reliable publisher's
//! time, profiled). [`AckedRuns`] holds no more than [`MAX_RUNS`] runs and is
//! only ever a subset of what is acknowledged: forgetting a run costs a
//! longer walk, never a wrong answer.

use super::config::MAX_ACK_RANGES;

/// Most runs kept: twice what one acknowledgement may carry.
pub(super) const MAX_RUNS: usize = 2 * MAX_ACK_RANGES;

/// Disjoint, sorted runs `start..end` of acknowledged sequence numbers;
/// runs never touch (touching ones are merged).
#[derive(Debug, Default, Clone)]
pub(super) struct AckedRuns {
    runs: Vec<(u64, u64)>,
}

impl AckedRuns {
    /// Calls `new` with each part of `start..end` no run covers, in order,
    /// then records all of `start..end` as acknowledged.
    pub(super) fn insert(&mut self, start: u64, end: u64, mut new: impl FnMut(u64, u64)) {
        if start >= end {
            return;
        }
        // Runs ending before `start` neither overlap nor touch it.
        let first = self.runs.partition_point(|r| r.1 < start);
        let mut last = first;
        let mut at = start;
        while let Some(&(s, e)) = self.runs.get(last)
            && s <= end
        {
            if s > at {
                new(at, s);
            }
            at = at.max(e);
            last += 1;
        }
        if at < end {
            new(at, end);
        }
        let merged = match (self.runs.get(first), last.checked_sub(1)) {
            (Some(&(s, _)), Some(l)) if l >= first => (s.min(start), self.runs[l].1.max(end)),
            _ => (start, end),
        };
        self.runs.splice(first..last, [merged]);
        if self.runs.len() > MAX_RUNS {
            // The shortest run saves the least walking.
            if let Some(i) = (0..self.runs.len()).min_by_key(|&i| self.runs[i].1 - self.runs[i].0) {
                self.runs.remove(i);
            }
        }
    }

    /// Forgets what lies below `seq` (cumulatively acknowledged now).
    pub(super) fn forget_below(&mut self, seq: u64) {
        let gone = self.runs.partition_point(|r| r.1 <= seq);
        self.runs.drain(..gone);
        if let Some(first) = self.runs.first_mut() {
            first.0 = first.0.max(seq);
        }
    }

    /// Calls `visit` with each part of `from..to` no run covers, in order.
    pub(super) fn gaps(&self, from: u64, to: u64, mut visit: impl FnMut(u64, u64)) {
        let mut at = from;
        for &(s, e) in &self.runs[self.runs.partition_point(|r| r.1 <= from)..] {
            if s >= to {
                break;
            }
            if s > at {
                visit(at, s);
            }
            at = at.max(e);
        }
        if at < to {
            visit(at, to);
        }
    }

    /// Forgets every run: something acknowledged is not any more.
    pub(super) fn clear(&mut self) {
        self.runs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inserted(runs: &mut AckedRuns, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut new = Vec::new();
        runs.insert(start, end, |s, e| new.push((s, e)));
        new
    }

    fn gaps(runs: &AckedRuns, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        runs.gaps(from, to, |s, e| out.push((s, e)));
        out
    }

    #[test]
    fn an_insert_reports_only_what_no_run_covered() {
        let mut runs = AckedRuns::default();
        assert_eq!(inserted(&mut runs, 10, 20), [(10, 20)]);
        assert_eq!(
            inserted(&mut runs, 10, 25),
            [(20, 25)],
            "the same start, longer"
        );
        assert_eq!(inserted(&mut runs, 10, 25), [], "nothing new");
        assert_eq!(inserted(&mut runs, 30, 40), [(30, 40)]);
        assert_eq!(
            inserted(&mut runs, 5, 45),
            [(5, 10), (25, 30), (40, 45)],
            "the gaps around and between two runs"
        );
        assert_eq!(runs.runs, [(5, 45)], "merged into one");
        assert_eq!(inserted(&mut runs, 45, 50), [(45, 50)]);
        assert_eq!(runs.runs, [(5, 50)], "a touching run is merged");
        assert_eq!(inserted(&mut runs, 7, 7), [], "an empty range");
        assert_eq!(inserted(&mut runs, 9, 3), [], "an inverted range");
    }

    #[test]
    fn gaps_are_what_lies_between_runs() {
        let mut runs = AckedRuns::default();
        inserted(&mut runs, 10, 20);
        inserted(&mut runs, 30, 40);
        assert_eq!(gaps(&runs, 0, 50), [(0, 10), (20, 30), (40, 50)]);
        assert_eq!(gaps(&runs, 15, 35), [(20, 30)]);
        assert_eq!(gaps(&runs, 12, 18), []);
        assert_eq!(gaps(&runs, 40, 40), []);
        runs.forget_below(15);
        assert_eq!(runs.runs, [(15, 20), (30, 40)]);
        runs.forget_below(30);
        assert_eq!(runs.runs, [(30, 40)]);
        runs.clear();
        assert_eq!(gaps(&runs, 0, 5), [(0, 5)]);
    }

    #[test]
    fn runs_stay_bounded_and_a_subset_of_what_was_inserted() {
        let mut runs = AckedRuns::default();
        let mut acked = std::collections::BTreeSet::new();
        let mut rng = crate::rng::Rng::new(7);
        for _ in 0..5_000 {
            let start = rng.below(10_000);
            let end = start + rng.below(20);
            let before = runs.clone();
            let covered = |seq: u64| before.runs.iter().any(|&(s, e)| (s..e).contains(&seq));
            let new = inserted(&mut runs, start, end);
            for seq in start..end {
                let reported = new.iter().any(|&(s, e)| (s..e).contains(&seq));
                assert_ne!(
                    reported,
                    covered(seq),
                    "{seq}: new exactly when no run covered it"
                );
            }
            acked.extend(start..end);
            assert!(runs.runs.len() <= MAX_RUNS);
            assert!(
                runs.runs.windows(2).all(|w| w[0].1 < w[1].0),
                "sorted, apart"
            );
            for &(s, e) in &runs.runs {
                assert!(
                    (s..e).all(|seq| acked.contains(&seq)),
                    "{s}..{e} not all acked"
                );
            }
        }
    }
}

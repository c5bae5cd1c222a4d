//! Timers of the sans-IO cores: where every deadline lives, so that a core's
//! `poll_timeout` is the minimum of one structure.
//!
//! - [`TimerTable`]: a fixed set of single timers named by an enum (as
//!   quinn-proto's `connection/timer.rs`): the ARQ sender's RTO, probe,
//!   pacing and RACK timers, or a core's sync, retention and replay ticks.
//! - [`DeadlineQueue`]: one deadline per key for a set of keys that comes and
//!   goes (sessions, subscriptions, leases, reassemblies): a heap whose stale
//!   entries are told apart by generation and skipped.
//!
//! Both hold instants only: they read no clock (`now` is an argument) and run
//! nothing; their owner asks what expired and acts on it. Nothing here knows
//! what a timer means.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Instant;

/// The names of the `N` timers of a [`TimerTable`], usually a fieldless
/// enum.
pub trait TimerName<const N: usize>: Copy + 'static {
    /// Every timer, in table order: `ALL[t.index()]` is `t`.
    const ALL: [Self; N];
    /// This timer's slot in the table, below `N`.
    fn index(self) -> usize;
}

/// A fixed table of single timers, each stopped or set to one deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerTable<T, const N: usize> {
    /// Each timer's deadline, by [`TimerName::index`].
    deadlines: [Option<Instant>; N],
    /// The table is indexed by `T` only.
    names: PhantomData<T>,
}

impl<T: TimerName<N>, const N: usize> Default for TimerTable<T, N> {
    fn default() -> Self {
        TimerTable {
            deadlines: [None; N],
            names: PhantomData,
        }
    }
}

impl<T: TimerName<N>, const N: usize> TimerTable<T, N> {
    /// A table with every timer stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `timer` to fire at `at`, replacing its deadline if it had one.
    pub fn set(&mut self, timer: T, at: Instant) {
        self.deadlines[timer.index()] = Some(at);
    }

    /// Sets `timer` to `at`, or stops it if `at` is None.
    pub fn set_or_stop(&mut self, timer: T, at: Option<Instant>) {
        self.deadlines[timer.index()] = at;
    }

    /// The deadline of `timer`, if it is set.
    pub fn get(&self, timer: T) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    /// Stops `timer`.
    pub fn stop(&mut self, timer: T) {
        self.deadlines[timer.index()] = None;
    }

    /// True if `timer` is set to `now` or earlier. It stays set: the owner
    /// stops or sets it again as it handles it.
    pub fn is_expired(&self, timer: T, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The timers set to `now` or earlier, in table order.
    pub fn expired(&self, now: Instant) -> impl Iterator<Item = T> + '_ {
        T::ALL
            .into_iter()
            .filter(move |&timer| self.is_expired(timer, now))
    }

    /// The earliest deadline in the table.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().copied().min()
    }
}

/// Stale heap entries allowed beyond the live ones before the heap is
/// rebuilt: a small constant so a queue of few keys is not rebuilt at every
/// change.
const COMPACT_SLACK: usize = 64;

/// One heap entry: a key's deadline as it was set at `generation`.
#[derive(Debug, Clone)]
struct Entry<K> {
    at: Instant,
    /// Unique per `set`, so equal deadlines fire in the order they were set
    /// and an entry is live only while its key's generation is this one.
    generation: u64,
    key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.generation) == (other.at, other.generation)
    }
}

impl<K> Eq for Entry<K> {}

impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.generation).cmp(&(other.at, other.generation))
    }
}

/// One deadline per key, earliest first.
///
/// Setting a key's deadline again, or removing it, leaves its old heap
/// entry in place; the entry is stale (its generation is not the key's) and
/// is skipped when it reaches the top. The top is always live, so
/// [`DeadlineQueue::next_deadline`] is exact, and the heap is rebuilt when
/// stale entries outnumber live ones, so its size stays within twice the
/// number of keys plus a constant: the memory a peer can cause is that of the
/// keys its owner lets it have.
///
/// A deadline moved later at a high rate (a lease refreshed by every
/// datagram) is cheaper kept lazily by the owner: set it once, and when
/// [`DeadlineQueue::pop_expired`] yields the key, set it again to the
/// owner's current deadline if that is still ahead.
#[derive(Debug, Clone)]
pub struct DeadlineQueue<K> {
    /// Entries earliest first, live and stale.
    heap: BinaryHeap<Reverse<Entry<K>>>,
    /// Each key's deadline and the generation of its live entry.
    live: HashMap<K, (Instant, u64)>,
    /// The generation the next `set` gets.
    next_generation: u64,
}

impl<K: Hash + Eq + Clone> Default for DeadlineQueue<K> {
    fn default() -> Self {
        DeadlineQueue {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            next_generation: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> DeadlineQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys with a deadline.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True if no key has a deadline.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The deadline of `key`, if it has one.
    pub fn deadline(&self, key: &K) -> Option<Instant> {
        self.live.get(key).map(|&(at, _)| at)
    }

    /// Sets the deadline of `key` to `at`, earlier or later than before.
    pub fn set(&mut self, key: K, at: Instant) {
        if self.deadline(&key) == Some(at) {
            return;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.live.insert(key.clone(), (at, generation));
        self.heap.push(Reverse(Entry {
            at,
            generation,
            key,
        }));
        self.tidy();
    }

    /// Sets the deadline of `key` to `at`, or removes it if `at` is None.
    pub fn set_or_remove(&mut self, key: K, at: Option<Instant>) {
        match at {
            Some(at) => self.set(key, at),
            None => {
                self.remove(&key);
            }
        }
    }

    /// Removes the deadline of `key`; returns it, if it had one.
    pub fn remove(&mut self, key: &K) -> Option<Instant> {
        let (at, _) = self.live.remove(key)?;
        self.tidy();
        Some(at)
    }

    /// The earliest deadline of any key.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(entry)| entry.at)
    }

    /// Removes and returns a key whose deadline is `now` or earlier, the
    /// earliest first (keys due at the same time in the order they were
    /// set). Call it until it returns None; a key set again meanwhile to a
    /// time after `now` is not returned again.
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        if self.next_deadline()? > now {
            return None;
        }
        let Reverse(entry) = self.heap.pop().expect("peeked above");
        self.live.remove(&entry.key);
        self.tidy();
        Some(entry.key)
    }

    /// Restores the two invariants: the top entry is live, and stale
    /// entries are no more than the live ones plus [`COMPACT_SLACK`].
    fn tidy(&mut self) {
        if self.heap.len() > 2 * self.live.len() + COMPACT_SLACK {
            let live = &self.live;
            self.heap.retain(|Reverse(entry)| is_live(live, entry));
        }
        while let Some(Reverse(top)) = self.heap.peek() {
            if is_live(&self.live, top) {
                break;
            }
            self.heap.pop();
        }
    }
}

/// True if `entry` is its key's current deadline in `live`.
fn is_live<K: Hash + Eq>(live: &HashMap<K, (Instant, u64)>, entry: &Entry<K>) -> bool {
    live.get(&entry.key)
        .is_some_and(|&(_, generation)| generation == entry.generation)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Timer {
        Retransmit,
        Probe,
        Idle,
    }

    impl TimerName<3> for Timer {
        const ALL: [Timer; 3] = [Timer::Retransmit, Timer::Probe, Timer::Idle];
        fn index(self) -> usize {
            self as usize
        }
    }

    #[test]
    fn timer_names_index_their_own_slot() {
        for (i, timer) in Timer::ALL.into_iter().enumerate() {
            assert_eq!(timer.index(), i);
        }
    }

    #[test]
    fn a_new_table_has_no_deadline() {
        let table: TimerTable<Timer, 3> = TimerTable::new();
        assert_eq!(table.next_deadline(), None);
        assert_eq!(table.expired(Instant::now()).count(), 0);
    }

    #[test]
    fn the_next_deadline_is_the_earliest_set_timer() {
        let t = Instant::now();
        let mut table: TimerTable<Timer, 3> = TimerTable::new();
        table.set(Timer::Idle, t + 30 * MS);
        table.set(Timer::Retransmit, t + 20 * MS);
        table.set(Timer::Probe, t + 10 * MS);
        assert_eq!(table.next_deadline(), Some(t + 10 * MS));
        table.stop(Timer::Probe);
        assert_eq!(table.get(Timer::Probe), None);
        assert_eq!(table.next_deadline(), Some(t + 20 * MS));
        // Setting again replaces, later as well as earlier.
        table.set(Timer::Retransmit, t + 40 * MS);
        assert_eq!(table.next_deadline(), Some(t + 30 * MS));
        table.set_or_stop(Timer::Idle, None);
        assert_eq!(table.next_deadline(), Some(t + 40 * MS));
        table.set_or_stop(Timer::Idle, Some(t + MS));
        assert_eq!(table.get(Timer::Idle), Some(t + MS));
    }

    #[test]
    fn a_timer_expires_at_its_deadline_not_a_moment_before() {
        let t = Instant::now();
        let us = Duration::from_micros(1);
        let mut table: TimerTable<Timer, 3> = TimerTable::new();
        table.set(Timer::Retransmit, t + 20 * MS);
        table.set(Timer::Probe, t + 10 * MS);
        assert!(!table.is_expired(Timer::Probe, t + 10 * MS - us));
        assert!(table.is_expired(Timer::Probe, t + 10 * MS));
        assert!(
            !table.is_expired(Timer::Idle, t + 10 * MS),
            "a stopped timer never"
        );
        let due = |now| table.expired(now).collect::<Vec<_>>();
        assert_eq!(due(t + 20 * MS - us), [Timer::Probe]);
        assert_eq!(due(t + 20 * MS), [Timer::Retransmit, Timer::Probe]);
    }

    /// Every key `queue.pop_expired(now)` gives, in order.
    fn drain(queue: &mut DeadlineQueue<u32>, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop_expired(now)).collect()
    }

    #[test]
    fn keys_expire_earliest_first_and_ties_in_the_order_set() {
        let t = Instant::now();
        let mut queue = DeadlineQueue::new();
        queue.set(1, t + 30 * MS);
        queue.set(2, t + 10 * MS);
        queue.set(3, t + 20 * MS);
        queue.set(4, t + 10 * MS);
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.next_deadline(), Some(t + 10 * MS));
        assert!(drain(&mut queue, t + 10 * MS - MS).is_empty());
        assert_eq!(drain(&mut queue, t + 20 * MS), [2, 4, 3]);
        assert_eq!(queue.next_deadline(), Some(t + 30 * MS));
        assert_eq!(queue.deadline(&3), None, "an expired key is gone");
        assert_eq!(drain(&mut queue, t + 30 * MS), [1]);
        assert!(queue.is_empty());
        assert_eq!(queue.next_deadline(), None);
    }

    #[test]
    fn a_rescheduled_key_expires_only_at_its_new_deadline() {
        let t = Instant::now();
        let mut queue = DeadlineQueue::new();
        queue.set(7, t + 10 * MS);
        queue.set(8, t + 15 * MS);
        queue.set(7, t + 20 * MS);
        // The old entry of 7 is stale: the next deadline is 8's, exactly.
        assert_eq!(queue.next_deadline(), Some(t + 15 * MS));
        assert_eq!(drain(&mut queue, t + 15 * MS), [8]);
        assert!(drain(&mut queue, t + 20 * MS - MS).is_empty());
        assert_eq!(drain(&mut queue, t + 20 * MS), [7]);
        // Earlier works the same way.
        queue.set(9, t + 50 * MS);
        queue.set(9, t + 40 * MS);
        assert_eq!(queue.deadline(&9), Some(t + 40 * MS));
        assert_eq!(drain(&mut queue, t + 40 * MS), [9]);
        assert!(drain(&mut queue, t + 50 * MS).is_empty(), "once only");
    }

    #[test]
    fn a_removed_key_never_expires() {
        let t = Instant::now();
        let mut queue = DeadlineQueue::new();
        queue.set(1, t + 10 * MS);
        queue.set(2, t + 20 * MS);
        assert_eq!(queue.remove(&1), Some(t + 10 * MS));
        assert_eq!(queue.remove(&1), None);
        assert_eq!(queue.next_deadline(), Some(t + 20 * MS));
        queue.set_or_remove(2, None);
        assert!(drain(&mut queue, t + 30 * MS).is_empty());
        assert_eq!(queue.next_deadline(), None);
        queue.set_or_remove(2, Some(t + 40 * MS));
        assert_eq!(drain(&mut queue, t + 40 * MS), [2]);
    }

    #[test]
    fn a_key_set_again_while_expiring_waits_for_its_new_deadline() {
        // The lazy lease: the owner checks when it fires and sets it again
        // to the deadline it keeps itself.
        let t = Instant::now();
        let mut queue = DeadlineQueue::new();
        let lease = 100 * MS;
        let mut last_seen = t;
        queue.set(5, t + lease);
        last_seen += 60 * MS; // heard from: no queue operation
        let now = t + lease;
        let mut lapsed = Vec::new();
        while let Some(key) = queue.pop_expired(now) {
            if last_seen + lease > now {
                queue.set(key, last_seen + lease);
            } else {
                lapsed.push(key);
            }
        }
        assert!(lapsed.is_empty());
        assert_eq!(queue.next_deadline(), Some(t + 160 * MS));
    }

    #[test]
    fn stale_entries_stay_bounded_by_the_live_keys() {
        let t = Instant::now();
        let mut queue = DeadlineQueue::new();
        for key in 0..10 {
            queue.set(key, t + Duration::from_secs(1));
        }
        // A deadline moved earlier 100,000 times, each old entry left
        // behind the new one: the heap does not grow with them.
        let start = t + Duration::from_millis(500);
        for i in 1..=100_000u64 {
            queue.set(3, start - Duration::from_micros(i));
            assert!(queue.heap.len() <= 2 * queue.len() + COMPACT_SLACK);
        }
        assert_eq!(queue.len(), 10);
        assert_eq!(queue.next_deadline(), Some(start - 100 * MS));
        assert_eq!(drain(&mut queue, t + Duration::from_secs(1)).len(), 10);
    }
}

//! The time the sans-IO cores are given. They never read a clock: the
//! driver reads the real ones ([`crate::driver::now`]) and tests make any
//! time they like, so hours of timeouts run in microseconds.

use std::time::{Duration, Instant};

/// The current time, as the core sees it: a monotonic instant for timers and
/// a wall-clock stamp for message timestamps. Only the driver makes one from
/// the real clocks; tests make them at will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for leases and deadlines.
    pub instant: Instant,
    /// Wall-clock time in nanoseconds since the Unix epoch, stamped on messages.
    pub unix_nanos: u64,
}

impl Now {
    /// Wall-clock seconds since the Unix epoch.
    pub fn unix_secs(&self) -> u64 {
        self.unix_nanos / 1_000_000_000
    }

    /// This time moved forward by `d` on both clocks.
    pub fn after(self, d: Duration) -> Now {
        Now {
            instant: self.instant + d,
            unix_nanos: self.unix_nanos + d.as_nanos() as u64,
        }
    }
}

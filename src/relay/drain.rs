//! Draining before a shutdown (SIGTERM): no new subscription or publishing
//! session is taken (ERROR `unavailable`), while those there go on: the
//! relay is drained once every reliable subscriber has acknowledged all
//! its channel holds, every publishing session has nothing held or waiting
//! for its acknowledgement and none sent anything for [`DRAIN_QUIET`], and,
//! in a cluster, nothing waits to be bridged. The driver stops then, or at
//! `--drain-timeout`, whichever comes first.

use std::time::{Duration, Instant};

use super::Relay;
use super::channels::Storage;
use crate::time::Now;

/// How long publishing sessions must have been quiet for the relay to be
/// drained: a publisher with more to send sends it well within this.
pub const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// Why the relay refuses what a draining relay does not take.
pub(super) const SHUTTING_DOWN: &str = "the relay is shutting down";

impl Relay {
    /// Stops taking new subscriptions and publishing sessions; what is
    /// there goes on (see [`Relay::is_drained`]).
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// True if [`Relay::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// True once draining and nothing is left to finish at `now`: every
    /// reliable subscription acknowledged all its channel holds, every
    /// publishing session is settled and quiet, nothing waits for the
    /// cluster.
    pub fn is_drained(&self, now: Now) -> bool {
        self.draining
            && self.subscribers_caught_up()
            && self.publishers_settled(now.instant)
            && self.cluster.as_ref().is_none_or(|c| c.is_idle())
    }

    fn subscribers_caught_up(&self) -> bool {
        self.channels.iter().all(|channel| {
            let next = match &channel.storage {
                Storage::Open(log) => log.next_offset(),
                _ => return true,
            };
            let groups_done = channel.groups.iter().all(|g| g.is_done(next));
            (channel.subscribers.iter()).all(|s| match &s.arq {
                None => true,
                Some(arq) if s.share.is_some() => arq.is_idle() && groups_done,
                Some(arq) => arq.is_idle() && arq.next_seq() >= next,
            })
        })
    }

    fn publishers_settled(&self, now: Instant) -> bool {
        let quiet = self
            .last_reliable_publish
            .is_none_or(|at| now.saturating_duration_since(at) >= DRAIN_QUIET);
        quiet
            && !self.acks_due
            && (self.peers.iter()).all(|(_, p)| p.sessions.iter().all(|s| s.is_settled()))
    }
}

//! When appended records reach the disk, and when old segments go: the
//! durability mode's bookkeeping (which channels have unsynced records, when
//! the interval sync is due, the syncs handed to the driver's background
//! thread) and the retention check.
//!
//! It decides when; the channels' logs do the work. A failed sync stops its
//! channel: writes are refused from then on, never retried into silence.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::channels::{ChannelId, Channels, Storage};
use super::counters::Counters;
use crate::log::{FsyncMode, LogError, SyncJob};
use crate::time::Now;

/// How often retention limits are checked, when any are set.
const RETENTION_CHECK: Duration = Duration::from_secs(1);

/// A sync the driver should run off the event loop, then report with
/// [`super::Relay::handle_sync_done`].
#[derive(Debug)]
pub struct SyncRequest {
    /// Which channel (opaque to the driver; hand it back).
    pub channel: usize,
    /// The work.
    pub job: SyncJob,
}

/// The durability mode's state.
#[derive(Debug)]
pub(super) struct Durability {
    /// When appended records are synced.
    fsync: FsyncMode,
    /// Channels with appended records not yet synced.
    dirty: Vec<ChannelId>,
    /// When the interval sync is due, if anything is dirty.
    next_sync: Option<Instant>,
    /// Syncs for the driver to run in the background.
    sync_requests: VecDeque<SyncRequest>,
    /// When retention is next checked (None: no retention configured).
    next_retention: Option<Instant>,
}

impl Durability {
    /// Syncs as `fsync` says; retention first checked at `retention` (None:
    /// no retention configured).
    pub(super) fn new(fsync: FsyncMode, retention: Option<Instant>) -> Durability {
        Durability {
            fsync,
            dirty: Vec::new(),
            next_sync: None,
            sync_requests: VecDeque::new(),
            next_retention: retention,
        }
    }

    /// True if acknowledgements of stored messages wait for a background
    /// sync (`--fsync interval`).
    pub(super) fn acks_wait_for_sync(&self) -> bool {
        matches!(self.fsync, FsyncMode::Interval(_))
    }

    /// Notes a record appended to channel `id` at `now`.
    pub(super) fn appended(&mut self, now: Instant, id: ChannelId) {
        if self.fsync != FsyncMode::None && !self.dirty.contains(&id) {
            self.dirty.push(id);
            if let FsyncMode::Interval(every) = self.fsync {
                self.next_sync.get_or_insert(now + every);
            }
        }
    }

    /// When [`Durability::handle_timeout`] next has work.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.next_sync, self.next_retention]
            .into_iter()
            .flatten()
            .min()
    }

    /// Hands the interval sync to the driver and checks retention, if due.
    pub(super) fn handle_timeout(
        &mut self,
        now: Now,
        channels: &mut Channels,
        counters: &mut Counters,
    ) {
        if self.next_sync.is_some_and(|at| at <= now.instant) {
            self.next_sync = None;
            for id in std::mem::take(&mut self.dirty) {
                if let Storage::Open(log) = &mut channels[id].storage
                    && let Some(job) = log.begin_sync()
                {
                    self.sync_requests
                        .push_back(SyncRequest { channel: id, job });
                }
            }
        }
        if self.next_retention.is_some_and(|at| at <= now.instant) {
            for channel in channels.iter_mut() {
                if let Storage::Open(log) = &mut channel.storage {
                    match log.enforce_retention(now.unix_nanos) {
                        Ok(n) => counters.segments_deleted += n as u64,
                        Err(e) => {
                            tracing::warn!(channel = %channel.name, "retention: {e}");
                            counters.log_errors += 1;
                        }
                    }
                }
            }
            self.next_retention = Some(now.instant + RETENTION_CHECK);
        }
    }

    /// The next sync to run in the background, if any.
    pub(super) fn poll_sync(&mut self) -> Option<SyncRequest> {
        self.sync_requests.pop_front()
    }

    /// Records how a background sync of `channel` ended; true if the
    /// channel exists (acknowledgements waiting for it may go now).
    pub(super) fn handle_sync_done(
        &mut self,
        channels: &mut Channels,
        counters: &mut Counters,
        channel: usize,
        result: Result<u64, LogError>,
    ) -> bool {
        let Some(ch) = channels.get_mut(channel) else {
            return false;
        };
        counters.log_syncs += 1;
        match result {
            Ok(durable_to) => ch.durable_to = ch.durable_to.max(durable_to),
            Err(e) => {
                tracing::error!(channel = %ch.name, "sync failed, channel stopped: {e}");
                counters.log_errors += 1;
                ch.storage = Storage::Failed(format!("sync failed: {e}"));
            }
        }
        true
    }

    /// Under `--fsync always`: syncs what was appended since the last call,
    /// so that nothing depending on it leaves before it is on disk; one sync
    /// covers a whole batch (group commit).
    pub(super) fn before_send(&mut self, channels: &mut Channels, counters: &mut Counters) {
        if self.fsync == FsyncMode::Always && !self.dirty.is_empty() {
            self.sync_dirty(channels, counters);
        }
    }

    /// Syncs every channel's unsynced records now, whatever the mode: for a
    /// clean shutdown.
    pub(super) fn sync_all(&mut self, channels: &mut Channels, counters: &mut Counters) {
        self.dirty = channels.ids().collect();
        self.sync_dirty(channels, counters);
    }

    /// Syncs every channel with unsynced records, here and now.
    fn sync_dirty(&mut self, channels: &mut Channels, counters: &mut Counters) {
        self.next_sync = None;
        for id in std::mem::take(&mut self.dirty) {
            let channel = &mut channels[id];
            if let Storage::Open(log) = &mut channel.storage
                && log.is_dirty()
            {
                counters.log_syncs += 1;
                if let Err(e) = log.sync() {
                    tracing::error!(channel = %channel.name, "sync failed, channel stopped: {e}");
                    counters.log_errors += 1;
                    channel.storage = Storage::Failed(format!("sync failed: {e}"));
                }
            }
        }
    }
}

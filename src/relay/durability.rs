//! When appended records reach the disk, and when old segments go: the
//! durability mode's bookkeeping (which channels have unsynced records, when
//! the interval sync is due, the syncs handed to the driver's background
//! thread) and the retention check.
//!
//! Under `--fsync interval=MS`, records that something waits for (a reliable
//! publisher's acknowledgement, the cluster's copy) are synced at once, by
//! group commit: one sync per channel at a time, and when it ends the next
//! covers everything that arrived while it ran. Records nothing waits for
//! are synced within MS, in one group per interval.
//!
//! It decides when; the channels' logs do the work. A failed sync stops its
//! channel: writes are refused from then on, never retried into silence.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::channels::{Channel, ChannelId, Channels, Storage};
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

/// A channel's place in the bookkeeping, kept on the channel so that an
/// append costs the same however many channels there are.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SyncMarks {
    /// In `Durability::dirty`.
    dirty: bool,
    /// Something waits for its unsynced records to be durable.
    awaited: bool,
    /// Syncs handed out and not yet done.
    in_flight: u32,
}

/// The durability mode's state.
#[derive(Debug)]
pub(super) struct Durability {
    /// When appended records are synced.
    fsync: FsyncMode,
    /// Channels with appended records not yet synced (each once, as its
    /// marks say).
    dirty: Vec<ChannelId>,
    /// When the interval sync is due, if anything is dirty.
    next_sync: Option<Instant>,
    /// Channels whose group commit may start: awaited, with no sync
    /// running when they were put here (checked again when taken).
    ready: Vec<ChannelId>,
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
            ready: Vec::new(),
            sync_requests: VecDeque::new(),
            next_retention: retention,
        }
    }

    /// True if acknowledgements of stored messages wait for a background
    /// sync (`--fsync interval`).
    pub(super) fn acks_wait_for_sync(&self) -> bool {
        matches!(self.fsync, FsyncMode::Interval(_))
    }

    /// Notes a record appended to channel `id` at `now`; `awaited` if
    /// something waits for it to be durable (under `interval`, that sync
    /// starts as soon as the channel has none running).
    pub(super) fn appended(
        &mut self,
        now: Instant,
        channel: &mut Channel,
        id: ChannelId,
        awaited: bool,
    ) {
        if self.fsync == FsyncMode::None {
            return;
        }
        let marks = &mut channel.sync_marks;
        if !marks.dirty {
            marks.dirty = true;
            self.dirty.push(id);
            if let FsyncMode::Interval(every) = self.fsync {
                self.next_sync.get_or_insert(now + every);
            }
        }
        if awaited && self.acks_wait_for_sync() && !marks.awaited {
            marks.awaited = true;
            if marks.in_flight == 0 {
                self.ready.push(id);
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

    /// Starts the sync of every awaited channel that has none running; one
    /// that has waits for it to end (`handle_sync_done` puts it back).
    fn commit(&mut self, channels: &mut Channels) {
        for id in std::mem::take(&mut self.ready) {
            let marks = &mut channels[id].sync_marks;
            if marks.awaited && marks.in_flight == 0 {
                marks.awaited = false;
                self.request(channels, id);
            }
        }
    }

    /// Hands channel `id`'s unsynced records to the background thread.
    fn request(&mut self, channels: &mut Channels, id: ChannelId) {
        let channel = &mut channels[id];
        if let Storage::Open(log) = &mut channel.storage
            && let Some(job) = log.begin_sync()
        {
            channel.sync_marks.in_flight += 1;
            self.sync_requests
                .push_back(SyncRequest { channel: id, job });
        }
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
                channels[id].sync_marks.dirty = false;
                self.request(channels, id);
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

    /// The next sync to run in the background, if any. Awaited channels
    /// with no sync running start theirs here, after a batch of input, so
    /// that one sync covers the batch.
    pub(super) fn poll_sync(&mut self, channels: &mut Channels) -> Option<SyncRequest> {
        if !self.ready.is_empty() {
            self.commit(channels);
        }
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
        let marks = &mut ch.sync_marks;
        marks.in_flight = marks.in_flight.saturating_sub(1);
        if marks.in_flight == 0 && marks.awaited {
            // What arrived while it ran: the next group.
            self.ready.push(channel);
        }
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
        for id in channels.ids() {
            channels[id].sync_marks.dirty = true;
        }
        self.sync_dirty(channels, counters);
    }

    /// Syncs every channel with unsynced records, here and now.
    fn sync_dirty(&mut self, channels: &mut Channels, counters: &mut Counters) {
        self.next_sync = None;
        for id in std::mem::take(&mut self.dirty) {
            let channel = &mut channels[id];
            channel.sync_marks.dirty = false;
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

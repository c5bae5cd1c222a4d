//! A reliable subscriber that moves here from another relay of the cluster:
//! where each stored message came from (its origin, told in DELIVER to a
//! subscription that asks), and where in this relay's log such a subscriber
//! starts so that it misses nothing it had not received.
//!
//! Each relay stores every source's messages in that source's order (but
//! for copies that were on their way when a publisher moved here, stored
//! after its next messages), and interleaves sources in its own order, so
//! no one offset here matches where the subscriber was at the other relay.
//! What it says instead: for each source it heard from lately, a position
//! at or below which it holds everything, and a time before which it wants
//! nothing of the others. The relay starts at the first message stored at
//! or after that time, or earlier where a named source has a message the
//! subscriber lacks further back: it reads back from the head, newest
//! segment first, until every named source shows a message at or below
//! the position named. Starting early is safe (the client drops what it
//! holds, by origin). The walk is bounded: at most [`RESUME_SCAN_BYTES`]
//! each, and [`RESUME_BYTES_PER_SEC`] for all together (a resume past it
//! is refused, to be asked again).

use crate::log::{
    CLUSTER_SESSION, ChannelLog, LogError, REMOTE_CLIENT, REMOTE_SESSION, RecordMark,
};
use crate::wire::{Origin, ResumeVector, Source};

/// Most bytes of records one resume reads back through to find its start.
pub(super) const RESUME_SCAN_BYTES: usize = 64 << 20;

/// Bytes of records all resumes together may read back through a second
/// (each source may open 4 a second).
pub(super) const RESUME_BYTES_PER_SEC: u64 = 256 << 20;

/// Resumes one source may open a second.
pub(super) const RESUMES_PER_SOURCE: u32 = 4;

/// How far back a resume can make a relay follow a channel it did not
/// follow: JetStream forgets a consumer unused for as long.
pub(super) const RESUME_HORIZON: std::time::Duration = std::time::Duration::from_secs(3600);

/// The bytes of records resumes may still read back through, refilled at
/// [`RESUME_BYTES_PER_SEC`] up to a second's worth.
#[derive(Debug)]
pub(super) struct WalkBudget {
    available: u64,
    refilled: Option<std::time::Instant>,
}

impl WalkBudget {
    /// A second's worth.
    pub(super) fn new() -> WalkBudget {
        WalkBudget {
            available: RESUME_BYTES_PER_SEC,
            refilled: None,
        }
    }

    /// What one walk may read at `now`; zero when the budget is spent.
    pub(super) fn for_one(&mut self, now: std::time::Instant) -> usize {
        if let Some(then) = self.refilled {
            let earned =
                now.saturating_duration_since(then).as_secs_f64() * RESUME_BYTES_PER_SEC as f64;
            self.available = (self.available + earned as u64).min(RESUME_BYTES_PER_SEC);
        }
        self.refilled = Some(now);
        (self.available as usize).min(RESUME_SCAN_BYTES)
    }

    /// A walk read `bytes`.
    pub(super) fn spend(&mut self, bytes: usize) {
        self.available = self.available.saturating_sub(bytes as u64);
    }
}

/// Bytes a record is counted for in the walk besides its payload.
const RECORD_COST: usize = 32;

/// The origin of the record at `offset` marked `mark` on relay `id`, if
/// it can be told from the record alone (a step mark written before
/// cluster marks were whole cannot).
pub(super) fn origin_of(id: u64, offset: u64, mark: RecordMark) -> Option<Origin> {
    match mark {
        RecordMark::Full(m) if m.client == REMOTE_SESSION || m.client == CLUSTER_SESSION => {
            Some(Origin {
                source: Source::Session(m.session),
                position: m.seq,
            })
        }
        RecordMark::Full(m) if m.client == REMOTE_CLIENT => Some(Origin {
            source: Source::Relay(m.session),
            position: m.seq,
        }),
        // Unmarked, or stored by a session of an address before this relay
        // was in a cluster: this relay's own numbering, as the bridge sends it.
        RecordMark::None | RecordMark::Full(_) => Some(Origin {
            source: Source::Relay(id),
            position: offset,
        }),
        RecordMark::Next { .. } => None,
    }
}

/// The last position of `source` stored in `log`, if the log's session
/// table knows it.
fn last_stored(log: &ChannelLog, source: Source) -> Option<u64> {
    match source {
        Source::Relay(relay) => log.session_last_seq(REMOTE_CLIENT, relay),
        Source::Session(session) => {
            let copied = log.session_last_seq(REMOTE_SESSION, session);
            let here = log.session_last_seq(CLUSTER_SESSION, session);
            copied.max(here)
        }
    }
}

/// Whether a subscriber that holds `vector` and wants other sources'
/// messages from `since` on lacks a message of origin `origin` stored at
/// `timestamp`.
pub(super) fn lacks(vector: &[Origin], origin: Option<Origin>, timestamp: u64, since: u64) -> bool {
    match origin.and_then(|o| vector.iter().find(|v| v.source == o.source).map(|v| (o, v))) {
        Some((o, held)) => o.position > held.position,
        None => timestamp >= since,
    }
}

/// The first offset in `log` whose record was stored at or after `since`
/// (store times taken as rising with offsets), or the head: found by the
/// first record of each segment, then within one segment.
fn first_since(log: &mut ChannelLog, since: u64) -> Result<u64, LogError> {
    let first_ts = |log: &mut ChannelLog, base: u64| -> Result<Option<u64>, LogError> {
        let mut ts = None;
        log.scan(base.max(log.first_offset()), |r| {
            ts = Some(r.timestamp);
            false
        })?;
        Ok(ts)
    };
    let bases: Vec<u64> = log.segment_bases().collect();
    // The last segment that starts before `since`: the first record at or
    // after it is in that one or starts the next.
    let (mut lo, mut hi) = (0, bases.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match first_ts(log, bases[mid])? {
            Some(ts) if ts < since => lo = mid + 1,
            _ => hi = mid,
        }
    }
    let Some(&base) = lo.checked_sub(1).and_then(|i| bases.get(i)) else {
        return Ok(log.first_offset());
    };
    let mut found = log.next_offset();
    log.scan(base.max(log.first_offset()), |r| {
        if r.timestamp >= since {
            found = r.offset;
            return false;
        }
        true
    })?;
    Ok(found)
}

/// Where in `log` (relay `id`'s) a subscriber holding `vector`, wanting
/// other sources' messages stored from `since` on, starts, reading back at
/// most `budget` bytes of records; and the bytes it read.
///
/// The start is at or before the first message it lacks: at the first one
/// stored at or after `since`, or earlier where a named source has a
/// message it lacks further back. Looking for those reads back from the
/// head until each named source shows a message at or below what the
/// subscriber holds (everything older of it is held); past the budget it
/// gives up on them (a named source the relay it left was more than the
/// margin behind on: the limit the time rule has anyway).
pub(super) fn start(
    log: &mut ChannelLog,
    id: u64,
    vector: ResumeVector<'_>,
    since: u64,
    budget: usize,
) -> Result<(u64, usize), LogError> {
    let held: Vec<Origin> = vector.iter().collect();
    let by_time = first_since(log, since)?;
    // Named sources that may have a message here the subscriber lacks,
    // until one at or below what it holds is found further back. One whose
    // last stored position it holds needs no walk.
    let mut open: Vec<Origin> = (held.iter().copied())
        .filter(|o| match o.source {
            Source::Relay(relay) if relay == id => o.position.saturating_add(1) < log.next_offset(),
            source => last_stored(log, source).is_none_or(|last| last > o.position),
        })
        .collect();
    let mut found = by_time;
    let mut end = log.next_offset();
    let mut read = 0;
    let bases: Vec<u64> = log.segment_bases().collect();
    for base in bases.into_iter().rev() {
        if open.is_empty() || read > budget {
            break;
        }
        let from = base.max(log.first_offset());
        if from >= end {
            continue;
        }
        let mut first_here = None;
        log.scan(from, |r| {
            if r.offset >= end {
                return false;
            }
            read += r.payload.len() + RECORD_COST;
            let origin = origin_of(id, r.offset, r.mark);
            if first_here.is_none() && lacks(&held, origin, r.timestamp, since) {
                first_here = Some(r.offset);
            }
            // Everything of a source before a message the subscriber holds
            // it holds too; this relay's own messages are numbered by
            // offset, so they close as the walk passes below.
            open.retain(|o| {
                let own_below = o.source == Source::Relay(id) && r.offset <= o.position;
                let held_here =
                    origin.is_some_and(|m| m.source == o.source && m.position <= o.position);
                !(own_below || held_here)
            });
            true
        })?;
        if let Some(offset) = first_here {
            found = found.min(offset);
        }
        end = from;
    }
    Ok((found, read))
}

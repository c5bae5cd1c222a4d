//! A reliable subscriber that moves here from another relay of the cluster:
//! where each stored message came from (its origin, told in DELIVER to a
//! subscription that asks), and where in this relay's log such a subscriber
//! starts so that it misses nothing it had not received.
//!
//! Each relay stores every source's messages in that source's order, but
//! interleaves sources in its own order, so no one offset here matches
//! where the subscriber was at the other relay. What it says instead: the
//! last position it holds of each source it heard from lately, and a time
//! before which it wants nothing of the others. The relay walks back
//! through the channel's log, newest segment first, until every named
//! source has a message at or below the position named (everything older
//! of it the subscriber has) and a message is older than that time; it
//! starts at the first message past either. Starting early is safe (the
//! client drops what it holds, by origin), so the walk is bounded: past
//! [`RESUME_SCAN_BYTES`] it starts at the oldest stored message.

use crate::log::{
    CLUSTER_SESSION, ChannelLog, LogError, REMOTE_CLIENT, REMOTE_SESSION, RecordMark,
};
use crate::wire::{Origin, ResumeVector, Source};

/// Most bytes of records one resume reads back through to find its start.
pub(super) const RESUME_SCAN_BYTES: usize = 64 << 20;

/// Resumes all sources together may open a second (each source 2).
pub(super) const RESUMES_PER_SEC: u32 = 32;

/// How far back a resume can make a relay follow a channel it did not
/// follow: JetStream forgets a consumer unused for as long.
pub(super) const RESUME_HORIZON: std::time::Duration = std::time::Duration::from_secs(3600);

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

/// Where in `log` (relay `id`'s) a subscriber holding `vector`, wanting
/// other sources' messages stored from `since` on, starts: the first
/// message it lacks, or the head when it lacks none.
pub(super) fn start(
    log: &mut ChannelLog,
    id: u64,
    vector: ResumeVector<'_>,
    since: u64,
) -> Result<u64, LogError> {
    let held: Vec<Origin> = vector.iter().collect();
    // Sources with a message here that may be one the subscriber lacks,
    // until one at or below what it holds is found further back. One whose
    // last stored message it holds needs no walk.
    let mut open: Vec<Origin> = (held.iter().copied())
        .filter(|o| match o.source {
            Source::Relay(relay) if relay == id => o.position.saturating_add(1) < log.next_offset(),
            // A source the session table does not know (never stored
            // here, or an hour quiet) has nothing here to walk back to.
            source => last_stored(log, source).is_some_and(|last| last > o.position),
        })
        .collect();
    let mut time_open = true;
    let mut found = log.next_offset();
    let mut end = log.next_offset();
    let mut read = 0;
    let bases: Vec<u64> = log.segment_bases().collect();
    for base in bases.into_iter().rev() {
        if open.is_empty() && !time_open {
            break;
        }
        let from = base.max(log.first_offset());
        if from >= end {
            continue;
        }
        let mut first_here = None;
        let mut over = false;
        log.scan(from, |r| {
            if r.offset >= end {
                return false;
            }
            read += r.payload.len() + RECORD_COST;
            if read > RESUME_SCAN_BYTES {
                over = true;
                return false;
            }
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
            if r.timestamp < since {
                time_open = false;
            }
            true
        })?;
        if over {
            return Ok(log.first_offset());
        }
        if let Some(offset) = first_here {
            found = offset;
        }
        end = from;
    }
    Ok(found)
}

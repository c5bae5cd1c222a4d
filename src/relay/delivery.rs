//! Feeding one subscriber from its channel's log: a plain subscription that
//! starts in the past (replay, paced by a byte budget per tick), and a
//! reliable one (what its ARQ allows: retransmissions re-read from the log,
//! new messages, thin-stream redundancy; the pieces a subscriber reports it
//! holds are left out of a resend).
//!
//! Each function takes one subscriber, the log, the outbox and the counters,
//! and says what happened; the conductor in [`super`] keeps the queues and
//! timers and drops a subscription that cannot go on. Nothing here keeps a
//! copy of a message: every byte sent is read from the log.

use std::time::Instant;

use super::channels::{Channel, Storage, Subscriber};
use super::counters::Counters;
use super::outbox::Outbox;
use super::resume;
use crate::log::{ChannelLog, LogError};
use crate::reliable::MAX_ACK_RANGES;
use crate::time::Now;
use crate::wire;

/// Sends a message just stored at `offset` to the channel's live plain
/// subscribers and raw egress addresses; returns the reliable subscribers
/// (sub_id, address), which the caller pumps (reliable queue groups are
/// the caller's too: see `groups::dispatch`).
pub(super) fn fan_out(
    channel: &mut Channel,
    offset: u64,
    timestamp: u64,
    payload: &[u8],
    outbox: &mut Outbox,
    counters: &mut Counters,
) -> Vec<(u32, std::net::SocketAddr)> {
    let mut reliable = Vec::new();
    // Each queue group's least loaded member: (group, index, load).
    let mut picks: Vec<(&str, usize, f64)> = Vec::new();
    for (i, sub) in channel.subscribers.iter().enumerate() {
        let Some(group) = sub.group.as_deref() else {
            continue;
        };
        if sub.share.is_some() {
            continue; // a reliable group's: see `groups::dispatch`
        }
        let load = sub.load_at(timestamp);
        match picks.iter_mut().find(|(g, ..)| *g == group) {
            Some(pick) if load < pick.2 => *pick = (group, i, load),
            Some(_) => {}
            None => picks.push((group, i, load)),
        }
    }
    let chosen: Vec<usize> = picks.into_iter().map(|(_, i, _)| i).collect();
    // With more than one subscriber, the DELIVER frame is encoded once, on
    // first use, and copied to each live subscriber with its id written in.
    let mut encoded = (channel.subscribers.len() < 2).then_some(false);
    for (i, sub) in channel.subscribers.iter_mut().enumerate() {
        if sub.share.is_some() {
            continue;
        }
        if sub.group.is_some() {
            // Members are live only, at the head, whichever takes it.
            if !chosen.contains(&i) {
                sub.cursor = offset + 1;
                continue;
            }
            sub.recent = (sub.load_at(timestamp) + 1.0, timestamp);
            sub.cursor = offset;
        }
        if sub.arq.is_some() {
            reliable.push((sub.sub_id, sub.peer));
            continue;
        }
        // Only a subscription at the head gets it live; one that is
        // replaying reads it from the log when it gets there.
        if sub.cursor != offset {
            continue;
        }
        sub.cursor += 1;
        let once =
            *encoded.get_or_insert_with(|| outbox.encode_delivery(offset, timestamp, payload));
        let queued = match once {
            true => outbox.push_encoded_delivery(sub.peer, sub.sub_id),
            false => outbox.push_delivery(sub.peer, sub.sub_id, offset, timestamp, payload),
        };
        if queued > 0 {
            counters.messages_delivered += 1;
        } else {
            counters.send_dropped += 1;
        }
    }
    for &addr in &channel.raw_out {
        outbox.push_raw(addr, payload);
        counters.raw_forwarded += 1;
    }
    reliable
}

/// Feeds a replaying plain subscription up to `budget` bytes of stored
/// messages from its cursor (at least one message). Returns whether it is
/// still behind the head after it, and the bytes queued.
pub(super) fn replay(
    sub: &mut Subscriber,
    log: &mut ChannelLog,
    outbox: &mut Outbox,
    counters: &mut Counters,
    budget: usize,
) -> Result<(bool, usize), LogError> {
    if sub.cursor < log.first_offset() {
        // Retention removed what it was about to read.
        counters.replay_gaps += 1;
        sub.cursor = log.first_offset();
    }
    let (peer, sub_id) = (sub.peer, sub.sub_id);
    let mut spent = 0;
    let mut cursor = sub.cursor;
    let result = log.scan(cursor, |record| {
        let queued = outbox.push_delivery(
            peer,
            sub_id,
            record.offset,
            record.timestamp,
            record.payload,
        );
        spent += queued;
        if queued > 0 {
            counters.messages_replayed += 1;
        }
        cursor = record.offset + 1;
        spent < budget
    });
    if let Err(e) = result {
        sub.replaying = false;
        return Err(e);
    }
    sub.cursor = cursor;
    sub.replaying = cursor < log.next_offset();
    Ok((sub.replaying, spent))
}

/// An ACK frame from a reliable subscriber, as decoded.
#[derive(Debug, Clone, Copy)]
pub(super) struct SubscriberAck<'a> {
    /// Offsets acknowledged, or the pieces held of one message.
    pub(super) kind: wire::AckKind,
    /// Everything below is acknowledged; with `Pieces`, the message.
    pub(super) cumulative: u64,
    /// The subscriber's free window.
    pub(super) window: u32,
    /// The ranges, still encoded.
    pub(super) ranges: &'a [u8],
}

/// Takes a reliable subscriber's acknowledgement. `None` if the
/// subscription is not reliable; otherwise true if it may be able to send
/// more (pump it).
pub(super) fn on_ack(sub: &mut Subscriber, ack: SubscriberAck<'_>, now: Instant) -> Option<bool> {
    let arq = sub.arq.as_deref_mut()?;
    if ack.kind == wire::AckKind::Pieces {
        // Kept for messages still in flight, as many messages and ranges as
        // an honest subscriber sends; the ACK beside it does the rest.
        if (arq.snd_una()..arq.next_seq()).contains(&ack.cumulative) {
            let have = wire::ack_ranges(ack.ranges).take(MAX_ACK_RANGES).collect();
            let pieces_in = &mut sub.pieces_in;
            pieces_in.retain(|(offset, _)| *offset != ack.cumulative);
            let at = pieces_in.partition_point(|(offset, _)| *offset < ack.cumulative);
            pieces_in.insert(at, (ack.cumulative, have));
            pieces_in.truncate(wire::MAX_PIECES_REPORTED);
        }
        return Some(false);
    }
    arq.on_ack(
        ack.cumulative,
        wire::ack_ranges(ack.ranges),
        ack.window,
        now,
    );
    let done = arq.snd_una();
    sub.pieces_in.retain(|(offset, _)| *offset >= done);
    if let Some(share) = sub.share.as_deref_mut() {
        share.acknowledged(done);
    }
    Some(true)
}

/// What pumping a reliable subscription came to.
#[derive(Debug, Default)]
pub(super) struct Pumped {
    /// Why the subscription cannot go on, if it cannot.
    pub(super) trouble: Option<String>,
    /// A record failed its check: the channel must stop, for this reason.
    pub(super) damaged: Option<String>,
    /// When its ARQ next needs a call.
    pub(super) timer: Option<Instant>,
    /// Bytes of new messages queued (retransmissions not counted).
    pub(super) spent: usize,
    /// Its next message to send is at the channel's head: nothing stored
    /// waits for it.
    pub(super) caught_up: bool,
}

/// Sends a reliable subscription what its ARQ allows: retransmissions
/// re-read from the log, then new messages from its next offset (up to
/// `budget` bytes of them, at least one if the budget is not spent), with
/// earlier unacknowledged ones riding along where a datagram has room.
pub(super) fn pump(
    sub: &mut Subscriber,
    storage: &mut Storage,
    outbox: &mut Outbox,
    counters: &mut Counters,
    now: Now,
    budget: usize,
) -> Pumped {
    let (peer, sub_id, origins) = (sub.peer, sub.sub_id, sub.origins);
    let Some(arq) = sub.arq.as_deref_mut() else {
        return Pumped::default();
    };
    // The head of a delivery's frame: what it says before the payload.
    let head = |seq: u64, r: &crate::log::Record<'_>| {
        let origin = origins.and_then(|id| resume::origin_of(id, r.offset, r.mark));
        (sub_id, seq, r.timestamp, origin)
    };
    // A queue group member numbers the messages it was given: its sequence
    // numbers map to channel offsets, and its new messages come from the
    // group (`groups::dispatch`), not from here.
    let share = sub.share.as_deref();
    let offset_of = |seq: u64| match share {
        None => Some(seq),
        Some(share) => share.offset(seq),
    };
    let mut out = Pumped::default();
    if let Storage::Open(log) = storage {
        let mut resent = false;
        while let Some(seq) = arq.poll_retransmit(now.instant) {
            resent = true;
            let Some(offset) = offset_of(seq) else {
                continue; // not sent: nothing to send again
            };
            if offset < log.first_offset() {
                out.trouble = Some(format!(
                    "offset {offset} was deleted before it was acknowledged"
                ));
                break;
            }
            counters.reliable_retransmits += 1;
            let have = sub
                .pieces_in
                .iter()
                .find(|(offset, _)| *offset == seq)
                .map_or(&[][..], |(_, have)| have.as_slice());
            if let Err(e) = log.scan(offset, |r| {
                let (_, left_out) =
                    outbox.push_delivery_except(peer, head(seq, &r), r.payload, have);
                counters.pieces_not_resent += left_out;
                false
            }) {
                out.damaged = Some(e.to_string());
                break;
            }
        }
        let next = arq.next_seq();
        let clear = out.trouble.is_none() && out.damaged.is_none();
        let own = share.is_none();
        if own && clear && next < log.next_offset() && arq.can_send(now.instant) && budget > 0 {
            if next < log.first_offset() {
                out.trouble = Some(format!("offset {next} was deleted before it was sent"));
            } else if let Err(e) = log.scan(next, |r| {
                if !arq.can_send(now.instant) || out.spent >= budget {
                    return false;
                }
                arq.on_send_bytes(now.instant, r.payload.len());
                counters.messages_delivered += 1;
                out.spent +=
                    (outbox.push_delivery_except(peer, head(r.offset, &r), r.payload, &[])).0;
                true
            }) {
                out.damaged = Some(e.to_string());
            }
        }
        out.caught_up = !own || arq.next_seq() >= log.next_offset();
        // Thin-stream redundancy: new messages went out; earlier
        // unacknowledged ones ride along where the datagram has room.
        let clear = out.trouble.is_none() && out.damaged.is_none();
        if clear && !resent && arq.next_seq() > next {
            arq.bundle(next, |seq| {
                let mut fitted = false;
                let read = log.scan(seq, |r| {
                    fitted = r.offset == seq
                        && outbox.push_delivery_if_room(peer, head(seq, &r), r.payload);
                    false
                });
                read.is_ok() && fitted
            });
        }
    }
    if out.trouble.is_none() {
        out.trouble = out.damaged.clone();
    }
    if arq.is_failed() {
        out.trouble = Some("no acknowledgement from the subscriber".into());
    }
    out.timer = arq.poll_timeout();
    out
}

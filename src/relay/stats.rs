//! What a STATS answer lists: the relay's counters, then per-stream
//! counters of reliable sessions and subscriptions (for at most 100
//! streams, so one request's work is bounded), one page of them per
//! answer, sized to the request.

use std::net::SocketAddr;

use super::channels::Channels;
use super::outbox::Outbox;
use super::peers::Peers;
use crate::wire::{self, Frame};

/// Streams listed at most: every STATS request lists them all to page
/// through, so this bounds the work one request costs.
const MAX_STREAMS: usize = 100;

/// The bytes an answer's entries may take, for a request padded with
/// `padding` bytes: the answer is never larger than the request. `None` if
/// no answer fits (an unpadded request).
pub(super) fn room(padding: u16) -> Option<usize> {
    (wire::STATS_REQUEST_FIXED + usize::from(padding)).checked_sub(wire::STATS_FIXED)
}

/// Counters of each reliable publishing session and reliable subscription,
/// named `session ADDR/ID NAME` and `subscription ADDR/ID NAME`; with
/// `only`, just that address's (what says who else is connected is for
/// admins).
pub(super) fn stream_stats(
    peers: &Peers,
    channels: &Channels,
    only: Option<SocketAddr>,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut streams = 0;
    let shown = |addr: &SocketAddr| only.is_none_or(|o| o == *addr);
    for (addr, peer) in peers.iter() {
        if !shown(addr) {
            continue;
        }
        for s in &peer.sessions {
            if streams == MAX_STREAMS {
                return out;
            }
            streams += 1;
            let r = s.receiver().stats();
            let name = |what: &str| format!("session {addr}/{} {what}", s.id);
            out.push((name("received"), r.received));
            out.push((name("duplicates"), r.duplicates));
            out.push((name("out_of_order"), r.out_of_order));
            out.push((name("window"), u64::from(s.receiver().ack().window)));
        }
    }
    for channel in channels.iter() {
        for sub in channel.subscribers.iter().filter(|s| shown(&s.peer)) {
            let Some(arq) = &sub.arq else { continue };
            if streams == MAX_STREAMS {
                return out;
            }
            streams += 1;
            let st = arq.stats();
            let name = |what: &str| format!("subscription {}/{} {what}", sub.peer, sub.sub_id);
            out.push((name("sent"), st.sent));
            out.push((name("retransmits"), st.retransmits));
            out.push((name("timeouts"), st.timeouts));
            out.push((
                name("rtt_us"),
                arq.srtt().map_or(0, |d| d.as_micros() as u64),
            ));
            out.push((name("window"), arq.cwnd()));
            out.push((name("in_flight"), arq.in_flight()));
        }
    }
    out
}

/// Queues for `to` the page of `counters` then `streams` that starts at
/// entry `cursor` and fits `room` bytes.
pub(super) fn push_page(
    outbox: &mut Outbox,
    to: SocketAddr,
    counters: Vec<(&'static str, u64)>,
    streams: &[(String, u64)],
    cursor: u32,
    room: usize,
) {
    let all = counters
        .into_iter()
        .chain(streams.iter().map(|(k, v)| (k.as_str(), *v)));
    let (page, next) = wire::stats_page(all, cursor, room);
    outbox.push_frame(
        to,
        &Frame::Stats {
            cursor,
            next,
            entries: wire::StatEntries::List(&page),
        },
    );
}

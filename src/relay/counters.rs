//! The relay's counters: plain integers bumped on the hot path, listed by name
//! for the STATS reply and the exit log.

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Everything the relay counts. Drops are counted by reason, so an
        /// operator can tell an attack from a misconfigured client.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl Counters {
            /// Every counter's name and what it counts (its doc comment).
            pub const HELP: &'static [(&'static str, &'static str)] = &[
                $( (stringify!($name), concat!($($doc),*)), )*
            ];

            /// The sum of the counters of refused input (`is_refusal`):
            /// what a flood of bad datagrams raises.
            pub fn refused(&self) -> u64 {
                let mut total = 0u64;
                $( if const { is_refusal(stringify!($name)) } {
                    total = total.wrapping_add(self.$name);
                } )*
                total
            }

            /// Every counter of refused input (`is_refusal`), by name.
            pub fn refusals(&self) -> Vec<(&'static str, u64)> {
                let mut all = Vec::new();
                $( if const { is_refusal(stringify!($name)) } {
                    all.push((stringify!($name), self.$name));
                } )*
                all
            }

            /// Every counter by name, followed by the gauges `channels` and
            /// `subscriptions` that the caller supplies.
            pub fn entries(&self, channels: usize, subscriptions: usize) -> Vec<(&'static str, u64)> {
                vec![
                    $( (stringify!($name), self.$name), )*
                    ("channels", channels as u64),
                    ("subscriptions", subscriptions as u64),
                ]
            }
        }
    };
}

/// True for a counter of refused input: every `dropped_*` but those the
/// relay's own state causes (a full or failed log, a channel not served or
/// a drain), refused address tokens and refused handshakes.
pub const fn is_refusal(name: &str) -> bool {
    const fn same(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    let name = name.as_bytes();
    let prefix = b"dropped_";
    let ours = same(name, b"dropped_log_full")
        || same(name, b"dropped_log_error")
        || same(name, b"dropped_unavailable");
    (name.len() > prefix.len() && same(name.split_at(prefix.len()).0, prefix) && !ours)
        || same(name, b"tokens_refused")
        || same(name, b"handshakes_refused")
}

counters! {
    /// Datagrams that arrived at the protocol socket.
    datagrams_received,
    /// Bytes that arrived at the protocol socket and the raw ports.
    bytes_received,
    /// Frames decoded from protocol datagrams.
    frames_received,
    /// Messages published through the protocol.
    messages_published,
    /// Datagrams that arrived at raw ingest ports (each one a message).
    raw_received,
    /// Deliver frames queued for subscribers.
    messages_delivered,
    /// Messages forwarded as plain datagrams to raw egress addresses.
    raw_forwarded,
    /// Datagrams without the udprelay magic, dropped without reply.
    dropped_not_protocol,
    /// Datagrams or frames that did not decode.
    dropped_malformed,
    /// Datagrams of another protocol version.
    dropped_bad_version,
    /// Requests for something this relay does not serve.
    dropped_unsupported,
    /// Messages over the maximum message size.
    dropped_too_large,
    /// Requests refused by a channel or subscription limit.
    dropped_limit,
    /// Unsubscribes naming no subscription.
    dropped_unknown_subscription,
    /// Frames only a relay sends (deliver, pong, error...), received.
    dropped_unexpected,
    /// Messages refused because their channel is not served (damaged log).
    dropped_unavailable,
    /// Messages refused because the disk had no room for them.
    dropped_log_full,
    /// Messages refused because the log failed to write them.
    dropped_log_error,
    /// Stored messages sent to subscriptions that started in the past.
    messages_replayed,
    /// Subscriptions that asked for offsets no longer (or never) stored.
    replay_gaps,
    /// Log syncs (msync) done.
    log_syncs,
    /// Log failures: failed syncs, damage found while reading, retention errors.
    log_errors,
    /// Segments deleted by retention.
    segments_deleted,
    /// Reliable publishing sessions started.
    sessions_opened,
    /// Reliable publishing sessions dropped with their client's lease.
    sessions_expired,
    /// Retransmitted reliable messages that were already received, dropped.
    duplicates_dropped,
    /// Messages sent again to reliable subscribers (re-read from the log).
    reliable_retransmits,
    /// Messages of this relay the cluster stored (PubAck).
    bridge_published,
    /// Messages of this relay the cluster did not store (sent again).
    bridge_failed,
    /// Messages never bridged: the channel name is not a NATS subject, or
    /// retention deleted them first.
    bridge_skipped,
    /// Messages of other relays appended from the cluster.
    bridge_received,
    /// Messages from the cluster already stored (or this relay's own).
    bridge_duplicates,
    /// Messages from the cluster that came before an earlier one of their
    /// source, asked for again.
    bridge_ahead,
    /// Messages a reliable queue group member left without acknowledging,
    /// given to another member.
    group_redeliveries,
    /// Pieces of large messages not sent again because the reliable
    /// subscriber said it had them.
    pieces_not_resent,
    /// Reliable subscriptions dropped because the subscriber stopped
    /// answering or needed what retention deleted.
    subscribers_lost,
    /// Unreliable messages dropped because a piece did not arrive in time.
    fragments_expired,
    /// Error frames sent.
    errors_sent,
    /// Error replies withheld by the rate limit.
    errors_suppressed,
    /// Subscriptions created.
    subscriptions_opened,
    /// Subscriptions ended by their subscriber.
    subscriptions_closed,
    /// Subscriptions dropped because their lease lapsed.
    subscriptions_expired,
    /// Channels that held nothing and served no one, forgotten so their
    /// slots are free again.
    channels_forgotten,
    /// Datagrams whose source is one of the relay's own sockets, dropped:
    /// answering would make the relay feed itself.
    dropped_own_address,
    /// Frames that need a proven address (subscribe, acknowledge, reliable
    /// publish, stats...) from an address without a valid token, dropped.
    dropped_unproven,
    /// Answers to an unproven address withheld: larger than what it sent.
    dropped_reply_too_large,
    /// Address tokens sent.
    tokens_sent,
    /// VALIDATE frames whose token was forged, expired or for another
    /// address.
    tokens_refused,
    /// Datagrams from a source no host sends from (port 0, an unspecified,
    /// broadcast or multicast address), dropped unanswered.
    dropped_bad_source,
    /// Keyed sessions opened by a handshake.
    handshakes,
    /// Handshakes refused: unknown key, expired credential, a secret that
    /// did not verify, a replayed first message, or no room for a session.
    handshakes_refused,
    /// Keyed sessions ended: idle, credential expired, or replaced.
    auth_sessions_ended,
    /// Keyed sessions, subscriptions and publishing sessions ended by a
    /// reload that removed their key or withdrew their permission (each
    /// client told with an ERROR).
    revoked,
    /// Datagrams without a valid seal where the relay requires one
    /// (`--auth required`), or sealed ones at a relay with no keys,
    /// dropped unanswered.
    dropped_unauthenticated,
    /// Sealed datagrams that did not verify: unknown session, forged or
    /// changed, or from another address than the session's.
    dropped_forged,
    /// Sealed datagrams whose nonce was seen before (or is too old): a
    /// replay, dropped.
    dropped_replayed,
    /// Requests refused for a missing permission.
    dropped_denied,
    /// Messages over their key's publishing rate.
    dropped_quota,
    /// Datagrams handed to the kernel.
    datagrams_sent,
    /// Datagrams that waited in the send queue for a full socket buffer.
    send_queued,
    /// Datagrams dropped because the send queue was full.
    send_dropped,
    /// Sends that failed with an error other than a full buffer.
    send_errors,
    /// Receives that failed with an error.
    recv_errors,
}

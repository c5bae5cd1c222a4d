//! The relay core: channels and their logs, subscriptions as leases, fan-out,
//! replay from the log, plain-UDP ingest and egress, and the counters that say
//! what happened.
//!
//! It owns no socket and reads no clock; its only I/O is appending to and
//! reading from its channels' logs (memory writes and reads, except the syncs
//! it asks the driver to run). Everything a peer sends is hostile until
//! decoded: bad input becomes a counted drop (and a rate-limited ERROR reply
//! where the sender speaks the protocol), never a panic.
//!
//! # Calling it
//!
//! As quinn-proto's `Connection` is driven, in this order:
//!
//! 1. `handle_*` with what happened: [`Relay::handle_datagram`] and
//!    [`Relay::handle_raw`] for each datagram read, [`Relay::handle_timeout`]
//!    once [`Relay::poll_timeout`] is reached, [`Relay::handle_sync_done`]
//!    when a background sync finished.
//! 2. `poll_*` until `None`: [`Relay::poll_transmit`] for the datagrams to
//!    send (after every batch of input: frames for one destination are
//!    packed together until it is called), [`Relay::poll_sync`] for the syncs
//!    to run off the event loop.
//! 3. [`Relay::poll_timeout`] for when to call again, if nothing arrives.
//!
//! # The pieces
//!
//! `Relay` is the conductor: it decodes, checks limits, and wires together
//! pieces that each own their state, take what they need as arguments, say
//! what happened, and are tested alone:
//!
//! - `channels`: the channel table (by name, within the limit, idle ones
//!   forgotten), each channel's storage, subscribers and raw egress.
//! - `subscriptions`: opening and ending subscriptions within the limits,
//!   the replay queue, reliable subscriptions' timers and acknowledgements.
//! - `groups`: reliable queue groups: a channel's messages handed out to
//!   the members, each to the least loaded, and what a member leaves
//!   unacknowledged given to another.
//! - `wildcards`: subscriptions to patterns (`sensors.>`), each following
//!   the channels it matches as ordinary subscriptions under the relay's ids.
//! - `publishing`: the table of reliable publishing sessions (limits,
//!   memory, acknowledgements, how far ended ones had stored), and in
//!   `sessions` one session (reordering, pieces of large messages).
//! - `reassembly`: unreliable messages arriving in pieces, within a budget.
//! - `delivery`: fan-out of a stored message, replay, and the reliable
//!   subscriber's sends (all read from the log).
//! - `peers`: client addresses holding state, their leases, and what each
//!   key holds across its addresses.
//! - `quota`: each key's publishing rates (messages and bytes per second).
//! - `durability`: when appended records are synced, and retention.
//! - `validation`: address tokens, the proof that a peer receives at the
//!   address it claims; until then it is answered with at most the bytes
//!   it sent.
//! - `answer`: what goes back to the sender of a datagram: its proof, the
//!   tokens, the budget of an unproven address, errors.
//! - `secure`: with a key file, the keyed sessions: handshakes answered,
//!   sealed datagrams opened, everything to a session's address sealed,
//!   who sent the datagram being handled and what it may do.
//! - `cluster`: with `--cluster`, what goes up to NATS JetStream, what
//!   this relay follows, and where another relay's message goes here.
//! - `resume`: each stored message's origin (told to subscribers that
//!   ask), and where a reliable subscriber that moved here from another
//!   relay of the cluster starts.
//! - `drain`: a relay shutting down takes nothing new and says when what
//!   it has is finished.
//! - `reload`: limits, raw ports and the key file from a new configuration
//!   (what a key removed or a permission withdrawn ended, `rekey_tests`).
//! - `replies`: the reply budget and the relay's own addresses.
//! - `flood`: bad input said in the log once per interval, with the
//!   sources that sent most of it.
//! - `stats`: the paged STATS answer.
//! - `outbox`: datagrams packed per destination; `counters`: what happened.

mod answer;
mod channels;
mod cluster;
mod counters;
mod delivery;
mod drain;
mod durability;
mod flood;
mod groups;
mod outbox;
mod peers;
mod publishing;
mod quota;
mod reassembly;
mod reload;
mod replies;
mod resume;
mod secure;
mod sessions;
mod stats;
mod subscriptions;
mod validation;
mod wildcards;

pub use crate::time::Now;
pub use cluster::{
    Bridged, Interest, Origin, Outgoing, Receipt, Remote, Source, WINDOW as BRIDGE_WINDOW,
};
pub use counters::Counters;

/// One channel's figures for a metrics exporter (see
/// [`Relay::channel_gauges`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelGauge {
    /// The channel's name ("other" for the sum of the channels not shown).
    pub name: String,
    /// Messages stored (next offset less the oldest kept).
    pub messages: u64,
    /// The offset its next message gets.
    pub next_offset: u64,
    /// Bytes of its segment files.
    pub stored_bytes: u64,
    /// Its subscriptions.
    pub subscribers: u64,
}
pub use drain::DRAIN_QUIET;
pub use durability::SyncRequest;
pub use outbox::{Payload, Transmit};
pub use reload::Revoked;
pub use replies::OwnAddressError;
#[cfg(test)]
pub(crate) use secure::MAX_SESSIONS_PER_KEY;

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::auth::{Action, KeyFileError};
use crate::config::{AuthMode, RelayConfig};
use crate::log::{CLUSTER_SESSION, DataDir, LogError, SessionMark};
use crate::wire::{self, ErrorCode, Frame};
use channels::{ChannelId, Channels, Storage};
use durability::Durability;
use outbox::Outbox;
use peers::Owner;
use peers::Peers;
use publishing::{Offered, Publishing};
use reassembly::{Added, Holder, Reassembler};
use replies::{OwnAddresses, SourceBuckets, TokenBucket};
use resume::{RESUME_HORIZON, RESUMES_PER_SOURCE, WalkBudget};
use secure::{Secure, Who};
use sessions::Piece;
use subscriptions::Subscriptions;
use validation::AddressTokens;
use wildcards::Wildcards;

/// Why a relay could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be opened or recovered.
    #[error("{0}")]
    Log(#[from] LogError),
    /// The operating system gave no randomness for the token secret.
    #[error("no randomness for the address-token secret: {0}")]
    Random(std::io::Error),
    /// The key file could not be read or is not valid.
    #[error("key file {0}")]
    Keys(#[from] KeyFileError),
}

/// Address tokens the relay sends per second at most to addresses it has
/// no proof for (each no larger than the datagram that asked for it).
const TOKEN_REPLIES_PER_SEC: u32 = 10_000;

/// The relay's whole state, driven by calls that carry the time.
#[derive(Debug)]
pub struct Relay {
    /// Largest payload accepted.
    max_message_size: usize,
    /// Every channel, by id and by name.
    channels: Channels,
    /// Addresses holding subscriptions or sessions, with their leases.
    peers: Peers,
    /// Subscriptions: limits, replay, reliable delivery's timers.
    subscriptions: Subscriptions,
    /// Wildcard subscriptions and the channels each follows.
    wildcards: Wildcards,
    /// Reliable publishing sessions: limits, memory, what they stored.
    publishing: Publishing,
    /// Unreliable messages arriving in pieces.
    reassembly: Reassembler,
    /// Channel of each raw ingest port, by the driver's index.
    raw_in: Vec<ChannelId>,
    /// Limits replies that anyone can ask for from any source address:
    /// errors and STATS pages.
    error_replies: TokenBucket,
    /// Makes and checks address tokens.
    tokens: AddressTokens,
    /// Limits address tokens sent to unproven addresses.
    token_replies: TokenBucket,
    /// Limits replies to unproven datagrams per source.
    source_replies: SourceBuckets,
    /// Limits new wildcard subscriptions per source (each scans every
    /// channel).
    pattern_opens: SourceBuckets,
    /// Shutting down: no new subscription or publishing session (see
    /// `drain`).
    draining: bool,
    /// When the last RELIABLE_PUBLISH arrived (a draining relay waits for
    /// its publishers to go quiet).
    last_reliable_publish: Option<Instant>,
    /// Limits resuming subscriptions per source (each reads back through
    /// its channel's log), and all together.
    resume_opens: SourceBuckets,
    resume_walks: WalkBudget,
    /// While a datagram from an unproven address is handled: that address
    /// and the bytes that may still be sent to it.
    unproven: Option<(SocketAddr, usize)>,
    /// The relay's own socket addresses, never sent to.
    own: OwnAddresses,
    /// The load PONG reports when asked (see [`Relay::set_load`]).
    load: u32,
    /// The key file and its sessions; `None` serves everyone unsealed.
    secure: Option<Secure>,
    /// Who sent the datagram being handled.
    who: Who,
    /// Datagrams waiting to be sent.
    outbox: Outbox,
    /// What happened, for operators.
    counters: Counters,
    /// Refusals since the log last said what was refused.
    flood: flood::Flood,
    /// A full disk refusing messages, said once in a while.
    disk_full: flood::Quiet,
    /// The locked data directory, where new channel logs are created.
    data_dir: DataDir,
    /// When appended records are synced, and old segments deleted.
    durability: Durability,
    /// With `--cluster`: what goes up to the cluster, and what this relay
    /// wants from it.
    cluster: Option<cluster::Cluster>,
    /// With a cluster: when reliable publishers are acknowledged.
    cluster_ack: crate::config::ClusterAck,
    /// Bridged offsets moved since publishers waiting on them were last
    /// acknowledged.
    acks_due: bool,
}

impl Relay {
    /// Opens (and locks) the data directory, recovers every channel in it,
    /// and creates the channels named by the raw ports. A channel whose log
    /// cannot be trusted is kept, refused to clients, and logged.
    pub fn open(config: &RelayConfig, now: Now) -> Result<Relay, OpenError> {
        let data_dir = DataDir::open(&config.data_dir, config.log.clone())?;
        let opened = data_dir.open_channels(&config.truncate_corrupt)?;
        let retention = config.log.retain_bytes.is_some() || config.log.retain_age.is_some();
        let mut relay = Relay {
            max_message_size: config.max_message_size,
            channels: Channels::new(config.max_channels),
            peers: Peers::new(config.lease),
            subscriptions: Subscriptions::new(subscriptions::Limits {
                max: config.max_subscriptions,
                max_per_client: config.max_subscriptions_per_client,
                lease: config.lease,
                replay_budget: (config.replay_rate / 1000).max(1) as usize,
                arq: config.arq,
            }),
            // Every new channel is matched against every pattern: far fewer
            // of them than of subscriptions.
            wildcards: Wildcards::new(
                (config.max_subscriptions / 100).max(16),
                config.max_subscriptions_per_client.min(64),
            ),
            publishing: Publishing::new(publishing::Limits {
                max: config.max_sessions,
                // One address's sessions are limited as its subscriptions are.
                max_per_client: config.max_subscriptions_per_client,
                memory: config.session_memory,
                arq: config.arq,
            }),
            reassembly: Reassembler::new(config.reassembly_memory, config.max_message_size),
            raw_in: Vec::new(),
            error_replies: TokenBucket::new(config.error_replies_per_sec),
            tokens: AddressTokens::new(now.instant).map_err(OpenError::Random)?,
            token_replies: TokenBucket::new(TOKEN_REPLIES_PER_SEC),
            source_replies: SourceBuckets::new(),
            pattern_opens: SourceBuckets::with_rate(2),
            draining: false,
            last_reliable_publish: None,
            resume_opens: SourceBuckets::with_rate(RESUMES_PER_SOURCE),
            resume_walks: WalkBudget::new(),
            unproven: None,
            own: OwnAddresses::default(),
            load: 0,
            secure: match &config.keys {
                Some(path) => Some(Secure::load(
                    path,
                    config.auth == AuthMode::Required,
                    config.max_auth_sessions,
                    (config.lease * 2).max(secure::MIN_IDLE),
                )?),
                None => None,
            },
            who: Who::Open,
            outbox: Outbox::new(config.datagram_size),
            counters: Counters::default(),
            flood: flood::Flood::default(),
            disk_full: flood::Quiet::default(),
            data_dir,
            durability: Durability::new(config.log.fsync, retention.then_some(now.instant)),
            cluster: None,
            cluster_ack: config.cluster_ack,
            acks_due: false,
        };
        for opened in opened {
            let storage = Storage::recovered(&opened.name, opened.log);
            let id = relay.channels.find_or_create(&opened.name);
            relay.channels[id].storage = storage;
        }
        // Channels named in the configuration exist from the start, whatever
        // the limit on channels that clients create.
        for (_, name) in &config.raw_in {
            let id = relay.channels.pin(name);
            relay.raw_in.push(id);
        }
        for (name, addr) in &config.raw_out {
            let id = relay.channels.pin(name);
            relay.channels[id].raw_out.push(*addr);
        }
        Ok(relay)
    }

    /// Tells the core the addresses of the relay's own sockets (and, where
    /// one is bound to every address, the machine's addresses), so that it
    /// never sends to them: a datagram claiming to come from one is dropped
    /// unanswered, and a raw egress to one is refused.
    pub fn set_own_addresses(
        &mut self,
        sockets: Vec<SocketAddr>,
        local_ips: Vec<IpAddr>,
    ) -> Result<(), OwnAddressError> {
        self.own = OwnAddresses { sockets, local_ips };
        for channel in self.channels.iter() {
            if let Some(&addr) = channel.raw_out.iter().find(|a| self.own.contains(**a)) {
                return Err(OwnAddressError {
                    channel: channel.name.to_string(),
                    addr,
                });
            }
        }
        Ok(())
    }

    /// What happened so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// For the driver to count what happens at the socket.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Live subscriptions across all clients.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.count()
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.channels.count()
    }

    /// The offset the channel's next message will get, if the channel exists.
    pub fn next_offset(&self, channel: &str) -> Option<u64> {
        self.channels.next_offset(channel)
    }

    /// The `top` channels with the most messages stored (by next offset),
    /// each with its figures, and the rest summed (named "other"): what a
    /// metrics exporter shows without a series per channel.
    pub fn channel_gauges(&self, top: usize) -> (Vec<ChannelGauge>, ChannelGauge) {
        let gauge = |c: &channels::Channel| {
            let (first, next) = c.storage.offsets().unwrap_or_default();
            let stored_bytes = match &c.storage {
                Storage::Open(log) => log.stats().bytes,
                _ => 0,
            };
            ChannelGauge {
                name: c.name.to_string(),
                messages: next - first,
                next_offset: next,
                stored_bytes,
                subscribers: c.subscribers.len() as u64,
            }
        };
        let mut order: Vec<(u64, &channels::Channel)> = (self.channels.iter())
            .map(|c| (c.storage.offsets().map_or(0, |(_, next)| next), c))
            .collect();
        let cut = top.min(order.len());
        if cut < order.len() {
            order.select_nth_unstable_by(cut, |a, b| b.0.cmp(&a.0));
        }
        let mut shown: Vec<ChannelGauge> = order[..cut].iter().map(|(_, c)| gauge(c)).collect();
        shown.sort_by(|a, b| b.next_offset.cmp(&a.next_offset).then(a.name.cmp(&b.name)));
        let mut other = ChannelGauge {
            name: "other".into(),
            ..ChannelGauge::default()
        };
        for (_, c) in &order[cut..] {
            let g = gauge(c);
            other.messages += g.messages;
            other.next_offset += g.next_offset;
            other.stored_bytes += g.stored_bytes;
            other.subscribers += g.subscribers;
        }
        (shown, other)
    }

    /// Channels that cannot be served, with the reason.
    pub fn failed_channels(&self) -> Vec<(&str, &str)> {
        self.channels.failed()
    }

    /// Handles one datagram that arrived at the protocol socket from `from`.
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, datagram: &[u8]) {
        self.receive(now, from, datagram);
        // What it made the relay refuse is charged to its source, for the
        // log's summary.
        (self.flood).after(now.instant, Some(from.ip()), &self.counters);
    }

    fn receive(&mut self, now: Now, from: SocketAddr, datagram: &[u8]) {
        self.counters.datagrams_received += 1;
        self.counters.bytes_received += datagram.len() as u64;
        if self.own.contains(from) {
            // Forged, or a loop: any answer would come back to us.
            self.counters.dropped_own_address += 1;
            return;
        }
        if !replies::can_be_a_source(from) {
            // Forged: no host sends from there, and an answer to a
            // broadcast or multicast address would reach many.
            self.counters.dropped_bad_source += 1;
            return;
        }
        // Until a token proves the address, it gets at most the bytes it
        // sent, counting every datagram header an answer adds.
        self.unproven = Some((from, datagram.len()));
        match &mut self.secure {
            None => self.handle_frames(now, from, datagram, false),
            Some(secure) if crate::auth::is_sealed(datagram) => {
                match secure.open(now, from, datagram) {
                    Ok(who) => {
                        let plain = secure.opened();
                        self.who = who;
                        self.unproven = None;
                        self.peers.heard_from(from, now.instant);
                        self.handle_frames(now, from, &plain, true);
                        if let Some(secure) = &mut self.secure {
                            secure.give_back(plain);
                        }
                    }
                    Err(secure::Refusal::Forged) => self.counters.dropped_forged += 1,
                    Err(secure::Refusal::Replayed) => self.counters.dropped_replayed += 1,
                    Err(secure::Refusal::Expired(addr, id)) => {
                        self.counters.dropped_unauthenticated += 1;
                        self.end_keyed_sessions(&[(id, addr, None)]);
                    }
                }
            }
            Some(secure) => {
                self.who = secure.plain_sender();
                if self.who == Who::Stranger {
                    self.stranger_frames(now, from, datagram);
                } else {
                    self.handle_frames(now, from, datagram, false);
                }
            }
        }
        self.who = Who::Open;
        self.unproven = None;
        self.tell_lost(now);
    }

    /// Ends keyed sessions (id, address, and an ERROR `denied` to tell its
    /// client, if any): what the outbox holds for them (that ERROR too) is
    /// sealed first, under the session, so nothing queued goes out in the
    /// clear once it is gone; then each address loses what it held.
    fn end_keyed_sessions(&mut self, ending: &[(u32, SocketAddr, Option<String>)]) {
        if ending.is_empty() {
            return;
        }
        for (_, addr, why) in ending {
            if let Some(reason) = why {
                self.tell_denied(*addr, reason);
            }
        }
        if let Some(secure) = &mut self.secure {
            let ends: Vec<SocketAddr> = ending.iter().map(|e| secure::canonical(e.1)).collect();
            let mut queued = Vec::new();
            while let Some(t) = self.outbox.pop() {
                if ends.contains(&secure::canonical(t.destination)) {
                    // Sealed now; once the session is gone it passes as is.
                    match secure.seal(t) {
                        Some(t) => queued.push(t),
                        None => self.counters.send_errors += 1,
                    }
                } else {
                    queued.push(t); // sealed when it goes, as ever
                }
            }
            for &(id, _, _) in ending {
                secure.end(id);
            }
            for t in queued {
                self.outbox.push_raw(t.destination, &t.payload);
            }
        }
        for &(_, addr, _) in ending {
            self.session_ended(addr);
        }
    }

    /// A keyed session ended: what its address held goes with it, so
    /// nothing opened under the key is sent there in the clear.
    fn session_ended(&mut self, addr: SocketAddr) {
        self.counters.auth_sessions_ended += 1;
        let expired = self.remove_peer(addr);
        self.counters.subscriptions_expired += expired as u64;
    }

    /// Handles one datagram that arrived at raw ingest port `index` (in the
    /// order of the configuration's `raw_in`): it becomes one message.
    pub fn handle_raw(&mut self, now: Now, index: usize, datagram: &[u8]) {
        self.receive_raw(now, index, datagram);
        (self.flood).after(now.instant, None, &self.counters);
    }

    fn receive_raw(&mut self, now: Now, index: usize, datagram: &[u8]) {
        self.counters.raw_received += 1;
        self.counters.bytes_received += datagram.len() as u64;
        let Some(&channel) = self.raw_in.get(index) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if datagram.len() > self.max_message_size {
            self.counters.dropped_too_large += 1;
            return;
        }
        // A plain sender cannot be told why; the drop is counted.
        let _ = self.append(now, channel, None, datagram);
        self.tell_lost(now);
    }

    /// The earliest time at which [`Relay::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.peers.next_deadline(),
            self.subscriptions.next_deadline(),
            self.reassembly.next_deadline(),
            self.durability.next_deadline(),
            self.secure.as_ref().and_then(Secure::next_deadline),
            self.flood.next_deadline(),
            self.cluster
                .as_ref()
                .and_then(cluster::Cluster::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Does whatever is due at `now`: lapsed leases, reliable subscriptions'
    /// timers, replay, interval sync, retention.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some(addr) = self.peers.pop_lapsed(now.instant) {
            let expired = self.remove_peer(addr);
            self.counters.subscriptions_expired += expired as u64;
        }
        self.counters.fragments_expired += self.reassembly.expire(now.instant);
        let ended: Vec<(u32, SocketAddr, Option<String>)> = (self.secure.as_mut())
            .map(|s| s.sweep(now))
            .unwrap_or_default()
            .into_iter()
            .map(|(id, addr)| (id, addr, None))
            .collect();
        self.end_keyed_sessions(&ended);
        self.subscriptions.handle_timeout(
            now,
            &mut self.channels,
            &mut self.peers,
            &mut self.outbox,
            &mut self.counters,
        );
        self.tell_lost(now);
        self.durability
            .handle_timeout(now, &mut self.channels, &mut self.counters);
        if let Some(cluster) = &mut self.cluster {
            let patterns = (self.wildcards.patterns())
                .filter(|p| crate::subject::is_bridgeable_pattern(p))
                .map(String::from);
            cluster.handle_timeout(now.instant, &mut self.channels, patterns);
        }
        (self.flood).after(now.instant, None, &self.counters);
        if let Some(line) = self.flood.summary(now.instant, &self.counters) {
            tracing::warn!("{line}");
        }
    }

    /// Logs what was refused since the log last said (at shutdown: the
    /// summary due later would never come).
    pub fn say_refused(&mut self) {
        if let Some(line) = self.flood.summary_now(&self.counters) {
            tracing::warn!("{line}");
        }
    }

    /// The next sync to run in the background, if any. Call after every
    /// batch of input and after [`Relay::handle_sync_done`]: under
    /// `--fsync interval`, what a reliable publisher waits for is synced by
    /// group commit, one sync per channel at a time covering all that
    /// arrived while the one before ran.
    pub fn poll_sync(&mut self) -> Option<SyncRequest> {
        self.durability.poll_sync(&mut self.channels)
    }

    /// Reports how a background sync ended. A failed sync stops the channel:
    /// its writes are refused from then on, never retried into silence.
    pub fn handle_sync_done(&mut self, channel: usize, result: Result<u64, LogError>) {
        let synced = (self.durability).handle_sync_done(
            &mut self.channels,
            &mut self.counters,
            channel,
            result,
        );
        if let Some(cluster) = &mut self.cluster
            && channel < self.channels.ids().end
        {
            // More of it may go to the cluster now.
            cluster.appended(&mut self.channels, channel);
        }
        if synced {
            for (addr, session) in self.publishing.take_awaiting_sync() {
                self.ack_session(addr, session);
            }
        }
    }

    /// Syncs every channel's unsynced records now, whatever the mode: for a
    /// clean shutdown.
    pub fn sync_all(&mut self) {
        self.durability
            .sync_all(&mut self.channels, &mut self.counters);
    }

    /// The next datagram to send, if any. Call until `None` after every batch
    /// of input: frames for one destination are packed into one datagram until
    /// this is called.
    ///
    /// Under `--fsync always`, records appended since the last call are
    /// synced first, so nothing that depends on them leaves before they are
    /// on disk; one sync covers the whole batch (group commit).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.durability
            .before_send(&mut self.channels, &mut self.counters);
        if std::mem::take(&mut self.acks_due) && self.acks_wait_for_cluster() {
            for (addr, session) in self.publishing.take_awaiting_sync() {
                self.ack_session(addr, session);
            }
        }
        loop {
            let t = self.outbox.pop()?;
            let Some(secure) = &mut self.secure else {
                return Some(t);
            };
            // Everything to an address that holds a session is sealed;
            // what cannot be is dropped, never sent in the clear.
            match secure.seal(t) {
                Some(t) => return Some(t),
                None => self.counters.send_errors += 1,
            }
        }
    }

    fn handle_frame(&mut self, now: Now, from: SocketAddr, frame: Frame<'_>) {
        match frame {
            Frame::Publish { channel, payload } => self.publish(now, from, channel, payload),
            Frame::Subscribe {
                sub_id,
                mode,
                start,
                channel,
                group,
                origins,
                resume,
            } => {
                let request = subscriptions::Request {
                    sub_id,
                    mode,
                    start,
                    owner: self.owner(),
                    wildcard: None,
                    group,
                    origins: self.cluster.as_ref().map(|c| c.id).filter(|_| origins),
                };
                let held =
                    self.holds_subscription(from, sub_id) || self.wildcards.contains(from, sub_id);
                if self.draining && !held {
                    self.counters.dropped_unavailable += 1;
                    self.reply_error(now, from, ErrorCode::UNAVAILABLE, drain::SHUTTING_DOWN);
                } else if let wire::StartPosition::Resume { since } = start {
                    self.resume(now, from, request, channel, (since, resume));
                } else if group.is_some() {
                    self.join(now, from, request, channel);
                } else if crate::subject::is_pattern(channel) {
                    self.subscribe_pattern(now, from, request, channel);
                } else {
                    // The same id for a single channel replaces a pattern.
                    self.end_pattern(from, sub_id);
                    self.subscribe(now, from, request, channel);
                }
            }
            Frame::Unsubscribe { sub_id } if self.wildcards.contains(from, sub_id) => {
                self.end_pattern(from, sub_id);
                self.counters.subscriptions_closed += 1;
            }
            Frame::Unsubscribe { sub_id } => {
                let (channels, peers) = (&mut self.channels, &mut self.peers);
                let closed =
                    (self.subscriptions).close(from, sub_id, channels, peers, &mut self.counters);
                if let Err(refusal) = closed {
                    self.reply_error(now, from, refusal.code, &refusal.reason);
                }
            }
            Frame::ReliablePublish {
                session,
                seq,
                acked_below,
                more,
                channel,
                payload,
            } => {
                let piece = Piece { seq, more, payload };
                self.last_reliable_publish = Some(now.instant);
                let open = (self.peers.get(&from))
                    .is_some_and(|p| p.sessions.iter().any(|s| s.id == session));
                if self.draining && !open {
                    self.counters.dropped_unavailable += 1;
                    self.reply_error(now, from, ErrorCode::UNAVAILABLE, drain::SHUTTING_DOWN);
                } else {
                    self.reliable_publish(now, from, session, acked_below, channel, piece)
                }
            }
            Frame::Fragment {
                msg_id,
                index,
                count,
                channel,
                chunk,
            } => {
                let piece = reassembly::Piece {
                    from,
                    msg_id,
                    index,
                    count,
                    channel,
                    chunk,
                };
                self.fragment(now, piece)
            }
            Frame::Ping { nonce, load } => {
                let pong = Frame::Pong {
                    nonce,
                    load: load.then_some(self.load),
                };
                if self.may_answer(from, pong.encoded_len()) {
                    self.outbox.push_frame(from, &pong);
                }
            }
            Frame::StatsRequest { cursor, padding } => self.stats(now, from, cursor, padding),
            Frame::Ack {
                kind: kind @ (wire::AckKind::Subscription | wire::AckKind::Pieces),
                id,
                cumulative,
                window,
                ranges,
            } => {
                let ack = delivery::SubscriberAck {
                    kind,
                    cumulative,
                    window,
                    ranges,
                };
                self.subscriptions.on_ack(
                    now,
                    from,
                    id,
                    ack,
                    &mut self.channels,
                    &mut self.peers,
                    &mut self.outbox,
                    &mut self.counters,
                );
            }
            // Frames a relay sends, never receives. No reply: answering an
            // ERROR with an ERROR could loop between two relays forever.
            Frame::Subscribed { .. }
            | Frame::Ack { .. }
            | Frame::Deliver { .. }
            | Frame::DeliverFragment { .. }
            | Frame::Pong { .. }
            | Frame::Error { .. }
            | Frame::Stats { .. }
            | Frame::AddressToken { .. }
            | Frame::HandshakeReply { .. }
            | Frame::Matched { .. }
            | Frame::Validate { .. } => self.counters.dropped_unexpected += 1,
            // Taken before this, in `handle_frames`, which knows whether the
            // datagram is proven.
            Frame::Handshake { .. } => self.counters.dropped_unexpected += 1,
        }
    }

    /// True if a client may send a message of `len` bytes to `channel`:
    /// not too large, and the channel exists or there is room for it.
    /// Otherwise counted, and the client told why.
    fn admissible(
        &mut self,
        now: Now,
        from: SocketAddr,
        action: Action,
        channel: &str,
        len: usize,
    ) -> bool {
        if action == Action::Publish && crate::subject::is_pattern(channel) {
            // `*` and `>` tokens name patterns, which only SUBSCRIBE takes.
            self.counters.dropped_malformed += 1;
            let reason =
                format!("cannot publish to {channel:?}: a `*` or `>` token makes it a pattern");
            self.reply_error(now, from, ErrorCode::BAD_CHANNEL, &reason);
            false
        } else if !self.permitted(now, from, action, channel) {
            false
        } else if len > self.max_message_size {
            self.refuse_too_large(now, from, Some(len));
            false
        } else if !self.channels.allowed(channel) {
            self.refuse_channel(now, from);
            false
        } else {
            action != Action::Publish || self.within_rate(now, from, len)
        }
    }

    /// True (and charged) if a message of `len` bytes from the sender of
    /// the datagram being handled is within its key's publishing rates.
    /// Over them, it is dropped and counted, and the key told at most once
    /// a second: a reliable publisher, not acknowledged, sends it again.
    fn within_rate(&mut self, now: Now, from: SocketAddr, len: usize) -> bool {
        let who = self.who;
        let Some(Err(over)) =
            (self.secure.as_mut()).map(|s| s.charge_publish(who, now.instant, len))
        else {
            return true;
        };
        self.counters.dropped_quota += 1;
        if over.tell {
            self.reply_error(now, from, ErrorCode::LIMIT_REACHED, &over.to_string());
        }
        false
    }

    /// Who a new subscription or session of the sender of the datagram
    /// being handled is charged to besides its address.
    fn owner(&self) -> Owner {
        self.secure
            .as_ref()
            .map_or(Owner::ADDRESS, |s| s.owner(self.who))
    }

    /// True if the sender of the datagram being handled may do `action` on
    /// `channel`. A keyed client is told which permission it lacks; anyone
    /// else is told nothing.
    fn permitted(&mut self, now: Now, from: SocketAddr, action: Action, channel: &str) -> bool {
        let who = self.who;
        let Some(Err(denied)) = self.secure.as_mut().map(|s| s.check(who, action, channel)) else {
            return true;
        };
        self.counters.dropped_denied += 1;
        if matches!(self.who, Who::Keyed { .. }) {
            self.reply_error(now, from, ErrorCode::DENIED, &denied.to_string());
        }
        false
    }

    fn refuse_channel(&mut self, now: Now, from: SocketAddr) {
        self.counters.dropped_limit += 1;
        self.reply_error(now, from, ErrorCode::LIMIT_REACHED, "too many channels");
    }

    /// Refuses a message over the maximum: of `len` bytes when its length
    /// is known, else (it came in pieces, cut off once past the maximum)
    /// only larger.
    fn refuse_too_large(&mut self, now: Now, from: SocketAddr, len: Option<usize>) {
        self.counters.dropped_too_large += 1;
        let max = self.max_message_size;
        let reason = match len {
            Some(len) => format!("message of {len} bytes exceeds the maximum of {max}"),
            None => format!("message larger than the maximum of {max} bytes"),
        };
        self.reply_error(now, from, ErrorCode::TOO_LARGE, &reason);
    }

    fn publish(&mut self, now: Now, from: SocketAddr, channel: &str, payload: &[u8]) {
        if !self.admissible(now, from, Action::Publish, channel, payload.len()) {
            return;
        }
        let id = self.channels.find_or_create(channel);
        match self.append(now, id, None, payload) {
            Ok(_) => self.counters.messages_published += 1,
            Err(reason) => self.reply_error(now, from, ErrorCode::UNAVAILABLE, &reason),
        }
    }

    /// Appends `payload` to the channel's log, then sends it to every live
    /// subscriber and raw egress of the channel. On error nothing was stored
    /// or sent; the drop is counted and the reason returned.
    fn append(
        &mut self,
        now: Now,
        id: ChannelId,
        session: Option<SessionMark>,
        payload: &[u8],
    ) -> Result<u64, String> {
        let channel = &mut self.channels[id];
        let first = matches!(channel.storage, Storage::Empty);
        let stored = channel.store(&self.data_dir, now.unix_nanos, session, payload);
        let offset = stored.map_err(|refused| {
            if let channels::Refused::NoSpace(e) = &refused
                && let Some(unsaid) = self.disk_full.may_say(now.instant)
            {
                // A full disk refuses every message: said once in a while.
                let more = flood::more(unsaid);
                tracing::warn!(channel = %channel.name, "cannot store: {e}{more}");
            }
            refused.counted(&mut self.counters)
        })?;
        // A reliable publisher's ack, or the cluster's copy, waits for it.
        let awaited = session.is_some() || self.cluster.is_some();
        (self.durability).appended(now.instant, &mut self.channels[id], id, awaited);
        if let Some(cluster) = &mut self.cluster {
            cluster.appended(&mut self.channels, id);
        }
        if first && self.wildcards.count() > 0 {
            // A channel's first message: the wildcards matching it follow
            // it from here.
            self.follow_new(now, id, offset);
        }
        let reliable = delivery::fan_out(
            &mut self.channels[id],
            offset,
            now.unix_nanos,
            payload,
            &mut self.outbox,
            &mut self.counters,
        );
        for (sub_id, peer) in reliable {
            self.subscriptions.pump(
                now,
                id,
                peer,
                sub_id,
                &mut self.channels,
                &mut self.peers,
                &mut self.outbox,
                &mut self.counters,
            );
        }
        if !self.channels[id].groups.is_empty() {
            (self.subscriptions).dispatch_all(
                now,
                id,
                &mut self.channels,
                &mut self.outbox,
                &mut self.counters,
            );
        }
        Ok(offset)
    }

    fn reliable_publish(
        &mut self,
        now: Now,
        from: SocketAddr,
        session: u64,
        acked_below: u64,
        channel: &str,
        piece: Piece<'_>,
    ) {
        if !self.admissible(now, from, Action::Publish, channel, piece.payload.len()) {
            return;
        }
        let offered = self.publishing.offer(
            now.instant,
            from,
            self.owner(),
            (session, acked_below),
            piece,
            channel,
            self.max_message_size,
            &mut self.channels,
            &mut self.peers,
            &mut self.counters,
        );
        let taken = match offered {
            Offered::Taken(taken) => taken,
            Offered::NotTaken => return self.ack_session(from, session),
            Offered::OverBudget => return,
            Offered::Refused(reason) => {
                return self.reply_error(now, from, ErrorCode::LIMIT_REACHED, reason);
            }
        };
        for ready in taken.ready {
            let mark = SessionMark {
                client: taken.client,
                session,
                seq: ready.seq,
            };
            if self.copied_already(ready.channel, session, ready.seq) {
                // The cluster brought it here from the relay the publisher
                // used before: stored, there and here.
                self.counters.duplicates_dropped += 1;
                continue;
            }
            match self.append(now, ready.channel, Some(mark), &ready.payload) {
                Ok(offset) => {
                    self.counters.messages_published += 1;
                    if self.cluster.is_some() {
                        let here = &mut self.channels[ready.channel].sessions_here;
                        here.entry(session).or_default().stored(from, ready.seq);
                    }
                    if self.durability.acks_wait_for_sync() || self.acks_wait_for_cluster() {
                        self.publishing.stored_not_durable(
                            &mut self.peers,
                            from,
                            session,
                            ready.seq,
                            ready.channel,
                            offset,
                        );
                    }
                }
                Err(reason) => {
                    // Not stored, so never acknowledged: the session goes
                    // back to this message, which its sender will resend.
                    self.reply_error(now, from, ErrorCode::UNAVAILABLE, &reason);
                    self.publishing
                        .rewind(&mut self.peers, from, session, ready.first);
                    return self.ack_session(from, session);
                }
            }
        }
        if let Some(first) = taken.too_large {
            self.refuse_too_large(now, from, None);
            self.publishing
                .rewind(&mut self.peers, from, session, first);
        }
        self.ack_session(from, session);
    }

    /// Sends session `session` of `from` its acknowledgement.
    fn ack_session(&mut self, from: SocketAddr, session: u64) {
        let (sync, cluster) = (
            self.durability.acks_wait_for_sync(),
            self.acks_wait_for_cluster(),
        );
        let channels = &self.channels;
        // Below what every wait covers: synced, and stored in the cluster.
        let acked_to = |ch: ChannelId| {
            let channel = &channels[ch];
            let synced = if sync { channel.durable_to } else { u64::MAX };
            let bridged = if cluster {
                channel.bridged_to
            } else {
                u64::MAX
            };
            synced.min(bridged)
        };
        (self.publishing).ack(from, session, acked_to, &mut self.peers, &mut self.outbox);
    }

    /// True if, in a cluster, `channel` holds a copy of message `seq` of
    /// session `session` (or a later one) from another relay.
    fn copied_already(&self, channel: ChannelId, session: u64, seq: u64) -> bool {
        if self.cluster.is_none() {
            return false;
        }
        let Storage::Open(log) = &self.channels[channel].storage else {
            return false;
        };
        log.session_last_seq(crate::log::REMOTE_SESSION, session)
            .is_some_and(|last| last >= seq)
    }

    /// True if reliable publishers are acknowledged only once the cluster
    /// stored their messages.
    fn acks_wait_for_cluster(&self) -> bool {
        self.cluster.is_some() && self.cluster_ack == crate::config::ClusterAck::Cluster
    }

    /// A piece of an unreliable message too large for one datagram: held
    /// (within `--reassembly-memory`) until all pieces are in, then
    /// published as one message.
    fn fragment(&mut self, now: Now, piece: reassembly::Piece<'_>) {
        let from = piece.from;
        // Nothing is held for a sender that may not publish there.
        if !self.permitted(now, from, Action::Publish, piece.channel) {
            return;
        }
        let allowed = self.channels.allowed(piece.channel);
        let who = self.who;
        let holder = match self.secure.as_ref().and_then(|s| s.reassembly_quota(who)) {
            Some((key, bytes)) => (Holder::Key(key), bytes),
            None => (Holder::Address(from), self.reassembly.default_share()),
        };
        match self.reassembly.add(now.instant, piece, holder, allowed) {
            Added::Held | Added::Duplicate => {}
            Added::Malformed => self.counters.dropped_malformed += 1,
            Added::OverBudget => self.counters.dropped_limit += 1,
            Added::ChannelRefused => self.refuse_channel(now, from),
            Added::TooLarge(_) => self.refuse_too_large(now, from, None),
            Added::Complete { channel, message } => {
                self.publish(now, from, &channel, &message);
            }
        }
    }

    fn subscribe(
        &mut self,
        now: Now,
        from: SocketAddr,
        request: subscriptions::Request,
        channel: &str,
    ) {
        if !self.admissible(now, from, Action::Subscribe, channel, 0) {
            return;
        }
        let id = self.channels.find_or_create(channel);
        if let Err(refusal) = self.open_subscription(now, from, request, id) {
            self.reply_error(now, from, refusal.code, &refusal.reason);
        }
    }

    /// A SUBSCRIBE of a reliable subscriber that moved here from another
    /// relay of the cluster: it starts at the first stored message it lacks
    /// (see `resume`), and the channel is followed from `since` on if it
    /// was not yet. A keepalive of one held here changes nothing.
    fn resume(
        &mut self,
        now: Now,
        from: SocketAddr,
        mut request: subscriptions::Request,
        channel: &str,
        (since, vector): (u64, wire::ResumeVector<'_>),
    ) {
        if crate::subject::is_pattern(channel) || request.mode != wire::DeliveryMode::Reliable {
            self.counters.dropped_malformed += 1;
            let reason = "a resume is a reliable subscription of one channel";
            return self.reply_error(now, from, ErrorCode::UNSUPPORTED, reason);
        }
        if !self.admissible(now, from, Action::Subscribe, channel, 0) {
            return;
        }
        let known = self.channels.id(channel);
        let held = known.is_some() && self.peers.channel_of(&from, request.sub_id) == known;
        // It reads back through the log: a source gets a few a second, and
        // all together a byte budget.
        let budget = match held {
            true => 0,
            false => self.resume_walks.for_one(now.instant),
        };
        if !held && (budget == 0 || !self.resume_opens.take(now.instant, from)) {
            self.counters.dropped_limit += 1;
            let reason = "too many resuming subscriptions just now; ask again";
            return self.reply_error(now, from, ErrorCode::LIMIT_REACHED, reason);
        }
        let id = self.channels.find_or_create(channel);
        let start = match (&self.cluster, &mut self.channels[id].storage) {
            (_, _) if held => 0, // a keepalive: its start is not looked at
            (Some(cluster), Storage::Open(log)) => {
                match resume::start(log, cluster.id, vector, since, budget) {
                    Ok((start, read)) => {
                        self.resume_walks.spend(read);
                        start
                    }
                    Err(e) => {
                        tracing::warn!(channel, peer = %from, error = %e, "resume: reading the log failed; starting at the oldest message");
                        log.first_offset()
                    }
                }
            }
            // Nothing stored: from the first message that comes.
            (Some(_), Storage::Empty) => 0,
            // Outside a cluster no position elsewhere means anything here.
            _ => self.channels[id]
                .storage
                .offsets()
                .map_or(0, |(_, next)| next),
        };
        if let Some(cluster) = &self.cluster
            && !held
            && !cluster.follows(channel)
        {
            // A channel not followed yet is followed from `since`, within
            // the hour a consumer not used is kept for, and not from the
            // future.
            let horizon = now
                .unix_nanos
                .saturating_sub(RESUME_HORIZON.as_nanos() as u64);
            let since = since.clamp(horizon, now.unix_nanos);
            let ch = &mut self.channels[id];
            ch.follow_since = Some(ch.follow_since.map_or(since, |s| s.min(since)));
        }
        request.start = wire::StartPosition::Offset(start);
        self.end_pattern(from, request.sub_id);
        if let Err(refusal) = self.open_subscription(now, from, request, id) {
            self.reply_error(now, from, refusal.code, &refusal.reason);
        }
    }

    /// True if `from` holds subscription `sub_id` (of any channel).
    fn holds_subscription(&self, from: SocketAddr, sub_id: u32) -> bool {
        self.peers.channel_of(&from, sub_id).is_some()
    }

    /// A SUBSCRIBE that joins queue group `group` of `channel`: a live
    /// subscription whose messages the group's members share (see
    /// `groups` for reliable members).
    fn join(
        &mut self,
        now: Now,
        from: SocketAddr,
        request: subscriptions::Request<'_>,
        channel: &str,
    ) {
        let refused = if request.mode == wire::DeliveryMode::Unreliable
            && request.start != wire::StartPosition::Latest
            && !self.holds_subscription(from, request.sub_id)
        {
            // A reliable member's start is ignored: the group says.
            Some("a queue group member starts at the latest message")
        } else if crate::subject::is_pattern(channel) {
            Some("a queue group names one channel, not a pattern")
        } else {
            None
        };
        if let Some(reason) = refused {
            self.counters.dropped_unsupported += 1;
            return self.reply_error(now, from, ErrorCode::UNSUPPORTED, reason);
        }
        self.end_pattern(from, request.sub_id);
        self.subscribe(now, from, request, channel);
    }

    /// Opens (or keeps alive) subscription `request` of `from` to channel
    /// `id`: see [`Subscriptions::subscribe`].
    fn open_subscription(
        &mut self,
        now: Now,
        from: SocketAddr,
        request: subscriptions::Request,
        id: ChannelId,
    ) -> Result<(), subscriptions::Refusal> {
        self.subscriptions.subscribe(
            now,
            from,
            request,
            id,
            &mut self.channels,
            &mut self.peers,
            &mut self.outbox,
            &mut self.counters,
        )
    }

    /// Removes a peer, its subscriptions and its sessions; returns how many
    /// subscriptions there were.
    fn remove_peer(&mut self, addr: SocketAddr) -> usize {
        let Some(peer) = self.peers.remove(&addr) else {
            return 0;
        };
        self.counters.sessions_expired += peer.sessions.len() as u64;
        self.subscriptions.peer_gone(
            addr,
            &peer.subscriptions,
            &mut self.channels,
            &mut self.counters,
        );
        if peer.wildcards() > 0 {
            for sub_id in self.wildcards.of(addr) {
                self.wildcards.remove(addr, sub_id);
            }
        }
        for s in peer.sessions {
            for &ch in &s.channels {
                self.channels[ch].session_ended(s.id, addr);
            }
            self.publishing
                .release(s, &mut self.channels, &mut self.counters);
        }
        peer.subscriptions.len()
    }

    /// Makes this relay an edge of a cluster, with id `id`: from now on
    /// every message stored here is handed to the bridge
    /// ([`Relay::poll_outgoing`]), from `bridged` on (how far each channel
    /// was bridged before, as [`Relay::bridged`] said), and it says what it
    /// wants from the cluster ([`Relay::poll_interest`]).
    pub fn enable_cluster(&mut self, now: Now, id: u64, bridged: &[(String, u64)]) {
        self.publishing.cluster_wide = true;
        self.cluster = Some(cluster::Cluster::new(
            id,
            bridged,
            &mut self.channels,
            now.instant,
        ));
    }

    /// This relay's id in its cluster, if it is in one.
    pub fn cluster_id(&self) -> Option<u64> {
        self.cluster.as_ref().map(|c| c.id)
    }

    /// Stored messages for the bridge to publish (at most 4,096 and 16 MiB
    /// unreported at a time); report each with
    /// [`Relay::handle_bridged`].
    pub fn poll_outgoing(&mut self) -> Vec<Outgoing> {
        let Some(cluster) = &mut self.cluster else {
            return Vec::new();
        };
        // What goes to the cluster is on disk first, as whatever else
        // depends on a message is: synced now under `--fsync always`, below
        // each channel's synced offset under `interval`.
        self.durability
            .before_send(&mut self.channels, &mut self.counters);
        let durable_only = self.durability.acks_wait_for_sync();
        let (out, failed) =
            cluster.poll_outgoing(&mut self.channels, &mut self.counters, durable_only);
        self.acks_due |= std::mem::take(&mut cluster.moved);
        if let Some((ch, e)) = failed {
            let channel = &mut self.channels[ch];
            tracing::error!(channel = %channel.name, "not serving channel: {e}");
            self.counters.log_errors += 1;
            channel.storage = Storage::Failed(e.to_string());
        }
        out
    }

    /// What the cluster did with a message handed out by
    /// [`Relay::poll_outgoing`].
    pub fn handle_bridged(&mut self, now: Now, receipt: Receipt, outcome: Bridged) {
        if let Some(cluster) = &mut self.cluster {
            let (channels, counters) = (&mut self.channels, &mut self.counters);
            cluster.handle_bridged(now.instant, channels, counters, receipt, outcome);
            // Acknowledged together before the next datagram goes.
            self.acks_due |= std::mem::take(&mut cluster.moved);
        }
        (self.flood).after(now.instant, None, &self.counters);
    }

    /// Reads this relay's cluster id and how far its channels were bridged
    /// from the data directory, and makes it an edge of the cluster (see
    /// [`Relay::enable_cluster`]). Returns the id, and how many lines of
    /// the bridged file did not parse (those channels are resent whole:
    /// the cluster drops what it has).
    pub fn join_cluster(&mut self, now: Now) -> Result<(u64, usize), LogError> {
        let id = self.data_dir.relay_id()?;
        let (bridged, bad) = self.data_dir.read_bridged()?;
        self.enable_cluster(now, id, &bridged);
        Ok((id, bad))
    }

    /// Writes how far each channel is bridged to the data directory, if it
    /// changed since the last write; true if it wrote.
    pub fn save_bridged(&mut self) -> Result<bool, LogError> {
        let Some(bridged) = self.bridged() else {
            return Ok(false);
        };
        let entries = bridged
            .iter()
            .map(|(name, offset)| (name.as_str(), *offset));
        self.data_dir.write_bridged(entries)?;
        Ok(true)
    }

    /// The next change in the channels and patterns this relay wants from
    /// the cluster (those its clients subscribe to).
    pub fn poll_interest(&mut self) -> Option<Interest> {
        self.cluster.as_mut()?.poll_interest()
    }

    /// How far each channel is bridged, if that changed since the last
    /// call: to keep in the data directory for the next start.
    pub fn bridged(&mut self) -> Option<Vec<(String, u64)>> {
        let cluster = self.cluster.as_mut()?;
        if !cluster.progressed {
            return None;
        }
        cluster.progressed = false;
        let bridged = (self.channels.iter())
            .filter(|c| !c.name.is_empty() && c.bridged_to > 0)
            .map(|c| (c.name.to_string(), c.bridged_to))
            .collect();
        Some(bridged)
    }

    /// A message of another relay on `channel`, from the cluster: appended
    /// and delivered here once, in its source's order. One that comes before
    /// an earlier one of its source is [`Remote::Ahead`], unless
    /// `past_a_gap` (the earlier ones are given up for lost): then it is
    /// appended and the gap counted.
    pub fn handle_remote(
        &mut self,
        now: Now,
        channel: &str,
        origin: Origin,
        past_a_gap: bool,
        payload: &[u8],
    ) -> Remote {
        let taken = self.take_remote(now, channel, origin, past_a_gap, payload);
        (self.flood).after(now.instant, None, &self.counters);
        taken
    }

    fn take_remote(
        &mut self,
        now: Now,
        channel: &str,
        origin: Origin,
        past_a_gap: bool,
        payload: &[u8],
    ) -> Remote {
        let Some(cluster) = &self.cluster else {
            return Remote::Refused;
        };
        let id = cluster.id;
        if wire::validate_channel(channel.as_bytes()).is_err()
            || crate::subject::is_pattern(channel)
        {
            // Never deliverable here: taken, and dropped.
            self.counters.dropped_malformed += 1;
            return Remote::Duplicate;
        }
        if payload.len() > self.max_message_size {
            self.counters.dropped_too_large += 1;
            return Remote::Duplicate;
        }
        if !self.channels.allowed(channel) {
            // A new channel past --max-channels, as a client's would be.
            self.counters.dropped_limit += 1;
            return Remote::Duplicate;
        }
        let ch = self.channels.find_or_create(channel);
        let last = match &self.channels[ch].storage {
            Storage::Open(log) => match origin.source {
                Source::Relay(relay) => Ok(log.session_last_seq(crate::log::REMOTE_CLIENT, relay)),
                Source::Session(session) => {
                    let stints = self.channels[ch].sessions_here.get(&session);
                    session_last(log, session, stints, origin.position)
                }
            },
            Storage::Empty => Ok(None),
            Storage::Failed(_) => return Remote::Refused,
        };
        let placed = last.and_then(|last| cluster::place(id, origin, last, past_a_gap));
        let mark = match placed {
            Ok((mark, gap)) => {
                self.counters.replay_gaps += u64::from(gap);
                mark
            }
            Err(outcome) => {
                match outcome {
                    Remote::Ahead | Remote::Unsure => self.counters.bridge_ahead += 1,
                    _ => self.counters.bridge_duplicates += 1,
                }
                self.channels.forget_idle(ch, &mut self.counters);
                return outcome;
            }
        };
        let outcome = match self.append(now, ch, Some(mark), payload) {
            Ok(_) => {
                self.counters.bridge_received += 1;
                Remote::Appended
            }
            Err(_) => Remote::Refused,
        };
        self.tell_lost(now);
        outcome
    }

    /// Sets the load a PONG reports to clients that ask (picking the least
    /// loaded of several relays): the share of the last second the event
    /// loop was busy, in thousandths, as the driver measures it.
    pub fn set_load(&mut self, per_mille: u32) {
        self.load = per_mille.min(1000);
    }

    /// Tells the subscribers of reliable subscriptions that were dropped,
    /// and gives what members who left a reliable queue group had not
    /// acknowledged to the others.
    fn tell_lost(&mut self, now: Now) {
        (self.subscriptions).settle(
            now,
            &mut self.channels,
            &mut self.outbox,
            &mut self.counters,
        );
        while let Some(lost) = self.subscriptions.poll_lost() {
            self.reply_error(now, lost.peer, ErrorCode::UNAVAILABLE, &lost.reason);
        }
    }
}

#[cfg(test)]
mod quota_tests;
#[cfg(test)]
mod rekey_tests;
#[cfg(test)]
mod tests;

/// The last position of session `session` this channel's `log` stored,
/// for a copy of message `position` from another relay: what came here
/// through the cluster, and, where `stints` says what the session stored
/// here itself, that too once the copies reach it. A copy of a message the
/// session stored here is a duplicate (`Err`); one outside what it stored
/// here (a relay it used before or between had it, and it was on its way)
/// still goes in.
fn session_last(
    log: &crate::log::ChannelLog,
    session: u64,
    stints: Option<&channels::Stints>,
    position: u64,
) -> Result<Option<u64>, Remote> {
    let copied = log.session_last_seq(crate::log::REMOTE_SESSION, session);
    let Some(here) = log.session_last_seq(CLUSTER_SESSION, session) else {
        return Ok(copied);
    };
    let known = stints.filter(|s| !s.forgot && s.open.iter().map(|o| o.2).max() == Some(here));
    let Some(stints) = known else {
        // Not all it stored here is known (a restart, a stint that ended):
        // what it stored here counts as all before it.
        return Ok(copied.max(Some(here)));
    };
    if (stints.open.iter()).any(|&(_, first, last)| (first..=last).contains(&position)) {
        return Err(Remote::Duplicate);
    }
    // The copies go on after each stint they reach.
    let mut ranges: Vec<(u64, u64)> = stints.open.iter().map(|&(_, f, l)| (f, l)).collect();
    ranges.sort_unstable();
    let mut last = copied;
    for (first, end) in ranges {
        if last.map_or(first == 0, |l| l.saturating_add(1) >= first) {
            last = last.max(Some(end));
        }
    }
    Ok(last)
}

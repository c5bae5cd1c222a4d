//! The bridge to a NATS JetStream cluster (`--cluster`): the official
//! client, `async-nats`, on a thread of its own with a current-thread tokio
//! runtime, joined to the event loop by two queues and the loop's waker.
//! The loop never waits for NATS: an outage only delays the bridge, and
//! what is not yet bridged stays in the log (the core hands out a window of
//! it at a time, see [`Relay::poll_outgoing`]).
//!
//! Up: each message the core hands out is published to `udprelay.<channel>`
//! with `Nats-Msg-Id` = `<relay id, 16 hex digits>:<channel>:<offset>`; the
//! PubAcks are awaited in order and reported back, stored or not. The
//! stream (`UDPRELAY`, subjects `udprelay.>`, file storage, a two-hour
//! duplicate window, up to three replicas) is made if missing.
//!
//! Down: for each channel or pattern the core follows, a durable pull
//! consumer of this relay (named from the relay id and the subject) feeds
//! the loop messages of other relays; each is acknowledged to JetStream
//! once the core stored it (or had it), and asked for again later when the
//! core could not take it yet. A subject no longer followed keeps its
//! consumer, which JetStream deletes after an hour without a pull.
//!
//! The queue to the thread is unbounded in type but bounded by what feeds
//! it: the core's window of outgoing messages, the subjects followed, and
//! one answer per message the thread handed over, of which the queue back
//! (bounded) and each consumer's `max_ack_pending` hold a bounded number.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use mio::Waker;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::relay::{Bridged, Interest, Now, Origin, Outgoing, Receipt, Relay, Remote, Source};

/// The stream every relay of a cluster publishes to.
pub const STREAM: &str = "UDPRELAY";
/// The subject prefix of channels.
pub const PREFIX: &str = "udprelay.";
/// Messages the thread hands the loop before it waits for the loop.
const BACK_QUEUE: usize = 1024;
/// How long JetStream remembers a message id: a relay that comes back
/// within this long resends what it had not seen acknowledged, and the
/// stream drops what it had.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 3600);
/// Unacknowledged messages a consumer hands out at most: twice what a
/// relay has in flight, so that messages a relay sent again after later
/// ones were stored (a server failed under it) are handed out while the
/// later ones wait for them.
const MAX_ACK_PENDING: i64 = 2 * crate::relay::BRIDGE_WINDOW as i64;
/// How long a consumer waits for an acknowledgement before sending again.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long JetStream keeps a relay's consumer that nobody pulls (the
/// relay stopped following its subject, or is down): what is published
/// elsewhere meanwhile still reaches it when it follows again within this.
const CONSUMER_IDLE: Duration = Duration::from_secs(3600);
/// How long a message the core could not take waits to come again.
const NAK_DELAY: Duration = Duration::from_millis(200);
/// Pause before trying again after NATS refused or failed.
const RETRY: Duration = Duration::from_secs(1);

/// What the loop asks of the thread.
enum ToBridge {
    Publish(Outgoing),
    Follow(String, Option<u64>),
    Unfollow(String),
    Done(Box<jetstream::Message>, Remote),
}

/// What the thread tells the loop.
enum FromBridge {
    Published(Receipt, Bridged),
    Message {
        channel: String,
        origin: Origin,
        message: Box<jetstream::Message>,
    },
}

/// The header that says below which position every earlier message of a
/// message's source is (see [`Origin::prior_below`]); absent when the
/// sending relay does not know.
pub const PRIOR_HEADER: &str = "Udprelay-Prior";

/// How long messages that came before an earlier one of their source wait
/// for it, once something of that source is stored here (JetStream sends it again, or the source relay does) before it
/// is given up for lost and they are appended past the gap.
const GAP_WAIT: Duration = Duration::from_secs(60);

/// Most payload bytes held waiting for an earlier message: past it a
/// message ahead is asked for again later instead (JetStream keeps it).
const HELD_BYTES: usize = 64 << 20;

/// How long a message that says earlier ones of its source exist waits for
/// them when nothing of that source is stored here yet (see
/// [`Remote::Unsure`]): a resend after a failure comes within this; past
/// it, this relay began following after them.
const FIRST_WAIT: Duration = Duration::from_secs(10);

/// A message of another relay held until the one before it comes: when it
/// came and how long it may wait, what it follows, and the message.
type HeldMessage = ((Instant, Duration), Option<u64>, Box<jetstream::Message>);

/// How long a message held as `outcome` may wait in all.
fn wait_for(outcome: Remote) -> Duration {
    match outcome {
        Remote::Unsure => FIRST_WAIT,
        _ => GAP_WAIT,
    }
}

/// Where a held message belongs: its channel, source and position there.
type HeldKey = (String, Source, u64);

/// The bridge thread, from the loop's side.
pub struct Bridge {
    to: mpsc::UnboundedSender<ToBridge>,
    from: mpsc::Receiver<FromBridge>,
    /// Messages of other relays that came before an earlier one of their
    /// source, by (channel, source, position): not acknowledged, so at most
    /// every consumer's `max_ack_pending`.
    held: BTreeMap<HeldKey, HeldMessage>,
    /// Payload bytes in `held`, at most [`HELD_BYTES`].
    held_bytes: usize,
    _thread: JoinHandle<()>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl Bridge {
    /// Starts the thread for relay `id`, connecting to `servers`; it wakes
    /// the loop with `waker` when it has something for it.
    pub fn start(servers: Vec<String>, id: u64, waker: Arc<Waker>) -> std::io::Result<Bridge> {
        let (to, rx) = mpsc::unbounded_channel();
        let (tx, from) = mpsc::channel(BACK_QUEUE);
        let thread = std::thread::Builder::new()
            .name("udprelay-bridge".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(serve(servers, id, rx, Back { tx, waker })),
                    Err(e) => warn!("cluster bridge not started: {e}"),
                }
            })?;
        Ok(Bridge {
            to,
            from,
            held: BTreeMap::new(),
            held_bytes: 0,
            _thread: thread,
        })
    }

    /// Moves work between the core and the thread: what the cluster
    /// answered and sent goes to the core; what the core has for the
    /// cluster goes to the thread. Called on every turn of the loop.
    pub fn exchange(&mut self, relay: &mut Relay, now: Now) {
        while let Ok(back) = self.from.try_recv() {
            match back {
                FromBridge::Published(receipt, outcome) => {
                    relay.handle_bridged(now, receipt, outcome)
                }
                FromBridge::Message {
                    channel,
                    origin,
                    message,
                } => self.take(relay, now, channel, origin, message, false),
            }
        }
        // Gaps waited for long enough: their first held message goes in
        // past the gap, and those after it follow.
        let stale: Vec<HeldKey> = (self.held.iter())
            .filter(|(_, ((came, wait), ..))| came.elapsed() >= *wait)
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some((_, prior_below, message)) = self.held.remove(&key) {
                self.held_bytes -= message.payload.len();
                let (channel, source, position) = key;
                let origin = Origin {
                    source,
                    position,
                    prior_below,
                };
                self.take(relay, now, channel, origin, message, true);
            }
        }
        for outgoing in relay.poll_outgoing() {
            let receipt = outgoing.receipt();
            if self.to.send(ToBridge::Publish(outgoing)).is_err() {
                relay.handle_bridged(now, receipt, Bridged::Failed);
            }
        }
        while let Some(interest) = relay.poll_interest() {
            let ask = match interest {
                Interest::Follow { name, since } => ToBridge::Follow(name, since),
                Interest::Unfollow(name) => {
                    self.forget_held(&name);
                    ToBridge::Unfollow(name)
                }
            };
            let _ = self.to.send(ask);
        }
    }
}

impl Bridge {
    /// Drops, unacknowledged, the held messages of a subject no longer
    /// followed: JetStream sends them again when it is followed again
    /// (appending them past a gap meanwhile would lose the one missing).
    fn forget_held(&mut self, name: &str) {
        let pattern = crate::subject::Pattern::parse(name).ok();
        let held_bytes = &mut self.held_bytes;
        self.held.retain(|(channel, ..), (.., message)| {
            let matches = pattern.as_ref().is_some_and(|p| p.matches(channel));
            if matches {
                *held_bytes -= message.payload.len();
            }
            !matches
        });
    }

    /// Hands a message of another relay to the core; one that came before
    /// an earlier one of its source is held, and the held ones that follow
    /// one appended go in after it.
    fn take(
        &mut self,
        relay: &mut Relay,
        now: Now,
        channel: String,
        origin: Origin,
        message: Box<jetstream::Message>,
        past_a_gap: bool,
    ) {
        // One that does not say what it follows waits behind the held ones
        // of its source: they came first, and would be taken for
        // duplicates once it is stored.
        let behind_held = !past_a_gap
            && origin.prior_below.is_none()
            && (self.first_held(&channel, origin.source))
                .is_some_and(|(_, _, position)| position < origin.position);
        let outcome = match behind_held {
            true => Remote::Ahead,
            false => relay.handle_remote(now, &channel, origin, past_a_gap, &message.payload),
        };
        if let Remote::Ahead | Remote::Unsure = outcome {
            let key = (channel, origin.source, origin.position);
            // A second delivery of the same message replaces the first
            // (acknowledging either is the same to JetStream).
            // A wait that turns out to be for a gap gets a gap's time.
            let until = match self.held.remove(&key) {
                Some(((came, wait), _, old)) => {
                    self.held_bytes -= old.payload.len();
                    (came, wait.max(wait_for(outcome)))
                }
                None => (Instant::now(), wait_for(outcome)),
            };
            if self.held_bytes + message.payload.len() > HELD_BYTES {
                // Asked for again later: JetStream keeps it.
                let _ = self.to.send(ToBridge::Done(message, outcome));
                return;
            }
            self.held_bytes += message.payload.len();
            self.held.insert(key, (until, origin.prior_below, message));
            return;
        }
        let _ = self.to.send(ToBridge::Done(message, outcome));
        if let Remote::Refused = outcome {
            return;
        }
        // The held ones of its source, lowest first, while they now fit (a
        // duplicate may have been the one they waited for: the relay had
        // it from its publisher).
        while let Some(key) = self.first_held(&channel, origin.source) {
            let Some(((came, wait), prior_below, message)) = self.held.remove(&key) else {
                break;
            };
            let (_, source, position) = key;
            let held = Origin {
                source,
                position,
                prior_below,
            };
            let outcome = relay.handle_remote(now, &channel, held, false, &message.payload);
            if let Remote::Ahead | Remote::Unsure | Remote::Refused = outcome {
                let until = (came, wait.max(wait_for(outcome)));
                self.held
                    .insert((channel, source, position), (until, prior_below, message));
                break;
            }
            self.held_bytes -= message.payload.len();
            let _ = self.to.send(ToBridge::Done(message, outcome));
        }
    }

    /// The key of the held message of `source` on `channel` lowest in its
    /// numbering.
    fn first_held(&self, channel: &str, source: Source) -> Option<HeldKey> {
        let range = (channel.to_string(), source, 0)..=(channel.to_string(), source, u64::MAX);
        self.held.range(range).next().map(|(key, _)| key.clone())
    }
}

/// The thread's way back to the loop.
#[derive(Clone)]
struct Back {
    tx: mpsc::Sender<FromBridge>,
    waker: Arc<Waker>,
}

impl Back {
    /// Hands the loop `item`, waiting while its queue is full; false once
    /// the loop is gone.
    async fn send(&self, item: FromBridge) -> bool {
        let sent = self.tx.send(item).await.is_ok();
        // A failed wake only delays this to the loop's next turn.
        let _ = self.waker.wake();
        sent
    }
}

async fn serve(
    servers: Vec<String>,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<ToBridge>,
    back: Back,
) {
    let client = loop {
        let options = async_nats::ConnectOptions::new()
            .name(format!("udprelay-{id:016x}"))
            .retry_on_initial_connect();
        match options.connect(servers.as_slice()).await {
            Ok(client) => break client,
            Err(e) => {
                warn!("cluster: cannot connect to {servers:?}: {e}");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let js = jetstream::new(client.clone());
    // Three replicas, or fewer where the cluster has fewer servers (the
    // first relay to make the stream decides).
    let mut replicas = 3;
    let stream = loop {
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{PREFIX}>")],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        };
        match js.get_or_create_stream(config).await {
            Ok(stream) => break stream,
            // "insufficient resources" from a cluster of fewer servers,
            // "replicas > 1 not supported in non-clustered mode" from one.
            Err(e)
                if replicas > 1
                    && ["insufficient resources", "replicas"]
                        .iter()
                        .any(|m| e.to_string().contains(m)) =>
            {
                replicas -= 1;
            }
            Err(e) => {
                warn!("cluster: cannot open stream {STREAM}: {e}");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let replicas = stream.cached_info().config.num_replicas;
    info!(relay = %format!("{id:016x}"), replicas, "cluster: bridged to stream {STREAM}");
    // PubAcks, awaited in order by one task so that reports keep the order
    // of the messages.
    let (acks, pending) = mpsc::unbounded_channel();
    tokio::spawn(await_acks(pending, back.clone()));
    let mut followed: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    while let Some(ask) = rx.recv().await {
        match ask {
            ToBridge::Publish(outgoing) => {
                let receipt = outgoing.receipt();
                let subject = format!("{PREFIX}{}", outgoing.name);
                let mut message = jetstream::message::PublishMessage::build()
                    .payload(outgoing.payload.into())
                    .message_id(message_id(&outgoing.name, outgoing.origin));
                if let Some(prior) = outgoing.origin.prior_below {
                    message = message.header(PRIOR_HEADER, prior.to_string().as_str());
                }
                let ack = js.send_publish(subject, message).await;
                let _ = acks.send((receipt, ack));
            }
            ToBridge::Follow(name, since) => {
                let task = tokio::spawn(follow(
                    stream.clone(),
                    id,
                    name.clone(),
                    since,
                    back.clone(),
                ));
                if let Some(old) = followed.insert(name, task.abort_handle()) {
                    old.abort();
                }
            }
            ToBridge::Unfollow(name) => {
                // The consumer stays (JetStream deletes it after
                // CONSUMER_IDLE): followed again, it goes on from where it
                // was, so a channel whose subscribers come back misses
                // nothing published elsewhere meanwhile.
                if let Some(task) = followed.remove(&name) {
                    task.abort();
                }
            }
            ToBridge::Done(message, outcome) => {
                let kind = match outcome {
                    Remote::Appended | Remote::Duplicate => jetstream::AckKind::Ack,
                    Remote::Ahead | Remote::Unsure | Remote::Refused => {
                        jetstream::AckKind::Nak(Some(NAK_DELAY))
                    }
                };
                // Not acknowledged: JetStream sends it again after ACK_WAIT.
                let _ = message.ack_with(kind).await;
            }
        }
    }
}

/// A publish as sent: the future of its PubAck, or why it was not sent.
type Sent = Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>;

/// Reports each PubAck (or its failure) to the loop, in publish order. The
/// acknowledgements are awaited together (each publish's timeout runs from
/// when it was sent, not from when the one before it was answered).
async fn await_acks(mut pending: mpsc::UnboundedReceiver<(Receipt, Sent)>, back: Back) {
    use futures_util::StreamExt;
    let mut waiting = futures_util::stream::FuturesOrdered::new();
    loop {
        tokio::select! {
            next = pending.recv() => match next {
                Some((receipt, sent)) => waiting.push_back(outcome(receipt, sent)),
                None => return,
            },
            Some((receipt, outcome)) = waiting.next(), if !waiting.is_empty() => {
                if !back.send(FromBridge::Published(receipt, outcome)).await {
                    return;
                }
            }
        }
    }
}

/// What became of a publish.
async fn outcome(receipt: Receipt, sent: Sent) -> (Receipt, Bridged) {
    use jetstream::context::PublishErrorKind;
    let outcome = match sent {
        Ok(ack) => match ack.await {
            Ok(_) => Bridged::Stored,
            Err(_) => Bridged::Failed,
        },
        Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
            warn!(
                offset = receipt.offset,
                "cluster: message larger than the cluster takes"
            );
            Bridged::Refused
        }
        Err(_) => Bridged::Failed,
    };
    (receipt, outcome)
}

/// The durable consumer name of relay `id` for channel or pattern `name`:
/// NATS names may not hold `.`, `*` or `>`, so the subject is hashed.
fn consumer_name(id: u64, name: &str) -> String {
    let hash = blake3::hash(name.as_bytes());
    let hex: String = hash.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("udprelay-{id:016x}-{hex}")
}

/// Consumes `udprelay.<name>` for relay `id` until aborted, handing every
/// message of another relay to the loop; starts again after a failure.
async fn follow(stream: stream::Stream, id: u64, name: String, since: Option<u64>, back: Back) {
    loop {
        match consume(&stream, id, &name, since, &back).await {
            Ok(()) => return, // the loop is gone
            Err(e) => {
                warn!(subject = %format!("{PREFIX}{name}"), "cluster: consumer failed: {e}");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn consume(
    stream: &stream::Stream,
    id: u64,
    name: &str,
    since: Option<u64>,
    back: &Back,
) -> Result<(), async_nats::Error> {
    use futures_util::StreamExt;
    let durable = consumer_name(id, name);
    // A new consumer starts with what is published from now on, or, for a
    // subscriber that resumed here from another relay, with what was
    // stored since it was last served there (an existing one goes on from
    // where it was: it has that already).
    let deliver_policy =
        match since.map(|t| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t))) {
            Some(Ok(start_time)) => consumer::DeliverPolicy::ByStartTime { start_time },
            _ => consumer::DeliverPolicy::New,
        };
    let config = consumer::pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: format!("{PREFIX}{name}"),
        deliver_policy,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        inactive_threshold: CONSUMER_IDLE,
        ..Default::default()
    };
    let consumer: consumer::PullConsumer = stream.get_or_create_consumer(&durable, config).await?;
    let mut messages = consumer.messages().await?;
    info!(subject = %format!("{PREFIX}{name}"), "cluster: following");
    while let Some(message) = messages.next().await {
        let message = message?;
        let Some(origin) = origin(&message) else {
            // Not a relay's: nothing says where it belongs in any order.
            let _ = message.ack().await;
            continue;
        };
        let channel = message.subject.as_str().strip_prefix(PREFIX);
        let Some(channel) = channel.map(String::from) else {
            let _ = message.ack().await;
            continue;
        };
        let item = FromBridge::Message {
            channel,
            origin,
            message: Box::new(message),
        };
        if !back.send(item).await {
            return Ok(());
        }
    }
    Err("the consumer's message stream ended".into())
}

/// The `Nats-Msg-Id` of a message of `origin` on `channel`:
/// `<relay id, 16 hex digits>:<channel>:<offset>` for a relay's own,
/// `s<session id, 16 hex digits>:<channel>:<seq>` for a reliable session's
/// (so that JetStream drops the same message published again through
/// another relay).
fn message_id(channel: &str, origin: Origin) -> String {
    match origin.source {
        Source::Relay(relay) => format!("{relay:016x}:{channel}:{}", origin.position),
        Source::Session(session) => format!("s{session:016x}:{channel}:{}", origin.position),
    }
}

/// Where a message from the cluster stands in its source's numbering: its
/// id, and its [`PRIOR_HEADER`] if it has a valid one.
fn origin(message: &jetstream::Message) -> Option<Origin> {
    let headers = message.headers.as_ref()?;
    let id = headers.get(async_nats::header::NATS_MESSAGE_ID)?;
    let (source, position) = parse_message_id(id.as_str())?;
    let prior_below = (headers.get(PRIOR_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .filter(|&prior| prior <= position);
    Some(Origin {
        source,
        position,
        prior_below,
    })
}

/// Parses a [`message_id`].
fn parse_message_id(id: &str) -> Option<(Source, u64)> {
    let (source, rest) = id.split_once(':')?;
    let (_, position) = rest.rsplit_once(':')?;
    let (hex, session) = match source.strip_prefix('s') {
        Some(hex) => (hex, true),
        None => (source, false),
    };
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let number = u64::from_str_radix(hex, 16).ok()?;
    let source = match session {
        true => Source::Session(number),
        false => Source::Relay(number),
    };
    Some((source, position.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_name_their_source_and_offset() {
        assert_eq!(
            parse_message_id("00000000000000ff:a:b:c:42"),
            Some((Source::Relay(255), 42)),
            "a channel may hold colons"
        );
        for origin in [
            Origin {
                source: Source::Relay(7),
                position: 3,
                prior_below: None,
            },
            Origin {
                source: Source::Session(u64::MAX),
                position: 9,
                prior_below: Some(2),
            },
        ] {
            let id = message_id("a.b", origin);
            assert_eq!(
                parse_message_id(&id),
                Some((origin.source, origin.position))
            );
        }
        for bad in [
            "",
            "ff:a:1",
            "00000000000000ff:a",
            "00000000000000zz:a:1",
            "00000000000000ff:a:x",
            "s00000000000000ff:a",
            "S00000000000000ff:a:1",
            "+0000000000000ff:a:1",
        ] {
            assert_eq!(parse_message_id(bad), None, "{bad:?}");
        }
        assert_ne!(consumer_name(1, "a"), consumer_name(1, "b"));
        assert_ne!(consumer_name(1, "a"), consumer_name(2, "a"));
        assert!(!consumer_name(1, "sensors.>").contains(['.', '*', '>']));
    }
}

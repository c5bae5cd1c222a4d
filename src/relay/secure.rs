//! Keyed sessions at the relay: the answer to a handshake, the bounded table
//! of sessions (by id, by address, by the client's ephemeral key), opening
//! what arrives sealed and sealing what goes to an address that holds a
//! session.
//!
//! A session is created only for a proven address whose handshake verified
//! under a key the file holds, and only if a slot is free (in all and for
//! that key): its memory is taken from a fixed budget before anything is
//! built. Everything sent to the address of a session is sealed, so a
//! subscription opened under a key is never delivered in the clear, and a
//! session that ends (idle, its credential expired, replaced by one of
//! another key) takes the address's subscriptions and sessions with it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use foldhash::{HashMap, HashMapExt};

use super::outbox::{Payload, Transmit};
use super::peers::Owner;
use super::quota::{OverRate, Rates};
use crate::auth::{
    self, Action, Denied, KeyFile, KeyFileError, Permissions, Quota, Sealer, SessionError, Side,
};
use crate::wire::{self, FrameType, NOISE_MESSAGE_LEN, SEAL_OVERHEAD};

/// Shortest idle time after which a session ends (longer with a longer
/// lease: a session outlives what it holds).
pub(super) const MIN_IDLE: Duration = Duration::from_secs(120);

/// How often sessions are looked over for idleness and expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Most sessions one key may hold at once: a key given to many clients, or
/// captured first messages replayed from many proven addresses, fill its
/// own share and not every key's.
pub(crate) const MAX_SESSIONS_PER_KEY: usize = 1024;

/// Bytes of the one datagram the relay sends unsealed to an address that
/// holds a session: a lone HANDSHAKE_REPLY (the client needs it to derive
/// the keys).
const HANDSHAKE_REPLY_DATAGRAM: usize =
    wire::HEADER_LEN + wire::FRAME_HEADER_LEN + 4 + NOISE_MESSAGE_LEN;

/// Who sent the datagram being handled, for what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Who {
    /// The relay has no key file: everyone may do everything.
    Open,
    /// A plain datagram where a key file allows anonymous clients: the
    /// file's anonymous permissions.
    Anonymous,
    /// A plain datagram where keys are required: it may only handshake.
    Stranger,
    /// A sealed datagram of a session of key `key` (its stable index).
    Keyed {
        /// The key's stable index (see [`Secure`]).
        key: usize,
    },
}

/// What a handshake frame comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// It verified, but the address is not proven: send it a token (no
    /// state is kept).
    Token,
    /// A new session: send its id and this reply. If the address held a
    /// session of another key, that key's state there must go.
    Opened {
        session: u32,
        reply: [u8; NOISE_MESSAGE_LEN],
        replaced_other_key: bool,
    },
    /// The same first message again from the same address (the reply was
    /// lost): the same reply again.
    Again {
        session: u32,
        reply: [u8; NOISE_MESSAGE_LEN],
    },
    /// Refused: unknown key, expired, did not verify, a replay from another
    /// address, or no room.
    Refused,
}

/// Why a sealed datagram was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Unknown session, forged, or from another address.
    Forged,
    /// Seen before.
    Replayed,
    /// The session's credential has expired: the session (its address and
    /// id) is to be ended ([`Secure::end`]).
    Expired(SocketAddr, u32),
}

struct Session {
    sealer: Sealer,
    key: usize,
    expires: u64,
    addr: SocketAddr,
    heard: Instant,
    ephemeral: [u8; 32],
    reply: [u8; NOISE_MESSAGE_LEN],
}

#[derive(Default)]
struct Slot {
    /// Bumped each time the slot is freed, so an old session id never
    /// names a new session. Never 0: a session id is never 0.
    generation: u16,
    session: Option<Box<Session>>,
}

/// The key file and the sessions opened under it.
///
/// Everything charged to a key names it by an index that stays the same
/// across reloads ([`Secure::rekey`]): a key kept (same id, name and secret)
/// keeps its index, a new or changed one gets a new index, and a removed
/// one's index names no key from then on.
pub(super) struct Secure {
    keys: KeyFile,
    /// Each key index: its position in `keys`, or `None` once a reload
    /// removed (or changed) the key.
    table: Vec<Option<usize>>,
    /// The index of each key id in `keys`.
    index_of: HashMap<u32, usize>,
    required: bool,
    slots: Vec<Slot>,
    free: Vec<u16>,
    max: usize,
    by_addr: HashMap<SocketAddr, u32>,
    by_ephemeral: HashMap<[u8; 32], u32>,
    per_key: Vec<usize>,
    idle: Duration,
    next_sweep: Option<Instant>,
    /// The last datagram opened, as a plain one.
    opened: Vec<u8>,
    /// Where sealed datagrams are written.
    arena: BytesMut,
    /// The last permission check and its answer.
    last_check: Option<(Who, Action, String, bool)>,
    /// Each key's publishing rates.
    rates: Rates,
}

impl std::fmt::Debug for Secure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secure")
            .field("keys", &self.keys.keys().len())
            .field("required", &self.required)
            .field("sessions", &self.by_addr.len())
            .finish_non_exhaustive()
    }
}

impl Secure {
    /// Reads the key file at `path`. Sessions idle for `idle` end.
    pub(super) fn load(
        path: &Path,
        required: bool,
        max: usize,
        idle: Duration,
    ) -> Result<Secure, KeyFileError> {
        Ok(Secure::new(KeyFile::load(path)?, required, max, idle))
    }

    /// Sessions under `keys`, at most `max` at once.
    pub(super) fn new(keys: KeyFile, required: bool, max: usize, idle: Duration) -> Secure {
        let n = keys.keys().len();
        let per_key = vec![0; n];
        let rates = Rates::new(keys.keys().iter().map(|k| k.quota()));
        Secure {
            table: (0..n).map(Some).collect(),
            index_of: (keys.keys().iter().enumerate())
                .map(|(i, k)| (k.id(), i))
                .collect(),
            keys,
            required,
            slots: Vec::new(),
            free: Vec::new(),
            max: max.min(crate::config::MAX_AUTH_SESSIONS),
            by_addr: HashMap::new(),
            by_ephemeral: HashMap::new(),
            per_key,
            idle,
            next_sweep: None,
            opened: Vec::new(),
            arena: BytesMut::new(),
            last_check: None,
            rates,
        }
    }

    /// Who a plain (unsealed) datagram is from.
    pub(super) fn plain_sender(&self) -> Who {
        if self.required {
            Who::Stranger
        } else {
            Who::Anonymous
        }
    }

    /// What `who` may do; `None` for everything (no key file).
    pub(super) fn permissions(&self, who: Who) -> Option<&Permissions> {
        static NOTHING: std::sync::LazyLock<Permissions> =
            std::sync::LazyLock::new(Permissions::default);
        match who {
            Who::Open => None,
            Who::Anonymous => Some(self.keys.anonymous()),
            Who::Stranger => Some(&NOTHING),
            Who::Keyed { key } => Some(self.key(key).map_or(&NOTHING, |k| k.permissions())),
        }
    }

    /// The key at index `index`, unless a reload removed it.
    fn key(&self, index: usize) -> Option<&auth::Key> {
        let position = (*self.table.get(index)?)?;
        self.keys.keys().get(position)
    }

    /// The quota of `who`'s key, if it is keyed.
    fn quota(&self, who: Who) -> Option<(usize, &Quota)> {
        match who {
            Who::Keyed { key } => self.key(key).map(|k| (key, k.quota())),
            _ => None,
        }
    }

    /// Who a datagram from `addr` is: its session's key, or a plain
    /// sender.
    pub(super) fn who_at(&self, addr: SocketAddr) -> Who {
        let session = (self.by_addr.get(&canonical(addr))).and_then(|&id| self.session(id));
        match session {
            Some(s) => Who::Keyed { key: s.key },
            None => self.plain_sender(),
        }
    }

    /// Takes a new key file (and whether keys are required, and the most
    /// sessions): a key kept as it was keeps its index and its sessions; a
    /// key removed, or whose name or secret changed, loses its sessions,
    /// returned as (session id, address, key name) for the caller to tell
    /// and [`Secure::end`]. Rates start again full.
    pub(super) fn rekey(
        &mut self,
        keys: KeyFile,
        required: bool,
        max: usize,
    ) -> Vec<(u32, SocketAddr, String)> {
        let mut table = vec![None; self.table.len()];
        let mut index_of = HashMap::with_capacity(keys.keys().len());
        for (position, key) in keys.keys().iter().enumerate() {
            let kept = (self.index_of.get(&key.id()).copied())
                .filter(|&i| self.key(i).is_some_and(|old| same_key(old, key)));
            let index = kept.unwrap_or_else(|| {
                table.push(None);
                table.len() - 1
            });
            table[index] = Some(position);
            index_of.insert(key.id(), index);
        }
        let ending: Vec<(u32, SocketAddr, String)> = (self.by_addr.values())
            .filter_map(|&id| {
                let s = self.session(id)?;
                let gone = table[s.key].is_none();
                let name = self.key(s.key).map(|k| k.name().to_string());
                gone.then(|| (id, s.addr, name.unwrap_or_default()))
            })
            .collect();
        let quotas: Vec<Quota> = (table.iter())
            .map(|p| p.map_or_else(Quota::default, |p| *keys.keys()[p].quota()))
            .collect();
        // A key kept keeps its index in the new table.
        let old_len = self.table.len();
        let kept = |i: usize| i < old_len && self.table[i].is_some() && table[i].is_some();
        let mut rates = std::mem::take(&mut self.rates);
        rates.rekey(&quotas, kept);
        self.rates = rates;
        self.per_key.resize(table.len(), 0);
        self.table = table;
        self.index_of = index_of;
        self.keys = keys;
        self.required = required;
        self.max = max.min(crate::config::MAX_AUTH_SESSIONS);
        self.last_check = None;
        ending
    }

    /// Who a new subscription or session of `who` is charged to besides
    /// its address.
    pub(super) fn owner(&self, who: Who) -> Owner {
        let Some((key, quota)) = self.quota(who) else {
            return Owner::ADDRESS;
        };
        let limit = |q: Option<u64>| q.map_or(usize::MAX, |n| n.try_into().unwrap_or(usize::MAX));
        Owner {
            key: Some(key),
            max_subscriptions: limit(quota.max_subscriptions),
            max_sessions: limit(quota.max_sessions),
        }
    }

    /// The key and the most bytes it may have held for reassembly, if
    /// `who` is keyed and its key sets one.
    pub(super) fn reassembly_quota(&self, who: Who) -> Option<(usize, usize)> {
        let (key, quota) = self.quota(who)?;
        let bytes = quota.reassembly_bytes?;
        Some((key, bytes.try_into().unwrap_or(usize::MAX)))
    }

    /// Charges a message of `len` payload bytes published by `who` to its
    /// key's rates, if it has any.
    pub(super) fn charge_publish(
        &mut self,
        who: Who,
        now: Instant,
        len: usize,
    ) -> Result<(), OverRate> {
        match who {
            Who::Keyed { key } => self.rates.charge(key, now, len),
            _ => Ok(()),
        }
    }

    /// Ok if `who` may do `action` on `channel`; the permission missing if
    /// not. The last answer is kept: a stream of messages to one channel
    /// costs one pattern match, not one per message.
    pub(super) fn check(&mut self, who: Who, action: Action, channel: &str) -> Result<(), Denied> {
        if let Some((w, a, c, allowed)) = &self.last_check
            && *w == who
            && *a == action
            && c == channel
        {
            return match allowed {
                true => Ok(()),
                false => Err(Denied {
                    action,
                    channel: channel.to_string(),
                }),
            };
        }
        let checked = match (self.permissions(who), action) {
            (None, _) => Ok(()),
            (Some(p), Action::Publish) => p.publish(channel),
            (Some(p), Action::Subscribe) => p.subscribe(channel),
        };
        // The name's buffer is reused: no allocation per new channel.
        let mut name = self.last_check.take().map(|l| l.2).unwrap_or_default();
        name.clear();
        name.push_str(channel);
        self.last_check = Some((who, action, name, checked.is_ok()));
        checked
    }

    /// Answers a HANDSHAKE frame from `from`.
    pub(super) fn handshake(
        &mut self,
        now: super::Now,
        from: SocketAddr,
        proven: bool,
        key_id: u32,
        expires: u64,
        message: &[u8; NOISE_MESSAGE_LEN],
    ) -> Handshake {
        let Ok((key, secret)) = self.keys.secret_for(key_id, expires, now.unix_secs()) else {
            return Handshake::Refused;
        };
        let Some(&key) = self.index_of.get(&key.id()) else {
            return Handshake::Refused;
        };
        if !proven {
            return if auth::verify(&secret, key_id, expires, message) {
                Handshake::Token
            } else {
                Handshake::Refused
            };
        }
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&message[..32]);
        if let Some(&id) = self.by_ephemeral.get(&ephemeral) {
            // The same first message again: the client's retry, answered
            // the same; from elsewhere, a replay, refused.
            return match self.session(id) {
                Some(s) if canonical(s.addr) == canonical(from) => Handshake::Again {
                    session: id,
                    reply: s.reply,
                },
                _ => Handshake::Refused,
            };
        }
        let replacing = self.by_addr.get(&canonical(from)).copied();
        let frees_a_slot = replacing.is_some();
        // Live sessions against the maximum (a reload may have lowered it
        // below the slots made before).
        let live = self.slots.len() - self.free.len();
        if !frees_a_slot && live >= self.max {
            return Handshake::Refused;
        }
        let replaced_key = replacing.and_then(|id| self.session(id)).map(|s| s.key);
        if self.per_key[key] >= MAX_SESSIONS_PER_KEY && replaced_key != Some(key) {
            return Handshake::Refused;
        }
        let Ok((reply, keys)) = auth::respond(&secret, key_id, expires, message) else {
            return Handshake::Refused;
        };
        if let Some(old) = replacing {
            self.end(old);
        }
        let index = match self.free.pop() {
            Some(i) => usize::from(i),
            None => {
                self.slots.push(Slot {
                    generation: 1,
                    session: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        let id = (u32::from(slot.generation) << 16) | index as u32;
        slot.session = Some(Box::new(Session {
            sealer: Sealer::new(Side::Relay, id, &keys),
            key,
            expires,
            addr: from,
            heard: now.instant,
            ephemeral,
            reply,
        }));
        self.per_key[key] += 1;
        self.by_addr.insert(canonical(from), id);
        self.by_ephemeral.insert(ephemeral, id);
        self.next_sweep.get_or_insert(now.instant + SWEEP_EVERY);
        Handshake::Opened {
            session: id,
            reply,
            replaced_other_key: replaced_key.is_some_and(|k| k != key),
        }
    }

    fn session(&self, id: u32) -> Option<&Session> {
        let slot = self.slots.get((id & 0xFFFF) as usize)?;
        if u32::from(slot.generation) != id >> 16 {
            return None;
        }
        slot.session.as_deref()
    }

    fn session_mut(&mut self, id: u32) -> Option<&mut Session> {
        let slot = self.slots.get_mut((id & 0xFFFF) as usize)?;
        if u32::from(slot.generation) != id >> 16 {
            return None;
        }
        slot.session.as_deref_mut()
    }

    /// Ends session `id`, freeing its slot; its address, if it had one.
    pub(super) fn end(&mut self, id: u32) -> Option<SocketAddr> {
        let index = (id & 0xFFFF) as usize;
        let slot = self.slots.get_mut(index)?;
        if u32::from(slot.generation) != id >> 16 {
            return None;
        }
        let session = slot.session.take()?;
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.free.push(index as u16);
        let addr = canonical(session.addr);
        if self.by_addr.get(&addr) == Some(&id) {
            self.by_addr.remove(&addr);
        }
        self.by_ephemeral.remove(&session.ephemeral);
        self.per_key[session.key] -= 1;
        if self.by_addr.is_empty() {
            self.next_sweep = None;
        }
        Some(session.addr)
    }

    /// Opens a sealed datagram from `from`; the plain datagram is then
    /// [`Secure::opened`].
    pub(super) fn open(
        &mut self,
        now: super::Now,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Who, Refusal> {
        let (id, _) = auth::sealed_header(datagram).ok_or(Refusal::Forged)?;
        let mut opened = std::mem::take(&mut self.opened);
        let result = match self.session_mut(id) {
            None => Err(Refusal::Forged),
            // A session answers one address: a datagram of it from another
            // is a key holder writing someone else's address, or a client
            // that moved (it makes a new session).
            Some(s) if canonical(s.addr) != canonical(from) => Err(Refusal::Forged),
            Some(s) => match s.sealer.open(datagram, &mut opened) {
                Ok(()) if s.expires != 0 && now.unix_secs() >= s.expires => {
                    Err(Refusal::Expired(from, id))
                }
                Ok(()) => {
                    s.heard = now.instant;
                    Ok(Who::Keyed { key: s.key })
                }
                Err(SessionError::Replayed(_)) => Err(Refusal::Replayed),
                Err(_) => Err(Refusal::Forged),
            },
        };
        self.opened = opened;
        result
    }

    /// The plain datagram the last [`Secure::open`] made.
    pub(super) fn opened(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.opened)
    }

    /// Gives the buffer of [`Secure::opened`] back, for the next one.
    pub(super) fn give_back(&mut self, buf: Vec<u8>) {
        self.opened = buf;
    }

    /// True if `addr` holds a session: what is sent there is sealed, and
    /// each datagram is [`SEAL_OVERHEAD`] bytes larger.
    pub(super) fn has_session(&self, addr: SocketAddr) -> bool {
        self.by_addr.contains_key(&canonical(addr))
    }

    /// `t` sealed, if its destination holds a session (a lone
    /// HANDSHAKE_REPLY excepted); `None` if it cannot be (too large, or the
    /// session's nonces are used up).
    pub(super) fn seal(&mut self, t: Transmit) -> Option<Transmit> {
        let Some(&id) = self.by_addr.get(&canonical(t.destination)) else {
            return Some(t);
        };
        if is_handshake_reply(&t.payload) {
            return Some(t);
        }
        let frames = t.payload.get(wire::HEADER_LEN..)?;
        let len = t.payload.len() + SEAL_OVERHEAD;
        if len > wire::MAX_DATAGRAM {
            return None;
        }
        let mut buf = std::mem::take(&mut self.arena);
        if buf.capacity() < len {
            buf.reserve(len.max(64 << 10));
        }
        buf.resize(len, 0);
        let body = len - wire::TAG_LEN;
        let sealed = match self.session_mut(id) {
            Some(session) => session.sealer.seal_in_place(&mut buf[..body], frames),
            None => Err(SessionError::NotSealed),
        };
        let result = match sealed {
            Ok(tag) => {
                buf[body..].copy_from_slice(&tag);
                Some(Transmit {
                    destination: t.destination,
                    payload: Payload::from(buf.split().freeze()),
                })
            }
            Err(_) => {
                buf.clear();
                None
            }
        };
        self.arena = buf;
        result
    }

    /// When the sessions are next looked over.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// The sessions idle too long or whose credential expired, as (id,
    /// address), for the caller to [`Secure::end`].
    pub(super) fn sweep(&mut self, now: super::Now) -> Vec<(u32, SocketAddr)> {
        if self.next_sweep.is_none_or(|at| now.instant < at) {
            return Vec::new();
        }
        let unix = now.unix_secs();
        let due = (self.by_addr.values().copied())
            .filter_map(|id| {
                let s = self.session(id)?;
                let idle = now.instant.saturating_duration_since(s.heard) >= self.idle;
                let expired = s.expires != 0 && unix >= s.expires;
                (idle || expired).then_some((id, s.addr))
            })
            .collect();
        self.next_sweep = Some(now.instant + SWEEP_EVERY);
        due
    }
}

/// True if `new` is the key `old` was: same id, name and secret (a
/// credential made for one is good for the other).
fn same_key(old: &auth::Key, new: &auth::Key) -> bool {
    old.id() == new.id() && old.name() == new.name() && old.secret() == new.secret()
}

/// One peer whatever form its address takes: an IPv4-mapped IPv6 address is
/// its IPv4 address, so a session's address cannot be reached unsealed in
/// another spelling (found by the `sealed` fuzz target).
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// True for a datagram holding only a HANDSHAKE_REPLY: the one the relay
/// sends unsealed to an address that holds a session.
fn is_handshake_reply(datagram: &[u8]) -> bool {
    datagram.len() == HANDSHAKE_REPLY_DATAGRAM
        && datagram[..2] == wire::MAGIC
        && datagram[3] == 0
        && datagram[wire::HEADER_LEN] == FrameType::HandshakeReply as u8
}

//! The keyed session: the Noise NNpsk0 handshake that opens it (through
//! `snow`), and the sealing of every datagram after it with AES-256-GCM
//! under the keys the handshake derived, with a replay window (RFC 6479, as
//! WireGuard's `replay.go`) on what arrives.
//!
//! The handshake is one round trip. The client sends Noise's first message
//! (`psk, e`: an ephemeral public key and a tag under a key mixed from the
//! credential's secret), the relay answers with the second (`e, ee`). Both
//! then hold two keys, one per direction, that no one else can compute: they
//! depend on both fresh ephemeral keys (so every session has its own, and no
//! nonce is reused across client or relay restarts) and on the secret (so
//! each side knows the other holds it). The key id and expiry the client
//! names travel in the clear beside the first message and are bound into the
//! handshake as its prologue, so they cannot be changed on the way.
//!
//! A sealed datagram (docs/PROTOCOL.md, "Sealed datagrams") is the 8-byte
//! header with the `AUTH` flag and the session id, an 8-byte nonce, the
//! frames encrypted, and a 16-byte tag; the header and nonce are the AEAD's
//! associated data, so none of it can be changed either.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use thiserror::Error;
use zeroize::Zeroize;

use super::{Credential, SECRET_LEN, Secret};
use crate::wire::{
    FLAG_AUTH, HEADER_LEN, MAGIC, MAX_DATAGRAM, NOISE_MESSAGE_LEN, SEALED_HEADER_LEN, TAG_LEN,
    VERSION,
};

/// The Noise protocol: no static keys, the pre-shared key mixed in first,
/// X25519, AES-256-GCM and BLAKE2s. AES-GCM rather than ChaChaPoly because
/// with AES and carry-less multiply in hardware (every x86-64 and ARMv8
/// server of the last decade) ring's AES-GCM is several times the speed of
/// its AES-256-GCM, and sealing every datagram is the cost that
/// matters; without them ring falls back to a constant-time implementation.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";

/// Bytes of the prologue: a label, the key id and the expiry.
const PROLOGUE_LEN: usize = 17 + 4 + 8;

/// Why a handshake or a sealed datagram failed. None of them says anything
/// about the secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// The handshake message did not verify: the other side does not hold
    /// the same secret, or the message was changed on the way.
    #[error("handshake refused: the other side does not hold this credential's secret")]
    Handshake,
    /// Not a sealed datagram: too short, or the header is not a sealed one.
    #[error("not a sealed datagram")]
    NotSealed,
    /// Sealed for another session.
    #[error("sealed for session {0}, not this one")]
    OtherSession(u32),
    /// The tag did not verify: forged, changed, or sealed under other keys.
    #[error("sealed datagram did not verify")]
    Forged,
    /// The nonce was seen before, or is too far behind the newest one.
    #[error("sealed datagram replayed (nonce {0})")]
    Replayed(u64),
    /// The plain datagram is too short or sealed it would be too large.
    #[error("datagram cannot be sealed: {0} bytes")]
    BadLength(usize),
    /// The session has sealed as many datagrams as its nonces allow.
    #[error("session nonces used up: a new handshake is needed")]
    Exhausted,
}

/// The two keys a handshake gives, one per direction. Zeroed when dropped.
pub struct SessionKeys {
    /// Seals what the client sends, opens what the relay receives.
    to_relay: [u8; 32],
    /// Seals what the relay sends, opens what the client receives.
    to_client: [u8; 32],
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.to_relay.zeroize();
        self.to_client.zeroize();
    }
}

fn prologue(key_id: u32, expires: u64) -> [u8; PROLOGUE_LEN] {
    let mut p = [0u8; PROLOGUE_LEN];
    p[..17].copy_from_slice(b"udprelay noise v1");
    p[17..21].copy_from_slice(&key_id.to_le_bytes());
    p[21..].copy_from_slice(&expires.to_le_bytes());
    p
}

fn builder<'a>(
    secret: &'a [u8; SECRET_LEN],
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, SessionError> {
    let params = NOISE_PARAMS.parse().map_err(|_| SessionError::Handshake)?;
    snow::Builder::new(params)
        .psk(0, secret)
        .and_then(|b| b.prologue(prologue))
        .map_err(|_| SessionError::Handshake)
}

fn split(mut state: snow::HandshakeState) -> SessionKeys {
    // Noise's split: the first key is the initiator's (the client's)
    // sending key, the second the responder's.
    let (to_relay, to_client) = state.dangerously_get_raw_split();
    SessionKeys {
        to_relay,
        to_client,
    }
}

/// The client's half of a handshake, between its first message and the
/// relay's answer.
pub struct Initiator {
    state: snow::HandshakeState,
    message: [u8; NOISE_MESSAGE_LEN],
    key_id: u32,
    expires: u64,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("key_id", &self.key_id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake for `credential`, with a fresh ephemeral key.
    pub fn new(credential: &Credential) -> Result<Initiator, SessionError> {
        let prologue = prologue(credential.id, credential.expires);
        let mut state = builder(credential.secret.expose(), &prologue)?
            .build_initiator()
            .map_err(|_| SessionError::Handshake)?;
        let mut message = [0u8; NOISE_MESSAGE_LEN];
        match state.write_message(&[], &mut message) {
            Ok(NOISE_MESSAGE_LEN) => {}
            _ => return Err(SessionError::Handshake),
        }
        Ok(Initiator {
            state,
            message,
            key_id: credential.id,
            expires: credential.expires,
        })
    }

    /// The key id the credential names.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The credential's expiry (unix seconds, 0 for never).
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// The first message, for the HANDSHAKE frame (the same every time it
    /// is sent again).
    pub fn message(&self) -> &[u8; NOISE_MESSAGE_LEN] {
        &self.message
    }

    /// Reads the relay's answer: the session's keys if the relay holds the
    /// same secret.
    pub fn finish(mut self, reply: &[u8; NOISE_MESSAGE_LEN]) -> Result<SessionKeys, SessionError> {
        let mut payload = [0u8; NOISE_MESSAGE_LEN];
        self.state
            .read_message(reply, &mut payload)
            .map_err(|_| SessionError::Handshake)?;
        if !self.state.is_handshake_finished() {
            return Err(SessionError::Handshake);
        }
        Ok(split(self.state))
    }
}

/// Checks a client's first message without answering it: true if its
/// sender holds `secret` (or replays a message of someone who does). Costs
/// hashing and one AEAD check, no Diffie-Hellman.
pub fn verify(
    secret: &Secret,
    key_id: u32,
    expires: u64,
    message: &[u8; NOISE_MESSAGE_LEN],
) -> bool {
    respond_state(secret, key_id, expires, message).is_ok()
}

fn respond_state(
    secret: &Secret,
    key_id: u32,
    expires: u64,
    message: &[u8; NOISE_MESSAGE_LEN],
) -> Result<snow::HandshakeState, SessionError> {
    let prologue = prologue(key_id, expires);
    let mut state = builder(secret.expose(), &prologue)?
        .build_responder()
        .map_err(|_| SessionError::Handshake)?;
    let mut payload = [0u8; NOISE_MESSAGE_LEN];
    state
        .read_message(message, &mut payload)
        .map_err(|_| SessionError::Handshake)?;
    Ok(state)
}

/// The relay's half: reads the client's first message and, if it verifies,
/// writes the answer and derives the keys at once, so a failed handshake
/// leaves nothing behind.
pub fn respond(
    secret: &Secret,
    key_id: u32,
    expires: u64,
    message: &[u8; NOISE_MESSAGE_LEN],
) -> Result<([u8; NOISE_MESSAGE_LEN], SessionKeys), SessionError> {
    let mut state = respond_state(secret, key_id, expires, message)?;
    let mut reply = [0u8; NOISE_MESSAGE_LEN];
    match state.write_message(&[], &mut reply) {
        Ok(NOISE_MESSAGE_LEN) if state.is_handshake_finished() => {}
        _ => return Err(SessionError::Handshake),
    }
    Ok((reply, split(state)))
}

/// Which end of the session a [`Sealer`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client, which started the handshake.
    Client,
    /// The relay.
    Relay,
}

/// Seals what one end sends and opens what it receives, for one session.
pub struct Sealer {
    session: u32,
    send: LessSafeKey,
    recv: LessSafeKey,
    next_nonce: u64,
    window: ReplayWindow,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("session", &self.session)
            .field("next_nonce", &self.next_nonce)
            .finish_non_exhaustive()
    }
}

/// The AEAD nonce for counter `n`: four zero bytes and `n` big-endian,
/// Noise's layout for AESGCM.
fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// An AES-256-GCM key (ring's, in assembly).
fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    // ring refuses only a key of the wrong length, and this one is 32 bytes.
    let key = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256-GCM takes 32-byte keys");
    LessSafeKey::new(key)
}

impl Sealer {
    /// The sealer for `side` of session `session`, under `keys`.
    pub fn new(side: Side, session: u32, keys: &SessionKeys) -> Sealer {
        let (send, recv) = match side {
            Side::Client => (&keys.to_relay, &keys.to_client),
            Side::Relay => (&keys.to_client, &keys.to_relay),
        };
        Sealer {
            session,
            send: aead_key(send),
            recv: aead_key(recv),
            next_nonce: 0,
            window: ReplayWindow::new(),
        }
    }

    /// The session id, carried in every sealed datagram's key id field.
    pub fn session(&self) -> u32 {
        self.session
    }

    /// Appends `plain` (a datagram with an unsealed header) to `out` sealed:
    /// [`crate::wire::SEAL_OVERHEAD`] bytes larger.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        let frames = plain
            .get(HEADER_LEN..)
            .ok_or(SessionError::BadLength(plain.len()))?;
        let len = SEALED_HEADER_LEN + frames.len() + TAG_LEN;
        if len > MAX_DATAGRAM {
            return Err(SessionError::BadLength(plain.len()));
        }
        let start = out.len();
        out.resize(start + len, 0);
        let tag = self.seal_in_place(&mut out[start..start + len - TAG_LEN], frames)?;
        out[start + len - TAG_LEN..].copy_from_slice(&tag);
        Ok(())
    }

    /// Seals into `buf` (the sealed header's and the frames' room, the tag
    /// left to the caller): writes the header and nonce, copies `frames`
    /// after them and encrypts them there; returns the tag.
    pub fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        frames: &[u8],
    ) -> Result<[u8; TAG_LEN], SessionError> {
        if buf.len() != SEALED_HEADER_LEN + frames.len() {
            return Err(SessionError::BadLength(frames.len()));
        }
        // u64::MAX is never used, as Noise reserves it.
        if self.next_nonce == u64::MAX {
            return Err(SessionError::Exhausted);
        }
        let n = self.next_nonce;
        self.next_nonce += 1;
        let (head, body) = buf.split_at_mut(SEALED_HEADER_LEN);
        write_sealed_header(head, self.session, n);
        body.copy_from_slice(frames);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(n), Aad::from(&*head), body)
            .map_err(|_| SessionError::BadLength(frames.len()))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed datagram into `out` (cleared first) as a plain one: an
    /// unsealed header, then the frames. A datagram that does not verify or
    /// was seen before leaves the session as it was.
    pub fn open(&mut self, sealed: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        let (session, n) = sealed_header(sealed).ok_or(SessionError::NotSealed)?;
        if session != self.session {
            return Err(SessionError::OtherSession(session));
        }
        if !self.window.fresh(n) {
            return Err(SessionError::Replayed(n));
        }
        let (head, rest) = sealed.split_at(SEALED_HEADER_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0, 0, 0]);
        out.extend_from_slice(body);
        let tag = Tag::try_from(tag).map_err(|_| SessionError::NotSealed)?;
        self.recv
            .open_in_place_separate_tag(nonce(n), Aad::from(head), tag, &mut out[HEADER_LEN..], 0..)
            .map(|_| ())
            .map_err(|_| {
                out.clear();
                SessionError::Forged
            })?;
        self.window.mark(n);
        Ok(())
    }
}

fn write_sealed_header(head: &mut [u8], session: u32, n: u64) {
    head[..2].copy_from_slice(&MAGIC);
    head[2] = VERSION;
    head[3] = FLAG_AUTH;
    head[4..8].copy_from_slice(&session.to_le_bytes());
    head[8..16].copy_from_slice(&n.to_le_bytes());
}

/// True if `datagram` has a sealed datagram's header (it may still not
/// verify).
pub fn is_sealed(datagram: &[u8]) -> bool {
    datagram.len() >= 4
        && datagram[..2] == MAGIC
        && datagram[2] == VERSION
        && datagram[3] == FLAG_AUTH
}

/// The session id and nonce of a sealed datagram, if it is long enough to
/// be one (header, nonce and tag).
pub fn sealed_header(datagram: &[u8]) -> Option<(u32, u64)> {
    if !is_sealed(datagram) || datagram.len() < SEALED_HEADER_LEN + TAG_LEN {
        return None;
    }
    let session = u32::from_le_bytes(datagram[4..8].try_into().ok()?);
    let n = u64::from_le_bytes(datagram[8..16].try_into().ok()?);
    Some((session, n))
}

/// Blocks of 64 nonces the replay window keeps.
const BLOCKS: usize = 32;
/// How far behind the newest nonce one is still accepted: the bitmap less
/// one block, the block the newest nonce moves into (RFC 6479).
pub const REPLAY_WINDOW: u64 = (BLOCKS as u64 - 1) * 64;

/// The nonces seen lately, as a ring of bitmap blocks (RFC 6479): a nonce
/// is fresh if it is newer than any seen, or within the window and not
/// seen. Reordering up to [`REPLAY_WINDOW`] datagrams is tolerated.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Newest nonce marked (0 before any).
    newest: u64,
    bitmap: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new()
    }
}

impl ReplayWindow {
    /// Nothing seen yet.
    pub fn new() -> ReplayWindow {
        ReplayWindow {
            newest: 0,
            bitmap: [0; BLOCKS],
        }
    }

    /// True if `n` may be accepted: not seen, not too old.
    pub fn fresh(&self, n: u64) -> bool {
        if n > self.newest {
            return true;
        }
        if self.newest - n > REPLAY_WINDOW {
            return false;
        }
        let block = (n / 64) as usize % BLOCKS;
        self.bitmap[block] & (1 << (n % 64)) == 0
    }

    /// Records `n` as seen (after its datagram verified).
    pub fn mark(&mut self, n: u64) {
        let block = n / 64;
        if n > self.newest {
            // Blocks the newest nonce moves past are cleared for reuse.
            let current = self.newest / 64;
            let moved = (block - current).min(BLOCKS as u64);
            for i in 1..=moved {
                self.bitmap[((current + i) % BLOCKS as u64) as usize] = 0;
            }
            self.newest = n;
        }
        self.bitmap[(block % BLOCKS as u64) as usize] |= 1 << (n % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(expires: u64) -> Credential {
        Credential {
            id: 7,
            expires,
            secret: Secret::from_bytes([9; SECRET_LEN]),
        }
    }

    fn pair() -> (Sealer, Sealer) {
        let cred = credential(0);
        let client = Initiator::new(&cred).unwrap();
        assert!(verify(&cred.secret, 7, 0, client.message()));
        let (reply, relay_keys) = respond(&cred.secret, 7, 0, client.message()).unwrap();
        let client_keys = client.finish(&reply).unwrap();
        (
            Sealer::new(Side::Client, 42, &client_keys),
            Sealer::new(Side::Relay, 42, &relay_keys),
        )
    }

    fn plain(frames: &[u8]) -> Vec<u8> {
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(&[VERSION, 0, 0, 0, 0, 0]);
        d.extend_from_slice(frames);
        d
    }

    #[test]
    fn a_handshake_gives_both_sides_keys_that_open_each_others_datagrams() {
        let (mut client, mut relay) = pair();
        let msg = plain(b"frames go here");
        let mut sealed = Vec::new();
        client.seal(&msg, &mut sealed).unwrap();
        assert_eq!(sealed.len(), msg.len() + crate::wire::SEAL_OVERHEAD);
        assert!(
            !sealed.windows(6).any(|w| w == b"frames"),
            "the frames are not in the clear"
        );
        assert_eq!(sealed_header(&sealed), Some((42, 0)));
        let mut opened = Vec::new();
        relay.open(&sealed, &mut opened).unwrap();
        assert_eq!(opened, msg);
        // And the other way, under the other key.
        let (mut first, mut back) = (Vec::new(), Vec::new());
        relay.seal(&msg, &mut first).unwrap();
        relay.seal(&msg, &mut back).unwrap();
        assert_eq!(sealed_header(&back), Some((42, 1)));
        assert_eq!(
            relay.open(&back, &mut opened),
            Err(SessionError::Forged),
            "a side cannot open what it sealed itself"
        );
        client.open(&back, &mut opened).unwrap();
        assert_eq!(opened, msg);
    }

    #[test]
    fn a_wrong_secret_or_a_changed_prologue_fails_the_handshake() {
        let cred = credential(0);
        let client = Initiator::new(&cred).unwrap();
        let other = Secret::from_bytes([8; SECRET_LEN]);
        assert!(!verify(&other, 7, 0, client.message()));
        assert!(respond(&other, 7, 0, client.message()).is_err());
        assert!(
            !verify(&cred.secret, 8, 0, client.message()),
            "key id bound"
        );
        assert!(
            !verify(&cred.secret, 7, 1, client.message()),
            "expiry bound"
        );
        // A relay answer made under another secret does not verify.
        let impostor = Initiator::new(&Credential {
            id: 7,
            expires: 0,
            secret: other.clone(),
        })
        .unwrap();
        let (reply, _) = respond(&other, 7, 0, impostor.message()).unwrap();
        assert_eq!(client.finish(&reply).err(), Some(SessionError::Handshake));
    }

    #[test]
    fn every_changed_byte_of_a_sealed_datagram_is_refused() {
        let (mut client, mut relay) = pair();
        let mut sealed = Vec::new();
        client.seal(&plain(b"abc"), &mut sealed).unwrap();
        let mut out = Vec::new();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(relay.open(&bad, &mut out).is_err(), "byte {i} changed");
        }
        relay.open(&sealed, &mut out).unwrap();
    }

    #[test]
    fn a_replayed_datagram_is_refused_and_reordering_within_the_window_is_not() {
        let (mut client, mut relay) = pair();
        let sealed: Vec<Vec<u8>> = (0..3000)
            .map(|_| {
                let mut s = Vec::new();
                client.seal(&plain(b"x"), &mut s).unwrap();
                s
            })
            .collect();
        let mut out = Vec::new();
        relay.open(&sealed[2500], &mut out).unwrap();
        assert_eq!(
            relay.open(&sealed[2500], &mut out),
            Err(SessionError::Replayed(2500))
        );
        // Within the window, late ones are accepted once.
        relay
            .open(&sealed[2500 - REPLAY_WINDOW as usize], &mut out)
            .unwrap();
        relay.open(&sealed[2499], &mut out).unwrap();
        assert!(relay.open(&sealed[2499], &mut out).is_err());
        // Too far behind: refused even if never seen.
        assert_eq!(
            relay.open(&sealed[2500 - REPLAY_WINDOW as usize - 1], &mut out),
            Err(SessionError::Replayed(2500 - REPLAY_WINDOW - 1))
        );
        // A forged datagram with a high nonce does not move the window.
        let mut forged = sealed[2999].clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(relay.open(&forged, &mut out), Err(SessionError::Forged));
        relay.open(&sealed[2501], &mut out).unwrap();
        relay.open(&sealed[2999], &mut out).unwrap();
    }

    #[test]
    fn the_window_forgets_blocks_it_moves_past() {
        let mut w = ReplayWindow::new();
        for n in [0u64, 1, 64, 65, 5000, 5001, 100_000] {
            assert!(w.fresh(n));
            w.mark(n);
            assert!(!w.fresh(n));
        }
        assert!(!w.fresh(5000), "too old now");
        assert!(w.fresh(100_000 - 1));
        assert!(w.fresh(100_000 - REPLAY_WINDOW));
        assert!(!w.fresh(100_000 - REPLAY_WINDOW - 1));
    }

    #[test]
    fn short_or_unsealed_datagrams_are_not_opened() {
        let (_, mut relay) = pair();
        let mut out = Vec::new();
        assert_eq!(
            relay.open(&plain(b"x"), &mut out),
            Err(SessionError::NotSealed)
        );
        let mut short = vec![0u8; SEALED_HEADER_LEN + TAG_LEN - 1];
        write_sealed_header(&mut short, 42, 0);
        assert_eq!(relay.open(&short, &mut out), Err(SessionError::NotSealed));
        let mut other = vec![0u8; SEALED_HEADER_LEN + TAG_LEN];
        write_sealed_header(&mut other, 43, 0);
        assert_eq!(
            relay.open(&other, &mut out),
            Err(SessionError::OtherSession(43))
        );
    }
}

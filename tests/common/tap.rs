//! An on-path observer: a UDP forwarder between one client and the relay
//! that passes every datagram on unchanged and notes the ids it sees, so a
//! test's attacker knows what an attacker on the path would (the worst case
//! for forged datagrams). The relay sees the client at [`Tap::upstream`].

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use udprelay::wire::{self, AckKind, Frame};

use super::DEADLINE;
use super::forge::bind_loopback;

/// What the tap has seen pass, client to relay and back.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Sub ids of the client's SUBSCRIBE frames, first seen first.
    pub sub_ids: Vec<u32>,
    /// Session ids of the client's RELIABLE_PUBLISH frames, first seen first.
    pub sessions: Vec<u64>,
    /// One past the highest RELIABLE_PUBLISH sequence number the client sent.
    pub next_seq: u64,
    /// The highest cumulative number of the relay's publish ACKs.
    pub publish_acked: u64,
}

impl Seen {
    /// Notes the frames of one datagram the client sent.
    fn note_from_client(&mut self, datagram: &[u8]) {
        for frame in frames(datagram) {
            match frame {
                Frame::Subscribe { sub_id, .. } if !self.sub_ids.contains(&sub_id) => {
                    self.sub_ids.push(sub_id)
                }
                Frame::ReliablePublish { session, seq, .. } => {
                    if !self.sessions.contains(&session) {
                        self.sessions.push(session);
                    }
                    self.next_seq = self.next_seq.max(seq + 1);
                }
                _ => {}
            }
        }
    }

    /// Notes the frames of one datagram the relay sent.
    fn note_from_relay(&mut self, datagram: &[u8]) {
        for frame in frames(datagram) {
            if let Frame::Ack {
                kind: AckKind::Publish,
                cumulative,
                ..
            } = frame
            {
                self.publish_acked = self.publish_acked.max(cumulative);
            }
        }
    }
}

/// The frames after a datagram's header, up to the first that does not
/// decode. The header is skipped, not checked: whatever it carries (a token,
/// a key id) is no business of an observer's.
fn frames(datagram: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    let body = datagram.get(wire::HEADER_LEN..).unwrap_or_default();
    wire::Frames::new(body).map_while(Result::ok)
}

/// What the tap has seen, and a signal for each change.
type Shared = Arc<(Mutex<Seen>, Condvar)>;

/// A forwarder for one client (the first address that sends to it), killed
/// on drop.
pub struct Tap {
    /// Where the client sends: give this to the client as the relay.
    pub addr: SocketAddr,
    /// The tap's socket towards the relay: the address the relay sees for the
    /// client, and so the one an attacker forges.
    pub upstream: SocketAddr,
    /// What was seen.
    seen: Shared,
    /// Tells the forwarding threads to stop.
    stop: Arc<AtomicBool>,
    /// The two forwarding threads, one per direction.
    threads: Vec<JoinHandle<()>>,
}

impl Tap {
    /// Starts forwarding to `relay`.
    pub fn start(relay: SocketAddr) -> Tap {
        let down = bind_loopback();
        let up = bind_loopback();
        up.connect(relay).expect("connect to the relay");
        let (addr, upstream) = (down.local_addr().unwrap(), up.local_addr().unwrap());
        for s in [&down, &up] {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        let seen: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());

        let to_relay = {
            let (seen, stop, client) = (seen.clone(), stop.clone(), client.clone());
            thread::spawn(move || {
                forward(&down, &stop, |d, from| {
                    client.lock().unwrap().get_or_insert(from);
                    note(&seen, |s| s.note_from_client(d));
                    let _ = up.send(d);
                })
            })
        };
        let to_client = {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || {
                forward(&up2, &stop, |d, _| {
                    note(&seen, |s| s.note_from_relay(d));
                    if let Some(c) = *client.lock().unwrap() {
                        let _ = down2.send_to(d, c);
                    }
                })
            })
        };
        Tap {
            addr,
            upstream,
            seen,
            stop,
            threads: vec![to_relay, to_client],
        }
    }

    /// Where the client sends, as a command-line argument.
    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    /// Waits until what was seen satisfies `check`, failing with `what` past
    /// the deadline, and returns it.
    pub fn wait_for(&self, what: &str, check: impl Fn(&Seen) -> bool) -> Seen {
        let (lock, changed) = &*self.seen;
        let seen = lock.lock().unwrap();
        let (seen, timeout) = changed
            .wait_timeout_while(seen, DEADLINE, |s| !check(s))
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "the tap did not see {what} within {DEADLINE:?}; it saw {:?}",
            *seen
        );
        seen.clone()
    }
}

/// Receives on `socket` until `stop`, handing each datagram and its sender
/// to `on`.
fn forward(socket: &UdpSocket, stop: &AtomicBool, mut on: impl FnMut(&[u8], SocketAddr)) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            on(&buf[..n], from);
        }
    }
}

/// Updates what was seen and wakes whoever waits on it.
fn note(seen: &Shared, update: impl FnOnce(&mut Seen)) {
    let (lock, changed) = &**seen;
    update(&mut lock.lock().unwrap());
    changed.notify_all();
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

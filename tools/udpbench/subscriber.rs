//! The subscribers: each on its own socket and thread, subscribed to the
//! relay (plainly or reliably) or, for baselines and raw runs, reading bare
//! messages; each counts what it got into its own tally.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use udprelay::auth::Credential;
use udprelay::client::{ReliableSubscription, Subscription, SubscriptionEvent};
use udprelay::driver::batch::{RecvBatch, enable_gro};
use udprelay::reliable::ArqConfig;
use udprelay::wire::StartPosition;

use crate::Args;
use crate::traffic::{Seen, Tally, epoch_ns, handshake, socket};

/// Runs the subscribers of `channel` until `stop`, returning their tallies.
#[allow(clippy::too_many_arguments)] // one run's shared state, each used
pub fn subscribe_all(
    args: &Args,
    channel: &str,
    target: SocketAddr,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
    progress: Arc<AtomicU64>,
    credential: Option<Credential>,
) -> Result<(Vec<thread::JoinHandle<Tally>>, Vec<SocketAddr>), String> {
    let mut handles = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..args.subscribers {
        let socket = socket()?;
        addrs.push(socket.local_addr().map_err(|e| e.to_string())?);
        let publishers = args.publishers;
        let reliable = args.reliable;
        let via_relay = args.baseline.is_none() && !args.raw;
        let channel = channel.to_string();
        let stop = Arc::clone(&stop);
        let ready = Arc::clone(&ready);
        let progress = Arc::clone(&progress);
        let credential = credential.clone();
        handles.push(thread::spawn(move || {
            let mut tally = Tally::new();
            let mut seen = Seen::new(publishers);
            // Many datagrams per call; runs the relay sent as one GSO
            // buffer may arrive as one (GRO).
            let mut received = RecvBatch::new();
            enable_gro(&socket);
            let now = Instant::now();
            let mut plain =
                Subscription::new(i as u32 + 1, &channel, StartPosition::Latest, now).ok();
            let mut rel = ReliableSubscription::new(
                i as u32 + 1,
                &channel,
                StartPosition::Latest,
                ArqConfig::default(),
                now,
            )
            .ok();
            if !via_relay {
                ready.fetch_add(1, Ordering::SeqCst);
            }
            let mut counted_ready = !via_relay;
            if via_relay {
                let _ = socket.connect(target);
            }
            // With a credential, every datagram is sealed both ways; a
            // subscriber that cannot handshake counts nothing.
            let mut secured = match &credential {
                Some(c) if via_relay => match handshake(&socket, c) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!("udpbench: subscriber {i}: {e}");
                        return tally;
                    }
                },
                _ => None,
            };
            let mut opened = Vec::new();
            let mut reported = 0;
            while !stop.load(Ordering::SeqCst) {
                let now = Instant::now();
                if via_relay {
                    let out = if reliable {
                        rel.as_mut().and_then(|s| s.poll_transmit(now))
                    } else {
                        plain.as_mut().and_then(|s| s.poll_transmit(now))
                    };
                    if let Some(d) = out {
                        match &mut secured {
                            Some(s) => {
                                if let Ok(sealed) = s.seal(&d) {
                                    let _ = socket.send(&sealed);
                                }
                            }
                            None => {
                                let _ = socket.send(&d);
                            }
                        }
                    }
                }
                let Ok(n) = received.recv_wait(&socket) else {
                    continue;
                };
                let now_ns = epoch_ns(epoch);
                for k in 0..n {
                    for datagram in received.get(k).0 {
                        if !via_relay {
                            seen.record(&mut tally, datagram, now_ns);
                            continue;
                        }
                        let datagram = match &mut secured {
                            Some(s) => match s.open(datagram, &mut opened) {
                                Ok(d) => d,
                                Err(_) => continue,
                            },
                            None => datagram,
                        };
                        let mut on_event = |e: SubscriptionEvent<'_>| {
                            if let SubscriptionEvent::Message { payload, .. } = e {
                                seen.record(&mut tally, payload, now_ns);
                            }
                        };
                        if reliable {
                            if let Some(s) = rel.as_mut() {
                                s.handle_datagram(now, datagram, &mut on_event);
                            }
                        } else if let Some(s) = plain.as_mut() {
                            s.handle_datagram(now, datagram, &mut on_event);
                        }
                    }
                }
                // Shared once a read, not once a message: ten subscribers
                // adding to one counter per message kept its cache line
                // moving between the cores.
                progress.fetch_add(tally.received - reported, Ordering::Relaxed);
                reported = tally.received;
                let active = if reliable {
                    rel.as_ref().is_some_and(|s| s.is_active())
                } else {
                    plain.as_ref().is_some_and(|s| s.is_active())
                };
                if active && !counted_ready {
                    counted_ready = true;
                    ready.fetch_add(1, Ordering::SeqCst);
                }
            }
            tally
        }));
    }
    Ok((handles, addrs))
}

//! A new configuration while running (SIGHUP): limits take effect for
//! what comes next (nothing there is dropped for a lower one), raw ports
//! are named again, and what cannot change live is said. Subscriptions,
//! sessions and stored messages are untouched, except what a new key file
//! no longer allows: a key removed (or whose secret changed) ends its
//! clients' keyed sessions, and a subscription or publishing session whose
//! permission is gone ends, each with an ERROR to its client.

use std::net::SocketAddr;

use super::subscriptions::Subscriptions;
use super::{Now, Relay, publishing, subscriptions};
use crate::auth::KeyFile;
use crate::config::RelayConfig;
use crate::wire::{ErrorCode, Frame, StartPosition};

/// Something an address holds for one channel, or a few.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Held {
    /// Single-channel subscription, by the client's id.
    Subscription(u32),
    /// Reliable publishing session, by the client's id.
    Session(u64),
}

/// What a new key file took away ([`Relay::rekey`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revoked {
    /// Keyed sessions ended: their key was removed or changed.
    pub keyed_sessions: usize,
    /// Subscriptions (single-channel or wildcard) ended for a permission
    /// withdrawn.
    pub subscriptions: usize,
    /// Reliable publishing sessions ended for a permission withdrawn.
    pub publishing_sessions: usize,
}

impl Relay {
    /// Takes the limits and raw ports of `new` (`old` is what runs): the
    /// raw-in ports' channels are `new.raw_in`'s, in order (the driver
    /// binds the sockets), and raw-out goes where `new.raw_out` says.
    /// Returns the settings that cannot change while it runs and did, by
    /// flag name.
    pub fn reconfigure(&mut self, old: &RelayConfig, new: &RelayConfig) -> Vec<&'static str> {
        self.max_message_size = new.max_message_size;
        self.channels.set_max(new.max_channels);
        self.peers.set_lease(new.lease);
        self.subscriptions.set_limits(subscriptions::Limits {
            max: new.max_subscriptions,
            max_per_client: new.max_subscriptions_per_client,
            lease: new.lease,
            replay_budget: (new.replay_rate / 1000).max(1) as usize,
            arq: new.arq,
        });
        self.wildcards.set_limits(
            (new.max_subscriptions / 100).max(16),
            new.max_subscriptions_per_client.min(64),
        );
        self.publishing.set_limits(publishing::Limits {
            max: new.max_sessions,
            max_per_client: new.max_subscriptions_per_client,
            memory: new.session_memory,
            arq: new.arq,
        });
        self.reassembly
            .set_limits(new.reassembly_memory, new.max_message_size);
        self.outbox.set_datagram_size(new.datagram_size);
        self.cluster_ack = new.cluster_ack;
        // Raw ports: the channels they name are pinned again, from scratch.
        self.channels.unpin_all();
        self.raw_in = (new.raw_in.iter())
            .map(|(_, name)| self.channels.pin(name))
            .collect();
        for (name, addr) in &new.raw_out {
            let id = self.channels.pin(name);
            if self.own.contains(*addr) {
                tracing::warn!(%addr, channel = %name, "reload: raw-out to one of the relay's own sockets refused");
            } else {
                self.channels[id].raw_out.push(*addr);
            }
        }
        let mut fixed = Vec::new();
        let mut differs = |changed: bool, flag: &'static str| {
            if changed {
                fixed.push(flag);
            }
        };
        differs(old.listen != new.listen, "listen");
        differs(old.data_dir != new.data_dir, "data-dir");
        differs(old.log.segment_size != new.log.segment_size, "segment-size");
        differs(old.log.fsync != new.log.fsync, "fsync");
        differs(old.log.retain_bytes != new.log.retain_bytes, "retain-bytes");
        differs(old.log.retain_age != new.log.retain_age, "retain-age");
        differs(
            old.truncate_corrupt != new.truncate_corrupt,
            "truncate-corrupt",
        );
        // A key file is read again and its keys, permissions and
        // `--auth` taken ([`Relay::rekey`]); having one or not is fixed.
        let keyed = old.keys.is_some() == new.keys.is_some();
        differs(!keyed, "keys");
        differs(!keyed && old.auth != new.auth, "auth");
        differs(
            !keyed && old.max_auth_sessions != new.max_auth_sessions,
            "max-auth-sessions",
        );
        differs(
            old.allow_anonymous != new.allow_anonymous,
            "allow-anonymous",
        );
        differs(old.cluster != new.cluster, "cluster");
        differs(old.metrics != new.metrics, "metrics");
        fixed
    }
}

impl Relay {
    /// Takes a key file read again (and `--auth`, `--max-auth-sessions`),
    /// at a relay that runs with keys. A key kept as it was keeps its
    /// sessions and all they hold; a key removed or changed loses its
    /// sessions and what they held, its clients told with an ERROR sealed
    /// under the session that ends; then everything held is checked
    /// against the new permissions and what is no longer allowed ends, its
    /// client told why. A relay without keys ignores this.
    pub fn rekey(
        &mut self,
        now: Now,
        keys: KeyFile,
        required: bool,
        max_auth_sessions: usize,
    ) -> Revoked {
        let mut revoked = Revoked::default();
        let Some(secure) = &mut self.secure else {
            return revoked;
        };
        let ending: Vec<(u32, SocketAddr, Option<String>)> = (secure
            .rekey(keys, required, max_auth_sessions)
            .into_iter())
        .map(|(id, addr, name)| {
            let why = format!("key {name:?} was removed from the relay's key file or changed");
            (id, addr, Some(why))
        })
        .collect();
        revoked.keyed_sessions = ending.len();
        self.end_keyed_sessions(&ending);
        self.recheck(now, &mut revoked);
        self.counters.revoked +=
            (revoked.keyed_sessions + revoked.subscriptions + revoked.publishing_sessions) as u64;
        revoked
    }

    /// Ends what the permissions no longer allow: wildcard subscriptions
    /// whose pattern is denied (and the channels a wildcard follows that
    /// are now denied, quietly, as a deny pattern leaves them out),
    /// single-channel subscriptions and publishing sessions of channels
    /// now denied.
    fn recheck(&mut self, now: Now, revoked: &mut Revoked) {
        let Some(secure) = &self.secure else {
            return;
        };
        // Wildcards first: what each may keep, judged before anything
        // changes.
        let mut followed = foldhash::HashSet::default();
        let mut wildcards = Vec::new();
        for (addr, sub_id) in self.wildcards.all() {
            let Some(w) = self.wildcards.get(addr, sub_id) else {
                continue;
            };
            let who = secure.who_at(addr);
            let permissions = secure.permissions(who);
            let judged = match permissions.map(|p| p.subscribe_pattern(&w.pattern)) {
                Some(Err(denied)) => Err(denied.to_string()),
                _ => {
                    let denied =
                        |name: &str| permissions.is_some_and(|p| p.subscribe(name).is_err());
                    // Only what the address still holds under the id (a
                    // client may have taken the id for another channel).
                    let held = (w.channels.iter())
                        .filter(|&&(ch, id)| Subscriptions::holds(&self.peers, addr, id, ch));
                    let (gone, kept): (Vec<_>, Vec<_>) =
                        held.partition(|&&(ch, _)| denied(&self.channels[ch].name));
                    followed.extend(kept.iter().map(|&&(ch, id)| (addr, id, ch)));
                    Ok((
                        who,
                        secure.owner(who),
                        gone.into_iter().copied().collect::<Vec<_>>(),
                    ))
                }
            };
            wildcards.push((addr, sub_id, judged));
        }
        for (addr, sub_id, judged) in wildcards {
            match judged {
                Err(denied) => {
                    self.end_pattern(addr, sub_id);
                    self.tell_revoked(addr, &denied);
                    revoked.subscriptions += 1;
                }
                Ok((who, owner, gone)) => {
                    let peers = &self.peers;
                    if let Some(w) = self.wildcards.get_mut(addr, sub_id) {
                        w.who = who;
                        w.owner = owner;
                        w.channels.retain(|&(ch, id)| {
                            !gone.contains(&(ch, id)) && Subscriptions::holds(peers, addr, id, ch)
                        });
                    }
                    for (_, id) in gone {
                        let (channels, peers) = (&mut self.channels, &mut self.peers);
                        (self.subscriptions).unsubscribe(
                            addr,
                            id,
                            channels,
                            peers,
                            &mut self.counters,
                        );
                    }
                    // And the channels it may follow now and did not.
                    self.follow_matching(now, addr, sub_id, StartPosition::Latest);
                }
            }
        }
        let Some(secure) = &self.secure else {
            return;
        };
        // Then what single channels each address holds, judged first and
        // ended after.
        let mut ends: Vec<(SocketAddr, Held, String)> = Vec::new();
        for (&addr, peer) in self.peers.iter() {
            let Some(permissions) = secure.permissions(secure.who_at(addr)) else {
                continue;
            };
            for &(id, ch) in &peer.subscriptions {
                if followed.contains(&(addr, id, ch)) {
                    continue;
                }
                if let Err(denied) = permissions.subscribe(&self.channels[ch].name) {
                    ends.push((addr, Held::Subscription(id), denied.to_string()));
                }
            }
            for session in &peer.sessions {
                let denied = (session.channels.iter())
                    .find_map(|&ch| permissions.publish(&self.channels[ch].name).err());
                if let Some(denied) = denied {
                    ends.push((addr, Held::Session(session.id), denied.to_string()));
                }
            }
        }
        ends.sort_unstable_by_key(|(addr, held, _)| (*addr, *held));
        for (addr, held, why) in ends {
            match held {
                Held::Subscription(sub_id) => {
                    let (channels, peers) = (&mut self.channels, &mut self.peers);
                    (self.subscriptions).unsubscribe(
                        addr,
                        sub_id,
                        channels,
                        peers,
                        &mut self.counters,
                    );
                    revoked.subscriptions += 1;
                }
                Held::Session(id) => {
                    if let Some(s) = self.peers.remove_session(&addr, id) {
                        for &ch in &s.channels {
                            self.channels[ch].session_ended(s.id, addr);
                        }
                        (self.publishing).release(s, &mut self.channels, &mut self.counters);
                    }
                    revoked.publishing_sessions += 1;
                }
            }
            self.tell_revoked(addr, &why);
        }
    }

    /// Tells `addr` that what it held ended, and why.
    fn tell_revoked(&mut self, addr: SocketAddr, why: &str) {
        self.tell_denied(
            addr,
            &format!("{why} (withdrawn by the relay's configuration)"),
        );
    }

    /// An ERROR `denied` to `addr`, outside the reply budget: it goes only
    /// to an address that held something (so proved it receives there),
    /// once for each thing it held that a reload ended.
    pub(super) fn tell_denied(&mut self, addr: SocketAddr, reason: &str) {
        let frame = Frame::Error {
            code: ErrorCode::DENIED,
            reason: super::replies::truncate_utf8(reason, 200),
        };
        self.counters.errors_sent += 1;
        self.outbox.push_frame(addr, &frame);
    }
}

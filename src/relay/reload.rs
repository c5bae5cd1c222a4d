//! A new configuration while running (SIGHUP): limits take effect for
//! what comes next (nothing there is dropped for a lower one), raw ports
//! are named again, and what cannot change live is said. Subscriptions,
//! sessions and stored messages are untouched.

use super::{Relay, publishing, subscriptions};
use crate::config::RelayConfig;

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
        differs(old.keys != new.keys, "keys");
        differs(old.auth != new.auth, "auth");
        differs(
            old.max_auth_sessions != new.max_auth_sessions,
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

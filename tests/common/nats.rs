//! A NATS JetStream cluster of real `nats-server` processes on free
//! loopback ports, each with its own store directory, killed on drop.
//!
//! Without `nats-server` on the PATH the tests that need one say so and
//! pass, unless `UDPRELAY_REQUIRE_NATS` is set (as `.ci/run` does, after
//! installing it): then its absence fails them.

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::{ChildGuard, wait_until};

/// The server binary: on the PATH, or where Debian puts it (`/usr/sbin`,
/// not on every user's PATH).
fn server_bin() -> &'static str {
    let on_path = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if on_path {
        "nats-server"
    } else {
        "/usr/sbin/nats-server"
    }
}

/// True if `nats-server` can be run; if not, says why tests are skipped
/// (or fails when the environment requires it).
pub fn available() -> bool {
    super::tool_available(
        server_bin(),
        "UDPRELAY_REQUIRE_NATS",
        "apt-get install nats-server",
    )
}

/// `n` distinct free TCP ports on 127.0.0.1 (free when asked: each server
/// binds its own right after; one that finds its port taken is started
/// again on new ones).
fn free_ports(n: usize) -> Vec<u16> {
    // Held together until all are known, so that none is handed out twice.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One server of the cluster.
pub struct Node {
    pub process: Option<ChildGuard>,
    pub client_port: u16,
    route_port: u16,
    name: String,
}

/// A JetStream cluster of `n` servers.
pub struct NatsCluster {
    pub nodes: Vec<Node>,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` clustered servers and waits until each takes clients.
    /// A port taken by someone else meanwhile (another test picks ports at
    /// the same time) makes a server exit: then all start again on new
    /// ports, a few times.
    pub fn start(n: usize) -> NatsCluster {
        for _ in 0..4 {
            let dir = tempfile::tempdir().expect("tempdir");
            let ports = free_ports(2 * n);
            let nodes: Vec<Node> = (0..n)
                .map(|i| Node {
                    process: None,
                    client_port: ports[2 * i],
                    route_port: ports[2 * i + 1],
                    name: format!("n{i}"),
                })
                .collect();
            let mut cluster = NatsCluster { nodes, dir };
            if (0..n).all(|i| cluster.run(i)) {
                return cluster;
            }
        }
        panic!("nats-server did not start on free ports four times");
    }

    /// (Re)starts server `i` on its ports and store and waits until it
    /// takes clients; false if it exited first (its port was taken).
    pub fn run(&mut self, i: usize) -> bool {
        let routes: Vec<String> = (self.nodes)
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.route_port))
            .collect();
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        let mut cmd = Command::new(server_bin());
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(node.client_port.to_string())
            .args(["-js", "-sd"])
            .arg(&store)
            .args(["-n", &node.name]);
        if self.nodes.len() > 1 {
            cmd.args(["--cluster_name", "udprelay-test", "--cluster"])
                .arg(format!("nats://127.0.0.1:{}", node.route_port))
                .arg("--routes")
                .arg(routes.join(","));
        }
        let log_path = self.dir.path().join(format!("{}.log", node.name));
        let log = std::fs::File::create(log_path).expect("server log file");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let port = node.client_port;
        let name = node.name.clone();
        let process = self.nodes[i]
            .process
            .insert(ChildGuard::spawn("nats-server", &mut cmd));
        let mut exited = false;
        wait_until(&format!("nats-server {name} to take clients"), || {
            exited = process.child().try_wait().ok().flatten().is_some();
            exited || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        !exited
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            let pid = process.child().id();
            super::signal(pid, "KILL");
            process.wait_deadline(super::DEADLINE);
        }
    }

    /// Every server's client URL, comma-separated: the relays' `--cluster`.
    pub fn urls(&self) -> String {
        (self.nodes)
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`'s client URL alone.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }
}

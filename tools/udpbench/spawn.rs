//! What carries the traffic besides the relay under test, and the relay
//! when udpbench starts it: a spawned `udprelay`, socat, or the minimal
//! forwarder; and the spawned relay's CPU time.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::traffic::socket;

/// A relay started for the run, stopped when dropped.
pub struct Spawned {
    /// The relay's raw-in address, when it was given one.
    pub raw_in: Option<SocketAddr>,
    /// The relay process.
    pub child: Child,
    /// Where it listens for clients.
    pub addr: SocketAddr,
    /// Its data directory, removed when dropped.
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the udprelay next to this binary on a free port with a temporary
/// data directory and `extra` flags, and reads the addresses it reports.
pub fn spawn_relay(extra: &[String]) -> Result<Spawned, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let relay_bin = exe.with_file_name("udprelay");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // Quiet unless a --relay-arg asks for another log level.
    let quiet: &[&str] = if extra.iter().any(|a| a.starts_with("--log-level")) {
        &[]
    } else {
        &["--log-level", "warn"]
    };
    let mut child = Command::new(&relay_bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(quiet)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", relay_bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    stdout.read_line(&mut line).map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("udprelay listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected first line from udprelay: {line:?}"))?;
    let mut raw_in = None;
    if extra.iter().any(|a| a == "--raw-in") {
        line.clear();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        raw_in = line
            .strip_prefix("raw-in ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
    }
    // Keep reading what else it prints, so it never writes to a closed pipe.
    thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Ok(Spawned {
        child,
        addr,
        raw_in,
        _dir: dir,
    })
}

/// A free UDP port on 127.0.0.1, for a program that must be told its port.
pub fn free_udp_port() -> Result<SocketAddr, String> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| e.to_string())
}

/// socat, killed when dropped.
pub struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts socat forwarding datagrams from `listen` to the one subscriber,
/// and waits until it has bound its port.
pub fn spawn_socat(listen: SocketAddr, subscribers: &[SocketAddr]) -> Result<Socat, String> {
    let [to] = subscribers else {
        return Err("--baseline socat forwards to one subscriber: use --subscribers 1".into());
    };
    let child = Command::new("socat")
        .args([
            "-u".to_string(),
            "-b".to_string(),
            "65536".to_string(),
            format!(
                "UDP4-RECV:{},bind={},rcvbuf=8388608",
                listen.port(),
                listen.ip()
            ),
            format!("UDP4-SENDTO:{to},sndbuf=8388608"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start socat (is it installed?): {e}"))?;
    let socat = Socat(child);
    // Bound once /proc/net/udp lists its port (hex, after the address).
    let needle = format!(":{:04X} ", listen.port());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
        if table.lines().any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|local| format!("{local} ").ends_with(&needle))
        }) {
            return Ok(socat);
        }
        if Instant::now() > deadline {
            return Err(format!("socat did not bind {listen} within 5 s"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// Where the forwarder sends: filled in once the subscribers have sockets.
pub type Targets = Arc<Mutex<Vec<SocketAddr>>>;

/// A minimal forwarder until `stop`: every datagram it receives goes to
/// every subscriber as it is. The floor of what any relay costs.
pub fn forwarder(
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, thread::JoinHandle<()>, Targets), String> {
    let socket = socket()?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    let targets = Arc::new(Mutex::new(Vec::<SocketAddr>::new()));
    let t = Arc::clone(&targets);
    let handle = thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::SeqCst) {
            let Ok(n) = socket.recv(&mut buf) else {
                continue;
            };
            let targets = t.lock().map(|g| g.clone()).unwrap_or_default();
            for to in targets {
                let _ = socket.send_to(&buf[..n], to);
            }
        }
    });
    Ok((addr, handle, targets))
}

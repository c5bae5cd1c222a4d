//! What carries the traffic besides the relay under test, and the relay
//! when udpbench starts it: a spawned `udprelay`, socat, or the minimal
//! forwarder; and the spawned relay's CPU time. `--in-process` runs the
//! relay's driver on a thread here instead, stopped through its handle.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use udprelay::config::{AuthMode, RelayConfig};
use udprelay::driver::{BoundSockets, Driver, Shutdown, ShutdownHandle};

use crate::traffic::socket;

/// Data directories of relays started for the run (and the child's pid,
/// for a child), removed if udpbench is stopped by a signal: a dropped
/// [`Spawned`] takes its own entry out.
static LEFT_BEHIND: Mutex<Vec<(Option<u32>, std::path::PathBuf)>> = Mutex::new(Vec::new());

/// On SIGINT or SIGTERM to udpbench alone: kill the relays it started,
/// remove their data directories, exit 130.
pub fn clean_up_on_signals() -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let left = LEFT_BEHIND.lock().map(|l| l.clone()).unwrap_or_default();
                for (pid, dir) in left {
                    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
                        // SAFETY: kill has no memory-safety preconditions;
                        // the pid is our own child's, not yet waited for.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                }
                eprintln!("udpbench: stopped by signal {signal}; the relays it started are stopped and their data removed");
                std::process::exit(130);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn leave_behind(pid: Option<u32>, dir: &std::path::Path) {
    if let Ok(mut left) = LEFT_BEHIND.lock() {
        left.push((pid, dir.to_path_buf()));
    }
}

fn taken_back(dir: &std::path::Path) {
    if let Ok(mut left) = LEFT_BEHIND.lock() {
        left.retain(|(_, d)| d != dir);
    }
}

/// A relay started for the run, stopped when dropped.
pub struct Spawned {
    /// The relay's raw-in address, when it was given one.
    pub raw_in: Option<SocketAddr>,
    /// The relay process or thread.
    relay: Running,
    /// Where it listens for clients.
    pub addr: SocketAddr,
    /// Its data directory, removed when dropped.
    _dir: tempfile::TempDir,
}

/// Where a started relay runs.
enum Running {
    /// A `udprelay` child process.
    Child(Child),
    /// A driver on a thread of this process.
    Thread {
        /// Stops the driver.
        shutdown: ShutdownHandle,
        /// The driver's thread, joined when dropped.
        thread: Option<JoinHandle<()>>,
        /// The thread's kernel id, for its CPU time.
        tid: libc::pid_t,
    },
}

impl Spawned {
    /// CPU time the relay used so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        match &self.relay {
            Running::Child(child) => cpu_seconds(&format!("/proc/{}/stat", child.id())),
            Running::Thread { tid, .. } => cpu_seconds(&format!("/proc/self/task/{tid}/stat")),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        taken_back(self._dir.path());
        match &mut self.relay {
            Running::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Thread {
                shutdown, thread, ..
            } => {
                shutdown.shutdown();
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// Runs a relay with default settings on a thread of this process, on a
/// free port with a temporary data directory; with `raw_out`, also a raw-in
/// port and those raw-out addresses for `channel`; with `keys`, that key
/// file, required.
pub fn run_in_process(
    raw_out: Option<&[SocketAddr]>,
    channel: &str,
    keys: Option<&std::path::Path>,
) -> Result<Spawned, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = RelayConfig {
        listen: localhost(0),
        data_dir: dir.path().to_path_buf(),
        keys: keys.map(|k| k.to_path_buf()),
        auth: if keys.is_some() {
            AuthMode::Required
        } else {
            AuthMode::Optional
        },
        ..RelayConfig::default()
    };
    if let Some(raw_out) = raw_out {
        config.raw_in = vec![(localhost(0), channel.into())];
        config.raw_out = raw_out.iter().map(|a| (channel.into(), *a)).collect();
    }
    let sockets = BoundSockets::bind(&config).map_err(|e| e.to_string())?;
    // Not Shutdown::on_signals: Ctrl-C is udpbench's, not the relay's.
    let (shutdown, handle) = Shutdown::handle();
    let mut driver = Driver::new(&config, sockets, shutdown).map_err(|e| e.to_string())?;
    let addr = driver.local_addr().map_err(|e| e.to_string())?;
    let raw_in = driver
        .raw_in_addrs()
        .map_err(|e| e.to_string())?
        .first()
        .copied();
    let (tid_tx, tid_rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("udprelay".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            if let Err(e) = driver.run() {
                eprintln!("udpbench: in-process relay: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    let tid = tid_rx
        .recv()
        .map_err(|_| "the relay thread ended at once".to_string())?;
    leave_behind(None, dir.path());
    Ok(Spawned {
        raw_in,
        relay: Running::Thread {
            shutdown: handle,
            thread: Some(thread),
            tid,
        },
        addr,
        _dir: dir,
    })
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
    let mut command = Command::new(&relay_bin);
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(quiet)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The relay goes when udpbench goes, however it goes (even kill -9).
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl, which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", relay_bin.display()))?;
    leave_behind(Some(child.id()), dir.path());
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    // Lines before it (`metrics on …`, with a --relay-arg) are passed over.
    loop {
        line.clear();
        if stdout.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("udprelay ended before it said where it listens".into());
        }
        if line.starts_with("udprelay listening on ") {
            break;
        }
    }
    let addr = line
        .trim()
        .strip_prefix("udprelay listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected line from udprelay: {line:?}"))?;
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
        relay: Running::Child(child),
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
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
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

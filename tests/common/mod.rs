//! Harness for end-to-end tests: the real binaries on free 127.0.0.1 ports,
//! killed on drop, with every wait bounded by a deadline that fails loudly.

#![allow(dead_code)] // each test file uses its own subset

pub mod forge;
pub mod nats;
pub mod tap;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use udprelay::auth::Credential;
use udprelay::client::{AddressProof, Handshake, Secured, StatsPager};
use udprelay::wire::{self, DeliveryMode, Frame, StartPosition};

/// Generous: the machine is shared and CI may be slow (10,000 reliable
/// messages through two 10 % loss paths took up to 14 s beside the other
/// tests). Only a failing test waits this long.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn udprelay_bin() -> &'static str {
    env!("CARGO_BIN_EXE_udprelay")
}

pub fn udpcat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_udpcat")
}

/// A child process that is killed when dropped, so a failing test leaves
/// nothing running.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard {
            child: Some(child),
            name: name.to_string(),
        }
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already waited for")
    }

    /// Waits for the process to exit, failing the test past the deadline.
    pub fn wait_deadline(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= until {
                panic!("{} did not exit within {deadline:?}", self.name);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit and collects stdout and stderr (both must be piped).
    pub fn output_deadline(mut self, deadline: Duration) -> Output {
        let child = self.child.as_mut().unwrap();
        let stdout = child.stdout.take().map(drain_in_background);
        let stderr = child.stderr.take().map(drain_in_background);
        let status = self.wait_deadline(deadline);
        let collect = |h: Option<thread::JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().unwrap()).unwrap_or_default()
        };
        Output {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        }
    }
}

fn drain_in_background(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `udprelay` with its own temporary data directory.
pub struct Relay {
    pub process: ChildGuard,
    pub addr: SocketAddr,
    pub raw_in: Vec<SocketAddr>,
    /// Where `--metrics` is served, if it was asked for.
    pub metrics: Option<SocketAddr>,
    pub dir: TempDir,
    stderr_path: PathBuf,
}

impl Relay {
    /// Starts a relay on a free port with `args` added, and waits until it
    /// reports its addresses.
    pub fn start(args: &[&str]) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        Relay::start_in(dir, args)
    }

    pub fn start_in(dir: TempDir, args: &[&str]) -> Relay {
        Relay::start_at(dir, "127.0.0.1:0", args)
    }

    /// Starts a relay listening on `listen` (a relay restarted on the port
    /// its clients know), on the data directory under `dir`.
    pub fn start_at(dir: TempDir, listen: &str, args: &[&str]) -> Relay {
        let stderr_path = dir.path().join("relay.stderr");
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("stderr file");
        let data_dir = dir.path().join("data");
        let mut cmd = Command::new(udprelay_bin());
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut process = ChildGuard::spawn("udprelay", &mut cmd);
        let lines = line_reader(process.child().stdout.take().unwrap());
        let raw_count = args.iter().filter(|a| **a == "--raw-in").count();
        let mut addr = None;
        let mut raw_in = Vec::new();
        let mut metrics = None;
        let until = Instant::now() + DEADLINE;
        while addr.is_none() || raw_in.len() < raw_count {
            let left = until.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "udprelay did not report its addresses within {DEADLINE:?}; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                ),
            };
            if let Some(a) = line.strip_prefix("udprelay listening on ") {
                addr = Some(a.trim().parse().expect("listen address"));
            } else if let Some(rest) = line.strip_prefix("metrics on http://") {
                let a = rest.trim().trim_end_matches("/metrics");
                metrics = Some(a.parse().expect("metrics address"));
            } else if let Some(rest) = line.strip_prefix("raw-in ") {
                let a = rest.split_whitespace().next().unwrap();
                raw_in.push(a.parse().expect("raw-in address"));
            }
        }
        Relay {
            process,
            addr: addr.unwrap(),
            raw_in,
            metrics,
            dir,
            stderr_path,
        }
    }

    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> (ExitStatus, String, TempDir) {
        let pid = self.process.child().id();
        signal(pid, "TERM");
        let status = self.process.wait_deadline(DEADLINE);
        let stderr = self.stderr();
        (status, stderr, self.dir)
    }

    /// Kills the relay with SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) -> TempDir {
        let pid = self.process.child().id();
        signal(pid, "KILL");
        self.process.wait_deadline(DEADLINE);
        self.dir
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Lines of a child's output, read on a thread, so waits can have deadlines.
pub fn line_reader(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Every line left in `lines` once the child has exited: the reader thread
/// may still be passing on the last ones, so this waits for it to reach the
/// end of the output (the channel closes), within the deadline.
pub fn rest_of(lines: &mpsc::Receiver<String>) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut rest = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => rest.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the child's output did not end: {rest:?}")
            }
        }
    }
    rest.join("\n")
}

/// Runs `udpcat` with `args` to completion (stdin from `input`).
pub fn udpcat(args: &[&str], input: &[u8]) -> Output {
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn("udpcat", &mut cmd);
    let mut stdin = guard.child().stdin.take().unwrap();
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = guard.output_deadline(DEADLINE);
    writer.join().unwrap();
    out
}

/// A `udpcat sub` running in the background that has been accepted by the
/// relay (its "subscribed" line was seen) before this returns.
/// Adds key `name` to the key file `keys` (`udprelay key new`, with the
/// given flags); returns its credential.
pub fn new_key(keys: &std::path::Path, name: &str, flags: &[&str]) -> Credential {
    let out = Command::new(udprelay_bin())
        .args(["key", "new", name, "--keys", keys.to_str().unwrap()])
        .args(flags)
        .output()
        .expect("run udprelay key new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .last()
        .unwrap()
        .parse()
        .expect("a credential")
}

pub struct Subscriber {
    guard: ChildGuard,
    stderr: mpsc::Receiver<String>,
}

impl Subscriber {
    /// Its process id (to signal it).
    pub fn pid(&mut self) -> u32 {
        self.guard.child().id()
    }

    pub fn start(args: &[&str]) -> Subscriber {
        let mut cmd = Command::new(udpcat_bin());
        cmd.arg("sub")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn("udpcat sub", &mut cmd);
        let rx = line_reader(guard.child().stderr.take().unwrap());
        let mut line = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("udpcat sub {args:?} did not report a subscription"));
        // Given several relays, it says first which one it picked.
        if line.contains("picked") {
            line = rx
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("udpcat sub {args:?} did not report a subscription"));
        }
        assert!(
            line.contains("subscribed to"),
            "unexpected first line: {line}"
        );
        Subscriber { guard, stderr: rx }
    }

    /// Its stdout, line by line as it comes (`finish` then returns none of
    /// it).
    pub fn stdout_lines(&mut self) -> mpsc::Receiver<String> {
        let stdout = self.guard.child().stdout.take();
        line_reader(stdout.expect("stdout is read once"))
    }

    /// Waits (within the deadline) for a line of stderr holding `needle`;
    /// returns the lines before it and it.
    pub fn stderr_until(&self, needle: &str) -> String {
        let until = Instant::now() + DEADLINE;
        let mut seen = String::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains(needle) {
                        return seen;
                    }
                }
                Err(_) => panic!("udpcat sub never said {needle:?}; it said:\n{seen}"),
            }
        }
    }

    /// Waits for exit; returns status, stdout as bytes and the rest of stderr.
    pub fn finish_bytes(self) -> (ExitStatus, Vec<u8>, String) {
        let out = self.guard.output_deadline(DEADLINE);
        (out.status, out.stdout, rest_of(&self.stderr))
    }

    /// Waits for exit; returns status, stdout and the rest of stderr.
    pub fn finish(self) -> (ExitStatus, String, String) {
        let (status, stdout, stderr) = self.finish_bytes();
        (
            status,
            String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        )
    }
}

/// A frame as a test sees it, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Deliver {
        sub_id: u32,
        offset: u64,
        payload: Vec<u8>,
    },
    Subscribed {
        sub_id: u32,
        first_offset: u64,
    },
    Pong(u64),
    Error(u16, String),
    Stats(Vec<(String, u64)>),
    Other(String),
}

impl Got {
    fn from_frame(f: &Frame<'_>) -> Got {
        match *f {
            Frame::Deliver {
                sub_id,
                offset,
                payload,
                ..
            } => Got::Deliver {
                sub_id,
                offset,
                payload: payload.to_vec(),
            },
            Frame::Subscribed {
                sub_id,
                first_offset,
                ..
            } => Got::Subscribed {
                sub_id,
                first_offset,
            },
            Frame::Pong { nonce, .. } => Got::Pong(nonce),
            Frame::Error { code, reason } => Got::Error(code.0, reason.to_string()),
            Frame::Stats { entries, .. } => {
                Got::Stats(entries.iter().map(|(k, v)| (k.to_string(), v)).collect())
            }
            ref other => Got::Other(format!("{other:?}")),
        }
    }
}

/// A protocol client on a plain socket, for tests that need to see frames.
/// It proves its address first (the hello and the token), as every client
/// does, and sends its token in front of every datagram.
pub struct TestClient {
    pub socket: UdpSocket,
    pub relay: SocketAddr,
    nonce: u64,
    proof: AddressProof,
    /// With a credential: the session every datagram is sealed with.
    secured: RefCell<Option<Secured>>,
}

/// Opens a keyed session on `socket` (connected to the relay).
pub fn handshake(socket: &UdpSocket, credential: &Credential) -> Secured {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut hs = Handshake::new(credential, unix).expect("a valid credential");
    let until = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        assert!(now < until, "no handshake answer within {DEADLINE:?}");
        if let Some(d) = hs.poll_transmit(now) {
            socket.send(&d).expect("send");
        }
        let wait = hs
            .poll_timeout()
            .unwrap_or(now)
            .saturating_duration_since(now);
        socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf)
            && let Some(done) = hs.handle_datagram(Instant::now(), &buf[..n])
        {
            return done.expect("the relay's handshake answer verifies");
        }
    }
}

impl TestClient {
    pub fn new(relay: SocketAddr) -> TestClient {
        TestClient::open(relay, None)
    }

    /// A client that handshakes with `credential` first: everything it
    /// sends is sealed, and it reads only what the relay sealed for it.
    pub fn keyed(relay: SocketAddr, credential: &Credential) -> TestClient {
        TestClient::open(relay, Some(credential))
    }

    fn open(relay: SocketAddr, credential: Option<&Credential>) -> TestClient {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.connect(relay).expect("connect");
        let secured = RefCell::new(credential.map(|c| handshake(&socket, c)));
        let mut proof = AddressProof::new();
        let mut opened = Vec::new();
        let until = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 65_536];
        while !proof.is_proven() {
            let now = Instant::now();
            assert!(
                now < until,
                "no address token from {relay} within {DEADLINE:?}"
            );
            if let Some(hello) = proof.poll_hello(now) {
                socket.send(&seal(&secured, &hello)).expect("send");
            }
            let wait = proof
                .poll_timeout()
                .unwrap_or(now)
                .saturating_duration_since(now);
            socket
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
                .unwrap();
            if let Ok(n) = socket.recv(&mut buf)
                && let Some(d) = open(&secured, &buf[..n], &mut opened)
            {
                proof.handle_datagram(now, d);
            }
        }
        TestClient {
            socket,
            relay,
            nonce: 0,
            proof,
            secured,
        }
    }

    /// Sends `frames` in one datagram, with the address token in front.
    pub fn send(&self, frames: &[Frame<'_>]) {
        let d = wire::encode_datagram(frames).expect("encode");
        self.send_raw(&self.proof.stamp(d));
    }

    /// Sends a datagram as it is, sealed first if the client is keyed.
    pub fn send_raw(&self, bytes: &[u8]) {
        self.socket.send(&self.seal(bytes)).expect("send");
    }

    /// `bytes` as this client would send them: sealed if it is keyed.
    pub fn seal(&self, bytes: &[u8]) -> Vec<u8> {
        seal(&self.secured, bytes)
    }

    /// Sends a ping and returns every frame that arrived before its pong. The
    /// relay handles datagrams from one socket in order and answers in order,
    /// so once the pong is here, everything the relay sent this client in
    /// reaction to earlier datagrams is here too.
    ///
    /// The ping is sent again every 250 ms: a client that floods its own
    /// socket buffer may lose the pong, and the guarantee holds for any copy.
    pub fn barrier(&mut self) -> Vec<Got> {
        self.nonce += 1;
        let nonce = self.nonce;
        let until = Instant::now() + DEADLINE;
        let mut resend = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let mut opened = Vec::new();
        loop {
            let now = Instant::now();
            assert!(
                now < until,
                "no pong {nonce} within {DEADLINE:?}; got {got:?}"
            );
            if now >= resend {
                self.send(&[Frame::Ping { nonce, load: false }]);
                resend = now + Duration::from_millis(250);
            }
            self.socket.set_read_timeout(Some(resend - now)).unwrap();
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let Some(d) = open(&self.secured, &buf[..n], &mut opened) else {
                continue;
            };
            let Ok(frames) = wire::decode_datagram(d) else {
                continue;
            };
            for f in frames.flatten() {
                match Got::from_frame(&f) {
                    Got::Pong(n) if n == nonce => return got,
                    g => got.push(g),
                }
            }
        }
    }

    pub fn subscribe(&mut self, sub_id: u32, channel: &str) {
        self.send(&[Frame::Subscribe {
            sub_id,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Latest,
            channel,
            group: None,
            origins: false,
            resume: udprelay::wire::ResumeVector::EMPTY,
        }]);
        let got = self.barrier();
        assert!(
            got.iter()
                .any(|g| matches!(g, Got::Subscribed { sub_id: s, .. } if *s == sub_id)),
            "subscribe {sub_id} to {channel} not accepted: {got:?}"
        );
    }

    pub fn publish(&mut self, channel: &str, payload: &[u8]) {
        self.send(&[Frame::Publish { channel, payload }]);
    }

    /// Every counter, read page by page as `udpcat stats` does.
    pub fn stats(&mut self) -> HashMap<String, u64> {
        let mut pager = StatsPager::new(Instant::now(), 1400, DEADLINE);
        let mut buf = vec![0u8; 65_536];
        let mut opened = Vec::new();
        loop {
            let now = Instant::now();
            pager.handle_timeout(now);
            if let Some(outcome) = pager.poll_outcome() {
                let entries = outcome.unwrap_or_else(|e| panic!("no stats: {e}"));
                return entries.into_iter().collect();
            }
            if let Some(request) = pager.poll_transmit(now) {
                self.send_raw(&request);
            }
            let wake = pager.poll_timeout().unwrap_or(now);
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.socket.set_read_timeout(Some(wait)).unwrap();
            if let Ok(n) = self.socket.recv(&mut buf)
                && let Some(d) = open(&self.secured, &buf[..n], &mut opened)
            {
                pager.handle_datagram(Instant::now(), d);
            }
        }
    }
}

fn seal(secured: &RefCell<Option<Secured>>, bytes: &[u8]) -> Vec<u8> {
    match &mut *secured.borrow_mut() {
        Some(s) => s.seal(bytes).expect("seal"),
        None => bytes.to_vec(),
    }
}

/// `datagram` opened if the client is keyed (`None` if it does not open:
/// not sealed for this session), as it is otherwise.
fn open<'a>(
    secured: &RefCell<Option<Secured>>,
    datagram: &'a [u8],
    out: &'a mut Vec<u8>,
) -> Option<&'a [u8]> {
    match &mut *secured.borrow_mut() {
        Some(s) => s.open(datagram, out).ok(),
        None => Some(datagram),
    }
}

/// What `nc -u` does: one plain datagram each, no protocol at all.
pub fn send_like_nc(to: SocketAddr, lines: &[&str]) {
    let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
    for line in lines {
        plain.send_to(line.as_bytes(), to).unwrap();
    }
}

/// Parses one JSON object per line (udpcat and `log dump` output).
pub fn json_lines(out: impl AsRef<[u8]>) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out.as_ref())
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json {l:?}: {e}")))
        .collect()
}

/// What `udprelay log ARGS --data-dir DATA_DIR` printed on stdout, having
/// checked that it succeeded.
pub fn udprelay_log(data_dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(udprelay_bin())
        .arg("log")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "udprelay log {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it returns true, failing with `what` past the deadline.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !check() {
        assert!(
            Instant::now() < until,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn udpchaos_bin() -> &'static str {
    env!("CARGO_BIN_EXE_udpchaos")
}

/// A running `udpchaos` in front of `upstream`, killed on drop.
pub struct Chaos {
    pub process: ChildGuard,
    pub addr: SocketAddr,
}

impl Chaos {
    pub fn start(upstream: SocketAddr, args: &[&str]) -> Chaos {
        Chaos::start_to(&upstream.to_string(), args)
    }

    /// As [`Chaos::start`], the upstream given as written (a host name).
    pub fn start_named(upstream: &str) -> Chaos {
        Chaos::start_to(upstream, &[])
    }

    fn start_to(upstream: &str, args: &[&str]) -> Chaos {
        let mut cmd = Command::new(udpchaos_bin());
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--upstream")
            .arg(upstream)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut process = ChildGuard::spawn("udpchaos", &mut cmd);
        let lines = line_reader(process.child().stdout.take().unwrap());
        let line = lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("udpchaos did not report its address within {DEADLINE:?}"));
        let addr = line
            .strip_prefix("udpchaos listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from udpchaos: {line}"));
        Chaos { process, addr }
    }

    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }
}

/// True if `bin --version` runs; if not, says that what needs it is
/// skipped, or fails when the environment variable `required_by` is set
/// (as `.ci/run` sets it); `install` says how to get it.
pub fn tool_available(bin: &str, required_by: &str, install: &str) -> bool {
    let found = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os(required_by).is_none(),
            "{bin} is required ({required_by}) but not found: {install}"
        );
        eprintln!("skipped: {bin} not found ({install})");
    }
    found
}

/// `udpcat pub ADDRS CHANNEL --reliable` running, with its stdin to feed
/// (and its stderr piped, for `output_deadline`).
pub fn reliable_publisher(addrs: &str, channel: &str) -> (ChildGuard, std::process::ChildStdin) {
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(["pub", addrs, channel, "--reliable"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut publisher = ChildGuard::spawn("udpcat pub", &mut cmd);
    let stdin = publisher.child().stdin.take().expect("stdin is piped");
    (publisher, stdin)
}

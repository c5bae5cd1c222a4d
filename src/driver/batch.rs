//! Many datagrams per system call. On Linux: `recvmmsg` and `sendmmsg`, and
//! UDP segmentation offload both ways: a run of equal-sized datagrams to one
//! destination leaves as one buffer that the kernel cuts up (GSO,
//! `UDP_SEGMENT`), and a socket with `UDP_GRO` may receive such a run as one
//! buffer, which [`RecvBatch`] cuts up again. Where the kernel refuses GSO,
//! [`BatchSender`] stops asking; elsewhere than Linux, one datagram per call.
//! The only unsafe code of the driver lives here.

use std::io;
use std::net::SocketAddr;

use crate::relay::Transmit;

/// Datagrams (or GSO runs) received or sent per call.
pub const BATCH: usize = 32;
/// Room for the largest UDP datagram, or a received GRO run.
const DATAGRAM: usize = 65_536;
/// Most datagrams in one GSO run (the kernel's UDP_MAX_SEGMENTS).
#[cfg(target_os = "linux")]
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO run: one IP datagram's payload, headers left out.
#[cfg(target_os = "linux")]
const GSO_MAX_BYTES: usize = 65_000;
/// Largest datagram sent as part of a GSO run: one that fits a 1500-byte
/// Ethernet frame under IPv6, so a run never needs IP fragmentation.
#[cfg(target_os = "linux")]
const GSO_MAX_SEGMENT: usize = 1452;
/// Control-message room per message, in u64 words (8-byte aligned, as
/// `cmsghdr` needs): enough for one `int` option.
#[cfg(target_os = "linux")]
const CONTROL_WORDS: usize = 4;

/// A UDP socket the batch calls can use: the relay's mio sockets and the
/// tools' std sockets.
pub trait DatagramSocket {
    /// Sends one datagram.
    fn send_one(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;
    /// Receives one datagram.
    fn recv_one(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// The descriptor, for the batch system calls.
    #[cfg(target_os = "linux")]
    fn fd(&self) -> std::os::fd::RawFd;
}

/// Both socket types have the same methods under the same names.
macro_rules! datagram_socket {
    ($($socket:ty),*) => {$(
        impl DatagramSocket for $socket {
            fn send_one(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
                self.send_to(buf, to)
            }
            fn recv_one(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
                self.recv_from(buf)
            }
            #[cfg(target_os = "linux")]
            fn fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(self)
            }
        }
    )*};
}

datagram_socket!(mio::net::UdpSocket, std::net::UdpSocket);

/// Asks the kernel to hand runs of datagrams from one sender to `socket` as
/// one buffer (UDP GRO). Returns whether it agreed; a [`RecvBatch`] must then
/// read the socket, since only it knows where the datagrams of a run end.
#[cfg(target_os = "linux")]
pub fn enable_gro(socket: &impl DatagramSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is live (owned by `socket`), and the option
    // value is a c_int whose size is passed.
    let r = unsafe {
        libc::setsockopt(
            socket.fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// No GRO where there is no Linux.
#[cfg(not(target_os = "linux"))]
pub fn enable_gro(_socket: &impl DatagramSocket) -> bool {
    false
}

/// Buffers for receiving up to [`BATCH`] buffers at once, each one datagram
/// or a GRO run of them.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    from: Vec<Option<SocketAddr>>,
    /// Size of each datagram of a GRO run, 0 for a single datagram.
    segments: Vec<usize>,
    #[cfg(target_os = "linux")]
    addrs: Vec<libc::sockaddr_storage>,
    #[cfg(target_os = "linux")]
    controls: Vec<[u64; CONTROL_WORDS]>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

impl RecvBatch {
    /// Buffers for [`BATCH`] receives of up to 64 KiB each.
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..BATCH).map(|_| vec![0u8; DATAGRAM]).collect(),
            lens: vec![0; BATCH],
            from: vec![None; BATCH],
            segments: vec![0; BATCH],
            #[cfg(target_os = "linux")]
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a
            // valid (empty) value.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            #[cfg(target_os = "linux")]
            controls: vec![[0; CONTROL_WORDS]; BATCH],
        }
    }

    /// The datagrams of the `i`th buffer of the last [`RecvBatch::recv`],
    /// and their sender: one, or each datagram of a GRO run.
    pub fn get(&self, i: usize) -> (impl Iterator<Item = &[u8]>, Option<SocketAddr>) {
        let data = &self.bufs[i][..self.lens[i]];
        let segment = match self.segments[i] {
            0 => data.len().max(1),
            s => s,
        };
        // An empty datagram is still one datagram.
        let empty = data.is_empty().then_some(data);
        (empty.into_iter().chain(data.chunks(segment)), self.from[i])
    }

    /// Receives what is waiting, up to [`BATCH`] buffers; `WouldBlock`
    /// when there is nothing.
    pub fn recv(&mut self, socket: &impl DatagramSocket) -> io::Result<usize> {
        self.recv_with(socket, false)
    }

    /// Like [`RecvBatch::recv`], but on a blocking socket waits for the
    /// first datagram (up to the socket's read timeout), then takes what
    /// else is waiting.
    pub fn recv_wait(&mut self, socket: &impl DatagramSocket) -> io::Result<usize> {
        self.recv_with(socket, true)
    }

    #[cfg(target_os = "linux")]
    fn recv_with(&mut self, socket: &impl DatagramSocket, wait: bool) -> io::Result<usize> {
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        let mut iovecs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .zip(self.controls.iter_mut())
            .map(|((iov, addr), control)| {
                // SAFETY: mmsghdr is plain old data; the fields that matter
                // are set right below.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_control = control.as_mut_ptr().cast();
                m.msg_hdr.msg_controllen = std::mem::size_of_val(control) as _;
                m
            })
            .collect();
        // SAFETY: `msgs` holds BATCH headers, each pointing at one iovec
        // over a live buffer of DATAGRAM bytes, at a sockaddr_storage and at
        // an aligned control buffer it may fill, with their true sizes; all
        // of them outlive the call. The descriptor is owned by `socket`.
        let n = unsafe {
            libc::recvmmsg(
                socket.fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, m) in msgs.iter().take(n).enumerate() {
            self.lens[i] = (m.msg_len as usize).min(DATAGRAM);
            self.from[i] = socket_addr(&self.addrs[i]);
            self.segments[i] = gro_segment(&m.msg_hdr);
        }
        Ok(n)
    }

    /// One datagram at a time where `recvmmsg` does not exist.
    #[cfg(not(target_os = "linux"))]
    fn recv_with(&mut self, socket: &impl DatagramSocket, _wait: bool) -> io::Result<usize> {
        let (n, from) = socket.recv_one(&mut self.bufs[0])?;
        self.lens[0] = n;
        self.from[0] = Some(from);
        self.segments[0] = 0;
        Ok(1)
    }
}

/// The datagram size of a GRO run from a received header's control
/// messages; 0 if the buffer is a single datagram.
#[cfg(target_os = "linux")]
fn gro_segment(header: &libc::msghdr) -> usize {
    // SAFETY: the kernel filled msg_control up to msg_controllen with
    // well-formed control messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // that length and return null past it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(header);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(size).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(header, c);
        }
    }
    0
}

/// Sends batches of datagrams, many per call, as GSO runs while the kernel
/// accepts them.
#[derive(Debug)]
pub struct BatchSender {
    gso: bool,
}

impl Default for BatchSender {
    fn default() -> Self {
        BatchSender::new()
    }
}

impl BatchSender {
    /// A sender that tries GSO (on Linux) until the kernel refuses it.
    pub fn new() -> BatchSender {
        BatchSender {
            gso: cfg!(target_os = "linux"),
        }
    }

    /// A sender that never uses GSO.
    pub fn without_gso() -> BatchSender {
        BatchSender { gso: false }
    }

    /// Whether runs still go out as GSO buffers.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Sends the transmits in order, many per call; returns how many went.
    /// An error is returned only if the first could not go (`WouldBlock`:
    /// the socket is full).
    #[cfg(target_os = "linux")]
    pub fn send(&mut self, socket: &impl DatagramSocket, batch: &[Transmit]) -> io::Result<usize> {
        loop {
            match self.send_once(socket, batch) {
                Err((e, true)) if self.gso && gso_refused(&e) => {
                    // This kernel or device does not do UDP GSO: plain
                    // datagrams from now on.
                    tracing::info!(error = %e, "UDP GSO refused; sending datagrams one by one");
                    self.gso = false;
                }
                Err((e, _)) => return Err(e),
                Ok(n) => return Ok(n),
            }
        }
    }

    /// One `sendmmsg`; on error, also whether the first message was a GSO
    /// run.
    #[cfg(target_os = "linux")]
    fn send_once(
        &self,
        socket: &impl DatagramSocket,
        batch: &[Transmit],
    ) -> Result<usize, (io::Error, bool)> {
        // Group the transmits into runs: one destination, equal sizes (the
        // last may be shorter), within the kernel's limits.
        let mut runs: Vec<(usize, usize)> = Vec::with_capacity(BATCH); // (first, count)
        let mut i = 0;
        while i < batch.len() && runs.len() < BATCH {
            let first = &batch[i];
            let size = first.payload.len();
            let mut count = 1;
            if self.gso && size > 0 && size <= GSO_MAX_SEGMENT {
                let mut bytes = size;
                while let Some(t) = batch.get(i + count) {
                    let len = t.payload.len();
                    if t.destination != first.destination
                        || len == 0
                        || len > size
                        || count == GSO_MAX_SEGMENTS
                        || bytes + len > GSO_MAX_BYTES
                    {
                        break;
                    }
                    count += 1;
                    bytes += len;
                    if len < size {
                        break; // only the last may be shorter
                    }
                }
            }
            runs.push((i, count));
            i += count;
        }
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> = runs
            .iter()
            .map(|&(first, _)| raw_addr(&batch[first].destination))
            .collect();
        let mut controls: Vec<[u64; CONTROL_WORDS]> = vec![[0; CONTROL_WORDS]; runs.len()];
        // Every iovec of every run, in order; `runs` says which are whose.
        let mut iovecs: Vec<libc::iovec> = batch[..i]
            .iter()
            .map(|t| libc::iovec {
                iov_base: t.payload.as_ptr() as *mut libc::c_void,
                iov_len: t.payload.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(runs.len());
        for (k, &(first, count)) in runs.iter().enumerate() {
            // SAFETY: plain old data, set below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            let (addr, len) = &mut addrs[k];
            m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = *len;
            // `first` indexes `batch`, and `iovecs` starts at batch[0].
            m.msg_hdr.msg_iov = iovecs[first..].as_mut_ptr();
            m.msg_hdr.msg_iovlen = count as _;
            if count > 1 {
                let control = &mut controls[k];
                m.msg_hdr.msg_control = control.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes a size.
                m.msg_hdr.msg_controllen =
                    unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
                let segment = batch[first].payload.len() as u16;
                // SAFETY: msg_control points at CONTROL_WORDS aligned words,
                // more than CMSG_SPACE(2) bytes, so the first header and its
                // two data bytes lie inside the buffer.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
                }
            }
            msgs.push(m);
        }
        // SAFETY: each header points at its run's iovecs (over live payloads,
        // only read by the kernel despite the mut pointer type), at a filled
        // address and, for a run, at a filled control buffer; everything
        // outlives the call. The descriptor is owned by `socket`.
        let n = unsafe {
            libc::sendmmsg(
                socket.fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let first_is_run = runs.first().is_some_and(|&(_, count)| count > 1);
            return Err((io::Error::last_os_error(), first_is_run));
        }
        Ok(runs.iter().take(n as usize).map(|&(_, count)| count).sum())
    }

    /// One datagram at a time where `sendmmsg` does not exist.
    #[cfg(not(target_os = "linux"))]
    pub fn send(&mut self, socket: &impl DatagramSocket, batch: &[Transmit]) -> io::Result<usize> {
        match batch.first() {
            Some(t) => socket.send_one(&t.payload, t.destination).map(|_| 1),
            None => Ok(0),
        }
    }
}

/// Errors by which a kernel or device says it does not do UDP GSO.
#[cfg(target_os = "linux")]
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

#[cfg(target_os = "linux")]
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for any address.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(target_os = "linux")]
fn raw_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain old data; the address is written over it below.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a
            // sockaddr_in, which is what this writes.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    #[test]
    fn addresses_survive_the_round_trip_through_sockaddr() {
        for a in [
            "127.0.0.1:7070",
            "10.1.2.3:1",
            "[::1]:9",
            "[fe80::1%2]:65535",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let (storage, _) = raw_addr(&addr);
            assert_eq!(socket_addr(&storage), Some(addr), "{a}");
        }
    }

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        tx.set_nonblocking(true).unwrap();
        (rx, tx)
    }

    /// Sends `batch` through `sender` and receives it all on `rx`, as
    /// datagrams, with how many buffers carried them.
    fn round_trip(
        sender: &mut BatchSender,
        tx: &UdpSocket,
        rx: &UdpSocket,
        batch: &[Transmit],
    ) -> (Vec<Vec<u8>>, usize) {
        let mut sent = 0;
        while sent < batch.len() {
            sent += sender.send(tx, &batch[sent..]).unwrap();
        }
        let mut got = Vec::new();
        let mut buffers = 0;
        let mut rb = RecvBatch::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < batch.len() {
            assert!(
                Instant::now() < deadline,
                "got {} of {} datagrams",
                got.len(),
                batch.len()
            );
            match rb.recv(rx) {
                Ok(n) => {
                    for i in 0..n {
                        let (datagrams, from) = rb.get(i);
                        assert_eq!(from, Some(tx.local_addr().unwrap()));
                        got.extend(datagrams.map(<[u8]>::to_vec));
                        buffers += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        (got, buffers)
    }

    #[test]
    fn batches_go_out_and_come_back_in_order() {
        let (rx, tx) = pair();
        let to = rx.local_addr().unwrap();
        // Sizes all different: no GSO run forms, each is its own message.
        let batch: Vec<Transmit> = (0..40u8)
            .map(|i| Transmit {
                destination: to,
                payload: vec![i; usize::from(i) + 1].into(),
            })
            .collect();
        let (got, _) = round_trip(&mut BatchSender::new(), &tx, &rx, &batch);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; i + 1]);
        }
    }

    #[test]
    fn runs_of_equal_datagrams_go_as_gso_and_arrive_as_gro_unchanged() {
        let (rx, tx) = pair();
        let to = rx.local_addr().unwrap();
        let gro = enable_gro(&rx);
        // Two runs to `to` (100 datagrams of 1000 bytes, the last of each
        // run shorter), an empty datagram and one to elsewhere between.
        let (other, _) = pair();
        let mut batch: Vec<Transmit> = (0..100u32)
            .map(|i| {
                let len = if i == 63 || i == 99 { 500 } else { 1000 };
                Transmit {
                    destination: to,
                    payload: vec![i as u8; len].into(),
                }
            })
            .collect();
        batch.insert(
            50,
            Transmit {
                destination: other.local_addr().unwrap(),
                payload: vec![7; 1000].into(),
            },
        );
        batch.insert(
            70,
            Transmit {
                destination: to,
                payload: Vec::new().into(),
            },
        );
        let mut sender = BatchSender::new();
        let (got, buffers) = round_trip(
            &mut sender,
            &tx,
            &rx,
            &batch
                .iter()
                .filter(|t| t.destination == to)
                .cloned()
                .collect::<Vec<_>>(),
        );
        let want: Vec<Vec<u8>> = batch
            .iter()
            .filter(|t| t.destination == to)
            .map(|t| t.payload.to_vec())
            .collect();
        assert_eq!(got, want, "every datagram, whole and in order");
        eprintln!(
            "gso {} gro {gro}: {buffers} buffers for {} datagrams",
            sender.gso(),
            want.len()
        );
        if sender.gso() && gro {
            assert!(
                buffers < want.len() / 4,
                "runs arrived as GRO buffers: {buffers} buffers for {} datagrams",
                want.len()
            );
        }
        // The mixed batch, other destination included, goes out whole too.
        let mut sent = 0;
        while sent < batch.len() {
            sent += sender.send(&tx, &batch[sent..]).unwrap();
        }
        let mut buf = [0u8; 2000];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match other.recv_from(&mut buf) {
                Ok((n, _)) => {
                    assert_eq!(&buf[..n], &[7; 1000][..]);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "nothing for the other socket");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_message() {
        let (rx, tx) = pair();
        let to = rx.local_addr().unwrap();
        enable_gro(&rx);
        let batch: Vec<Transmit> = (0..20u8)
            .map(|i| Transmit {
                destination: to,
                payload: vec![i; 300].into(),
            })
            .collect();
        let mut sender = BatchSender::without_gso();
        let (got, _) = round_trip(&mut sender, &tx, &rx, &batch);
        let want: Vec<Vec<u8>> = batch.iter().map(|t| t.payload.to_vec()).collect();
        assert_eq!(got, want);
        assert!(!sender.gso());
    }
}

//! Many datagrams per system call: `recvmmsg` and `sendmmsg` on Linux, one at
//! a time elsewhere. The only unsafe code of the driver lives here.

use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;

use crate::relay::Transmit;

/// Datagrams received or sent per call.
pub(super) const BATCH: usize = 32;
/// Room for the largest UDP datagram.
const DATAGRAM: usize = 65_536;

/// Buffers for receiving up to [`BATCH`] datagrams at once.
pub(super) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    from: Vec<Option<SocketAddr>>,
    #[cfg(target_os = "linux")]
    addrs: Vec<libc::sockaddr_storage>,
}

impl RecvBatch {
    pub(super) fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..BATCH).map(|_| vec![0u8; DATAGRAM]).collect(),
            lens: vec![0; BATCH],
            from: vec![None; BATCH],
            #[cfg(target_os = "linux")]
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a
            // valid (empty) value.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    /// The `i`th datagram of the last [`RecvBatch::recv`], and its sender.
    pub(super) fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.bufs[i][..self.lens[i]], self.from[i])
    }

    /// Receives what is waiting, up to [`BATCH`] datagrams; `WouldBlock`
    /// when there is nothing.
    #[cfg(target_os = "linux")]
    pub(super) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
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
            .map(|(iov, addr)| {
                // SAFETY: mmsghdr is plain old data; the fields that matter
                // are set right below.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: `msgs` holds BATCH headers, each pointing at one iovec
        // over a live buffer of DATAGRAM bytes and at a sockaddr_storage it
        // may fill; all of them outlive the call. The socket is a valid,
        // non-blocking descriptor owned by `socket`.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
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
        }
        Ok(n)
    }

    /// One datagram at a time where `recvmmsg` does not exist.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let (n, from) = socket.recv_from(&mut self.bufs[0])?;
        self.lens[0] = n;
        self.from[0] = Some(from);
        Ok(1)
    }
}

/// Sends the transmits in order, many per call; returns how many went. An
/// error is returned only if the first could not go (`WouldBlock`: the socket
/// is full).
#[cfg(target_os = "linux")]
pub(super) fn send(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let batch = &batch[..batch.len().min(BATCH)];
    let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
        batch.iter().map(|t| raw_addr(&t.destination)).collect();
    let mut iovecs: Vec<libc::iovec> = batch
        .iter()
        .map(|t| libc::iovec {
            iov_base: t.payload.as_ptr() as *mut libc::c_void,
            iov_len: t.payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .zip(addrs.iter_mut())
        .map(|(iov, (addr, len))| {
            // SAFETY: plain old data, set below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = *len;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: each header points at one iovec over a live payload (only read
    // by the kernel despite the mut pointer type) and at a filled address;
    // everything outlives the call. The descriptor is owned by `socket`.
    let n = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One datagram at a time where `sendmmsg` does not exist.
#[cfg(not(target_os = "linux"))]
pub(super) fn send(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    match batch.first() {
        Some(t) => socket.send_to(&t.payload, t.destination).map(|_| 1),
        None => Ok(0),
    }
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

    #[test]
    fn batches_go_out_and_come_back_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = rx.local_addr().unwrap();
        let batch: Vec<Transmit> = (0..40u8)
            .map(|i| Transmit {
                destination: to,
                payload: vec![i; usize::from(i) + 1],
            })
            .collect();
        let mut sent = 0;
        while sent < batch.len() {
            sent += send(&tx, &batch[sent..]).unwrap();
        }
        let mut got = Vec::new();
        let mut rb = RecvBatch::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 40 {
            assert!(
                std::time::Instant::now() < deadline,
                "got {} of 40",
                got.len()
            );
            match rb.recv(&rx) {
                Ok(n) => {
                    for i in 0..n {
                        let (data, from) = rb.get(i);
                        assert_eq!(from, Some(tx.local_addr().unwrap()));
                        got.push(data.to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; i + 1]);
        }
    }
}

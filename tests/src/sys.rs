//! The only `unsafe` code of the crate: three thin wrappers around system calls that neither std
//! nor socket2 offer.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Moves the calling thread into the network namespace `ns` (an open `/run/netns/<name>` file).
///
/// Only the calling thread changes namespace; it stays there until it exits.
pub(crate) fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns(2) takes a file descriptor, which `BorrowedFd` keeps open for the duration of
    // the call, and a flag; it touches no memory of ours. It only affects the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The index of interface `name` in the calling thread's network namespace.
pub(crate) fn if_nametoindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; if_nametoindex(3) only
    // reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// Sends `frame` (a whole Ethernet frame, starting with the destination MAC) out of interface
/// `ifindex` on the AF_PACKET/SOCK_RAW socket `sock`.
pub(crate) fn packet_send(sock: BorrowedFd<'_>, ifindex: u32, frame: &[u8]) -> io::Result<usize> {
    let ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex"))?;
    let mut dst = [0u8; 8];
    let ethertype = match frame {
        [d0, d1, d2, d3, d4, d5, _, _, _, _, _, _, t0, t1, ..] => {
            dst[..6].copy_from_slice(&[*d0, *d1, *d2, *d3, *d4, *d5]);
            u16::from_be_bytes([*t0, *t1])
        }
        _ => 0,
    };
    let addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: ethertype.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: dst,
    };
    // SAFETY: `frame` is a valid buffer of `frame.len()` bytes and `addr` a fully initialised
    // sockaddr_ll whose size we pass; both outlive the call, and sendto(2) only reads them.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

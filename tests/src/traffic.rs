//! Real-socket traffic between pods: echo servers, probes, ping, long TCP sessions and raw
//! Ethernet frames. Every function is bounded in time; servers stop when dropped.
//!
//! Sockets are created inside the pod's namespace (see [`PodHandle::run`]) and then used from
//! ordinary threads: a socket keeps the namespace it was created in.
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{Mac, POD_IFNAME, PodHandle};

/// How often idle server threads look at their stop flag.
const TICK: Duration = Duration::from_millis(50);
/// Accept loop poll interval.
const ACCEPT_POLL: Duration = Duration::from_millis(2);

/// The outcome of a [`tcp_probe`] or [`udp_probe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// Connected (TCP) / sent (UDP), and the payload came back unchanged; `elapsed` includes the
    /// TCP handshake.
    Echoed {
        /// Time from the start of the probe to the echo.
        elapsed: Duration,
    },
    /// Connected (TCP) or sent (UDP), but no (or a wrong) echo before the deadline.
    NoEcho(String),
    /// Connection refused: TCP RST, or ICMP port unreachable for UDP.
    Refused,
    /// Nothing came back before the deadline.
    TimedOut,
    /// No route, or an ICMP host/network unreachable came back.
    Unreachable(String),
    /// Another error.
    Error(String),
}

impl ProbeResult {
    /// Whether the echo came back.
    pub fn is_echoed(&self) -> bool {
        matches!(self, ProbeResult::Echoed { .. })
    }

    /// Whether the connection was refused.
    pub fn is_refused(&self) -> bool {
        matches!(self, ProbeResult::Refused)
    }

    /// Whether the probe timed out (before connecting, for TCP).
    pub fn is_timed_out(&self) -> bool {
        matches!(self, ProbeResult::TimedOut)
    }
}

fn classify(e: &io::Error) -> ProbeResult {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeResult::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeResult::TimedOut,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            ProbeResult::Unreachable(e.to_string())
        }
        _ => ProbeResult::Error(e.to_string()),
    }
}

/// Time left until `deadline` (at least 1 ms, as a zero socket timeout is invalid), or `TimedOut`.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
    } else {
        Ok(left.max(Duration::from_millis(1)))
    }
}

fn probe_payload(kind: &str) -> Vec<u8> {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "periscope-{kind}-probe {} {}\n",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

/// `::ffff:a.b.c.d` → `a.b.c.d` (what a dual-stack server sees for IPv4 peers).
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Writes `payload` and reads it back, all before `deadline`.
fn echo_once(stream: &mut TcpStream, payload: &[u8], deadline: Instant) -> io::Result<()> {
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(payload)?;
    let mut got = vec![0u8; payload.len()];
    let mut n = 0;
    while n < got.len() {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut got[n..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {n} of {} echoed bytes",
                        payload.len()
                    ),
                ));
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("echo: {n} of {} bytes", payload.len()),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    if got != payload {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "echo differs from what was sent",
        ));
    }
    Ok(())
}

fn tcp_connect(dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.connect_timeout(&dst.into(), timeout)?;
    let stream = TcpStream::from(sock);
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// From `pod`, connects to `dst` over TCP, sends a few bytes and waits for them to come back, all
/// within `timeout`.
pub fn tcp_probe(pod: &PodHandle, dst: SocketAddr, timeout: Duration) -> ProbeResult {
    let run = pod.try_run(move || {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut stream = match tcp_connect(dst, timeout) {
            Ok(s) => s,
            Err(e) => return classify(&e),
        };
        match echo_once(&mut stream, &probe_payload("tcp"), deadline) {
            Ok(()) => ProbeResult::Echoed {
                elapsed: start.elapsed(),
            },
            Err(e) => ProbeResult::NoEcho(e.to_string()),
        }
    });
    run.unwrap_or_else(|e| ProbeResult::Error(e.to_string()))
}

/// From `pod`, sends one UDP datagram to `dst` and waits up to `timeout` for the echo.
pub fn udp_probe(pod: &PodHandle, dst: SocketAddr, timeout: Duration) -> ProbeResult {
    let run = pod.try_run(move || {
        let start = Instant::now();
        let deadline = start + timeout;
        let bind: SocketAddr = match dst {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = match UdpSocket::bind(bind).and_then(|s| s.connect(dst).map(|()| s)) {
            Ok(s) => s,
            Err(e) => return classify(&e),
        };
        let payload = probe_payload("udp");
        if let Err(e) = sock.send(&payload) {
            return classify(&e);
        }
        let mut buf = vec![0u8; payload.len() + 64];
        loop {
            let left = match remaining(deadline) {
                Ok(left) => left,
                Err(_) => return ProbeResult::TimedOut,
            };
            if let Err(e) = sock.set_read_timeout(Some(left)) {
                return ProbeResult::Error(e.to_string());
            }
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n] == payload[..] => {
                    return ProbeResult::Echoed {
                        elapsed: start.elapsed(),
                    };
                }
                Ok(_) => {} // a stray datagram
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return classify(&e),
            }
        }
    });
    run.unwrap_or_else(|e| ProbeResult::Error(e.to_string()))
}

/// From `pod`, sends one ICMP/ICMPv6 echo request to `dst` on a raw socket and waits up to
/// `timeout` for the matching reply. See [`ping_rtt`].
pub fn ping(pod: &PodHandle, dst: IpAddr, timeout: Duration) -> bool {
    ping_rtt(pod, dst, timeout).is_ok()
}

/// Like [`ping`], returning the round-trip time, or why there was no reply (`TimedOut`,
/// `HostUnreachable`…).
pub fn ping_rtt(pod: &PodHandle, dst: IpAddr, timeout: Duration) -> io::Result<Duration> {
    pod.try_run(move || ping_here(dst, timeout))?
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn next_ident() -> u16 {
    static N: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16).wrapping_mul(0x9e37)
        ^ N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x3b)
}

fn ping_here(dst: IpAddr, timeout: Duration) -> io::Result<Duration> {
    let v4 = dst.is_ipv4();
    let sock = if v4 {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?
    } else {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?
    };
    // Not connected: a connected raw socket would also filter out the ICMP errors that routers
    // send back, and "unreachable" is a soft error that raw sockets do not report.
    let ident = next_ident().to_be_bytes();
    let seq = 1u16.to_be_bytes();
    let mut pkt = vec![
        if v4 { 8 } else { 128 },
        0,
        0,
        0,
        ident[0],
        ident[1],
        seq[0],
        seq[1],
    ];
    pkt.extend_from_slice(b"periscope-ping 0123456789abcdef");
    if v4 {
        // For ICMPv6 the kernel fills in the checksum (it covers a pseudo-header).
        let sum = internet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let start = Instant::now();
    let deadline = start + timeout;
    sock.send_to(&pkt, &SocketAddr::new(dst, 0).into())?;
    let mut buf = [0u8; 4096];
    loop {
        sock.set_read_timeout(Some(remaining(deadline)?))?;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no echo reply from {dst}"),
                ));
            }
            Err(e) => return Err(e),
        };
        match parse_icmp_for_echo(&buf[..n], dst, &pkt) {
            Some(Ok(())) => return Ok(start.elapsed()),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
}

/// Whether a packet read from a raw ICMP (with IPv4 header) or ICMPv6 (without) socket is the
/// reply to echo request `request` sent to `dst` (`Ok`), an ICMP destination unreachable about it
/// (`Err`), or unrelated (`None`).
fn parse_icmp_for_echo(packet: &[u8], dst: IpAddr, request: &[u8]) -> Option<io::Result<()>> {
    let unreachable = |code: u8, from: &str| {
        // Code 0 is "network unreachable" (ICMP) and "no route" (ICMPv6).
        let kind = if code == 0 {
            io::ErrorKind::NetworkUnreachable
        } else {
            io::ErrorKind::HostUnreachable
        };
        Some(Err(io::Error::new(
            kind,
            format!("ICMP destination unreachable (code {code}) for {dst}{from}"),
        )))
    };
    match dst {
        IpAddr::V4(dst4) => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            let (source, icmp) = (packet.get(12..16)?, packet.get(ihl..)?);
            match icmp.get(..2)? {
                // Echo reply from dst, with our identifier, sequence and payload.
                [0, 0] => {
                    (source == dst4.octets() && icmp.get(4..) == request.get(4..)).then_some(Ok(()))
                }
                // Destination unreachable quoting our request (IP header, then 8 bytes of ICMP).
                [3, code] => {
                    let quoted = icmp.get(8..)?;
                    let qihl = usize::from(quoted.first()? & 0x0f) * 4;
                    let ours = quoted.get(16..20)? == dst4.octets()
                        && quoted.get(qihl..qihl + 8)? == &request[..8];
                    let from = Ipv4Addr::new(source[0], source[1], source[2], source[3]);
                    if ours {
                        unreachable(*code, &format!(" from {from}"))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
        IpAddr::V6(dst6) => match packet.get(..2)? {
            // The identifier is unique to this request; the payload must come back too.
            [129, 0] => (packet.get(4..) == request.get(4..)).then_some(Ok(())),
            // Destination unreachable quoting our request (IPv6 header, then our ICMPv6 header).
            [1, code] => {
                let quoted = packet.get(8..)?;
                let ours = quoted.get(24..40)? == dst6.octets() && quoted.get(6) == Some(&58) && {
                    let q = quoted.get(40..48)?;
                    q[0] == 128 && q[4..8] == request[4..8]
                };
                if ours { unreachable(*code, "") } else { None }
            }
            _ => None,
        },
    }
}

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicUsize,
    packets: AtomicUsize,
    bytes: AtomicU64,
    peers: Mutex<Vec<SocketAddr>>,
}

impl Stats {
    fn add_peer(&self, peer: SocketAddr, dedup: bool) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() < 100_000 && !(dedup && peers.contains(&peer)) {
            peers.push(peer);
        }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Creates a dual-stack (`[::]:port`, IPV6_V6ONLY off) socket in `pod`'s namespace.
fn dual_stack_socket(pod: &PodHandle, ty: Type, proto: Protocol, port: u16) -> io::Result<Socket> {
    pod.try_run(|| {
        let sock = Socket::new(Domain::IPV6, ty, Some(proto))?;
        sock.set_only_v6(false)?;
        sock.set_reuse_address(true)?;
        sock.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(sock)
    })?
}

/// A TCP echo server in a pod, listening on `[::]:port` (IPv4 and IPv6). Stops when dropped.
#[derive(Debug)]
pub struct TcpEchoServer {
    port: u16,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEchoServer {
    /// Starts the server; panics if it cannot listen. `port` 0 picks a free port (see
    /// [`port`](Self::port)).
    pub fn start(pod: &PodHandle, port: u16) -> TcpEchoServer {
        Self::try_start(pod, port).unwrap_or_else(|e| {
            panic!(
                "pod {}: cannot start a TCP echo server on port {port}: {e}",
                pod.name()
            )
        })
    }

    /// Starts the server.
    pub fn try_start(pod: &PodHandle, port: u16) -> io::Result<TcpEchoServer> {
        let sock = dual_stack_socket(pod, Type::STREAM, Protocol::TCP, port)?;
        sock.listen(1024)?;
        sock.set_nonblocking(true)?;
        let listener = TcpListener::from(sock);
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("tcp-echo-{port}"))
                .spawn(move || accept_loop(listener, &stop, &stats))?
        };
        Ok(TcpEchoServer {
            port,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Bytes echoed so far.
    pub fn bytes_echoed(&self) -> u64 {
        self.stats.bytes.load(Ordering::SeqCst)
    }

    /// Peer address of every accepted connection, in order (IPv4 peers as IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.stats.peers()
    }

    /// Stops the server (as dropping does).
    pub fn stop(self) {}
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: &Arc<AtomicBool>, stats: &Arc<Stats>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                stats.accepted.fetch_add(1, Ordering::SeqCst);
                stats.add_peer(unmap(peer), false);
                let (stop, stats) = (stop.clone(), stats.clone());
                if let Ok(t) = std::thread::Builder::new()
                    .name("tcp-echo-conn".into())
                    .spawn(move || serve_tcp(stream, &stop, &stats))
                {
                    conns.push(t);
                }
                conns.retain(|t| !t.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(_) => std::thread::sleep(TICK),
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

fn serve_tcp(mut stream: TcpStream, stop: &AtomicBool, stats: &Stats) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(TICK)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(1))))
        .and_then(|()| stream.set_nodelay(true));
    if setup.is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
                stats.bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
}

/// A UDP echo server in a pod, on `[::]:port` (IPv4 and IPv6). Stops when dropped.
#[derive(Debug)]
pub struct UdpEchoServer {
    port: u16,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Starts the server; panics if it cannot bind. `port` 0 picks a free port.
    pub fn start(pod: &PodHandle, port: u16) -> UdpEchoServer {
        Self::try_start(pod, port).unwrap_or_else(|e| {
            panic!(
                "pod {}: cannot start a UDP echo server on port {port}: {e}",
                pod.name()
            )
        })
    }

    /// Starts the server.
    pub fn try_start(pod: &PodHandle, port: u16) -> io::Result<UdpEchoServer> {
        let sock = UdpSocket::from(dual_stack_socket(pod, Type::DGRAM, Protocol::UDP, port)?);
        sock.set_read_timeout(Some(TICK))?;
        let port = sock.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("udp-echo-{port}"))
                .spawn(move || {
                    let mut buf = vec![0u8; 65_536];
                    while !stop.load(Ordering::SeqCst) {
                        match sock.recv_from(&mut buf) {
                            Ok((n, peer)) => {
                                stats.packets.fetch_add(1, Ordering::SeqCst);
                                stats.bytes.fetch_add(n as u64, Ordering::SeqCst);
                                stats.add_peer(unmap(peer), true);
                                let _ = sock.send_to(&buf[..n], peer);
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })?
        };
        Ok(UdpEchoServer {
            port,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Datagrams received (and echoed) so far.
    pub fn received(&self) -> usize {
        self.stats.packets.load(Ordering::SeqCst)
    }

    /// Distinct peers seen so far (IPv4 peers as IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.stats.peers()
    }

    /// Stops the server (as dropping does).
    pub fn stop(self) {}
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A long-lived TCP connection from a pod, for connection-tracking and aggregation tests.
#[derive(Debug)]
pub struct TcpClientConn {
    stream: TcpStream,
    timeout: Duration,
}

impl TcpClientConn {
    /// Connects from `pod` to `dst`; `timeout` bounds the connect and each later echo.
    pub fn connect(
        pod: &PodHandle,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpClientConn> {
        let stream = pod.try_run(|| tcp_connect(dst, timeout))??;
        Ok(TcpClientConn { stream, timeout })
    }

    /// Sends `data` and waits for the echo; returns the round-trip time.
    pub fn echo(&mut self, data: &[u8]) -> io::Result<Duration> {
        let start = Instant::now();
        echo_once(&mut self.stream, data, start + self.timeout)?;
        Ok(start.elapsed())
    }

    /// Local (pod-side) address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Closes gracefully: sends FIN and waits (up to the timeout) for the peer's FIN, so that the
    /// whole teardown has happened when this returns. Dropping instead just closes the socket.
    pub fn close(mut self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 4096];
        loop {
            self.stream.set_read_timeout(Some(remaining(deadline)?))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Holds one TCP connection from `pod` to `dst` open and sends `messages` messages, `interval`
/// apart, each waiting up to `timeout` for its echo; then closes gracefully. Returns how many
/// echoes came back (it stops at the first one missing). Errors if it cannot connect.
pub fn tcp_session(
    pod: &PodHandle,
    dst: SocketAddr,
    messages: usize,
    interval: Duration,
    timeout: Duration,
) -> io::Result<usize> {
    let mut conn = TcpClientConn::connect(pod, dst, timeout)?;
    let mut echoed = 0;
    for i in 0..messages {
        if i > 0 {
            std::thread::sleep(interval);
        }
        if conn
            .echo(format!("periscope-session message {i}\n").as_bytes())
            .is_err()
        {
            return Ok(echoed);
        }
        echoed += 1;
    }
    let _ = conn.close();
    Ok(echoed)
}

/// Sends `frame` (a complete Ethernet frame: destination MAC, source MAC, EtherType, payload; no
/// FCS) out of the pod's `eth0` on an AF_PACKET raw socket. The frame is sent as is, however
/// malformed; see [`PodHandle::host_mac`] and [`PodHandle::eth0_mac`] for the MACs.
pub fn send_raw_frame(pod: &PodHandle, frame: &[u8]) -> io::Result<()> {
    pod.try_run(|| {
        let sock = Socket::new(Domain::PACKET, Type::RAW, None)?;
        let ifindex = crate::sys::if_nametoindex(POD_IFNAME)?;
        let sent = crate::sys::packet_send(sock.as_fd(), ifindex, frame)?;
        if sent == frame.len() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                frame.len()
            )))
        }
    })?
}

/// Builds an Ethernet + IPv4 + UDP frame (valid checksums; UDP checksum 0 = none), to send with
/// [`send_raw_frame`] or to corrupt first.
pub fn udp4_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(sip), IpAddr::V4(dip)) = (src.ip(), dst.ip()) else {
        panic!("udp4_frame needs IPv4 addresses, got {src} -> {dst}");
    };
    let udp_len = 8 + payload.len();
    let total = u16::try_from(20 + udp_len).expect("payload too large");
    let mut f = Vec::with_capacity(14 + usize::from(total));
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL 64, UDP, checksum
    f.extend_from_slice(&sip.octets());
    f.extend_from_slice(&dip.octets());
    let sum = internet_checksum(&f[ip_start..ip_start + 20]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2 (checksum = !ddf2).
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // A header with its checksum filled in sums to zero.
        let f = udp4_frame(
            [1; 6],
            [2; 6],
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            b"x",
        );
        assert_eq!(internet_checksum(&f[14..34]), 0);
        assert_eq!(f.len(), 14 + 20 + 8 + 1);
        // Odd length.
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn recognises_echo_replies_and_errors() {
        let dst4: IpAddr = "10.0.0.2".parse().unwrap();
        let request = [8, 0, 0x12, 0x34, 0xab, 0xcd, 0, 1, b'x', b'y'];
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let mut reply = ip.clone();
        reply.extend_from_slice(&[0, 0, 0x1a, 0x34, 0xab, 0xcd, 0, 1, b'x', b'y']);
        assert!(matches!(
            parse_icmp_for_echo(&reply, dst4, &request),
            Some(Ok(()))
        ));
        let other_ident = [8, 0, 0, 0, 0xab, 0xce, 0, 1, b'x', b'y'];
        assert!(parse_icmp_for_echo(&reply, dst4, &other_ident).is_none());
        assert!(parse_icmp_for_echo(&reply, "10.0.0.3".parse().unwrap(), &request).is_none());
        // Host unreachable from a router (169.254.1.1), quoting our request to 10.0.0.2.
        ip[12..16].copy_from_slice(&[169, 254, 1, 1]);
        let mut err = ip.clone();
        err.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 0]);
        err.extend_from_slice(&[
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        err.extend_from_slice(&request[..8]);
        let e = parse_icmp_for_echo(&err, dst4, &request)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::HostUnreachable);
        assert!(parse_icmp_for_echo(&[], dst4, &request).is_none());
        assert!(parse_icmp_for_echo(&err[..30], dst4, &request).is_none());

        let dst6: IpAddr = "fd00::2".parse().unwrap();
        let request6 = [128, 0, 0, 0, 0xab, 0xcd, 0, 1, b'x'];
        assert!(matches!(
            parse_icmp_for_echo(&[129, 0, 9, 9, 0xab, 0xcd, 0, 1, b'x'], dst6, &request6),
            Some(Ok(()))
        ));
        let mut err6 = vec![1, 0, 0, 0, 0, 0, 0, 0, 0x60, 0, 0, 0, 0, 9, 58, 64];
        err6.extend_from_slice(&[0; 16]);
        err6.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        err6.extend_from_slice(&request6[..8]);
        let e = parse_icmp_for_echo(&err6, dst6, &request6)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NetworkUnreachable);
    }

    #[test]
    fn unmaps_v4_mapped() {
        let a: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(unmap(a), "10.1.2.3:80".parse::<SocketAddr>().unwrap());
        let b: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(unmap(b), b);
    }
}

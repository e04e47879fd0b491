//! A minimal authoritative DNS server and client for the test bed: real UDP DNS messages on the
//! wire (RFC 1035 layout, name compression in answers), so the datapath's DNS capture and the
//! agent's DNS enricher see what a pod's resolver would send and receive.
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::PodHandle;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;

/// What the server knows: name → addresses, and aliases name → canonical name.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    addrs: HashMap<String, Vec<IpAddr>>,
    cnames: HashMap<String, String>,
}

fn norm(n: &str) -> String {
    n.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    /// An empty zone (every query gets NXDOMAIN).
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Adds addresses of `name`.
    pub fn addr(mut self, name: &str, ips: &[IpAddr]) -> Zone {
        self.addrs.entry(norm(name)).or_default().extend(ips);
        self
    }

    /// Makes `alias` a CNAME of `target`.
    pub fn cname(mut self, alias: &str, target: &str) -> Zone {
        self.cnames.insert(norm(alias), norm(target));
        self
    }
}

/// Encodes `name` as DNS labels.
pub fn encode_name(out: &mut Vec<u8>, name: &str) {
    for l in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
}

/// A query for `name` of type `qtype` with transaction `id`.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    encode_name(&mut m, name);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// Reads the question of a query: (id, name, qtype, end of the question).
fn read_question(q: &[u8]) -> Option<(u16, String, u16, usize)> {
    let id = u16::from_be_bytes(q.get(0..2)?.try_into().ok()?);
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(at)? as usize;
        if len == 0 || len > 63 {
            at += 1;
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at + 1..at + 1 + len)?).to_ascii_lowercase());
        at += 1 + len;
    }
    let qtype = u16::from_be_bytes(q.get(at..at + 2)?.try_into().ok()?);
    Some((id, labels.join("."), qtype, at + 4))
}

/// The zone's answer to `q` (`None` if `q` is not a readable query).
pub fn answer(zone: &Zone, q: &[u8], ttl: u32) -> Option<Vec<u8>> {
    let (id, name, qtype, qend) = read_question(q)?;
    let mut records: Vec<(u16, u16, Vec<u8>)> = Vec::new(); // (owner offset, type, rdata)
    let mut owner_name = name.clone();
    let mut owner_off = 12u16;
    // Follow the CNAME chain (bounded).
    for _ in 0..8 {
        match zone.cnames.get(&owner_name) {
            Some(target) => {
                let mut rdata = Vec::new();
                encode_name(&mut rdata, target);
                records.push((owner_off, TYPE_CNAME, rdata));
                owner_name = target.clone();
                // The target is written in full in the CNAME's rdata; later records point at it.
                owner_off = u16::MAX;
            }
            None => break,
        }
    }
    let ips = zone.addrs.get(&owner_name);
    for ip in ips.into_iter().flatten() {
        match (ip, qtype) {
            (IpAddr::V4(a), TYPE_A) => records.push((owner_off, TYPE_A, a.octets().to_vec())),
            (IpAddr::V6(a), TYPE_AAAA) => records.push((owner_off, TYPE_AAAA, a.octets().to_vec())),
            _ => {}
        }
    }
    let known = ips.is_some() || zone.cnames.contains_key(&name);
    let mut m = Vec::with_capacity(qend + 64);
    m.extend_from_slice(&id.to_be_bytes());
    let flags: u16 = 0x8180 | if known { 0 } else { 3 }; // QR RD RA, NOERROR/NXDOMAIN
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&(records.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(q.get(12..qend)?);
    let mut last_target_off: Option<u16> = None;
    for (off, t, rdata) in records {
        let off = if off == u16::MAX {
            last_target_off.expect("a CNAME precedes")
        } else {
            off
        };
        m.extend_from_slice(&(0xc000 | off).to_be_bytes());
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        if t == TYPE_CNAME {
            last_target_off = Some(m.len() as u16);
        }
        m.extend_from_slice(&rdata);
    }
    Some(m)
}

/// Reads the A/AAAA addresses and the rcode of a response.
pub fn response_addrs(r: &[u8]) -> Option<(u8, Vec<IpAddr>)> {
    let rcode = *r.get(3)? & 0x0f;
    let an = u16::from_be_bytes(r.get(6..8)?.try_into().ok()?);
    let (_, _, _, mut at) = read_question(r)?;
    let mut ips = Vec::new();
    for _ in 0..an {
        // Owner: a pointer (this server always compresses) or labels.
        if *r.get(at)? & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while *r.get(at)? != 0 {
                at += 1 + *r.get(at)? as usize;
            }
            at += 1;
        }
        let t = u16::from_be_bytes(r.get(at..at + 2)?.try_into().ok()?);
        let len = u16::from_be_bytes(r.get(at + 8..at + 10)?.try_into().ok()?) as usize;
        let rdata = r.get(at + 10..at + 10 + len)?;
        match (t, len) {
            (TYPE_A, 4) => ips.push(IpAddr::from(<[u8; 4]>::try_from(rdata).ok()?)),
            (TYPE_AAAA, 16) => ips.push(IpAddr::from(<[u8; 16]>::try_from(rdata).ok()?)),
            _ => {}
        }
        at += 10 + len;
    }
    Some((rcode, ips))
}

/// A UDP DNS server in a pod, answering from a [`Zone`]. Stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Listens on `[::]:port` (IPv4 and IPv6) in `pod`; answers with TTL `ttl`.
    pub fn start(pod: &PodHandle, port: u16, zone: Zone, ttl: u32) -> io::Result<DnsServer> {
        let sock = pod.run(|| -> io::Result<UdpSocket> {
            let s = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            s.set_only_v6(false)?;
            s.bind(&SocketAddr::from(([0u16; 8], port)).into())?;
            Ok(s.into())
        })?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::Builder::new()
                .name(format!("dns-{port}"))
                .spawn(move || {
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                            continue;
                        };
                        if let Some(r) = answer(&zone, &buf[..n], ttl)
                            && sock.send_to(&r, peer).is_ok()
                        {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })?
        };
        Ok(DnsServer {
            stop,
            answered,
            thread: Some(thread),
        })
    }

    /// Queries answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resolves `name` (type `qtype`) from `pod` through the server at `server`; returns the rcode
/// and the addresses of the answer.
pub fn resolve(
    pod: &PodHandle,
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> io::Result<(u8, Vec<IpAddr>)> {
    let name = name.to_string();
    pod.run(move || {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(timeout))?;
        let id = (std::process::id() as u16) ^ (name.len() as u16) << 8;
        s.send_to(&query(id, &name, qtype), server)?;
        let mut buf = [0u8; 1500];
        let (n, _) = s.recv_from(&mut buf)?;
        response_addrs(&buf[..n])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable DNS response"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_cnames_and_read_back() {
        let zone = Zone::new()
            .addr("edge.cdn.example", &["192.0.2.7".parse().unwrap()])
            .cname("www.example.com", "edge.cdn.example")
            .addr("v6.example", &["fd00::7".parse().unwrap()]);
        let r = answer(&zone, &query(1, "WWW.example.com", TYPE_A), 60).unwrap();
        assert_eq!(
            response_addrs(&r).unwrap(),
            (0, vec!["192.0.2.7".parse().unwrap()])
        );
        let r = answer(&zone, &query(2, "v6.example", TYPE_AAAA), 60).unwrap();
        assert_eq!(
            response_addrs(&r).unwrap(),
            (0, vec!["fd00::7".parse().unwrap()])
        );
        let r = answer(&zone, &query(3, "missing.example", TYPE_A), 60).unwrap();
        assert_eq!(response_addrs(&r).unwrap(), (3, vec![]));
    }
}

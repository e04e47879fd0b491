//! DNS visibility: the datapath appends every UDP/53 packet to its flow event; this module
//! parses those packets, keeps an FQDN cache of the addresses the answers returned, and enriches
//! flows with them (Hubble's `source_names` / `destination_names`) and, for the DNS messages
//! themselves, with an L7 `DNS` record (query, answers, TTL, rcode, types).
//!
//! Everything here handles untrusted bytes: any packet may be truncated or hostile. Parsing is
//! bounds-checked, compression pointers may only point backwards (no loops), names are limited
//! to 255 bytes, and a bad record ends the answer section without losing the records before it.
//!
//! The cache is node-wide (one map from address to names), bounded in entries; names live for
//! the answer's TTL but at least [`DnsConfig::min_ttl`] (Cilium's `--tofqdns-min-ttl` plays the
//! same role: connections often outlive the TTL of the lookup that started them). DNS over TCP
//! is not captured.
//!
//! Names are learned when the pipeline decodes the answer. The per-CPU rings are read
//! independently, so a connection opened within a few milliseconds of its answer, and seen by
//! another CPU, may be decoded before the answer and go unnamed (Cilium avoids this by holding
//! the answer in its DNS proxy until the cache is updated; a datapath observer cannot).
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use periscope_datapath_common::{self as dp, FlowEvent};
use periscope_proto::flow::{self, Flow, L7FlowType, Layer7, layer7};

/// Why a DNS message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The packet ends before the field.
    #[error("truncated at {0}")]
    Truncated(&'static str),
    /// Not an Ethernet/IPv4/IPv6/UDP packet we can read.
    #[error("not a UDP packet: {0}")]
    NotUdp(&'static str),
    /// A name breaks the DNS rules (label too long, pointer forward or looping, name > 255).
    #[error("bad name: {0}")]
    BadName(&'static str),
}

/// A question of a DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name asked for, lower case, with the trailing dot (`example.com.`).
    pub name: String,
    /// Query type (1 = A, 28 = AAAA, …).
    pub qtype: u16,
}

/// An answer record we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A or AAAA: `name` has address `ip`.
    Addr {
        /// Owner name.
        name: String,
        /// The address.
        ip: IpAddr,
        /// TTL in seconds.
        ttl: u32,
    },
    /// CNAME: `name` is an alias of `target`.
    Cname {
        /// Owner name.
        name: String,
        /// Canonical name.
        target: String,
        /// TTL in seconds.
        ttl: u32,
    },
    /// Any other record type.
    Other {
        /// Record type.
        rtype: u16,
        /// TTL in seconds.
        ttl: u32,
    },
}

/// A parsed DNS message (what we need of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Transaction id.
    pub id: u16,
    /// A response (QR bit).
    pub response: bool,
    /// Response code (0 = NOERROR, 3 = NXDOMAIN, …).
    pub rcode: u8,
    /// Questions.
    pub questions: Vec<Question>,
    /// Answers, up to the first record that could not be parsed.
    pub answers: Vec<Answer>,
    /// The answer section was cut short (capture limit or a malformed record).
    pub truncated: bool,
}

/// The UDP payload of a captured packet (Ethernet header first), with its addresses and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// The UDP payload (as much as was captured).
    pub payload: &'a [u8],
}

fn get<const N: usize>(b: &[u8], at: usize, what: &'static str) -> Result<[u8; N], DnsError> {
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(DnsError::Truncated(what))
}

fn be16(b: &[u8], at: usize, what: &'static str) -> Result<u16, DnsError> {
    get::<2>(b, at, what).map(u16::from_be_bytes)
}

/// Reads the Ethernet, IP and UDP headers of a captured packet.
pub fn udp_packet(b: &[u8]) -> Result<UdpPacket<'_>, DnsError> {
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86dd;
    let ethertype = be16(b, 12, "ethernet header")?;
    let (src, dst, l4) = match ethertype {
        ETH_P_IP => {
            let vihl = get::<1>(b, 14, "ipv4 header")?[0];
            if vihl >> 4 != 4 {
                return Err(DnsError::NotUdp("ipv4 version"));
            }
            let ihl = (vihl & 0x0f) as usize * 4;
            if ihl < 20 {
                return Err(DnsError::NotUdp("ipv4 header length"));
            }
            let frag = be16(b, 14 + 6, "ipv4 header")?;
            if frag & 0x1fff != 0 {
                return Err(DnsError::NotUdp("ipv4 fragment"));
            }
            if get::<1>(b, 14 + 9, "ipv4 header")?[0] != dp::proto::UDP {
                return Err(DnsError::NotUdp("ipv4 protocol"));
            }
            let s = get::<4>(b, 14 + 12, "ipv4 source")?;
            let d = get::<4>(b, 14 + 16, "ipv4 destination")?;
            (
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(d)),
                14 + ihl,
            )
        }
        ETH_P_IPV6 => {
            let s = get::<16>(b, 14 + 8, "ipv6 source")?;
            let d = get::<16>(b, 14 + 24, "ipv6 destination")?;
            let mut next = get::<1>(b, 14 + 6, "ipv6 header")?[0];
            let mut off = 14 + 40;
            // Hop-by-hop, routing and destination options may precede UDP; fragments are not
            // reassembled.
            for _ in 0..4 {
                match next {
                    0 | 43 | 60 => {
                        let h = get::<2>(b, off, "ipv6 extension header")?;
                        next = h[0];
                        off += (h[1] as usize + 1) * 8;
                    }
                    _ => break,
                }
            }
            if next != dp::proto::UDP {
                return Err(DnsError::NotUdp("ipv6 next header"));
            }
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                off,
            )
        }
        _ => return Err(DnsError::NotUdp("ethertype")),
    };
    let sport = be16(b, l4, "udp header")?;
    let dport = be16(b, l4 + 2, "udp header")?;
    let ulen = be16(b, l4 + 4, "udp header")? as usize;
    if ulen < 8 {
        return Err(DnsError::NotUdp("udp length"));
    }
    let start = l4 + 8;
    let end = (l4 + ulen).min(b.len());
    let payload = b
        .get(start..end)
        .ok_or(DnsError::Truncated("udp payload"))?;
    Ok(UdpPacket {
        src,
        dst,
        sport,
        dport,
        payload,
    })
}

/// Reads the (possibly compressed) name at `at`; returns it (lower case, trailing dot) and the
/// offset just after it in the original position.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end_after = None;
    let mut jumps = 0;
    // Pointers must go strictly backwards: no loops, and at most 128 jumps in any case.
    let mut limit = at;
    loop {
        let len = get::<1>(msg, at, "name")?[0];
        match len >> 6 {
            0 => {
                let len = len as usize;
                if len == 0 {
                    if name.is_empty() {
                        name.push('.');
                    }
                    return Ok((name, end_after.unwrap_or(at + 1)));
                }
                let label = msg
                    .get(at + 1..at + 1 + len)
                    .ok_or(DnsError::Truncated("label"))?;
                if name.len() + len + 1 > 255 {
                    return Err(DnsError::BadName("longer than 255 bytes"));
                }
                for &c in label {
                    // Keep names printable: other bytes are escaped the way dig shows them.
                    match c {
                        b'A'..=b'Z' => name.push(c.to_ascii_lowercase() as char),
                        b'.' | b'\\' => {
                            name.push('\\');
                            name.push(c as char);
                        }
                        0x21..=0x7e => name.push(c as char),
                        _ => {
                            use std::fmt::Write;
                            let _ = write!(name, "\\{c:03}");
                        }
                    }
                }
                name.push('.');
                at += 1 + len;
            }
            3 => {
                let ptr = (be16(msg, at, "name pointer")? & 0x3fff) as usize;
                if ptr >= limit {
                    return Err(DnsError::BadName("pointer does not point backwards"));
                }
                jumps += 1;
                if jumps > 128 {
                    return Err(DnsError::BadName("too many pointers"));
                }
                end_after.get_or_insert(at + 2);
                limit = ptr;
                at = ptr;
            }
            _ => return Err(DnsError::BadName("reserved label type")),
        }
    }
}

/// Parses a DNS message (the UDP payload).
pub fn parse(msg: &[u8]) -> Result<Message, DnsError> {
    let id = be16(msg, 0, "header")?;
    let flags = be16(msg, 2, "header")?;
    let qd = be16(msg, 4, "header")?;
    let an = be16(msg, 6, "header")?;
    let mut at = 12;
    if msg.len() < at {
        return Err(DnsError::Truncated("header"));
    }
    let mut questions = Vec::with_capacity(qd.min(4) as usize);
    for _ in 0..qd {
        let (name, next) = read_name(msg, at)?;
        let qtype = be16(msg, next, "question")?;
        be16(msg, next + 2, "question")?;
        at = next + 4;
        questions.push(Question { name, qtype });
    }
    let mut answers = Vec::with_capacity(an.min(16) as usize);
    let mut truncated = flags & 0x0200 != 0;
    for _ in 0..an {
        match answer(msg, at) {
            Ok((a, next)) => {
                answers.push(a);
                at = next;
            }
            Err(_) => {
                truncated = true;
                break;
            }
        }
    }
    Ok(Message {
        id,
        response: flags & 0x8000 != 0,
        rcode: (flags & 0x000f) as u8,
        questions,
        answers,
        truncated,
    })
}

fn answer(msg: &[u8], at: usize) -> Result<(Answer, usize), DnsError> {
    let (name, next) = read_name(msg, at)?;
    let rtype = be16(msg, next, "record")?;
    let class = be16(msg, next + 2, "record")?;
    let ttl = get::<4>(msg, next + 4, "record").map(u32::from_be_bytes)?;
    let rdlen = be16(msg, next + 8, "record")? as usize;
    let rdata_at = next + 10;
    let rdata = msg
        .get(rdata_at..rdata_at + rdlen)
        .ok_or(DnsError::Truncated("rdata"))?;
    let end = rdata_at + rdlen;
    // Only the Internet class carries addresses.
    let a = match (rtype, class, rdlen) {
        (1, 1, 4) => Answer::Addr {
            name,
            ip: IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
            ttl,
        },
        (28, 1, 16) => Answer::Addr {
            name,
            ip: IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(rdata).expect("16 bytes"),
            )),
            ttl,
        },
        (5, 1, _) => {
            let (target, _) = read_name(msg, rdata_at)?;
            Answer::Cname { name, target, ttl }
        }
        _ => Answer::Other { rtype, ttl },
    };
    Ok((a, end))
}

/// The mnemonic of a record type as Hubble prints it.
pub fn type_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        41 => "OPT".into(),
        64 => "SVCB".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        t => format!("TYPE{t}"),
    }
}

/// The name of a response code.
pub fn rcode_name(r: u32) -> String {
    match r {
        0 => "NoError".into(),
        1 => "FormErr".into(),
        2 => "ServFail".into(),
        3 => "NXDomain".into(),
        4 => "NotImp".into(),
        5 => "Refused".into(),
        r => format!("RCode{r}"),
    }
}

/// Settings of the DNS enricher.
#[derive(Debug, Clone, Copy)]
pub struct DnsConfig {
    /// Shortest time a name stays known for an address, whatever the answer's TTL.
    pub min_ttl: Duration,
    /// Most addresses the cache holds; beyond it the entries that expire first are evicted.
    pub max_ips: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            min_ttl: Duration::from_secs(3600),
            max_ips: 65_536,
        }
    }
}

/// Counters of the enricher.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsStats {
    /// DNS messages parsed.
    pub messages: u64,
    /// Captured packets that could not be parsed.
    pub malformed: u64,
    /// Cache entries evicted because the cache was full.
    pub evicted: u64,
}

struct Entry {
    /// Names with their expiry (boot-time ns).
    names: Vec<(Arc<str>, u64)>,
}

/// Address → names learned from DNS answers.
pub struct FqdnCache {
    cfg: DnsConfig,
    by_ip: HashMap<IpAddr, Entry>,
    /// Interned names: every flow to the same address shares them.
    names: HashMap<Arc<str>, ()>,
    stats: DnsStats,
}

impl FqdnCache {
    /// An empty cache.
    pub fn new(cfg: DnsConfig) -> Self {
        FqdnCache {
            cfg,
            by_ip: HashMap::new(),
            names: HashMap::new(),
            stats: DnsStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> DnsStats {
        self.stats
    }

    /// Addresses known.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// Nothing known.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some((k, _)) = self.names.get_key_value(name) {
            return k.clone();
        }
        let k: Arc<str> = name.into();
        self.names.insert(k.clone(), ());
        k
    }

    /// Records that `name` resolved to `ip` at `now_ns` with `ttl` seconds.
    pub fn insert(&mut self, ip: IpAddr, name: &str, ttl: u32, now_ns: u64) {
        let life = Duration::from_secs(ttl as u64).max(self.cfg.min_ttl);
        let expires = now_ns.saturating_add(life.as_nanos() as u64);
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= self.cfg.max_ips {
            self.make_room(now_ns);
        }
        let name = self.intern(name);
        let e = self
            .by_ip
            .entry(ip)
            .or_insert_with(|| Entry { names: Vec::new() });
        match e.names.iter_mut().find(|(n, _)| *n == name) {
            Some((_, exp)) => *exp = (*exp).max(expires),
            None => e.names.push((name, expires)),
        }
    }

    /// Frees at least one slot: drops expired entries, else the one that expires first.
    fn make_room(&mut self, now_ns: u64) {
        let before = self.by_ip.len();
        self.expire(now_ns);
        if self.by_ip.len() < before {
            return;
        }
        let victim = self
            .by_ip
            .iter()
            .min_by_key(|(_, e)| e.names.iter().map(|(_, x)| *x).max().unwrap_or(0))
            .map(|(ip, _)| *ip);
        if let Some(ip) = victim {
            self.by_ip.remove(&ip);
            self.stats.evicted += 1;
        }
    }

    /// Forgets names whose time is over, and names no address uses any more.
    pub fn expire(&mut self, now_ns: u64) {
        self.by_ip.retain(|_, e| {
            e.names.retain(|(_, x)| *x > now_ns);
            !e.names.is_empty()
        });
        self.names.retain(|k, _| Arc::strong_count(k) > 1);
    }

    /// The names of `ip` at `now_ns`, sorted.
    pub fn names(&self, ip: &IpAddr, now_ns: u64) -> Vec<String> {
        let Some(e) = self.by_ip.get(ip) else {
            return Vec::new();
        };
        let mut v: Vec<String> = e
            .names
            .iter()
            .filter(|(_, x)| *x > now_ns)
            .map(|(n, _)| n.to_string())
            .collect();
        v.sort();
        v
    }

    /// Learns the addresses of a response: every A/AAAA address gets the question's name, and
    /// the names of the CNAME chain that led to it.
    pub fn learn(&mut self, m: &Message, now_ns: u64) {
        if !m.response || m.rcode != 0 {
            return;
        }
        let qname = m.questions.first().map(|q| q.name.as_str());
        for a in &m.answers {
            if let Answer::Addr { name, ip, ttl } = a {
                self.insert(*ip, name, *ttl, now_ns);
                // The question's name, when the address came through a CNAME chain.
                if let Some(q) = qname.filter(|q| *q != name)
                    && chain_reaches(m, q, name)
                {
                    self.insert(*ip, q, *ttl, now_ns);
                }
            }
        }
    }
}

/// Whether `from` reaches `to` through the message's CNAME records.
fn chain_reaches(m: &Message, from: &str, to: &str) -> bool {
    let mut cur = from;
    for _ in 0..16 {
        if cur == to {
            return true;
        }
        match m.answers.iter().find_map(|a| match a {
            Answer::Cname { name, target, .. } if name == cur => Some(target.as_str()),
            _ => None,
        }) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    false
}

/// The L7 record of a DNS message, as Hubble fills it for DNS flows.
pub fn l7_record(m: &Message) -> Layer7 {
    let mut ips = Vec::new();
    let mut cnames = Vec::new();
    let mut rrtypes = Vec::new();
    let mut ttl = u32::MAX;
    for a in &m.answers {
        let (t, rt) = match a {
            Answer::Addr { ip, ttl, .. } => {
                ips.push(ip.to_string());
                (*ttl, if ip.is_ipv4() { 1 } else { 28 })
            }
            Answer::Cname { target, ttl, .. } => {
                cnames.push(target.clone());
                (*ttl, 5)
            }
            Answer::Other { rtype, ttl } => (*ttl, *rtype),
        };
        ttl = ttl.min(t);
        let name = type_name(rt);
        if !rrtypes.contains(&name) {
            rrtypes.push(name);
        }
    }
    if ttl == u32::MAX {
        ttl = 0;
    }
    let q = m.questions.first();
    Layer7 {
        r#type: if m.response {
            L7FlowType::Response
        } else {
            L7FlowType::Request
        } as i32,
        latency_ns: 0,
        record: Some(layer7::Record::Dns(flow::Dns {
            query: q.map(|q| q.name.clone()).unwrap_or_default(),
            ips,
            ttl,
            cnames,
            observation_source: "periscope-datapath".into(),
            rcode: m.rcode as u32,
            qtypes: m.questions.iter().map(|q| type_name(q.qtype)).collect(),
            rrtypes,
        })),
    }
}

/// Hubble's summary of a DNS flow (`DNS Query example.com. A`,
/// `DNS Answer "93.184.215.14" TTL: 300 (Proxy example.com. A)`).
pub fn summary(l7: &Layer7) -> Option<String> {
    let Some(layer7::Record::Dns(d)) = &l7.record else {
        return None;
    };
    let qtypes = d.qtypes.join(",");
    Some(if l7.r#type == L7FlowType::Request as i32 {
        format!("DNS Query {} {}", d.query, qtypes)
    } else if d.rcode != 0 {
        format!(
            "DNS Answer RCode: {} TTL: {} (Datapath {} {})",
            rcode_name(d.rcode),
            d.ttl,
            d.query,
            qtypes
        )
    } else {
        format!(
            "DNS Answer \"{}\" TTL: {} (Datapath {} {})",
            d.ips.join(","),
            d.ttl,
            d.query,
            qtypes
        )
    })
}

/// The DNS enricher of the pipeline: learns from captured DNS packets and names flows.
pub struct DnsEnricher {
    cache: FqdnCache,
    /// Outstanding queries: (client address, client port, id) → query time, for latency.
    pending: HashMap<(IpAddr, u16, u16), u64>,
    last_expire_ns: u64,
}

/// Most outstanding queries remembered for latency.
const MAX_PENDING: usize = 16_384;

impl DnsEnricher {
    /// A new enricher.
    pub fn new(cfg: DnsConfig) -> Self {
        DnsEnricher {
            cache: FqdnCache::new(cfg),
            pending: HashMap::new(),
            last_expire_ns: 0,
        }
    }

    /// The cache (read-only).
    pub fn cache(&self) -> &FqdnCache {
        &self.cache
    }

    /// The cache, to seed it (benchmarks, tests).
    pub fn cache_mut(&mut self) -> &mut FqdnCache {
        &mut self.cache
    }

    /// Enriches `f`, decoded from `ev`; `payload` is the packet the datapath captured (empty for
    /// most events). `now_ns` is the event's boot-time timestamp.
    pub fn enrich(&mut self, f: &mut Flow, ev: &FlowEvent, payload: &[u8]) {
        let now = ev.ts_ns;
        if !payload.is_empty() {
            self.observe(f, ev, payload);
        }
        if now.saturating_sub(self.last_expire_ns) > 10_000_000_000 {
            self.cache.expire(now);
            self.pending
                .retain(|_, t| now.saturating_sub(*t) < 30_000_000_000);
            self.last_expire_ns = now;
        }
        if self.cache.is_empty() {
            return;
        }
        let (src, dst) = (
            crate::decoder::ip_of(ev.flags, &ev.src_ip),
            crate::decoder::ip_of(ev.flags, &ev.dst_ip),
        );
        f.source_names = self.cache.names(&src, now);
        f.destination_names = self.cache.names(&dst, now);
    }

    fn observe(&mut self, f: &mut Flow, ev: &FlowEvent, payload: &[u8]) {
        let pkt = match udp_packet(payload) {
            Ok(p) if p.sport == dp::DNS_PORT || p.dport == dp::DNS_PORT => p,
            _ => {
                self.cache.stats.malformed += 1;
                return;
            }
        };
        let m = match parse(pkt.payload) {
            Ok(m) => m,
            Err(e) => {
                self.cache.stats.malformed += 1;
                tracing::trace!(error = %e, "unparsable DNS message");
                return;
            }
        };
        self.cache.stats.messages += 1;
        // A dropped message was never delivered: name nothing after it.
        let delivered = ev.verdict != dp::verdict::DROPPED;
        let mut l7 = l7_record(&m);
        if m.response {
            if let Some(t) = self.pending.remove(&(pkt.dst, pkt.dport, m.id)) {
                l7.latency_ns = ev.ts_ns.saturating_sub(t);
            }
            if delivered {
                self.cache.learn(&m, ev.ts_ns);
            }
        } else if delivered && self.pending.len() < MAX_PENDING {
            self.pending
                .entry((pkt.src, pkt.sport, m.id))
                .or_insert(ev.ts_ns);
        }
        if let Some(s) = summary(&l7) {
            f.summary = s;
        }
        f.l7 = Some(l7);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes a name without compression.
    fn name(out: &mut Vec<u8>, n: &str) {
        for l in n.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
    }

    /// A DNS message: question `q` (type `qtype`), answers as (owner, type, rdata).
    pub(crate) fn message(
        id: u16,
        response: bool,
        rcode: u8,
        q: &str,
        qtype: u16,
        answers: &[(&str, u16, Vec<u8>)],
    ) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        let flags: u16 = if response { 0x8180 } else { 0x0100 } | rcode as u16;
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        name(&mut m, q);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        for (owner, t, rdata) in answers {
            if *owner == q {
                m.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
            } else {
                name(&mut m, owner);
            }
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&1u16.to_be_bytes());
            m.extend_from_slice(&300u32.to_be_bytes());
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(rdata);
        }
        m
    }

    fn encoded(n: &str) -> Vec<u8> {
        let mut v = Vec::new();
        name(&mut v, n);
        v
    }

    /// Wraps a DNS message in Ethernet + IPv4 + UDP.
    pub(crate) fn ipv4_udp(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        p: &[u8],
    ) -> Vec<u8> {
        let mut b = vec![0u8; 12];
        b.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = 20 + 8 + p.len();
        b.extend_from_slice(&[0x45, 0]);
        b.extend_from_slice(&(total as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&((8 + p.len()) as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(p);
        b
    }

    #[test]
    fn parses_a_response_with_a_cname_chain() {
        let m = message(
            7,
            true,
            0,
            "www.Example.com",
            1,
            &[
                ("www.example.com", 5, encoded("edge.cdn.net")),
                ("edge.cdn.net", 1, vec![93, 184, 215, 14]),
                (
                    "edge.cdn.net",
                    28,
                    [0x20, 1, 0xd, 0xb8]
                        .iter()
                        .copied()
                        .chain([0; 11])
                        .chain([1])
                        .collect(),
                ),
            ],
        );
        let p = parse(&m).unwrap();
        assert!(p.response);
        assert_eq!(p.id, 7);
        assert_eq!(p.questions[0].name, "www.example.com.");
        assert_eq!(p.answers.len(), 3);
        assert_eq!(
            p.answers[0],
            Answer::Cname {
                name: "www.example.com.".into(),
                target: "edge.cdn.net.".into(),
                ttl: 300
            }
        );
        let mut c = FqdnCache::new(DnsConfig::default());
        c.learn(&p, 0);
        let ip: IpAddr = "93.184.215.14".parse().unwrap();
        assert_eq!(c.names(&ip, 1), vec!["edge.cdn.net", "www.example.com"]);
        let ip6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(c.names(&ip6, 1), vec!["edge.cdn.net", "www.example.com"]);
        let l7 = l7_record(&p);
        let Some(layer7::Record::Dns(d)) = &l7.record else {
            panic!()
        };
        assert_eq!(d.ips, vec!["93.184.215.14", "2001:db8::1"]);
        assert_eq!(d.cnames, vec!["edge.cdn.net."]);
        assert_eq!(d.qtypes, vec!["A"]);
        assert_eq!(d.rrtypes, vec!["CNAME", "A", "AAAA"]);
        assert_eq!(d.ttl, 300);
        assert_eq!(
            summary(&l7).unwrap(),
            "DNS Answer \"93.184.215.14,2001:db8::1\" TTL: 300 (Datapath www.example.com. A)"
        );
    }

    #[test]
    fn failed_and_query_messages_teach_nothing() {
        let mut c = FqdnCache::new(DnsConfig::default());
        let nx = parse(&message(1, true, 3, "nope.example", 1, &[])).unwrap();
        assert_eq!(nx.rcode, 3);
        c.learn(&nx, 0);
        let q = parse(&message(
            1,
            false,
            0,
            "a.example",
            1,
            &[("a.example", 1, vec![1, 2, 3, 4])],
        ))
        .unwrap();
        c.learn(&q, 0);
        assert!(c.is_empty());
        assert_eq!(
            summary(&l7_record(&nx)).unwrap(),
            "DNS Answer RCode: NXDomain TTL: 0 (Datapath nope.example. A)"
        );
    }

    #[test]
    fn an_address_unrelated_to_the_question_keeps_only_its_owner_name() {
        let m = message(
            1,
            true,
            0,
            "a.example",
            1,
            &[("other.example", 1, vec![10, 0, 0, 1])],
        );
        let mut c = FqdnCache::new(DnsConfig::default());
        c.learn(&parse(&m).unwrap(), 0);
        assert_eq!(
            c.names(&"10.0.0.1".parse().unwrap(), 1),
            vec!["other.example"]
        );
    }

    #[test]
    fn hostile_names_are_rejected_without_loops_or_panics() {
        // A pointer to itself.
        let mut m = message(1, true, 0, "a.example", 1, &[]);
        m[5] = 1;
        m.truncate(12);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(
            parse(&m),
            Err(DnsError::BadName("pointer does not point backwards"))
        );
        // A forward pointer.
        let mut m = vec![
            0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 20, 0, 1, 0, 1,
        ];
        assert!(parse(&m).is_err());
        // A label running past the end.
        m.truncate(12);
        m.extend_from_slice(&[40, b'a', b'b']);
        assert_eq!(parse(&m), Err(DnsError::Truncated("label")));
        // A name longer than 255 bytes.
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            m.push(63);
            m.extend_from_slice(&[b'x'; 63]);
        }
        m.push(0);
        assert_eq!(parse(&m), Err(DnsError::BadName("longer than 255 bytes")));
        // Reserved label type.
        let m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0x80, 0];
        assert_eq!(parse(&m), Err(DnsError::BadName("reserved label type")));
        // Unprintable bytes are escaped.
        let mut m = vec![
            0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', 0, b'.', 0, 0, 1, 0, 1,
        ];
        assert_eq!(parse(&m).unwrap().questions[0].name, "a\\000\\..");
        // Every truncation of a good message parses or errors, never panics.
        m = message(
            9,
            true,
            0,
            "www.example.com",
            1,
            &[
                ("www.example.com", 5, encoded("edge.cdn.net")),
                ("edge.cdn.net", 1, vec![1, 2, 3, 4]),
            ],
        );
        for n in 0..m.len() {
            let _ = parse(&m[..n]);
        }
    }

    #[test]
    fn a_bad_record_ends_the_answers_and_keeps_the_good_ones() {
        let mut m = message(
            1,
            true,
            0,
            "a.example",
            1,
            &[
                ("a.example", 1, vec![1, 2, 3, 4]),
                ("a.example", 1, vec![5, 6, 7, 8]),
            ],
        );
        m.truncate(m.len() - 3);
        let p = parse(&m).unwrap();
        assert!(p.truncated);
        assert_eq!(p.answers.len(), 1);
    }

    #[test]
    fn reads_udp_from_ipv4_and_ipv6_frames() {
        let dns = message(
            3,
            true,
            0,
            "a.example",
            1,
            &[("a.example", 1, vec![1, 2, 3, 4])],
        );
        let f = ipv4_udp([10, 0, 0, 53], [10, 0, 0, 7], 53, 40000, &dns);
        let p = udp_packet(&f).unwrap();
        assert_eq!(p.src, "10.0.0.53".parse::<IpAddr>().unwrap());
        assert_eq!((p.sport, p.dport), (53, 40000));
        assert_eq!(p.payload, &dns[..]);
        // Captured bytes shorter than the UDP length: the payload is what there is.
        assert_eq!(
            udp_packet(&f[..f.len() - 2]).unwrap().payload.len(),
            dns.len() - 2
        );

        let mut v6 = vec![0u8; 12];
        v6.extend_from_slice(&0x86ddu16.to_be_bytes());
        v6.extend_from_slice(&[0x60, 0, 0, 0]);
        v6.extend_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
        v6.extend_from_slice(&[60, 64]); // destination options first
        v6.extend_from_slice(&[0xfd; 16]);
        v6.extend_from_slice(&[0xfe; 16]);
        v6.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        v6.extend_from_slice(&53u16.to_be_bytes());
        v6.extend_from_slice(&5353u16.to_be_bytes());
        v6.extend_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
        v6.extend_from_slice(&[0, 0]);
        v6.extend_from_slice(&dns);
        let p = udp_packet(&v6).unwrap();
        assert_eq!(p.dport, 5353);
        assert_eq!(parse(p.payload).unwrap().answers.len(), 1);

        let mut tcp = f.clone();
        tcp[14 + 9] = 6;
        assert_eq!(udp_packet(&tcp), Err(DnsError::NotUdp("ipv4 protocol")));
        assert!(udp_packet(&f[..20]).is_err());
    }

    #[test]
    fn cache_expires_evicts_and_honours_min_ttl() {
        let cfg = DnsConfig {
            min_ttl: Duration::from_secs(10),
            max_ips: 2,
        };
        let mut c = FqdnCache::new(cfg);
        let s = 1_000_000_000u64;
        let (a, b, d): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        c.insert(a, "a.example.", 1, 0); // min TTL: lives 10 s
        c.insert(b, "b.example.", 100, 0);
        assert_eq!(c.names(&a, 9 * s), vec!["a.example"]);
        assert!(c.names(&a, 11 * s).is_empty());
        // Full: inserting a third address drops the expired one first.
        c.insert(d, "d.example.", 100, 11 * s);
        assert_eq!(c.len(), 2);
        assert_eq!(c.stats().evicted, 0);
        // Full of live entries: the one expiring first goes.
        c.insert(a, "a.example.", 20, 12 * s);
        assert_eq!(c.len(), 2);
        assert_eq!(c.stats().evicted, 1);
        assert!(c.names(&a, 13 * s).contains(&"a.example".to_string()));
        // Names are shared, not copied, and forgotten when unused.
        c.expire(1000 * s);
        assert!(c.is_empty());
        assert!(c.names.is_empty());
    }

    #[test]
    fn enricher_names_later_flows_and_measures_latency() {
        let mut e = DnsEnricher::new(DnsConfig::default());
        let q = message(42, false, 0, "api.example", 1, &[]);
        let r = message(
            42,
            true,
            0,
            "api.example",
            1,
            &[("api.example", 1, vec![192, 0, 2, 10])],
        );
        let ev = |ts| FlowEvent {
            ts_ns: ts,
            verdict: dp::verdict::FORWARDED,
            ..Default::default()
        };
        let mut fq = Flow::default();
        e.enrich(
            &mut fq,
            &ev(1_000),
            &ipv4_udp([10, 0, 0, 7], [10, 0, 0, 53], 40000, 53, &q),
        );
        assert_eq!(fq.summary, "DNS Query api.example. A");
        assert_eq!(fq.l7.as_ref().unwrap().r#type, L7FlowType::Request as i32);
        let mut fr = Flow::default();
        e.enrich(
            &mut fr,
            &ev(5_000),
            &ipv4_udp([10, 0, 0, 53], [10, 0, 0, 7], 53, 40000, &r),
        );
        assert_eq!(fr.l7.as_ref().unwrap().latency_ns, 4_000);
        let mut later = Flow::default();
        let mut to_api = ev(6_000);
        to_api.src_ip[..4].copy_from_slice(&[10, 0, 0, 7]);
        to_api.dst_ip[..4].copy_from_slice(&[192, 0, 2, 10]);
        e.enrich(&mut later, &to_api, &[]);
        assert_eq!(later.destination_names, vec!["api.example"]);
        assert!(later.source_names.is_empty());
        assert_eq!(e.cache().stats().messages, 2);
        // Garbage is counted, not fatal.
        e.enrich(&mut Flow::default(), &ev(7_000), &[1, 2, 3]);
        assert_eq!(e.cache().stats().malformed, 1);
    }

    #[test]
    fn a_dropped_response_teaches_nothing() {
        let mut e = DnsEnricher::new(DnsConfig::default());
        let r = message(
            1,
            true,
            0,
            "x.example",
            1,
            &[("x.example", 1, vec![192, 0, 2, 1])],
        );
        let ev = FlowEvent {
            ts_ns: 1,
            verdict: dp::verdict::DROPPED,
            ..Default::default()
        };
        let mut f = Flow::default();
        e.enrich(
            &mut f,
            &ev,
            &ipv4_udp([10, 0, 0, 53], [10, 0, 0, 7], 53, 1, &r),
        );
        assert!(f.l7.is_some());
        assert!(e.cache().is_empty());
    }
}

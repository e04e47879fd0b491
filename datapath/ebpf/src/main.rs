//! Periscope's tc datapath.
//!
//! One instance of this object is loaded per endpoint (pod). Its two programs sit on the host side
//! of the endpoint's veth:
//! - `from_container` (tc ingress of the host veth): packets leaving the pod — egress policy;
//! - `to_container` (tc egress of the host veth): packets entering the pod — ingress policy.
//!
//! The maps shared by all endpoints of a node (ipcache, endpoints, connection tracking, events,
//! metrics, config) are pinned by name under the node's bpffs directory; the policy map is per
//! instance (the agent pins it as `ep/<id>/policy_<version>`).
//!
//! Every packet either passes or is dropped with a drop reason; every outcome is counted in the
//! per-CPU metrics array; nothing panics. Packet bytes are read with `bpf_skb_load_bytes` at
//! checked offsets, so a short or malformed packet is a counted drop, never an out-of-bounds read.
#![no_std]
#![no_main]
// BPF has atomic add, but the bpfel target does not enable core's atomic types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod lb;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_CPU, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_boot_ns, bpf_perf_event_output},
    macros::{classifier, map},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerfEventArray, lpm_trie::Key as LpmKey,
    },
    programs::TcContext,
};
use periscope_datapath_common::{
    CAPTURE_MAX, CT_F_AUDIT, CT_F_CLOSING_RX, CT_F_CLOSING_TX, CT_F_LOCAL_PEER, CT_F_NODEPORT,
    CT_F_SEEN_REPLY, CT_SCOPE_EGRESS, CT_SCOPE_INGRESS, CtEntry, CtKey, DNS_PORT, DatapathConfig,
    EP_F_AUDIT_EGRESS, EP_F_AUDIT_INGRESS, EP_F_HAS_IPV4, EP_F_HAS_IPV6, EV_F_IPV6, EV_F_NEW,
    EV_F_REPLY, EV_F_REPLY_KNOWN, EV_F_REPORT, EVENT_VERSION, EndpointInfo, FlowEvent,
    IDENTITY_UNKNOWN, IDENTITY_WORLD, IPCACHE_F_LOCAL_ENDPOINT, IpcacheKey, IpcacheValue,
    MetricsValue, POLICY_F_DENY, PolicyEntry, PolicyKey, aggregation, capacity, dir, drop, family,
    match_type, metric, metrics_index, msg, obs, proto, tcp, verdict,
};

/// Endpoint id of this program instance, set by the loader.
#[unsafe(no_mangle)]
static PSC_ENDPOINT_ID: u32 = 0;

#[map(name = "PSC_IPCACHE")]
static IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> = LpmTrie::pinned(capacity::IPCACHE, 0);

#[map(name = "PSC_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(capacity::ENDPOINTS, 0);

#[map(name = "PSC_CT")]
static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(capacity::CT, 0);

#[map(name = "PSC_EVENTS")]
static EVENTS: PerfEventArray<FlowEvent> = PerfEventArray::pinned(0);

#[map(name = "PSC_METRICS")]
static METRICS: PerCpuArray<MetricsValue> = PerCpuArray::pinned(capacity::METRICS, 0);

#[map(name = "PSC_CONFIG")]
static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

#[map(name = "PSC_POLICY")]
static POLICY: HashMap<PolicyKey, PolicyEntry> = HashMap::with_max_entries(capacity::POLICY, 0);

/// Per-CPU scratch space for building an event (keeps 128 bytes off the 512-byte stack).
#[map(name = "PSC_SCRATCH")]
static SCRATCH: PerCpuArray<FlowEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for the CT keys and a new entry of one packet: kept off the stack,
/// which the program's functions share (512 bytes for the whole call chain).
#[derive(Clone, Copy)]
struct CtScratch {
    fwd: CtKey,
    rev: CtKey,
    new: CtEntry,
}

#[map(name = "PSC_CT_SCRATCH")]
static CT_SCRATCH: PerCpuArray<CtScratch> = PerCpuArray::with_max_entries(1, 0);

/// Granularity of CT lifetime refreshes.
const LIFETIME_GRANULARITY_NS: u64 = 1_000_000_000;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
const MAX_IPV6_EXT: usize = 4;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    handle(&ctx, dir::EGRESS)
}

#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    handle(&ctx, dir::INGRESS)
}

/// At the ingress of a node device (the agent's `--nodeport-devices`): a TCP/UDP packet from
/// outside the node to a service frontend (a node port, an external IP, a cluster IP) is
/// translated to a backend as at an endpoint's egress, pinned by the same service CT entry. A new
/// connection also gets an egress-scope CT entry for its translated tuple, carrying the frontend
/// and [`CT_F_NODEPORT`]: the backend's ingress finds it as it finds a local client's egress
/// entry, and the backend's replies are translated back where they leave it. No policy here (the
/// backend's ingress enforces it); anything else, unparsable packets included, passes untouched.
#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    let mut pkt = Packet::EMPTY;
    if parse_into(&ctx, &mut pkt) != PARSED_IP {
        return TC_ACT_OK;
    }
    let mut xl = lb::Xlated {
        svc_ct: core::ptr::null_mut(),
        selected: false,
        reverse: 0,
    };
    let rc = lb::translate(&ctx, &mut pkt, &mut xl);
    if rc != 0 {
        let src = ipcache_of(pkt.family, &pkt.saddr).0;
        return drop_packet(&ctx, Some(&pkt), dir::INGRESS, rc as u8, src, 0, 0, 0);
    }
    if !xl.svc_ct.is_null() {
        lb::from_outside(&pkt, &xl);
    }
    TC_ACT_OK
}

/// What parsing decided before policy.
enum Parsed {
    /// Not subject to policy (ARP, IPv6 neighbour discovery): pass silently.
    Pass,
    /// An IP packet to check.
    Ip(Packet),
}

/// The fields of a packet the datapath uses. Addresses are network order, ports host order.
#[derive(Clone, Copy)]
struct Packet {
    family: u8,
    proto: u8,
    tcp_flags: u8,
    icmp_type: u8,
    icmp_code: u8,
    /// Source/destination ports; for ICMP echo the identifier as source (request) or destination
    /// (reply) port, so that the reply's reversed tuple matches the request's.
    sport: u16,
    dport: u16,
    /// The "port" looked up in the policy map: the destination port, or the ICMP type.
    policy_port: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
    len: u32,
    /// Offset of the L4 header from the start of the packet.
    l4_off: u16,
    /// Service frontend of the connection (reverse-NAT index), 0 = none; reported in events.
    rev_nat: u16,
}

impl Packet {
    const EMPTY: Packet = Packet {
        family: 0,
        proto: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        sport: 0,
        dport: 0,
        policy_port: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        len: 0,
        l4_off: 0,
        rev_nat: 0,
    };
}

#[inline(always)]
fn handle(ctx: &TcContext, direction: u8) -> i32 {
    let mut pkt = Packet::EMPTY;
    match parse_into(ctx, &mut pkt) {
        PARSED_PASS => TC_ACT_OK,
        PARSED_IP => {
            // Service translation, the policy/CT pipeline and reverse translation are BPF
            // functions of their own, called one after the other: each gets its own stack frame
            // (512 bytes for the whole call chain).
            let mut xl = lb::Xlated {
                svc_ct: core::ptr::null_mut(),
                selected: false,
                reverse: 0,
            };
            if direction == dir::EGRESS {
                let rc = lb::translate(ctx, &mut pkt, &mut xl);
                if rc != 0 {
                    let ep_id = unsafe { core::ptr::read_volatile(&PSC_ENDPOINT_ID) };
                    // SAFETY: read of a map value.
                    let src = unsafe { ENDPOINTS.get(&ep_id) }.map_or(0, |e| e.identity);
                    return drop_packet(ctx, Some(&pkt), direction, rc as u8, src, 0, 0, 0);
                }
            }
            match process(ctx, &mut pkt, &mut xl, direction) {
                Ok(action) => {
                    if action == TC_ACT_OK && xl.reverse != 0 {
                        let rc = lb::reverse(ctx, &pkt, xl.reverse);
                        if rc != 0 {
                            return drop_packet(ctx, Some(&pkt), direction, rc as u8, 0, 0, 0, 0);
                        }
                    }
                    action
                }
                Err(reason) => drop_packet(ctx, Some(&pkt), direction, reason, 0, 0, 0, 0),
            }
        }
        reason => drop_packet(ctx, None, direction, reason as u8, 0, 0, 0, 0),
    }
}

/// [`parse_into`]: an IP packet to check.
const PARSED_IP: u32 = 0;
/// [`parse_into`]: not subject to policy, pass silently.
const PARSED_PASS: u32 = 0x100;

/// Parses the packet into `pkt`: returns [`PARSED_IP`], [`PARSED_PASS`] or a drop reason. A BPF
/// function of its own, so that its stack frame is not part of the later calls' chain.
#[inline(never)]
fn parse_into(ctx: &TcContext, pkt: &mut Packet) -> u32 {
    match parse(ctx) {
        Ok(Parsed::Pass) => PARSED_PASS,
        Ok(Parsed::Ip(p)) => {
            *pkt = p;
            PARSED_IP
        }
        Err(reason) => reason as u32,
    }
}

#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize, reason: u8) -> Result<T, u8> {
    ctx.load::<T>(off).map_err(|_| reason)
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Parsed, u8> {
    let len = ctx.len() as usize;
    if len < ETH_HLEN {
        return Err(drop::INVALID_PACKET);
    }
    let ethertype = u16::from_be(load::<u16>(ctx, 12, drop::INVALID_PACKET)?);
    let mut pkt = Packet {
        family: 0,
        proto: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        sport: 0,
        dport: 0,
        policy_port: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        len: len as u32,
        l4_off: 0,
        rev_nat: 0,
    };
    let l4_off = match ethertype {
        ETH_P_IP => parse_ipv4(ctx, len, &mut pkt)?,
        ETH_P_IPV6 => parse_ipv6(ctx, len, &mut pkt)?,
        ETH_P_ARP => return Ok(Parsed::Pass),
        _ => return Err(drop::UNSUPPORTED_L3_PROTOCOL),
    };
    parse_l4(ctx, len, l4_off, &mut pkt)
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, len: usize, pkt: &mut Packet) -> Result<usize, u8> {
    if len < ETH_HLEN + 20 {
        return Err(drop::INVALID_PACKET);
    }
    let vihl = load::<u8>(ctx, ETH_HLEN, drop::INVALID_PACKET)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(drop::INVALID_PACKET);
    }
    let total = u16::from_be(load::<u16>(ctx, ETH_HLEN + 2, drop::INVALID_PACKET)?) as usize;
    if total < ihl || len < ETH_HLEN + total {
        return Err(drop::INVALID_PACKET);
    }
    let frag = u16::from_be(load::<u16>(ctx, ETH_HLEN + 6, drop::INVALID_PACKET)?);
    if frag & 0x1fff != 0 {
        return Err(drop::FRAG_NOT_SUPPORTED);
    }
    pkt.family = family::V4;
    pkt.proto = load::<u8>(ctx, ETH_HLEN + 9, drop::INVALID_PACKET)?;
    let s = load::<[u8; 4]>(ctx, ETH_HLEN + 12, drop::INVALID_PACKET)?;
    let d = load::<[u8; 4]>(ctx, ETH_HLEN + 16, drop::INVALID_PACKET)?;
    pkt.saddr[..4].copy_from_slice(&s);
    pkt.daddr[..4].copy_from_slice(&d);
    Ok(ETH_HLEN + ihl)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, len: usize, pkt: &mut Packet) -> Result<usize, u8> {
    if len < ETH_HLEN + 40 {
        return Err(drop::INVALID_PACKET);
    }
    let v = load::<u8>(ctx, ETH_HLEN, drop::INVALID_PACKET)?;
    if v >> 4 != 6 {
        return Err(drop::INVALID_PACKET);
    }
    let payload = u16::from_be(load::<u16>(ctx, ETH_HLEN + 4, drop::INVALID_PACKET)?) as usize;
    if len < ETH_HLEN + 40 + payload {
        return Err(drop::INVALID_PACKET);
    }
    pkt.family = family::V6;
    pkt.saddr = load::<[u8; 16]>(ctx, ETH_HLEN + 8, drop::INVALID_PACKET)?;
    pkt.daddr = load::<[u8; 16]>(ctx, ETH_HLEN + 24, drop::INVALID_PACKET)?;
    let mut nh = load::<u8>(ctx, ETH_HLEN + 6, drop::INVALID_PACKET)?;
    let mut off = ETH_HLEN + 40;
    for _ in 0..MAX_IPV6_EXT {
        match nh {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let hdr = load::<[u8; 2]>(ctx, off, drop::INVALID_IPV6_EXTENSION_HEADER)?;
                nh = hdr[0];
                off += (hdr[1] as usize + 1) * 8;
            }
            IPV6_AH => {
                let hdr = load::<[u8; 2]>(ctx, off, drop::INVALID_IPV6_EXTENSION_HEADER)?;
                nh = hdr[0];
                off += (hdr[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let hdr = load::<[u8; 4]>(ctx, off, drop::INVALID_IPV6_EXTENSION_HEADER)?;
                let frag_off = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                if frag_off != 0 {
                    return Err(drop::FRAG_NOT_SUPPORTED);
                }
                nh = hdr[0];
                off += 8;
            }
            _ => {
                pkt.proto = nh;
                return Ok(off);
            }
        }
        if off > len {
            return Err(drop::INVALID_IPV6_EXTENSION_HEADER);
        }
    }
    Err(drop::INVALID_IPV6_EXTENSION_HEADER)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, len: usize, off: usize, pkt: &mut Packet) -> Result<Parsed, u8> {
    const TRUNC: u8 = drop::CT_TRUNCATED_OR_INVALID_HEADER;
    pkt.l4_off = off as u16;
    match pkt.proto {
        proto::TCP => {
            if len < off + 20 {
                return Err(TRUNC);
            }
            let ports = load::<[u8; 4]>(ctx, off, TRUNC)?;
            let hdr = load::<[u8; 2]>(ctx, off + 12, TRUNC)?;
            let doff = (hdr[0] >> 4) as usize * 4;
            if doff < 20 || len < off + doff {
                return Err(TRUNC);
            }
            pkt.sport = u16::from_be_bytes([ports[0], ports[1]]);
            pkt.dport = u16::from_be_bytes([ports[2], ports[3]]);
            pkt.policy_port = pkt.dport;
            pkt.tcp_flags = hdr[1];
        }
        proto::UDP => {
            if len < off + 8 {
                return Err(TRUNC);
            }
            let ports = load::<[u8; 4]>(ctx, off, TRUNC)?;
            pkt.sport = u16::from_be_bytes([ports[0], ports[1]]);
            pkt.dport = u16::from_be_bytes([ports[2], ports[3]]);
            pkt.policy_port = pkt.dport;
        }
        proto::ICMP | proto::ICMPV6 => {
            if len < off + 8 {
                return Err(TRUNC);
            }
            let hdr = load::<[u8; 8]>(ctx, off, TRUNC)?;
            pkt.icmp_type = hdr[0];
            pkt.icmp_code = hdr[1];
            pkt.policy_port = hdr[0] as u16;
            let id = u16::from_be_bytes([hdr[4], hdr[5]]);
            if pkt.proto == proto::ICMPV6 {
                // Neighbour discovery and multicast listener messages keep IPv6 working; they
                // are link-local control traffic, not connections.
                if matches!(hdr[0], 130..=137 | 143) {
                    return Ok(Parsed::Pass);
                }
                match hdr[0] {
                    ICMPV6_ECHO_REQUEST => pkt.sport = id,
                    ICMPV6_ECHO_REPLY => pkt.dport = id,
                    _ => {}
                }
            } else {
                match hdr[0] {
                    ICMP_ECHO_REQUEST => pkt.sport = id,
                    ICMP_ECHO_REPLY => pkt.dport = id,
                    _ => {}
                }
            }
        }
        _ => return Err(drop::CT_UNKNOWN_L4_PROTOCOL),
    }
    Ok(Parsed::Ip(*pkt))
}

/// Atomic `*dst += v` (BPF_ATOMIC add).
#[inline(always)]
unsafe fn add(dst: *mut u64, v: u64) {
    // SAFETY: the caller passes a pointer into a live map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
fn config() -> DatapathConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => DatapathConfig::default(),
    }
}

/// Identity and flags of an address (world without an ipcache entry).
#[inline(always)]
fn ipcache_of(fam: u8, addr: &[u8; 16]) -> (u32, u32) {
    let key = LpmKey::new(
        IpcacheKey::host_prefix_len(fam),
        IpcacheKey {
            cluster_id: 0,
            pad: 0,
            family: fam,
            addr: *addr,
        },
    );
    match IPCACHE.get(&key) {
        Some(v) => (v.identity, v.flags),
        None => (IDENTITY_WORLD, 0),
    }
}

/// Outcome of the policy lookup for a new connection.
struct Decision {
    allowed: bool,
    /// Drop reason when denied.
    reason: u8,
    match_type: u8,
    rule_id: u32,
}

/// The lookups in order of specificity, with the match type each one reports. Deny entries win
/// over allow entries whatever their specificity; among allows the most specific one is reported.
#[inline(always)]
fn policy_lookup(remote: u32, port: u16, l4: u8, direction: u8, bytes: u64) -> Decision {
    let keys: [(u32, u16, u8, u8); 6] = [
        (remote, port, l4, match_type::L3_L4),
        (remote, 0, l4, match_type::L3_PROTO),
        (remote, 0, 0, match_type::L3_ONLY),
        (0, port, l4, match_type::L4_ONLY),
        (0, 0, l4, match_type::PROTO_ONLY),
        (0, 0, 0, match_type::ALL),
    ];
    let mut allow: Option<(u8, u32)> = None;
    let mut i = 0;
    while i < keys.len() {
        let (id, p, pr, mt) = keys[i];
        i += 1;
        // With port 0 (e.g. ICMP echo reply type) the port-specific keys equal the wildcard ones.
        if port == 0 && (mt == match_type::L3_L4 || mt == match_type::L4_ONLY) {
            continue;
        }
        let key = PolicyKey::new(id, p, pr, direction);
        if let Some(e) = POLICY.get_ptr_mut(&key) {
            // SAFETY: the pointer is a live map value; counters are updated atomically.
            let (flags, rule_id) = unsafe {
                add(&raw mut (*e).packets, 1);
                add(&raw mut (*e).bytes, bytes);
                ((*e).flags, (*e).rule_id)
            };
            if flags & POLICY_F_DENY != 0 {
                return Decision {
                    allowed: false,
                    reason: drop::POLICY_DENY,
                    match_type: mt,
                    rule_id,
                };
            }
            if allow.is_none() {
                allow = Some((mt, rule_id));
            }
        }
    }
    match allow {
        Some((mt, rule_id)) => Decision {
            allowed: true,
            reason: 0,
            match_type: mt,
            rule_id,
        },
        None => Decision {
            allowed: false,
            reason: drop::POLICY_DENIED,
            match_type: match_type::NONE,
            rule_id: 0,
        },
    }
}

#[inline(always)]
fn count(kind: u32, direction: u8, reason: u8, bytes: u64) {
    if let Some(m) = METRICS.get_ptr_mut(metrics_index(kind, direction, reason)) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*m).count += 1;
            (*m).bytes += bytes;
        }
    }
}

/// Fills the per-CPU scratch event with the packet's fields and returns it.
#[inline(always)]
fn event(
    ctx: &TcContext,
    pkt: Option<&Packet>,
    kind: u8,
    sub: u8,
    direction: u8,
) -> Option<*mut FlowEvent> {
    let ev = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch value, used by this CPU only for the duration of this program.
    unsafe {
        *ev = FlowEvent::default();
        let e = &mut *ev;
        e.kind = kind;
        e.version = EVENT_VERSION;
        e.sub_type = sub;
        e.direction = direction;
        e.ep_id = core::ptr::read_volatile(&PSC_ENDPOINT_ID) as u16;
        e.ifindex = (*ctx.skb.skb).ifindex;
        e.ts_ns = now_ns();
        e.pkt_len = ctx.len();
        if let Ok(macs) = ctx.load::<[u8; 12]>(0) {
            e.dst_mac.copy_from_slice(&macs[..6]);
            e.src_mac.copy_from_slice(&macs[6..]);
        }
        if let Some(p) = pkt {
            if p.family == family::V6 {
                e.flags |= EV_F_IPV6;
            }
            e.proto = p.proto;
            e.tcp_flags = p.tcp_flags;
            e.icmp_type = p.icmp_type;
            e.icmp_code = p.icmp_code;
            if p.proto == proto::TCP || p.proto == proto::UDP {
                e.src_port = p.sport;
                e.dst_port = p.dport;
            }
            e.src_ip = p.saddr;
            e.dst_ip = p.daddr;
            e.rev_nat = p.rev_nat;
        }
    }
    Some(ev)
}

#[inline(always)]
fn emit(ctx: &TcContext, ev: *mut FlowEvent, direction: u8) {
    // DNS over UDP: the packet itself follows the event in the sample (the upper 32 bits of the
    // flags are the number of skb bytes the helper appends), for the agent's DNS enricher.
    // Policy verdicts are followed by a trace or drop of the same packet, which carries it.
    // SAFETY: `ev` points to the per-CPU scratch event.
    let capture = unsafe {
        if (*ev).proto == proto::UDP
            && (*ev).kind != msg::POLICY_VERDICT
            && ((*ev).src_port == DNS_PORT || (*ev).dst_port == DNS_PORT)
        {
            let len = ctx.len().min(CAPTURE_MAX);
            (*ev).cap_len = len as u16;
            len as u64
        } else {
            0
        }
    };
    // SAFETY: `ev` points to the per-CPU scratch event; the helper copies it (and `capture`
    // bytes of the packet, at most its length) into the ring.
    let rc = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            (&raw const EVENTS).cast_mut().cast(),
            BPF_F_CURRENT_CPU | (capture << 32),
            ev.cast(),
            core::mem::size_of::<FlowEvent>() as u64,
        )
    };
    if rc == 0 {
        count(metric::EVENTS_SENT, direction, 0, 0);
    } else {
        count(metric::EVENTS_LOST, direction, 0, 0);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn drop_packet(
    ctx: &TcContext,
    pkt: Option<&Packet>,
    direction: u8,
    reason: u8,
    src_id: u32,
    dst_id: u32,
    mt: u8,
    rule_id: u32,
) -> i32 {
    count(metric::PACKETS, direction, reason, ctx.len() as u64);
    if let Some(ev) = event(ctx, pkt, msg::DROP, reason, direction) {
        // SAFETY: scratch event, see `event`.
        unsafe {
            (*ev).verdict = verdict::DROPPED;
            (*ev).src_identity = src_id;
            (*ev).dst_identity = dst_id;
            (*ev).match_type = mt;
            (*ev).rule_id = rule_id;
        }
        emit(ctx, ev, direction);
    }
    TC_ACT_SHOT
}

/// Where a packet stands in connection tracking.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CtState {
    New,
    Established,
    Reply,
}

/// Connection tracking and policy of one packet (after service translation at egress); sets
/// `xl.reverse` when the packet is a reply to translate back.
#[inline(never)]
fn process(
    ctx: &TcContext,
    pkt: &mut Packet,
    xl: &mut lb::Xlated,
    direction: u8,
) -> Result<i32, u8> {
    let ep_id = unsafe { core::ptr::read_volatile(&PSC_ENDPOINT_ID) };
    // SAFETY: read-only copy of a map value.
    let ep = match unsafe { ENDPOINTS.get(&ep_id) } {
        Some(ep) => *ep,
        None => return Err(drop::NO_CONFIGURATION),
    };

    // Anti-spoofing: what leaves the pod must carry the pod's own address.
    if direction == dir::EGRESS && !source_is_endpoint(pkt, &ep) {
        return Err(drop::INVALID_SOURCE_IP);
    }

    // The (src, dst) identities of a packet given the remote side's identity.
    let ids = |remote: u32| {
        if direction == dir::EGRESS {
            (ep.identity, remote)
        } else {
            (remote, ep.identity)
        }
    };
    let cfg = config();
    let now = now_ns();
    let bytes = pkt.len as u64;
    let syn_only = pkt.proto == proto::TCP && pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN;

    // Service translation (DNAT to a backend) comes first: connection tracking and policy see
    // the backend, as in Cilium.
    if xl.selected {
        // The TRANSLATED trace point of a new service connection: the packet as translated,
        // naming the frontend.
        if let Some(ev) = event(ctx, Some(pkt), msg::TRACE, obs::FROM_ENDPOINT, direction) {
            // SAFETY: scratch event.
            unsafe {
                (*ev).verdict = verdict::TRANSLATED;
                (*ev).src_identity = ep.identity;
                (*ev).dst_identity = IDENTITY_UNKNOWN;
                (*ev).flags |= EV_F_NEW;
            }
            emit(ctx, ev, direction);
        }
    }

    // Connection tracking: the packet's own tuple in this scope, then the reversed tuple in the
    // opposite scope (a reply to a connection opened the other way).
    let sc = match CT_SCRATCH.get_ptr_mut(0) {
        Some(sc) => sc,
        None => return Err(drop::CT_MAP_INSERTION_FAILED),
    };
    // SAFETY: per-CPU scratch value, used by this CPU only for the duration of this program.
    let (fwd, rev) = unsafe { (&mut (*sc).fwd, &mut (*sc).rev) };
    *fwd = CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        scope: direction,
        family: pkt.family,
        pad: 0,
    };
    *rev = CtKey {
        saddr: pkt.daddr,
        daddr: pkt.saddr,
        sport: pkt.dport,
        dport: pkt.sport,
        proto: pkt.proto,
        scope: if direction == dir::EGRESS {
            CT_SCOPE_INGRESS
        } else {
            CT_SCOPE_EGRESS
        },
        family: pkt.family,
        pad: 0,
    };

    let mut state = CtState::New;
    let mut entry: *mut CtEntry = core::ptr::null_mut();
    // CT_F_NODEPORT of a new connection into this endpoint translated at a node device.
    let mut nodeport = 0u8;
    if let Some(e) = CT.get_ptr_mut(&*fwd) {
        // SAFETY: live map value.
        let (expired, closing) = unsafe {
            (
                (*e).expires_ns < now,
                (*e).flags & (CT_F_CLOSING_TX | CT_F_CLOSING_RX) != 0,
            )
        };
        if expired || (closing && syn_only) {
            let _ = CT.remove(&*fwd);
        } else {
            state = CtState::Established;
            entry = e;
        }
    }
    if state == CtState::New {
        if let Some(e) = CT.get_ptr_mut(&*rev) {
            // SAFETY: live map value.
            if unsafe { (*e).expires_ns } >= now {
                state = CtState::Reply;
                entry = e;
            }
        }
    }

    if state == CtState::New {
        // A connection into this endpoint that an endpoint of this node opened through a
        // service: its ingress entry records the frontend too, to name the service in flows.
        if direction == dir::INGRESS {
            fwd.scope = CT_SCOPE_EGRESS;
            if let Some(e) = CT.get_ptr_mut(&*fwd) {
                // SAFETY: live map value.
                unsafe {
                    pkt.rev_nat = (*e).rev_nat;
                    nodeport = (*e).flags & CT_F_NODEPORT;
                }
            }
            fwd.scope = direction;
        }
    } else {
        // SAFETY: `entry` is a live map value found above.
        let rev_nat = unsafe { (*entry).rev_nat };
        if rev_nat != 0 {
            pkt.rev_nat = rev_nat;
            // A reply to a connection this endpoint opened through a service: back to the
            // frontend's address and port (the event keeps the backend as the source).
            if state == CtState::Reply && direction == dir::INGRESS {
                xl.reverse = rev_nat;
            }
            // A reply of a connection from outside the node (translated at a node device):
            // back to the frontend where it leaves the backend.
            // SAFETY: as above.
            if state == CtState::Reply
                && direction == dir::EGRESS
                && unsafe { (*entry).flags } & CT_F_NODEPORT != 0
            {
                xl.reverse = rev_nat;
            }
        }
    }
    let pkt: &Packet = pkt;

    let mut ev_flags = 0u8;
    let mut new_conn = false;
    if state == CtState::New {
        // Only new connections resolve the remote identity; established packets use the one
        // their CT entry recorded.
        let remote_addr = if direction == dir::EGRESS {
            &pkt.daddr
        } else {
            &pkt.saddr
        };
        let (remote, remote_flags) = ipcache_of(pkt.family, remote_addr);
        let (src_id, dst_id) = ids(remote);
        let d = policy_lookup(remote, pkt.policy_port, pkt.proto, direction, bytes);
        let audit_bit = if direction == dir::INGRESS {
            EP_F_AUDIT_INGRESS
        } else {
            EP_F_AUDIT_EGRESS
        };
        let audit = !d.allowed && ep.flags & audit_bit != 0;
        // The policy-verdict notification for the new connection.
        if let Some(ev) = event(ctx, Some(pkt), msg::POLICY_VERDICT, 0, direction) {
            // SAFETY: scratch event.
            unsafe {
                (*ev).verdict = if d.allowed {
                    verdict::FORWARDED
                } else if audit {
                    verdict::AUDIT
                } else {
                    verdict::DROPPED
                };
                (*ev).src_identity = src_id;
                (*ev).dst_identity = dst_id;
                (*ev).match_type = d.match_type;
                (*ev).rule_id = d.rule_id;
                (*ev).flags |= EV_F_NEW | EV_F_REPLY_KNOWN;
                if !d.allowed && !audit {
                    (*ev).sub_type = d.reason;
                }
            }
            emit(ctx, ev, direction);
        }
        if !d.allowed && !audit {
            return Ok(drop_packet(
                ctx,
                Some(pkt),
                direction,
                d.reason,
                src_id,
                dst_id,
                d.match_type,
                d.rule_id,
            ));
        }
        let lifetime = if pkt.proto == proto::TCP {
            cfg.ct_syn_lifetime_ns
        } else {
            cfg.ct_other_lifetime_ns
        };
        // SAFETY: per-CPU scratch value, as above.
        let ct = unsafe { &mut (*sc).new };
        *ct = CtEntry {
            expires_ns: now + lifetime,
            last_report_ns: now,
            tx_packets: 0,
            tx_bytes: 0,
            rx_packets: 0,
            rx_bytes: 0,
            remote_identity: remote,
            tx_flags_seen: 0,
            rx_flags_seen: 0,
            flags: (if audit { CT_F_AUDIT } else { 0 })
                | (if remote_flags & IPCACHE_F_LOCAL_ENDPOINT != 0 {
                    CT_F_LOCAL_PEER
                } else {
                    0
                })
                | nodeport,
            match_type: d.match_type,
            rule_id: d.rule_id,
            ep_id: ep_id as u16,
            rev_nat: pkt.rev_nat,
        };
        if CT.insert(&*fwd, &*ct, BPF_NOEXIST as u64).is_err() && CT.get_ptr_mut(&*fwd).is_none() {
            return Err(drop::CT_MAP_INSERTION_FAILED);
        }
        match CT.get_ptr_mut(&*fwd) {
            Some(e) => entry = e,
            None => return Err(drop::CT_MAP_INSERTION_FAILED),
        }
        new_conn = true;
        ev_flags |= EV_F_NEW;
        state = CtState::Established;
    }

    // Update the connection's counters, flags and lifetime, and decide whether this packet is
    // reported under the aggregation level.
    let is_reply = state == CtState::Reply;
    let mut report = false;
    // SAFETY: `entry` is a live map value found or inserted above; counters are atomic, flag
    // updates are benign races (an OR of bits).
    let (txp, txb, rxp, rxb, remote) = unsafe {
        let e = &mut *entry;
        let (pk, by) = if is_reply {
            (&raw mut e.rx_packets, &raw mut e.rx_bytes)
        } else {
            (&raw mut e.tx_packets, &raw mut e.tx_bytes)
        };
        add(pk, 1);
        add(by, bytes);
        let seen = if is_reply {
            e.rx_flags_seen
        } else {
            e.tx_flags_seen
        };
        let new_flags = pkt.tcp_flags & !seen;
        // Writes to the shared entry only when something changes: the two directions of a
        // connection are usually handled on different CPUs, and every store bounces the line.
        if pkt.proto == proto::TCP && new_flags != 0 {
            if is_reply {
                e.rx_flags_seen |= pkt.tcp_flags;
            } else {
                e.tx_flags_seen |= pkt.tcp_flags;
            }
            if pkt.tcp_flags & (tcp::FIN | tcp::RST) != 0 {
                e.flags |= if is_reply {
                    CT_F_CLOSING_RX
                } else {
                    CT_F_CLOSING_TX
                };
            }
        }
        let first_reply = is_reply && e.flags & CT_F_SEEN_REPLY == 0;
        if first_reply {
            e.flags |= CT_F_SEEN_REPLY;
        }
        let closing = e.flags & (CT_F_CLOSING_TX | CT_F_CLOSING_RX);
        let lifetime = if pkt.proto != proto::TCP {
            cfg.ct_other_lifetime_ns
        } else if pkt.tcp_flags & tcp::RST != 0 || closing == (CT_F_CLOSING_TX | CT_F_CLOSING_RX) {
            cfg.ct_close_lifetime_ns
        } else if e.rx_flags_seen & tcp::ACK != 0 {
            cfg.ct_tcp_lifetime_ns
        } else {
            cfg.ct_syn_lifetime_ns
        };
        // The lifetime is refreshed at most once per second (or when it must shrink, on close).
        let expires = now + lifetime;
        if expires > e.expires_ns + LIFETIME_GRANULARITY_NS || expires < e.expires_ns {
            e.expires_ns = expires;
        }

        // Under aggregation a packet between two endpoints of this node is reported once, at
        // delivery (to-endpoint), like Cilium's aggregation of send-side traces.
        let reported_elsewhere = direction == dir::EGRESS && e.flags & CT_F_LOCAL_PEER != 0;
        let dns = pkt.proto == proto::UDP && (pkt.sport == DNS_PORT || pkt.dport == DNS_PORT);
        match cfg.aggregation {
            aggregation::NONE => report = true,
            _ if reported_elsewhere => {}
            // Every DNS message is reported (with its payload): the agent names addresses from
            // the answers.
            _ if dns => report = true,
            level => {
                if new_conn || first_reply {
                    report = true;
                } else {
                    let interesting = if level >= aggregation::MAXIMUM {
                        new_flags & (tcp::FIN | tcp::RST)
                    } else {
                        new_flags
                    };
                    if interesting != 0 {
                        report = true;
                    } else if now.saturating_sub(e.last_report_ns) >= cfg.report_interval_ns {
                        report = true;
                        ev_flags |= EV_F_REPORT;
                    }
                }
            }
        }
        if report {
            e.last_report_ns = now;
        }
        // The service entry pinning the backend lives as long as the connection.
        if !xl.svc_ct.is_null() && (*xl.svc_ct).expires_ns != e.expires_ns {
            (*xl.svc_ct).expires_ns = e.expires_ns;
        }
        (
            e.tx_packets,
            e.tx_bytes,
            e.rx_packets,
            e.rx_bytes,
            e.remote_identity,
        )
    };
    let (src_id, dst_id) = ids(remote);

    count(metric::PACKETS, direction, 0, bytes);
    if report {
        if let Some(ev) = event(
            ctx,
            Some(pkt),
            msg::TRACE,
            trace_point(direction),
            direction,
        ) {
            // SAFETY: scratch event; `entry` as above.
            unsafe {
                (*ev).verdict = verdict::FORWARDED;
                (*ev).src_identity = src_id;
                (*ev).dst_identity = dst_id;
                (*ev).flags |= ev_flags | EV_F_REPLY_KNOWN | if is_reply { EV_F_REPLY } else { 0 };
                (*ev).match_type = (*entry).match_type;
                (*ev).rule_id = (*entry).rule_id;
                (*ev).ct_tx_packets = txp;
                (*ev).ct_tx_bytes = txb;
                (*ev).ct_rx_packets = rxp;
                (*ev).ct_rx_bytes = rxb;
            }
            emit(ctx, ev, direction);
        }
    }
    Ok(TC_ACT_OK)
}

#[inline(always)]
fn trace_point(direction: u8) -> u8 {
    if direction == dir::EGRESS {
        obs::FROM_ENDPOINT
    } else {
        obs::TO_ENDPOINT
    }
}

#[inline(always)]
fn source_is_endpoint(pkt: &Packet, ep: &EndpointInfo) -> bool {
    if pkt.family == family::V4 {
        ep.flags & EP_F_HAS_IPV4 != 0 && pkt.saddr[..4] == ep.ipv4
    } else {
        ep.flags & EP_F_HAS_IPV6 != 0 && pkt.saddr == ep.ipv6
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! Service load balancing at the endpoint (Cilium's `lb4_local`/`lb6_local` and reverse NAT).
//!
//! At an endpoint's egress, a TCP/UDP packet to a service frontend is translated (DNAT) to one
//! backend before connection tracking and policy, so policy sees the backend's identity and
//! port. The choice is pinned by a service CT entry (`CT_SCOPE_SERVICE`, tuple client →
//! frontend); a new connection gets a backend from the frontend's Maglev table (hash of the
//! tuple) or at random among its active backends, after session affinity if the frontend has
//! it. The connection's CT entry records the frontend (`rev_nat`); replies delivered to the
//! endpoint are translated back (source = frontend), in [`reverse`].
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR},
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::TcContext,
};
use periscope_datapath_common::{
    CT_F_NODEPORT, CT_SCOPE_EGRESS, CT_SCOPE_SERVICE, CtEntry, CtKey, LB_BACKEND_F_REMOVED,
    LB_BACKEND_F_TERMINATING, LB_SVC_F_AFFINITY, LB_SVC_F_MAGLEV, LbAffinity, LbAffinityKey,
    LbBackend, LbMaglevChunk, LbMaglevKey, LbRevNat, LbService, LbServiceKey, LbSlotKey,
    MAGLEV_CHUNK, MAGLEV_MAX_SIZE, capacity, drop, family, proto, tcp, tuple_hash,
};

use crate::{CT, ETH_HLEN, Packet};

#[map(name = "PSC_LB_SERVICES")]
static SERVICES: HashMap<LbServiceKey, LbService> = HashMap::pinned(capacity::LB_SERVICES, 0);

#[map(name = "PSC_LB_SLOTS")]
static SLOTS: HashMap<LbSlotKey, u32> = HashMap::pinned(capacity::LB_SLOTS, 0);

#[map(name = "PSC_LB_BACKENDS")]
static BACKENDS: HashMap<u32, LbBackend> = HashMap::pinned(capacity::LB_BACKENDS, 0);

#[map(name = "PSC_LB_MAGLEV")]
static MAGLEV: HashMap<LbMaglevKey, LbMaglevChunk> =
    HashMap::pinned(capacity::LB_MAGLEV, BPF_F_NO_PREALLOC);

#[map(name = "PSC_LB_REVNAT")]
static REVNAT: HashMap<u16, LbRevNat> = HashMap::pinned(capacity::LB_SERVICES, 0);

#[map(name = "PSC_LB_AFFINITY")]
static AFFINITY: LruHashMap<LbAffinityKey, LbAffinity> =
    LruHashMap::pinned(capacity::LB_AFFINITY, 0);

/// A translated connection: the frontend, and whether the backend was chosen just now.
pub(crate) struct Xlated {
    /// The service CT entry (its lifetime follows the connection's); null: not a service
    /// packet.
    pub svc_ct: *mut CtEntry,
    /// The backend was selected for this packet (a new connection).
    pub selected: bool,
    /// Set by connection tracking: the reply must be translated back to this frontend.
    pub reverse: u16,
}

#[inline(always)]
fn active(id: u32) -> bool {
    // SAFETY: read of a map value.
    match unsafe { BACKENDS.get(&id) } {
        Some(b) => b.flags & (LB_BACKEND_F_TERMINATING | LB_BACKEND_F_REMOVED) == 0,
        None => false,
    }
}

/// A CT entry the load balancer writes itself (no counters, no policy decision), naming the
/// frontend `rev_nat`.
#[inline(always)]
fn lb_entry(
    now: u64,
    expires_ns: u64,
    rx_bytes: u64,
    flags: u8,
    ep_id: u16,
    rev_nat: u16,
) -> CtEntry {
    CtEntry {
        expires_ns,
        last_report_ns: now,
        tx_packets: 0,
        tx_bytes: 0,
        rx_packets: 0,
        rx_bytes,
        remote_identity: 0,
        tx_flags_seen: 0,
        rx_flags_seen: 0,
        flags,
        match_type: 0,
        rule_id: 0,
        ep_id,
        rev_nat,
    }
}

/// Picks a backend for a new connection to `svc` (None: the frontend has no active backend).
#[inline(always)]
fn select(pkt: &Packet, svc: &LbService, now: u64) -> Option<u32> {
    if svc.count == 0 {
        return None;
    }
    let affinity = svc.flags & LB_SVC_F_AFFINITY != 0;
    let akey = LbAffinityKey {
        client: pkt.saddr,
        rev_nat: svc.rev_nat,
        family: pkt.family,
        pad: 0,
    };
    if affinity && let Some(a) = AFFINITY.get_ptr_mut(&akey) {
        // SAFETY: live map value.
        let (last, id) = unsafe { ((*a).last_used_ns, (*a).backend_id) };
        if now.saturating_sub(last) <= svc.affinity_timeout_s as u64 * 1_000_000_000 && active(id) {
            // SAFETY: as above.
            unsafe { (*a).last_used_ns = now };
            return Some(id);
        }
    }
    let id = if svc.flags & LB_SVC_F_MAGLEV != 0 {
        let size = svc.maglev_size;
        if size == 0 || size > MAGLEV_MAX_SIZE {
            return None;
        }
        let idx = tuple_hash(&pkt.saddr, pkt.sport, pkt.dport, pkt.proto) % size;
        let key = LbMaglevKey {
            rev_nat: svc.rev_nat,
            generation: svc.generation,
            pad: 0,
            chunk: idx / MAGLEV_CHUNK,
        };
        let chunk = MAGLEV.get_ptr(&key)?;
        let off = (idx % MAGLEV_CHUNK) as usize & (MAGLEV_CHUNK as usize - 1);
        // SAFETY: `off` < MAGLEV_CHUNK, inside the live map value.
        unsafe { (*chunk).backends[off] }
    } else {
        // SAFETY: helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        let key = LbSlotKey {
            rev_nat: svc.rev_nat,
            pad: 0,
            slot: r % svc.count as u32 + 1,
        };
        // SAFETY: read of a map value.
        match unsafe { SLOTS.get(&key) } {
            Some(id) => *id,
            None => return None,
        }
    };
    if id == 0 {
        return None;
    }
    if affinity {
        let _ = AFFINITY.insert(
            &akey,
            &LbAffinity {
                last_used_ns: now,
                backend_id: id,
                pad: 0,
            },
            BPF_ANY as u64,
        );
    }
    Some(id)
}

/// At an endpoint's egress: if `pkt` goes to a service frontend, translates it to the
/// connection's backend (choosing one for a new connection) and updates `pkt` to the translated
/// packet and `out`. Returns 0, or the drop reason (then `pkt.rev_nat` names the frontend).
///
/// A BPF function of its own (not inlined): its stack frame is separate from the caller's,
/// which the 512-byte limit per frame needs.
#[inline(never)]
pub(crate) fn translate(ctx: &TcContext, pkt: &mut Packet, out: &mut Xlated) -> u32 {
    match try_translate(ctx, pkt, out, crate::now_ns()) {
        Ok(()) => 0,
        Err(reason) => reason as u32,
    }
}

#[inline(always)]
fn try_translate(ctx: &TcContext, pkt: &mut Packet, out: &mut Xlated, now: u64) -> Result<(), u8> {
    if pkt.proto != proto::TCP && pkt.proto != proto::UDP {
        return Ok(());
    }
    let syn_only = pkt.proto == proto::TCP && pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN;
    let key = LbServiceKey {
        addr: pkt.daddr,
        dport: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    // SAFETY: copy of a map value.
    let svc = match unsafe { SERVICES.get(&key) } {
        Some(s) => *s,
        None => return Ok(()),
    };
    let cfg = crate::config();
    let lifetime = if pkt.proto == proto::TCP {
        cfg.ct_syn_lifetime_ns
    } else {
        cfg.ct_other_lifetime_ns
    };
    pkt.rev_nat = svc.rev_nat;
    let skey = CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        scope: CT_SCOPE_SERVICE,
        family: pkt.family,
        pad: 0,
    };
    let mut backend_id = 0u32;
    let mut svc_ct: *mut CtEntry = core::ptr::null_mut();
    if let Some(e) = CT.get_ptr_mut(&skey) {
        // SAFETY: live map value.
        let (expires, id, rev_nat) =
            unsafe { ((*e).expires_ns, (*e).rx_bytes as u32, (*e).rev_nat) };
        // The pinned backend serves the connection until it closes; a new TCP connection on the
        // same tuple (a SYN) gets a new backend if the pinned one no longer takes connections.
        if expires >= now && rev_nat == svc.rev_nat && !(syn_only && !active(id)) {
            backend_id = id;
            svc_ct = e;
        }
    }
    let selected = backend_id == 0;
    if selected {
        backend_id = match select(pkt, &svc, now) {
            Some(id) => id,
            None => return Err(drop::SERVICE_BACKEND_NOT_FOUND),
        };
        // The backend id rides in `rx_bytes` (service entries count nothing).
        let entry = lb_entry(
            now,
            now + lifetime,
            backend_id as u64,
            0,
            // SAFETY: read of the loader-set global.
            unsafe { core::ptr::read_volatile(&crate::PSC_ENDPOINT_ID) } as u16,
            svc.rev_nat,
        );
        if CT.insert(&skey, &entry, BPF_ANY as u64).is_err() {
            return Err(drop::CT_MAP_INSERTION_FAILED);
        }
        svc_ct = match CT.get_ptr_mut(&skey) {
            Some(e) => e,
            None => return Err(drop::CT_MAP_INSERTION_FAILED),
        };
    }
    // SAFETY: copy of a map value.
    let be = match unsafe { BACKENDS.get(&backend_id) } {
        Some(b) => *b,
        None => return Err(drop::SERVICE_BACKEND_NOT_FOUND),
    };
    if be.family != pkt.family {
        return Err(drop::SERVICE_BACKEND_NOT_FOUND);
    }
    rewrite(ctx, pkt, true, &be.addr, be.port)?;
    pkt.daddr = be.addr;
    pkt.dport = be.port;
    pkt.policy_port = be.port;
    out.svc_ct = svc_ct;
    out.selected = selected;
    Ok(())
}

/// After [`translate`] at a node device (`from_netdev`): a new connection gets the egress-scope
/// CT entry of its translated tuple (client → backend) with the frontend and `CT_F_NODEPORT`,
/// for the backend's ingress to find; the service entry pinning the backend is kept alive by
/// the connection's packets (no endpoint's connection tracking sees this side of it).
#[inline(never)]
pub(crate) fn from_outside(pkt: &Packet, xl: &Xlated) -> u32 {
    let cfg = crate::config();
    let now = crate::now_ns();
    let lifetime = if pkt.proto == proto::TCP {
        if xl.selected {
            cfg.ct_syn_lifetime_ns
        } else {
            cfg.ct_tcp_lifetime_ns
        }
    } else {
        cfg.ct_other_lifetime_ns
    };
    if !xl.selected {
        // SAFETY: live map value found by `translate`.
        unsafe { (*xl.svc_ct).expires_ns = now + lifetime };
        return 0;
    }
    let key = CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        scope: CT_SCOPE_EGRESS,
        family: pkt.family,
        pad: 0,
    };
    let entry = lb_entry(now, now + lifetime, 0, CT_F_NODEPORT, 0, pkt.rev_nat);
    match CT.insert(&key, &entry, BPF_ANY as u64) {
        Ok(()) => 0,
        Err(_) => drop::CT_MAP_INSERTION_FAILED as u32,
    }
}

/// At an endpoint's ingress: a reply of a translated connection gets the frontend as its
/// source again. `pkt` keeps the packet as it arrived (the backend as source), which is what
/// the flow event reports, with `rev_nat` naming the frontend. Returns 0 or a drop reason.
#[inline(never)]
pub(crate) fn reverse(ctx: &TcContext, pkt: &Packet, rev_nat: u16) -> u32 {
    match try_reverse(ctx, pkt, rev_nat) {
        Ok(()) => 0,
        Err(reason) => reason as u32,
    }
}

#[inline(always)]
fn try_reverse(ctx: &TcContext, pkt: &Packet, rev_nat: u16) -> Result<(), u8> {
    // SAFETY: copy of a map value.
    let fe = match unsafe { REVNAT.get(&rev_nat) } {
        Some(f) => *f,
        // The frontend is gone (service deleted): the reply goes on untranslated.
        None => return Ok(()),
    };
    if fe.family != pkt.family {
        return Ok(());
    }
    rewrite(ctx, pkt, false, &fe.addr, fe.port)
}

/// Rewrites the destination (`dst`) or source address and port of `pkt` in the packet, with the
/// IPv4 header checksum and the TCP/UDP checksum (pseudo-header included) updated
/// incrementally, so partial checksums of offloaded packets stay right.
#[inline(always)]
fn rewrite(ctx: &TcContext, pkt: &Packet, dst: bool, addr: &[u8; 16], port: u16) -> Result<(), u8> {
    const ERR: u8 = drop::ERROR_WRITING_TO_PACKET;
    let l4 = pkt.l4_off as usize;
    let (csum_off, mangled0) = if pkt.proto == proto::TCP {
        (l4 + 16, 0)
    } else {
        (l4 + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    let old = if dst { &pkt.daddr } else { &pkt.saddr };
    let old_port = if dst { pkt.dport } else { pkt.sport };
    if pkt.family == family::V4 {
        let o = u32::from_ne_bytes([old[0], old[1], old[2], old[3]]);
        let n = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        ctx.l4_csum_replace(
            csum_off,
            o as u64,
            n as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled0 | 4,
        )
        .map_err(|_| ERR)?;
        ctx.l3_csum_replace(ETH_HLEN + 10, o as u64, n as u64, 4)
            .map_err(|_| ERR)?;
        let a4 = [addr[0], addr[1], addr[2], addr[3]];
        ctx.store(ETH_HLEN + if dst { 16 } else { 12 }, &a4, 0)
            .map_err(|_| ERR)?;
    } else {
        let mut i = 0;
        while i < 16 {
            let o = u32::from_ne_bytes([old[i], old[i + 1], old[i + 2], old[i + 3]]);
            let n = u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
            if o != n {
                ctx.l4_csum_replace(
                    csum_off,
                    o as u64,
                    n as u64,
                    BPF_F_PSEUDO_HDR as u64 | mangled0 | 4,
                )
                .map_err(|_| ERR)?;
            }
            i += 4;
        }
        ctx.store(ETH_HLEN + if dst { 24 } else { 8 }, addr, 0)
            .map_err(|_| ERR)?;
    }
    if old_port != port {
        let o = old_port.to_be();
        let n = port.to_be();
        ctx.l4_csum_replace(csum_off, o as u64, n as u64, mangled0 | 2)
            .map_err(|_| ERR)?;
        ctx.store(l4 + if dst { 2 } else { 0 }, &n, 0)
            .map_err(|_| ERR)?;
    }
    Ok(())
}

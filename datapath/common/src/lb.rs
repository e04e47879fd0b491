//! Service load balancing: the maps that translate a service frontend (ClusterIP, NodePort or
//! external IP with port and protocol) to one of its backends, and back.
//!
//! The layout follows Cilium's `lb4_*`/`lb6_*` maps, with IPv4 and IPv6 in one map each (an IPv4
//! address in the first four bytes of a 16-byte field, like everywhere in this crate):
//!
//! - [`LbServiceKey`] → [`LbService`]: one entry per frontend. `rev_nat` numbers the frontend; it
//!   keys every other per-frontend map and is what connection tracking and flow events carry.
//! - [`LbSlotKey`] `{rev_nat, slot 1..=count}` → backend id: the active backends (random
//!   selection, and the check that a pinned backend is still active).
//! - backend id → [`LbBackend`]: address and port of a backend.
//! - [`LbMaglevKey`] `{rev_nat, generation, chunk}` → [`LbMaglevChunk`]: the frontend's Maglev
//!   lookup table of `maglev_size` entries (a prime), in chunks of [`MAGLEV_CHUNK`] backend ids.
//!   A new table is written under the other generation and published by flipping
//!   [`LbService::generation`], so a lookup never sees half of a table.
//! - rev_nat → [`LbRevNat`]: the frontend address replies are translated back to.
//! - [`LbAffinityKey`] `{client, rev_nat}` → [`LbAffinity`]: session affinity by client address.
//!
//! The service CT entry (scope [`crate::CT_SCOPE_SERVICE`]) pins a connection's backend.

/// Frontend flag: select backends with the Maglev table (else at random among the slots).
pub const LB_SVC_F_MAGLEV: u8 = 1 << 0;
/// Frontend flag: session affinity by client address (`affinity_timeout_s`).
pub const LB_SVC_F_AFFINITY: u8 = 1 << 1;

/// Backend flag: terminating (Kubernetes `terminating` condition): no new connections, the
/// established ones continue.
pub const LB_BACKEND_F_TERMINATING: u8 = 1 << 0;
/// Backend flag: removed from its service; kept only while established connections use it.
pub const LB_BACKEND_F_REMOVED: u8 = 1 << 1;

/// Backend ids per Maglev chunk.
pub const MAGLEV_CHUNK: u32 = 1024;
/// Largest Maglev table size the datapath accepts (Cilium's largest choice, 131071).
pub const MAGLEV_MAX_SIZE: u32 = 131_071;
/// Default Maglev table size (Cilium's default `bpf-lb-maglev-table-size`).
pub const MAGLEV_DEFAULT_SIZE: u32 = 16_381;

/// Key of the services map: a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LbServiceKey {
    /// Frontend address, network order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Frontend port (host order).
    pub dport: u16,
    /// IP protocol (TCP or UDP).
    pub proto: u8,
    /// [`crate::family::V4`] or [`crate::family::V6`].
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<LbServiceKey>() == 20);

/// Value of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbService {
    /// Reverse-NAT index of this frontend (1-65535).
    pub rev_nat: u16,
    /// Active backends (slots 1..=count); 0 = none: new connections are dropped with
    /// `SERVICE_BACKEND_NOT_FOUND`.
    pub count: u16,
    /// `LB_SVC_F_*` bits.
    pub flags: u8,
    /// Maglev table generation in use (0 or 1).
    pub generation: u8,
    /// Always zero.
    pub pad: u16,
    /// Maglev table size (a prime ≤ [`MAGLEV_MAX_SIZE`]).
    pub maglev_size: u32,
    /// Session affinity timeout, seconds.
    pub affinity_timeout_s: u32,
}
const _: () = assert!(core::mem::size_of::<LbService>() == 16);

/// Key of the slots map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LbSlotKey {
    /// Frontend.
    pub rev_nat: u16,
    /// Always zero.
    pub pad: u16,
    /// Slot, 1-based.
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<LbSlotKey>() == 8);

/// Value of the backends map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LbBackend {
    /// Backend address, network order.
    pub addr: [u8; 16],
    /// Backend port (host order).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Address family.
    pub family: u8,
    /// `LB_BACKEND_F_*` bits.
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
    /// The frontend this backend serves (backend ids are per frontend, so a removal or
    /// termination concerns exactly one frontend).
    pub rev_nat: u16,
}
const _: () = assert!(core::mem::size_of::<LbBackend>() == 24);

/// Key of the Maglev map: one chunk of a frontend's table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LbMaglevKey {
    /// Frontend.
    pub rev_nat: u16,
    /// Table generation (0 or 1).
    pub generation: u8,
    /// Always zero.
    pub pad: u8,
    /// Chunk number: entries `chunk * MAGLEV_CHUNK ..`.
    pub chunk: u32,
}
const _: () = assert!(core::mem::size_of::<LbMaglevKey>() == 8);

/// Value of the Maglev map: [`MAGLEV_CHUNK`] backend ids (the last chunk of a table is padded
/// with zeros, never looked up).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbMaglevChunk {
    /// Backend ids.
    pub backends: [u32; MAGLEV_CHUNK as usize],
}
const _: () = assert!(core::mem::size_of::<LbMaglevChunk>() == 4096);

impl Default for LbMaglevChunk {
    fn default() -> Self {
        LbMaglevChunk {
            backends: [0; MAGLEV_CHUNK as usize],
        }
    }
}

/// Value of the reverse-NAT map: the frontend a reply is translated back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LbRevNat {
    /// Frontend address, network order.
    pub addr: [u8; 16],
    /// Frontend port (host order).
    pub port: u16,
    /// Address family.
    pub family: u8,
    /// Always zero.
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<LbRevNat>() == 20);

/// Key of the session-affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LbAffinityKey {
    /// Client address, network order.
    pub client: [u8; 16],
    /// Frontend.
    pub rev_nat: u16,
    /// Address family.
    pub family: u8,
    /// Always zero.
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<LbAffinityKey>() == 20);

/// Value of the session-affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbAffinity {
    /// Boot-time ns of the client's last new connection to the frontend.
    pub last_used_ns: u64,
    /// The backend the client is bound to.
    pub backend_id: u32,
    /// Always zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<LbAffinity>() == 16);

/// The hash of a connection's tuple that indexes the Maglev table (kernel and tests compute the
/// same value): a multiply-xorshift mix of the source address, the ports and the protocol. The
/// service address is the same for every connection of a frontend, so it is left out.
#[inline(always)]
pub fn tuple_hash(saddr: &[u8; 16], sport: u16, dport: u16, proto: u8) -> u32 {
    let w =
        |i: usize| u32::from_le_bytes([saddr[i], saddr[i + 1], saddr[i + 2], saddr[i + 3]]) as u64;
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let words = [
        w(0),
        w(4),
        w(8),
        w(12),
        ((sport as u64) << 16) | dport as u64 | ((proto as u64) << 32),
    ];
    let mut i = 0;
    while i < words.len() {
        h ^= words[i];
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        i += 1;
    }
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 29;
    h as u32
}

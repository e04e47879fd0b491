//! Wire types shared by the Periscope eBPF datapath and user space.
//!
//! Everything here is `#[repr(C)]`, `Copy`, made of fixed-width integers with explicit padding, and
//! has a compile-time size assertion: these structs are the exact bytes of the BPF maps and of the
//! perf-ring samples. `bpftool map dump pinned …` shows them as documented in `datapath/README.md`.
//!
//! Multi-byte integers are host byte order (little endian on every supported machine) unless a
//! field's doc says otherwise; addresses are network byte order. An IPv4 address is stored in the
//! first four bytes of a 16-byte address field, the rest zero.
#![no_std]
#![deny(unsafe_code)]

pub mod lb;
pub use lb::*;

/// Version of the flow event layout. Bumped whenever [`FlowEvent`] changes.
pub const EVENT_VERSION: u8 = 1;

// ---------------------------------------------------------------------------------------------
// Reserved security identities (Cilium's numbering).
// ---------------------------------------------------------------------------------------------

/// Identity 0: unknown / no identity.
pub const IDENTITY_UNKNOWN: u32 = 0;
/// The local host.
pub const IDENTITY_HOST: u32 = 1;
/// Anything outside the cluster (no ipcache entry, or a CIDR entry).
pub const IDENTITY_WORLD: u32 = 2;
/// Endpoints not managed by Periscope.
pub const IDENTITY_UNMANAGED: u32 = 3;
/// Health-check endpoints.
pub const IDENTITY_HEALTH: u32 = 4;
/// Endpoints whose identity is not resolved yet.
pub const IDENTITY_INIT: u32 = 5;
/// Other nodes of the cluster.
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// The Kubernetes API server.
pub const IDENTITY_KUBE_APISERVER: u32 = 7;
/// Ingress proxies.
pub const IDENTITY_INGRESS: u32 = 8;
/// First identity allocated for label sets (Cilium: 256). Lower numbers are reserved.
pub const IDENTITY_FIRST_ALLOCATED: u32 = 256;
/// First identity of the local CIDR identity range (Cilium's `IdentityScopeLocal`, 1 << 24).
pub const IDENTITY_FIRST_CIDR: u32 = 1 << 24;

// ---------------------------------------------------------------------------------------------
// Constants shared with Hubble's wire format.
// ---------------------------------------------------------------------------------------------

/// Monitor message types (Hubble `CiliumEventType.type`).
pub mod msg {
    /// Drop notification; sub type = drop reason.
    pub const DROP: u8 = 1;
    /// Trace notification; sub type = observation point.
    pub const TRACE: u8 = 4;
    /// Policy verdict notification.
    pub const POLICY_VERDICT: u8 = 5;
}

/// Trace observation points (monitor numbering: Hubble maps 0 to `TO_ENDPOINT`).
pub mod obs {
    /// Delivered to the endpoint (traffic into the pod).
    pub const TO_ENDPOINT: u8 = 0;
    /// Leaving the endpoint (traffic out of the pod).
    pub const FROM_ENDPOINT: u8 = 5;
}

/// Verdicts (Hubble `flow.Verdict` values).
pub mod verdict {
    /// Passed on.
    pub const FORWARDED: u8 = 1;
    /// Dropped; the event's `sub_type` is the drop reason.
    pub const DROPPED: u8 = 2;
    /// Would have been dropped, forwarded because the endpoint is in audit mode.
    pub const AUDIT: u8 = 4;
    /// A service address was translated to a backend (load balancing); the event shows the
    /// translated packet.
    pub const TRANSLATED: u8 = 7;
}

/// Traffic direction relative to the endpoint (Hubble `flow.TrafficDirection`).
pub mod dir {
    /// Into the endpoint.
    pub const INGRESS: u8 = 1;
    /// Out of the endpoint.
    pub const EGRESS: u8 = 2;
}

/// Drop reasons (Hubble `flow.DropReason` values; fit in a byte).
pub mod drop {
    /// Source IP is not the endpoint's (spoofing).
    pub const INVALID_SOURCE_IP: u8 = 132;
    /// No allow rule matched while the direction is enforced (default deny).
    pub const POLICY_DENIED: u8 = 133;
    /// Malformed or truncated L3 header.
    pub const INVALID_PACKET: u8 = 134;
    /// Truncated or invalid L4 header.
    pub const CT_TRUNCATED_OR_INVALID_HEADER: u8 = 135;
    /// L4 protocol connection tracking does not handle.
    pub const CT_UNKNOWN_L4_PROTOCOL: u8 = 137;
    /// Connection-tracking entry could not be created.
    pub const CT_MAP_INSERTION_FAILED: u8 = 155;
    /// Unsupported L3 protocol (not IPv4/IPv6/ARP).
    pub const UNSUPPORTED_L3_PROTOCOL: u8 = 139;
    /// Rewriting the packet (service translation) failed.
    pub const ERROR_WRITING_TO_PACKET: u8 = 141;
    /// Bad IPv6 extension header chain.
    pub const INVALID_IPV6_EXTENSION_HEADER: u8 = 156;
    /// A non-first IP fragment: no L4 header to check policy against.
    pub const FRAG_NOT_SUPPORTED: u8 = 157;
    /// A service with no active backend (load balancing).
    pub const SERVICE_BACKEND_NOT_FOUND: u8 = 158;
    /// The endpoint has no configuration in the endpoints map.
    pub const NO_CONFIGURATION: u8 = 165;
    /// An explicit deny rule matched.
    pub const POLICY_DENY: u8 = 181;
}

/// Policy match types (Hubble `Flow.policy_match_type`).
pub mod match_type {
    /// No entry matched.
    pub const NONE: u8 = 0;
    /// Identity with any port and protocol.
    pub const L3_ONLY: u8 = 1;
    /// Identity, port and protocol.
    pub const L3_L4: u8 = 2;
    /// Any identity, port and protocol.
    pub const L4_ONLY: u8 = 3;
    /// Any identity, any port, any protocol.
    pub const ALL: u8 = 4;
    /// Identity and protocol, any port.
    pub const L3_PROTO: u8 = 5;
    /// Any identity, protocol, any port.
    pub const PROTO_ONLY: u8 = 6;
}

/// Monitor aggregation levels (Cilium's `--monitor-aggregation`).
pub mod aggregation {
    /// An event for every packet.
    pub const NONE: u8 = 0;
    /// New connections, new TCP flags per direction, and one report per connection per interval.
    pub const MEDIUM: u8 = 2;
    /// New connections and connection close (FIN/RST) only, plus the periodic report.
    pub const MAXIMUM: u8 = 3;
}

/// IP protocol numbers used by the datapath.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Address families stored in keys.
pub mod family {
    /// IPv4 (address in the first 4 bytes).
    pub const V4: u8 = 4;
    /// IPv6.
    pub const V6: u8 = 6;
}

/// TCP flag bits as in the TCP header's flags byte.
pub mod tcp {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

// ---------------------------------------------------------------------------------------------
// Map names (the pinned file names under the node's bpffs directory).
// ---------------------------------------------------------------------------------------------

/// Map and program names, as pinned.
pub mod names {
    /// LPM trie: `{prefix_len, IpcacheKey}` → [`IpcacheValue`].
    pub const IPCACHE: &str = "PSC_IPCACHE";
    /// Hash: endpoint id (u32) → [`EndpointInfo`].
    pub const ENDPOINTS: &str = "PSC_ENDPOINTS";
    /// LRU hash: [`CtKey`] → [`CtEntry`].
    pub const CT: &str = "PSC_CT";
    /// Per-CPU perf event array of [`super::FlowEvent`] samples.
    pub const EVENTS: &str = "PSC_EVENTS";
    /// Per-CPU array: [`metrics_index`] → [`MetricsValue`].
    pub const METRICS: &str = "PSC_METRICS";
    /// Array with one [`DatapathConfig`].
    pub const CONFIG: &str = "PSC_CONFIG";
    /// Per-endpoint hash: [`PolicyKey`] → [`PolicyEntry`] (not pinned by the loader; the agent pins
    /// it as `ep/<id>/policy`).
    pub const POLICY: &str = "PSC_POLICY";
    /// The program attached at the host side of a pod veth, tc ingress: traffic leaving the pod.
    pub const PROG_FROM_CONTAINER: &str = "from_container";
    /// The program attached at the host side of a pod veth, tc egress: traffic entering the pod.
    pub const PROG_TO_CONTAINER: &str = "to_container";
    /// Program at the ingress of a node device: service translation for clients outside the
    /// node (node ports, external IPs).
    pub const PROG_FROM_NETDEV: &str = "from_netdev";
    /// Hash: [`super::LbServiceKey`] (frontend) → [`super::LbService`].
    pub const LB_SERVICES: &str = "PSC_LB_SERVICES";
    /// Hash: [`super::LbSlotKey`] → backend id (u32), the active backends of a frontend.
    pub const LB_SLOTS: &str = "PSC_LB_SLOTS";
    /// Hash: backend id (u32) → [`super::LbBackend`].
    pub const LB_BACKENDS: &str = "PSC_LB_BACKENDS";
    /// Hash (not preallocated): [`super::LbMaglevKey`] → [`super::LbMaglevChunk`].
    pub const LB_MAGLEV: &str = "PSC_LB_MAGLEV";
    /// Hash: reverse-NAT index (u16) → [`super::LbRevNat`].
    pub const LB_REVNAT: &str = "PSC_LB_REVNAT";
    /// LRU hash: [`super::LbAffinityKey`] → [`super::LbAffinity`].
    pub const LB_AFFINITY: &str = "PSC_LB_AFFINITY";
    /// The global variable holding the endpoint id of a program instance.
    pub const GLOBAL_ENDPOINT_ID: &str = "PSC_ENDPOINT_ID";
}

/// Capacity of the maps.
pub mod capacity {
    /// ipcache entries.
    pub const IPCACHE: u32 = 512 * 1024;
    /// Endpoints per node.
    pub const ENDPOINTS: u32 = 4096;
    /// Connection-tracking entries (LRU).
    pub const CT: u32 = 256 * 1024;
    /// Policy entries per endpoint (Cilium's default `bpf-policy-map-max` is 16384).
    pub const POLICY: u32 = 16384;
    /// Metrics array entries (see [`super::metrics_index`]).
    pub const METRICS: u32 = 4096;
    /// Service frontends (Cilium's default `bpf-lb-map-max` is 65536).
    pub const LB_SERVICES: u32 = 65536;
    /// Backend slots of all frontends together.
    pub const LB_SLOTS: u32 = 256 * 1024;
    /// Backends (a backend of two frontends counts twice).
    pub const LB_BACKENDS: u32 = 256 * 1024;
    /// Maglev chunks of 1024 entries (4 KiB each, allocated on use): 16 per frontend with the
    /// default table size 16381, 2 per frontend and generation while a table is replaced.
    pub const LB_MAGLEV: u32 = 512 * 1024;
    /// Session-affinity entries (LRU).
    pub const LB_AFFINITY: u32 = 64 * 1024;
}

// ---------------------------------------------------------------------------------------------
// ipcache: IP/prefix → security identity.
// ---------------------------------------------------------------------------------------------

/// Data part of the ipcache LPM-trie key (the trie key is `{ prefix_len: u32, data: IpcacheKey }`,
/// Cilium's `ipcache_key` layout). The prefix length counts bits from `cluster_id` on: the 32 bits
/// of `cluster_id`, `pad` and `family`, plus the address prefix — see [`IpcacheKey::prefix_len`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct IpcacheKey {
    /// Cluster of the address (0 = local cluster).
    pub cluster_id: u16,
    /// Always zero.
    pub pad: u8,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Address, network byte order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IpcacheKey>() == 20);

impl IpcacheKey {
    /// Bits of the static part of the key (cluster_id, pad, family).
    pub const STATIC_PREFIX_BITS: u32 = 32;

    /// The trie prefix length for an address prefix of `prefix` bits.
    pub const fn prefix_len(prefix: u8) -> u32 {
        Self::STATIC_PREFIX_BITS + prefix as u32
    }

    /// Full-length prefix of an address of `family`.
    pub const fn host_prefix_len(family: u8) -> u32 {
        if family == family::V4 {
            Self::prefix_len(32)
        } else {
            Self::prefix_len(128)
        }
    }
}

/// Value of the ipcache: the security identity of the addresses of a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheValue {
    /// Numeric security identity.
    pub identity: u32,
    /// IPv4 address of the node hosting the address (0 = local or unknown), network byte order.
    pub tunnel_endpoint: u32,
    /// `IPCACHE_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<IpcacheValue>() == 12);

/// ipcache flag: the address belongs to an endpoint of this node (its own datapath instance
/// reports packets delivered to it).
pub const IPCACHE_F_LOCAL_ENDPOINT: u32 = 1 << 0;

// ---------------------------------------------------------------------------------------------
// Endpoints.
// ---------------------------------------------------------------------------------------------

/// Endpoint flag: ingress policy is in audit mode (would-be drops forwarded with AUDIT verdict).
pub const EP_F_AUDIT_INGRESS: u32 = 1 << 0;
/// Endpoint flag: egress policy is in audit mode.
pub const EP_F_AUDIT_EGRESS: u32 = 1 << 1;
/// Endpoint flag: the endpoint has an IPv4 address (`ipv4` valid).
pub const EP_F_HAS_IPV4: u32 = 1 << 2;
/// Endpoint flag: the endpoint has an IPv6 address (`ipv6` valid).
pub const EP_F_HAS_IPV6: u32 = 1 << 3;

/// Value of the endpoints map, keyed by endpoint id (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Security identity of the endpoint.
    pub identity: u32,
    /// `EP_F_*` bits.
    pub flags: u32,
    /// ifindex of the host side of the endpoint's veth.
    pub ifindex: u32,
    /// Endpoint id (same as the key), for dumps.
    pub id: u16,
    /// Always zero.
    pub pad: u16,
    /// IPv4 address of the endpoint, network byte order.
    pub ipv4: [u8; 4],
    /// IPv6 address of the endpoint, network byte order.
    pub ipv6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 36);

// ---------------------------------------------------------------------------------------------
// Policy: Cilium's policy map layout (seed 003 §3.3).
// ---------------------------------------------------------------------------------------------

/// Key of an endpoint's policy map: identity(4) + dport(2, network order) + proto(1) + direction(1).
/// Zero fields are wildcards: identity 0 = any identity, dport 0 = any port, proto 0 = any protocol.
/// For ICMP/ICMPv6 the "port" is the ICMP type.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Remote security identity (source for ingress, destination for egress); 0 = any.
    pub identity: u32,
    /// Destination port in network byte order; 0 = any.
    pub dport_be: u16,
    /// IP protocol; 0 = any.
    pub proto: u8,
    /// [`dir::INGRESS`] or [`dir::EGRESS`].
    pub direction: u8,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 8);

impl PolicyKey {
    /// Key for identity/port(host order)/protocol/direction.
    pub const fn new(identity: u32, dport: u16, proto: u8, direction: u8) -> Self {
        PolicyKey {
            identity,
            dport_be: dport.to_be(),
            proto,
            direction,
        }
    }
    /// Destination port in host order.
    pub const fn dport(&self) -> u16 {
        u16::from_be(self.dport_be)
    }
}

/// Policy entry flag: deny (deny entries win over allow entries).
pub const POLICY_F_DENY: u8 = 1 << 0;

/// Value of an endpoint's policy map (Cilium's `policy_entry` layout), with counters of the
/// new connections the entry decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyEntry {
    /// L7 proxy port, network order (unused: 0).
    pub proxy_port: u16,
    /// `POLICY_F_*` bits.
    pub flags: u8,
    /// Always zero.
    pub pad0: u8,
    /// Index of the rule in the agent's rule table (for naming the policy in flows), or 0.
    pub rule_id: u32,
    /// Packets (new connections' first packets) that this entry decided.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<PolicyEntry>() == 24);

// ---------------------------------------------------------------------------------------------
// Connection tracking.
// ---------------------------------------------------------------------------------------------

/// CT scope: the entry was created for traffic into the endpoint.
pub const CT_SCOPE_INGRESS: u8 = dir::INGRESS;
/// CT scope: the entry was created for traffic out of the endpoint.
pub const CT_SCOPE_EGRESS: u8 = dir::EGRESS;
/// CT scope: a service entry (Cilium's `CT_SERVICE`): the tuple is client → service address, and
/// the entry pins the backend the connection was given (`CtEntry::rx_bytes` holds the backend id,
/// as Cilium's `ct_entry.backend_id` shares its place).
pub const CT_SCOPE_SERVICE: u8 = 3;

/// Key of the connection-tracking map: the tuple of the packet that opened the connection, in
/// its direction, plus the scope (ingress or egress of an endpoint). Replies are found by looking
/// up the reversed tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    /// Source address of the opening packet.
    pub saddr: [u8; 16],
    /// Destination address of the opening packet.
    pub daddr: [u8; 16],
    /// Source port (host order); ICMP echo: the identifier.
    pub sport: u16,
    /// Destination port (host order); ICMP echo: 0.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`CT_SCOPE_INGRESS`] or [`CT_SCOPE_EGRESS`].
    pub scope: u8,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Always zero.
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

/// CT flag: FIN or RST seen in the original direction.
pub const CT_F_CLOSING_TX: u8 = 1 << 0;
/// CT flag: FIN or RST seen in the reply direction.
pub const CT_F_CLOSING_RX: u8 = 1 << 1;
/// CT flag: the connection was forwarded in audit mode (policy would have dropped it).
pub const CT_F_AUDIT: u8 = 1 << 2;
/// CT flag: a reply has been seen.
pub const CT_F_SEEN_REPLY: u8 = 1 << 3;
/// CT flag: the peer is an endpoint of this node. Under aggregation, packets of such a connection
/// are reported once, where they are delivered (to-endpoint), not also where they leave.
pub const CT_F_LOCAL_PEER: u8 = 1 << 4;
/// CT flag: a connection from outside the node to a service frontend, translated at a node
/// device (`from_netdev`): its replies are translated back where they leave the backend.
pub const CT_F_NODEPORT: u8 = 1 << 5;

/// Value of the connection-tracking map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// Boot-time nanoseconds at which the entry expires.
    pub expires_ns: u64,
    /// Boot-time nanoseconds of the last trace report for this connection (aggregation).
    pub last_report_ns: u64,
    /// Packets in the original direction.
    pub tx_packets: u64,
    /// Bytes in the original direction.
    pub tx_bytes: u64,
    /// Packets in the reply direction.
    pub rx_packets: u64,
    /// Bytes in the reply direction.
    pub rx_bytes: u64,
    /// Remote security identity at creation.
    pub remote_identity: u32,
    /// TCP flags seen in the original direction (OR of all packets).
    pub tx_flags_seen: u8,
    /// TCP flags seen in the reply direction.
    pub rx_flags_seen: u8,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// Policy match type of the decision that opened the connection.
    pub match_type: u8,
    /// Rule id of the policy entry that allowed the connection.
    pub rule_id: u32,
    /// Endpoint id that created the entry.
    pub ep_id: u16,
    /// The service frontend the connection was translated from (its reverse-NAT index, see
    /// [`LbRevNat`]); 0 = not a service connection. Replies of a connection opened at an
    /// endpoint's egress are translated back to this frontend.
    pub rev_nat: u16,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 64);

// ---------------------------------------------------------------------------------------------
// Configuration and metrics.
// ---------------------------------------------------------------------------------------------

/// The datapath's runtime configuration (array map, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Monitor aggregation level, [`aggregation`].
    pub aggregation: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// Cluster id of this node.
    pub cluster_id: u32,
    /// Aggregation report interval per connection, nanoseconds (Cilium: 5 s).
    pub report_interval_ns: u64,
    /// CT lifetime of an established TCP connection, ns (Cilium: 6 h).
    pub ct_tcp_lifetime_ns: u64,
    /// CT lifetime of a TCP connection before the handshake completes, ns (Cilium: 60 s).
    pub ct_syn_lifetime_ns: u64,
    /// CT lifetime after FIN/RST, ns (Cilium: 10 s).
    pub ct_close_lifetime_ns: u64,
    /// CT lifetime of UDP/ICMP "connections", ns (Cilium: 60 s).
    pub ct_other_lifetime_ns: u64,
}
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 48);

impl Default for DatapathConfig {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        DatapathConfig {
            aggregation: aggregation::MEDIUM,
            pad: [0; 3],
            cluster_id: 0,
            report_interval_ns: 5 * S,
            ct_tcp_lifetime_ns: 21600 * S,
            ct_syn_lifetime_ns: 60 * S,
            ct_close_lifetime_ns: 10 * S,
            ct_other_lifetime_ns: 60 * S,
        }
    }
}

/// Metric kinds (see [`metrics_index`]).
pub mod metric {
    /// Packets by verdict/drop reason and direction.
    pub const PACKETS: u32 = 0;
    /// Events that `bpf_perf_event_output` could not write (ring full or no reader).
    pub const EVENTS_LOST: u32 = 1;
    /// Events written to the ring.
    pub const EVENTS_SENT: u32 = 2;
}

/// Index into the per-CPU metrics array: `kind` (bits 10..), `direction` (bits 8..10) and `reason`
/// (bits 0..8; 0 = forwarded, else a drop reason).
pub const fn metrics_index(kind: u32, direction: u8, reason: u8) -> u32 {
    (kind << 10) | (((direction & 3) as u32) << 8) | reason as u32
}

/// Metrics value (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MetricsValue {
    /// Packets (or events).
    pub count: u64,
    /// Bytes.
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<MetricsValue>() == 16);

// ---------------------------------------------------------------------------------------------
// The flow event written to the perf ring.
// ---------------------------------------------------------------------------------------------

/// Event flag: IPv6 packet (else IPv4).
pub const EV_F_IPV6: u8 = 1 << 0;
/// Event flag: `is_reply` is known (CT state known).
pub const EV_F_REPLY_KNOWN: u8 = 1 << 1;
/// Event flag: the packet is a reply.
pub const EV_F_REPLY: u8 = 1 << 2;
/// Event flag: the event is a periodic aggregation report of an established connection.
pub const EV_F_REPORT: u8 = 1 << 3;
/// Event flag: the packet opened a new connection.
pub const EV_F_NEW: u8 = 1 << 4;
/// Most packet bytes appended to an event ([`FlowEvent::cap_len`]): Ethernet + IPv6 + UDP headers
/// and a DNS message of up to 1024 bytes.
pub const CAPTURE_MAX: u32 = 14 + 40 + 8 + 1024;
/// The port whose UDP packets are captured for DNS visibility.
pub const DNS_PORT: u16 = 53;

/// One flow event: a trace (forwarded), drop or policy-verdict notification. Carries everything
/// the agent's decoder needs to build a Hubble `Flow`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// Monitor message type, [`msg`].
    pub kind: u8,
    /// [`EVENT_VERSION`].
    pub version: u8,
    /// Drop: drop reason; trace: observation point; policy verdict: 0.
    pub sub_type: u8,
    /// `EV_F_*` bits.
    pub flags: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// [`dir`], relative to the endpoint.
    pub direction: u8,
    /// [`match_type`] of the policy decision (policy verdicts, and traces/drops of new connections).
    pub match_type: u8,
    /// IP protocol.
    pub proto: u8,
    /// TCP flags of this packet.
    pub tcp_flags: u8,
    /// ICMP type (ICMP/ICMPv6).
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// Always zero.
    pub pad0: u8,
    /// Endpoint id of the program instance that saw the packet.
    pub ep_id: u16,
    /// Bytes of the packet (from its Ethernet header) appended to the perf sample after this
    /// event: DNS messages (UDP port 53) are captured for the agent's DNS enricher; 0 = none.
    pub cap_len: u16,
    /// ifindex of the interface the program is attached to (host side of the veth).
    pub ifindex: u32,
    /// Source security identity.
    pub src_identity: u32,
    /// Destination security identity.
    pub dst_identity: u32,
    /// Source port (host order).
    pub src_port: u16,
    /// Destination port (host order).
    pub dst_port: u16,
    /// Length of the packet on the wire.
    pub pkt_len: u32,
    /// Rule id of the deciding policy entry (0 = none).
    pub rule_id: u32,
    /// Boot-time (CLOCK_BOOTTIME) nanoseconds.
    pub ts_ns: u64,
    /// CT: packets in the original direction so far.
    pub ct_tx_packets: u64,
    /// CT: bytes in the original direction so far.
    pub ct_tx_bytes: u64,
    /// CT: packets in the reply direction so far.
    pub ct_rx_packets: u64,
    /// CT: bytes in the reply direction so far.
    pub ct_rx_bytes: u64,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Service frontend (reverse-NAT index) of the connection, 0 = none. The field was padding
    /// (always zero) before load balancing, so the layout version did not change.
    pub rev_nat: u16,
    /// Always zero.
    pub pad2: [u8; 2],
    /// Source address.
    pub src_ip: [u8; 16],
    /// Destination address.
    pub dst_ip: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 128);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: every type below is #[repr(C)], Copy, made only of integers and byte arrays with all
    // padding explicit, so any bit pattern is valid and there are no uninitialised bytes.
    #[allow(unsafe_code)]
    mod pod {
        use super::*;
        unsafe impl aya::Pod for IpcacheKey {}
        unsafe impl aya::Pod for IpcacheValue {}
        unsafe impl aya::Pod for EndpointInfo {}
        unsafe impl aya::Pod for PolicyKey {}
        unsafe impl aya::Pod for PolicyEntry {}
        unsafe impl aya::Pod for CtKey {}
        unsafe impl aya::Pod for CtEntry {}
        unsafe impl aya::Pod for DatapathConfig {}
        unsafe impl aya::Pod for MetricsValue {}
        unsafe impl aya::Pod for FlowEvent {}
        unsafe impl aya::Pod for LbServiceKey {}
        unsafe impl aya::Pod for LbService {}
        unsafe impl aya::Pod for LbSlotKey {}
        unsafe impl aya::Pod for LbBackend {}
        unsafe impl aya::Pod for LbMaglevKey {}
        unsafe impl aya::Pod for LbMaglevChunk {}
        unsafe impl aya::Pod for LbRevNat {}
        unsafe impl aya::Pod for LbAffinityKey {}
        unsafe impl aya::Pod for LbAffinity {}
    }
}

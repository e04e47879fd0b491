//! Service load balancing: the service table (topology file and metadata sources) compiled into
//! the datapath's LB maps, with Maglev lookup tables.
//!
//! Every frontend (address, port, protocol) gets a reverse-NAT index (`rev_nat`, stable while
//! the frontend exists, recovered from the pinned maps after a restart) and its backends get ids
//! of their own per frontend. An update writes, in this order: the backends, the slots, a new
//! Maglev table under the other generation, the reverse-NAT entry and finally the service entry
//! (which publishes the new backend count and table generation); stale slots and the old table
//! go last. Backends that leave a frontend, or become terminating, stay in the backends map
//! flagged, so established connections keep their backend; [`Lb::gc`] removes them once no
//! service CT entry refers to them. See `datapath/README.md` for the map layouts.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapError};
use periscope_datapath_common::{
    LB_BACKEND_F_REMOVED, LB_BACKEND_F_TERMINATING, LB_SVC_F_AFFINITY, LB_SVC_F_MAGLEV, LbBackend,
    LbMaglevChunk, LbMaglevKey, LbRevNat, LbService, LbServiceKey, LbSlotKey, MAGLEV_CHUNK,
    MAGLEV_MAX_SIZE, names,
};
use periscope_topology::{BackendState, Topology};

use crate::agent::addr16;
use crate::sources::{Frontend, ServiceInfo};

/// How new connections pick a backend (`--lb-algorithm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Maglev consistent hashing of the connection's tuple (Cilium's `maglev`).
    #[default]
    Maglev,
    /// Uniformly at random among the active backends (Cilium's `random`).
    Random,
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "maglev" => Ok(Algorithm::Maglev),
            "random" => Ok(Algorithm::Random),
            other => Err(format!("{other:?} is not maglev or random")),
        }
    }
}

/// Load-balancer settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbConfig {
    /// Backend selection.
    pub algorithm: Algorithm,
    /// Maglev table size M (a prime; M ≫ backends per frontend).
    pub maglev_table_size: u32,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            algorithm: Algorithm::Maglev,
            maglev_table_size: periscope_datapath_common::MAGLEV_DEFAULT_SIZE,
        }
    }
}

/// Checks a Maglev table size: a prime within 3..=131071.
pub fn check_table_size(m: u32) -> Result<u32, String> {
    if !(3..=MAGLEV_MAX_SIZE).contains(&m) || !is_prime(m) {
        return Err(format!(
            "{m} is not a prime within 3-{MAGLEV_MAX_SIZE} (e.g. 251, 1021, 4093, 16381, 65521)"
        ));
    }
    Ok(m)
}

/// Parses `--lb-maglev-table-size`.
pub fn parse_table_size(s: &str) -> Result<u32, String> {
    let m: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    check_table_size(m)
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// One service port as the datapath balances it: its frontends and its backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Namespace of the service.
    pub namespace: String,
    /// Name of the service.
    pub name: String,
    /// Frontends: address, port, IP protocol.
    pub frontends: Vec<(IpAddr, u16, u8)>,
    /// Backends.
    pub backends: Vec<Backend>,
    /// ClientIP session affinity timeout, seconds.
    pub affinity_timeout_s: Option<u32>,
}

/// A backend of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// Address and port.
    pub addr: SocketAddr,
    /// Weight: the backend's share of new connections, for Maglev and random selection alike
    /// (0: no new connections).
    pub weight: u16,
    /// Terminating: no new connections, established ones go on.
    pub terminating: bool,
}

/// The services of a topology file, one [`Service`] per service port.
pub fn from_topology(t: &Topology) -> Vec<Service> {
    let mut out = Vec::new();
    for s in &t.services {
        let frontends = s.frontends(&t.nodes);
        for (i, p) in s.ports.iter().enumerate() {
            let target = p.target_port.unwrap_or(p.port);
            out.push(Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                frontends: frontends
                    .iter()
                    .filter(|f| f.4 == i)
                    .map(|f| (f.0, f.1, f.2))
                    .collect(),
                backends: s
                    .backends
                    .iter()
                    .map(|b| Backend {
                        addr: SocketAddr::new(b.ip, b.port.unwrap_or(target)),
                        weight: b.weight,
                        terminating: b.state == BackendState::Terminating,
                    })
                    .collect(),
                affinity_timeout_s: s.session_affinity_timeout_seconds,
            });
        }
    }
    out
}

/// The services of a topology file as the agent's SERVICE_* events describe them: every
/// frontend (cluster IPs, external IPs, node ports on every node address) with its kind, and the
/// active backends of each port (port names are the port's index when it has no name).
pub fn topology_service_info(t: &Topology) -> BTreeMap<(String, String), ServiceInfo> {
    let mut out = BTreeMap::new();
    for s in &t.services {
        let port_name = |i: usize| {
            s.ports[i]
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| i.to_string())
        };
        let frontends = s
            .frontends(&t.nodes)
            .into_iter()
            .map(|(ip, port, proto, kind, i)| Frontend {
                ip,
                port,
                protocol: if proto == 17 { "UDP" } else { "TCP" }.into(),
                port_name: port_name(i),
                kind: kind.into(),
            })
            .collect();
        let backends = (0..s.ports.len())
            .map(|i| {
                let target = s.ports[i].target_port.unwrap_or(s.ports[i].port);
                let ready = s
                    .backends
                    .iter()
                    .filter(|b| b.state != BackendState::Terminating && b.weight > 0)
                    .map(|b| (b.ip, b.port.unwrap_or(target)))
                    .collect();
                (port_name(i), ready)
            })
            .collect();
        out.insert(
            (s.namespace.clone(), s.name.clone()),
            ServiceInfo {
                ext_traffic_policy: "Cluster".into(),
                int_traffic_policy: "Cluster".into(),
                frontends,
                backends,
                affinity_timeout_s: s.session_affinity_timeout_seconds,
            },
        );
    }
    out
}

/// The Kubernetes Services of a metadata source (ready EndpointSlice endpoints as backends),
/// one [`Service`] per service port name.
pub fn from_service_info(details: &BTreeMap<(String, String), ServiceInfo>) -> Vec<Service> {
    let mut out = Vec::new();
    for ((ns, name), info) in details {
        let mut by_port: BTreeMap<&str, Vec<(IpAddr, u16, u8)>> = BTreeMap::new();
        for f in &info.frontends {
            let proto = match f.protocol.to_ascii_uppercase().as_str() {
                "TCP" => 6,
                "UDP" => 17,
                _ => continue,
            };
            by_port
                .entry(f.port_name.as_str())
                .or_default()
                .push((f.ip, f.port, proto));
        }
        for (port_name, frontends) in by_port {
            let backends = info
                .backends
                .get(port_name)
                .map(|set| {
                    set.iter()
                        .map(|(ip, port)| Backend {
                            addr: SocketAddr::new(*ip, *port),
                            weight: 1,
                            terminating: false,
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Service {
                namespace: ns.clone(),
                name: name.clone(),
                frontends,
                backends,
                affinity_timeout_s: info.affinity_timeout_s,
            });
        }
    }
    out
}

/// What the decoder knows about a frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendView {
    /// Namespace of the service.
    pub namespace: String,
    /// Name of the service.
    pub name: String,
    /// The frontend address and port.
    pub addr: SocketAddr,
}

// ---------------------------------------------------------------------------------------------
// Maglev.
// ---------------------------------------------------------------------------------------------

/// 64-bit hash of `bytes` with a seed: FNV-1a then the murmur3 finalizer (stable across
/// versions and machines, so every node computes the same tables).
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Maglev's lookup table (Eisenbud et al., NSDI 2016, §3.4) of size `m` (a prime) for backends
/// named `names` with weights: every backend has a permutation of the table positions from two
/// hashes of its name (offset, skip); backends take turns claiming their next free position,
/// each turn in proportion to its weight (Cilium's weighted Maglev), until the table is full.
/// Returns the backend index of every position; empty when no backend has a weight.
pub fn maglev_table(backends: &[(String, u16)], m: u32) -> Vec<u32> {
    let m64 = m as u64;
    let w_max = backends.iter().map(|b| b.1 as u64).max().unwrap_or(0);
    if w_max == 0 || m < 2 {
        return Vec::new();
    }
    let perm: Vec<(u64, u64)> = backends
        .iter()
        .map(|(name, _)| {
            let offset = hash64(0x6d61_676c_6576, name.as_bytes()) % m64;
            let skip = hash64(0x736b_6970, name.as_bytes()) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut credit = vec![0u64; backends.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    loop {
        for (i, (_, w)) in backends.iter().enumerate() {
            credit[i] += *w as u64;
            while credit[i] >= w_max {
                credit[i] -= w_max;
                let (offset, skip) = perm[i];
                let mut c = (offset + next[i] * skip) % m64;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m64;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m64 {
                    return table;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The maps.
// ---------------------------------------------------------------------------------------------

/// Errors of the load balancer's map updates.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// A map could not be opened or updated.
    #[error("map {map}: {op}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Operation.
        op: &'static str,
        /// Cause.
        source: MapError,
    },
    /// Too many frontends or backends for the maps.
    #[error("{0}")]
    Full(String),
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> LbError {
    move |source| LbError::Map { map, op, source }
}

fn open_hash<K: aya::Pod, V: aya::Pod>(
    root: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, LbError> {
    let data = MapData::from_pin(root.join(name)).map_err(map_err(name, "open pinned"))?;
    HashMap::try_from(Map::HashMap(data)).map_err(map_err(name, "open pinned"))
}

/// What is applied for one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    value: LbService,
    slots: u32,
    /// Hash of the slots' backend ids.
    slot_ids: u64,
    /// Hash of the Maglev table (tables are large: 64 KiB per frontend at the default size).
    table: u64,
}

/// Slots per frontend at most that weights may add for random selection (beyond one per
/// backend): a backend's share of the slots is its weight's share, rounded, at least one slot.
pub const MAX_WEIGHTED_SLOTS: usize = 256;

/// The slots of random selection: `(backend id, weight)` of the active backends, each backend
/// taking a number of slots proportional to its weight (weights divided by their greatest
/// common divisor; scaled down to about [`MAX_WEIGHTED_SLOTS`] when they add up to more, every
/// backend keeping at least one slot). Equal weights give one slot per backend.
pub fn weighted_slots(active: &[(u32, u16)]) -> Vec<u32> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let weights: Vec<u64> = active.iter().map(|(_, w)| u64::from((*w).max(1))).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let sum: u64 = reduced.iter().sum();
    let cap = (MAX_WEIGHTED_SLOTS as u64).max(active.len() as u64);
    let mut out = Vec::new();
    for ((id, _), w) in active.iter().zip(&reduced) {
        let n = if sum <= cap {
            *w
        } else {
            ((w * cap + sum / 2) / sum).max(1)
        };
        out.extend(std::iter::repeat_n(*id, n as usize));
    }
    out
}

fn table_hash(t: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// Backend identity: (frontend, address, port, protocol).
type BackendKey = (u16, [u8; 16], u16, u8);

/// The datapath's load-balancer maps and what the agent wrote into them.
pub struct Lb {
    config: LbConfig,
    services: HashMap<MapData, LbServiceKey, LbService>,
    slots: HashMap<MapData, LbSlotKey, u32>,
    backends: HashMap<MapData, u32, LbBackend>,
    maglev: HashMap<MapData, LbMaglevKey, LbMaglevChunk>,
    revnat: HashMap<MapData, u16, LbRevNat>,
    /// Frontend → reverse-NAT index (live frontends).
    rev_nat: BTreeMap<LbServiceKey, u16>,
    /// Reverse-NAT indexes of deleted frontends, kept while connections use them.
    retired: BTreeSet<u16>,
    /// Backend ids, by backend identity, with the flags written.
    backend_ids: BTreeMap<BackendKey, (u32, u8)>,
    applied: BTreeMap<u16, Applied>,
    views: BTreeMap<u16, FrontendView>,
}

/// Counts of an [`Lb::sync`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Frontends in the maps.
    pub frontends: usize,
    /// Frontends written (new or changed).
    pub changed: usize,
    /// Frontends removed.
    pub removed: usize,
}

impl Lb {
    /// Opens the LB maps pinned under the node's bpffs root (created by
    /// [`crate::datapath::Datapath::open`]) and recovers the frontend and backend numbering.
    pub fn open(root: &Path, config: LbConfig) -> Result<Self, LbError> {
        let services: HashMap<MapData, LbServiceKey, LbService> =
            open_hash(root, names::LB_SERVICES)?;
        let backends: HashMap<MapData, u32, LbBackend> = open_hash(root, names::LB_BACKENDS)?;
        let revnat: HashMap<MapData, u16, LbRevNat> = open_hash(root, names::LB_REVNAT)?;
        let mut rev_nat = BTreeMap::new();
        for (k, v) in services.iter().flatten() {
            rev_nat.insert(k, v.rev_nat);
        }
        let live: BTreeSet<u16> = rev_nat.values().copied().collect();
        let retired = revnat
            .keys()
            .flatten()
            .filter(|r| !live.contains(r))
            .collect();
        let backend_ids = backends
            .iter()
            .flatten()
            .map(|(id, b)| ((b.rev_nat, b.addr, b.port, b.proto), (id, b.flags)))
            .collect();
        Ok(Lb {
            config,
            services,
            slots: open_hash(root, names::LB_SLOTS)?,
            backends,
            maglev: open_hash(root, names::LB_MAGLEV)?,
            revnat,
            rev_nat,
            retired,
            backend_ids,
            applied: BTreeMap::new(),
            views: BTreeMap::new(),
        })
    }

    /// Frontends by reverse-NAT index, for naming flows.
    pub fn views(&self) -> &BTreeMap<u16, FrontendView> {
        &self.views
    }

    fn alloc_rev_nat(&self) -> Result<u16, LbError> {
        let used: BTreeSet<u16> = self
            .rev_nat
            .values()
            .chain(self.retired.iter())
            .copied()
            .collect();
        (1..=u16::MAX)
            .find(|i| !used.contains(i))
            .ok_or_else(|| LbError::Full("every reverse-NAT index (65535) is in use".into()))
    }

    fn alloc_backend(&self, used: &mut BTreeSet<u32>) -> u32 {
        let id = (1..).find(|i| !used.contains(i)).expect("free id");
        used.insert(id);
        id
    }

    /// Makes the LB maps serve exactly `services`. A frontend listed twice is served by its
    /// first service (the topology validates against that; metadata sources may overlap).
    pub fn sync(&mut self, services: &[Service]) -> Result<SyncSummary, LbError> {
        let mut summary = SyncSummary::default();
        // Desired frontends.
        let mut desired: BTreeMap<LbServiceKey, &Service> = BTreeMap::new();
        for s in services {
            for (ip, port, proto) in &s.frontends {
                let (family, addr) = addr16(*ip);
                let key = LbServiceKey {
                    addr,
                    dport: *port,
                    proto: *proto,
                    family,
                };
                desired.entry(key).or_insert(s);
            }
        }
        let mut used_ids: BTreeSet<u32> = self.backend_ids.values().map(|v| v.0).collect();
        let mut views = BTreeMap::new();
        for (key, svc) in &desired {
            let rev_nat = match self.rev_nat.get(key) {
                Some(r) => *r,
                None => {
                    let r = self.alloc_rev_nat()?;
                    self.rev_nat.insert(*key, r);
                    self.retired.remove(&r);
                    r
                }
            };
            let fe_addr = crate::decoder::ip_of(
                if key.family == periscope_datapath_common::family::V6 {
                    periscope_datapath_common::EV_F_IPV6
                } else {
                    0
                },
                &key.addr,
            );
            views.insert(
                rev_nat,
                FrontendView {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    addr: SocketAddr::new(fe_addr, key.dport),
                },
            );
            // Backends of the frontend's family, with their ids.
            let mut active: Vec<(u32, String, u16)> = Vec::new();
            let mut wanted: BTreeSet<BackendKey> = BTreeSet::new();
            for b in &svc.backends {
                let (family, addr) = addr16(b.addr.ip());
                if family != key.family {
                    continue;
                }
                let bkey = (rev_nat, addr, b.addr.port(), key.proto);
                wanted.insert(bkey);
                let flags = if b.terminating || b.weight == 0 {
                    LB_BACKEND_F_TERMINATING
                } else {
                    0
                };
                let id = match self.backend_ids.get(&bkey) {
                    Some((id, f)) if *f == flags => *id,
                    existing => {
                        let id = match existing {
                            Some((id, _)) => *id,
                            None => self.alloc_backend(&mut used_ids),
                        };
                        let value = LbBackend {
                            addr,
                            port: b.addr.port(),
                            proto: key.proto,
                            family,
                            flags,
                            pad: 0,
                            rev_nat,
                        };
                        self.backends
                            .insert(id, value, 0)
                            .map_err(map_err(names::LB_BACKENDS, "insert"))?;
                        self.backend_ids.insert(bkey, (id, flags));
                        id
                    }
                };
                if flags == 0 {
                    active.push((id, b.addr.to_string(), b.weight));
                }
            }
            // Backends that left this frontend: flagged removed, kept for their connections.
            let gone: Vec<BackendKey> = self
                .backend_ids
                .iter()
                .filter(|(k, (_, f))| {
                    k.0 == rev_nat && !wanted.contains(*k) && f & LB_BACKEND_F_REMOVED == 0
                })
                .map(|(k, _)| *k)
                .collect();
            for k in gone {
                self.mark_removed(k)?;
            }
            let maglev = self.config.algorithm == Algorithm::Maglev;
            let m = self.config.maglev_table_size;
            let table: Vec<u32> = if maglev {
                let named: Vec<(String, u16)> =
                    active.iter().map(|(_, n, w)| (n.clone(), *w)).collect();
                maglev_table(&named, m)
                    .into_iter()
                    .map(|i| active[i as usize].0)
                    .collect()
            } else {
                Vec::new()
            };
            // Random selection picks a slot: weighted. Maglev's table carries the weights; its
            // slots are one per backend.
            let slot_ids: Vec<u32> = if maglev {
                active.iter().map(|(id, _, _)| *id).collect()
            } else {
                weighted_slots(
                    &active
                        .iter()
                        .map(|(id, _, w)| (*id, *w))
                        .collect::<Vec<_>>(),
                )
            };
            let slots_hash = table_hash(&slot_ids);
            let mut value = LbService {
                rev_nat,
                count: slot_ids.len().min(u16::MAX as usize) as u16,
                flags: if maglev { LB_SVC_F_MAGLEV } else { 0 },
                generation: 0,
                pad: 0,
                maglev_size: if maglev { m } else { 0 },
                affinity_timeout_s: svc.affinity_timeout_s.unwrap_or(0),
            };
            if svc.affinity_timeout_s.is_some() {
                value.flags |= LB_SVC_F_AFFINITY;
            }
            let before = self.applied.get(&rev_nat).cloned();
            let thash = table_hash(&table);
            // Unknown state (first sync after a start): the pinned entry's generation.
            let old_gen = match &before {
                Some(a) => Some(a.value.generation),
                None => self.services.get(key, 0).ok().map(|v| v.generation),
            };
            let table_changed = before.as_ref().is_none_or(|a| a.table != thash);
            value.generation = match (old_gen, table_changed) {
                (Some(g), false) => g,
                (Some(g), true) => g ^ 1,
                (None, _) => 0,
            };
            let slots_before = before.as_ref().map_or(0, |a| a.slots);
            let unchanged = before.as_ref().is_some_and(|a| {
                a.value == value
                    && a.table == thash
                    && a.slots == slot_ids.len() as u32
                    && a.slot_ids == slots_hash
            });
            if unchanged {
                continue;
            }
            summary.changed += 1;
            for (i, id) in slot_ids.iter().enumerate() {
                let k = LbSlotKey {
                    rev_nat,
                    pad: 0,
                    slot: i as u32 + 1,
                };
                self.slots
                    .insert(k, *id, 0)
                    .map_err(map_err(names::LB_SLOTS, "insert"))?;
            }
            if table_changed && !table.is_empty() {
                self.write_table(rev_nat, value.generation, &table)?;
            }
            let (family, port) = (key.family, key.dport);
            self.revnat
                .insert(
                    rev_nat,
                    LbRevNat {
                        addr: key.addr,
                        port,
                        family,
                        pad: 0,
                    },
                    0,
                )
                .map_err(map_err(names::LB_REVNAT, "insert"))?;
            self.services
                .insert(key, value, 0)
                .map_err(map_err(names::LB_SERVICES, "insert"))?;
            // Now unused: slots past the count, the other generation's table.
            let count = slot_ids.len() as u32;
            for slot in count + 1..=slots_before.max(count) {
                let _ = self.slots.remove(&LbSlotKey {
                    rev_nat,
                    pad: 0,
                    slot,
                });
            }
            if table_changed {
                self.remove_table(rev_nat, value.generation ^ 1);
                if table.is_empty() {
                    self.remove_table(rev_nat, value.generation);
                }
            }
            self.applied.insert(
                rev_nat,
                Applied {
                    value,
                    slots: slot_ids.len() as u32,
                    slot_ids: slots_hash,
                    table: thash,
                },
            );
        }
        // Frontends that went away: the service entry first (no new connections), then the
        // rest; the reverse-NAT entry and the backends stay while connections use them.
        let stale: Vec<(LbServiceKey, u16)> = self
            .rev_nat
            .iter()
            .filter(|(k, _)| !desired.contains_key(*k))
            .map(|(k, r)| (*k, *r))
            .collect();
        for (key, rev_nat) in stale {
            let _ = self.services.remove(&key);
            let slots = self.applied.get(&rev_nat).map_or(0, |a| a.slots);
            for slot in 1..=slots.max(1) {
                let _ = self.slots.remove(&LbSlotKey {
                    rev_nat,
                    pad: 0,
                    slot,
                });
            }
            self.remove_table(rev_nat, 0);
            self.remove_table(rev_nat, 1);
            let backends: Vec<BackendKey> = self
                .backend_ids
                .keys()
                .filter(|k| k.0 == rev_nat)
                .copied()
                .collect();
            for k in backends {
                self.mark_removed(k)?;
            }
            self.applied.remove(&rev_nat);
            self.rev_nat.remove(&key);
            self.retired.insert(rev_nat);
            summary.removed += 1;
        }
        summary.frontends = self.rev_nat.len();
        self.views = views;
        Ok(summary)
    }

    fn mark_removed(&mut self, k: BackendKey) -> Result<(), LbError> {
        if let Some((id, flags)) = self.backend_ids.get(&k).copied() {
            let mut value = self
                .backends
                .get(&id, 0)
                .map_err(map_err(names::LB_BACKENDS, "get"))?;
            value.flags = flags | LB_BACKEND_F_REMOVED;
            self.backends
                .insert(id, value, 0)
                .map_err(map_err(names::LB_BACKENDS, "insert"))?;
            self.backend_ids.insert(k, (id, value.flags));
        }
        Ok(())
    }

    fn write_table(&mut self, rev_nat: u16, generation: u8, table: &[u32]) -> Result<(), LbError> {
        for (chunk, ids) in table.chunks(MAGLEV_CHUNK as usize).enumerate() {
            let mut value = LbMaglevChunk::default();
            value.backends[..ids.len()].copy_from_slice(ids);
            let key = LbMaglevKey {
                rev_nat,
                generation,
                pad: 0,
                chunk: chunk as u32,
            };
            self.maglev
                .insert(key, value, 0)
                .map_err(map_err(names::LB_MAGLEV, "insert"))?;
        }
        Ok(())
    }

    fn remove_table(&mut self, rev_nat: u16, generation: u8) {
        for chunk in 0..MAGLEV_MAX_SIZE.div_ceil(MAGLEV_CHUNK) {
            let key = LbMaglevKey {
                rev_nat,
                generation,
                pad: 0,
                chunk,
            };
            if self.maglev.remove(&key).is_err() {
                break;
            }
        }
    }

    /// Removes backends flagged removed, and reverse-NAT entries of deleted frontends, that no
    /// connection uses any more (`in_use`: backend ids and reverse-NAT indexes of the CT
    /// entries). Returns how many backends went.
    pub fn gc(&mut self, in_use: &(BTreeSet<u32>, BTreeSet<u16>)) -> usize {
        let dead: Vec<(BackendKey, u32)> = self
            .backend_ids
            .iter()
            .filter(|(_, (id, f))| f & LB_BACKEND_F_REMOVED != 0 && !in_use.0.contains(id))
            .map(|(k, (id, _))| (*k, *id))
            .collect();
        for (k, id) in &dead {
            if self.backends.remove(id).is_ok() {
                self.backend_ids.remove(k);
            }
        }
        let retired: Vec<u16> = self
            .retired
            .iter()
            .filter(|r| !in_use.1.contains(r) && !self.backend_ids.keys().any(|k| k.0 == **r))
            .copied()
            .collect();
        for r in retired {
            let _ = self.revnat.remove(&r);
            self.retired.remove(&r);
        }
        dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<(String, u16)> {
        (0..n)
            .map(|i| (format!("10.0.{}.{}:8080", i / 250, i % 250 + 1), 1))
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for i in table {
            c[*i as usize] += 1;
        }
        c
    }

    #[test]
    fn table_sizes_are_primes() {
        assert!(check_table_size(16381).is_ok());
        assert!(check_table_size(251).is_ok());
        assert!(check_table_size(16384).is_err());
        assert!(check_table_size(1).is_err());
        assert!(check_table_size(262_139).is_err());
    }

    #[test]
    fn random_slots_follow_the_weights() {
        let count = |slots: &[u32], id: u32| slots.iter().filter(|s| **s == id).count();
        // Equal weights: one slot each, in order.
        assert_eq!(weighted_slots(&[(7, 1), (9, 1), (4, 1)]), [7, 9, 4]);
        assert_eq!(weighted_slots(&[(7, 5), (9, 5)]), [7, 9]);
        // 1:3, and 2:6 reduced to it.
        for w in [(1, 3), (2, 6)] {
            let s = weighted_slots(&[(1, w.0), (2, w.1)]);
            assert_eq!((count(&s, 1), count(&s, 2)), (1, 3), "{w:?}");
        }
        // Weights adding up to more than the cap: scaled, every backend keeps a slot.
        let s = weighted_slots(&[(1, 1000), (2, 3000), (3, 1)]);
        assert!(s.len() <= MAX_WEIGHTED_SLOTS + 1, "{}", s.len());
        assert_eq!(count(&s, 3), 1);
        let ratio = count(&s, 2) as f64 / count(&s, 1) as f64;
        assert!((ratio - 3.0).abs() < 0.05, "{ratio}");
        // Many backends of equal weight: one slot each, beyond the cap.
        let many: Vec<(u32, u16)> = (0..1000).map(|i| (i, 1)).collect();
        assert_eq!(weighted_slots(&many).len(), 1000);
        assert!(weighted_slots(&[]).is_empty());
    }

    #[test]
    fn weights_shape_the_share() {
        let backends = vec![("a:1".to_string(), 1), ("b:1".to_string(), 3)];
        let t = maglev_table(&backends, 16381);
        let c = counts(&t, 2);
        assert!((c[1] as f64 / c[0] as f64 - 3.0).abs() < 0.01, "{c:?}");
        assert!(maglev_table(&[("a:1".into(), 0)], 251).is_empty());
    }

    #[test]
    fn topology_and_kubernetes_services_become_service_ports() {
        let t = Topology::parse(
            r#"
nodes: [{name: n1, ips: [192.168.1.1, "fd00::1"]}]
services:
  - name: api
    namespace: shop
    clusterIPs: [10.96.0.1, "fd00:96::1"]
    externalIPs: [203.0.113.1]
    sessionAffinityTimeoutSeconds: 60
    ports:
      - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
      - {name: dns, port: 53, protocol: UDP}
    backends: [{ip: 10.0.0.1}, {ip: 10.0.0.2, port: 9090, weight: 3, state: terminating}]
"#,
            Path::new("t.yaml"),
        )
        .unwrap();
        let s = from_topology(&t);
        assert_eq!(s.len(), 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            s[0].frontends,
            vec![
                (ip("10.96.0.1"), 80, 6),
                (ip("fd00:96::1"), 80, 6),
                (ip("203.0.113.1"), 80, 6),
                (ip("192.168.1.1"), 30080, 6),
                (ip("fd00::1"), 30080, 6),
            ]
        );
        assert_eq!(s[0].backends[0].addr, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(s[0].backends[1].addr, "10.0.0.2:9090".parse().unwrap());
        assert!(s[0].backends[1].terminating && s[0].backends[1].weight == 3);
        assert_eq!(s[1].frontends[0], (ip("10.96.0.1"), 53, 17));
        assert_eq!(s[1].backends[0].addr, "10.0.0.1:53".parse().unwrap());
        assert_eq!(s[0].affinity_timeout_s, Some(60));

        let info = ServiceInfo {
            frontends: vec![
                crate::sources::Frontend {
                    ip: ip("10.96.0.2"),
                    port: 443,
                    protocol: "TCP".into(),
                    port_name: "https".into(),
                    kind: "ClusterIP".into(),
                },
                crate::sources::Frontend {
                    ip: ip("10.96.0.2"),
                    port: 9,
                    protocol: "SCTP".into(),
                    port_name: "x".into(),
                    kind: "ClusterIP".into(),
                },
            ],
            backends: BTreeMap::from([(
                "https".to_string(),
                BTreeSet::from([(ip("10.0.0.9"), 8443)]),
            )]),
            affinity_timeout_s: Some(10800),
            ..Default::default()
        };
        let k = from_service_info(&BTreeMap::from([(("shop".into(), "web".into()), info)]));
        assert_eq!(k.len(), 1, "SCTP is not balanced: {k:?}");
        assert_eq!(k[0].frontends, vec![(ip("10.96.0.2"), 443, 6)]);
        assert_eq!(k[0].backends[0].addr, "10.0.0.9:8443".parse().unwrap());
        assert_eq!(k[0].affinity_timeout_s, Some(10800));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Equal weights: every backend owns ⌊M/N⌋ or ⌈M/N⌉ positions (Maglev's balance).
        #[test]
        fn maglev_is_balanced(n in 1usize..200, m in prop::sample::select(vec![251u32, 1021, 4093, 16381])) {
            prop_assume!(n * 2 <= m as usize);
            let t = maglev_table(&names(n), m);
            prop_assert_eq!(t.len(), m as usize);
            let c = counts(&t, n);
            let lo = m as usize / n;
            prop_assert!(c.iter().all(|x| *x == lo || *x == lo + 1), "{:?}", c);
        }

        /// Removing one of N backends moves its own positions and only a few others: the
        /// positions of the other backends that change stay a small fraction of the table.
        #[test]
        fn maglev_removal_disrupts_little(n in 3usize..100, gone in 0usize..100) {
            let m = 16381u32;
            let gone = gone % n;
            let all = names(n);
            let before = maglev_table(&all, m);
            let mut rest = all.clone();
            rest.remove(gone);
            let after = maglev_table(&rest, m);
            // Index in `rest` of the backend at index i of `all`.
            let map = |i: u32| if (i as usize) < gone { i } else { i - 1 };
            let mut moved = 0usize;
            for (b, a) in before.iter().zip(&after) {
                if *b as usize != gone && map(*b) != *a {
                    moved += 1;
                }
            }
            // The removed backend's share (M/N) must move; Maglev moves a few more.
            let share = m as usize / n;
            prop_assert!(moved <= share.max(m as usize / 50), "moved {} of the others (share {})", moved, share);
        }
    }
}

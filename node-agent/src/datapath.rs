//! Loading, pinning and attaching the eBPF datapath, and access to its maps.
//!
//! Layout under the node's bpffs directory (`--bpffs-root`, e.g. `/sys/fs/bpf/periscope/node-1`):
//!
//! ```text
//! PSC_IPCACHE  PSC_ENDPOINTS  PSC_CT  PSC_EVENTS  PSC_METRICS  PSC_CONFIG   shared maps (by name)
//! ep/<ifname>/policy_<objhash>      the endpoint's policy map (of the program version <objhash>)
//! ep/<ifname>/from_container         pinned TCX link, host veth ingress (traffic out of the pod)
//! ep/<ifname>/to_container           pinned TCX link, host veth egress (traffic into the pod)
//! dev/<ifname>/from_netdev            pinned TCX link, node device ingress (`--nodeport-devices`)
//! ```
//!
//! Everything the kernel needs to keep enforcing is pinned: when the agent stops (or is killed)
//! the programs stay attached and the maps keep their state. When it starts again it re-opens the
//! pins; an endpoint whose pinned policy map belongs to the same program version is taken over
//! as is, an older version is replaced atomically (`bpf_link_update`) after its new policy map has
//! been filled, so there is never a moment without enforcement.
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use periscope_datapath_common::{
    CtEntry, CtKey, DatapathConfig, EndpointInfo, IpcacheKey, IpcacheValue, MetricsValue,
    PolicyEntry, PolicyKey, names,
};

/// The datapath object, built by build.rs from `datapath/ebpf`.
pub static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/periscope-datapath"));

/// Errors of the datapath layer, each with the operation and object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// bpffs or a pin directory problem.
    #[error("{op} {path}: {source}")]
    Fs {
        /// What was attempted.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Loading the object or a program failed (verifier log in the source).
    #[error("loading the datapath for {what}: {source}")]
    Load {
        /// Endpoint or "shared maps".
        what: String,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map operation failed.
    #[error("map {map}: {op}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Operation.
        op: &'static str,
        /// Cause.
        source: MapError,
    },
    /// Attaching, pinning or replacing a program link failed.
    #[error("attaching {program} to {ifname}: {source}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface.
        ifname: String,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The interface does not exist.
    #[error("interface {ifname} not found: {source}")]
    NoInterface {
        /// Interface.
        ifname: String,
        /// Cause.
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, DatapathError>;

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, op, source }
}

/// A short hash identifying the datapath object version (FNV-1a 64 of its bytes).
pub fn object_version(obj: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in obj {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    let target = CString::new("/sys/fs/bpf").expect("no NUL");
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::Fs {
            op: "mount bpffs on",
            path: "/sys/fs/bpf".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The ifindex of an interface in the current network namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let c = CString::new(ifname).map_err(|e| DatapathError::NoInterface {
        ifname: ifname.into(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DatapathError::NoInterface {
            ifname: ifname.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

/// The per-endpoint program instance.
struct EndpointProgram {
    id: u32,
    ifindex: u32,
    policy: HashMap<MapData, PolicyKey, PolicyEntry>,
    /// Keeps the pinned links open while the agent runs (the pins keep them attached after).
    _links: Vec<PinnedLink>,
}

/// What an endpoint needs from the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Host-side interface name.
    pub ifname: String,
    /// Security identity, flags and addresses (`id` and `ifindex` are filled in by the datapath).
    pub info: EndpointInfo,
    /// The endpoint's policy map content.
    pub policy: BTreeMap<PolicyKey, PolicyEntry>,
}

/// The loaded datapath of one node.
pub struct Datapath {
    root: PathBuf,
    object: &'static [u8],
    version: String,
    ipcache: LpmTrie<MapData, IpcacheKey, IpcacheValue>,
    endpoints_map: HashMap<MapData, u32, EndpointInfo>,
    ct: HashMap<MapData, CtKey, CtEntry>,
    config: Array<MapData, DatapathConfig>,
    metrics: PerCpuArray<MapData, MetricsValue>,
    events: Option<MapData>,
    endpoints: BTreeMap<String, EndpointProgram>,
    /// The network namespace holding the endpoints' host-side interfaces (None = ours).
    netns: Option<std::fs::File>,
}

impl Datapath {
    /// Opens (creating if needed) the node's pinned shared maps under `root`.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, DATAPATH_OBJECT)
    }

    /// Like [`Datapath::open`] with an explicit object (tests).
    pub fn open_with(root: &Path, object: &'static [u8]) -> Result<Self> {
        ensure_bpffs()?;
        fs::create_dir_all(root.join("ep")).map_err(|source| DatapathError::Fs {
            op: "create",
            path: root.to_path_buf(),
            source,
        })?;
        // Loading the object without loading its programs creates (or opens) the pinned maps.
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(root)
            .load(object)
            .map_err(|e| DatapathError::Load {
                what: "shared maps".into(),
                source: Box::new(e),
            })?;
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::Map {
                map: name,
                op: "find in object",
                source: MapError::InvalidName { name: name.into() },
            })
        };
        let ipcache =
            LpmTrie::try_from(take(names::IPCACHE)?).map_err(map_err(names::IPCACHE, "open"))?;
        let endpoints_map = HashMap::try_from(take(names::ENDPOINTS)?)
            .map_err(map_err(names::ENDPOINTS, "open"))?;
        let ct = HashMap::try_from(take(names::CT)?).map_err(map_err(names::CT, "open"))?;
        let config =
            Array::try_from(take(names::CONFIG)?).map_err(map_err(names::CONFIG, "open"))?;
        let metrics = PerCpuArray::try_from(take(names::METRICS)?)
            .map_err(map_err(names::METRICS, "open"))?;
        let events = match take(names::EVENTS)? {
            Map::PerfEventArray(data) => data,
            _ => {
                return Err(DatapathError::Map {
                    map: names::EVENTS,
                    op: "open",
                    source: MapError::InvalidName {
                        name: names::EVENTS.into(),
                    },
                });
            }
        };
        let mut dp = Datapath {
            root: root.to_path_buf(),
            object,
            version: object_version(object),
            ipcache,
            endpoints_map,
            ct,
            config,
            metrics,
            events: Some(events),
            endpoints: BTreeMap::new(),
            netns: None,
        };
        if dp
            .config
            .get(&0, 0)
            .map(|c| c.report_interval_ns == 0)
            .unwrap_or(true)
        {
            dp.set_config(&DatapathConfig::default())?;
        }
        Ok(dp)
    }

    /// Sets the network namespace (e.g. `/run/netns/<node>`) where the endpoints' host-side
    /// interfaces live. Interface lookups and attachments switch the calling thread into it for
    /// their duration; everything else (the API, kvstore and API-server connections) stays in the
    /// agent's own namespace.
    pub fn set_netns(&mut self, path: &Path) -> Result<()> {
        let f = fs::File::open(path).map_err(|source| DatapathError::Fs {
            op: "open network namespace",
            path: path.to_path_buf(),
            source,
        })?;
        self.netns = Some(f);
        Ok(())
    }

    fn enter_netns(&self) -> Result<Option<NetnsGuard>> {
        match &self.netns {
            None => Ok(None),
            Some(f) => NetnsGuard::enter(f)
                .map(Some)
                .map_err(|source| DatapathError::Fs {
                    op: "enter network namespace",
                    path: "--netns".into(),
                    source,
                }),
        }
    }

    /// The node's bpffs directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Version hash of the loaded object.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Writes the runtime configuration.
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<()> {
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(names::CONFIG, "set"))
    }

    /// Reads the runtime configuration.
    pub fn config(&self) -> Result<DatapathConfig> {
        self.config
            .get(&0, 0)
            .map_err(map_err(names::CONFIG, "get"))
    }

    /// Takes the perf event array (once) for the event readers.
    pub fn take_events(&mut self) -> Option<MapData> {
        self.events.take()
    }

    /// Endpoint ids recorded in the pinned endpoints map, by ifindex (survive restarts).
    fn recorded_ids(&self) -> BTreeMap<u32, u32> {
        self.endpoints_map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(id, info)| (info.ifindex, id))
            .collect()
    }

    /// Makes the set of endpoints exactly `specs`: loads/attaches new ones, takes over pinned ones,
    /// updates identities/flags, and detaches endpoints no longer present. Returns ifname → id.
    pub fn sync_endpoints(&mut self, specs: &[EndpointSpec]) -> Result<BTreeMap<String, u32>> {
        let _ns = self.enter_netns()?;
        let recorded = self.recorded_ids();
        let mut used: BTreeSet<u32> = recorded.values().copied().collect();
        let mut ids = BTreeMap::new();
        for spec in specs {
            let ifindex = ifindex(&spec.ifname)?;
            let id = match self.endpoints.get(&spec.ifname) {
                Some(ep) if ep.ifindex == ifindex => ep.id,
                _ => match recorded.get(&ifindex) {
                    Some(id) => *id,
                    None => {
                        let id = (1..).find(|i| !used.contains(i)).expect("free endpoint id");
                        used.insert(id);
                        id
                    }
                },
            };
            let mut info = spec.info;
            info.id = id as u16;
            info.ifindex = ifindex;
            // The endpoint entry is written before the programs are attached, so they never see
            // a packet of an unconfigured endpoint.
            self.endpoints_map
                .insert(id, info, 0)
                .map_err(map_err(names::ENDPOINTS, "insert"))?;
            let current = self.endpoints.get(&spec.ifname).map(|e| (e.id, e.ifindex));
            if current != Some((id, ifindex)) {
                let prog = self.attach_endpoint(&spec.ifname, id, ifindex, &spec.policy)?;
                self.endpoints.insert(spec.ifname.clone(), prog);
            }
            self.sync_policy(&spec.ifname, &spec.policy)?;
            ids.insert(spec.ifname.clone(), id);
        }
        // Endpoints that went away.
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|k| !ids.contains_key(*k))
            .cloned()
            .collect();
        for ifname in gone {
            self.remove_endpoint(&ifname)?;
        }
        for (ifindex, id) in recorded {
            if !ids.values().any(|v| *v == id) {
                let _ = self.endpoints_map.remove(&id);
                tracing::debug!(id, ifindex, "removed stale endpoint entry");
            }
        }
        // Pin directories of endpoints no longer configured (e.g. after a restart with a new
        // topology).
        if let Ok(dir) = fs::read_dir(self.root.join("ep")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !ids.contains_key(&name) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(ids)
    }

    fn ep_dir(&self, ifname: &str) -> PathBuf {
        self.root.join("ep").join(ifname)
    }

    /// Takes over the pinned programs of an endpoint, or loads and attaches a new instance.
    fn attach_endpoint(
        &mut self,
        ifname: &str,
        id: u32,
        ifindex: u32,
        desired: &BTreeMap<PolicyKey, PolicyEntry>,
    ) -> Result<EndpointProgram> {
        let dir = self.ep_dir(ifname);
        fs::create_dir_all(&dir).map_err(|source| DatapathError::Fs {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let policy_pin = dir.join(format!("policy_{}", self.version));
        let link_pins = [
            (
                names::PROG_FROM_CONTAINER,
                TcAttachType::Ingress,
                dir.join(names::PROG_FROM_CONTAINER),
            ),
            (
                names::PROG_TO_CONTAINER,
                TcAttachType::Egress,
                dir.join(names::PROG_TO_CONTAINER),
            ),
        ];
        let recorded_ifindex = self.endpoints_map.get(&id, 0).ok().map(|i| i.ifindex);

        // Same version, same interface: take over as is.
        if policy_pin.exists()
            && recorded_ifindex == Some(ifindex)
            && link_pins.iter().all(|(_, _, p)| p.exists())
        {
            let links = link_pins
                .iter()
                .map(|(prog, _, p)| {
                    PinnedLink::from_pin(p).map_err(|e| DatapathError::Attach {
                        program: prog,
                        ifname: ifname.into(),
                        source: Box::new(e),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let data =
                MapData::from_pin(&policy_pin).map_err(map_err(names::POLICY, "open pinned"))?;
            let policy = HashMap::try_from(Map::HashMap(data))
                .map_err(map_err(names::POLICY, "open pinned"))?;
            tracing::info!(ifname, id, "took over pinned endpoint datapath");
            return Ok(EndpointProgram {
                id,
                ifindex,
                policy,
                _links: links,
            });
        }

        // Load a new instance for this endpoint.
        let mut ebpf: Ebpf = EbpfLoader::new()
            .map_pin_path(&self.root)
            .set_global(names::GLOBAL_ENDPOINT_ID, &id, true)
            .load(self.object)
            .map_err(|e| DatapathError::Load {
                what: ifname.into(),
                source: Box::new(e),
            })?;
        let policy_map = ebpf.take_map(names::POLICY).ok_or(DatapathError::Map {
            map: names::POLICY,
            op: "find in object",
            source: MapError::InvalidName {
                name: names::POLICY.into(),
            },
        })?;
        let _ = fs::remove_file(&policy_pin);
        policy_map.pin(&policy_pin).map_err(|e| DatapathError::Fs {
            op: "pin policy map at",
            path: policy_pin.clone(),
            source: io::Error::other(e),
        })?;
        let mut policy: HashMap<MapData, PolicyKey, PolicyEntry> =
            HashMap::try_from(policy_map).map_err(map_err(names::POLICY, "open"))?;
        // The new programs enforce the desired policy from their first packet.
        for (k, v) in desired {
            policy
                .insert(k, v, 0)
                .map_err(map_err(names::POLICY, "insert"))?;
        }
        let mut links = Vec::new();
        for (prog_name, attach_type, pin) in &link_pins {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(prog_name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| DatapathError::Load {
                    what: ifname.into(),
                    source: format!("program {prog_name} missing from object").into(),
                })?;
            prog.load().map_err(|e| DatapathError::Load {
                what: ifname.into(),
                source: Box::new(e),
            })?;
            // An existing link (older version, same interface) is updated in place atomically.
            let existing = if recorded_ifindex == Some(ifindex) {
                PinnedLink::from_pin(pin).ok()
            } else {
                let _ = fs::remove_file(pin);
                None
            };
            let pinned = attach_pinned(
                prog,
                prog_name,
                &ifname_of(ifindex).unwrap_or_else(|| ifname.to_string()),
                *attach_type,
                existing,
                pin,
            )?;
            links.push(pinned);
        }
        // Old versions' policy maps are no longer referenced by any program.
        if let Ok(dir_entries) = fs::read_dir(&dir) {
            for e in dir_entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("policy_") && e.path() != policy_pin {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        tracing::info!(ifname, id, version = %self.version, "attached endpoint datapath");
        Ok(EndpointProgram {
            id,
            ifindex,
            policy,
            _links: links,
        })
    }

    /// Attaches the node-device program (`from_netdev`: service translation for clients
    /// outside the node, see the datapath) at the ingress of each of `devices`, pinned at
    /// `dev/<ifname>/from_netdev`; a link already pinned there (an earlier run) is updated in
    /// place, atomically. Devices pinned before and no longer listed are detached.
    pub fn sync_devices(&mut self, devices: &[String]) -> Result<()> {
        let _ns = self.enter_netns()?;
        let root = self.root.join("dev");
        if let Ok(dir) = fs::read_dir(&root) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !devices.contains(&name) {
                    // Unpinning the link (no fd holds it) detaches the program.
                    let _ = fs::remove_dir_all(e.path());
                    tracing::info!(device = %name, "detached node device");
                }
            }
        }
        if devices.is_empty() {
            return Ok(());
        }
        let prog_name = names::PROG_FROM_NETDEV;
        let mut ebpf: Ebpf = EbpfLoader::new()
            .map_pin_path(&self.root)
            .set_global(names::GLOBAL_ENDPOINT_ID, &0u32, true)
            .load(self.object)
            .map_err(|e| DatapathError::Load {
                what: "node devices".into(),
                source: Box::new(e),
            })?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(prog_name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| DatapathError::Load {
                what: "node devices".into(),
                source: format!("program {prog_name} missing from object").into(),
            })?;
        prog.load().map_err(|e| DatapathError::Load {
            what: "node devices".into(),
            source: Box::new(e),
        })?;
        for device in devices {
            ifindex(device)?;
            let dir = root.join(device);
            fs::create_dir_all(&dir).map_err(|source| DatapathError::Fs {
                op: "create",
                path: dir.clone(),
                source,
            })?;
            let pin = dir.join(prog_name);
            let existing = PinnedLink::from_pin(&pin).ok();
            attach_pinned(
                prog,
                prog_name,
                device,
                TcAttachType::Ingress,
                existing,
                &pin,
            )?;
            tracing::info!(device = %device, version = %self.version, "attached node device");
        }
        Ok(())
    }

    /// Detaches an endpoint's programs and removes its pins and map entry.
    pub fn remove_endpoint(&mut self, ifname: &str) -> Result<()> {
        let _ns = self.enter_netns()?;
        if let Some(ep) = self.endpoints.remove(ifname) {
            let _ = self.endpoints_map.remove(&ep.id);
            drop(ep);
        }
        let dir = self.ep_dir(ifname);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|source| DatapathError::Fs {
                op: "remove",
                path: dir,
                source,
            })?;
        }
        Ok(())
    }

    /// Makes an endpoint's policy map equal to `desired`: inserts new and changed entries first,
    /// then removes stale ones (an allowed connection never sees a gap). Counters of unchanged
    /// entries are kept. Returns (inserted or updated, removed).
    pub fn sync_policy(
        &mut self,
        ifname: &str,
        desired: &BTreeMap<PolicyKey, PolicyEntry>,
    ) -> Result<(usize, usize)> {
        let ep = self
            .endpoints
            .get_mut(ifname)
            .ok_or_else(|| DatapathError::NoInterface {
                ifname: ifname.into(),
                source: io::Error::new(io::ErrorKind::NotFound, "not an attached endpoint"),
            })?;
        let current: BTreeMap<PolicyKey, PolicyEntry> = ep.policy.iter().flatten().collect();
        let mut changed = 0;
        for (k, v) in desired {
            match current.get(k) {
                Some(c)
                    if c.flags == v.flags
                        && c.rule_id == v.rule_id
                        && c.proxy_port == v.proxy_port => {}
                _ => {
                    ep.policy
                        .insert(k, v, 0)
                        .map_err(map_err(names::POLICY, "insert"))?;
                    changed += 1;
                }
            }
        }
        let mut removed = 0;
        for k in current.keys().filter(|k| !desired.contains_key(k)) {
            ep.policy
                .remove(k)
                .map_err(map_err(names::POLICY, "remove"))?;
            removed += 1;
        }
        Ok((changed, removed))
    }

    /// Current policy map content of an endpoint.
    pub fn policy_entries(&self, ifname: &str) -> Vec<(PolicyKey, PolicyEntry)> {
        self.endpoints
            .get(ifname)
            .map(|ep| ep.policy.iter().flatten().collect())
            .unwrap_or_default()
    }

    /// Makes the ipcache equal to `desired` (prefix → identity): inserts first, then removes.
    pub fn sync_ipcache(
        &mut self,
        desired: &BTreeMap<(IpcacheKey, u32), IpcacheValue>,
    ) -> Result<()> {
        let current: BTreeMap<(IpcacheKey, u32), IpcacheValue> = self
            .ipcache
            .iter()
            .flatten()
            .map(|(k, v)| ((k.data(), k.prefix_len()), v))
            .collect();
        for ((key, plen), v) in desired {
            if current.get(&(*key, *plen)) != Some(v) {
                self.ipcache
                    .insert(&LpmKey::new(*plen, *key), v, 0)
                    .map_err(map_err(names::IPCACHE, "insert"))?;
            }
        }
        for (key, plen) in current.keys().filter(|k| !desired.contains_key(k)) {
            self.ipcache
                .remove(&LpmKey::new(*plen, *key))
                .map_err(map_err(names::IPCACHE, "remove"))?;
        }
        Ok(())
    }

    /// Per-CPU metrics summed over CPUs: (index, value) for every non-zero counter.
    pub fn metrics(&self) -> Vec<(u32, MetricsValue)> {
        let mut out = Vec::new();
        for i in 0..periscope_datapath_common::capacity::METRICS {
            if let Ok(values) = self.metrics.get(&i, 0) {
                let mut sum = MetricsValue::default();
                for v in values.iter() {
                    sum.count += v.count;
                    sum.bytes += v.bytes;
                }
                if sum.count != 0 {
                    out.push((i, sum));
                }
            }
        }
        out
    }

    /// Number of connection-tracking entries.
    pub fn ct_entries(&self) -> usize {
        self.ct.keys().flatten().count()
    }

    /// What the load balancer's connections use: the backend ids pinned by service CT entries
    /// and the reverse-NAT indexes of every CT entry (for [`crate::lb::Lb::gc`]).
    pub fn lb_refs(&self) -> (BTreeSet<u32>, BTreeSet<u16>) {
        let mut backends = BTreeSet::new();
        let mut rev_nats = BTreeSet::new();
        for (k, v) in self.ct.iter().flatten() {
            if k.scope == periscope_datapath_common::CT_SCOPE_SERVICE {
                backends.insert(v.rx_bytes as u32);
            }
            if v.rev_nat != 0 {
                rev_nats.insert(v.rev_nat);
            }
        }
        (backends, rev_nats)
    }

    /// Removes expired connection-tracking entries (boot-time `now_ns`); returns how many.
    pub fn ct_gc(&mut self, now_ns: u64) -> usize {
        let expired: Vec<CtKey> = self
            .ct
            .iter()
            .flatten()
            .filter(|(_, v)| v.expires_ns < now_ns)
            .map(|(k, _)| k)
            .collect();
        expired.iter().filter(|k| self.ct.remove(k).is_ok()).count()
    }

    /// Leaves programs attached and maps pinned when the agent exits.
    pub fn release(self) {
        // Dropping the PinnedLinks only closes our fds; the pins keep the links attached.
        drop(self);
    }
}

/// Attaches the loaded `prog` to `ifname` (TCX, `attach_type`) and pins the link at `pin`: an
/// `existing` link (pinned by an earlier run) is updated in place, atomically, so the interface
/// is never without a program.
fn attach_pinned(
    prog: &mut SchedClassifier,
    prog_name: &'static str,
    ifname: &str,
    attach_type: TcAttachType,
    existing: Option<PinnedLink>,
    pin: &Path,
) -> Result<PinnedLink> {
    let attach_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
        program: prog_name,
        ifname: ifname.into(),
        source: e,
    };
    let link_id = match existing {
        Some(old) => {
            let fd: FdLink = old.into();
            let link = SchedClassifierLink::try_from(fd).map_err(|e| attach_err(Box::new(e)))?;
            prog.attach_to_link(link)
                .map_err(|e| attach_err(Box::new(e)))?
        }
        None => prog
            .attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| attach_err(Box::new(e)))?,
    };
    let link = prog
        .take_link(link_id)
        .map_err(|e| attach_err(Box::new(e)))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| attach_err(Box::new(e)))?;
    let _ = fs::remove_file(pin);
    fd.pin(pin).map_err(|e| attach_err(Box::new(e)))
}

/// The name of an interface by index (current network namespace).
fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE bytes as required.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated string into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Boot-time clock (the datapath's timestamps) in nanoseconds.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Switches the calling thread into a network namespace and back when dropped. Used only around
/// synchronous sections (no `.await` inside), so the thread is never handed to other work while
/// switched.
struct NetnsGuard {
    original: fs::File,
}

impl NetnsGuard {
    fn enter(target: &fs::File) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let original = fs::File::open("/proc/thread-self/ns/net")?;
        // SAFETY: setns on a valid namespace fd affects only the calling thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: back to the namespace the thread was in.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            // A thread stuck in the wrong namespace would misroute later connections.
            panic!(
                "cannot return to the agent's network namespace: {}",
                io::Error::last_os_error()
            );
        }
    }
}

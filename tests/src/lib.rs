//! The Periscope test bed: builds a [`Topology`] for real out of network namespaces and veth pairs,
//! and tears it all down again.
//!
//! ```text
//!  netns pt<id>-<pod>         netns pt<id>-<node>                  netns pt<id>-fabric
//! +-------------------+     +--------------------------------+    +-----------------+
//! | eth0 10.0.0.1/32  +-veth+ lxc... 169.254.1.1/32 fe80::1  |    | br0 (bridge)    |
//! | default via       |     | 10.0.0.1/32 dev lxc...         |    |   n1, n2, ...   |
//! |   169.254.1.1     |     | <other nodes' pods> via fabric |    |                 |
//! |   fe80::1         |     | fab0 172.31.255.<n>/24         +veth+ n<n>            |
//! +-------------------+     +--------------------------------+    +-----------------+
//! ```
//!
//! (See `tests/README.md` for the details.)
//!
//! * every node is a namespace `pt<id>-<node>` with IPv4/IPv6 forwarding on;
//! * every pod (external or not) is a namespace `pt<id>-<pod>` whose `eth0` is a veth whose
//!   other end, [`Pod::host_ifname`], lives in its node's namespace; pod addresses are /32 and
//!   /128, the pod's default routes go via `169.254.1.1` and `fe80::1`, both addresses of the host
//!   side, and the node routes each local pod address to its veth;
//! * with more than one node, a namespace `pt<id>-fabric` holds a bridge joining the nodes' `fab0`
//!   interfaces; every node routes the pods of the other nodes via their fabric address.
//!
//! `<id>` is unique per [`Testbed`], so several test beds, even of the same topology, coexist.
//! Dropping the [`Testbed`] deletes every namespace it created (which deletes the veths too).
//! Real traffic: see [`traffic`]. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW) and
//! iproute2.
#![deny(unsafe_code)]

pub mod agent;
pub mod browser;
pub mod dns;
mod ip;
pub mod k8s_api;
pub mod netns;
pub mod relay;
pub mod servers;
mod sys;
pub mod traffic;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

pub use periscope_topology::{Pod, Topology, TopologyError};

use crate::ip::Batch;

/// A MAC address.
pub type Mac = [u8; 6];

/// Prefix of every namespace the test bed creates: `pt<id>-…`.
pub const NETNS_PREFIX: &str = "pt";
/// The pod-side interface name.
pub const POD_IFNAME: &str = "eth0";
/// The node's interface towards the fabric.
pub const FABRIC_IFNAME: &str = "fab0";
/// The bridge in the fabric namespace.
pub const FABRIC_BRIDGE: &str = "br0";
/// The IPv4 gateway of every pod: an address of the host-side veth.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway of every pod: the link-local address of the host-side veth.
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Most nodes a test bed supports (one fabric /24).
pub const MAX_NODES: usize = 250;
/// Most pods a test bed supports (they number the MAC addresses).
pub const MAX_PODS: usize = 65_000;

/// The fabric IPv4 address of the node with 0-based `index`: `172.31.255.<index+1>`.
pub fn fabric_ipv4(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 255, (index + 1) as u8)
}

/// The fabric IPv6 address of the node with 0-based `index`: `fd00:fab::<index+1>`.
pub fn fabric_ipv6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xfab, 0, 0, 0, 0, 0, (index + 1) as u16)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a test bed could not be created or torn down.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A [`TestbedOptions`] field is invalid; nothing was created.
    #[error("invalid test bed option `{option}`: {reason}")]
    InvalidOption {
        /// The field.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The topology does not validate.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The topology is valid but beyond what the test bed supports.
    #[error("topology not supported by the test bed: {0}")]
    Unsupported(String),
    /// A namespace of this id exists already (not ours: it is left alone).
    #[error(
        "network namespace {netns} already exists (left over by a crashed run? remove it with \
         Testbed::cleanup_stale({id:?}) or TestbedOptions::replace_stale)"
    )]
    Exists {
        /// The namespace.
        netns: String,
        /// The test bed id.
        id: String,
    },
    /// An `ip` command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The namespace it ran in (`ip -n`), if any.
        netns: Option<String>,
        /// The command, e.g. `ip -n pt1a2b3-node-1 link add lxc0a1b2c3d type veth …`.
        command: String,
        /// Its error output.
        stderr: String,
    },
    /// Another system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (names the namespace).
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Teardown left namespaces behind.
    #[error("could not delete network namespaces {remaining:?}: {reason}")]
    Teardown {
        /// The namespaces still there.
        remaining: Vec<String>,
        /// The first error seen.
        reason: String,
    },
}

/// How to create a test bed.
#[derive(Clone, Debug, Default)]
pub struct TestbedOptions {
    /// The id (1–12 characters `a-z0-9`); namespaces are named `pt<id>-…`. Default: a fresh
    /// 5-character id, unique among the test beds of this machine.
    pub id: Option<String>,
    /// If namespaces `pt<id>-…` exist already (a crashed run with this `id`), delete them first
    /// instead of failing with [`TestbedError::Exists`].
    pub replace_stale: bool,
    /// Leave the namespaces in place when the [`Testbed`] is dropped (for debugging; remove them
    /// later with [`Testbed::cleanup_stale`]). A failed creation always cleans up.
    pub keep: bool,
}

/// A node of a running test bed.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    /// Node name from the topology.
    pub name: String,
    /// Its 0-based index in the topology.
    pub index: usize,
    /// Namespace name, `pt<id>-<node>`.
    pub netns: String,
    /// `/run/netns/<netns>`.
    pub netns_path: PathBuf,
    /// Fabric addresses (`fab0`), when the test bed has more than one node.
    pub fabric_ipv4: Option<Ipv4Addr>,
    /// See `fabric_ipv4`.
    pub fabric_ipv6: Option<Ipv6Addr>,
}

impl NodeHandle {
    /// Runs `f` on a new thread inside the node's namespace (see [`PodHandle::run`]).
    pub fn run<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> R {
        netns::run_in(&self.netns_path, f)
    }

    /// Starts `f` on a new thread inside the node's namespace.
    pub fn spawn<F: FnOnce() -> R + Send + 'static, R: Send + 'static>(
        &self,
        f: F,
    ) -> JoinHandle<R> {
        netns::spawn_in(&self.netns_path, f)
    }

    /// Runs a program in the node's namespace (`ip netns exec`).
    pub fn exec<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: I,
    ) -> Output {
        netns::exec_in(&self.netns, program, args)
    }
}

/// A pod of a running test bed.
#[derive(Clone, Debug)]
pub struct PodHandle {
    /// The pod as in the topology.
    pub spec: Pod,
    /// Namespace name, `pt<id>-<pod>`.
    pub netns: String,
    /// `/run/netns/<netns>`.
    pub netns_path: PathBuf,
    /// Namespace of its node.
    pub node_netns: String,
    /// Host-side veth name (in the node's namespace).
    pub host_ifname: String,
    eth0_mac: Mac,
    host_mac: Mac,
}

impl PodHandle {
    /// `namespace/name` (or `name` for pods without namespace).
    pub fn name(&self) -> String {
        self.spec.full_name()
    }

    /// The pod's IPv4 address.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.spec.ipv4()
    }

    /// The pod's IPv6 address.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.spec.ipv6()
    }

    /// `ipv4:port`; panics if the pod has no IPv4 address.
    pub fn v4(&self, port: u16) -> SocketAddr {
        let ip = self
            .ipv4()
            .unwrap_or_else(|| panic!("pod {} has no IPv4 address", self.name()));
        SocketAddr::new(ip.into(), port)
    }

    /// `[ipv6]:port`; panics if the pod has no IPv6 address.
    pub fn v6(&self, port: u16) -> SocketAddr {
        let ip = self
            .ipv6()
            .unwrap_or_else(|| panic!("pod {} has no IPv6 address", self.name()));
        SocketAddr::new(ip.into(), port)
    }

    /// Whether the pod is an external host.
    pub fn is_external(&self) -> bool {
        self.spec.external
    }

    /// MAC address of the pod's `eth0`.
    pub fn eth0_mac(&self) -> Mac {
        self.eth0_mac
    }

    /// MAC address of the host-side veth (the pod's next hop).
    pub fn host_mac(&self) -> Mac {
        self.host_mac
    }

    /// Runs `f` on a fresh OS thread that is inside the pod's network namespace, and returns its
    /// result (a panic in `f` is propagated). Sockets created in `f` stay in the pod's namespace.
    /// Panics if the namespace cannot be entered.
    pub fn run<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> R {
        netns::run_in(&self.netns_path, f)
    }

    /// Like [`run`](Self::run), but returns an error if the namespace cannot be entered.
    pub fn try_run<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> io::Result<R> {
        netns::try_run_in(&self.netns_path, f)
    }

    /// Starts `f` on a new thread inside the pod's namespace.
    pub fn spawn<F: FnOnce() -> R + Send + 'static, R: Send + 'static>(
        &self,
        f: F,
    ) -> JoinHandle<R> {
        netns::spawn_in(&self.netns_path, f)
    }

    /// Runs a program in the pod's namespace (`ip netns exec`); panics only if `ip` cannot start.
    pub fn exec<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: I,
    ) -> Output {
        netns::exec_in(&self.netns, program, args)
    }
}

/// A topology created for real. Dropping it deletes all its namespaces.
#[derive(Debug)]
pub struct Testbed {
    id: String,
    topology: Topology,
    nodes: Vec<NodeHandle>,
    pods: Vec<PodHandle>,
    fabric: Option<String>,
    blackhole_v4: Ipv4Addr,
    blackhole_v6: Ipv6Addr,
    /// Namespaces created by us and not yet deleted.
    created: Vec<String>,
    keep: bool,
}

impl Testbed {
    /// Creates `topology`: namespaces, veths, addresses, routes. On error, everything created so
    /// far is deleted again.
    pub fn create(topology: &Topology, options: TestbedOptions) -> Result<Testbed, TestbedError> {
        topology.validate(Path::new("<testbed topology>"))?;
        if topology.nodes.len() > MAX_NODES {
            return Err(TestbedError::Unsupported(format!(
                "more than {MAX_NODES} nodes"
            )));
        }
        if topology.pods.len() > MAX_PODS {
            return Err(TestbedError::Unsupported(format!(
                "more than {MAX_PODS} pods"
            )));
        }
        let id = match &options.id {
            Some(id) => {
                check_id(id).map_err(|reason| TestbedError::InvalidOption {
                    option: "id",
                    reason,
                })?;
                let existing = list_io(id)?;
                if let Some(first) = existing.first() {
                    if options.replace_stale {
                        Self::cleanup_stale(id)?;
                    } else {
                        return Err(TestbedError::Exists {
                            netns: first.clone(),
                            id: id.clone(),
                        });
                    }
                }
                id.clone()
            }
            None => loop {
                let id = generate_id();
                if list_io(&id)?.is_empty() {
                    break id;
                }
            },
        };
        let mut tb = Testbed::plan(id, topology);
        // On error `tb` is dropped here, which deletes what was created so far.
        tb.build()?;
        tb.keep = options.keep;
        Ok(tb)
    }

    /// Handles to a test bed that another process created with `keep: true` and the same
    /// topology and id (e.g. a detached demo). Nothing is created; dropping it deletes nothing.
    pub fn attach(topology: &Topology, id: &str) -> Result<Testbed, TestbedError> {
        check_id(id).map_err(|reason| TestbedError::InvalidOption {
            option: "id",
            reason,
        })?;
        let mut tb = Testbed::plan(id.to_string(), topology);
        let existing = list_io(id)?;
        if let Some(missing) = tb
            .pods
            .iter()
            .map(|p| &p.netns)
            .find(|n| !existing.contains(n))
        {
            return Err(TestbedError::InvalidOption {
                option: "id",
                reason: format!("namespace {missing} of test bed {id} does not exist"),
            });
        }
        tb.keep = true;
        Ok(tb)
    }

    /// Parses topology YAML and creates it.
    pub fn from_yaml(yaml: &str, options: TestbedOptions) -> Result<Testbed, TestbedError> {
        let topology = Topology::parse(yaml, Path::new("<inline topology>"))?;
        Self::create(&topology, options)
    }

    /// Deletes every namespace `pt<id>-…` (left over by a crashed run with this id); returns their
    /// names. Touches no other namespace.
    pub fn cleanup_stale(id: &str) -> Result<Vec<String>, TestbedError> {
        check_id(id).map_err(|reason| TestbedError::InvalidOption {
            option: "id",
            reason,
        })?;
        let names = list_io(id)?;
        delete_namespaces(&names)?;
        Ok(names)
    }

    /// The namespaces `pt<id>-…` that exist now.
    pub fn list_namespaces(id: &str) -> io::Result<Vec<String>> {
        netns::list(&format!("{NETNS_PREFIX}{id}-"))
    }

    /// Deletes the namespaces now and returns errors (dropping does the same and only prints them).
    pub fn teardown(mut self) -> Result<(), TestbedError> {
        self.keep = false;
        self.delete_created()
    }

    /// The id (`pt<id>-…` namespaces).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// All namespaces of this test bed.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    /// A node by name; panics if there is none.
    pub fn node(&self, name: &str) -> &NodeHandle {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                panic!("test bed {}: no node {name:?} (nodes: {names:?})", self.id)
            })
    }

    /// The namespace name of `node`; panics if there is no such node.
    pub fn node_netns(&self, node: &str) -> &str {
        &self.node(node).netns
    }

    /// `/run/netns/…` of `node`; panics if there is no such node.
    pub fn node_netns_path(&self, node: &str) -> PathBuf {
        self.node(node).netns_path.clone()
    }

    /// The fabric namespace (only with more than one node).
    pub fn fabric_netns(&self) -> Option<&str> {
        self.fabric.as_deref()
    }

    /// The pods.
    pub fn pods(&self) -> &[PodHandle] {
        &self.pods
    }

    /// A pod by `namespace/name` or unique bare name, if any.
    pub fn try_pod(&self, name: &str) -> Option<&PodHandle> {
        let spec = self.topology.pod(name)?;
        self.pods
            .iter()
            .find(|p| p.spec.full_name() == spec.full_name())
    }

    /// A pod by `namespace/name` or unique bare name; panics if unknown or ambiguous.
    pub fn pod(&self, name: &str) -> &PodHandle {
        self.try_pod(name).unwrap_or_else(|| {
            let names: Vec<String> = self.pods.iter().map(PodHandle::name).collect();
            panic!(
                "test bed {}: no pod {name:?} (unknown or ambiguous; pods: {names:?})",
                self.id
            )
        })
    }

    /// MAC address of the host-side veth of pod `name`; panics if unknown.
    pub fn host_mac(&self, pod: &str) -> Mac {
        self.pod(pod).host_mac
    }

    /// Runs `f` on a new thread inside `node`'s namespace; panics if there is no such node.
    pub fn in_node<F: FnOnce() -> R + Send, R: Send>(&self, node: &str, f: F) -> R {
        self.node(node).run(f)
    }

    /// An IPv4 address that every node routes to a blackhole: packets to it are dropped silently
    /// (no ICMP error), so probes to it time out. It belongs to no pod.
    pub fn blackhole_ipv4(&self) -> Ipv4Addr {
        self.blackhole_v4
    }

    /// IPv6 counterpart of [`blackhole_ipv4`](Self::blackhole_ipv4).
    pub fn blackhole_ipv6(&self) -> Ipv6Addr {
        self.blackhole_v6
    }

    /// Names everything; creates nothing.
    fn plan(id: String, topology: &Topology) -> Testbed {
        let prefix = format!("{NETNS_PREFIX}{id}-");
        let mut used = HashSet::new();
        let mut alloc = |candidates: &[String]| -> String {
            for c in candidates {
                let name = format!("{prefix}{}", sanitize(c));
                if used.insert(name.clone()) {
                    return name;
                }
            }
            let base = format!("{prefix}{}", sanitize(&candidates[0]));
            (2..)
                .map(|i| format!("{base}-{i}"))
                .find(|n| used.insert(n.clone()))
                .expect("unbounded")
        };
        let multi = topology.nodes.len() > 1;
        let nodes: Vec<NodeHandle> = topology
            .nodes
            .iter()
            .enumerate()
            .map(|(index, n)| {
                let netns = alloc(std::slice::from_ref(&n.name));
                NodeHandle {
                    name: n.name.clone(),
                    index,
                    netns_path: netns::netns_path(&netns),
                    netns,
                    fabric_ipv4: multi.then(|| fabric_ipv4(index)),
                    fabric_ipv6: multi.then(|| fabric_ipv6(index)),
                }
            })
            .collect();
        let fabric = multi.then(|| alloc(&["fabric".to_string()]));
        let pods = topology
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let netns = alloc(&[p.name.clone(), format!("{}-{}", p.namespace, p.name)]);
                let node_netns = nodes
                    .iter()
                    .find(|n| n.name == p.node)
                    .expect("validated")
                    .netns
                    .clone();
                let [hi, lo] = ((i + 1) as u16).to_be_bytes();
                PodHandle {
                    spec: p.clone(),
                    netns_path: netns::netns_path(&netns),
                    netns,
                    node_netns,
                    host_ifname: p.host_ifname(),
                    eth0_mac: [0x02, 0x70, 0x74, 0x01, hi, lo],
                    host_mac: [0x02, 0x70, 0x74, 0x00, hi, lo],
                }
            })
            .collect();
        let used_ips: HashSet<IpAddr> = topology
            .pods
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let blackhole_v4 = (1..=254u8)
            .rev()
            .map(|i| Ipv4Addr::new(192, 0, 2, i))
            .find(|ip| !used_ips.contains(&(*ip).into()))
            .expect("at most 254 pods in 192.0.2.0/24");
        let blackhole_v6 = (1..=0xfffeu16)
            .rev()
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0, 0, 0, 0, i))
            .find(|ip| !used_ips.contains(&(*ip).into()))
            .expect("free blackhole address");
        Testbed {
            id,
            topology: topology.clone(),
            nodes,
            pods,
            fabric,
            blackhole_v4,
            blackhole_v6,
            created: Vec::new(),
            keep: false,
        }
    }

    /// Creates everything planned. Each step records what it created in `self.created`.
    fn build(&mut self) -> Result<(), TestbedError> {
        // 1. Namespaces.
        let all: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.netns.clone())
            .chain(self.fabric.clone())
            .chain(self.pods.iter().map(|p| p.netns.clone()))
            .collect();
        let mut batch = Batch::new(None);
        for name in &all {
            batch.push(format!("netns add {name}"));
        }
        // `ip netns add` makes /run/netns a shared bind mount the first time; concurrent first
        // calls can stack two such mounts. Serialise within the process.
        static NETNS_ADD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let result = {
            let _guard = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
            batch.run(false)
        };
        // Whatever exists now was created by us (we checked that none existed before).
        for name in &all {
            if netns::netns_path(name).exists() {
                self.created.push(name.clone());
            }
        }
        result.map_err(|(_, e)| e)?;

        // 2. Sysctls, before any interface exists so that `default` applies to all of them.
        let no_dad = [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.dad_transmits", "0"),
            ("net.ipv6.conf.default.dad_transmits", "0"),
        ];
        let quiet = [
            ("net.ipv6.conf.all.router_solicitations", "0"),
            ("net.ipv6.conf.default.router_solicitations", "0"),
        ];
        let mut node_settings = vec![
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ];
        node_settings.extend(no_dad);
        node_settings.extend(quiet);
        let mut pod_settings = no_dad.to_vec();
        pod_settings.extend(quiet);
        pod_settings.push(("net.ipv6.conf.default.accept_ra", "0"));
        // No IPv6 on the bridge and its ports: no link-local addresses, MLD or RS on the fabric.
        let fabric_settings = [
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ];
        let jobs = self
            .nodes
            .iter()
            .map(|n| (&n.netns, &n.netns_path, &node_settings[..]))
            .chain(
                self.pods
                    .iter()
                    .map(|p| (&p.netns, &p.netns_path, &pod_settings[..])),
            );
        for (name, path, settings) in jobs {
            netns::write_sysctls(path, settings).map_err(|source| TestbedError::Io {
                context: format!("netns {name}: setting sysctls"),
                source,
            })?;
        }
        if let Some(fabric) = &self.fabric {
            netns::write_sysctls(&netns::netns_path(fabric), &fabric_settings).map_err(
                |source| TestbedError::Io {
                    context: format!("netns {fabric}: setting sysctls"),
                    source,
                },
            )?;
        }

        // 3. Fabric: a bridge, and a veth to each node (`fab0` on the node side).
        if let Some(fabric) = &self.fabric {
            let mut b = Batch::new(Some(fabric));
            b.push("link set lo up");
            b.push(format!(
                "link add {FABRIC_BRIDGE} type bridge stp_state 0 mcast_snooping 0"
            ));
            b.push(format!("link set {FABRIC_BRIDGE} up"));
            for n in &self.nodes {
                let port = format!("n{}", n.index + 1);
                let [hi, lo] = ((n.index + 1) as u16).to_be_bytes();
                b.push(format!(
                    "link add {port} address {} type veth peer name {FABRIC_IFNAME} address {} netns {}",
                    format_mac(&[0x02, 0x70, 0x74, 0xfb, hi, lo]),
                    format_mac(&[0x02, 0x70, 0x74, 0xfa, hi, lo]),
                    n.netns
                ));
                b.push(format!("link set {port} master {FABRIC_BRIDGE}"));
                b.push(format!("link set {port} up"));
            }
            b.run(false).map_err(|(_, e)| e)?;
        }

        // 4. Nodes, first half: loopback, fabric address, the pods' veths (pod side straight
        //    into the pod's namespace, so that nothing is ever created in the root namespace).
        for n in &self.nodes {
            let mut b = Batch::new(Some(&n.netns));
            b.push("link set lo up");
            if let (Some(v4), Some(v6)) = (n.fabric_ipv4, n.fabric_ipv6) {
                b.push(format!("addr add {v4}/24 dev {FABRIC_IFNAME}"));
                b.push(format!("addr add {v6}/64 dev {FABRIC_IFNAME} nodad"));
                b.push(format!("link set {FABRIC_IFNAME} up"));
            }
            for p in self.pods.iter().filter(|p| p.spec.node == n.name) {
                b.push(format!(
                    "link add {} address {} type veth peer name {POD_IFNAME} address {} netns {}",
                    p.host_ifname,
                    format_mac(&p.host_mac),
                    format_mac(&p.eth0_mac),
                    p.netns
                ));
                b.push(format!("link set {} up", p.host_ifname));
            }
            b.run(false).map_err(|(_, e)| e)?;
        }

        // 5. Pods: addresses and default routes via the host-side veth.
        for p in &self.pods {
            let mut b = Batch::new(Some(&p.netns));
            b.push("link set lo up");
            b.push(format!("link set {POD_IFNAME} up"));
            if let Some(v4) = p.ipv4() {
                b.push(format!("addr add {v4}/32 dev {POD_IFNAME}"));
                b.push(format!(
                    "route add {POD_GATEWAY_V4} dev {POD_IFNAME} scope link"
                ));
                b.push(format!(
                    "route add default via {POD_GATEWAY_V4} dev {POD_IFNAME}"
                ));
            }
            if let Some(v6) = p.ipv6() {
                b.push(format!("addr add {v6}/128 dev {POD_IFNAME} nodad"));
                b.push(format!(
                    "route add ::/0 via {POD_GATEWAY_V6} dev {POD_IFNAME}"
                ));
            }
            b.run(false).map_err(|(_, e)| e)?;
        }

        // 6. Nodes, second half: gateway addresses on the host veths, routes to local pods, to
        //    the other nodes' pods via the fabric, and the blackhole.
        for n in &self.nodes {
            let mut b = Batch::new(Some(&n.netns));
            for p in &self.pods {
                if p.spec.node == n.name {
                    let dev = &p.host_ifname;
                    if let Some(v4) = p.ipv4() {
                        b.push(format!("addr add {POD_GATEWAY_V4}/32 dev {dev}"));
                        b.push(format!("route add {v4}/32 dev {dev}"));
                    }
                    if let Some(v6) = p.ipv6() {
                        b.push(format!("addr add {POD_GATEWAY_V6}/64 dev {dev} nodad"));
                        b.push(format!("route add {v6}/128 dev {dev}"));
                    }
                } else {
                    let other = self
                        .nodes
                        .iter()
                        .find(|o| o.name == p.spec.node)
                        .expect("validated");
                    if let (Some(v4), Some(gw)) = (p.ipv4(), other.fabric_ipv4) {
                        b.push(format!("route add {v4}/32 via {gw} dev {FABRIC_IFNAME}"));
                    }
                    if let (Some(v6), Some(gw)) = (p.ipv6(), other.fabric_ipv6) {
                        b.push(format!("route add {v6}/128 via {gw} dev {FABRIC_IFNAME}"));
                    }
                }
            }
            b.push(format!("route add blackhole {}/32", self.blackhole_v4));
            b.push(format!("route add blackhole {}/128", self.blackhole_v6));
            b.run(false).map_err(|(_, e)| e)?;
        }
        Ok(())
    }

    fn delete_created(&mut self) -> Result<(), TestbedError> {
        let names = std::mem::take(&mut self.created);
        delete_namespaces(&names)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "periscope-testbed: keeping test bed {} (namespaces {:?}); remove with Testbed::cleanup_stale({:?})",
                self.id, self.created, self.id
            );
            return;
        }
        if let Err(e) = self.delete_created() {
            eprintln!("periscope-testbed: teardown of test bed {}: {e}", self.id);
        }
    }
}

/// Deletes namespaces (pods first: their veths go with them), tolerating ones already gone.
fn delete_namespaces(names: &[String]) -> Result<(), TestbedError> {
    if names.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new(None);
    for name in names.iter().rev() {
        batch.push(format!("netns del {name}"));
    }
    let first_error = batch.run(true).err().map(|(_, e)| e.to_string());
    let remaining: Vec<String> = names
        .iter()
        .filter(|n| netns::netns_path(n).exists())
        .cloned()
        .collect();
    if remaining.is_empty() {
        Ok(())
    } else {
        Err(TestbedError::Teardown {
            remaining,
            reason: first_error.unwrap_or_else(|| "unknown".into()),
        })
    }
}

fn list_io(id: &str) -> Result<Vec<String>, TestbedError> {
    Testbed::list_namespaces(id).map_err(|source| TestbedError::Io {
        context: format!("listing {}", netns::NETNS_DIR),
        source,
    })
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 12
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Err(format!("{id:?}: must be 1 to 12 characters a-z, 0-9"))
    } else {
        Ok(())
    }
}

/// A fresh 5-character id from the pid, a process-wide counter and the time.
fn generate_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = splitmix(u64::from(std::process::id()) ^ splitmix(n ^ splitmix(nanos)));
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..5)
        .map(|_| {
            let c = DIGITS[(x % 36) as usize] as char;
            x /= 36;
            c
        })
        .collect()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Keeps `a-z0-9.-` (others become `-`), at most 40 characters.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() { "x".to_string() } else { s }
}

/// A flow's (source, destination) TCP or UDP ports; (0, 0) for other protocols.
pub fn ports(f: &periscope_proto::flow::Flow) -> (u32, u32) {
    use periscope_proto::flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol) {
        Some(Protocol::Tcp(t)) => (t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => (u.source_port, u.destination_port),
        _ => (0, 0),
    }
}
/// A scratch directory under the system's temp dir (`periscope-<what>-<pid>-<name>`, emptied
/// first), removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `periscope-<what>-<pid>-<name>`.
    pub fn new(what: &str, name: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("periscope-{what}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The answer (status line, headers and body) of an HTTP/1.1 GET of `path` from `addr`
/// (the agent's metrics endpoint, the relay's HTTP API); panics if it cannot be read.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPO: &str = r#"
nodes: [{name: node-1}, {name: fabric}]
pods:
  - {name: a, namespace: ns1, node: node-1, ips: [10.200.0.1, "fd00::1"]}
  - {name: a, namespace: ns2, node: fabric, ips: [10.200.0.2]}
  - {name: node-1, namespace: ns2, node: fabric, ips: [192.0.2.254]}
"#;

    #[test]
    fn ids_are_short_and_distinct() {
        let ids: HashSet<String> = (0..1000).map(|_| generate_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 5);
            check_id(id).unwrap();
        }
        assert!(check_id("Bad").is_err());
        assert!(check_id("a-b").is_err());
        assert!(check_id("").is_err());
        assert!(check_id("0123456789abc").is_err());
    }

    #[test]
    fn plan_names_are_unique_and_prefixed() {
        let topo = Topology::parse(TOPO, Path::new("t.yaml")).unwrap();
        let tb = Testbed::plan("abcde".into(), &topo);
        let mut names: Vec<&str> = tb.nodes.iter().map(|n| n.netns.as_str()).collect();
        names.extend(tb.fabric.as_deref());
        names.extend(tb.pods.iter().map(|p| p.netns.as_str()));
        assert_eq!(
            names,
            [
                "ptabcde-node-1",
                "ptabcde-fabric",
                "ptabcde-fabric-2",
                "ptabcde-a",
                "ptabcde-ns2-a",
                "ptabcde-ns2-node-1"
            ]
        );
        assert_eq!(tb.pods[1].node_netns, "ptabcde-fabric");
        assert_eq!(tb.blackhole_v4, Ipv4Addr::new(192, 0, 2, 253));
        assert_ne!(tb.pods[0].host_mac, tb.pods[0].eth0_mac);
        assert_ne!(tb.pods[0].host_mac, tb.pods[1].host_mac);
        assert_eq!(
            tb.nodes[1].fabric_ipv4,
            Some(Ipv4Addr::new(172, 31, 255, 2))
        );
        assert_eq!(tb.pod("ns2/a").netns, "ptabcde-ns2-a");
        assert!(tb.try_pod("a").is_none(), "bare name `a` is ambiguous");
        // Nothing was created: dropping the plan deletes nothing.
        assert!(tb.created.is_empty());
    }

    #[test]
    fn sanitizes() {
        assert_eq!(sanitize("a_B.c"), "a--.c");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 40);
        assert_eq!(
            format_mac(&[2, 0x70, 0x74, 0, 0xab, 1]),
            "02:70:74:00:ab:01"
        );
    }
}

#![forbid(unsafe_code)]
//! The topology file: nodes and the pods (endpoints) on them, with namespaces, labels and IPs.
//!
//! The same file drives the test bed (which creates the pods as network namespaces) and the agent
//! (which turns the pods of its node into endpoints with identities). Format, in YAML:
//!
//! ```yaml
//! cluster: default            # optional; cluster name (default "default")
//! nodes:                      # at least one
//!   - name: node-1
//!     address: 10.0.0.1:4244   # optional; where the node's agent serves gRPC
//! pods:
//!   - name: frontend-1        # unique per namespace; DNS-label syntax
//!     namespace: shop         # required for endpoints
//!     node: node-1            # must name a node above
//!     labels: {app: frontend} # security-relevant labels (become the identity)
//!     ips: [10.200.1.10, "fd00:200::1:10"]  # one IPv4 and/or one IPv6, unique in the file
//!     external: false         # optional; true = a host outside the cluster: no endpoint,
//!                             #   no policy, identity "world" (or a CIDR identity)
//!     interface: lxc0a1b2c3d  # optional; host-side interface name (default: see host_ifname)
//!     workload: {kind: Deployment, name: frontend}  # optional
//!     identity: 300           # optional; fixed security identity (default: from the labels)
//!     ports:                  # optional; the pod's container ports, as Kubernetes' containerPorts
//!       - {name: http, containerPort: 8080}              # protocol TCP by default
//!       - {name: dns, containerPort: 53, protocol: UDP}  # TCP, UDP or SCTP
//! ```
//!
//! `ports` give policies' named ports (`toPorts: [{ports: [{port: http}]}]`) their numbers: an
//! ingress rule resolves a name against the ports of the endpoint it selects, an egress rule
//! against the ports of its peers. A `name` is an IANA service name (1-15 characters: lower-case
//! letters, digits and `-`, at least one letter, no `-` at either end or twice in a row), unique
//! within the pod; ports without a name are allowed and serve no policy. Ports of external
//! hosts are not used.
//!
//! Services (load-balanced in the datapath, see `services` below):
//!
//! ```yaml
//! nodes:
//!   - name: node-1
//!     ips: [192.168.10.1]        # optional; the node's addresses: NodePort frontends
//! services:
//!   - name: api                 # unique per namespace
//!     namespace: shop
//!     clusterIP: 10.96.0.10     # and/or clusterIPs: [10.96.0.10, "fd00:96::10"]
//!     externalIPs: [203.0.113.7]             # optional; more frontends
//!     sessionAffinityTimeoutSeconds: 600     # optional; ClientIP session affinity
//!     ports:
//!       - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
//!     backends:                              # pod addresses; port = the targetPort
//!       - {ip: 10.200.1.10}                  # weight 1, state active
//!       - {ip: 10.200.1.11, weight: 2, state: terminating}
//! ```
//!
//! Every error names the file and the offending field or pod.
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A parsed and validated topology.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Cluster name.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The pods, VMs and hosts.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Load-balanced services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

/// A service: frontends (cluster IPs, external IPs, node ports) balanced over backends.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Name, unique within its namespace.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The cluster IP (one family); `clusterIPs` gives more.
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<IpAddr>,
    /// Cluster IPs (at most one per family, with `clusterIP`).
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    /// External IPs: frontends too.
    #[serde(default, rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<IpAddr>,
    /// ClientIP session affinity with this timeout (seconds, 1-86400); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_timeout_seconds: Option<u32>,
    /// The service ports (at least one).
    pub ports: Vec<ServicePort>,
    /// The backends (may be empty: new connections are then dropped).
    #[serde(default)]
    pub backends: Vec<ServiceBackend>,
}

/// A port of a service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Name (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The frontend port, 1-65535.
    pub port: u16,
    /// `TCP` (default) or `UDP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The backends' port (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// A node port: a frontend on every address of every node (`nodes[].ips`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

fn default_protocol() -> String {
    "TCP".into()
}

fn default_weight() -> u16 {
    1
}

/// A backend of a service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceBackend {
    /// Address (a pod's).
    pub ip: IpAddr,
    /// Port for every service port (default: each port's `targetPort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Maglev weight (default 1; 0 = no new connections).
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// `active` (default) or `terminating` (no new connections, established ones go on).
    #[serde(default)]
    pub state: BackendState,
}

/// State of a backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new connections.
    #[default]
    Active,
    /// Takes no new connections.
    Terminating,
}

impl Service {
    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The cluster IPs (`clusterIP` and `clusterIPs`, without repeats).
    pub fn all_cluster_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self.cluster_ip.iter().copied().collect();
        for ip in &self.cluster_ips {
            if !out.contains(ip) {
                out.push(*ip);
            }
        }
        out
    }

    /// Every frontend of the service: (address, port, IP protocol number, kind, index of the
    /// port in `ports`). Kinds: `ClusterIP`, `ExternalIPs`, `NodePort`. Node ports are on the
    /// addresses of `nodes`.
    pub fn frontends(&self, nodes: &[Node]) -> Vec<(IpAddr, u16, u8, &'static str, usize)> {
        let mut out = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            let proto = match PortProtocol::parse(&p.protocol) {
                Some(PortProtocol::Tcp) => 6,
                Some(PortProtocol::Udp) => 17,
                _ => continue,
            };
            for ip in self.all_cluster_ips() {
                out.push((ip, p.port, proto, "ClusterIP", i));
            }
            for ip in &self.external_ips {
                out.push((*ip, p.port, proto, "ExternalIPs", i));
            }
            if let Some(np) = p.node_port {
                for ip in nodes.iter().flat_map(|n| &n.ips) {
                    out.push((*ip, np, proto, "NodePort", i));
                }
            }
        }
        out
    }
}

fn default_cluster() -> String {
    "default".to_string()
}

/// A node: one agent, one set of pinned datapath maps.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Where this node's agent serves its gRPC API (`host:port`), announced to relays by every
    /// agent's Peer service. Optional.
    #[serde(default)]
    pub address: Option<String>,
    /// The node's own addresses: frontends of node ports. Optional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

/// The owning workload of a pod.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// A pod (or VM, or bare-metal host) with its addresses and labels.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    /// Name, unique within its namespace.
    pub name: String,
    /// Namespace (empty for external hosts).
    #[serde(default)]
    pub namespace: String,
    /// Node the pod runs on.
    pub node: String,
    /// Labels (key → value).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Addresses: at most one IPv4 and one IPv6.
    pub ips: Vec<IpAddr>,
    /// A host outside the cluster: attached to the node's network but not an endpoint.
    #[serde(default)]
    pub external: bool,
    /// Host-side interface name; default [`host_ifname`] of namespace and name.
    #[serde(default)]
    pub interface: Option<String>,
    /// Owning workload.
    #[serde(default)]
    pub workload: Option<Workload>,
    /// A fixed security identity (as assigned by a kvstore); default: derived from the labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// Container ports (Kubernetes' `containerPorts`): the numbers of policies' named ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

/// A port of a pod's containers, as in Kubernetes' `containerPorts`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    /// IANA service name (`http`), unique within the pod: what policies' named ports refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number, 1-65535.
    pub container_port: u16,
    /// Transport protocol (default TCP).
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// Transport protocol of a container port.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum PortProtocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl PortProtocol {
    /// The IP protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            PortProtocol::Tcp => 6,
            PortProtocol::Udp => 17,
            PortProtocol::Sctp => 132,
        }
    }

    /// Parses `TCP`, `UDP` or `SCTP` (any case, as kvstores write it).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(PortProtocol::Tcp),
            "UDP" => Some(PortProtocol::Udp),
            "SCTP" => Some(PortProtocol::Sctp),
            _ => None,
        }
    }
}

/// Checks a port name against Kubernetes' IANA_SVC_NAME: 1-15 characters, lower-case letters,
/// digits and `-`, at least one letter, no `-` at either end, no `--`.
pub fn check_port_name(s: &str) -> Result<(), String> {
    let reason = if s.is_empty() || s.len() > 15 {
        Some("1-15 characters")
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("only lower-case letters, digits and '-'")
    } else if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        Some("at least one letter")
    } else if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        Some("no '-' at either end or twice in a row")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(r) => Err(format!("{s:?} is not a valid port name ({r})")),
    }
}

impl Pod {
    /// `namespace/name`, or `name` for pods without namespace.
    pub fn full_name(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    /// The IPv4 address, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The IPv6 address, if any.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }

    /// The host-side interface name of this pod's veth.
    pub fn host_ifname(&self) -> String {
        self.interface
            .clone()
            .unwrap_or_else(|| host_ifname(&self.namespace, &self.name))
    }
}

/// Default host-side interface name of a pod: `lxc` + 8 hex digits of a hash of
/// `namespace/name` (Cilium's naming style; 11 characters, within IFNAMSIZ).
pub fn host_ifname(namespace: &str, name: &str) -> String {
    // FNV-1a, 32 bits: stable across versions and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(name.bytes())
    {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("lxc{h:08x}")
}

/// Why a topology file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("topology {path}: cannot read: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// YAML syntax or schema error (unknown field, wrong type, bad IP…).
    #[error("topology {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause, with line and column.
        source: serde_yaml::Error,
    },
    /// A semantic error.
    #[error("topology {path}: {field}: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// The offending field, e.g. `pods[3] (shop/db).node`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates topology YAML; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TopologyError> {
        let topo: Topology = serde_yaml::from_str(text).map_err(|source| TopologyError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        topo.validate(path)?;
        Ok(topo)
    }

    /// Checks names, references and uniqueness.
    pub fn validate(&self, path: &Path) -> Result<(), TopologyError> {
        let invalid = |field: String, reason: String| TopologyError::Invalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        if self.nodes.is_empty() {
            return Err(invalid(
                "nodes".into(),
                "at least one node is required".into(),
            ));
        }
        let mut nodes = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            check_dns_name(&n.name).map_err(|r| invalid(format!("nodes[{i}].name"), r))?;
            if !nodes.insert(n.name.as_str()) {
                return Err(invalid(
                    format!("nodes[{i}].name"),
                    format!("duplicate node {:?}", n.name),
                ));
            }
        }
        let mut pods = HashSet::new();
        let mut ips = HashSet::new();
        let mut ifnames = HashSet::new();
        for (i, p) in self.pods.iter().enumerate() {
            let at = |f: &str| format!("pods[{i}] ({}).{f}", p.full_name());
            check_dns_name(&p.name).map_err(|r| invalid(at("name"), r))?;
            if !p.namespace.is_empty() {
                check_dns_name(&p.namespace).map_err(|r| invalid(at("namespace"), r))?;
            } else if !p.external {
                return Err(invalid(
                    at("namespace"),
                    "required for endpoints (external: false)".into(),
                ));
            }
            if !nodes.contains(p.node.as_str()) {
                return Err(invalid(
                    at("node"),
                    format!("no node named {:?} in nodes", p.node),
                ));
            }
            if !pods.insert(p.full_name()) {
                return Err(invalid(at("name"), "duplicate pod".into()));
            }
            if p.ips.is_empty() {
                return Err(invalid(
                    at("ips"),
                    "at least one address is required".into(),
                ));
            }
            if p.ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
                || p.ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
            {
                return Err(invalid(
                    at("ips"),
                    "at most one IPv4 and one IPv6 address".into(),
                ));
            }
            for ip in &p.ips {
                if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                    return Err(invalid(at("ips"), format!("{ip} cannot be a pod address")));
                }
                if !ips.insert(*ip) {
                    return Err(invalid(at("ips"), format!("{ip} is used by another pod")));
                }
            }
            for (k, v) in &p.labels {
                check_label(k, v).map_err(|r| invalid(at(&format!("labels.{k}")), r))?;
            }
            let mut port_names = HashSet::new();
            for (j, port) in p.ports.iter().enumerate() {
                if port.container_port == 0 {
                    return Err(invalid(
                        at(&format!("ports[{j}].containerPort")),
                        "0 is not a port (1-65535)".into(),
                    ));
                }
                if let Some(name) = &port.name {
                    check_port_name(name)
                        .map_err(|r| invalid(at(&format!("ports[{j}].name")), r))?;
                    if !port_names.insert(name.as_str()) {
                        return Err(invalid(
                            at(&format!("ports[{j}].name")),
                            format!("port name {name:?} is used twice in the pod"),
                        ));
                    }
                }
            }
            let ifname = p.host_ifname();
            if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
                return Err(invalid(
                    at("interface"),
                    format!("{ifname:?} is not a valid interface name"),
                ));
            }
            if !ifnames.insert((p.node.clone(), ifname.clone())) {
                return Err(invalid(
                    at("interface"),
                    format!("{ifname} is used twice on node {}", p.node),
                ));
            }
        }
        self.validate_services(path)
    }

    /// Checks the services: names, ports, protocols, unique frontends, backends.
    fn validate_services(&self, path: &Path) -> Result<(), TopologyError> {
        let invalid = |field: String, reason: String| TopologyError::Invalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        let mut names = HashSet::new();
        let mut frontends: BTreeMap<(IpAddr, u16, u8), String> = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |f: &str| format!("services[{i}] ({}).{f}", s.full_name());
            check_dns_name(&s.name).map_err(|r| invalid(at("name"), r))?;
            check_dns_name(&s.namespace).map_err(|r| invalid(at("namespace"), r))?;
            if !names.insert(s.full_name()) {
                return Err(invalid(at("name"), "duplicate service".into()));
            }
            let ips = s.all_cluster_ips();
            if ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
                || ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
            {
                return Err(invalid(
                    at("clusterIPs"),
                    "at most one IPv4 and one IPv6 cluster IP".into(),
                ));
            }
            if let Some(t) = s.session_affinity_timeout_seconds
                && !(1..=86400).contains(&t)
            {
                return Err(invalid(
                    at("sessionAffinityTimeoutSeconds"),
                    format!("{t} is not within 1-86400"),
                ));
            }
            if s.ports.is_empty() {
                return Err(invalid(at("ports"), "at least one port is required".into()));
            }
            for (j, p) in s.ports.iter().enumerate() {
                let pf = |f: &str| at(&format!("ports[{j}].{f}"));
                if p.port == 0 {
                    return Err(invalid(pf("port"), "0 is not a port (1-65535)".into()));
                }
                match PortProtocol::parse(&p.protocol) {
                    Some(PortProtocol::Tcp | PortProtocol::Udp) => {}
                    _ => {
                        return Err(invalid(
                            pf("protocol"),
                            format!("unknown protocol {:?} (TCP or UDP)", p.protocol),
                        ));
                    }
                }
                if p.target_port == Some(0) {
                    return Err(invalid(
                        pf("targetPort"),
                        "0 is not a port (1-65535)".into(),
                    ));
                }
                if p.node_port == Some(0) {
                    return Err(invalid(pf("nodePort"), "0 is not a port (1-65535)".into()));
                }
                if let Some(name) = &p.name {
                    check_port_name(name).map_err(|r| invalid(pf("name"), r))?;
                }
            }
            for (addr, port, proto, _, j) in s.frontends(&self.nodes) {
                if let Some(other) = frontends.insert((addr, port, proto), s.full_name()) {
                    let proto = if proto == 6 { "TCP" } else { "UDP" };
                    return Err(invalid(
                        at(&format!("ports[{j}]")),
                        format!(
                            "duplicate frontend {}/{proto}: also a frontend of {other}",
                            std::net::SocketAddr::new(addr, port)
                        ),
                    ));
                }
            }
            let mut seen = HashSet::new();
            for (j, b) in s.backends.iter().enumerate() {
                let bf = |f: &str| at(&format!("backends[{j}].{f}"));
                if b.port == Some(0) {
                    return Err(invalid(bf("port"), "0 is not a port (1-65535)".into()));
                }
                if !seen.insert(b.ip) {
                    return Err(invalid(bf("ip"), format!("{} is listed twice", b.ip)));
                }
                if b.ip.is_unspecified() || b.ip.is_multicast() {
                    return Err(invalid(bf("ip"), format!("{} cannot be a backend", b.ip)));
                }
            }
            if !s.backends.is_empty() && s.backends.iter().all(|b| b.weight == 0) {
                return Err(invalid(
                    at("backends"),
                    "every backend has weight 0: give at least one a weight".into(),
                ));
            }
        }
        Ok(())
    }

    /// The pods of `node` that are endpoints (not external).
    pub fn endpoints_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .iter()
            .filter(move |p| p.node == node && !p.external)
    }

    /// Finds a pod by `namespace/name` or bare name (when unique).
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.full_name() == name)
            .or_else(|| {
                let mut it = self.pods.iter().filter(|p| p.name == name);
                let first = it.next()?;
                it.next().is_none().then_some(first)
            })
    }
}

fn check_dns_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name (lower-case letters, digits, '-', '.'; at most 63)"
        ))
    }
}

fn check_label(k: &str, v: &str) -> Result<(), String> {
    let name = k.rsplit('/').next().unwrap_or(k);
    let valid = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if name.is_empty() || name.len() > 63 || !valid(name) || (k.len() - name.len() > 254) {
        return Err(format!("invalid label key {k:?}"));
    }
    if v.len() > 63 || !valid(v) {
        return Err(format!("invalid label value {v:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
nodes: [{name: node-1}]
pods:
  - {name: a, namespace: ns1, node: node-1, labels: {app: a}, ips: [10.200.0.1, "fd00::1"]}
  - {name: w, node: node-1, external: true, ips: [192.0.2.1]}
"#;

    #[test]
    fn parses_and_derives_names() {
        let t = Topology::parse(GOOD, Path::new("t.yaml")).unwrap();
        assert_eq!(t.cluster, "default");
        let a = t.pod("ns1/a").unwrap();
        assert_eq!(a.ipv4(), Some(Ipv4Addr::new(10, 200, 0, 1)));
        assert_eq!(a.ipv6(), Some("fd00::1".parse().unwrap()));
        assert_eq!(a.host_ifname(), host_ifname("ns1", "a"));
        assert_eq!(a.host_ifname().len(), 11);
        assert_eq!(t.endpoints_of("node-1").count(), 1);
        assert!(a.ports.is_empty());
    }

    #[test]
    fn container_ports_parse_and_round_trip() {
        let yaml = GOOD.replace(
            "labels: {app: a},",
            "labels: {app: a}, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}, {containerPort: 9000, protocol: SCTP}],",
        );
        let t = Topology::parse(&yaml, Path::new("t.yaml")).unwrap();
        let ports = &t.pod("ns1/a").unwrap().ports;
        assert_eq!(
            ports,
            &vec![
                ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    protocol: PortProtocol::Tcp
                },
                ContainerPort {
                    name: Some("dns".into()),
                    container_port: 53,
                    protocol: PortProtocol::Udp
                },
                ContainerPort {
                    name: None,
                    container_port: 9000,
                    protocol: PortProtocol::Sctp
                },
            ]
        );
        assert_eq!(
            ports
                .iter()
                .map(|p| p.protocol.number())
                .collect::<Vec<_>>(),
            [6, 17, 132]
        );
        // What the test bed writes for the agent reads back the same.
        let again =
            Topology::parse(&serde_yaml::to_string(&t).unwrap(), Path::new("t2.yaml")).unwrap();
        assert_eq!(again, t);
        assert!(
            !serde_yaml::to_string(&Topology::parse(GOOD, Path::new("t.yaml")).unwrap())
                .unwrap()
                .contains("ports"),
            "no ports, no key"
        );
    }

    #[test]
    fn port_names_follow_iana_svc_name() {
        for ok in [
            "http",
            "h",
            "http-alt",
            "a1",
            "1a",
            "web-8080-x",
            "abcdefghijklmno",
        ] {
            assert!(check_port_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "HTTP",
            "http_alt",
            "-http",
            "http-",
            "ht--tp",
            "8080",
            "abcdefghijklmnop",
            "héllo",
        ] {
            let e = check_port_name(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(PortProtocol::parse("udp"), Some(PortProtocol::Udp));
        assert_eq!(PortProtocol::parse("icmp"), None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("node: node-1, labels", "node: nope, labels"),
                "pods[0] (ns1/a).node",
            ),
            (GOOD.replace("192.0.2.1", "10.200.0.1"), "pods[1] (w).ips"),
            (GOOD.replace("app: a", "\"bad key!\": a"), "labels.bad key!"),
            (
                GOOD.replace("{name: node-1}", "{name: node-1, color: red}"),
                "unknown field `color`",
            ),
            (GOOD.replace("10.200.0.1,", "10.200.0.300,"), "t.yaml"),
            (
                GOOD.replace("namespace: ns1, ", ""),
                "required for endpoints",
            ),
            (
                GOOD.replace("labels: {app: a},", "labels: {app: a}, ports: [{name: HTTP, containerPort: 80}],"),
                "pods[0] (ns1/a).ports[0].name",
            ),
            (
                GOOD.replace(
                    "labels: {app: a},",
                    "labels: {app: a}, ports: [{name: http, containerPort: 80}, {name: http, containerPort: 81}],",
                ),
                "pods[0] (ns1/a).ports[1].name",
            ),
            (
                GOOD.replace("labels: {app: a},", "labels: {app: a}, ports: [{containerPort: 0}],"),
                "pods[0] (ns1/a).ports[0].containerPort",
            ),
            (
                GOOD.replace("labels: {app: a},", "labels: {app: a}, ports: [{containerPort: 80, protocol: ICMP}],"),
                "unknown variant `ICMP`",
            ),
            (
                GOOD.replace("labels: {app: a},", "labels: {app: a}, ports: [{containerPort: 70000}],"),
                "t.yaml",
            ),
        ];
        for (yaml, needle) in cases {
            let err = Topology::parse(&yaml, Path::new("t.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
            assert!(err.contains("t.yaml"), "{err:?} should name the file");
        }
    }
}

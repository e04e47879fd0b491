//! The agent's desired state: from the topology and the policies to datapath map contents, and
//! the lookup tables the decoder uses to name what it sees.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use periscope_datapath_common::{
    self as dp, EP_F_AUDIT_EGRESS, EP_F_AUDIT_INGRESS, EP_F_HAS_IPV4, EP_F_HAS_IPV6, EndpointInfo,
    IPCACHE_F_LOCAL_ENDPOINT, IpcacheKey, IpcacheValue,
};
use periscope_topology::{Pod, Topology};

use crate::datapath::EndpointSpec;
use crate::identity::{Identities, LabelSet, pod_labels};
use crate::policy::{self, EndpointCtx, Mode, NamedPorts, PolicySet, Universe};
use crate::sources::ServiceInfo;

/// Per-endpoint enforcement settings (`--endpoint-mode ns/pod=always,audit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointMode {
    /// Mode override.
    pub mode: Option<Mode>,
    /// Audit override.
    pub audit: Option<bool>,
}

/// Which label keys are security-relevant (Cilium's `--labels`): patterns `[source:]key-prefix`,
/// a leading `!` excludes. Empty = every label. Namespace and cluster labels always count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelFilter {
    patterns: Vec<(bool, Option<String>, String)>,
}

impl LabelFilter {
    /// Parses patterns such as `app`, `k8s:app`, `!k8s:pod-template-hash`.
    pub fn parse(patterns: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for p in patterns {
            let (exclude, rest) = match p.strip_prefix('!') {
                Some(r) => (true, r),
                None => (false, p.as_str()),
            };
            let (source, key) = match rest.split_once(':') {
                Some((s, k)) => (Some(s.to_string()), k.to_string()),
                None => (None, rest.to_string()),
            };
            if key.is_empty() || key.contains([' ', '=']) {
                return Err(format!("--labels {p:?}: expected [!][source:]key-prefix"));
            }
            out.push((exclude, source, key));
        }
        Ok(LabelFilter { patterns: out })
    }

    /// Whether a `k8s`-sourced label key is security-relevant.
    pub fn keeps(&self, key: &str) -> bool {
        if key == crate::identity::LABEL_NAMESPACE || key == crate::identity::LABEL_CLUSTER {
            return true;
        }
        let hit = |(_, src, k): &&(bool, Option<String>, String)| {
            src.as_deref().is_none_or(|s| s == "k8s" || s == "any") && key.starts_with(k.as_str())
        };
        if self.patterns.iter().filter(|p| p.0).any(|p| hit(&p)) {
            return false;
        }
        let includes: Vec<_> = self.patterns.iter().filter(|p| !p.0).collect();
        includes.is_empty() || includes.iter().any(hit)
    }
}

/// Endpoints learned from metadata sources (kvstore, Kubernetes) that are not attached on this
/// node: they get ipcache entries and name flows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Remote {
    /// The endpoints (with a fixed identity when the source assigns one).
    pub pods: Vec<Pod>,
    /// Exact labels of source-assigned identities.
    pub identities: BTreeMap<u32, LabelSet>,
    /// Service addresses → (namespace, name).
    pub services: BTreeMap<IpAddr, (String, String)>,
    /// Services with frontends and backends, for agent events.
    pub service_details: BTreeMap<(String, String), ServiceInfo>,
}

/// How the agent builds identities and enforcement from its inputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BuildConfig {
    /// Enforcement modes.
    pub enforcement: Enforcement,
    /// Cluster id (0-255): the high bits of this cluster's identities.
    pub cluster_id: u8,
    /// Security-relevant labels.
    pub labels: LabelFilter,
}

/// Enforcement configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Enforcement {
    /// Global mode.
    pub mode: Mode,
    /// Global audit mode.
    pub audit: bool,
    /// Overrides by `namespace/pod`.
    pub endpoints: BTreeMap<String, EndpointMode>,
}

impl Enforcement {
    /// Parses `ns/pod=mode[,audit|,noaudit]` or `ns/pod=audit`.
    pub fn parse_override(s: &str) -> Result<(String, EndpointMode), String> {
        let (pod, spec) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected <namespace>/<pod>=<default|always|never>[,audit]")
        })?;
        let mut m = EndpointMode::default();
        for part in spec.split(',') {
            match part {
                "audit" => m.audit = Some(true),
                "noaudit" => m.audit = Some(false),
                other => m.mode = Some(other.parse().map_err(|e| format!("{s:?}: {e}"))?),
            }
        }
        Ok((pod.to_string(), m))
    }

    fn of(&self, pod: &str) -> (Mode, bool) {
        let o = self.endpoints.get(pod).copied().unwrap_or_default();
        (o.mode.unwrap_or(self.mode), o.audit.unwrap_or(self.audit))
    }
}

/// What the decoder and the printers know about an endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointView {
    /// Endpoint id.
    pub id: u32,
    /// The pod.
    pub pod: Pod,
    /// Security identity.
    pub identity: u32,
    /// Identity labels.
    pub labels: LabelSet,
    /// Ingress default deny.
    pub ingress_enforced: bool,
    /// Egress default deny.
    pub egress_enforced: bool,
    /// Mode and audit.
    pub mode: Mode,
    /// Audit mode.
    pub audit: bool,
    /// Policies selecting it (rule ids).
    pub selected_by: BTreeSet<u32>,
}

/// The agent's computed state: map contents plus naming tables.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Node name.
    pub node: String,
    /// Cluster name.
    pub cluster: String,
    /// Identities of label sets.
    pub identities: Identities,
    /// CIDR identities.
    pub cidr_identities: BTreeMap<IpNet, u32>,
    /// Every pod of the topology by address (all nodes).
    pub pods_by_ip: BTreeMap<IpAddr, Pod>,
    /// Identity of every pod address.
    pub identity_by_ip: BTreeMap<IpAddr, u32>,
    /// Endpoints of this node by host interface name.
    pub endpoints: BTreeMap<String, EndpointView>,
    /// The policies in force.
    pub policies: PolicySet,
    /// ipcache content.
    pub ipcache: BTreeMap<(IpcacheKey, u32), IpcacheValue>,
    /// Agent addresses of the nodes that declare one.
    pub node_addresses: BTreeMap<String, String>,
    /// Revision of this state (set by the agent when it applies it).
    pub revision: u64,
    /// Service addresses → (namespace, name), from the metadata sources.
    pub services: BTreeMap<IpAddr, (String, String)>,
    /// Services with their frontends and backends, from the metadata sources.
    pub service_details: BTreeMap<(String, String), ServiceInfo>,
    /// Services of the topology file as SERVICE_* events describe them (the metadata sources'
    /// are in `service_details`).
    pub topology_services: BTreeMap<(String, String), ServiceInfo>,
    /// Load-balanced service ports (topology file, then the metadata sources).
    pub lb_services: Vec<crate::lb::Service>,
    /// Service frontends by reverse-NAT index, as the datapath numbers them (filled by the
    /// agent after [`crate::lb::Lb::sync`]), for naming translated flows.
    pub lb_frontends: BTreeMap<u16, crate::lb::FrontendView>,
    /// Named ports the policies use that no endpoint defines (one line each; such a port
    /// allows nothing).
    pub named_port_warnings: BTreeSet<String>,
    /// Pods of this node that are not attached, by `namespace/name`, with why (an agent without
    /// a topology file: no per-pod route to a veth yet; set by the agent after `build`).
    pub unattached: BTreeMap<String, crate::local_pods::Unattached>,
    /// Endpoint id → host interface name (filled by [`State::set_endpoint_ids`]).
    ep_by_id: std::collections::HashMap<u32, String>,
    /// Identity → label strings, computed once per state for the decoder's hot path.
    labels_cache: std::collections::HashMap<u32, Vec<String>>,
}

impl State {
    /// Computes the state for `node` and returns it with the endpoint specs to apply (endpoint ids
    /// are filled in by the datapath; views get them via [`State::set_endpoint_ids`]).
    pub fn build(
        node: &str,
        topology: &Topology,
        remote: &Remote,
        policies: PolicySet,
        config: &BuildConfig,
    ) -> (State, Vec<EndpointSpec>) {
        let enforcement = &config.enforcement;
        let cluster = topology.cluster.clone();
        // Local candidates (topology file) first, then remote endpoints of the sources.
        let endpoint_pods: Vec<&Pod> = topology
            .pods
            .iter()
            .filter(|p| !p.external)
            .chain(remote.pods.iter())
            .collect();
        let n_topology = topology.pods.iter().filter(|p| !p.external).count();
        let label_sets: Vec<LabelSet> = endpoint_pods
            .iter()
            .map(|p| {
                // A kvstore identity comes with its exact labels.
                if let Some(l) = p.identity.and_then(|id| remote.identities.get(&id)) {
                    return l.clone();
                }
                let relevant: BTreeMap<String, String> = p
                    .labels
                    .iter()
                    .filter(|(k, _)| config.labels.keeps(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                pod_labels(&relevant, &p.namespace, &cluster)
            })
            .collect();
        let fixed: BTreeMap<LabelSet, u32> = endpoint_pods
            .iter()
            .zip(&label_sets)
            .filter_map(|(p, l)| p.identity.map(|id| (l.clone(), id)))
            .collect();
        let identities = Identities::allocate_with(label_sets.iter(), config.cluster_id, &fixed);
        let cidr_identities: BTreeMap<IpNet, u32> = policies
            .cidrs()
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c, dp::IDENTITY_FIRST_CIDR + i as u32))
            .collect();

        let mut ipcache = BTreeMap::new();
        let mut pods_by_ip = BTreeMap::new();
        let mut identity_by_ip = BTreeMap::new();
        for (net, id) in &cidr_identities {
            let (fam, addr) = addr16(net.addr());
            ipcache.insert(
                (
                    IpcacheKey {
                        cluster_id: 0,
                        pad: 0,
                        family: fam,
                        addr,
                    },
                    IpcacheKey::prefix_len(net.prefix_len()),
                ),
                IpcacheValue {
                    identity: *id,
                    tunnel_endpoint: 0,
                    flags: 0,
                },
            );
        }
        for p in topology.pods.iter().chain(remote.pods.iter()) {
            for ip in &p.ips {
                pods_by_ip.insert(*ip, p.clone());
            }
        }
        for (i, (p, labels)) in endpoint_pods.iter().zip(&label_sets).enumerate() {
            let id = identities.id_of(labels).expect("allocated above");
            let local = i < n_topology && p.node == node;
            for ip in &p.ips {
                let (fam, addr) = addr16(*ip);
                ipcache.insert(
                    (
                        IpcacheKey {
                            cluster_id: 0,
                            pad: 0,
                            family: fam,
                            addr,
                        },
                        IpcacheKey::host_prefix_len(fam),
                    ),
                    IpcacheValue {
                        identity: id,
                        tunnel_endpoint: 0,
                        flags: if local { IPCACHE_F_LOCAL_ENDPOINT } else { 0 },
                    },
                );
                identity_by_ip.insert(*ip, id);
            }
        }

        // Named ports: each endpoint's own, by identity, and all together.
        let pod_ports: Vec<NamedPorts> = endpoint_pods
            .iter()
            .map(|p| NamedPorts::of_pod(p))
            .collect();
        let mut named_ports: BTreeMap<u32, NamedPorts> = BTreeMap::new();
        let mut all_named_ports = NamedPorts::default();
        for (ports, labels) in pod_ports.iter().zip(&label_sets) {
            let id = identities.id_of(labels).expect("allocated above");
            named_ports.entry(id).or_default().extend(ports);
            all_named_ports.extend(ports);
        }
        let named_port_warnings = policy::undefined_named_ports(&policies, &all_named_ports);
        let universe = Universe {
            identities: &identities,
            cidr_identities: &cidr_identities,
            named_ports: &named_ports,
            all_named_ports: &all_named_ports,
        };
        let mut endpoints = BTreeMap::new();
        let mut specs = Vec::new();
        for ((p, labels), ports) in endpoint_pods
            .iter()
            .zip(&label_sets)
            .zip(&pod_ports)
            .take(n_topology)
        {
            if p.node != node {
                continue;
            }
            let (mode, audit) = enforcement.of(&p.full_name());
            let compiled = policy::compile(
                &EndpointCtx {
                    labels,
                    namespace: &p.namespace,
                    mode,
                    named_ports: ports,
                },
                &policies,
                &universe,
            );
            let identity = identities.id_of(labels).expect("allocated above");
            let mut info = EndpointInfo {
                identity,
                ..Default::default()
            };
            if audit {
                info.flags |= EP_F_AUDIT_INGRESS | EP_F_AUDIT_EGRESS;
            }
            if let Some(v4) = p.ipv4() {
                info.flags |= EP_F_HAS_IPV4;
                info.ipv4 = v4.octets();
            }
            if let Some(v6) = p.ipv6() {
                info.flags |= EP_F_HAS_IPV6;
                info.ipv6 = v6.octets();
            }
            let ifname = p.host_ifname();
            specs.push(EndpointSpec {
                ifname: ifname.clone(),
                info,
                policy: compiled.entries.clone(),
            });
            endpoints.insert(
                ifname,
                EndpointView {
                    id: 0,
                    pod: (*p).clone(),
                    identity,
                    labels: labels.clone(),
                    ingress_enforced: compiled.ingress_enforced,
                    egress_enforced: compiled.egress_enforced,
                    mode,
                    audit,
                    selected_by: compiled.selected_by,
                },
            );
        }
        let mut state = State {
            node: node.to_string(),
            cluster,
            identities,
            cidr_identities,
            pods_by_ip,
            identity_by_ip,
            endpoints,
            policies,
            ipcache,
            node_addresses: topology
                .nodes
                .iter()
                .filter_map(|n| n.address.clone().map(|a| (n.name.clone(), a)))
                .collect(),
            revision: 0,
            services: remote.services.clone(),
            service_details: remote.service_details.clone(),
            topology_services: crate::lb::topology_service_info(topology),
            lb_services: crate::lb::from_topology(topology)
                .into_iter()
                .chain(crate::lb::from_service_info(&remote.service_details))
                .collect(),
            lb_frontends: BTreeMap::new(),
            named_port_warnings,
            unattached: BTreeMap::new(),
            ep_by_id: Default::default(),
            labels_cache: Default::default(),
        };
        let mut cache = std::collections::HashMap::new();
        for id in state
            .identities
            .iter()
            .map(|(id, _)| id)
            .chain(state.cidr_identities.values().copied())
        {
            cache.insert(id, state.compute_identity_labels(id));
        }
        state.labels_cache = cache;
        (state, specs)
    }

    /// Records the endpoint ids the datapath assigned.
    pub fn set_endpoint_ids(&mut self, ids: &BTreeMap<String, u32>) {
        for (ifname, id) in ids {
            if let Some(ep) = self.endpoints.get_mut(ifname) {
                ep.id = *id;
                self.ep_by_id.insert(*id, ifname.clone());
            }
        }
    }

    /// The host interface name of endpoint `id`.
    pub fn ifname_of(&self, id: u32) -> Option<&str> {
        self.ep_by_id.get(&id).map(String::as_str)
    }

    /// The endpoint with id `id`.
    pub fn endpoint_by_id(&self, id: u32) -> Option<&EndpointView> {
        self.ep_by_id.get(&id).and_then(|n| self.endpoints.get(n))
    }

    /// Labels of an identity as `source:key=value` strings (CIDR identities give `cidr:<prefix>`
    /// and `reserved:world`).
    pub fn identity_labels(&self, id: u32) -> Vec<String> {
        match self.labels_cache.get(&id) {
            Some(l) => l.clone(),
            None => self.compute_identity_labels(id),
        }
    }

    fn compute_identity_labels(&self, id: u32) -> Vec<String> {
        // A CIDR identity carries the labels of every policy prefix containing it (Cilium's
        // cidr: labels), so selectors of wider prefixes match it.
        if let Some((net, _)) = self.cidr_identities.iter().find(|(_, v)| **v == id) {
            let mut labels: Vec<String> = self
                .cidr_identities
                .keys()
                .filter(|outer| outer.contains(net))
                .map(|outer| format!("cidr:{outer}"))
                .collect();
            labels.push("reserved:world".into());
            return labels;
        }
        self.identities
            .labels_of(id)
            .map(|s| s.iter().map(|l| l.to_string()).collect())
            .unwrap_or_default()
    }
}

/// An address as (family, 16 bytes) for map keys.
pub fn addr16(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            a[..4].copy_from_slice(&v4.octets());
            (dp::family::V4, a)
        }
        IpAddr::V6(v6) => (dp::family::V6, v6.octets()),
    }
}

/// Fingerprint of the inputs (file list, sizes and mtimes) to notice changes cheaply.
pub fn fingerprint(paths: &[&Path]) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for p in paths {
        let mut files = vec![p.to_path_buf()];
        if p.is_dir()
            && let Ok(rd) = std::fs::read_dir(p)
        {
            files = rd.flatten().map(|e| e.path()).collect();
            files.sort();
        }
        for f in files {
            if let Ok(md) = std::fs::metadata(&f) {
                out.push((f, md.len(), md.modified().unwrap_or(std::time::UNIX_EPOCH)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_datapath_common::PolicyKey;

    const TOPO: &str = r#"
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.0.0.1], ports: [{name: http, containerPort: 8080}]}
  - {name: client, namespace: shop, node: n1, labels: {app: client}, ips: [10.0.0.2]}
  - {name: api, namespace: shop, node: n2, labels: {app: api}, ips: [10.0.1.1], ports: [{name: http, containerPort: 9090}]}
"#;

    const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-http, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchExpressions: [{key: app, operator: In, values: [web, api]}]}]
    toPorts: [{ports: [{port: http, protocol: TCP}, {port: metrics, protocol: TCP}]}]
"#;

    fn build(topology: &str, remote: &Remote) -> (State, Vec<EndpointSpec>) {
        let t = Topology::parse(topology, Path::new("t.yaml")).unwrap();
        let p = PolicySet::parse(POLICY, Path::new("p.yaml")).unwrap();
        State::build("n1", &t, remote, p, &BuildConfig::default())
    }

    /// (peer identity, port) of a spec's entries in `direction`, port-specific ones only.
    fn ports_of(specs: &[EndpointSpec], st: &State, pod: &str, direction: u8) -> Vec<(u32, u16)> {
        let ifname = st
            .endpoints
            .iter()
            .find(|(_, e)| e.pod.name == pod)
            .map(|(i, _)| i.clone())
            .unwrap();
        let spec = specs.iter().find(|s| s.ifname == ifname).unwrap();
        spec.policy
            .keys()
            .filter(|k: &&PolicyKey| k.direction == direction && k.dport_be != 0)
            .map(|k| (k.identity, u16::from_be(k.dport_be)))
            .collect()
    }

    #[test]
    fn named_ports_follow_the_endpoints_ports() {
        let (st, specs) = build(TOPO, &Remote::default());
        let id = |pod: &str| {
            let (ip, _) = st.pods_by_ip.iter().find(|(_, p)| p.name == pod).unwrap();
            st.identity_by_ip[ip]
        };
        let (web, client, api) = (id("web"), id("client"), id("api"));
        assert_eq!(
            ports_of(&specs, &st, "web", dp::dir::INGRESS),
            vec![(client, 8080)]
        );
        let mut out = ports_of(&specs, &st, "client", dp::dir::EGRESS);
        out.sort();
        let mut want = vec![(web, 8080), (api, 9090)];
        want.sort();
        assert_eq!(out, want, "each peer its own http, on this node or not");
        assert_eq!(
            st.named_port_warnings.len(),
            1,
            "{:?}",
            st.named_port_warnings
        );
        assert!(
            st.named_port_warnings
                .iter()
                .all(|w| w.contains("\"metrics\""))
        );

        // web's http moves, and a remote endpoint of api (a metadata source) brings its own
        // number and a metrics port: the next build compiles them in.
        let moved = TOPO.replace("containerPort: 8080", "containerPort: 8081");
        let remote = Remote {
            pods: vec![Pod {
                name: "api-2".into(),
                namespace: "shop".into(),
                node: "n3".into(),
                labels: BTreeMap::from([("app".into(), "api".into())]),
                ips: vec!["10.0.2.1".parse().unwrap()],
                external: false,
                interface: None,
                workload: None,
                identity: None,
                ports: vec![
                    periscope_topology::ContainerPort {
                        name: Some("http".into()),
                        container_port: 7070,
                        protocol: Default::default(),
                    },
                    periscope_topology::ContainerPort {
                        name: Some("metrics".into()),
                        container_port: 9100,
                        protocol: Default::default(),
                    },
                ],
            }],
            ..Default::default()
        };
        let (st2, specs2) = build(&moved, &remote);
        assert_eq!(
            ports_of(&specs2, &st2, "web", dp::dir::INGRESS),
            vec![(client, 8081)]
        );
        let mut out = ports_of(&specs2, &st2, "client", dp::dir::EGRESS);
        out.sort();
        let mut want = vec![(web, 8081), (api, 7070), (api, 9090), (api, 9100)];
        want.sort();
        assert_eq!(out, want);
        assert!(st2.named_port_warnings.is_empty());
    }
}

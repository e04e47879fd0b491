//! The etcd metadata source, in Cilium's kvstore layout (seed 003 §3.4):
//!
//! - `<prefix>/identities/v1/id/<id>` → the identity's labels, `source:key=value;…;`
//! - `<prefix>/ip/v1/<cluster>/<ip>` → JSON `{"IP", "Mask", "HostIP", "ID", "Key", "Metadata",
//!   "K8sNamespace", "K8sPodName", "NamedPorts"}` (`Metadata` is
//!   `cilium-global:<cluster>:<node>:<endpoint>`; `NamedPorts` is `[{"Name", "Port",
//!   "Protocol"}]`, the endpoint's named container ports, which egress named ports resolve to)
//! - `<prefix>/services/v1/<cluster>/<namespace>/<name>` → Cilium's `ClusterService` JSON
//!   `{"cluster", "namespace", "name", "frontends": {<ip>: {<port name>: {"Protocol", "Port"}}},
//!   "backends": {<ip>: {<port name>: {"Protocol", "Port"}}}, …}`: a service whose frontends
//!   the datapath load-balances over the backends (matched by port name)
//!
//! with `<prefix>` = `cilium/state` by default. The source lists both prefixes, then watches them
//! from the listed revision, so a key written to etcd reaches every agent within the watch
//! latency. When etcd is unreachable the last view stays in force (the agent keeps enforcing what
//! it knew); the source reconnects with exponential backoff and jitter and re-lists.
//!
//! Endpoints learned here are remote endpoints (VMs, bare-metal hosts, pods of other clusters):
//! they get ipcache entries with their kvstore identity and name flows; they are never attached
//! to as local endpoints.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use periscope_topology::{ContainerPort, Pod, PortProtocol, check_port_name};
use serde::Deserialize;

use crate::identity::{LABEL_CLUSTER, LABEL_NAMESPACE, Label, LabelSet};
use crate::sources::{Backoff, Frontend, ServiceInfo, SharedView};

/// A `services/v1` entry (Cilium's `ClusterService`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ClusterService {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Frontend address → port name → port.
    #[serde(default)]
    pub frontends: BTreeMap<IpAddr, BTreeMap<String, L4Addr>>,
    /// Backend address → port name → port.
    #[serde(default)]
    pub backends: BTreeMap<IpAddr, BTreeMap<String, L4Addr>>,
}

/// A port of a `ClusterService` (Cilium's `L4Addr`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct L4Addr {
    /// `TCP` or `UDP`.
    #[serde(rename = "Protocol")]
    pub protocol: String,
    /// Port number.
    #[serde(rename = "Port")]
    pub port: u16,
}

impl ClusterService {
    /// As the agent's service description (frontends, backends by port name).
    pub fn info(&self) -> ServiceInfo {
        let mut info = ServiceInfo::default();
        for (ip, ports) in &self.frontends {
            for (port_name, p) in ports {
                info.frontends.push(Frontend {
                    ip: *ip,
                    port: p.port,
                    protocol: p.protocol.to_ascii_uppercase(),
                    port_name: port_name.clone(),
                    kind: "ClusterIP".into(),
                });
            }
        }
        for (ip, ports) in &self.backends {
            for (port_name, p) in ports {
                info.backends
                    .entry(port_name.clone())
                    .or_default()
                    .insert((*ip, p.port));
            }
        }
        info
    }
}

/// Settings of the etcd source.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix (`cilium/state`).
    pub prefix: String,
    /// Connect/request timeout.
    pub timeout: Duration,
}

/// One `ip/v1` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct IpEntry {
    /// The address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Node address.
    #[serde(rename = "HostIP", default)]
    pub host_ip: Option<String>,
    /// Security identity.
    #[serde(rename = "ID")]
    pub id: u32,
    /// `cilium-global:<cluster>:<node>:<endpoint id>`.
    #[serde(default)]
    pub metadata: Option<String>,
    /// Namespace.
    #[serde(rename = "K8sNamespace", default)]
    pub k8s_namespace: Option<String>,
    /// Pod name.
    #[serde(rename = "K8sPodName", default)]
    pub k8s_pod_name: Option<String>,
    /// Named container ports (absent or `null` = none). Entries with a malformed name, port or
    /// protocol are dropped when the entry is read.
    #[serde(rename = "NamedPorts", default)]
    pub named_ports: Option<Vec<NamedPort>>,
}

/// One `NamedPorts` entry of an `ip/v1` value.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct NamedPort {
    /// IANA service name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Port number.
    #[serde(rename = "Port")]
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(rename = "Protocol", default)]
    pub protocol: String,
}

impl NamedPort {
    /// As a topology container port, or why it cannot be one.
    fn container_port(&self) -> Result<ContainerPort, String> {
        check_port_name(&self.name)?;
        if self.port == 0 {
            return Err(format!("named port {:?}: port 0", self.name));
        }
        let protocol = if self.protocol.is_empty() {
            PortProtocol::Tcp
        } else {
            PortProtocol::parse(&self.protocol).ok_or_else(|| {
                format!(
                    "named port {:?}: protocol {:?} is not TCP, UDP or SCTP",
                    self.name, self.protocol
                )
            })?
        };
        Ok(ContainerPort {
            name: Some(self.name.clone()),
            container_port: self.port,
            protocol,
        })
    }
}

/// Parses an identity's label string (`k8s:app=app1;k8s:io.kubernetes.pod.namespace=ns1;`).
pub fn parse_labels(s: &str) -> Result<LabelSet, String> {
    let mut set = LabelSet::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (source, kv) = part
            .split_once(':')
            .ok_or_else(|| format!("label {part:?} has no source"))?;
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k.is_empty() {
            return Err(format!("label {part:?} has no key"));
        }
        set.insert(Label::new(source, k, v));
    }
    Ok(set)
}

/// The raw kvstore content the source keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvState {
    /// Identity → labels.
    pub identities: BTreeMap<u32, LabelSet>,
    /// Key → IP entry.
    pub ips: BTreeMap<String, IpEntry>,
    /// Key → service.
    pub services: BTreeMap<String, ClusterService>,
}

impl KvState {
    /// Applies a put of `key` (relative to the prefix) with `value`; unknown keys are ignored,
    /// malformed values are reported and skipped (they never replace a good entry).
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        if let Some(id) = key.strip_prefix("identities/v1/id/") {
            let id: u32 = id
                .parse()
                .map_err(|_| format!("{key}: identity is not a number"))?;
            let text =
                std::str::from_utf8(value).map_err(|_| format!("{key}: labels are not UTF-8"))?;
            self.identities
                .insert(id, parse_labels(text).map_err(|e| format!("{key}: {e}"))?);
        } else if key.starts_with("ip/v1/") {
            let mut e: IpEntry =
                serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?;
            e.ip.parse::<IpAddr>()
                .map_err(|_| format!("{key}: IP {:?} is not an address", e.ip))?;
            // A bad named port costs only itself, not the endpoint's ipcache entry.
            if let Some(ports) = &mut e.named_ports {
                ports.retain(|p| match p.container_port() {
                    Ok(_) => true,
                    Err(reason) => {
                        tracing::warn!(key, %reason, "ignoring a malformed named port");
                        false
                    }
                });
            }
            self.ips.insert(key.to_string(), e);
        } else if key.starts_with("services/v1/") {
            let s: ClusterService =
                serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?;
            for ports in s.frontends.values().chain(s.backends.values()) {
                for (name, p) in ports {
                    let proto = p.protocol.to_ascii_uppercase();
                    if p.port == 0 || !matches!(proto.as_str(), "TCP" | "UDP") {
                        return Err(format!(
                            "{key}: port {name:?}: {}/{} is not a TCP or UDP port",
                            p.port, p.protocol
                        ));
                    }
                }
            }
            self.services.insert(key.to_string(), s);
        }
        Ok(())
    }

    /// Applies a delete.
    pub fn delete(&mut self, key: &str) {
        if let Some(id) = key
            .strip_prefix("identities/v1/id/")
            .and_then(|i| i.parse::<u32>().ok())
        {
            self.identities.remove(&id);
        } else if key.starts_with("services/v1/") {
            self.services.remove(key);
        } else {
            self.ips.remove(key);
        }
    }

    /// The services by (namespace, name).
    pub fn service_details(&self) -> BTreeMap<(String, String), ServiceInfo> {
        self.services
            .values()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s.info()))
            .collect()
    }

    /// The endpoints (remote pods with fixed identities) and the labels of their identities.
    pub fn pods(&self) -> (BTreeMap<String, Pod>, BTreeMap<u32, LabelSet>) {
        let mut pods = BTreeMap::new();
        let mut ids = BTreeMap::new();
        for (key, e) in &self.ips {
            let Ok(ip) = e.ip.parse::<IpAddr>() else {
                continue;
            };
            let labels = self.identities.get(&e.id).cloned().unwrap_or_default();
            let namespace = e
                .k8s_namespace
                .clone()
                .or_else(|| {
                    labels
                        .iter()
                        .find(|l| l.key == LABEL_NAMESPACE)
                        .map(|l| l.value.clone())
                })
                .unwrap_or_default();
            let node = e
                .metadata
                .as_deref()
                .and_then(|m| m.split(':').nth(2))
                .map(str::to_string)
                .or_else(|| e.host_ip.clone())
                .unwrap_or_else(|| "kvstore".into());
            let pod_labels = labels
                .iter()
                .filter(|l| l.source == "k8s" && l.key != LABEL_NAMESPACE && l.key != LABEL_CLUSTER)
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect();
            pods.insert(
                key.clone(),
                Pod {
                    name: e.k8s_pod_name.clone().unwrap_or_else(|| e.ip.clone()),
                    namespace,
                    node,
                    labels: pod_labels,
                    ips: vec![ip],
                    external: false,
                    interface: None,
                    workload: None,
                    identity: Some(e.id),
                    ports: e
                        .named_ports
                        .iter()
                        .flatten()
                        .filter_map(|p| p.container_port().ok())
                        .collect(),
                },
            );
            ids.insert(e.id, labels);
        }
        (pods, ids)
    }
}

/// Runs the source forever, publishing into `view`.
pub async fn run(cfg: EtcdConfig, view: SharedView, identities: SharedIdentities) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let prefix = format!("{}/", cfg.prefix.trim_end_matches('/'));
    let mut kv = KvState::default();
    loop {
        match session(&cfg, &prefix, &mut kv, &view, &identities, &mut backoff).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, endpoints = ?cfg.endpoints, "etcd unavailable; keeping the last state");
                view.update(|v| {
                    v.connected = false;
                    v.last_error = Some(e.clone());
                });
            }
        }
        let d = backoff.next_delay();
        tracing::debug!(delay = ?d, "etcd reconnect backoff");
        tokio::time::sleep(d).await;
    }
}

/// Labels of the kvstore identities, shared with the agent's state builder.
pub type SharedIdentities = std::sync::Arc<std::sync::Mutex<BTreeMap<u32, LabelSet>>>;

fn publish(kv: &KvState, view: &SharedView, identities: &SharedIdentities) {
    let (pods, ids) = kv.pods();
    *identities.lock().expect("identities lock") = ids;
    let services = kv.service_details();
    view.update(|v| {
        v.pods = pods;
        v.service_details = services;
        v.connected = true;
        v.last_error = None;
    });
}

async fn session(
    cfg: &EtcdConfig,
    prefix: &str,
    kv: &mut KvState,
    view: &SharedView,
    identities: &SharedIdentities,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(cfg.timeout)
        .with_timeout(cfg.timeout);
    let mut client = Client::connect(cfg.endpoints.clone(), Some(opts))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("list {prefix}: {e}"))?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    // The list replaces the previous view: keys deleted while we were away disappear.
    let mut fresh = KvState::default();
    for item in resp.kvs() {
        let key = String::from_utf8_lossy(item.key());
        if let Some(rel) = key.strip_prefix(prefix)
            && let Err(e) = fresh.put(rel, item.value())
        {
            tracing::warn!(error = %e, "ignoring malformed kvstore entry");
        }
    }
    *kv = fresh;
    publish(kv, view, identities);
    backoff.reset();
    tracing::info!(
        revision,
        identities = kv.identities.len(),
        endpoints = kv.ips.len(),
        "etcd synced"
    );
    let mut stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| format!("watch {prefix}: {e}"))?;
    loop {
        let msg = stream.message().await.map_err(|e| format!("watch: {e}"))?;
        let Some(msg) = msg else {
            return Err("watch stream closed".into());
        };
        if msg.canceled() {
            return Err(format!("watch canceled: {}", msg.cancel_reason()));
        }
        for ev in msg.events() {
            let Some(item) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(item.key());
            let Some(rel) = key.strip_prefix(prefix) else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => {
                    if let Err(e) = kv.put(rel, item.value()) {
                        tracing::warn!(error = %e, "ignoring malformed kvstore entry");
                    }
                }
                EventType::Delete => kv.delete(rel),
            }
        }
        publish(kv, view, identities);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_003_entries_become_an_endpoint() {
        let mut kv = KvState::default();
        kv.put(
            "identities/v1/id/15614229",
            b"k8s:app=app1;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.cilium.k8s.policy.serviceaccount=default;k8s:io.kubernetes.pod.namespace=ns1;",
        )
        .unwrap();
        kv.put(
            "ip/v1/cluster1/10.3.192.65",
            br#"{"IP":"10.3.192.65","Mask":null,"HostIP":"10.3.9.10","ID":15614229,"Key":0,"Metadata":"cilium-global:cluster1:node1:2404","K8sNamespace":"ns1","K8sPodName":"pod1"}"#,
        )
        .unwrap();
        let (pods, ids) = kv.pods();
        let p = &pods["ip/v1/cluster1/10.3.192.65"];
        assert_eq!(
            (p.name.as_str(), p.namespace.as_str(), p.node.as_str()),
            ("pod1", "ns1", "node1")
        );
        assert_eq!(p.identity, Some(15614229));
        assert_eq!(p.labels.get("app").map(String::as_str), Some("app1"));
        assert!(ids[&15614229].contains(&Label::new(
            "k8s",
            "io.cilium.k8s.policy.cluster",
            "cluster1"
        )));
        assert!(p.ports.is_empty());
        kv.delete("ip/v1/cluster1/10.3.192.65");
        assert!(kv.pods().0.is_empty());
    }

    #[test]
    fn named_ports_become_container_ports_and_bad_ones_are_dropped() {
        let mut kv = KvState::default();
        kv.put(
            "ip/v1/c/10.0.0.1",
            br#"{"IP":"10.0.0.1","ID":300,"NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"},{"Name":"dns","Port":53,"Protocol":"udp"},{"Name":"Bad_Name","Port":1,"Protocol":"TCP"},{"Name":"x","Port":2,"Protocol":"ICMP"},{"Name":"zero","Port":0,"Protocol":"TCP"}]}"#,
        )
        .unwrap();
        kv.put(
            "ip/v1/c/10.0.0.2",
            br#"{"IP":"10.0.0.2","ID":301,"NamedPorts":null}"#,
        )
        .unwrap();
        let (pods, _) = kv.pods();
        let port = |name: &str, n: u16, protocol| ContainerPort {
            name: Some(name.into()),
            container_port: n,
            protocol,
        };
        assert_eq!(
            pods["ip/v1/c/10.0.0.1"].ports,
            vec![
                port("http", 8080, PortProtocol::Tcp),
                port("dns", 53, PortProtocol::Udp)
            ]
        );
        assert!(pods["ip/v1/c/10.0.0.2"].ports.is_empty());
    }

    #[test]
    fn cluster_services_become_load_balanced_services() {
        let mut kv = KvState::default();
        kv.put(
            "services/v1/c1/default/foo",
            br#"{"cluster":"c1","namespace":"default","name":"foo","frontends":{"172.20.0.177":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.0.0.1":{"http":{"Protocol":"TCP","Port":8080}},"10.0.0.2":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},"selector":{},"includeExternal":true,"shared":true,"clusterID":1}"#,
        )
        .unwrap();
        assert!(
            kv.put(
                "services/v1/c1/default/bad",
                br#"{"namespace":"default","name":"bad","frontends":{"172.20.0.1":{"x":{"Protocol":"ICMP","Port":1}}}}"#,
            )
            .is_err()
        );
        let lb = crate::lb::from_service_info(&kv.service_details());
        assert_eq!(lb.len(), 1);
        assert_eq!(
            lb[0].frontends,
            vec![("172.20.0.177".parse().unwrap(), 80, 6)]
        );
        assert_eq!(lb[0].backends.len(), 2);
        kv.delete("services/v1/c1/default/foo");
        assert!(kv.service_details().is_empty());
    }

    #[test]
    fn malformed_values_are_rejected_without_losing_the_old_entry() {
        let mut kv = KvState::default();
        kv.put("ip/v1/c/10.0.0.1", br#"{"IP":"10.0.0.1","ID":300}"#)
            .unwrap();
        assert!(kv.put("ip/v1/c/10.0.0.1", b"{not json").is_err());
        assert!(
            kv.put("ip/v1/c/10.0.0.2", br#"{"IP":"nope","ID":300}"#)
                .is_err()
        );
        assert!(kv.put("identities/v1/id/abc", b"k8s:a=b;").is_err());
        assert!(kv.put("identities/v1/id/7", b"nosource;").is_err());
        assert_eq!(kv.ips.len(), 1);
        assert_eq!(kv.ips["ip/v1/c/10.0.0.1"].id, 300);
    }
}

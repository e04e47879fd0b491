//! The Kubernetes metadata source: lists and watches the API server (kube's watcher) for
//!
//! - Pods → remote endpoints (ipcache entries and names; the agent allocates their identities
//!   from the labels): pods with an IP that are not finished (`Succeeded`/`Failed`) and not on the
//!   host network (those use the node's address, which is the host's, not the pod's), with their
//!   containers' named ports (for policies' named ports);
//! - Namespaces → their labels on every pod of the namespace, as
//!   `io.cilium.k8s.namespace.labels.<key>=<value>` (Cilium's convention, for NetworkPolicy
//!   `namespaceSelector`s), with the pod's service account as
//!   `io.cilium.k8s.policy.serviceaccount=<sa>`;
//! - Services (ClusterIPs, external IPs, load-balancer IPs) and EndpointSlices (endpoint
//!   addresses of the slice's `kubernetes.io/service-name`) → service names of addresses, and
//!   each service's frontends (address × port) with the ready backends of its slices, for the
//!   agent's SERVICE_* events (node ports are not frontends here: the source does not know the
//!   nodes' addresses);
//! - NetworkPolicies (networking.k8s.io/v1), CiliumNetworkPolicies and
//!   CiliumClusterwideNetworkPolicies (cilium.io/v2, watched as [`DynamicObject`]s: no CRD types)
//!   → policy documents, passed through as the API returned them (less `status` and the
//!   server-written metadata), keyed `Kind/namespace/name` (`Kind/name` when cluster-scoped). The
//!   agent validates them like policy files: a bad policy is an error naming its key.
//!
//! Each kind has its own watcher task. After a (re)list the kind's objects are replaced as a whole,
//! so objects deleted while the source was away disappear. Nothing is published before every kind
//! has been listed once (a pod without its namespace's labels would get a wrong identity). When
//! the API server is unreachable the last view stays in force (`connected` false, `last_error`
//! set) and each kind re-lists with exponential backoff and jitter. A `410 Gone` (expired
//! watch) re-lists after the same backoff without counting as disconnected, and a kind the server
//! does not serve (`404`, e.g. Cilium's CRDs not installed) counts as empty and is looked for
//! again every `backoff_max`. A kind the server refuses (`403`, missing RBAC) stays failing: the
//! source then never publishes its first view, and `last_error` says why.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod as K8sPod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use periscope_topology::{ContainerPort, Pod, PortProtocol, Workload, check_port_name};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::identity::{LABEL_NAMESPACE, LABEL_NS_LABELS};
use crate::sources::{Backoff, Frontend, ServiceInfo, SharedView};

/// The pod label naming the pod's service account (Cilium's).
pub const LABEL_SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";

/// The EndpointSlice label naming its service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Pod labels that never go into an identity because controllers set them per pod or per
/// revision: they would give every rollout or replica an identity of its own (Cilium's default
/// label filter drops them too).
pub const VOLATILE_LABELS: &[&str] = &[
    "pod-template-hash",
    "pod-template-generation",
    "controller-revision-hash",
    "controller-uid",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// The API server setting that means "the pod's service account": `KUBERNETES_SERVICE_HOST`
/// and `KUBERNETES_SERVICE_PORT`, the token and CA under
/// `/var/run/secrets/kubernetes.io/serviceaccount/`.
pub const IN_CLUSTER: &str = "in-cluster";

/// Settings of the Kubernetes source.
#[derive(Clone)]
pub struct K8sConfig {
    /// API server URL: `https://10.96.0.1:443` or plain HTTP such as `http://127.0.0.1:8001`
    /// (`kubectl proxy`), or [`IN_CLUSTER`].
    pub api_server: String,
    /// Bearer token.
    pub token: Option<String>,
    /// A file holding the bearer token, re-read as it rotates (projected service-account
    /// tokens); `token` takes precedence.
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) to verify an `https` API server with.
    pub ca_file: Option<PathBuf>,
    /// This agent's node. Reserved: every pod of the cluster is watched, since the pods of other
    /// nodes are the agent's remote endpoints.
    pub node: Option<String>,
    /// Upper bound of the first reconnect delay (the delay doubles per failure, with jitter).
    pub backoff_base: Duration,
    /// Largest reconnect delay; also how often a kind the server does not serve is looked for.
    pub backoff_max: Duration,
}

impl K8sConfig {
    /// Settings for `api_server` with no credentials and the default backoff (200 ms … 30 s).
    pub fn new(api_server: impl Into<String>) -> Self {
        K8sConfig {
            api_server: api_server.into(),
            token: None,
            token_file: None,
            ca_file: None,
            node: None,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for K8sConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sConfig")
            .field("api_server", &self.api_server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("node", &self.node)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// Builds a client for `cfg` (no kubeconfig involved). Must be called inside a Tokio runtime.
/// Fails on a malformed URL, or [`IN_CLUSTER`] outside a pod.
pub fn client(cfg: &K8sConfig) -> Result<Client, String> {
    let mut config = if cfg.api_server == IN_CLUSTER {
        // KUBERNETES_SERVICE_HOST/PORT and the service account's token (re-read as it rotates)
        // and CA, each replaced by an explicit setting.
        kube::Config::incluster().map_err(|e| format!("API server in-cluster: {e}"))?
    } else {
        let url: http::Uri = cfg
            .api_server
            .parse()
            .map_err(|e| format!("API server URL {:?}: {e}", cfg.api_server))?;
        if url.host().is_none() {
            return Err(format!("API server URL {:?} has no host", cfg.api_server));
        }
        kube::Config::new(url)
    };
    if let Some(token) = &cfg.token {
        config.auth_info.token = Some(token.clone().into());
        config.auth_info.token_file = None;
    }
    if let Some(file) = &cfg.token_file {
        config.auth_info.token_file = Some(file.to_string_lossy().into_owned());
    }
    if let Some(ca) = &cfg.ca_file {
        config.root_cert_file = Some(ca.clone());
        config.root_cert = None;
    }
    Client::try_from(config)
        .map_err(|e| format!("API server {}: {}", cfg.api_server, error_chain(&e)))
}

/// The kinds the source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 Pod.
    Pod,
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// cilium.io/v2 CiliumNetworkPolicy.
    CiliumNetworkPolicy,
    /// cilium.io/v2 CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Pod,
        Kind::Namespace,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::CiliumNetworkPolicy,
        Kind::CiliumClusterwideNetworkPolicy,
    ];

    /// The API kind name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Kind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }

    /// The API resource of a policy kind (None for the others).
    pub fn policy_resource(self) -> Option<ApiResource> {
        let cilium = |kind: &str, plural: &str| {
            ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("cilium.io", "v2", kind),
                plural,
            )
        };
        match self {
            Kind::NetworkPolicy => Some(ApiResource::erase::<NetworkPolicy>(&())),
            Kind::CiliumNetworkPolicy => {
                Some(cilium("CiliumNetworkPolicy", "ciliumnetworkpolicies"))
            }
            Kind::CiliumClusterwideNetworkPolicy => Some(cilium(
                "CiliumClusterwideNetworkPolicy",
                "ciliumclusterwidenetworkpolicies",
            )),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions (pure).
// ---------------------------------------------------------------------------------------------

/// `namespace/name`, or `name` for cluster-scoped objects; None without a name.
fn object_key(meta: &ObjectMeta) -> Option<String> {
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    Some(match meta.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    })
}

/// Whether a pod's own label is kept for its identity: not volatile, and not one of the keys
/// the agent derives itself (a pod must not claim another namespace, namespace labels it does
/// not have, or a service account it does not run as).
fn identity_label(key: &str) -> bool {
    !VOLATILE_LABELS.contains(&key)
        && key != LABEL_NAMESPACE
        && !key.starts_with("io.cilium.k8s.")
        && !key.starts_with("io.kubernetes.")
}

/// A pod as an endpoint, keyed `namespace/name`, with its namespace's labels
/// (`io.cilium.k8s.namespace.labels.<key>`) and service account
/// (`io.cilium.k8s.policy.serviceaccount`) among its labels. None when the pod is not an
/// endpoint (yet or any more): no IP, finished, or on the host network.
pub fn pod_to_endpoint(
    pod: &K8sPod,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<(String, Pod)> {
    let (key, ep) = pod_endpoint(pod)?;
    Some((key, with_namespace_labels(ep, namespace_labels)))
}

/// [`pod_to_endpoint`] without the namespace labels (what the source stores per pod).
fn pod_endpoint(pod: &K8sPod) -> Option<(String, Pod)> {
    let meta = &pod.metadata;
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let namespace = meta.namespace.clone().filter(|n| !n.is_empty())?;
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let listed = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref());
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in listed.filter_map(|s| s.parse::<IpAddr>().ok()) {
        // At most one address per family (the first, the pod's primary).
        if !ips.iter().any(|have| have.is_ipv4() == ip.is_ipv4()) {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        return None;
    }
    let mut labels: BTreeMap<String, String> = meta
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| identity_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sa = spec.and_then(|s| {
        s.service_account_name
            .as_deref()
            .or(s.service_account.as_deref())
    });
    if let Some(sa) = sa.filter(|sa| !sa.is_empty()) {
        labels.insert(LABEL_SERVICE_ACCOUNT.to_string(), sa.to_string());
    }
    let key = format!("{namespace}/{name}");
    Some((
        key,
        Pod {
            name,
            namespace,
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels,
            ips,
            external: false,
            interface: None,
            workload: workload_of(meta),
            identity: None,
            ports: spec.map(named_container_ports).unwrap_or_default(),
        },
    ))
}

/// The named ports of a pod's containers (what policies' named ports resolve to), sorted; ports
/// without a name serve no policy and are left out, so are names the API server would not have
/// accepted.
pub fn named_container_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<ContainerPort> {
    let mut out: Vec<ContainerPort> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.as_deref().filter(|n| check_port_name(n).is_ok())?;
            let port = u16::try_from(p.container_port).ok().filter(|p| *p > 0)?;
            let protocol = match p.protocol.as_deref() {
                None => PortProtocol::Tcp,
                Some(proto) => PortProtocol::parse(proto)?,
            };
            Some(ContainerPort {
                name: Some(name.to_string()),
                container_port: port,
                protocol,
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn with_namespace_labels(mut pod: Pod, namespace_labels: &BTreeMap<String, String>) -> Pod {
    for (k, v) in namespace_labels {
        pod.labels
            .insert(format!("{LABEL_NS_LABELS}{k}"), v.clone());
    }
    pod
}

/// A namespace's name and labels.
pub fn namespace_labels(ns: &Namespace) -> Option<(String, BTreeMap<String, String>)> {
    let name = ns.metadata.name.clone().filter(|n| !n.is_empty())?;
    Some((name, ns.metadata.labels.clone().unwrap_or_default()))
}

/// The workload owning a pod, from its controller owner reference: a ReplicaSet named
/// `<deployment>-<pod-template-hash>` is its Deployment; StatefulSet, DaemonSet, Job and other
/// owners are taken as they are.
pub fn workload_of(meta: &ObjectMeta) -> Option<Workload> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .filter(|h| !h.is_empty())
        && let Some(deployment) = owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
    {
        return Some(Workload {
            kind: "Deployment".into(),
            name: deployment.to_string(),
        });
    }
    Some(Workload {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    })
}

fn parse_ips<'a>(ips: impl IntoIterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips.into_iter().filter_map(|s| s.parse().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// A service's `(namespace, name)` and its addresses: ClusterIPs (not `None` of headless
/// services), external IPs and load-balancer ingress IPs. None when it has no address.
pub fn service_addresses(svc: &Service) -> Option<((String, String), Vec<IpAddr>)> {
    let name = svc.metadata.name.clone()?;
    let namespace = svc.metadata.namespace.clone()?;
    let spec = svc.spec.as_ref();
    let cluster_ips = spec
        .and_then(|s| s.cluster_ips.as_deref())
        .unwrap_or_default();
    let cluster_ip = spec.and_then(|s| s.cluster_ip.as_deref());
    let external = spec
        .and_then(|s| s.external_ips.as_deref())
        .unwrap_or_default();
    let lb = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let ips = parse_ips(
        cluster_ips
            .iter()
            .map(String::as_str)
            .chain(cluster_ip)
            .chain(external.iter().map(String::as_str))
            .chain(lb.iter().filter_map(|i| i.ip.as_deref())),
    );
    (!ips.is_empty()).then_some(((namespace, name), ips))
}

/// A service's frontends (ClusterIPs, external IPs and load-balancer IPs, each with every
/// service port) and traffic policies, without backends (those come from EndpointSlices). None
/// for a service without name, namespace or frontends (headless, ExternalName, no ports).
pub fn service_info(svc: &Service) -> Option<((String, String), ServiceInfo)> {
    let name = svc.metadata.name.clone()?;
    let namespace = svc.metadata.namespace.clone()?;
    let spec = svc.spec.as_ref()?;
    let cluster_ips = parse_ips(
        spec.cluster_ips
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(spec.cluster_ip.as_deref()),
    );
    let external = parse_ips(spec.external_ips.iter().flatten().map(String::as_str));
    let lb = parse_ips(
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.ip.as_deref()),
    );
    let mut frontends = Vec::new();
    for (ips, kind) in [
        (&cluster_ips, "ClusterIP"),
        (&external, "ExternalIPs"),
        (&lb, "LoadBalancer"),
    ] {
        for ip in ips {
            for p in spec.ports.iter().flatten() {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                frontends.push(Frontend {
                    ip: *ip,
                    port,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    port_name: p.name.clone().unwrap_or_default(),
                    kind: kind.into(),
                });
            }
        }
    }
    frontends.sort();
    frontends.dedup();
    (!frontends.is_empty()).then(|| {
        (
            (namespace, name),
            ServiceInfo {
                ext_traffic_policy: spec.external_traffic_policy.clone().unwrap_or_default(),
                int_traffic_policy: spec.internal_traffic_policy.clone().unwrap_or_default(),
                frontends,
                backends: BTreeMap::new(),
                // Kubernetes' default ClientIP timeout is 10800 s.
                affinity_timeout_s: (spec.session_affinity.as_deref() == Some("ClientIP")).then(
                    || {
                        spec.session_affinity_config
                            .as_ref()
                            .and_then(|c| c.client_ip.as_ref())
                            .and_then(|c| c.timeout_seconds)
                            .and_then(|t| u32::try_from(t).ok())
                            .filter(|t| *t > 0)
                            .unwrap_or(10800)
                    },
                ),
            },
        )
    })
}

/// The ready backends of an EndpointSlice by port name (`""` for an unnamed port): every
/// address of every endpoint not marked unready, with each of the slice's ports.
pub fn endpoint_slice_backends(slice: &EndpointSlice) -> BTreeMap<String, BTreeSet<(IpAddr, u16)>> {
    let mut out: BTreeMap<String, BTreeSet<(IpAddr, u16)>> = BTreeMap::new();
    let ready: Vec<IpAddr> = parse_ips(
        slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|e| e.addresses.iter().map(String::as_str)),
    );
    for p in slice.ports.iter().flatten() {
        let Some(port) = p.port.and_then(|n| u16::try_from(n).ok()) else {
            continue;
        };
        let set = out.entry(p.name.clone().unwrap_or_default()).or_default();
        set.extend(ready.iter().map(|ip| (*ip, port)));
    }
    out
}

/// An EndpointSlice's service `(namespace, name)` (its `kubernetes.io/service-name` label) and
/// its endpoint addresses. None without the label or addresses.
pub fn endpoint_slice_addresses(slice: &EndpointSlice) -> Option<((String, String), Vec<IpAddr>)> {
    let namespace = slice.metadata.namespace.clone()?;
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(LABEL_SERVICE_NAME)
        .filter(|s| !s.is_empty())?
        .clone();
    let ips = parse_ips(
        slice
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().map(String::as_str)),
    );
    (!ips.is_empty()).then_some(((namespace, service), ips))
}

/// A policy object as the document the agent validates, keyed `Kind/namespace/name`
/// (`Kind/name` when cluster-scoped): `apiVersion` and `kind` of the watched resource, `metadata`
/// with name, namespace, labels and annotations (less kubectl's last-applied copy), and every
/// other top-level field (`spec`, `specs`, …) untouched except `status`, which is dropped.
/// Server-written metadata (resourceVersion, managedFields, uid, …) is dropped too, so a status
/// update does not look like a policy change.
pub fn policy_document(
    resource: &ApiResource,
    obj: &DynamicObject,
) -> Option<(String, serde_yaml::Value)> {
    use serde_json::{Map, Value};
    let name = obj.metadata.name.clone().filter(|n| !n.is_empty())?;
    let namespace = obj.metadata.namespace.clone().filter(|n| !n.is_empty());
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(name.clone()));
    if let Some(ns) = &namespace {
        metadata.insert("namespace".into(), Value::String(ns.clone()));
    }
    if let Some(labels) = obj.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata.insert("labels".into(), serde_json::to_value(labels).ok()?);
    }
    let annotations: BTreeMap<&String, &String> = obj
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
        .collect();
    if !annotations.is_empty() {
        metadata.insert(
            "annotations".into(),
            serde_json::to_value(annotations).ok()?,
        );
    }
    let mut doc = Map::new();
    doc.insert(
        "apiVersion".into(),
        Value::String(resource.api_version.clone()),
    );
    doc.insert("kind".into(), Value::String(resource.kind.clone()));
    doc.insert("metadata".into(), Value::Object(metadata));
    if let Value::Object(data) = &obj.data {
        for (k, v) in data {
            if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                doc.insert(k.clone(), v.clone());
            }
        }
    }
    let key = match &namespace {
        Some(ns) => format!("{}/{ns}/{name}", resource.kind),
        None => format!("{}/{name}", resource.kind),
    };
    let value = serde_yaml::to_value(Value::Object(doc)).ok()?;
    Some((key, value))
}

// ---------------------------------------------------------------------------------------------
// The source's state.
// ---------------------------------------------------------------------------------------------

/// What one object contributes (objects are converted as they arrive; the raw object is not
/// kept).
#[derive(Clone, Debug, PartialEq)]
enum Item {
    /// A pod endpoint, without its namespace's labels.
    Endpoint(Pod),
    /// A namespace's labels.
    Namespace(BTreeMap<String, String>),
    /// Addresses of a service (from the Service or one of its EndpointSlices), and what the
    /// object says about the service's load-balancing.
    Addresses((String, String), Vec<IpAddr>, Box<Lb>),
    /// A policy document.
    Policy(serde_yaml::Value),
}

/// The load-balancing part of a Service or EndpointSlice object.
#[derive(Clone, Debug, PartialEq)]
enum Lb {
    /// A Service's frontends (None: it has none).
    Service(Option<ServiceInfo>),
    /// An EndpointSlice's ready backends by port name.
    Backends(BTreeMap<String, BTreeSet<(IpAddr, u16)>>),
}

impl Item {
    fn service(s: &Service) -> Option<Item> {
        let (svc, ips) = service_addresses(s)?;
        let info = service_info(s).map(|(_, info)| info);
        Some(Item::Addresses(svc, ips, Box::new(Lb::Service(info))))
    }

    fn endpoint_slice(s: &EndpointSlice) -> Option<Item> {
        let (svc, ips) = endpoint_slice_addresses(s)?;
        let backends = endpoint_slice_backends(s);
        Some(Item::Addresses(svc, ips, Box::new(Lb::Backends(backends))))
    }
}

/// From a kind's watcher task to the source.
#[derive(Debug)]
enum Msg {
    /// The kind was (re)listed: its objects, replacing all the previous ones.
    Synced(Kind, BTreeMap<String, Item>),
    /// An object was added or changed.
    Put(Kind, String, Box<Item>),
    /// An object was deleted (or stopped contributing, e.g. a finished pod).
    Remove(Kind, String),
    /// The kind's watch failed; it re-lists after a backoff.
    Failed(Kind, String),
}

/// The objects of every kind, and which kinds are listed and which are failing.
#[derive(Debug, Default)]
struct Cache {
    stores: BTreeMap<Kind, BTreeMap<String, Item>>,
    synced: BTreeSet<Kind>,
    failing: BTreeMap<Kind, String>,
}

impl Cache {
    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Synced(kind, items) => {
                self.stores.insert(kind, items);
                self.synced.insert(kind);
                self.failing.remove(&kind);
            }
            Msg::Put(kind, key, item) => {
                self.stores.entry(kind).or_default().insert(key, *item);
            }
            Msg::Remove(kind, key) => {
                self.stores.entry(kind).or_default().remove(&key);
            }
            Msg::Failed(kind, error) => {
                self.failing.insert(kind, error);
            }
        }
    }

    fn items(&self, kind: Kind) -> impl Iterator<Item = (&String, &Item)> {
        self.stores.get(&kind).into_iter().flatten()
    }

    fn ready(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    fn pods(&self) -> BTreeMap<String, Pod> {
        let empty = BTreeMap::new();
        let namespaces = self.stores.get(&Kind::Namespace);
        self.items(Kind::Pod)
            .filter_map(|(key, item)| match item {
                Item::Endpoint(pod) => {
                    let labels = match namespaces.and_then(|n| n.get(&pod.namespace)) {
                        Some(Item::Namespace(labels)) => labels,
                        _ => &empty,
                    };
                    Some((key.clone(), with_namespace_labels(pod.clone(), labels)))
                }
                _ => None,
            })
            .collect()
    }

    /// Service addresses: a Service's own addresses first, then endpoint addresses (an address
    /// in several services names the first by namespace and name).
    fn services(&self) -> BTreeMap<IpAddr, (String, String)> {
        let mut out = BTreeMap::new();
        for kind in [Kind::Service, Kind::EndpointSlice] {
            for (_, item) in self.items(kind) {
                if let Item::Addresses(service, ips, _) = item {
                    for ip in ips {
                        out.entry(*ip).or_insert_with(|| service.clone());
                    }
                }
            }
        }
        out
    }

    /// Services with frontends, with the backends of their EndpointSlices.
    fn service_details(&self) -> BTreeMap<(String, String), ServiceInfo> {
        let mut out = BTreeMap::new();
        for (_, item) in self.items(Kind::Service) {
            if let Item::Addresses(service, _, lb) = item
                && let Lb::Service(Some(info)) = &**lb
            {
                out.insert(service.clone(), info.clone());
            }
        }
        for (_, item) in self.items(Kind::EndpointSlice) {
            if let Item::Addresses(service, _, lb) = item
                && let Lb::Backends(backends) = &**lb
                && let Some(info) = out.get_mut(service)
            {
                for (port_name, set) in backends {
                    info.backends
                        .entry(port_name.clone())
                        .or_default()
                        .extend(set);
                }
            }
        }
        out
    }

    fn policies(&self) -> BTreeMap<String, serde_yaml::Value> {
        let mut out = BTreeMap::new();
        for kind in [
            Kind::NetworkPolicy,
            Kind::CiliumNetworkPolicy,
            Kind::CiliumClusterwideNetworkPolicy,
        ] {
            for (key, item) in self.items(kind) {
                if let Item::Policy(doc) = item {
                    out.insert(format!("{}/{key}", kind.name()), doc.clone());
                }
            }
        }
        out
    }

    /// The failing kinds' errors, kinds with the same cause together (in an outage every kind
    /// fails the same way): `Pod, Service: <cause>; …`.
    fn last_error(&self) -> Option<String> {
        let mut by_cause: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (kind, e) in &self.failing {
            // The watcher's own prefix ("failed to start watching object: ") differs between
            // list and watch; the cause after it is what matters.
            let cause = e.split_once(": ").map_or(e.as_str(), |(_, c)| c);
            by_cause.entry(cause).or_default().push(kind.name());
        }
        (!by_cause.is_empty()).then(|| {
            by_cause
                .iter()
                .map(|(cause, kinds)| format!("{}: {cause}", kinds.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Publishes the content once every kind is listed; connectivity always.
    fn publish(&self, view: &SharedView) {
        let last_error = self.last_error();
        if !self.ready() {
            view.update(|v| {
                v.connected = false;
                v.last_error = last_error;
            });
            return;
        }
        let (pods, services, policies) = (self.pods(), self.services(), self.policies());
        let service_details = self.service_details();
        view.update(|v| {
            v.pods = pods;
            v.services = services;
            v.service_details = service_details;
            v.policies = policies;
            v.synced = true;
            v.connected = self.failing.is_empty();
            v.last_error = last_error;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Watching.
// ---------------------------------------------------------------------------------------------

/// An error with its causes (`a: b: c`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

fn api_status(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// Runs the source forever, publishing into `view`. Aborting the task stops the watchers too.
pub async fn run(cfg: K8sConfig, view: SharedView) {
    let client = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Kubernetes source disabled");
            view.update(|v| {
                v.connected = false;
                v.last_error = Some(e);
            });
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let mut tasks = JoinSet::new();
    let backoff = || Backoff::new(cfg.backoff_base, cfg.backoff_max);
    let max_delay = cfg.backoff_max;
    tasks.spawn(watch_kind(
        Kind::Pod,
        Api::<K8sPod>::all(client.clone()),
        |p: &K8sPod| pod_endpoint(p).map(|(_, ep)| Item::Endpoint(ep)),
        tx.clone(),
        backoff(),
        max_delay,
    ));
    tasks.spawn(watch_kind(
        Kind::Namespace,
        Api::<Namespace>::all(client.clone()),
        |n: &Namespace| namespace_labels(n).map(|(_, l)| Item::Namespace(l)),
        tx.clone(),
        backoff(),
        max_delay,
    ));
    tasks.spawn(watch_kind(
        Kind::Service,
        Api::<Service>::all(client.clone()),
        Item::service,
        tx.clone(),
        backoff(),
        max_delay,
    ));
    tasks.spawn(watch_kind(
        Kind::EndpointSlice,
        Api::<EndpointSlice>::all(client.clone()),
        Item::endpoint_slice,
        tx.clone(),
        backoff(),
        max_delay,
    ));
    for kind in Kind::ALL {
        let Some(resource) = kind.policy_resource() else {
            continue;
        };
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        tasks.spawn(watch_kind(
            kind,
            api,
            move |o: &DynamicObject| policy_document(&resource, o).map(|(_, d)| Item::Policy(d)),
            tx.clone(),
            backoff(),
            max_delay,
        ));
    }
    drop(tx);
    tracing::info!(api_server = %cfg.api_server, "Kubernetes source started");
    let mut cache = Cache::default();
    let mut was_ready = false;
    while let Some(msg) = rx.recv().await {
        cache.apply(msg);
        // Apply what else is queued (a relist of many objects, a burst of events) before
        // publishing once.
        while let Ok(msg) = rx.try_recv() {
            cache.apply(msg);
        }
        if cache.ready() && !was_ready {
            was_ready = true;
            tracing::info!(
                pods = cache.items(Kind::Pod).count(),
                policies = cache.policies().len(),
                "Kubernetes source synced"
            );
        }
        cache.publish(&view);
    }
}

/// Watches one kind forever: each (re)list replaces the kind's objects; on an error the watcher
/// is dropped and a new one re-lists after a backoff. The backoff starts over only when the
/// failing watch had run for `max_delay` (a kind that lists but cannot watch does not re-list
/// in a tight loop); a kind the server does not serve is looked for every `max_delay`.
async fn watch_kind<K, F>(
    kind: Kind,
    api: Api<K>,
    convert: F,
    tx: mpsc::Sender<Msg>,
    mut backoff: Backoff,
    max_delay: Duration,
) where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
    F: Fn(&K) -> Option<Item> + Send + 'static,
{
    loop {
        let mut stream = std::pin::pin!(watcher::watcher(api.clone(), watcher::Config::default()));
        let mut listed: BTreeMap<String, Item> = BTreeMap::new();
        let mut synced_at: Option<Instant> = None;
        let error = loop {
            let msg = match stream.next().await {
                None => break None,
                Some(Err(e)) => break Some(e),
                Some(Ok(Event::Init)) => {
                    listed.clear();
                    continue;
                }
                Some(Ok(Event::InitApply(obj))) => {
                    if let Some(key) = object_key(obj.meta())
                        && let Some(item) = convert(&obj)
                    {
                        listed.insert(key, item);
                    }
                    continue;
                }
                Some(Ok(Event::InitDone)) => {
                    synced_at = Some(Instant::now());
                    tracing::debug!(kind = kind.name(), objects = listed.len(), "listed");
                    Msg::Synced(kind, std::mem::take(&mut listed))
                }
                Some(Ok(Event::Apply(obj))) => {
                    let Some(key) = object_key(obj.meta()) else {
                        continue;
                    };
                    match convert(&obj) {
                        Some(item) => Msg::Put(kind, key, Box::new(item)),
                        None => Msg::Remove(kind, key),
                    }
                }
                Some(Ok(Event::Delete(obj))) => {
                    let Some(key) = object_key(obj.meta()) else {
                        continue;
                    };
                    Msg::Remove(kind, key)
                }
            };
            if tx.send(msg).await.is_err() {
                return; // the source is gone
            }
        };
        if synced_at.is_some_and(|t| t.elapsed() >= max_delay) {
            backoff.reset();
        }
        let delay = match error {
            Some(e) if api_status(&e) == Some(404) => {
                tracing::info!(
                    kind = kind.name(),
                    "not served by the API server (CRD not installed?); counting it as empty"
                );
                if tx.send(Msg::Synced(kind, BTreeMap::new())).await.is_err() {
                    return;
                }
                max_delay
            }
            Some(e) if api_status(&e) == Some(410) => {
                tracing::debug!(kind = kind.name(), "watch expired (410 Gone); re-listing");
                backoff.next_delay()
            }
            other => {
                let e = other
                    .map(|e| error_chain(&e))
                    .unwrap_or_else(|| "watch stream ended".into());
                tracing::warn!(kind = kind.name(), error = %e, "Kubernetes watch failed; keeping the last state");
                if tx.send(Msg::Failed(kind, e)).await.is_err() {
                    return;
                }
                backoff.next_delay()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> K8sPod {
        serde_json::from_value(v).expect("pod")
    }

    fn web_pod() -> serde_json::Value {
        json!({
            "metadata": {
                "name": "web-5d8f7c9b6-x2x7q", "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": "5d8f7c9b6",
                           "io.kubernetes.pod.namespace": "kube-system",
                           "io.cilium.k8s.namespace.labels.team": "admin",
                           "io.cilium.k8s.policy.serviceaccount": "root"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5d8f7c9b6", "uid": "u1", "controller": true}]
            },
            "spec": {"containers": [
                        {"name": "web", "ports": [
                            {"name": "http", "containerPort": 8080},
                            {"containerPort": 9000},
                            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]},
                        {"name": "sidecar", "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}],
                     "nodeName": "node-1", "serviceAccountName": "web"},
            "status": {"phase": "Running", "podIP": "10.0.1.10",
                       "podIPs": [{"ip": "10.0.1.10"}, {"ip": "fd00::1:10"}, {"ip": "10.0.1.11"}]}
        })
    }

    fn ns_labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "kubernetes.io/metadata.name".to_string(),
                "shop".to_string(),
            ),
            ("team".to_string(), "retail".to_string()),
        ])
    }

    #[test]
    fn a_running_pod_becomes_an_endpoint_with_namespace_labels_and_service_account() {
        let (key, ep) = pod_to_endpoint(&pod(web_pod()), &ns_labels()).expect("endpoint");
        assert_eq!(key, "shop/web-5d8f7c9b6-x2x7q");
        assert_eq!(
            (ep.name.as_str(), ep.namespace.as_str(), ep.node.as_str()),
            ("web-5d8f7c9b6-x2x7q", "shop", "node-1")
        );
        assert_eq!(
            ep.ips,
            vec![
                "10.0.1.10".parse::<IpAddr>().unwrap(),
                "fd00::1:10".parse().unwrap()
            ]
        );
        let labels: Vec<(&str, &str)> = ep
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // The pod's own reserved-key labels are dropped (no forging of namespace labels, service
        // account or namespace), so is the volatile pod-template-hash.
        assert_eq!(
            labels,
            vec![
                ("app", "web"),
                (
                    "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name",
                    "shop"
                ),
                ("io.cilium.k8s.namespace.labels.team", "retail"),
                ("io.cilium.k8s.policy.serviceaccount", "web"),
            ]
        );
        assert_eq!(
            ep.workload,
            Some(Workload {
                kind: "Deployment".into(),
                name: "web".into()
            })
        );
        assert_eq!(
            (ep.external, ep.interface.clone(), ep.identity),
            (false, None, None)
        );
        // Named ports of every container, sorted; unnamed ones left out.
        let ports: Vec<(&str, u16, PortProtocol)> = ep
            .ports
            .iter()
            .map(|p| (p.name.as_deref().unwrap(), p.container_port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("dns", 53, PortProtocol::Udp),
                ("http", 8080, PortProtocol::Tcp),
                ("metrics", 9090, PortProtocol::Tcp),
            ]
        );
    }

    #[test]
    fn pods_without_ip_finished_or_on_the_host_network_are_not_endpoints() {
        let mut p = web_pod();
        p["status"] = json!({"phase": "Pending"});
        assert!(pod_to_endpoint(&pod(p), &ns_labels()).is_none());
        for phase in ["Succeeded", "Failed"] {
            let mut p = web_pod();
            p["status"]["phase"] = json!(phase);
            assert!(pod_to_endpoint(&pod(p), &ns_labels()).is_none(), "{phase}");
        }
        let mut p = web_pod();
        p["spec"]["hostNetwork"] = json!(true);
        assert!(pod_to_endpoint(&pod(p), &ns_labels()).is_none());
        let mut p = web_pod();
        p["status"] = json!({"phase": "Running", "podIP": "not-an-ip"});
        assert!(pod_to_endpoint(&pod(p), &ns_labels()).is_none());
        // podIP alone (older API servers) is enough.
        let mut p = web_pod();
        p["status"] = json!({"phase": "Running", "podIP": "10.0.1.12"});
        let (_, ep) = pod_to_endpoint(&pod(p), &BTreeMap::new()).unwrap();
        assert_eq!(ep.ips, vec!["10.0.1.12".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn workloads_follow_the_controller_owner() {
        let meta = |labels: serde_json::Value, kind: &str, name: &str| -> ObjectMeta {
            serde_json::from_value(json!({
                "labels": labels,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Other", "name": "not-controller", "uid": "0"},
                    {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "1", "controller": true}
                ]
            }))
            .unwrap()
        };
        let w = |kind: &str, name: &str| {
            Some(Workload {
                kind: kind.into(),
                name: name.into(),
            })
        };
        assert_eq!(
            workload_of(&meta(
                json!({"pod-template-hash": "5d8f7c9b6"}),
                "ReplicaSet",
                "web-api-5d8f7c9b6"
            )),
            w("Deployment", "web-api")
        );
        // A bare ReplicaSet (no matching hash) stays a ReplicaSet.
        assert_eq!(
            workload_of(&meta(json!({}), "ReplicaSet", "legacy-rs")),
            w("ReplicaSet", "legacy-rs")
        );
        assert_eq!(
            workload_of(&meta(
                json!({"pod-template-hash": "abc"}),
                "ReplicaSet",
                "x-def"
            )),
            w("ReplicaSet", "x-def")
        );
        for kind in ["StatefulSet", "DaemonSet", "Job"] {
            assert_eq!(
                workload_of(&meta(json!({}), kind, "thing")),
                w(kind, "thing")
            );
        }
        assert_eq!(workload_of(&ObjectMeta::default()), None);
    }

    #[test]
    fn service_and_endpoint_slice_addresses() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                     "externalIPs": ["203.0.113.10"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example"}]}}
        }))
        .unwrap();
        let ((ns, name), ips) = service_addresses(&svc).unwrap();
        assert_eq!((ns.as_str(), name.as_str()), ("shop", "web"));
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        assert_eq!(
            ips,
            ["10.96.0.10", "fd00:96::10", "203.0.113.10", "198.51.100.7"]
        );
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}
        }))
        .unwrap();
        assert!(service_addresses(&headless).is_none());

        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc12", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.1.10"]}, {"addresses": ["10.0.1.20"],
                           "conditions": {"ready": false}}]
        }))
        .unwrap();
        let (svc, ips) = endpoint_slice_addresses(&slice).unwrap();
        assert_eq!(svc, ("shop".to_string(), "web".to_string()));
        assert_eq!(ips.len(), 2);
        let mut orphan = slice.clone();
        orphan.metadata.labels = None;
        assert!(endpoint_slice_addresses(&orphan).is_none());
        let fqdn: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "x"}},
            "addressType": "FQDN", "endpoints": [{"addresses": ["db.example"]}]
        }))
        .unwrap();
        assert!(endpoint_slice_addresses(&fqdn).is_none());
    }

    #[test]
    fn policy_documents_drop_status_and_server_metadata() {
        let res = Kind::CiliumNetworkPolicy.policy_resource().unwrap();
        assert_eq!(res.plural, "ciliumnetworkpolicies");
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                         "generation": 2, "managedFields": [{"manager": "kubectl"}],
                         "labels": {"a": "b"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                                         "note": "x"}},
            "spec": {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{}]}]},
            "status": {"conditions": []}
        }))
        .unwrap();
        let (key, doc) = policy_document(&res, &obj).unwrap();
        assert_eq!(key, "CiliumNetworkPolicy/shop/p");
        let want: serde_yaml::Value = serde_yaml::from_str(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: shop\n  labels: {a: b}\n  annotations: {note: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n",
        )
        .unwrap();
        assert_eq!(doc, want);

        // List items of built-in kinds carry no apiVersion/kind: the watched resource's are used.
        let np = Kind::NetworkPolicy.policy_resource().unwrap();
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "deny", "namespace": "db"},
            "spec": {"podSelector": {}}
        }))
        .unwrap();
        let (key, doc) = policy_document(&np, &obj).unwrap();
        assert_eq!(key, "NetworkPolicy/db/deny");
        assert_eq!(doc["apiVersion"].as_str(), Some("networking.k8s.io/v1"));
        assert_eq!(doc["kind"].as_str(), Some("NetworkPolicy"));

        let ccnp = Kind::CiliumClusterwideNetworkPolicy
            .policy_resource()
            .unwrap();
        let obj: DynamicObject =
            serde_json::from_value(json!({"metadata": {"name": "all"}, "specs": []})).unwrap();
        assert_eq!(
            policy_document(&ccnp, &obj).unwrap().0,
            "CiliumClusterwideNetworkPolicy/all"
        );
    }

    fn endpoint(ns: &str, name: &str, ip: &str) -> Item {
        Item::Endpoint(Pod {
            name: name.into(),
            namespace: ns.into(),
            node: "n".into(),
            labels: BTreeMap::from([("app".into(), name.into())]),
            ips: vec![ip.parse().unwrap()],
            external: false,
            interface: None,
            workload: None,
            identity: None,
            ports: vec![],
        })
    }

    #[test]
    fn the_cache_publishes_only_when_every_kind_is_listed_and_relists_replace() {
        let view = SharedView::default();
        let mut c = Cache::default();
        c.apply(Msg::Synced(
            Kind::Pod,
            BTreeMap::from([
                ("shop/a".into(), endpoint("shop", "a", "10.0.0.1")),
                ("shop/b".into(), endpoint("shop", "b", "10.0.0.2")),
            ]),
        ));
        c.publish(&view);
        assert!(view.snapshot().pods.is_empty(), "not every kind listed yet");
        for kind in Kind::ALL.into_iter().skip(1) {
            c.apply(Msg::Synced(kind, BTreeMap::new()));
        }
        c.apply(Msg::Put(
            Kind::Namespace,
            "shop".into(),
            Box::new(Item::Namespace(ns_labels())),
        ));
        c.publish(&view);
        let v = view.snapshot();
        assert!(v.connected);
        assert_eq!(v.pods.len(), 2);
        assert_eq!(
            v.pods["shop/a"].labels["io.cilium.k8s.namespace.labels.team"],
            "retail"
        );
        // A failure keeps the content; a relist without b drops b and reconnects.
        c.apply(Msg::Failed(Kind::Pod, "connection refused".into()));
        c.publish(&view);
        let v = view.snapshot();
        assert!(!v.connected);
        assert_eq!(v.last_error.as_deref(), Some("Pod: connection refused"));
        assert_eq!(v.pods.len(), 2);
        // Kinds failing for the same cause are reported together.
        c.apply(Msg::Failed(
            Kind::Service,
            "failed to perform initial object list: connection refused".into(),
        ));
        c.apply(Msg::Failed(Kind::Namespace, "403 forbidden".into()));
        assert_eq!(
            c.last_error().as_deref(),
            Some("Namespace: 403 forbidden; Pod, Service: connection refused")
        );
        c.apply(Msg::Synced(Kind::Service, BTreeMap::new()));
        c.apply(Msg::Synced(Kind::Namespace, BTreeMap::new()));
        c.apply(Msg::Synced(
            Kind::Pod,
            BTreeMap::from([("shop/a".into(), endpoint("shop", "a", "10.0.0.1"))]),
        ));
        c.publish(&view);
        let v = view.snapshot();
        assert!(v.connected && v.last_error.is_none());
        assert_eq!(v.pods.keys().collect::<Vec<_>>(), ["shop/a"]);
    }

    #[test]
    fn services_have_frontends_and_the_ready_backends_of_their_slices() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "externalIPs": ["203.0.113.10"], "externalTrafficPolicy": "Local",
                     "internalTrafficPolicy": "Cluster",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}
        }))
        .unwrap();
        let (key, info) = service_info(&svc).unwrap();
        assert_eq!(key, ("shop".to_string(), "web".to_string()));
        assert_eq!(
            (
                info.ext_traffic_policy.as_str(),
                info.int_traffic_policy.as_str()
            ),
            ("Local", "Cluster")
        );
        let fronts: Vec<(String, u16, &str, &str, &str)> = info
            .frontends
            .iter()
            .map(|f| {
                (
                    f.ip.to_string(),
                    f.port,
                    f.protocol.as_str(),
                    f.port_name.as_str(),
                    f.kind.as_str(),
                )
            })
            .collect();
        assert_eq!(
            fronts,
            [
                ("10.96.0.10".into(), 53, "UDP", "dns", "ClusterIP"),
                ("10.96.0.10".into(), 80, "TCP", "http", "ClusterIP"),
                ("198.51.100.7".into(), 53, "UDP", "dns", "LoadBalancer"),
                ("198.51.100.7".into(), 80, "TCP", "http", "LoadBalancer"),
                ("203.0.113.10".into(), 53, "UDP", "dns", "ExternalIPs"),
                ("203.0.113.10".into(), 80, "TCP", "http", "ExternalIPs"),
            ]
        );
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }))
        .unwrap();
        assert!(service_info(&headless).is_none());

        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc12", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.0.1.10"]},
                          {"addresses": ["10.0.1.20"], "conditions": {"ready": false}},
                          {"addresses": ["10.0.1.30"], "conditions": {"ready": true}}]
        }))
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let backends = endpoint_slice_backends(&slice);
        assert_eq!(
            backends["http"],
            BTreeSet::from([(ip("10.0.1.10"), 8080), (ip("10.0.1.30"), 8080)])
        );
        assert_eq!(backends["dns"].len(), 2);
        // The cache puts them together; slices of services it does not know are left out.
        let mut c = Cache::default();
        c.apply(Msg::Put(
            Kind::Service,
            "shop/web".into(),
            Box::new(Item::service(&svc).unwrap()),
        ));
        c.apply(Msg::Put(
            Kind::EndpointSlice,
            "shop/web-abc12".into(),
            Box::new(Item::endpoint_slice(&slice).unwrap()),
        ));
        let mut orphan = slice.clone();
        orphan
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SERVICE_NAME.into(), "gone".into());
        c.apply(Msg::Put(
            Kind::EndpointSlice,
            "shop/gone-1".into(),
            Box::new(Item::endpoint_slice(&orphan).unwrap()),
        ));
        let details = c.service_details();
        assert_eq!(details.len(), 1);
        let web = &details[&("shop".to_string(), "web".to_string())];
        assert_eq!(web.frontends, info.frontends);
        assert_eq!(web.backends, backends);
    }

    #[test]
    fn service_addresses_win_over_endpoint_addresses() {
        let mut c = Cache::default();
        let svc = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        c.apply(Msg::Put(
            Kind::EndpointSlice,
            "shop/web-1".into(),
            Box::new(Item::Addresses(
                svc("shop", "web"),
                vec![ip("10.0.1.10"), ip("10.96.0.10")],
                Box::new(Lb::Backends(BTreeMap::new())),
            )),
        ));
        c.apply(Msg::Put(
            Kind::Service,
            "shop/web".into(),
            Box::new(Item::Addresses(
                svc("shop", "web-front"),
                vec![ip("10.96.0.10")],
                Box::new(Lb::Service(None)),
            )),
        ));
        let s = c.services();
        assert_eq!(s[&ip("10.96.0.10")], svc("shop", "web-front"));
        assert_eq!(s[&ip("10.0.1.10")], svc("shop", "web"));
    }

    #[test]
    fn client_rejects_bad_urls_and_redacts_the_token() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(client(&K8sConfig::new("not a url")).is_err());
            assert!(client(&K8sConfig::new("/just/a/path")).is_err());
            assert!(client(&K8sConfig::new("http://127.0.0.1:1")).is_ok());
            assert!(client(&K8sConfig::new("https://127.0.0.1:6443")).is_ok());
        });
        let mut cfg = K8sConfig::new("http://x");
        cfg.token = Some("s3cret".into());
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}

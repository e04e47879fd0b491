//! Peers from Kubernetes: the agents are the pods of a DaemonSet, found by namespace and label
//! selector (kube's watcher: a list, then a watch, re-listed with backoff after errors).
//!
//! A pod is a peer while it is `Running`, has a pod IP and is not being deleted; the peer's
//! address is `podIP:port` (the agents run on the host network, so the pod IP is the node's),
//! its provisional name the pod's `spec.nodeName` (the agent then reports its own node name).
//! A pod that goes away, stops running or moves to another IP is removed from the pool (its
//! streams end with NODE_GONE / are redialed at the new address). While the API server is
//! unreachable the peers known so far stay; after a re-list, pods deleted meanwhile go.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::config::{PeerKind, PeerSpec};
use crate::peers::{Origin, Pool};

/// Where the agents' pods are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sPeers {
    /// API server URL (`https://kubernetes.default.svc`, `http://127.0.0.1:8001`), or
    /// `in-cluster` for the service account's environment and files.
    pub api_server: String,
    /// Bearer token file (re-read as it rotates); in-cluster: the service account's.
    pub token_file: Option<PathBuf>,
    /// CA bundle of an https API server; in-cluster: the service account's.
    pub ca_file: Option<PathBuf>,
    /// Namespace of the agents' pods.
    pub namespace: String,
    /// Label selector of the agents' pods (`app.kubernetes.io/name=periscope-agent`).
    pub selector: String,
    /// Port of the agents' Observer API.
    pub port: u16,
}

/// The API server setting that means "use the pod's service account".
pub const IN_CLUSTER: &str = "in-cluster";

/// Builds a client (inside a Tokio runtime). Fails on a malformed URL, or in-cluster outside
/// a cluster.
pub fn client(cfg: &K8sPeers) -> Result<Client, String> {
    let mut config = if cfg.api_server == IN_CLUSTER {
        kube::Config::incluster().map_err(|e| format!("--k8s-api-server in-cluster: {e}"))?
    } else {
        let url: http::Uri = cfg
            .api_server
            .parse()
            .map_err(|e| format!("--k8s-api-server {:?}: {e}", cfg.api_server))?;
        if url.host().is_none() {
            return Err(format!("--k8s-api-server {:?}: no host", cfg.api_server));
        }
        kube::Config::new(url)
    };
    if let Some(token) = &cfg.token_file {
        config.auth_info.token_file = Some(token.to_string_lossy().into_owned());
    }
    if let Some(ca) = &cfg.ca_file {
        config.root_cert_file = Some(ca.clone());
    }
    Client::try_from(config).map_err(|e| format!("--k8s-api-server {}: {e}", cfg.api_server))
}

/// The peer a pod stands for, if it should be dialed.
pub fn peer_of(pod: &Pod, port: u16) -> Option<PeerSpec> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: std::net::IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    Some(PeerSpec {
        name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        address: std::net::SocketAddr::new(ip, port).to_string(),
        kind: PeerKind::Agent,
    })
}

/// Makes the pool's Kubernetes peers those of `want` (pod name → peer).
pub fn reconcile(pool: &Arc<Pool>, want: &BTreeMap<String, PeerSpec>) {
    let mut have: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for p in pool.peers() {
        if let Origin::Kubernetes(pod) = &p.origin {
            have.insert(pod.clone(), (p.id, p.spec.address.clone()));
        }
    }
    for (pod, (id, address)) in &have {
        if want.get(pod).is_none_or(|w| &w.address != address) {
            tracing::info!(pod = %pod, address = %address, "agent pod gone; peer removed");
            pool.remove(*id);
        }
    }
    for (pod, spec) in want {
        if have.get(pod).is_none_or(|(_, a)| a != &spec.address) {
            tracing::info!(pod = %pod, address = %spec.address, "agent pod found; peer added");
            pool.add(spec.clone(), Origin::Kubernetes(pod.clone()));
        }
    }
}

/// Follows the agents' pods forever, keeping the pool's Kubernetes peers in step. Errors are
/// logged and retried with the watcher's backoff; the peers known stay meanwhile.
pub async fn follow_pods(pool: Arc<Pool>, client: Client, cfg: K8sPeers) {
    let api: Api<Pod> = Api::namespaced(client, &cfg.namespace);
    let wc = watcher::Config::default().labels(&cfg.selector);
    let mut stream = std::pin::pin!(watcher::watcher(api, wc).default_backoff());
    let mut current: BTreeMap<String, PeerSpec> = BTreeMap::new();
    let mut listing: BTreeMap<String, PeerSpec> = BTreeMap::new();
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let pod_name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        match event {
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        namespace = %cfg.namespace,
                        selector = %cfg.selector,
                        error = %e,
                        "watching the agents' pods failed; retrying with backoff (known peers stay)"
                    );
                }
                failing = true;
                continue;
            }
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(pod)) => {
                if let Some(spec) = peer_of(&pod, cfg.port) {
                    listing.insert(pod_name(&pod), spec);
                }
            }
            Ok(Event::InitDone) => {
                if failing {
                    tracing::info!(namespace = %cfg.namespace, "watching the agents' pods again");
                }
                failing = false;
                current = std::mem::take(&mut listing);
                reconcile(&pool, &current);
            }
            Ok(Event::Apply(pod)) => {
                match peer_of(&pod, cfg.port) {
                    Some(spec) => current.insert(pod_name(&pod), spec),
                    None => current.remove(&pod_name(&pod)),
                };
                reconcile(&pool, &current);
            }
            Ok(Event::Delete(pod)) => {
                current.remove(&pod_name(&pod));
                reconcile(&pool, &current);
            }
        }
    }
}

/// Default of [`K8sPeers::selector`].
pub const DEFAULT_SELECTOR: &str = "app.kubernetes.io/name=periscope-agent";
/// Default of [`K8sPeers::namespace`].
pub const DEFAULT_NAMESPACE: &str = "periscope";

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ip: Option<&str>, deleting: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent-x", "namespace": "periscope",
                "deletionTimestamp": if deleting { Some("2026-01-01T00:00:00Z") } else { None }},
            "spec": {"nodeName": "node-7", "containers": []},
            "status": {"phase": phase, "podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn only_running_pods_with_an_ip_are_peers() {
        let p = peer_of(&pod("Running", Some("10.1.2.3"), false), 4244).unwrap();
        assert_eq!(p.address, "10.1.2.3:4244");
        assert_eq!(p.name.as_deref(), Some("node-7"));
        assert_eq!(p.kind, PeerKind::Agent);
        let p6 = peer_of(&pod("Running", Some("fd00::5"), false), 4244).unwrap();
        assert_eq!(p6.address, "[fd00::5]:4244");
        assert!(peer_of(&pod("Pending", Some("10.1.2.3"), false), 4244).is_none());
        assert!(peer_of(&pod("Running", None, false), 4244).is_none());
        assert!(peer_of(&pod("Running", Some("not-an-ip"), false), 4244).is_none());
        assert!(peer_of(&pod("Running", Some("10.1.2.3"), true), 4244).is_none());
    }
}

//! The agent's status file (`<state-dir>/status.json`): what is in force, for operators and
//! tests (like `cilium status`). Written atomically (temp file + rename) after every change.
use std::path::Path;

use std::collections::BTreeMap;

use periscope_datapath_common::{dir, metric};
use periscope_proto::flow::DropReason;
use serde_json::json;

use crate::agent::State;
use crate::datapath::Datapath;
use crate::monitor::MonitorStats;

/// Where the agent stands with its inputs.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Revision of the applied state; grows by one with every applied change.
    pub revision: u64,
    /// Number of rejected inputs (bad topology/policy files) so far.
    pub rejected: u64,
    /// Error of the last rejected input, cleared when a change is applied.
    pub error: Option<String>,
    /// Address the gRPC API listens on.
    pub api_address: Option<String>,
    /// Address of the metrics endpoint.
    pub metrics_address: Option<String>,
}

/// Datapath and reader counters for the status file.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counters {
    /// Forwarded packets by direction name.
    pub forwarded: BTreeMap<String, u64>,
    /// Dropped packets by drop reason name (Hubble's enum names), all directions.
    pub dropped: BTreeMap<String, u64>,
    /// Events written to the perf ring by the datapath.
    pub events_sent: u64,
    /// Events the datapath could not write (ring full or no reader).
    pub events_lost_in_kernel: u64,
    /// Samples the readers saw reported lost by the perf ring.
    pub events_lost_ring: u64,
    /// Samples dropped because the decoder queue was full.
    pub events_lost_queue: u64,
    /// Samples read from the ring.
    pub events_read: u64,
    /// Connection-tracking entries.
    pub ct_entries: usize,
}

impl Counters {
    /// Reads the datapath's per-CPU counters and the readers' counters.
    pub fn collect(dp: &Datapath, readers: &MonitorStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let mut c = Counters::default();
        for (idx, v) in dp.metrics() {
            let kind = idx >> 10;
            let direction = ((idx >> 8) & 3) as u8;
            let reason = (idx & 0xff) as i32;
            match kind {
                metric::PACKETS if reason == 0 => {
                    let d = match direction {
                        dir::INGRESS => "ingress",
                        dir::EGRESS => "egress",
                        _ => "unknown",
                    };
                    *c.forwarded.entry(d.into()).or_default() += v.count;
                }
                metric::PACKETS => {
                    let name = DropReason::try_from(reason)
                        .map(|r| r.as_str_name().to_string())
                        .unwrap_or_else(|_| reason.to_string());
                    *c.dropped.entry(name).or_default() += v.count;
                }
                metric::EVENTS_SENT => c.events_sent += v.count,
                metric::EVENTS_LOST => c.events_lost_in_kernel += v.count,
                _ => {}
            }
        }
        c.events_lost_ring = readers.lost_ring.load(Relaxed);
        c.events_lost_queue = readers.lost_queue.load(Relaxed);
        c.events_read = readers.read.load(Relaxed);
        c.ct_entries = dp.ct_entries();
        c
    }
}

/// The services the load balancer translates: each with its frontends (`address:port/PROTO`)
/// and backends (address, weight, `active` or `terminating`; weight 0 takes no new
/// connections either).
fn services(state: &State) -> Vec<serde_json::Value> {
    state
        .lb_services
        .iter()
        .map(|svc| {
            json!({
                "namespace": svc.namespace,
                "name": svc.name,
                "frontends": svc.frontends.iter().map(|(ip, port, proto)| {
                    let proto = match *proto {
                        6 => "TCP".to_string(),
                        17 => "UDP".to_string(),
                        132 => "SCTP".to_string(),
                        p => p.to_string(),
                    };
                    format!("{}/{proto}", std::net::SocketAddr::new(*ip, *port))
                }).collect::<Vec<_>>(),
                "backends": svc.backends.iter().map(|b| json!({
                    "address": b.addr.to_string(),
                    "weight": b.weight,
                    "state": if b.terminating { "terminating" } else { "active" },
                })).collect::<Vec<_>>(),
                "affinity_timeout_s": svc.affinity_timeout_s,
            })
        })
        .collect()
}

/// Writes the status: revision of the applied state, rejected inputs and the last error,
/// endpoints with their identities and enforcement, policies, warnings (unsupported policy
/// features, named ports no endpoint defines), services and counters.
pub fn write(
    dir: &Path,
    state: &State,
    progress: &Progress,
    counters: Option<&Counters>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let endpoints: Vec<_> = state
        .endpoints
        .iter()
        .map(|(ifname, e)| {
            json!({
                "id": e.id,
                "name": e.pod.full_name(),
                "interface": ifname,
                "identity": e.identity,
                "labels": e.labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                "ingress_enforced": e.ingress_enforced,
                "egress_enforced": e.egress_enforced,
                "audit": e.audit,
                "policies": e.selected_by.iter()
                    .filter_map(|r| state.policies.by_rule_id(*r).map(|p| p.full_name()))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let warnings: Vec<&String> = state
        .policies
        .warnings
        .iter()
        .chain(&state.named_port_warnings)
        .collect();
    let doc = json!({
        "node": state.node,
        "cluster": state.cluster,
        "revision": progress.revision,
        "rejected": progress.rejected,
        "api_address": progress.api_address,
        "metrics_address": progress.metrics_address,
        "error": progress.error,
        "endpoints": endpoints,
        // Pods of this node not attached (no topology file: no per-pod route to a veth yet).
        "unattached_pods": state.unattached.iter().map(|(name, u)| json!({
            "name": name,
            "ips": u.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            "reason": u.reason.to_string(),
        })).collect::<Vec<_>>(),
        "policies": state.policies.policies.iter().map(|p| json!({
            "kind": p.kind, "name": p.name, "namespace": p.namespace,
            "source": p.source.display().to_string(),
        })).collect::<Vec<_>>(),
        "warnings": warnings,
        "counters": counters,
        "services": services(state),
        "identities": state.identities.iter().map(|(id, l)| json!({
            "id": id, "labels": l.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let tmp = dir.join(".status.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::rename(tmp, dir.join("status.json"))
}

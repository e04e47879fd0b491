//! The agent's status file (`<state-dir>/status.json`): what is in force, for operators and
//! tests (like `cilium status`). Written atomically (temp file + rename) after every change.
use std::path::Path;

use serde_json::json;

use crate::agent::State;

/// Writes the status: revision of the applied state, the last rejected input's error (if any),
/// endpoints with their identities and enforcement, policies and warnings.
pub fn write(dir: &Path, state: &State, revision: u64, error: Option<&str>) -> std::io::Result<()> {
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
    let doc = json!({
        "node": state.node,
        "cluster": state.cluster,
        "revision": revision,
        "error": error,
        "endpoints": endpoints,
        "policies": state.policies.policies.iter().map(|p| json!({
            "kind": p.kind, "name": p.name, "namespace": p.namespace,
            "source": p.source.display().to_string(),
        })).collect::<Vec<_>>(),
        "warnings": state.policies.warnings,
        "identities": state.identities.iter().map(|(id, l)| json!({
            "id": id, "labels": l.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let tmp = dir.join(".status.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::rename(tmp, dir.join("status.json"))
}

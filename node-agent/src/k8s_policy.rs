//! Kubernetes NetworkPolicy (networking.k8s.io/v1), translated into the same rules as
//! CiliumNetworkPolicy (Cilium does the same):
//!
//! - `podSelector` selects endpoints of the policy's namespace;
//! - `policyTypes` (default: Ingress, plus Egress when `egress` is present) make the direction
//!   default-deny; an empty rule list allows nothing, a rule without peers and ports allows all;
//! - a peer with `podSelector` alone is in the policy's namespace, with `namespaceSelector` the
//!   namespace labels select (`{}` = every namespace; each namespace carries
//!   `kubernetes.io/metadata.name`), both together AND;
//! - `ipBlock` is a CIDR with `except`; ports default to TCP; `endPort` makes a range; a named
//!   port (`port: http`) resolves like a CiliumNetworkPolicy's (see [`crate::policy`]).
use std::path::Path;

use periscope_datapath_common as dp;
use serde::Deserialize;

use crate::identity::{LABEL_NAMESPACE, LABEL_NS_LABELS};
use crate::policy::{
    CompiledRule, Expression, PeerSpec, Policy, PolicyError, PortSel, Section, Selector, StrOrInt,
    check_selector, parse_cidr, port_range,
};

/// A NetworkPolicy document.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyDoc {
    /// `networking.k8s.io/v1`.
    pub api_version: String,
    /// `NetworkPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: crate::policy::Metadata,
    /// The spec.
    pub spec: NetworkPolicySpec,
    /// Ignored.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// `spec` of a NetworkPolicy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// Pods of the namespace the policy applies to (`{}` = all).
    pub pod_selector: Selector,
    /// `Ingress`, `Egress`.
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    /// Allowed ingress.
    #[serde(default)]
    pub ingress: Option<Vec<NpRule>>,
    /// Allowed egress.
    #[serde(default)]
    pub egress: Option<Vec<NpRule>>,
}

/// An ingress (`from`) or egress (`to`) rule.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NpRule {
    /// Ingress peers.
    #[serde(default)]
    pub from: Option<Vec<NpPeer>>,
    /// Egress peers.
    #[serde(default)]
    pub to: Option<Vec<NpPeer>>,
    /// Ports.
    #[serde(default)]
    pub ports: Option<Vec<NpPort>>,
}

/// A peer.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NpPeer {
    /// Pods.
    #[serde(default)]
    pub pod_selector: Option<Selector>,
    /// Namespaces.
    #[serde(default)]
    pub namespace_selector: Option<Selector>,
    /// A CIDR.
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    /// The CIDR.
    pub cidr: String,
    /// Excluded sub-CIDRs.
    #[serde(default)]
    pub except: Vec<String>,
}

/// A port.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NpPort {
    /// TCP (default), UDP or SCTP.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Number or name; absent = all ports.
    #[serde(default)]
    pub port: Option<StrOrInt>,
    /// End of a range.
    #[serde(default)]
    pub end_port: Option<u32>,
}

/// Turns namespace labels into an endpoint selector on the endpoints' namespace labels.
fn namespace_selector(ns: &Selector) -> Selector {
    let key = |k: &str| format!("k8s:{LABEL_NS_LABELS}{k}");
    Selector {
        match_labels: ns
            .match_labels
            .iter()
            .map(|(k, v)| (key(k), v.clone()))
            .collect(),
        match_expressions: ns
            .match_expressions
            .iter()
            .map(|e| Expression {
                key: key(&e.key),
                operator: e.operator.clone(),
                values: e.values.clone(),
            })
            .collect(),
    }
}

/// Validates and translates a NetworkPolicy.
pub fn validate(doc: NetworkPolicyDoc, path: &Path) -> Result<Policy, PolicyError> {
    let namespace = doc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let label = format!("NetworkPolicy {namespace}/{}", doc.metadata.name);
    let invalid = |field: String, reason: String| PolicyError::Invalid {
        path: path.into(),
        policy: label.clone(),
        field,
        reason,
    };
    if doc.kind != "NetworkPolicy" {
        return Err(invalid(
            "kind".into(),
            format!("{:?} is not NetworkPolicy", doc.kind),
        ));
    }
    if doc.metadata.name.is_empty() {
        return Err(invalid("metadata.name".into(), "required".into()));
    }
    check_selector(&doc.spec.pod_selector).map_err(|r| invalid("spec.podSelector".into(), r))?;
    let types = match &doc.spec.policy_types {
        Some(t) => t.clone(),
        None => {
            let mut t = vec!["Ingress".to_string()];
            if doc.spec.egress.is_some() {
                t.push("Egress".into());
            }
            t
        }
    };
    let mut sections = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let (direction, rules, name, peers_field) = match t.as_str() {
            "Ingress" => (dp::dir::INGRESS, &doc.spec.ingress, "ingress", "from"),
            "Egress" => (dp::dir::EGRESS, &doc.spec.egress, "egress", "to"),
            other => {
                return Err(invalid(
                    format!("spec.policyTypes[{i}]"),
                    format!("{other:?} is not Ingress or Egress"),
                ));
            }
        };
        let mut peers = Vec::new();
        for (j, r) in rules.iter().flatten().enumerate() {
            let at = format!("spec.{name}[{j}]");
            let wrong = if direction == dp::dir::INGRESS {
                r.to.is_some()
            } else {
                r.from.is_some()
            };
            if wrong {
                return Err(invalid(
                    at,
                    format!("only `{peers_field}` is valid in {name} rules"),
                ));
            }
            let list = if direction == dp::dir::INGRESS {
                &r.from
            } else {
                &r.to
            };
            let mut spec = PeerSpec::default();
            match list {
                None => spec.any_peer = true,
                Some(l) if l.is_empty() => spec.any_peer = true,
                Some(l) => {
                    for (k, p) in l.iter().enumerate() {
                        let pat = format!("{at}.{peers_field}[{k}]");
                        match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
                            (None, None, None) => {
                                return Err(invalid(
                                    pat,
                                    "a peer needs podSelector, namespaceSelector or ipBlock".into(),
                                ));
                            }
                            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                                return Err(invalid(
                                    pat,
                                    "ipBlock cannot be combined with selectors".into(),
                                ));
                            }
                            (_, _, Some(b)) => {
                                let c = parse_cidr(&b.cidr)
                                    .map_err(|r| invalid(format!("{pat}.ipBlock.cidr"), r))?;
                                let mut except = Vec::new();
                                for (e, x) in b.except.iter().enumerate() {
                                    let x = parse_cidr(x).map_err(|r| {
                                        invalid(format!("{pat}.ipBlock.except[{e}]"), r)
                                    })?;
                                    if !c.contains(&x) {
                                        return Err(invalid(
                                            format!("{pat}.ipBlock.except[{e}]"),
                                            format!("{x} is not inside {c}"),
                                        ));
                                    }
                                    except.push(x);
                                }
                                spec.cidrs.push((c, except));
                            }
                            (pod, nsel, None) => {
                                let mut sel = pod.clone().unwrap_or_default();
                                check_selector(&sel)
                                    .map_err(|r| invalid(format!("{pat}.podSelector"), r))?;
                                let implicit = match nsel {
                                    None => Some(namespace.clone()),
                                    Some(n) => {
                                        check_selector(n).map_err(|r| {
                                            invalid(format!("{pat}.namespaceSelector"), r)
                                        })?;
                                        let ns = namespace_selector(n);
                                        sel.match_labels.extend(ns.match_labels);
                                        sel.match_expressions.extend(ns.match_expressions);
                                        None
                                    }
                                };
                                spec.endpoints.push((sel, implicit));
                            }
                        }
                    }
                }
            }
            for (k, port) in r.ports.iter().flatten().enumerate() {
                let pat = format!("{at}.ports[{k}]");
                let proto = match port.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => dp::proto::TCP,
                    "UDP" => dp::proto::UDP,
                    "SCTP" => 132,
                    other => {
                        return Err(invalid(
                            format!("{pat}.protocol"),
                            format!("{other:?} is not TCP, UDP or SCTP"),
                        ));
                    }
                };
                match port_range(port.port.as_ref(), port.end_port, 1)
                    .map_err(|(field, reason)| invalid(format!("{pat}.{field}"), reason))?
                {
                    PortSel::Range(p, end) => spec.ports.push((p, end, proto)),
                    PortSel::Named(name) => spec.named_ports.push((name, proto)),
                }
            }
            peers.push(spec);
        }
        sections.push(Section {
            direction,
            deny: false,
            peers,
        });
    }
    let _ = LABEL_NAMESPACE;
    Ok(Policy {
        source: path.into(),
        kind: "NetworkPolicy".into(),
        name: doc.metadata.name,
        namespace: Some(namespace),
        rules: vec![CompiledRule {
            selector: Some(doc.spec.pod_selector),
            sections,
            default_deny_ingress: true,
            default_deny_egress: true,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identities, pod_labels};
    use crate::policy::{EndpointCtx, Mode, NamedPorts, PolicySet, Universe, compile};
    use periscope_datapath_common::PolicyKey;
    use std::collections::BTreeMap;

    const NP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: api}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ops}}
      podSelector: {matchLabels: {app: backup}}
    - ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}
    ports:
    - {protocol: TCP, port: 5432}
    - {port: 9000, endPort: 9001}
  egress: []
"#;

    #[test]
    fn network_policy_translates_like_cilium() {
        let set = PolicySet::parse(NP, Path::new("np.yaml")).unwrap();
        let l = |app: &str, ns: &str| {
            pod_labels(
                &[("app".to_string(), app.to_string())].into_iter().collect(),
                ns,
                "c",
            )
        };
        let (db, api, api_other, backup_ops, backup_prod) = (
            l("db", "prod"),
            l("api", "prod"),
            l("api", "dev"),
            l("backup", "ops"),
            l("backup", "prod"),
        );
        let ids = Identities::allocate([&db, &api, &api_other, &backup_ops, &backup_prod]);
        let cidrs: BTreeMap<_, _> = set
            .cidrs()
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c, dp::IDENTITY_FIRST_CIDR + i as u32))
            .collect();
        let u = Universe {
            identities: &ids,
            cidr_identities: &cidrs,
            named_ports: &BTreeMap::new(),
            all_named_ports: &NamedPorts::default(),
        };
        let pol = compile(
            &EndpointCtx {
                labels: &db,
                namespace: "prod",
                mode: Mode::Default,
                named_ports: &NamedPorts::default(),
            },
            &set,
            &u,
        );
        assert!(pol.ingress_enforced && pol.egress_enforced);
        let has = |lab: &crate::identity::LabelSet, port, proto| {
            pol.entries.contains_key(&PolicyKey::new(
                ids.id_of(lab).unwrap(),
                port,
                proto,
                dp::dir::INGRESS,
            ))
        };
        assert!(has(&api, 5432, 6) && has(&api, 9001, 6));
        assert!(
            !has(&api_other, 5432, 6),
            "podSelector alone stays in the policy's namespace"
        );
        assert!(
            has(&backup_ops, 5432, 6) && !has(&backup_prod, 5432, 6),
            "namespaceSelector AND podSelector"
        );
        let c24 = cidrs[&"192.0.2.0/24".parse().unwrap()];
        let c25 = cidrs[&"192.0.2.128/25".parse().unwrap()];
        assert!(
            pol.entries
                .contains_key(&PolicyKey::new(c24, 5432, 6, dp::dir::INGRESS))
        );
        assert!(
            !pol.entries
                .contains_key(&PolicyKey::new(c25, 5432, 6, dp::dir::INGRESS))
        );
        assert!(
            !pol.entries.keys().any(|k| k.direction == dp::dir::EGRESS),
            "egress: [] denies all"
        );
    }

    #[test]
    fn named_ports_default_to_tcp() {
        let set = PolicySet::parse(
            &NP.replace("port: 5432", "port: postgres"),
            Path::new("np.yaml"),
        )
        .unwrap();
        let peer = &set.policies[0].rules[0].sections[0].peers[0];
        assert_eq!(
            peer.named_ports,
            vec![("postgres".to_string(), dp::proto::TCP)]
        );
        assert_eq!(peer.ports, vec![(9000, 9001, dp::proto::TCP)]);
    }

    #[test]
    fn empty_rule_allows_all_and_errors_name_fields() {
        let all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  podSelector: {}\n  ingress: [{}]\n";
        let set = PolicySet::parse(all, Path::new("a.yaml")).unwrap();
        let sec = &set.policies[0].rules[0].sections[0];
        assert!(sec.peers[0].any_peer && sec.peers[0].ports.is_empty());
        for (bad, needle) in [
            (
                NP.replace("port: 5432", "port: 0"),
                "spec.ingress[0].ports[0].port",
            ),
            (
                NP.replace("protocol: TCP", "protocol: ICMP"),
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                NP.replace("[Ingress, Egress]", "[Ingress, Sideways]"),
                "spec.policyTypes[1]",
            ),
            (
                NP.replace("192.0.2.128/25", "198.51.100.0/24"),
                "ipBlock.except[0]",
            ),
            (
                NP.replace("podSelector: {matchLabels: {app: db}}", "podSelectr: {}"),
                "unknown field",
            ),
            (
                NP.replace("port: 5432", "port: postgres_sql"),
                "spec.ingress[0].ports[0].port",
            ),
            (
                NP.replace("port: 9000, endPort: 9001", "port: metrics, endPort: 9001"),
                "spec.ingress[0].ports[1].endPort",
            ),
        ] {
            let e = PolicySet::parse(&bad, Path::new("np.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(needle) && e.contains("np.yaml"),
                "{e:?} should contain {needle:?}"
            );
        }
    }
}

//! Network policy: CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2) YAML, and
//! its compilation into per-endpoint policy-map entries.
//!
//! Supported: `endpointSelector` (matchLabels, matchExpressions), `ingress`/`egress` and
//! `ingressDeny`/`egressDeny` with `fromEndpoints`/`toEndpoints` (namespace-aware, `{}` = all),
//! `fromCIDR`/`toCIDR`, `fromCIDRSet`/`toCIDRSet` with `except`, `fromEntities`/`toEntities`
//! (world, cluster, host, remote-node, init, health, unmanaged, kube-apiserver, ingress, all),
//! `toPorts` (port, endPort, protocol TCP/UDP/SCTP/ANY), `icmps`, and `enableDefaultDeny`.
//! L7 rules (`toPorts[].rules`), `toFQDNs`, `toServices`, `fromRequires`, `nodeSelector` and
//! authentication are reported as unsupported warnings and the rest of the policy is enforced at
//! L3/L4.
//!
//! Named ports (`port: http`, Kubernetes' IANA service names) resolve like Cilium's: in an
//! ingress rule against the container ports of the selected endpoint itself, in an egress rule
//! against the container ports of each peer (a name with different numbers on different peers
//! allows each peer its own number; peers that are not endpoints — CIDRs, entities, any peer —
//! get every number the name has on the cluster's endpoints). A name no endpoint defines allows
//! nothing on that port (the agent warns once); a malformed name is a validation error.
//!
//! Deny wins over allow; a direction becomes default-deny for an endpoint as soon as a policy
//! selecting it has a section for that direction (Cilium's default enforcement mode).
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use periscope_datapath_common::{self as dp, POLICY_F_DENY, PolicyEntry, PolicyKey};
use serde::Deserialize;

use crate::identity::{Identities, LABEL_NAMESPACE, Label, LabelSet};

// ---------------------------------------------------------------------------------------------
// The YAML model.
// ---------------------------------------------------------------------------------------------

/// A policy document as users write it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDoc {
    /// `cilium.io/v2`.
    pub api_version: String,
    /// `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: Metadata,
    /// One rule.
    #[serde(default)]
    pub spec: Option<Rule>,
    /// Several rules.
    #[serde(default)]
    pub specs: Option<Vec<Rule>>,
    /// Ignored (written by the API server).
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
    /// Free-form description (some users write it at the top level).
    #[serde(default)]
    pub description: Option<String>,
}

/// Object metadata (only name and namespace are used; other fields are accepted).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Metadata {
    /// Policy name.
    pub name: String,
    /// Namespace (CiliumNetworkPolicy); absent for clusterwide policies.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Free-form description some users put here.
    #[serde(default)]
    pub description: Option<String>,
    /// Labels of the policy object.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A rule: which endpoints it selects and what they may send/receive.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Endpoints the rule applies to.
    #[serde(default)]
    pub endpoint_selector: Option<Selector>,
    /// Nodes the rule applies to (host policies; not enforced).
    #[serde(default)]
    pub node_selector: Option<Selector>,
    /// Allowed ingress.
    #[serde(default)]
    pub ingress: Option<Vec<PeerRule>>,
    /// Denied ingress.
    #[serde(default)]
    pub ingress_deny: Option<Vec<PeerRule>>,
    /// Allowed egress.
    #[serde(default)]
    pub egress: Option<Vec<PeerRule>>,
    /// Denied egress.
    #[serde(default)]
    pub egress_deny: Option<Vec<PeerRule>>,
    /// Whether this rule puts selected endpoints into default deny.
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Rule labels.
    #[serde(default)]
    pub labels: Option<serde_yaml::Value>,
}

/// `enableDefaultDeny`.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    /// Ingress default deny (default true).
    #[serde(default)]
    pub ingress: Option<bool>,
    /// Egress default deny (default true).
    #[serde(default)]
    pub egress: Option<bool>,
}

/// A label selector.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// All must match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// All must hold.
    #[serde(default)]
    pub match_expressions: Vec<Expression>,
}

/// A selector expression.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// Values for In/NotIn.
    #[serde(default)]
    pub values: Vec<String>,
}

/// One ingress or egress (allow or deny) rule; `from*` fields for ingress, `to*` for egress.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerRule {
    /// Ingress: peer endpoints.
    #[serde(default)]
    pub from_endpoints: Option<Vec<Selector>>,
    /// Ingress: peer CIDRs.
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    /// Ingress: peer CIDRs with exceptions.
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrSet>>,
    /// Ingress: peer entities.
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    /// Ingress: required labels (unsupported).
    #[serde(default)]
    pub from_requires: Option<Vec<Selector>>,
    /// Egress: peer endpoints.
    #[serde(default)]
    pub to_endpoints: Option<Vec<Selector>>,
    /// Egress: peer CIDRs.
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    /// Egress: peer CIDRs with exceptions.
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrSet>>,
    /// Egress: peer entities.
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    /// Egress: required labels (unsupported).
    #[serde(default)]
    pub to_requires: Option<Vec<Selector>>,
    /// Egress: DNS names (unsupported).
    #[serde(default, rename = "toFQDNs")]
    pub to_fqdns: Option<serde_yaml::Value>,
    /// Egress: services (unsupported).
    #[serde(default)]
    pub to_services: Option<serde_yaml::Value>,
    /// Egress: cloud groups (unsupported).
    #[serde(default)]
    pub to_groups: Option<serde_yaml::Value>,
    /// Ingress: cloud groups (unsupported).
    #[serde(default)]
    pub from_groups: Option<serde_yaml::Value>,
    /// Ports.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
    /// Mutual authentication (unsupported).
    #[serde(default)]
    pub authentication: Option<serde_yaml::Value>,
}

/// A CIDR with exceptions.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrSet {
    /// The prefix.
    pub cidr: String,
    /// Sub-prefixes excluded.
    #[serde(default)]
    pub except: Vec<String>,
}

/// `toPorts` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// Ports.
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
    /// L7 rules (unsupported: enforced at L4).
    #[serde(default)]
    pub rules: Option<serde_yaml::Value>,
    /// TLS SNI (unsupported).
    #[serde(default)]
    pub server_names: Option<serde_yaml::Value>,
    /// Envoy listener (unsupported).
    #[serde(default)]
    pub listener: Option<serde_yaml::Value>,
    /// TLS origination (unsupported).
    #[serde(default, rename = "originatingTLS")]
    pub originating_tls: Option<serde_yaml::Value>,
    /// TLS termination (unsupported).
    #[serde(default, rename = "terminatingTLS")]
    pub terminating_tls: Option<serde_yaml::Value>,
}

/// A port (number as string or number) and protocol.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// Port number (or name).
    pub port: StrOrInt,
    /// End of a port range.
    #[serde(default)]
    pub end_port: Option<u32>,
    /// TCP, UDP, SCTP or ANY (default ANY).
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `icmps` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    /// Fields.
    pub fields: Vec<IcmpField>,
}

/// An ICMP type (number or name) and family.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    /// `IPv4` (default) or `IPv6`.
    #[serde(default)]
    pub family: Option<String>,
    /// ICMP type.
    #[serde(rename = "type")]
    pub icmp_type: StrOrInt,
}

/// A YAML value that may be written as a number or a string.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StrOrInt {
    /// Number.
    Int(i64),
    /// String.
    Str(String),
}

impl fmt::Display for StrOrInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrOrInt::Int(i) => write!(f, "{i}"),
            StrOrInt::Str(s) => f.write_str(s),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading and validation.
// ---------------------------------------------------------------------------------------------

/// Why a policy file was rejected. Nothing of it is applied; the policies in force stay.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file or directory could not be read.
    #[error("policy {path}: cannot read: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// YAML syntax or schema error.
    #[error("policy {path} (document {doc}): {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// 1-based document index in the file.
        doc: usize,
        /// The parser's message (with field path, line and column).
        message: String,
    },
    /// A semantic error.
    #[error("policy {path}: {policy}: {field}: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// `Kind namespace/name`.
        policy: String,
        /// Field path, e.g. `spec.ingress[0].toPorts[0].ports[0].port`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// A policy of the set, validated and compiled to its peers and ports.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// File it came from.
    pub source: PathBuf,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (None for clusterwide).
    pub namespace: Option<String>,
    /// Rules, parsed.
    pub rules: Vec<CompiledRule>,
}

impl Policy {
    /// `namespace/name` or `name`.
    pub fn full_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A rule with validated selectors, peers and ports.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledRule {
    /// Endpoint selector (None = selects nothing, e.g. a node-only rule).
    pub selector: Option<Selector>,
    /// Sections by direction: (direction, deny, rules).
    pub sections: Vec<Section>,
    /// Default deny per direction when this rule selects an endpoint.
    pub default_deny_ingress: bool,
    /// Default deny for egress.
    pub default_deny_egress: bool,
}

/// One of ingress, ingressDeny, egress, egressDeny.
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    /// [`dp::dir`].
    pub direction: u8,
    /// Deny section.
    pub deny: bool,
    /// The rules.
    pub peers: Vec<PeerSpec>,
}

/// Validated peer rule.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PeerSpec {
    /// Endpoint selectors (each with its implicit namespace).
    pub endpoints: Vec<(Selector, Option<String>)>,
    /// CIDRs with exceptions.
    pub cidrs: Vec<(IpNet, Vec<IpNet>)>,
    /// Entities.
    pub entities: Vec<Entity>,
    /// No L3 restriction (none of the above given).
    pub any_peer: bool,
    /// (port, end port, protocol); port 0 = any. Empty (and no named ports) = all ports and
    /// protocols.
    pub ports: Vec<(u16, u16, u8)>,
    /// Named ports as (name, protocol), resolved per endpoint when compiling.
    pub named_ports: Vec<(String, u8)>,
}

impl PeerSpec {
    /// Whether the rule restricts ports at all (numbers or names).
    pub fn has_ports(&self) -> bool {
        !self.ports.is_empty() || !self.named_ports.is_empty()
    }
}

/// A `toPorts`/`ports` entry's port, validated: a range of numbers or a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortSel {
    /// Inclusive range; (0, 0) = any port.
    Range(u16, u16),
    /// A named port (IANA service name).
    Named(String),
}

/// Cilium entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entity {
    /// Outside the cluster.
    World,
    /// Everything in the cluster.
    Cluster,
    /// The local host.
    Host,
    /// Other nodes.
    RemoteNode,
    /// Endpoints without identity yet.
    Init,
    /// Health endpoints.
    Health,
    /// Unmanaged endpoints.
    Unmanaged,
    /// The API server.
    KubeApiserver,
    /// Ingress proxies.
    Ingress,
    /// Anything.
    All,
}

impl FromStr for Entity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "world" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "init" => Entity::Init,
            "health" => Entity::Health,
            "unmanaged" => Entity::Unmanaged,
            "kube-apiserver" => Entity::KubeApiserver,
            "ingress" => Entity::Ingress,
            "all" => Entity::All,
            other => {
                return Err(format!(
                    "unknown entity {other:?} (world, cluster, host, remote-node, init, health, unmanaged, kube-apiserver, ingress, all)"
                ));
            }
        })
    }
}

/// The policies in force, and the warnings about parts that are not enforced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    /// Policies sorted by (namespace, name).
    pub policies: Vec<Policy>,
    /// Unsupported features found, one line each.
    pub warnings: Vec<String>,
}

impl PolicySet {
    /// Loads every policy document of a file, or of every `*.yaml`/`*.yml` file of a directory.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let read_err = |source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        if path.is_dir() {
            for e in std::fs::read_dir(path).map_err(read_err)? {
                let p = e
                    .map_err(|source| PolicyError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?
                    .path();
                if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut set = PolicySet::default();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|source| PolicyError::Read {
                path: f.clone(),
                source,
            })?;
            set.add_yaml(&text, &f)?;
        }
        set.finish(path)?;
        Ok(set)
    }

    /// Parses policies from YAML text (several documents allowed); `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let mut set = PolicySet::default();
        set.add_yaml(text, path)?;
        set.finish(path)?;
        Ok(set)
    }

    /// Adds policy documents that came from a metadata source (e.g. the Kubernetes API), named
    /// `origin` in errors, and re-checks the whole set. A bad document is an error naming it;
    /// the caller keeps the policies in force.
    pub fn add_documents<'a>(
        &mut self,
        docs: impl IntoIterator<Item = (&'a str, &'a serde_yaml::Value)>,
    ) -> Result<(), PolicyError> {
        for (origin, value) in docs {
            self.add_value(value.clone(), Path::new(origin), 1)?;
        }
        self.finish(Path::new("<sources>"))
    }

    fn add_value(
        &mut self,
        value: serde_yaml::Value,
        path: &Path,
        doc: usize,
    ) -> Result<(), PolicyError> {
        let parse_err = |e: serde_path_to_error::Error<serde_yaml::Error>| PolicyError::Parse {
            path: path.into(),
            doc,
            message: e.to_string(),
        };
        let is_k8s =
            value.get("apiVersion").and_then(|v| v.as_str()) == Some("networking.k8s.io/v1");
        let policy = if is_k8s {
            let d: crate::k8s_policy::NetworkPolicyDoc =
                serde_path_to_error::deserialize(value).map_err(parse_err)?;
            crate::k8s_policy::validate(d, path)?
        } else {
            let d: PolicyDoc = serde_path_to_error::deserialize(value).map_err(parse_err)?;
            validate(d, path, &mut self.warnings)?
        };
        self.policies.push(policy);
        Ok(())
    }

    fn add_yaml(&mut self, text: &str, path: &Path) -> Result<(), PolicyError> {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(de).map_err(|e| PolicyError::Parse {
                path: path.into(),
                doc: i + 1,
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue; // empty document (e.g. a trailing `---`)
            }
            self.add_value(value, path, i + 1)?;
        }
        Ok(())
    }

    fn finish(&mut self, path: &Path) -> Result<(), PolicyError> {
        self.policies.sort_by(|a, b| {
            (&a.namespace, &a.name, &a.kind).cmp(&(&b.namespace, &b.name, &b.kind))
        });
        for w in self.policies.windows(2) {
            if w[0].namespace == w[1].namespace && w[0].name == w[1].name && w[0].kind == w[1].kind
            {
                return Err(PolicyError::Invalid {
                    path: path.into(),
                    policy: format!("{} {}", w[1].kind, w[1].full_name()),
                    field: "metadata.name".into(),
                    reason: format!(
                        "defined twice (in {} and {})",
                        w[0].source.display(),
                        w[1].source.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The rule id of a policy (1-based index; 0 = no policy).
    pub fn rule_id(&self, index: usize) -> u32 {
        index as u32 + 1
    }

    /// The policy behind a rule id.
    pub fn by_rule_id(&self, rule_id: u32) -> Option<&Policy> {
        (rule_id as usize)
            .checked_sub(1)
            .and_then(|i| self.policies.get(i))
    }

    /// Every CIDR prefix mentioned by any policy (they get CIDR identities).
    pub fn cidrs(&self) -> BTreeSet<IpNet> {
        let mut out = BTreeSet::new();
        for p in &self.policies {
            for r in &p.rules {
                for s in &r.sections {
                    for peer in &s.peers {
                        for (c, except) in &peer.cidrs {
                            out.insert(*c);
                            out.extend(except.iter().copied());
                        }
                    }
                }
            }
        }
        out
    }
}

fn validate(
    doc: PolicyDoc,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Policy, PolicyError> {
    let clusterwide = match (doc.api_version.as_str(), doc.kind.as_str()) {
        ("cilium.io/v2", "CiliumNetworkPolicy") => false,
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => true,
        (v, k) => {
            return Err(PolicyError::Invalid {
                path: path.into(),
                policy: doc.metadata.name.clone(),
                field: "apiVersion/kind".into(),
                reason: format!(
                    "{v}/{k} is not supported (cilium.io/v2 CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy)"
                ),
            });
        }
    };
    let namespace = if clusterwide {
        None
    } else {
        Some(
            doc.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        )
    };
    let label = format!(
        "{} {}",
        doc.kind,
        match &namespace {
            Some(ns) => format!("{ns}/{}", doc.metadata.name),
            None => doc.metadata.name.clone(),
        }
    );
    let invalid = |field: String, reason: String| PolicyError::Invalid {
        path: path.into(),
        policy: label.clone(),
        field,
        reason,
    };
    if doc.metadata.name.is_empty() {
        return Err(invalid("metadata.name".into(), "required".into()));
    }
    let mut specs: Vec<(String, Rule)> = Vec::new();
    if let Some(s) = doc.spec {
        specs.push(("spec".into(), s));
    }
    if let Some(ss) = doc.specs {
        specs.extend(
            ss.into_iter()
                .enumerate()
                .map(|(i, s)| (format!("specs[{i}]"), s)),
        );
    }
    if specs.is_empty() {
        return Err(invalid(
            "spec".into(),
            "a policy needs spec or specs".into(),
        ));
    }
    let mut rules = Vec::new();
    for (at, rule) in specs {
        if rule.endpoint_selector.is_none() && rule.node_selector.is_none() {
            return Err(invalid(
                format!("{at}.endpointSelector"),
                "endpointSelector or nodeSelector is required".into(),
            ));
        }
        if rule.endpoint_selector.is_some() && rule.node_selector.is_some() {
            return Err(invalid(
                at.clone(),
                "endpointSelector and nodeSelector are mutually exclusive".into(),
            ));
        }
        if let Some(sel) = &rule.endpoint_selector {
            check_selector(sel).map_err(|r| invalid(format!("{at}.endpointSelector"), r))?;
        }
        if rule.node_selector.is_some() {
            warnings.push(format!(
                "{label}: {at}.nodeSelector: host policies are not enforced (no host endpoint)"
            ));
        }
        let mut sections = Vec::new();
        for (name, direction, deny, peers) in [
            ("ingress", dp::dir::INGRESS, false, &rule.ingress),
            ("ingressDeny", dp::dir::INGRESS, true, &rule.ingress_deny),
            ("egress", dp::dir::EGRESS, false, &rule.egress),
            ("egressDeny", dp::dir::EGRESS, true, &rule.egress_deny),
        ] {
            let Some(peers) = peers else { continue };
            let mut out = Vec::new();
            for (i, pr) in peers.iter().enumerate() {
                let field = format!("{at}.{name}[{i}]");
                out.push(
                    validate_peer(
                        pr,
                        direction,
                        namespace.as_deref(),
                        &field,
                        &label,
                        warnings,
                    )
                    .map_err(|(f, r)| invalid(f, r))?,
                );
            }
            sections.push(Section {
                direction,
                deny,
                peers: out,
            });
        }
        let dd = rule.enable_default_deny.clone().unwrap_or_default();
        rules.push(CompiledRule {
            selector: rule.endpoint_selector.clone(),
            sections,
            default_deny_ingress: dd.ingress.unwrap_or(true),
            default_deny_egress: dd.egress.unwrap_or(true),
        });
    }
    Ok(Policy {
        source: path.into(),
        kind: doc.kind,
        name: doc.metadata.name,
        namespace,
        rules,
    })
}

fn validate_peer(
    pr: &PeerRule,
    direction: u8,
    namespace: Option<&str>,
    at: &str,
    label: &str,
    warnings: &mut Vec<String>,
) -> Result<PeerSpec, (String, String)> {
    let ingress = direction == dp::dir::INGRESS;
    let (ep_field, cidr_field, set_field, ent_field) = if ingress {
        ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities")
    } else {
        ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities")
    };
    // Fields of the other direction are mistakes.
    let wrong = if ingress {
        [
            ("toEndpoints", pr.to_endpoints.is_some()),
            ("toCIDR", pr.to_cidr.is_some()),
            ("toCIDRSet", pr.to_cidr_set.is_some()),
            ("toEntities", pr.to_entities.is_some()),
            ("toFQDNs", pr.to_fqdns.is_some()),
            ("toServices", pr.to_services.is_some()),
        ]
    } else {
        [
            ("fromEndpoints", pr.from_endpoints.is_some()),
            ("fromCIDR", pr.from_cidr.is_some()),
            ("fromCIDRSet", pr.from_cidr_set.is_some()),
            ("fromEntities", pr.from_entities.is_some()),
            ("fromRequires", pr.from_requires.is_some()),
            ("fromGroups", pr.from_groups.is_some()),
        ]
    };
    if let Some((f, _)) = wrong.iter().find(|(_, set)| *set) {
        return Err((
            format!("{at}.{f}"),
            format!(
                "not valid in an {} rule",
                if ingress { "ingress" } else { "egress" }
            ),
        ));
    }
    let (eps, cidrs, sets, ents) = if ingress {
        (
            &pr.from_endpoints,
            &pr.from_cidr,
            &pr.from_cidr_set,
            &pr.from_entities,
        )
    } else {
        (
            &pr.to_endpoints,
            &pr.to_cidr,
            &pr.to_cidr_set,
            &pr.to_entities,
        )
    };
    let mut spec = PeerSpec::default();
    for (i, sel) in eps.iter().flatten().enumerate() {
        check_selector(sel).map_err(|r| (format!("{at}.{ep_field}[{i}]"), r))?;
        // In a namespaced policy, a selector that does not name a namespace selects within the
        // policy's namespace.
        let names_ns = sel
            .match_labels
            .keys()
            .chain(sel.match_expressions.iter().map(|e| &e.key))
            .any(|k| strip_source(k).1 == LABEL_NAMESPACE);
        let implicit = if names_ns {
            None
        } else {
            namespace.map(str::to_string)
        };
        spec.endpoints.push((sel.clone(), implicit));
    }
    for (i, c) in cidrs.iter().flatten().enumerate() {
        spec.cidrs.push((
            parse_cidr(c).map_err(|r| (format!("{at}.{cidr_field}[{i}]"), r))?,
            vec![],
        ));
    }
    for (i, s) in sets.iter().flatten().enumerate() {
        let c = parse_cidr(&s.cidr).map_err(|r| (format!("{at}.{set_field}[{i}].cidr"), r))?;
        let mut except = Vec::new();
        for (j, e) in s.except.iter().enumerate() {
            let e = parse_cidr(e).map_err(|r| (format!("{at}.{set_field}[{i}].except[{j}]"), r))?;
            if !c.contains(&e) {
                return Err((
                    format!("{at}.{set_field}[{i}].except[{j}]"),
                    format!("{e} is not inside {c}"),
                ));
            }
            except.push(e);
        }
        spec.cidrs.push((c, except));
    }
    for (i, e) in ents.iter().flatten().enumerate() {
        spec.entities.push(
            e.parse()
                .map_err(|r| (format!("{at}.{ent_field}[{i}]"), r))?,
        );
    }
    spec.any_peer = eps.is_none() && cidrs.is_none() && sets.is_none() && ents.is_none();
    for (f, v) in [
        ("fromRequires", pr.from_requires.is_some()),
        ("toRequires", pr.to_requires.is_some()),
        ("toFQDNs", pr.to_fqdns.is_some()),
        ("toServices", pr.to_services.is_some()),
        ("toGroups", pr.to_groups.is_some()),
        ("fromGroups", pr.from_groups.is_some()),
        ("authentication", pr.authentication.is_some()),
    ] {
        if v {
            warnings.push(format!("{label}: {at}.{f}: not supported, ignored"));
        }
    }
    for (i, tp) in pr.to_ports.iter().flatten().enumerate() {
        if tp.rules.is_some()
            || tp.listener.is_some()
            || tp.server_names.is_some()
            || tp.originating_tls.is_some()
            || tp.terminating_tls.is_some()
        {
            warnings.push(format!(
                "{label}: {at}.toPorts[{i}]: L7 rules/TLS/listener are not supported; enforced at L4 only"
            ));
        }
        if tp.ports.is_empty() {
            return Err((
                format!("{at}.toPorts[{i}].ports"),
                "at least one port is required".into(),
            ));
        }
        for (j, pp) in tp.ports.iter().enumerate() {
            let f = format!("{at}.toPorts[{i}].ports[{j}]");
            let sel = port_range(Some(&pp.port), pp.end_port, 0)
                .map_err(|(field, reason)| (format!("{f}.{field}"), reason))?;
            let protos: &[u8] = match pp
                .protocol
                .as_deref()
                .unwrap_or("ANY")
                .to_ascii_uppercase()
                .as_str()
            {
                "TCP" => &[dp::proto::TCP],
                "UDP" => &[dp::proto::UDP],
                "SCTP" => &[132],
                "ANY" => &[dp::proto::TCP, dp::proto::UDP, 132],
                other => {
                    return Err((
                        format!("{f}.protocol"),
                        format!("{other:?} is not TCP, UDP, SCTP or ANY"),
                    ));
                }
            };
            for p in protos {
                match &sel {
                    PortSel::Range(port, end) => spec.ports.push((*port, *end, *p)),
                    PortSel::Named(name) => spec.named_ports.push((name.clone(), *p)),
                }
            }
        }
    }
    for (i, ic) in pr.icmps.iter().flatten().enumerate() {
        for (j, field) in ic.fields.iter().enumerate() {
            let f = format!("{at}.icmps[{i}].fields[{j}]");
            let v6 = match field.family.as_deref().unwrap_or("IPv4") {
                "IPv4" => false,
                "IPv6" => true,
                other => {
                    return Err((
                        format!("{f}.family"),
                        format!("{other:?} is not IPv4 or IPv6"),
                    ));
                }
            };
            let t = icmp_type(&field.icmp_type, v6).map_err(|r| (format!("{f}.type"), r))?;
            spec.ports.push((
                t as u16,
                t as u16,
                if v6 {
                    dp::proto::ICMPV6
                } else {
                    dp::proto::ICMP
                },
            ));
        }
    }
    Ok(spec)
}

/// Validates a port (a number, a numeric string, or a name) and an optional end port into an
/// inclusive range or a named port. `min` is the smallest port number accepted: 0 for Cilium
/// policies (0 = any port), 1 for Kubernetes NetworkPolicies (absent = any port). A string with
/// a letter is a name and must be an IANA service name; a name takes no end port. Errors name
/// the sub-field (`port` or `endPort`) and the reason.
pub(crate) fn port_range(
    port: Option<&StrOrInt>,
    end_port: Option<u32>,
    min: u16,
) -> Result<PortSel, (&'static str, String)> {
    let p: u16 = match port {
        None => 0,
        Some(StrOrInt::Int(n)) if (i64::from(min)..=65535).contains(n) => *n as u16,
        Some(StrOrInt::Str(s)) if s.parse::<u16>().is_ok_and(|n| n >= min) => {
            s.parse().expect("checked")
        }
        Some(StrOrInt::Str(s)) if s.chars().any(|c| c.is_alphabetic()) => {
            periscope_topology::check_port_name(s).map_err(|r| ("port", r))?;
            if let Some(e) = end_port.filter(|e| *e != 0) {
                return Err((
                    "endPort",
                    format!("{e}: a named port ({s:?}) takes no end port"),
                ));
            }
            return Ok(PortSel::Named(s.clone()));
        }
        Some(other) => return Err(("port", format!("{other} is not a port ({min}-65535)"))),
    };
    let end = match end_port {
        None | Some(0) => p,
        Some(e) if p == 0 => {
            return Err(("endPort", format!("{e} needs a port (0 or none means any)")));
        }
        Some(e) if e > 65535 || (e as u16) < p => {
            return Err(("endPort", format!("{e} is not a port at or above {p}")));
        }
        Some(e) => e as u16,
    };
    if end - p >= 8192 {
        return Err((
            "endPort",
            format!("range {p}-{end} is wider than 8192 ports"),
        ));
    }
    Ok(PortSel::Range(p, end))
}

fn icmp_type(v: &StrOrInt, v6: bool) -> Result<u8, String> {
    match v {
        StrOrInt::Int(n) if (0..=255).contains(n) => Ok(*n as u8),
        StrOrInt::Str(s) => match (s.as_str(), v6) {
            ("EchoRequest", false) => Ok(8),
            ("EchoReply", false) => Ok(0),
            ("DestinationUnreachable", false) => Ok(3),
            ("TimeExceeded", false) => Ok(11),
            ("EchoRequest", true) => Ok(128),
            ("EchoReply", true) => Ok(129),
            ("DestinationUnreachable", true) => Ok(1),
            ("PacketTooBig", true) => Ok(2),
            ("TimeExceeded", true) => Ok(3),
            (s, _) => s
                .parse::<u8>()
                .map_err(|_| format!("{s:?} is not an ICMP type")),
        },
        other => Err(format!("{other} is not an ICMP type (0-255)")),
    }
}

pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        if n.trunc() != n {
            return Err(format!(
                "{s} has host bits set (did you mean {}?)",
                n.trunc()
            ));
        }
        return Ok(n);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{s:?} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/64)"
    ))
}

pub(crate) fn check_selector(sel: &Selector) -> Result<(), String> {
    for (i, e) in sel.match_expressions.iter().enumerate() {
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {} needs values",
                    e.operator
                ));
            }
            "In" | "NotIn" => {}
            "Exists" | "DoesNotExist" if !e.values.is_empty() => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {} takes no values",
                    e.operator
                ));
            }
            "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "matchExpressions[{i}].operator: {other:?} is not In, NotIn, Exists or DoesNotExist"
                ));
            }
        }
    }
    Ok(())
}

/// Splits `source:key` into (source, key); no source → `any`.
fn strip_source(k: &str) -> (&str, &str) {
    match k.split_once(':') {
        Some((src, key))
            if matches!(
                src,
                "k8s" | "any" | "reserved" | "cidr" | "container" | "unspec"
            ) =>
        {
            (src, key)
        }
        _ => ("any", k),
    }
}

fn label_value<'a>(labels: &'a LabelSet, key: &str) -> Option<&'a str> {
    let (src, key) = strip_source(key);
    labels
        .iter()
        .find(|l: &&Label| l.key == key && (src == "any" || l.source == src))
        .map(|l| l.value.as_str())
}

impl Selector {
    /// Whether the selector matches a label set.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| label_value(labels, k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|e| {
                let v = label_value(labels, &e.key);
                match e.operator.as_str() {
                    "In" => v.is_some_and(|v| e.values.iter().any(|x| x == v)),
                    "NotIn" => !v.is_some_and(|v| e.values.iter().any(|x| x == v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Enforcement modes.
// ---------------------------------------------------------------------------------------------

/// Policy enforcement mode (Cilium's `--enable-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Default deny in a direction once a policy selects the endpoint in that direction.
    #[default]
    Default,
    /// Default deny always, even without policies.
    Always,
    /// No enforcement: everything is allowed.
    Never,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(Mode::Default),
            "always" => Ok(Mode::Always),
            "never" => Ok(Mode::Never),
            other => Err(format!(
                "{other:?} is not a policy enforcement mode (default, always, never)"
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compilation.
// ---------------------------------------------------------------------------------------------

/// Named ports of endpoints: (name, protocol) → port numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedPorts(BTreeMap<(String, u8), BTreeSet<u16>>);

impl NamedPorts {
    /// The named container ports of a pod.
    pub fn of_pod(pod: &periscope_topology::Pod) -> Self {
        let mut out = NamedPorts::default();
        for p in &pod.ports {
            if let Some(name) = &p.name {
                out.insert(name, p.protocol.number(), p.container_port);
            }
        }
        out
    }

    /// Adds a port.
    pub fn insert(&mut self, name: &str, proto: u8, port: u16) {
        self.0
            .entry((name.to_string(), proto))
            .or_default()
            .insert(port);
    }

    /// Adds every port of `other`.
    pub fn extend(&mut self, other: &NamedPorts) {
        for (k, ports) in &other.0 {
            self.0.entry(k.clone()).or_default().extend(ports);
        }
    }

    /// The numbers of `name` for `proto`.
    pub fn get(&self, name: &str, proto: u8) -> impl Iterator<Item = u16> + '_ {
        self.0
            .get(&(name.to_string(), proto))
            .into_iter()
            .flatten()
            .copied()
    }

    /// Whether no port is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Identities the compiler resolves selectors against.
pub struct Universe<'a> {
    /// Label-set identities of the cluster's endpoints.
    pub identities: &'a Identities,
    /// CIDR identities: prefix → identity.
    pub cidr_identities: &'a BTreeMap<IpNet, u32>,
    /// Named ports of the endpoints by identity (for egress named ports to endpoint peers).
    pub named_ports: &'a BTreeMap<u32, NamedPorts>,
    /// Named ports of every endpoint together (for egress named ports to other peers).
    pub all_named_ports: &'a NamedPorts,
}

impl Universe<'_> {
    fn peers(&self, peer: &PeerSpec) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        if peer.any_peer {
            out.insert(0);
            return out;
        }
        for (sel, ns) in &peer.endpoints {
            for (id, labels) in self.identities.iter() {
                let in_ns = ns
                    .as_ref()
                    .is_none_or(|ns| label_value(labels, LABEL_NAMESPACE) == Some(ns.as_str()));
                if in_ns && sel.matches(labels) {
                    out.insert(id);
                }
            }
        }
        for (cidr, except) in &peer.cidrs {
            for (prefix, id) in self.cidr_identities {
                if cidr.contains(prefix) && !except.iter().any(|e| e.contains(prefix)) {
                    out.insert(*id);
                }
            }
        }
        for e in &peer.entities {
            match e {
                Entity::All => {
                    out.insert(0);
                }
                Entity::World => {
                    out.insert(dp::IDENTITY_WORLD);
                    out.extend(self.cidr_identities.values().copied());
                }
                Entity::Cluster => {
                    out.extend(self.identities.iter().map(|(id, _)| id));
                    out.extend([
                        dp::IDENTITY_HOST,
                        dp::IDENTITY_REMOTE_NODE,
                        dp::IDENTITY_INIT,
                        dp::IDENTITY_HEALTH,
                        dp::IDENTITY_UNMANAGED,
                        dp::IDENTITY_KUBE_APISERVER,
                        dp::IDENTITY_INGRESS,
                    ]);
                }
                Entity::Host => {
                    out.insert(dp::IDENTITY_HOST);
                }
                Entity::RemoteNode => {
                    out.insert(dp::IDENTITY_REMOTE_NODE);
                }
                Entity::Init => {
                    out.insert(dp::IDENTITY_INIT);
                }
                Entity::Health => {
                    out.insert(dp::IDENTITY_HEALTH);
                }
                Entity::Unmanaged => {
                    out.insert(dp::IDENTITY_UNMANAGED);
                }
                Entity::KubeApiserver => {
                    out.insert(dp::IDENTITY_KUBE_APISERVER);
                }
                Entity::Ingress => {
                    out.insert(dp::IDENTITY_INGRESS);
                }
            }
        }
        out
    }
}

/// An endpoint as the compiler sees it.
pub struct EndpointCtx<'a> {
    /// Identity labels.
    pub labels: &'a LabelSet,
    /// Namespace.
    pub namespace: &'a str,
    /// Enforcement mode for this endpoint.
    pub mode: Mode,
    /// The endpoint's own named ports (for ingress named ports).
    pub named_ports: &'a NamedPorts,
}

/// The compiled policy of one endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointPolicy {
    /// Policy-map content.
    pub entries: BTreeMap<PolicyKey, PolicyEntry>,
    /// Whether ingress is default-deny.
    pub ingress_enforced: bool,
    /// Whether egress is default-deny.
    pub egress_enforced: bool,
    /// Rule ids of the policies selecting the endpoint.
    pub selected_by: BTreeSet<u32>,
}

/// Compiles the policy-map entries of one endpoint.
pub fn compile(ep: &EndpointCtx<'_>, set: &PolicySet, universe: &Universe<'_>) -> EndpointPolicy {
    let mut out = EndpointPolicy::default();
    let mut enforce = [false, false]; // ingress, egress
    let mut entries: BTreeMap<PolicyKey, PolicyEntry> = BTreeMap::new();
    if ep.mode != Mode::Never {
        for (idx, policy) in set.policies.iter().enumerate() {
            let rule_id = set.rule_id(idx);
            if let Some(ns) = &policy.namespace
                && ns != ep.namespace
            {
                continue;
            }
            for rule in &policy.rules {
                let Some(sel) = &rule.selector else { continue };
                if !sel.matches(ep.labels) {
                    continue;
                }
                out.selected_by.insert(rule_id);
                for section in &rule.sections {
                    let i = if section.direction == dp::dir::INGRESS {
                        0
                    } else {
                        1
                    };
                    let dd = if i == 0 {
                        rule.default_deny_ingress
                    } else {
                        rule.default_deny_egress
                    };
                    if dd {
                        enforce[i] = true;
                    }
                    for peer in &section.peers {
                        for id in universe.peers(peer) {
                            // Named ports: the endpoint's own on ingress, the peer's on egress.
                            let named = if section.direction == dp::dir::INGRESS {
                                ep.named_ports
                            } else {
                                universe
                                    .named_ports
                                    .get(&id)
                                    .unwrap_or(universe.all_named_ports)
                            };
                            add_entries(
                                &mut entries,
                                id,
                                peer,
                                named,
                                section.direction,
                                section.deny,
                                rule_id,
                            );
                        }
                    }
                }
            }
        }
    }
    if ep.mode == Mode::Always {
        enforce = [true, true];
    }
    for (i, direction) in [(0, dp::dir::INGRESS), (1, dp::dir::EGRESS)] {
        if !enforce[i] {
            // Not enforced: allow everything not explicitly denied.
            let key = PolicyKey::new(0, 0, 0, direction);
            entries.entry(key).or_default();
        }
    }
    out.entries = entries;
    out.ingress_enforced = enforce[0];
    out.egress_enforced = enforce[1];
    out
}

fn add_entries(
    entries: &mut BTreeMap<PolicyKey, PolicyEntry>,
    identity: u32,
    peer: &PeerSpec,
    named: &NamedPorts,
    direction: u8,
    deny: bool,
    rule_id: u32,
) {
    let mut put = |port: u16, proto: u8| {
        let key = PolicyKey::new(identity, port, proto, direction);
        let new = PolicyEntry {
            flags: if deny { POLICY_F_DENY } else { 0 },
            rule_id,
            ..Default::default()
        };
        match entries.get(&key) {
            // Deny wins over allow; otherwise the first policy (in name order) names the entry.
            Some(old) if old.flags & POLICY_F_DENY != 0 || !deny => {}
            _ => {
                entries.insert(key, new);
            }
        }
    };
    if !peer.has_ports() {
        put(0, 0);
    } else {
        for &(port, end, proto) in &peer.ports {
            for p in port..=end {
                put(p, proto);
            }
        }
        // A name the endpoint (ingress) or peer (egress) does not define allows nothing.
        for (name, proto) in &peer.named_ports {
            for p in named.get(name, *proto) {
                put(p, *proto);
            }
        }
    }
}

/// One line per (policy, named port) that no endpoint defines for any protocol the rule names:
/// such a port allows nothing until an endpoint defines it.
pub fn undefined_named_ports(set: &PolicySet, defined: &NamedPorts) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in &set.policies {
        for rule in &p.rules {
            for section in &rule.sections {
                for peer in &section.peers {
                    for (name, _) in &peer.named_ports {
                        let resolved = peer
                            .named_ports
                            .iter()
                            .filter(|(n, _)| n == name)
                            .any(|(n, proto)| defined.get(n, *proto).next().is_some());
                        if !resolved {
                            out.insert(format!(
                                "{} {}: named port {name:?} is not defined by any endpoint; the rule allows nothing on it",
                                p.kind,
                                p.full_name()
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::pod_labels;

    fn labels(pairs: &[(&str, &str)], ns: &str) -> LabelSet {
        pod_labels(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ns,
            "default",
        )
    }

    const SEED_000: &str = r#"
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "clustermesh-ingress-l4-policy"
  description: "demo: allow only employee to access protected-db"
spec:
  endpointSelector:
    matchLabels:
      app: protected-db
  ingress:
  - toPorts:
    - ports:
      - port: "6379"
        protocol: TCP
    fromEndpoints:
    - matchLabels:
        app: employee
"#;

    #[test]
    fn seed_000_policy_compiles() {
        let set = PolicySet::parse(SEED_000, Path::new("seed.yaml")).unwrap();
        assert_eq!(set.policies.len(), 1);
        let db = labels(&[("app", "protected-db")], "default");
        let emp = labels(&[("app", "employee")], "default");
        let other_ns_emp = labels(&[("app", "employee")], "other");
        let ids = Identities::allocate([&db, &emp, &other_ns_emp]);
        let cidr = BTreeMap::new();
        let u = Universe {
            identities: &ids,
            cidr_identities: &cidr,
            named_ports: &BTreeMap::new(),
            all_named_ports: &NamedPorts::default(),
        };
        let pol = compile(
            &EndpointCtx {
                labels: &db,
                namespace: "default",
                mode: Mode::Default,
                named_ports: &NamedPorts::default(),
            },
            &set,
            &u,
        );
        assert!(pol.ingress_enforced && !pol.egress_enforced);
        let emp_id = ids.id_of(&emp).unwrap();
        let expect_in = PolicyKey::new(emp_id, 6379, dp::proto::TCP, dp::dir::INGRESS);
        let expect_eg = PolicyKey::new(0, 0, 0, dp::dir::EGRESS);
        let keys: Vec<_> = pol.entries.keys().copied().collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(
            pol.entries.contains_key(&expect_in),
            "namespaced selector must not pick other-ns employee"
        );
        assert!(pol.entries.contains_key(&expect_eg));
        assert_eq!(pol.entries[&expect_in].rule_id, 1);
        // The employee itself is not selected: allow-all both ways.
        let e = compile(
            &EndpointCtx {
                labels: &emp,
                namespace: "default",
                mode: Mode::Default,
                named_ports: &NamedPorts::default(),
            },
            &set,
            &u,
        );
        assert_eq!(e.entries.len(), 2);
        assert!(!e.ingress_enforced);
        // Modes.
        let never = compile(
            &EndpointCtx {
                labels: &db,
                namespace: "default",
                mode: Mode::Never,
                named_ports: &NamedPorts::default(),
            },
            &set,
            &u,
        );
        assert!(!never.ingress_enforced && never.entries.len() == 2);
        let always = compile(
            &EndpointCtx {
                labels: &emp,
                namespace: "default",
                mode: Mode::Always,
                named_ports: &NamedPorts::default(),
            },
            &set,
            &u,
        );
        assert!(always.entries.is_empty() && always.ingress_enforced && always.egress_enforced);
    }

    #[test]
    fn deny_wins_and_cidr_except() {
        let y = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: world}
spec:
  endpointSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}
  ingress:
  - fromCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
  - fromEntities: [cluster]
  ingressDeny:
  - fromCIDR: [192.0.2.0/28]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"#;
        let set = PolicySet::parse(y, Path::new("p.yaml")).unwrap();
        let web = labels(&[("app", "web")], "a");
        let ids = Identities::allocate([&web]);
        let cidrs: BTreeMap<IpNet, u32> = set
            .cidrs()
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c, dp::IDENTITY_FIRST_CIDR + i as u32))
            .collect();
        assert_eq!(cidrs.len(), 3);
        let u = Universe {
            identities: &ids,
            cidr_identities: &cidrs,
            named_ports: &BTreeMap::new(),
            all_named_ports: &NamedPorts::default(),
        };
        let pol = compile(
            &EndpointCtx {
                labels: &web,
                namespace: "a",
                mode: Mode::Default,
                named_ports: &NamedPorts::default(),
            },
            &set,
            &u,
        );
        let id_of = |s: &str| cidrs[&s.parse::<IpNet>().unwrap()];
        let k = |id, port, proto| PolicyKey::new(id, port, proto, dp::dir::INGRESS);
        assert!(pol.entries.contains_key(&k(id_of("192.0.2.0/24"), 0, 0)));
        assert!(
            !pol.entries.contains_key(&k(id_of("192.0.2.128/25"), 0, 0)),
            "except excluded"
        );
        assert!(
            pol.entries.contains_key(&k(id_of("192.0.2.0/28"), 0, 0)),
            "/28 inside /24 allowed"
        );
        assert_eq!(
            pol.entries[&k(id_of("192.0.2.0/28"), 22, 6)].flags,
            POLICY_F_DENY
        );
        assert!(pol.entries.contains_key(&k(dp::IDENTITY_HOST, 0, 0)));
        assert!(!pol.egress_enforced);
    }

    #[test]
    fn errors_name_file_policy_and_field() {
        let cases = [
            (
                SEED_000.replace("port: \"6379\"", "port: \"70000\""),
                "spec.ingress[0].toPorts[0].ports[0].port",
            ),
            (
                SEED_000.replace("protocol: TCP", "protocol: TPC"),
                "spec.ingress[0].toPorts[0].ports[0].protocol",
            ),
            (
                SEED_000.replace("fromEndpoints:", "fromEndpoint:"),
                "unknown field `fromEndpoint`",
            ),
            (
                SEED_000.replace("- toPorts:", "- fromCIDR: [10.0.0.1/8]\n    toPorts:"),
                "host bits set",
            ),
            (
                SEED_000.replace("kind: CiliumNetworkPolicy", "kind: NetworkPolcy"),
                "apiVersion/kind",
            ),
            (
                SEED_000.replace("fromEndpoints:", "toEntities: [world]\n    fromEndpoints:"),
                "spec.ingress[0].toEntities",
            ),
            (
                SEED_000.replace("port: \"6379\"", "port: HTTP"),
                "spec.ingress[0].toPorts[0].ports[0].port: \"HTTP\" is not a valid port name",
            ),
            (
                SEED_000.replace("port: \"6379\"", "port: http--alt"),
                "spec.ingress[0].toPorts[0].ports[0].port",
            ),
            (
                SEED_000.replace("port: \"6379\"", "port: a-very-long-port-name"),
                "1-15 characters",
            ),
            (
                SEED_000.replace("port: \"6379\"", "port: http\n        endPort: 90"),
                "spec.ingress[0].toPorts[0].ports[0].endPort",
            ),
        ];
        for (yaml, needle) in cases {
            let err = PolicySet::parse(&yaml, Path::new("bad.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
            assert!(err.contains("bad.yaml"), "{err:?} should name the file");
        }
    }

    const NAMED: &str = r#"
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
    toPorts: [{ports: [{port: http}]}]
  - toCIDR: [192.0.2.0/24]
    toPorts: [{ports: [{port: http, protocol: TCP}, {port: "22", protocol: TCP}]}]
  - toPorts: [{ports: [{port: nope, protocol: TCP}]}]
"#;

    /// Ingress named ports resolve against the selected endpoint's own ports; egress ones
    /// against each peer's (different numbers on different peers each apply to their peer),
    /// and against every endpoint's for peers that are not endpoints.
    #[test]
    fn named_ports_resolve_per_endpoint_and_per_peer() {
        let set = PolicySet::parse(NAMED, Path::new("named.yaml")).unwrap();
        let (web, api, client) = (
            labels(&[("app", "web")], "shop"),
            labels(&[("app", "api")], "shop"),
            labels(&[("app", "client")], "shop"),
        );
        let ids = Identities::allocate([&web, &api, &client]);
        let id = |l: &LabelSet| ids.id_of(l).unwrap();
        let cidrs: BTreeMap<IpNet, u32> = set
            .cidrs()
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c, dp::IDENTITY_FIRST_CIDR + i as u32))
            .collect();
        let ports = |list: &[(&str, u8, u16)]| {
            let mut n = NamedPorts::default();
            for (name, proto, port) in list {
                n.insert(name, *proto, *port);
            }
            n
        };
        let (tcp, udp) = (dp::proto::TCP, dp::proto::UDP);
        let web_ports = ports(&[("http", tcp, 8080)]);
        let api_ports = ports(&[
            ("http", tcp, 9090),
            ("http", udp, 9091),
            ("grpc", tcp, 50051),
        ]);
        let by_id = BTreeMap::from([
            (id(&web), web_ports.clone()),
            (id(&api), api_ports.clone()),
            (id(&client), NamedPorts::default()),
        ]);
        let mut all = NamedPorts::default();
        all.extend(&web_ports);
        all.extend(&api_ports);
        let u = Universe {
            identities: &ids,
            cidr_identities: &cidrs,
            named_ports: &by_id,
            all_named_ports: &all,
        };
        let compile_for = |l: &LabelSet, own: &NamedPorts| {
            compile(
                &EndpointCtx {
                    labels: l,
                    namespace: "shop",
                    mode: Mode::Default,
                    named_ports: own,
                },
                &set,
                &u,
            )
        };
        // Ingress: web's own http port, for the client only.
        let w = compile_for(&web, &web_ports);
        let ingress: Vec<_> = w
            .entries
            .keys()
            .filter(|k| k.direction == dp::dir::INGRESS)
            .copied()
            .collect();
        assert_eq!(
            ingress,
            vec![PolicyKey::new(id(&client), 8080, tcp, dp::dir::INGRESS)]
        );
        assert!(w.ingress_enforced);
        // The same policy on an endpoint with another number for http: that number.
        let other = ports(&[("http", tcp, 8443)]);
        let w2 = compile_for(&web, &other);
        assert!(
            w2.entries
                .contains_key(&PolicyKey::new(id(&client), 8443, tcp, dp::dir::INGRESS))
        );
        assert!(!w2.entries.contains_key(&PolicyKey::new(
            id(&client),
            8080,
            tcp,
            dp::dir::INGRESS
        )));
        // An endpoint without the name: nothing allowed, still enforced.
        let none = compile_for(&web, &NamedPorts::default());
        assert!(none.ingress_enforced);
        assert!(!none.entries.keys().any(|k| k.direction == dp::dir::INGRESS));

        // Egress: each peer its own number, for each protocol the name has (protocol ANY).
        let c = compile_for(&client, &NamedPorts::default());
        let eg = |ident, port, proto| {
            c.entries
                .contains_key(&PolicyKey::new(ident, port, proto, dp::dir::EGRESS))
        };
        assert!(eg(id(&web), 8080, tcp));
        assert!(eg(id(&api), 9090, tcp));
        assert!(eg(id(&api), 9091, udp));
        assert!(!eg(id(&web), 9090, tcp), "api's number is not web's");
        assert!(!eg(id(&api), 8080, tcp), "web's number is not api's");
        assert!(!eg(id(&api), 50051, tcp), "another name");
        // A CIDR peer: every number of the name (TCP only, as the rule says), plus port 22.
        let cidr = cidrs[&"192.0.2.0/24".parse::<IpNet>().unwrap()];
        assert!(eg(cidr, 8080, tcp) && eg(cidr, 9090, tcp) && eg(cidr, 22, tcp));
        assert!(!eg(cidr, 9091, udp));
        // The undefined name allows nothing, anywhere.
        let egress: Vec<_> = c
            .entries
            .keys()
            .filter(|k| k.direction == dp::dir::EGRESS)
            .collect();
        assert_eq!(egress.len(), 6, "{egress:?}");
        assert!(c.egress_enforced);
        let warnings = undefined_named_ports(&set, &all);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = warnings.first().unwrap();
        assert!(
            w.contains("CiliumNetworkPolicy shop/client-out") && w.contains("\"nope\""),
            "{w}"
        );
        // A name defined only for another protocol than the rule's is undefined too: web-http
        // and client-out's CIDR rule want http/TCP; its first rule (ANY) takes http/UDP.
        let udp_only = undefined_named_ports(&set, &ports(&[("http", udp, 1), ("nope", tcp, 2)]));
        assert_eq!(udp_only.len(), 2, "{udp_only:?}");
        assert!(udp_only.iter().all(|w| w.contains("\"http\"")));
    }

    #[test]
    fn the_seeds_policies_load_unchanged() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/seed-policies");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let set = PolicySet::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!set.policies.is_empty(), "{}", path.display());
            n += set.policies.len();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains("l7") {
                assert!(
                    set.warnings.iter().any(|w| w.contains("L7")),
                    "L7 rules are reported"
                );
            }
            if name.starts_with("004") {
                assert!(
                    set.warnings.iter().any(|w| w.contains("nodeSelector")),
                    "{:?}",
                    set.warnings
                );
            }
        }
        assert_eq!(n, 8, "1 policy of seed 000, 3 of seed 002, 4 of seed 004");
    }

    #[test]
    fn l7_rules_are_reported() {
        let y = SEED_000.replace(
            "        protocol: TCP\n",
            "        protocol: TCP\n      rules:\n        http: [{method: GET}]\n",
        );
        let set = PolicySet::parse(&y, Path::new("l7.yaml")).unwrap();
        assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
        assert!(set.warnings[0].contains("L7"));
    }

    #[test]
    fn port_ranges_and_icmp() {
        let y = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: r, namespace: n}
spec:
  endpointSelector: {}
  egress:
  - toPorts: [{ports: [{port: "8000", endPort: 8003, protocol: UDP}]}]
    icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
"#;
        let set = PolicySet::parse(y, Path::new("r.yaml")).unwrap();
        let l = labels(&[], "n");
        let ids = Identities::allocate([&l]);
        let cidr = BTreeMap::new();
        let u = Universe {
            identities: &ids,
            cidr_identities: &cidr,
            named_ports: &BTreeMap::new(),
            all_named_ports: &NamedPorts::default(),
        };
        let pol = compile(
            &EndpointCtx {
                labels: &l,
                namespace: "n",
                mode: Mode::Default,
                named_ports: &NamedPorts::default(),
            },
            &set,
            &u,
        );
        let eg: Vec<_> = pol
            .entries
            .keys()
            .filter(|k| k.direction == dp::dir::EGRESS)
            .collect();
        assert_eq!(eg.len(), 6, "{eg:?}");
        assert!(
            pol.entries
                .contains_key(&PolicyKey::new(0, 8003, 17, dp::dir::EGRESS))
        );
        assert!(
            pol.entries
                .contains_key(&PolicyKey::new(0, 128, 58, dp::dir::EGRESS))
        );
    }
}

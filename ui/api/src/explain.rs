//! A flow's verdict in words: which policy allowed or denied it, and how it matched.
use periscope_proto::flow::{self, DropReason, Flow, TrafficDirection, Verdict};
use serde::{Deserialize, Serialize};

use crate::{Direction, PolicyInfo, direction, drop_reason, endpoint_name, l4, node_id, verdict};

/// A flow's verdict, explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// One sentence: the verdict and its cause.
    pub headline: String,
    /// Further facts, one sentence each (policies, match type, translation).
    pub details: Vec<String>,
}

/// Words for `Flow.policy_match_type`.
pub fn match_type_words(m: u32) -> Option<&'static str> {
    Some(match m {
        1 => "L3-Only: the peer's identity matched, any port",
        2 => "L3-L4: the peer's identity and the port matched",
        3 => "L4-Only: the port matched, any peer",
        4 => "all: a rule allowing every peer on every port matched",
        5 => "L3-Proto: the peer's identity and the protocol matched",
        6 => "Proto-Only: the protocol matched, any peer",
        _ => return None,
    })
}

fn policy_name(p: &flow::Policy) -> String {
    if p.namespace.is_empty() {
        format!("'{}' (cluster-wide)", p.name)
    } else {
        format!("'{}' in namespace {}", p.name, p.namespace)
    }
}

fn info_name(p: &PolicyInfo) -> String {
    if p.policy.namespace.is_empty() {
        format!("'{}' (cluster-wide)", p.policy.name)
    } else {
        format!("'{}' in namespace {}", p.policy.name, p.policy.namespace)
    }
}

fn join_names(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {}", init.join(", "), last),
    }
}

/// Explains `f`'s verdict. `policies` are the policies in force (`/api/v1/policies`): they
/// name the policies that put an endpoint into default deny when no rule decided.
pub fn explain(f: &Flow, policies: &[PolicyInfo]) -> Explanation {
    let dir = direction(f);
    let (dir_word, dir_kind) = match dir {
        TrafficDirection::Egress => ("egress", Some(Direction::Egress)),
        TrafficDirection::Ingress => ("ingress", Some(Direction::Ingress)),
        _ => ("traffic", None),
    };
    let (proto, _, dport) = l4(f);
    let on = match (proto, dport) {
        ("", _) => String::new(),
        (p, 0) => format!(" on {p}"),
        (p, port) => format!(" on {p}/{port}"),
    };
    // The peer whose identity the rule looks at, and the endpoint the policy selects.
    let (peer, subject) = match dir_kind {
        Some(Direction::Egress) => (f.destination.as_ref(), f.source.as_ref()),
        _ => (f.source.as_ref(), f.destination.as_ref()),
    };
    let peer_identity = peer.map(|e| e.identity).unwrap_or(0);
    let subject_id = subject.map(|e| {
        let (ns, name) = endpoint_name(e);
        node_id(&ns, &name)
    });
    let mut details = Vec::new();
    if let Some(words) = match_type_words(f.policy_match_type) {
        details.push(format!("Match type {words}."));
    }
    let allowed: Vec<String> = f
        .ingress_allowed_by
        .iter()
        .chain(&f.egress_allowed_by)
        .map(policy_name)
        .collect();
    let denied: Vec<String> = f
        .ingress_denied_by
        .iter()
        .chain(&f.egress_denied_by)
        .map(policy_name)
        .collect();
    let v = verdict(f);
    let headline = match v {
        Verdict::Dropped | Verdict::Audit => {
            let reason = drop_reason(f);
            let policy_drop = matches!(reason, DropReason::PolicyDenied | DropReason::PolicyDeny)
                || (v == Verdict::Audit);
            let verb = if v == Verdict::Audit {
                "would be denied (audit mode)"
            } else {
                "denied"
            };
            if !denied.is_empty() {
                format!(
                    "{verb} by a deny rule of {}: {dir_word} from identity {peer_identity}{on} is denied",
                    join_names(&denied)
                )
            } else if policy_drop {
                let selecting: Vec<String> = policies
                    .iter()
                    .filter(|p| {
                        subject_id.as_ref().is_some_and(|id| p.selects.contains(id))
                            && match dir_kind {
                                Some(Direction::Ingress) => p.ingress_default_deny,
                                Some(Direction::Egress) => p.egress_default_deny,
                                None => p.ingress_default_deny || p.egress_default_deny,
                            }
                    })
                    .map(info_name)
                    .collect();
                let dir_rule = match dir_kind {
                    None => "rule".to_string(),
                    Some(_) => format!("{dir_word} rule"),
                };
                if selecting.is_empty() {
                    format!(
                        "{verb} by default-deny: no {dir_rule} allows identity {peer_identity}{on}"
                    )
                } else {
                    format!(
                        "{verb} by default-deny: no {dir_rule} of {} allows identity {peer_identity}{on}",
                        join_names(&selecting)
                    )
                }
            } else {
                let name = reason.as_str_name().to_ascii_lowercase().replace('_', " ");
                format!(
                    "dropped by the datapath: {name} (reason {})",
                    f.drop_reason_desc
                )
            }
        }
        Verdict::Forwarded | Verdict::Redirected | Verdict::Translated | Verdict::Traced => {
            if !allowed.is_empty() {
                format!(
                    "allowed by {}: {dir_word} from identity {peer_identity}{on}",
                    join_names(&allowed)
                )
            } else if f.is_reply == Some(true) {
                "forwarded: a reply of an established connection (connection tracking)".to_string()
            } else {
                "forwarded: no policy restricts this traffic".to_string()
            }
        }
        Verdict::Error => "error: the datapath could not process the packet".to_string(),
        Verdict::Unknown => "verdict unknown".to_string(),
    };
    if let Some(svc) = &f.destination_service
        && !svc.name.is_empty()
    {
        details.push(format!(
            "Addressed to service {}/{}, load-balanced to a backend.",
            svc.namespace, svc.name
        ));
    }
    if !denied.is_empty() && !allowed.is_empty() {
        details.push(format!(
            "Also allowed by {}, but deny rules take precedence.",
            join_names(&allowed)
        ));
    }
    Explanation { headline, details }
}

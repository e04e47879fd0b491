//! Security identities: one number per set of security-relevant labels (Cilium's model).
//!
//! Labels are `source:key=value` (`k8s:app=db`, `reserved:world`, `cidr:10.0.0.0/8`). Every pod
//! gets the labels of its topology entry plus its namespace and cluster labels; the set decides
//! the identity, so all pods with the same labels share one identity.
//!
//! Allocation is deterministic across agents and restarts: every agent computes the same number
//! from the same label set (a hash, with linear probing in a fixed order on collisions), so the
//! agents of all nodes agree without talking to each other, and a restarted agent finds the
//! identities its pinned maps already hold.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use periscope_datapath_common as dp;

/// Namespace label key (Cilium's).
pub const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Cluster label key (Cilium's).
pub const LABEL_CLUSTER: &str = "io.cilium.k8s.policy.cluster";

/// One label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Source: `k8s`, `reserved`, `cidr`, …
    pub source: String,
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
}

impl Label {
    /// A label from its parts.
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Label {
            source: source.into(),
            key: key.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// A set of labels (sorted).
pub type LabelSet = BTreeSet<Label>;

/// The identity labels of a pod: its labels (`k8s:` source), namespace and cluster.
pub fn pod_labels(labels: &BTreeMap<String, String>, namespace: &str, cluster: &str) -> LabelSet {
    let mut set: LabelSet = labels
        .iter()
        .map(|(k, v)| Label::new("k8s", k, v))
        .collect();
    set.insert(Label::new("k8s", LABEL_NAMESPACE, namespace));
    set.insert(Label::new("k8s", LABEL_CLUSTER, cluster));
    // Namespace labels, for Kubernetes namespaceSelectors (Cilium's convention); every namespace
    // carries its name label.
    set.insert(Label::new(
        "k8s",
        &format!("{LABEL_NS_LABELS}{LABEL_NS_NAME}"),
        namespace,
    ));
    set
}

/// Prefix of namespace labels on endpoints.
pub const LABEL_NS_LABELS: &str = "io.cilium.k8s.namespace.labels.";
/// Kubernetes' automatic namespace name label.
pub const LABEL_NS_NAME: &str = "kubernetes.io/metadata.name";

/// The labels of a reserved identity, e.g. `reserved:world`.
pub fn reserved_labels(id: u32) -> LabelSet {
    let name = match id {
        dp::IDENTITY_HOST => "host",
        dp::IDENTITY_WORLD => "world",
        dp::IDENTITY_UNMANAGED => "unmanaged",
        dp::IDENTITY_HEALTH => "health",
        dp::IDENTITY_INIT => "init",
        dp::IDENTITY_REMOTE_NODE => "remote-node",
        dp::IDENTITY_KUBE_APISERVER => "kube-apiserver",
        dp::IDENTITY_INGRESS => "ingress",
        _ => "unknown",
    };
    [Label::new("reserved", name, "")].into()
}

/// Range of label-set identities: `[FIRST, FIRST + SPAN)` (16 bits, as in Cilium).
const SPAN: u32 = 65536 - dp::IDENTITY_FIRST_ALLOCATED;

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Identity table: label set ↔ number.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identities {
    by_labels: BTreeMap<LabelSet, u32>,
    by_id: BTreeMap<u32, LabelSet>,
}

impl Identities {
    /// Allocates identities for `sets` deterministically (cluster 0, nothing fixed).
    pub fn allocate<'a>(sets: impl IntoIterator<Item = &'a LabelSet>) -> Self {
        Self::allocate_with(sets, 0, &BTreeMap::new())
    }

    /// Allocates identities: `fixed` label sets keep their given numbers (e.g. from a kvstore);
    /// the others get `cluster_id << 16 | (256 + slot)` with the slot from a hash of the labels
    /// (linear probing in a fixed order on collisions), so identities of different clusters
    /// never collide and every agent computes the same numbers.
    pub fn allocate_with<'a>(
        sets: impl IntoIterator<Item = &'a LabelSet>,
        cluster_id: u8,
        fixed: &BTreeMap<LabelSet, u32>,
    ) -> Self {
        let mut t = Identities::default();
        for (labels, id) in fixed {
            t.by_labels.insert(labels.clone(), *id);
            t.by_id.insert(*id, labels.clone());
        }
        let base = (cluster_id as u32) << 16;
        let mut keyed: Vec<(u64, String, &LabelSet)> = sets
            .into_iter()
            .map(|s| {
                let text = s
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(";");
                (fnv(&text), text, s)
            })
            .collect();
        keyed.sort();
        keyed.dedup_by(|a, b| a.1 == b.1);
        for (h, _, set) in keyed {
            if t.by_labels.contains_key(set) {
                continue;
            }
            let mut slot = (h % SPAN as u64) as u32;
            while t
                .by_id
                .contains_key(&(base + dp::IDENTITY_FIRST_ALLOCATED + slot))
            {
                slot = (slot + 1) % SPAN;
            }
            let id = base + dp::IDENTITY_FIRST_ALLOCATED + slot;
            t.by_labels.insert(set.clone(), id);
            t.by_id.insert(id, set.clone());
        }
        t
    }

    /// The identity of a label set.
    pub fn id_of(&self, labels: &LabelSet) -> Option<u32> {
        self.by_labels.get(labels).copied()
    }

    /// The labels of an identity (reserved identities included).
    pub fn labels_of(&self, id: u32) -> Option<LabelSet> {
        if id < dp::IDENTITY_FIRST_ALLOCATED && !self.by_id.contains_key(&id) {
            return Some(reserved_labels(id));
        }
        self.by_id.get(&id).cloned()
    }

    /// All allocated identities.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &LabelSet)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)], ns: &str) -> LabelSet {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pod_labels(&m, ns, "default")
    }

    #[test]
    fn same_labels_same_identity_and_deterministic() {
        let a = set(&[("app", "db")], "prod");
        let b = set(&[("app", "web")], "prod");
        let c = set(&[("app", "db")], "dev");
        let t1 = Identities::allocate([&a, &b, &c, &a]);
        let t2 = Identities::allocate([&c, &a, &b]);
        assert_eq!(t1, t2, "order of discovery must not matter");
        let ids: BTreeSet<u32> = [&a, &b, &c].iter().map(|s| t1.id_of(s).unwrap()).collect();
        assert_eq!(
            ids.len(),
            3,
            "different namespaces give different identities"
        );
        for id in ids {
            assert!((256..65536).contains(&id));
        }
        // Adding a label set keeps the existing numbers (no collision here).
        let d = set(&[("app", "cache")], "prod");
        let t3 = Identities::allocate([&a, &b, &c, &d]);
        assert_eq!(t3.id_of(&a), t1.id_of(&a));
        assert_eq!(t3.labels_of(t3.id_of(&d).unwrap()).unwrap(), d);
    }

    #[test]
    fn collisions_probe() {
        let sets: Vec<LabelSet> = (0..3000)
            .map(|i| set(&[("app", &format!("a{i}"))], "ns"))
            .collect();
        let t = Identities::allocate(sets.iter());
        let ids: BTreeSet<u32> = sets.iter().map(|s| t.id_of(s).unwrap()).collect();
        assert_eq!(ids.len(), 3000);
    }

    #[test]
    fn cluster_id_in_high_bits_and_fixed_identities_win() {
        let a = set(&[("app", "db")], "prod");
        let b = set(&[("app", "web")], "prod");
        let c1 = Identities::allocate_with([&a, &b], 1, &BTreeMap::new());
        let c2 = Identities::allocate_with([&a, &b], 2, &BTreeMap::new());
        assert_eq!(c1.id_of(&a).unwrap() >> 16, 1);
        assert_eq!(c2.id_of(&a).unwrap() >> 16, 2);
        assert_eq!(
            c1.id_of(&a).unwrap() & 0xffff,
            c2.id_of(&a).unwrap() & 0xffff
        );
        let fixed: BTreeMap<LabelSet, u32> = [(a.clone(), 15614229)].into();
        let t = Identities::allocate_with([&a, &b], 0, &fixed);
        assert_eq!(t.id_of(&a), Some(15614229));
        assert_eq!(t.labels_of(15614229), Some(a));
        assert!(t.id_of(&b).is_some());
    }

    #[test]
    fn label_strings() {
        assert_eq!(Label::new("k8s", "app", "db").to_string(), "k8s:app=db");
        assert_eq!(
            reserved_labels(2).iter().next().unwrap().to_string(),
            "reserved:world"
        );
    }
}

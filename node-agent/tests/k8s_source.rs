//! The Kubernetes metadata source (`periscope_agent::k8s`) against a **fake API server**: no
//! real Kubernetes API server can run on this machine (no container engine, no internet), so the
//! test serves the API's HTTP surface itself, from fixture files in `tests/fixtures/k8s/` written
//! in the exact shape the API server returns them:
//!
//! - `<resource>.json`: the list response (`{"kind":"PodList","apiVersion":"v1","metadata":
//!   {"resourceVersion":"100"},"items":[…]}`; built-in kinds' items carry no kind/apiVersion, CRD
//!   items do; objects with uid, resourceVersion, managedFields, status, …);
//! - `watch-<resource>.jsonl`: watch events, one `{"type":"ADDED|MODIFIED|DELETED","object":{…}}`
//!   per line, streamed (chunked, kept open) to `?watch=true` requests from the requested
//!   `resourceVersion` on, after a `BOOKMARK`.
//!
//! The CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy items are the seed examples of
//! `deploy/examples/seed-policies/` (checked below: their specs are the seeds' verbatim).
//!
//! The fake server is the test bed's [`FakeApiServer`].
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use periscope_agent::identity::pod_labels;
use periscope_agent::k8s::{self, K8sConfig};
use periscope_agent::policy::PolicySet;
use periscope_agent::sources::{SharedView, SourceView};
use periscope_testbed::k8s_api::FakeApiServer;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------------------------

/// API paths the source watches, and the fixture file (stem) of each.
const RESOURCES: [(&str, &str); 7] = [
    ("/api/v1/pods", "pods"),
    ("/api/v1/namespaces", "namespaces"),
    ("/api/v1/services", "services"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "endpointslices"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networkpolicies",
    ),
    (
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        "ciliumnetworkpolicies",
    ),
    (
        "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
        "ciliumclusterwidenetworkpolicies",
    ),
];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s")
}

fn fixture_text(name: &str) -> String {
    let p = fixture_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&fixture_text(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Path → list response of every resource.
fn base_fixtures() -> BTreeMap<String, Value> {
    RESOURCES
        .iter()
        .map(|(path, stem)| (path.to_string(), fixture(&format!("{stem}.json"))))
        .collect()
}

fn watch_events(stem: &str) -> Vec<String> {
    fixture_text(&format!("watch-{stem}.jsonl"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn config(url: String) -> K8sConfig {
    let mut cfg = K8sConfig::new(url);
    cfg.token = Some("test-token".into());
    cfg.backoff_base = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg
}

/// Polls until `cond` holds (for `connected`, which does not signal).
async fn poll_until(
    view: &SharedView,
    what: &str,
    within: Duration,
    cond: impl Fn(&SourceView) -> bool,
) -> SourceView {
    let deadline = Instant::now() + within;
    loop {
        let v = view.snapshot();
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: connected={} last_error={:?} pods={:?} policies={:?}",
            v.connected,
            v.last_error,
            v.pods.keys().collect::<Vec<_>>(),
            v.policies.keys().collect::<Vec<_>>()
        );
        let _ = tokio::time::timeout(Duration::from_millis(20), view.changed()).await;
    }
}

/// Waits for `SharedView::changed()` until `cond` holds; fails if that takes longer than `within`.
async fn changed_until(
    view: &SharedView,
    what: &str,
    within: Duration,
    cond: impl Fn(&SourceView) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let left = within.saturating_sub(start.elapsed());
        tokio::time::timeout(left, view.changed())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "changed() did not fire with {what} within {within:?}: pods={:?} policies={:?}",
                    view.snapshot().pods.keys().collect::<Vec<_>>(),
                    view.snapshot().policies.keys().collect::<Vec<_>>()
                )
            });
        if cond(&view.snapshot()) {
            return start.elapsed();
        }
    }
}

/// Starts the source against `server` and waits for its first full sync.
async fn start_source(server: &FakeApiServer) -> (SharedView, tokio::task::JoinHandle<()>) {
    let view = SharedView::default();
    let task = tokio::spawn(k8s::run(config(server.url()), view.clone()));
    poll_until(&view, "the initial sync", Duration::from_secs(15), |v| {
        v.connected && !v.pods.is_empty()
    })
    .await;
    // Every watch is open (events pushed from now on are streamed, not only replayed).
    let deadline = Instant::now() + Duration::from_secs(5);
    while RESOURCES.iter().any(|(p, _)| server.watches(p) == 0) {
        assert!(Instant::now() < deadline, "watches not opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (view, task)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

fn validate(v: &SourceView) -> Result<PolicySet, String> {
    let mut set = PolicySet::default();
    set.add_documents(v.policies.iter().map(|(k, d)| (k.as_str(), d)))
        .map_err(|e| e.to_string())?;
    Ok(set)
}

/// The seed policy documents, by (kind, name).
fn seed_policies() -> Vec<serde_yaml::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/seed-policies");
    let mut docs = Vec::new();
    for e in std::fs::read_dir(&dir).expect("seed policies") {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(de).unwrap();
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

const WEB_1: &str = "shop/web-5d8f7c9b6-x2x7q";
const WEB_2: &str = "shop/web-5d8f7c9b6-k9m4z";

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_list_fills_pods_services_and_policies() {
    let server = FakeApiServer::start(0, base_fixtures()).await;
    let (view, task) = start_source(&server).await;
    let v = view.snapshot();
    assert!(v.connected && v.last_error.is_none());

    // Pods: the pending pod (no IP), the finished Job pod and the host-network pod are not
    // endpoints.
    assert_eq!(
        v.pods.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "db/redis-0",
            "kube-system/node-exporter-7xk2p",
            "shop/migrate-schema-5xj2k",
            WEB_2,
            WEB_1,
            "vmagent-system/vmagent-0",
        ]
    );
    let web = &v.pods[WEB_1];
    assert_eq!(
        (web.name.as_str(), web.namespace.as_str(), web.node.as_str()),
        ("web-5d8f7c9b6-x2x7q", "shop", "node-1")
    );
    assert_eq!(web.ips, [ip("10.0.1.10"), ip("fd00:10:1::10")]);
    assert_eq!(
        (web.external, web.interface.as_deref(), web.identity),
        (false, None, None)
    );
    let labels = |key: &str| -> Vec<(String, String)> {
        v.pods[key]
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        labels(WEB_1),
        kv(&[
            ("app", "web"),
            (
                "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name",
                "shop"
            ),
            ("io.cilium.k8s.namespace.labels.team", "retail"),
            ("io.cilium.k8s.policy.serviceaccount", "web"),
            ("tier", "frontend"),
        ])
    );
    // Per-replica and per-revision labels are not identity labels.
    assert_eq!(
        labels("db/redis-0"),
        kv(&[
            ("app", "redis"),
            (
                "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name",
                "db"
            ),
            ("io.cilium.k8s.namespace.labels.tier", "data"),
            ("io.cilium.k8s.policy.serviceaccount", "redis"),
        ])
    );
    assert_eq!(
        v.pods[WEB_1].labels, v.pods[WEB_2].labels,
        "one identity for both replicas"
    );
    // Named container ports (for policies' named ports); unnamed ones are left out.
    let named: Vec<(Option<&str>, u16)> = v.pods[WEB_1]
        .ports
        .iter()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(named, [(Some("http"), 8080)]);
    assert!(v.pods["db/redis-0"].ports.is_empty());
    let workload = |key: &str| {
        let w = v.pods[key].workload.as_ref().expect("workload");
        (w.kind.clone(), w.name.clone())
    };
    assert_eq!(workload(WEB_1), svc("Deployment", "web"));
    assert_eq!(workload("db/redis-0"), svc("StatefulSet", "redis"));
    assert_eq!(
        workload("kube-system/node-exporter-7xk2p"),
        svc("DaemonSet", "node-exporter")
    );
    assert_eq!(
        workload("shop/migrate-schema-5xj2k"),
        svc("Job", "migrate-schema")
    );

    // Services: ClusterIPs, external IPs and endpoint addresses; no headless "None".
    let want: BTreeMap<IpAddr, (String, String)> = [
        ("10.96.0.1", svc("default", "kubernetes")),
        ("10.96.0.10", svc("shop", "web")),
        ("fd00:96::10", svc("shop", "web")),
        ("203.0.113.10", svc("shop", "web")),
        ("10.0.1.10", svc("shop", "web")),
        ("10.0.2.11", svc("shop", "web")),
        ("fd00:10:1::10", svc("shop", "web")),
        ("fd00:10:2::11", svc("shop", "web")),
        ("10.0.2.20", svc("db", "redis")),
    ]
    .into_iter()
    .map(|(a, s)| (ip(a), s))
    .collect();
    assert_eq!(v.services, want);
    // Services with frontends (not the headless one) and the ready backends of their slices.
    assert_eq!(
        v.service_details.keys().collect::<Vec<_>>(),
        [&svc("default", "kubernetes"), &svc("shop", "web")]
    );
    let web_svc = &v.service_details[&svc("shop", "web")];
    let fronts: Vec<(String, u16, &str)> = web_svc
        .frontends
        .iter()
        .map(|f| (f.ip.to_string(), f.port, f.kind.as_str()))
        .collect();
    assert_eq!(
        fronts,
        [
            ("10.96.0.10".to_string(), 80, "ClusterIP"),
            ("203.0.113.10".to_string(), 80, "ExternalIPs"),
            ("fd00:96::10".to_string(), 80, "ClusterIP"),
        ]
    );
    assert_eq!(
        web_svc.backends["http"],
        [
            (ip("10.0.1.10"), 8080),
            (ip("10.0.2.11"), 8080),
            (ip("fd00:10:1::10"), 8080),
            (ip("fd00:10:2::11"), 8080),
        ]
        .into_iter()
        .collect()
    );

    // Policies: a NetworkPolicy, the seed CNPs and CCNPs, without status or server metadata.
    assert_eq!(
        v.policies.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "CiliumClusterwideNetworkPolicy/all-pods-to-istio-internal-access",
            "CiliumClusterwideNetworkPolicy/host-firewall-allow-metrics-server-to-kubelet",
            "CiliumNetworkPolicy/default/rule1",
            "CiliumNetworkPolicy/shop/allow-ingress-egress-within-namespace",
            "CiliumNetworkPolicy/shop/cidr-rule",
            "CiliumNetworkPolicy/shop/clustermesh-ingress-l4-policy",
            "CiliumNetworkPolicy/vmagent-system/vmagent-allow-desired-namespace",
            "NetworkPolicy/db/allow-shop-to-redis",
        ]
    );
    let seeds = seed_policies();
    for (key, doc) in &v.policies {
        assert!(doc.get("status").is_none(), "{key}: status kept");
        let meta = doc["metadata"].as_mapping().unwrap();
        for dropped in ["managedFields", "resourceVersion", "uid", "generation"] {
            assert!(
                meta.get(dropped).is_none(),
                "{key}: metadata.{dropped} kept"
            );
        }
        if let Some(ann) = doc["metadata"].get("annotations") {
            assert!(
                ann.get("kubectl.kubernetes.io/last-applied-configuration")
                    .is_none()
            );
        }
        if doc["apiVersion"] == "cilium.io/v2" {
            let seed = seeds
                .iter()
                .find(|s| {
                    s["kind"] == doc["kind"]
                        && s["metadata"]["name"] == doc["metadata"]["name"]
                        && s["spec"] == doc["spec"]
                })
                .unwrap_or_else(|| panic!("{key}: not a seed policy's spec"));
            assert_eq!(seed["spec"], doc["spec"]);
        }
    }
    assert_eq!(
        v.policies["NetworkPolicy/db/allow-shop-to-redis"]["apiVersion"], "networking.k8s.io/v1",
        "list items of built-in kinds have no apiVersion: the source fills it in"
    );
    let set = validate(&v).expect("the agent accepts every policy");
    assert_eq!(set.policies.len(), 8);

    // The labels make the selectors work as in Cilium: the service account selects vmagent-0,
    // the NetworkPolicy's namespaceSelector (team=retail) + podSelector select the web pods.
    let identity = |key: &str| {
        let p = &v.pods[key];
        pod_labels(&p.labels, &p.namespace, "default")
    };
    let vmagent = set
        .policies
        .iter()
        .find(|p| p.name == "vmagent-allow-desired-namespace")
        .unwrap();
    let sel = vmagent.rules[0].selector.as_ref().unwrap();
    assert!(sel.matches(&identity("vmagent-system/vmagent-0")));
    assert!(!sel.matches(&identity(WEB_1)));
    let np = set
        .policies
        .iter()
        .find(|p| p.name == "allow-shop-to-redis")
        .unwrap();
    let (peer, implicit_ns) = &np.rules[0].sections[0].peers[0].endpoints[0];
    assert_eq!(implicit_ns, &None);
    assert!(peer.matches(&identity(WEB_1)));
    assert!(!peer.matches(&identity("kube-system/node-exporter-7xk2p")));

    // What the source asked: every resource listed, then watched from the list's version with
    // bookmarks; always with the bearer token.
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer test-token")),
        "{reqs:#?}"
    );
    for (path, _) in RESOURCES {
        assert!(
            reqs.iter()
                .any(|r| r.path == path && !r.query.contains_key("watch")),
            "{path} listed"
        );
        let w = reqs
            .iter()
            .find(|r| r.path == path && r.query.contains_key("watch"))
            .unwrap_or_else(|| panic!("{path} watched"));
        assert_eq!(w.query["watch"], "true");
        assert_eq!(w.query["resourceVersion"], "100");
        assert_eq!(w.query["allowWatchBookmarks"], "true");
        assert!(w.query.contains_key("timeoutSeconds"));
    }
    task.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_update_the_view_within_a_second() {
    let server = FakeApiServer::start(0, base_fixtures()).await;
    let (view, task) = start_source(&server).await;
    let second = Duration::from_secs(1);
    let api_pod = "shop/api-6b9f8d7c5-q1w2e";

    let pods = watch_events("pods");
    assert_eq!(pods.len(), 3);
    server.push_event("/api/v1/pods", &pods[0]); // ADDED
    let t = changed_until(&view, "the ADDED pod", second, |v| {
        v.pods.contains_key(api_pod)
    })
    .await;
    let v = view.snapshot();
    let p = &v.pods[api_pod];
    assert_eq!(p.ips, [ip("10.0.1.40")]);
    assert_eq!(
        p.workload
            .as_ref()
            .map(|w| (w.kind.as_str(), w.name.as_str())),
        Some(("Deployment", "api"))
    );
    assert_eq!(p.labels["io.cilium.k8s.policy.serviceaccount"], "api");
    eprintln!("ADDED seen after {t:?}");

    server.push_event("/api/v1/pods", &pods[1]); // MODIFIED: new IP
    let t = changed_until(&view, "the pod's new IP", second, |v| {
        v.pods.get(api_pod).map(|p| p.ips.clone()) == Some(vec![ip("10.0.1.41")])
    })
    .await;
    eprintln!("MODIFIED seen after {t:?}");

    server.push_event("/api/v1/pods", &pods[2]); // DELETED
    let t = changed_until(&view, "the pod's deletion", second, |v| {
        !v.pods.contains_key(api_pod)
    })
    .await;
    eprintln!("DELETED seen after {t:?}");

    // A namespace's labels change: its pods follow.
    let ns = watch_events("namespaces");
    server.push_event("/api/v1/namespaces", &ns[0]);
    changed_until(&view, "the new namespace label", second, |v| {
        [WEB_1, WEB_2].iter().all(|k| {
            v.pods[*k].labels.get("io.cilium.k8s.namespace.labels.team")
                == Some(&"checkout".to_string())
        })
    })
    .await;

    // A policy is deleted.
    let cnp = watch_events("ciliumnetworkpolicies");
    server.push_event("/apis/cilium.io/v2/ciliumnetworkpolicies", &cnp[0]);
    changed_until(&view, "the policy's deletion", second, |v| {
        !v.policies
            .contains_key("CiliumNetworkPolicy/shop/cidr-rule")
    })
    .await;
    let v = view.snapshot();
    assert_eq!(v.policies.len(), 7);
    assert!(v.connected);
    validate(&v).expect("still valid");
    task.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_view_and_the_relist_drops_what_was_deleted_meanwhile() {
    let server = FakeApiServer::start(0, base_fixtures()).await;
    let port = server.addr.port();
    let (view, task) = start_source(&server).await;
    let before = view.snapshot();
    assert!(before.pods.contains_key(WEB_2));

    server.stop().await;
    let v = poll_until(&view, "disconnected", Duration::from_secs(5), |v| {
        !v.connected
    })
    .await;
    assert!(v.last_error.is_some(), "the error is reported");
    eprintln!("during the outage: {:?}", v.last_error);
    // Several reconnect attempts later the content is still the last one known.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = view.snapshot();
    assert!(!v.connected);
    assert_eq!(
        (&v.pods, &v.policies, &v.services),
        (&before.pods, &before.policies, &before.services)
    );

    // The API server comes back (same address); one web replica was deleted meanwhile.
    let mut lists = base_fixtures();
    lists.insert("/api/v1/pods".into(), fixture("pods-after-outage.json"));
    let server = FakeApiServer::start(port, lists).await;
    let v = poll_until(
        &view,
        "the relist after the outage",
        Duration::from_secs(10),
        |v| v.connected && !v.pods.contains_key(WEB_2),
    )
    .await;
    assert!(v.last_error.is_none());
    let mut want = before.pods.clone();
    want.remove(WEB_2);
    assert_eq!(v.pods, want);
    assert_eq!(
        (&v.policies, &v.services),
        (&before.policies, &before.services)
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.path == "/api/v1/pods" && !r.query.contains_key("watch")),
        "pods were listed again"
    );
    task.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_losing_the_connection() {
    let server = FakeApiServer::start(0, base_fixtures()).await;
    let (view, task) = start_source(&server).await;
    // The pod was deleted while the watch missed it; the server then expires the watch (410).
    server.replace_and_expire("/api/v1/pods", fixture("pods-after-outage.json"));
    changed_until(&view, "the relist after 410", Duration::from_secs(2), |v| {
        !v.pods.contains_key(WEB_2)
    })
    .await;
    let v = view.snapshot();
    assert!(v.connected && v.last_error.is_none(), "{:?}", v.last_error);
    assert!(v.pods.contains_key(WEB_1));
    task.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_policy_is_passed_through_and_the_agent_rejects_it_by_name() {
    let mut lists = base_fixtures();
    let typo = fixture("cnp-typo.json");
    lists
        .get_mut("/apis/cilium.io/v2/ciliumnetworkpolicies")
        .unwrap()["items"]
        .as_array_mut()
        .unwrap()
        .push(typo.clone());
    let server = FakeApiServer::start(0, lists).await;
    let (view, task) = start_source(&server).await;
    let v = view.snapshot();
    let key = "CiliumNetworkPolicy/shop/typo-policy";
    let doc = &v.policies[key];
    let spec: serde_yaml::Value = serde_yaml::to_value(&typo["spec"]).unwrap();
    assert_eq!(doc["spec"], spec, "the spec is passed through untouched");
    assert!(doc["spec"].get("endpointSelecter").is_some());
    let err = validate(&v).expect_err("the agent rejects the typo");
    assert!(err.contains(key), "{err}");
    assert!(err.contains("endpointSelecter"), "{err}");
    eprintln!("rejected: {err}");
    task.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cilium_crds_the_source_still_syncs() {
    let mut lists = base_fixtures();
    lists.retain(|path, _| !path.starts_with("/apis/cilium.io/"));
    let server = FakeApiServer::start(0, lists).await;
    let view = SharedView::default();
    let task = tokio::spawn(k8s::run(config(server.url()), view.clone()));
    let v = poll_until(&view, "sync without CRDs", Duration::from_secs(10), |v| {
        v.connected && !v.pods.is_empty()
    })
    .await;
    let kinds: BTreeSet<&str> = v
        .policies
        .keys()
        .map(|k| k.split('/').next().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["NetworkPolicy"]));
    assert!(v.last_error.is_none());
    task.abort();
    server.stop().await;
}

/// An agent without a topology waits for `synced` before it changes its datapath: the flag comes
/// with the first complete view and signals a change even when the cluster is empty (nothing
/// else changed), and it stays through an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_complete_view_is_signalled_as_synced_even_when_empty() {
    let lists: BTreeMap<String, Value> = base_fixtures()
        .into_iter()
        .map(|(path, mut list)| {
            list["items"] = Value::Array(vec![]);
            (path, list)
        })
        .collect();
    let server = FakeApiServer::start(0, lists).await;
    let view = SharedView::default();
    assert!(!view.snapshot().synced);
    let task = tokio::spawn(k8s::run(config(server.url()), view.clone()));
    changed_until(&view, "synced", Duration::from_secs(10), |v| v.synced).await;
    let v = view.snapshot();
    assert!(v.pods.is_empty() && v.policies.is_empty() && v.services.is_empty());
    server.stop().await;
    poll_until(&view, "the outage", Duration::from_secs(10), |v| {
        !v.connected
    })
    .await;
    assert!(
        view.snapshot().synced,
        "the last complete view stays in force"
    );
    task.abort();
}

/// `in-cluster` takes the pod's service account; outside a pod that is an error naming it.
#[tokio::test]
async fn in_cluster_outside_a_pod_is_an_error_naming_it() {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        eprintln!("skipped: running inside a Kubernetes pod");
        return;
    }
    let Err(err) = k8s::client(&K8sConfig::new(k8s::IN_CLUSTER)) else {
        panic!("in-cluster outside a pod must fail");
    };
    assert!(err.contains("in-cluster"), "{err}");
}

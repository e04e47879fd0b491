//! The agent without a topology file (as a DaemonSet runs it): its endpoints are the pods the
//! Kubernetes API places on its node, each attached at the host interface the node routes the
//! pod's IP to. The Kubernetes API server is the test bed's **fake** ([`FakeApiServer`]): no real
//! API server can run on this machine (no container engine, no internet). Everything else is
//! real: the agent binary, its eBPF programs, network namespaces with veths and a /32 route per
//! pod to its veth (as Calico and Cilium's veth mode set them up), and TCP traffic between them.
//! Needs root (`cargo xtask test`).
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use periscope_proto::flow::{DropReason, Flow, Verdict};
use periscope_testbed::agent::agent_bin;
use periscope_testbed::k8s_api::FakeApiServer;
use periscope_testbed::traffic::{self, ProbeResult, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};
use prost::Message;
use serde_json::{Value, json};

/// The network only: the agent is not given this file.
const TOPO: &str = r#"
cluster: k8sep
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.231.0.1]}
  - {name: client, namespace: shop, node: n1, labels: {app: client}, ips: [10.231.0.2]}
  - {name: late, namespace: shop, node: n1, labels: {app: late}, ips: [10.231.0.3]}
"#;

const T: Duration = Duration::from_millis(400);

// ---- the fake API's objects -------------------------------------------------------------------

fn pod(name: &str, node: &str, ip: &str, app: &str, rv: u64) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "resourceVersion": rv.to_string(), "labels": {"app": app}},
        "spec": {"nodeName": node, "serviceAccountName": "default",
            "containers": [{"name": "c", "image": "busybox",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn event(kind: &str, object: Value) -> String {
    json!({"type": kind, "object": object}).to_string()
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "10"},
        "items": items})
}

const PODS: &str = "/api/v1/pods";
const CNPS: &str = "/apis/cilium.io/v2/ciliumnetworkpolicies";

/// Every resource the agent's source watches: web and client on n1, a pod on another node
/// (a remote endpoint), a pod of n1 whose address the node does not route (reported, not
/// attached), a host-network pod (never an endpoint); a CiliumNetworkPolicy letting client
/// reach web and late on http, and a NetworkPolicy denying all ingress to client.
fn resources() -> BTreeMap<String, Value> {
    let mut host = pod("hostnet", "n1", "192.0.2.1", "hostnet", 5);
    host["spec"]["hostNetwork"] = json!(true);
    let cnp = |name: &str, app: &str| {
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "6"},
            "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                    "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]}]}})
    };
    BTreeMap::from([
        (
            PODS.to_string(),
            list(
                "PodList",
                "v1",
                vec![
                    pod("web", "n1", "10.231.0.1", "web", 1),
                    pod("client", "n1", "10.231.0.2", "client", 2),
                    pod("far", "n2", "10.231.9.9", "far", 3),
                    pod("ghost", "n1", "10.231.0.50", "ghost", 4),
                    host,
                ],
            ),
        ),
        (
            "/api/v1/namespaces".to_string(),
            list(
                "NamespaceList",
                "v1",
                vec![json!({"metadata": {"name": "shop", "resourceVersion": "1",
                    "labels": {"team": "shop"}}})],
            ),
        ),
        (
            "/api/v1/services".to_string(),
            list("ServiceList", "v1", vec![]),
        ),
        (
            "/apis/discovery.k8s.io/v1/endpointslices".to_string(),
            list("EndpointSliceList", "discovery.k8s.io/v1", vec![]),
        ),
        (
            "/apis/networking.k8s.io/v1/networkpolicies".to_string(),
            list(
                "NetworkPolicyList",
                "networking.k8s.io/v1",
                vec![
                    json!({"metadata": {"name": "client-in", "namespace": "shop",
                    "resourceVersion": "7"},
                    "spec": {"podSelector": {"matchLabels": {"app": "client"}},
                        "policyTypes": ["Ingress"]}}),
                ],
            ),
        ),
        (
            CNPS.to_string(),
            list(
                "CiliumNetworkPolicyList",
                "cilium.io/v2",
                vec![cnp("web-in", "web"), cnp("late-in", "late")],
            ),
        ),
        (
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies".to_string(),
            list("CiliumClusterwideNetworkPolicyList", "cilium.io/v2", vec![]),
        ),
    ])
}

// ---- the agent, without a topology ------------------------------------------------------------

/// The agent process with its scratch directory and bpffs root, removed when dropped.
struct TopologylessAgent {
    child: Child,
    dir: PathBuf,
    bpffs_root: PathBuf,
}

impl TopologylessAgent {
    fn start(tb: &Testbed, api: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("periscope-e2e-k8sep-{}", tb.id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        let bpffs_root = PathBuf::from(format!("/sys/fs/bpf/periscope-e2e/{}-k8sep", tb.id()));
        let child = Command::new(agent_bin())
            .args(["--k8s-api-server", api, "--node", "n1", "--netns"])
            .arg(tb.node_netns_path("n1"))
            .arg("--bpffs-root")
            .arg(&bpffs_root)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--flow-log")
            .arg(dir.join("flows.pb"))
            .args([
                "--cluster-name",
                "k8sep",
                "--startup-jitter",
                "0",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout")).expect("stdout"))
            .stderr(fs::File::create(dir.join("stderr")).expect("stderr"))
            .spawn()
            .expect("start periscope-agent");
        TopologylessAgent {
            child,
            dir,
            bpffs_root,
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        fs::read_to_string(self.dir.join("state/status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the status satisfies `pred`; panics with the status and the log after 20 s.
    fn wait_status(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.status();
            if pred(&st) {
                return st;
            }
            if let Some(code) = self.child.try_wait().expect("try_wait") {
                panic!("agent exited with {code}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {st:#}\nagent log:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn flows(&self) -> Vec<Flow> {
        let bytes = fs::read(self.dir.join("flows.pb")).unwrap_or_default();
        let mut buf = &bytes[..];
        let mut out = Vec::new();
        while let Ok(f) = Flow::decode_length_delimited(&mut buf) {
            out.push(f);
        }
        out
    }

    fn wait_flows(&self, what: &str, pred: impl Fn(&Flow) -> bool) -> Flow {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(f) = self.flows().into_iter().find(&pred) {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "no flow: {what}; {} flows; agent log:\n{}",
                self.flows().len(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TopologylessAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.bpffs_root);
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---- helpers ----------------------------------------------------------------------------------

/// `(name, interface)` of the endpoints in a status document.
fn endpoints(st: &Value) -> Vec<(String, String)> {
    st["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["interface"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn unattached(st: &Value, pod: &str) -> Option<String> {
    st["unattached_pods"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == pod)
        .map(|u| u["reason"].as_str().unwrap_or_default().to_string())
}

fn pod_name(ep: &Option<periscope_proto::flow::Endpoint>) -> String {
    ep.as_ref()
        .map(|e| format!("{}/{}", e.namespace, e.pod_name))
        .unwrap_or_default()
}

fn dport(f: &Flow) -> u32 {
    use periscope_proto::flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol) {
        Some(Protocol::Tcp(t)) => t.destination_port,
        _ => 0,
    }
}

fn is_policy_drop(f: &Flow, from: &str, to: &str) -> bool {
    f.verdict == Verdict::Dropped as i32
        && f.drop_reason_desc == DropReason::PolicyDenied as i32
        && pod_name(&f.source) == from
        && pod_name(&f.destination) == to
        && dport(f) == 8080
}

fn is_forwarded(f: &Flow, from: &str, to: &str) -> bool {
    f.verdict == Verdict::Forwarded as i32
        && pod_name(&f.source) == from
        && pod_name(&f.destination) == to
        && dport(f) == 8080
}

fn assert_blocked(r: ProbeResult, what: &str) {
    assert!(
        matches!(r, ProbeResult::TimedOut | ProbeResult::NoEcho(_)),
        "{what}: expected no answer, got {r:?}"
    );
}

fn ip_route(tb: &Testbed, args: &[&str]) {
    let out = tb.node("n1").exec("ip", args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_a_topology_the_nodes_kubernetes_pods_are_attached_at_their_routes() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let (web, client, late) = (
        tb.pod("shop/web"),
        tb.pod("shop/client"),
        tb.pod("shop/late"),
    );
    // late's CNI is not done yet: its veth is there, its route not.
    let late_if = late.host_ifname.clone();
    ip_route(&tb, &["route", "del", "10.231.0.3/32", "dev", &late_if]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let api = runtime.block_on(FakeApiServer::start(0, resources()));
    let mut agent = TopologylessAgent::start(&tb, &api.url());

    // web and client are attached at the veths their routes name; ghost (no route) and late
    // (no route yet) are reported; far (another node) and hostnet are no endpoints here.
    let st = agent.wait_status("web and client attached", |st| endpoints(st).len() == 2);
    assert_eq!(
        endpoints(&st),
        {
            let mut want = vec![
                ("shop/client".to_string(), client.host_ifname.clone()),
                ("shop/web".to_string(), web.host_ifname.clone()),
            ];
            want.sort_by(|a, b| a.1.cmp(&b.1));
            want
        },
        "{st:#}"
    );
    assert_eq!(st["node"], "n1");
    assert_eq!(st["cluster"], "k8sep");
    let ghost = unattached(&st, "shop/ghost").unwrap_or_else(|| panic!("ghost reported: {st:#}"));
    assert!(ghost.contains("no route"), "{ghost}");
    assert!(
        unattached(&st, "shop/late").is_none(),
        "late is not in the API yet"
    );
    assert!(unattached(&st, "shop/hostnet").is_none() && unattached(&st, "shop/far").is_none());
    assert!(agent.stderr().contains("shop/ghost"), "{}", agent.stderr());
    // The API's policies are in force on the discovered endpoints.
    let ep = |st: &Value, pod: &str| {
        st["endpoints"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == pod).cloned())
            .unwrap_or_else(|| panic!("no endpoint {pod}: {st:#}"))
    };
    assert_eq!(ep(&st, "shop/web")["ingress_enforced"], true);
    assert_eq!(ep(&st, "shop/client")["ingress_enforced"], true);

    let _servers: Vec<TcpEchoServer> = [web, client, late]
        .iter()
        .map(|p| TcpEchoServer::start(p, 8080))
        .collect();
    let r = traffic::tcp_probe(client, web.v4(8080), T);
    assert!(r.is_echoed(), "client -> web:8080 allowed: {r:?}");
    assert_blocked(
        traffic::tcp_probe(web, client.v4(8080), T),
        "web -> client:8080 (client-in denies)",
    );
    agent.wait_flows("client -> web forwarded, named", |f| {
        is_forwarded(f, "shop/client", "shop/web")
    });
    agent.wait_flows("web -> client dropped by policy", |f| {
        is_policy_drop(f, "shop/web", "shop/client")
    });

    // late appears in the API before its route: reported, not attached.
    api.push_event(
        PODS,
        &event("ADDED", pod("late", "n1", "10.231.0.3", "late", 20)),
    );
    let st = agent.wait_status("late reported", |st| unattached(st, "shop/late").is_some());
    assert!(endpoints(&st).iter().all(|(n, _)| n != "shop/late"));
    // The CNI adds the route: the agent finds it (periodic look) and attaches late, with its
    // policy in force.
    ip_route(
        &tb,
        &[
            "route",
            "add",
            "10.231.0.3/32",
            "dev",
            &late_if,
            "scope",
            "link",
        ],
    );
    let st = agent.wait_status("late attached", |st| {
        endpoints(st).iter().any(|(n, _)| n == "shop/late")
    });
    assert!(
        endpoints(&st).contains(&("shop/late".to_string(), late_if.clone())),
        "{st:#}"
    );
    assert!(unattached(&st, "shop/late").is_none(), "{st:#}");
    assert_eq!(ep(&st, "shop/late")["ingress_enforced"], true);
    let r = traffic::tcp_probe(client, late.v4(8080), T);
    assert!(r.is_echoed(), "client -> late:8080 allowed: {r:?}");
    assert_blocked(
        traffic::tcp_probe(web, late.v4(8080), T),
        "web -> late:8080 (late-in allows client only)",
    );
    agent.wait_flows("client -> late forwarded", |f| {
        is_forwarded(f, "shop/client", "shop/late")
    });
    agent.wait_flows("web -> late dropped by policy", |f| {
        is_policy_drop(f, "shop/web", "shop/late")
    });

    // web is deleted: its endpoint is detached (status, pins); the others stay enforced.
    api.push_event(
        PODS,
        &event("DELETED", pod("web", "n1", "10.231.0.1", "web", 21)),
    );
    let st = agent.wait_status("web detached", |st| {
        endpoints(st).iter().all(|(n, _)| n != "shop/web")
    });
    assert_eq!(endpoints(&st).len(), 2, "{st:#}");
    assert!(
        !agent.bpffs_root.join("ep").join(&web.host_ifname).exists(),
        "web's pins removed"
    );
    let tc = tb
        .node("n1")
        .exec("tc", ["filter", "show", "dev", &web.host_ifname, "ingress"]);
    assert!(
        String::from_utf8_lossy(&tc.stdout).trim().is_empty(),
        "no program on web's veth: {}",
        String::from_utf8_lossy(&tc.stdout)
    );
    assert_blocked(
        traffic::tcp_probe(web, client.v4(8080), T),
        "web -> client:8080 still denied at client",
    );
    let r = traffic::tcp_probe(client, late.v4(8080), T);
    assert!(r.is_echoed(), "client -> late:8080 still allowed: {r:?}");
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "agent still running"
    );
    drop(agent);
    runtime.block_on(api.stop());
}

/// Neither a topology nor an API server: a start-up error that says what to give.
#[test]
fn without_topology_or_api_server_the_agent_says_what_is_missing() {
    let out = Command::new(agent_bin())
        .args(["--node", "n1", "--listen", "127.0.0.1:0"])
        .env_remove("PERISCOPE_TOPOLOGY")
        .env_remove("PERISCOPE_K8S_API_SERVER")
        .output()
        .expect("run periscope-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--topology") && err.contains("--k8s-api-server"),
        "{err}"
    );
}

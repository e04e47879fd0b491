//! The etcd metadata source against a real etcd server (Debian's etcd-server): endpoints written
//! in Cilium's kvstore layout are enforced and named within a second; an etcd outage changes
//! nothing; the agent recovers without a restart; services written as Cilium's `ClusterService`
//! entries are load balanced, follow their updates and go away with their key. Needs root (run
//! through `cargo xtask test`).
use std::time::{Duration, Instant};

use periscope_testbed::agent::Agent;
use periscope_testbed::servers::Etcd;
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};

const TOPO: &str = r#"
cluster: cluster1
nodes: [{name: n1}]
pods:
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.212.0.1]}
  - {name: web, namespace: data, node: n1, labels: {app: web}, ips: [10.212.0.2]}
  # Hosts the agent does not know from the topology: VMs announced through etcd.
  - {name: vm1, node: n1, external: true, ips: [10.3.192.65]}
  - {name: vm2, node: n1, external: true, ips: [10.3.192.66]}
"#;

/// db admits only endpoints labelled app=app1 in namespace ns1 (the seed's identity).
const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-app1, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: app1, k8s:io.kubernetes.pod.namespace: ns1}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

const T: Duration = Duration::from_millis(400);

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn put_vm(etcd: &Etcd, ip: &str, id: u32, pod: &str) {
    etcd.put(
        &format!("cilium/state/ip/v1/cluster1/{ip}"),
        &format!(
            r#"{{"IP":"{ip}","Mask":null,"HostIP":"10.3.9.10","ID":{id},"Key":0,"Metadata":"cilium-global:cluster1:node1:2404","K8sNamespace":"ns1","K8sPodName":"{pod}"}}"#
        ),
    );
}

#[test]
fn etcd_endpoints_are_enforced_within_a_second_and_survive_an_outage() {
    let mut etcd = Etcd::start();
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let (db, vm1, vm2, web) = (
        tb.pod("data/db"),
        tb.pod("vm1"),
        tb.pod("vm2"),
        tb.pod("data/web"),
    );
    let _srv = TcpEchoServer::start(db, 5432);
    let agent = Agent::start(&tb, "n1", POLICY, &["--etcd-endpoints", &etcd.url]);
    assert!(
        !traffic::tcp_probe(vm1, db.v4(5432), T).is_echoed(),
        "unknown VM is world: denied"
    );

    // The three entries of seed 003 §3.4.
    let labels = "k8s:app=app1;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.cilium.k8s.policy.serviceaccount=default;k8s:io.kubernetes.pod.namespace=ns1;";
    etcd.put("cilium/state/identities/v1/id/15614229", labels);
    etcd.put(&format!("{labels}/10.3.9.10"), "15614229");
    put_vm(&etcd, "10.3.192.65", 15614229, "pod1");
    let took = wait_until(
        Duration::from_secs(1),
        "the VM is allowed after the etcd write",
        || traffic::tcp_probe(vm1, db.v4(5432), Duration::from_millis(100)).is_echoed(),
    );
    eprintln!("etcd write to enforcement: {took:?}");
    let flows = agent.wait_flows(Duration::from_secs(5), "a verdict naming the VM", |fl| {
        fl.iter()
            .any(|f| f.verdict == 1 && f.source.as_ref().is_some_and(|s| s.pod_name == "pod1"))
    });
    let f = flows
        .iter()
        // A forwarded flow: a probe sent just before the ipcache update was denied as world
        // and may be named only after the update (its event carries the old identity).
        .find(|f| f.verdict == 1 && f.source.as_ref().is_some_and(|s| s.pod_name == "pod1"))
        .unwrap();
    let src = f.source.as_ref().unwrap();
    assert_eq!((src.namespace.as_str(), src.identity), ("ns1", 15614229));
    assert!(
        src.labels.contains(&"k8s:app=app1".to_string()),
        "{:?}",
        src.labels
    );
    assert!(
        !traffic::tcp_probe(web, db.v4(5432), T).is_echoed(),
        "web is still denied"
    );

    // etcd goes away for 60 s: nothing changes.
    etcd.stop();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(60) {
        assert!(
            traffic::tcp_probe(vm1, db.v4(5432), T).is_echoed(),
            "VM allowed during the outage"
        );
        assert!(
            !traffic::tcp_probe(web, db.v4(5432), T).is_echoed(),
            "web denied during the outage"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    assert!(
        agent.status()["error"].is_null(),
        "the outage is not a rejected input"
    );

    // etcd is back: a new endpoint is picked up without restarting the agent.
    etcd.restart();
    put_vm(&etcd, "10.3.192.66", 15614229, "pod2");
    wait_until(
        Duration::from_secs(30),
        "vm2 allowed after etcd recovered",
        || traffic::tcp_probe(vm2, db.v4(5432), Duration::from_millis(100)).is_echoed(),
    );
    assert!(traffic::tcp_probe(vm1, db.v4(5432), T).is_echoed());
    // A deletion is honoured too.
    etcd.del("cilium/state/ip/v1/cluster1/10.3.192.65");
    wait_until(
        Duration::from_secs(2),
        "vm1 denied after its entry is deleted",
        || !traffic::tcp_probe(vm1, db.v4(5432), Duration::from_millis(100)).is_echoed(),
    );
}

const SVC_TOPO: &str = r#"
cluster: cluster1
nodes: [{name: n1}]
pods:
  - {name: client, namespace: shop, node: n1, labels: {app: client}, ips: [10.213.0.1]}
  - {name: be-1, namespace: shop, node: n1, labels: {app: api}, ips: [10.213.1.1]}
  - {name: be-2, namespace: shop, node: n1, labels: {app: api}, ips: [10.213.1.2]}
"#;

/// A `services/v1` entry (Cilium's `ClusterService`) for shop/api on 10.96.7.10:80 with
/// `backends` on port 8080.
fn cluster_service(backends: &[&str]) -> String {
    let backends: Vec<String> = backends
        .iter()
        .map(|ip| format!(r#""{ip}":{{"http":{{"Protocol":"TCP","Port":8080}}}}"#))
        .collect();
    format!(
        r#"{{"cluster":"cluster1","namespace":"shop","name":"api","frontends":{{"10.96.7.10":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{{}}},"labels":{{}},"selector":{{}},"includeExternal":true,"shared":true,"clusterID":1}}"#,
        backends.join(",")
    )
}

/// Services announced in etcd are load balanced by the datapath: connections to the frontend
/// reach both backends and the client sees the frontend; a backend removed from the entry takes
/// no new connections; the entry deleted, the frontend is gone.
#[test]
fn etcd_services_are_load_balanced() {
    let etcd = Etcd::start();
    let tb = Testbed::from_yaml(SVC_TOPO, TestbedOptions::default()).expect("test bed");
    let client = tb.pod("shop/client");
    let servers: Vec<TcpEchoServer> = ["shop/be-1", "shop/be-2"]
        .iter()
        .map(|p| TcpEchoServer::start(tb.pod(p), 8080))
        .collect();
    let _agent = Agent::start(&tb, "n1", "", &["--etcd-endpoints", &etcd.url]);
    let vip: std::net::SocketAddr = "10.96.7.10:80".parse().unwrap();
    let key = "cilium/state/services/v1/cluster1/shop/api";
    let accepted = || servers.iter().map(|s| s.accepted()).collect::<Vec<_>>();
    // `n` probes; the connections each backend accepted meanwhile.
    let spread = |n: usize| {
        let before = accepted();
        for i in 0..n {
            assert!(
                traffic::tcp_probe(client, vip, T).is_echoed(),
                "probe {i} via the service"
            );
        }
        accepted()
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>()
    };

    assert!(
        !traffic::tcp_probe(client, vip, T).is_echoed(),
        "no service yet"
    );
    etcd.put(key, &cluster_service(&["10.213.1.1", "10.213.1.2"]));
    wait_until(Duration::from_secs(5), "the service from etcd", || {
        traffic::tcp_probe(client, vip, T).is_echoed()
    });
    let d = spread(60);
    assert!(d.iter().all(|n| *n > 0), "both backends serve: {d:?}");

    // be-1 leaves the entry: new connections all go to be-2.
    etcd.put(key, &cluster_service(&["10.213.1.2"]));
    wait_until(Duration::from_secs(5), "be-1 no longer chosen", || {
        spread(10)[0] == 0
    });
    assert_eq!(spread(30), [0, 30]);

    // The entry deleted: the frontend is gone.
    etcd.del(key);
    wait_until(Duration::from_secs(5), "the frontend removed", || {
        !traffic::tcp_probe(client, vip, T).is_echoed()
    });
}

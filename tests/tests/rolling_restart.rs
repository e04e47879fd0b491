//! The upgrade procedure of README ("Bare metal", "Kubernetes"): the agents of a cluster are
//! restarted one at a time while traffic runs, and nothing an operator would notice happens.
//! Real kernel, real agents on two nodes, real TCP:
//!
//! - long connections across the nodes echo without pause through every restart: no reset, no
//!   stall beyond the echo timeout;
//! - new allowed connections (same node and across nodes) keep being accepted, also while an
//!   agent is down (the pinned datapath enforces alone);
//! - denied connections stay denied the whole time: not one is answered;
//! - each restarted agent takes over its pinned endpoints (same ids and identities) and reports
//!   flows again, for the connections that were open across its restart too.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use periscope_testbed::agent::Agent;
use periscope_testbed::traffic::{self, TcpClientConn, TcpEchoServer};
use periscope_testbed::{PodHandle, Testbed, TestbedOptions, ports};

const TOPO: &str = r#"
cluster: roll
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: frontend, namespace: shop, node: n1, labels: {app: frontend}, ips: [10.216.0.1]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.216.0.2]}
  - {name: api, namespace: shop, node: n2, labels: {app: api}, ips: [10.216.1.1]}
  - {name: intruder, namespace: shop, node: n2, labels: {app: intruder}, ips: [10.216.1.2]}
"#;

/// frontend → api:8080 and api → db:5432 are allowed; everything else into api and db is
/// denied (default deny once a policy selects them).
const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-policy, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-policy, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

const T: Duration = Duration::from_millis(1500);

/// What the traffic threads saw.
#[derive(Default)]
struct Tally {
    echoes: AtomicU64,
    accepted: AtomicU64,
    blocked: AtomicU64,
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn agents_restart_one_at_a_time_under_traffic() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let pod = |name: &str| -> PodHandle { tb.pod(name).clone() };
    let (frontend, db, api, intruder) = (
        pod("shop/frontend"),
        pod("data/db"),
        pod("shop/api"),
        pod("shop/intruder"),
    );
    let mut agents = [
        Agent::start(&tb, "n1", POLICY, &[]),
        Agent::start(&tb, "n2", POLICY, &[]),
    ];
    let _api_server = TcpEchoServer::start(&api, 8080);
    let _db_server = TcpEchoServer::start(&db, 5432);
    let endpoints_before: Vec<_> = agents
        .iter()
        .map(|a| a.status()["endpoints"].clone())
        .collect();

    // Long connections across the nodes, both ways of the policy.
    let mut long = [
        TcpClientConn::connect(&frontend, api.v4(8080), T).expect("frontend → api"),
        TcpClientConn::connect(&api, db.v4(5432), T).expect("api → db"),
    ];
    let long_ports: Vec<u32> = long
        .iter()
        .map(|c| c.local_addr().expect("addr").port() as u32)
        .collect();
    for c in &mut long {
        c.echo(b"before").expect("echo before the restarts");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    std::thread::scope(|s| {
        // Echo on the long connections without pause.
        for (i, mut c) in long.into_iter().enumerate() {
            let (stop, tally, failures) = (stop.clone(), tally.clone(), failures.clone());
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match c.echo(format!("long {i} message {n}").as_bytes()) {
                        Ok(_) => tally.echoes.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("long connection {i}, message {n}: {e}"));
                            return;
                        }
                    };
                    n += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                c.close().expect("close");
            });
        }
        // New connections: allowed ones must be answered, denied ones never.
        {
            let (stop, tally, failures) = (stop.clone(), tally.clone(), failures.clone());
            let (frontend, api, db, intruder) =
                (frontend.clone(), api.clone(), db.clone(), intruder.clone());
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (from, to, what) in [
                        (&frontend, api.v4(8080), "frontend → api:8080"),
                        (&api, db.v4(5432), "api → db:5432"),
                    ] {
                        let r = traffic::tcp_probe(from, to, T);
                        if r.is_echoed() {
                            tally.accepted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{what} allowed but not answered: {r:?}"));
                        }
                    }
                    for (from, to, what) in [
                        (&intruder, db.v4(5432), "intruder → db:5432"),
                        (&frontend, db.v4(5432), "frontend → db:5432"),
                        (&intruder, api.v4(8080), "intruder → api:8080"),
                    ] {
                        let r = traffic::tcp_probe(from, to, Duration::from_millis(200));
                        if r.is_echoed() {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{what} denied but answered"));
                        } else {
                            tally.blocked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }

        // The rolling restart: one agent at a time, SIGTERM, a pause with the node's agent
        // down, a new process on the same pinned datapath, then the next node. (The guard stops
        // the traffic threads when this part ends, also by a failed assertion.)
        let _stop = StopOnDrop(stop.clone());
        std::thread::sleep(Duration::from_secs(1));
        for (i, agent) in agents.iter_mut().enumerate() {
            let before = tally.accepted.load(Ordering::Relaxed);
            agent.terminate();
            std::thread::sleep(Duration::from_secs(2));
            assert!(
                tally.accepted.load(Ordering::Relaxed) > before,
                "new connections accepted while agent {i} was down"
            );
            agent.restart(None);
            assert!(
                agent
                    .stderr()
                    .contains("took over pinned endpoint datapath"),
                "agent {i}: {}",
                agent.stderr()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    });

    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    let (echoes, accepted, blocked) = (
        tally.echoes.load(Ordering::Relaxed),
        tally.accepted.load(Ordering::Relaxed),
        tally.blocked.load(Ordering::Relaxed),
    );
    eprintln!(
        "{echoes} echoes on the long connections, {accepted} new connections accepted, {blocked} denied ones blocked"
    );
    assert!(echoes > 100, "{echoes} echoes");
    assert!(accepted > 10, "{accepted} accepted");
    assert!(blocked > 10, "{blocked} blocked");

    for (i, agent) in agents.iter().enumerate() {
        assert_eq!(
            agent.status()["endpoints"],
            endpoints_before[i],
            "agent {i}: same endpoint ids and identities after its restart"
        );
    }
    // The restarted agents report flows, of the long connections too (their FINs: the
    // connections were closed after both restarts). frontend → api is seen at api's node (n2),
    // api → db at db's node (n1).
    for (agent, port, what) in [
        (&agents[1], long_ports[0], "frontend → api"),
        (&agents[0], long_ports[1], "api → db"),
    ] {
        agent.wait_flows(
            Duration::from_secs(10),
            &format!("the long connection {what} after the restart"),
            |fl| fl.iter().any(|f| ports(f).0 == port),
        );
    }
}

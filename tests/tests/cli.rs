//! The `periscope` CLI against a real agent on the test bed: observe with Hubble's flags and
//! outputs, status, list, and clear errors. Needs root (`cargo xtask test`).
use std::process::Command;
use std::time::Duration;

use periscope_testbed::agent::{Agent, cli_bin};
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};

const TOPO: &str = r#"
cluster: cli
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.215.0.1]}
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.215.0.2]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.215.1.1]}
"#;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-api, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

fn periscope(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cli_bin())
        .args(["--server", server])
        .args(args)
        .output()
        .expect("run periscope");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn observe_status_and_list_against_the_agent() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let agent = Agent::start(&tb, "n1", POLICY, &[]);
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let _s = TcpEchoServer::start(db, 5432);
    let t = Duration::from_millis(400);
    assert!(traffic::tcp_probe(api, db.v4(5432), t).is_echoed());
    assert!(!traffic::tcp_probe(web, db.v4(5432), t).is_echoed());
    agent.wait_flows(Duration::from_secs(5), "flows", |f| f.len() >= 8);
    let server = agent.api_address();

    // Denied flows only, compact output.
    let (ok, out, err) = periscope(
        &server,
        &["observe", "--verdict", "DROPPED", "--last", "100"],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "{out}");
    for l in &lines {
        assert!(
            l.contains("shop/web:")
                && l.contains("data/db:5432")
                && (l.contains(" DROPPED ") || l.contains(" DENIED ")),
            "{l}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Policy denied DROPPED (TCP Flags: SYN)")),
        "{out}"
    );
    // Namespace filter + JSON output.
    let (ok, out, err) = periscope(
        &server,
        &[
            "observe",
            "--from-pod",
            "shop/api",
            "--to-port",
            "5432",
            "-o",
            "json",
            "--last",
            "5",
        ],
    );
    assert!(ok, "{err}");
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("json line");
        assert_eq!(v["flow"]["source"]["pod_name"], "api", "{l}");
        assert_eq!(v["flow"]["source"]["namespace"], "shop");
    }
    assert!(!out.is_empty());
    // Policy verdict wording and type column.
    let (ok, out, _) = periscope(
        &server,
        &["observe", "-t", "policy-verdict", "--last", "100"],
    );
    assert!(ok);
    assert!(
        out.lines()
            .any(|l| l.contains("policy-verdict:L3-L4 INGRESS ALLOWED")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("policy-verdict:none INGRESS DENIED")),
        "{out}"
    );
    // A bad filter is refused by the server with a clear message.
    let (ok, _, err) = periscope(&server, &["observe", "--ip", "10.0.0.300"]);
    assert!(!ok && err.contains("10.0.0.300"), "{err}");
    // status and list.
    let (ok, out, err) = periscope(&server, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("Healthcheck") && out.contains("Ok"), "{out}");
    assert!(out.contains("Current/Max Flows"), "{out}");
    let (ok, out, _) = periscope(&server, &["list", "namespaces"]);
    assert!(ok && out.contains("shop") && out.contains("data"), "{out}");
    let (ok, out, _) = periscope(&server, &["list", "nodes"]);
    assert!(ok && out.contains("n1"), "{out}");
    // Unreachable server: one clear line, non-zero exit.
    let (ok, _, err) = periscope("127.0.0.1:1", &["observe"]);
    assert!(
        !ok && err.contains("127.0.0.1:1") && err.lines().count() <= 2,
        "{err}"
    );
}

//! The relay's web UI API end to end on the test bed: allowed and denied traffic → agent →
//! relay → the service map (edges, verdict looks, namespaces), a node's detail, flows with
//! filters, the live streams (server-sent events), the bearer token, parameter checks and the
//! static bundle. Needs root (`cargo xtask test`).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use periscope_testbed::agent::Agent;
use periscope_testbed::relay::{Relay, free_port, relay_bin};
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};
use serde_json::Value;

const TOPO: &str = r#"
cluster: ui
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.218.0.1]}
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.218.0.2]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.218.1.1]}
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

const TOKEN: &str = "s3cret-token-for-the-ui";

/// One HTTP/1.1 GET: `(status, body)`; `token` as a bearer header.
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the relay's HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = get(addr, path, Some(TOKEN));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Reads server-sent events from `path` until one of `kind` satisfies `pred`.
fn wait_event(
    addr: &str,
    path: &str,
    kind: &str,
    timeout: Duration,
    mut during: impl FnMut(),
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let deadline = Instant::now() + timeout;
    let mut event = String::new();
    let mut status_seen = false;
    loop {
        assert!(Instant::now() < deadline, "no {kind} event from {path}");
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => panic!("{path}: the stream ended"),
            Ok(_) => {}
            Err(_) => {
                during();
                continue;
            }
        }
        if !status_seen {
            assert!(line.contains(" 200 "), "{path}: {line}");
            status_seen = true;
        }
        let line = line.trim_end();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ")
            && event == kind
        {
            let v: Value = serde_json::from_str(d).unwrap();
            if pred(&v) {
                return v;
            }
        }
    }
}

fn edge<'a>(map: &'a Value, src: &str, dst: &str) -> Option<&'a Value> {
    map["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == src && e["destination"] == dst)
}

#[test]
fn map_flows_streams_and_access_through_the_relay() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let agent = Agent::start(&tb, "n1", POLICY, &[]);
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let _srv = TcpEchoServer::start(db, 5432);
    let dir = std::env::temp_dir().join(format!("periscope-e2e-ui-{}", tb.id()));
    std::fs::create_dir_all(dir.join("bundle")).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        dir.join("bundle/index.html"),
        "<!doctype html><title>periscope</title>",
    )
    .unwrap();
    std::fs::write(dir.join("bundle/app.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let _relay = Relay::start(
        "ui",
        &[
            "--peers",
            &agent.api_address(),
            "--http-listen",
            &http,
            "--ui-token-file",
            token_file.to_str().unwrap(),
            "--ui-dir",
            dir.join("bundle").to_str().unwrap(),
            "--sort-drain-timeout",
            "300ms",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let t = Duration::from_millis(300);
    for _ in 0..3 {
        assert!(traffic::tcp_probe(api, db.v4(5432), t).is_echoed());
        assert!(!traffic::tcp_probe(web, db.v4(5432), t).is_echoed());
    }

    // Access: the token is wanted on the API, not on the config route or the bundle.
    assert_eq!(get(&http, "/api/v1/map", None).0, 401);
    assert_eq!(get(&http, "/api/v1/map", Some("wrong")).0, 401);
    assert_eq!(get(&http, "/metrics", None).0, 401);
    let (status, body) = get(&http, "/api/v1/ui-config", None);
    assert_eq!(status, 200);
    let cfg: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cfg["auth_required"], true, "{cfg}");
    assert_eq!(cfg["history"], "window", "{cfg}");
    let (status, body) = get(&http, "/", None);
    assert_eq!(
        (status, body.as_str()),
        (200, "<!doctype html><title>periscope</title>")
    );
    // The app's own routes are the app; a missing file is not.
    assert_eq!(
        get(&http, "/flows", None).1,
        "<!doctype html><title>periscope</title>"
    );
    assert_eq!(get(&http, "/missing.js", None).0, 404);
    assert_ne!(get(&http, "/../../etc/passwd", None).0, 200);
    let raw = {
        let mut s = TcpStream::connect(&http).unwrap();
        write!(
            s,
            "GET /app.wasm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(
        raw.to_ascii_lowercase()
            .contains("content-type: application/wasm"),
        "{raw}"
    );

    // The map: the allowed edge green, the denied one red; both ends named by namespace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let map = loop {
        let m = get_json(&http, "/api/v1/map?since=5m");
        let count = |src: &str, field: &str| {
            edge(&m, src, "data/db").map_or(0, |e| e[field].as_u64().unwrap())
        };
        if count("shop/api", "forwarded") >= 3 && count("shop/web", "dropped") >= 3 {
            break m;
        }
        assert!(Instant::now() < deadline, "edges missing from the map: {m}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(map["source"], "live", "{map}");
    let ok = edge(&map, "shop/api", "data/db").unwrap();
    assert_eq!(
        (ok["port"].as_u64(), ok["protocol"].as_str()),
        (Some(5432), Some("TCP"))
    );
    assert!(ok["forwarded"].as_u64().unwrap() >= 3, "{ok}");
    assert_eq!(ok["dropped"], 0, "{ok}");
    // Bytes (the agent's Flow.periscope_bytes): a probe's handshake and echo, headers included.
    assert!(ok["bytes"].as_u64().unwrap() >= 3 * 54, "{ok}");
    let denied = edge(&map, "shop/web", "data/db").unwrap();
    assert!(denied["dropped"].as_u64().unwrap() >= 3, "{denied}");
    // A dropped SYN: its headers.
    assert!(
        denied["bytes"].as_u64().unwrap() >= 54 * denied["dropped"].as_u64().unwrap(),
        "{denied}"
    );
    assert_eq!(denied["forwarded"], 0, "{denied}");
    let nodes: Vec<&str> = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    for n in ["shop/api", "shop/web", "data/db"] {
        assert!(nodes.contains(&n), "{n} missing: {nodes:?}");
    }
    // Namespaces: either end; a namespace with nothing gives an empty map.
    let data = get_json(&http, "/api/v1/map?since=5m&namespaces=data");
    assert!(edge(&data, "shop/api", "data/db").is_some(), "{data}");
    let none = get_json(&http, "/api/v1/map?since=5m&namespaces=kube-system");
    assert_eq!(none["edges"].as_array().unwrap().len(), 0, "{none}");

    // A node's detail: labels, pods, inbound edges.
    let d = get_json(&http, "/api/v1/map/node?id=data/db&since=5m");
    assert_eq!(d["node"]["kind"], "workload", "{d}");
    assert_eq!(d["pods"], serde_json::json!(["db"]), "{d}");
    assert!(
        d["labels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "k8s:app=db"),
        "{d}"
    );
    assert!(d["identities"].as_array().unwrap().len() == 1, "{d}");
    assert_eq!(d["inbound"].as_array().unwrap().len(), 2, "{d}");
    assert_eq!(d["outbound"].as_array().unwrap().len(), 0, "{d}");
    assert_eq!(
        d["policies"],
        serde_json::json!([{"name": "db-from-api", "namespace": "data", "kind": "CiliumNetworkPolicy"}]),
        "{d}"
    );

    // Policies: in force on the agent, who may talk to whom, and the denied edge overlaid.
    let g = get_json(&http, "/api/v1/policies");
    assert_eq!(g["errors"], serde_json::json!([]), "{g}");
    let p = &g["policies"][0];
    assert_eq!(p["name"], "db-from-api", "{g}");
    assert_eq!(p["selects"], serde_json::json!(["data/db"]), "{g}");
    assert_eq!(p["ingress_default_deny"], true, "{g}");
    assert_eq!(p["nodes"], serde_json::json!(["n1"]), "{g}");
    let allowed = g["edges"].as_array().unwrap();
    assert!(
        allowed.iter().any(|e| e["source"] == "shop/api"
            && e["destination"] == "data/db"
            && e["deny"] == false
            && e["ports"] == serde_json::json!(["TCP/5432"])),
        "{g}"
    );
    let denied = g["denied"].as_array().unwrap();
    assert!(
        denied
            .iter()
            .any(|e| e["source"] == "shop/web" && e["destination"] == "data/db"),
        "{g}"
    );
    assert!(
        denied.iter().all(|e| e["dropped"].as_u64().unwrap() > 0),
        "{g}"
    );

    // Flows: from the window (a range), filters narrow.
    let dropped = get_json(&http, "/api/v1/flows?since=5m&verdict=DROPPED&limit=1000");
    let flows = dropped["flows"].as_array().unwrap();
    assert!(flows.len() >= 3, "{dropped}");
    for f in flows {
        assert_eq!(f["verdict"], "DROPPED", "{f}");
        assert_eq!(f["source"]["pod_name"], "web", "{f}");
    }
    let edge_flows = get_json(
        &http,
        "/api/v1/flows?since=5m&from=shop/api&to=data/db&limit=1000",
    );
    let flows = edge_flows["flows"].as_array().unwrap();
    assert!(flows.len() >= 3, "{edge_flows}");
    assert!(
        flows
            .iter()
            .all(|f| f["source"]["pod_name"] == "api" && f["verdict"] == "FORWARDED")
    );
    let by_text = get_json(&http, "/api/v1/flows?since=5m&text=APP%3DWEB&limit=1000");
    assert!(!by_text["flows"].as_array().unwrap().is_empty());
    assert!(
        by_text["flows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["source"]["pod_name"] == "web" || f["destination"]["pod_name"] == "web")
    );
    let reason = get_json(
        &http,
        "/api/v1/flows?since=5m&drop_reason=POLICY_DENIED&namespace=shop",
    );
    assert!(!reason["flows"].as_array().unwrap().is_empty(), "{reason}");
    let none = get_json(&http, "/api/v1/flows?since=5m&port=6379");
    assert!(none["flows"].as_array().unwrap().is_empty(), "{none}");

    // Bad parameters: 400 naming the parameter; user text never becomes a query.
    for (path, name) in [
        ("/api/v1/flows?verdict=MAYBE", "verdict"),
        ("/api/v1/flows?verdcit=DROPPED", "verdcit"),
        ("/api/v1/flows?since=yesterday", "since"),
        ("/api/v1/flows?namespace=x%27%20OR%201%3D1", "namespace"),
        ("/api/v1/flows?ip=10.0.0.0/40", "ip"),
        ("/api/v1/map?limit=0", "limit"),
        ("/api/v1/map?namespaces=Data", "namespaces"),
        ("/api/v1/map/node?id=nowhere", "id"),
        ("/api/v1/map/stream?until=1m", "until"),
    ] {
        let (status, body) = get(&http, path, Some(TOKEN));
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.starts_with(&format!("{name}:")), "{path}: {body}");
    }

    // Live: the flow stream (token as a parameter, as EventSource sends it) and the map stream.
    let f = wait_event(
        &http,
        &format!("/api/v1/flows/stream?verdict=DROPPED&access_token={TOKEN}"),
        "flow",
        Duration::from_secs(20),
        || {
            let _ = traffic::tcp_probe(web, db.v4(5432), Duration::from_millis(100));
        },
        |_| true,
    );
    assert_eq!(f["verdict"], "DROPPED", "{f}");
    assert_eq!(get(&http, "/api/v1/flows/stream", None).0, 401);
    let m = wait_event(
        &http,
        &format!("/api/v1/map/stream?since=5m&access_token={TOKEN}"),
        "map",
        Duration::from_secs(10),
        || {},
        |_| true,
    );
    assert!(edge(&m, "shop/web", "data/db").is_some(), "{m}");
    let d = wait_event(
        &http,
        &format!("/api/v1/map/stream?since=5m&access_token={TOKEN}"),
        "delta",
        Duration::from_secs(20),
        || {
            let _ = traffic::tcp_probe(api, db.v4(5432), Duration::from_millis(100));
        },
        |d| {
            d["edges"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["source"] == "shop/api"))
        },
    );
    assert!(d["edges"][0]["forwarded"].as_u64().unwrap() >= 1, "{d}");
}

#[test]
fn a_relay_listening_beyond_loopback_wants_a_token() {
    let out = Command::new(relay_bin())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"])
        .output()
        .expect("run the relay");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--http-listen") && err.contains("--ui-token-file"),
        "{err}"
    );
    let out = Command::new(relay_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ui-token-file",
            "/nonexistent/token",
        ])
        .output()
        .expect("run the relay");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ui-token-file") && err.contains("/nonexistent/token"),
        "{err}"
    );
    let out = Command::new(relay_bin())
        .args(["--listen", "127.0.0.1:0", "--ui-dir", "/nonexistent"])
        .output()
        .expect("run the relay");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ui-dir") && err.contains("index.html"),
        "{err}"
    );
}

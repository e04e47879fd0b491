//! The relay's consumers of the live stream, end to end on the test bed: traffic denied by a
//! policy → agent → relay → an alert rule fires → a real HTTP receiver gets the Alertmanager
//! notification with the right labels, `periscope alerts` lists it, and it resolves when the
//! traffic stops; the same flows come back as history (`--since`) from the relay's in-memory
//! window. Needs root (`cargo xtask test`).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use periscope_testbed::agent::{Agent, cli_bin};
use periscope_testbed::relay::{Relay, free_port};
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};

const TOPO: &str = r#"
cluster: alerts
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.217.0.1]}
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.217.0.2]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.217.1.1]}
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

const RULES: &str = r#"
rules:
  - name: DbDenied
    selector:
      allow:
        - verdict: [DROPPED]
          event_type: [{type: 1}]
          destination_label: ["k8s:app=db"]
    window: 10s
    threshold: 3
    group_by: [source_namespace, source_pod, destination_port]
    severity: critical
    labels: {team: data}
    annotations:
      summary: "{{ source_pod }} denied {{ count }} times on {{ destination_port }}"
    resolve_after: 4s
"#;

/// A real HTTP server recording every request's path and JSON body; answers 200.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push((path, v));
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Receiver { port, got }
    }

    /// Waits for an Alertmanager post whose alert satisfies `pred`.
    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            for (path, body) in self.got.lock().unwrap().iter() {
                if path == "/api/v2/alerts"
                    && let Some(a) = body.as_array().and_then(|a| a.iter().find(|a| pred(a)))
                {
                    return a.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no notification: {what}; got {:?}",
                self.got.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `t` as RFC 3339 (UTC, seconds), one of the `--since` formats.
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (y, m, d) = periscope_proto::util::calendar::civil_from_days(secs.div_euclid(86400));
    let s = secs.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[test]
fn denied_traffic_fires_an_alert_that_resolves_and_history_comes_from_the_window() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let agent = Agent::start(&tb, "n1", POLICY, &[]);
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let _srv = TcpEchoServer::start(db, 5432);
    let am = Receiver::start();
    let dir = std::env::temp_dir().join(format!("periscope-e2e-alerts-{}", tb.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let relay = Relay::start(
        "alerts",
        &[
            "--peers",
            &agent.api_address(),
            "--alert-rules",
            rules.to_str().unwrap(),
            "--alertmanager-url",
            &format!("http://127.0.0.1:{}", am.port),
            "--http-listen",
            &http,
            "--sort-drain-timeout",
            "300ms",
        ],
    );
    // The relay follows the agent before the traffic starts.
    std::thread::sleep(Duration::from_secs(1));
    let t = Duration::from_millis(300);
    for _ in 0..3 {
        assert!(traffic::tcp_probe(api, db.v4(5432), t).is_echoed());
    }
    // `--since` has whole seconds: start the denied traffic just after a second boundary, which
    // is then the start of the history asked for (after the allowed flows the window holds).
    let now = std::time::SystemTime::now();
    let frac = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - frac as u64 + 50_000_000,
    ));
    let since = rfc3339(std::time::SystemTime::now());
    let t0 = Instant::now();
    for _ in 0..6 {
        assert!(!traffic::tcp_probe(web, db.v4(5432), t).is_echoed());
    }

    // Firing, with the rule's and the group's labels.
    let firing = am.wait("DbDenied firing", Duration::from_secs(30), |a| {
        a["labels"]["alertname"] == "DbDenied" && a.get("endsAt").is_none()
    });
    let labels = &firing["labels"];
    assert_eq!(labels["severity"], "critical", "{firing}");
    assert_eq!(labels["team"], "data", "{firing}");
    assert_eq!(labels["source_pod"], "web", "{firing}");
    assert_eq!(labels["source_namespace"], "shop", "{firing}");
    assert_eq!(labels["destination_port"], "5432", "{firing}");
    assert!(
        firing["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("web denied"),
        "{firing}"
    );
    eprintln!(
        "alert fired {:?} after the first denied probe",
        t0.elapsed()
    );

    // Prometheus metrics on the same HTTP API: the peer, the window, the alert and its
    // notification.
    let metrics = periscope_testbed::http_get(&http, "/metrics");
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line_start} in\n{metrics}"))
    };
    assert_eq!(value("periscope_relay_peers{state=\"connected\"} "), 1.0);
    assert!(value("periscope_relay_window_flows ") >= 3.0, "{metrics}");
    assert_eq!(value("periscope_relay_alert_rules "), 1.0, "{metrics}");
    assert_eq!(
        value("periscope_relay_alerts{rule=\"DbDenied\",state=\"firing\"} "),
        1.0
    );
    assert!(value("periscope_relay_alert_flows_matched_total{rule=\"DbDenied\"} ") >= 1.0);

    // `periscope alerts` lists it from the relay's HTTP API.
    let out = Command::new(cli_bin())
        .args(["alerts", "--api", &http])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().any(|l| l.starts_with("firing")
            && l.contains("DbDenied")
            && l.contains("source_pod=web")),
        "{text}"
    );
    let out = Command::new(cli_bin())
        .args(["alerts", "--api", &http, "--state", "bogus"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected firing"));

    // No more denied traffic: resolved, with endsAt.
    let resolved = am.wait("DbDenied resolved", Duration::from_secs(40), |a| {
        a["labels"]["alertname"] == "DbDenied" && a["endsAt"].is_string()
    });
    assert_eq!(resolved["labels"]["source_pod"], "web");
    let out = Command::new(cli_bin())
        .args([
            "alerts", "--api", &http, "--state", "resolved", "-o", "json",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"state\":\"resolved\""), "{text}");

    // History from the relay's in-memory window, even with the agent gone: `observe --since`
    // through the relay.
    let mut agent = agent;
    agent.kill9();
    let out = Command::new(cli_bin())
        .args([
            "--server",
            &relay.address,
            "observe",
            "--since",
            &since,
            "--verdict",
            "DROPPED",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dropped: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Each denied probe is a policy verdict and a drop (SYN retransmissions may add more).
    assert!(dropped.len() >= 12, "{}", dropped.len());
    assert!(dropped.iter().all(|f| f["flow"]["verdict"] == "DROPPED"));
    assert!(
        dropped
            .iter()
            .all(|f| f["flow"]["source"]["pod_name"] == "web")
    );
    assert!(
        dropped.iter().all(|f| f["flow"]["node_name"] == "n1"),
        "{:?}",
        dropped[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

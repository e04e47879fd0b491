//! Operations: the real relay and agent with `--log-format json`, their log filter changed at
//! runtime over HTTP (`/log-level`; the relay's behind its bearer token), and their warnings and
//! errors stored in the `logs` table of a private ClickHouse (18.16); a SIGTERM stops them
//! cleanly, with their outputs flushed. The agent's test needs root (`cargo xtask test`).
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use periscope_storage::testing::TestServer;
use periscope_testbed::agent::Agent;
use periscope_testbed::relay::{Relay, free_port};
use periscope_testbed::{Testbed, TestbedOptions, traffic};
use serde_json::Value;

const TOKEN: &str = "s3cret-token";

/// One HTTP/1.1 request; returns the status code and the body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked bodies (axum's String answers have a length, but be lenient).
    (code, body.to_owned())
}

/// The relay's stderr as JSON objects; panics on a line that is not one.
fn json_lines(relay: &Relay) -> Vec<Value> {
    parse_lines(&relay.stderr())
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn wait_for(what: &str, relay: &Relay, ok: impl FnMut() -> bool) {
    wait_log(what, || relay.stderr(), ok)
}

fn wait_log(what: &str, log: impl Fn() -> String, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 40 s; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn relay_logs_json_changes_level_at_runtime_and_ships_warnings_to_clickhouse() {
    let ch = TestServer::start().expect("clickhouse-server");
    let spool = std::env::temp_dir().join(format!("periscope-e2e-logs-spool-{}", free_port()));
    let http_addr = format!("127.0.0.1:{}", free_port());
    // A peer nobody serves: a WARN at the first failure, DEBUG lines at every retry after.
    let dead_peer = format!("127.0.0.1:{}", free_port());
    let mut relay = Relay::start(
        "logs",
        &[
            "--peers",
            &dead_peer,
            "--retry-timeout",
            "300ms",
            "--clickhouse-url",
            &ch.url(),
            "--spool-dir",
            spool.to_str().unwrap(),
            "--http-listen",
            &http_addr,
            "--ui-token",
            TOKEN,
            "--log-format",
            "json",
            "--log-to-clickhouse",
        ],
    );

    // JSON lines with the fields that matter.
    wait_for("the peer warning on stderr", &relay, || {
        json_lines(&relay)
            .iter()
            .any(|v| v["level"] == "WARN" && v["target"] == "periscope_relay::peers")
    });
    let lines = json_lines(&relay);
    let warn = lines
        .iter()
        .find(|v| v["level"] == "WARN" && v["target"] == "periscope_relay::peers")
        .unwrap();
    assert_eq!(
        warn["message"], "peer not available; retrying with backoff",
        "{warn}"
    );
    assert_eq!(warn["fields"]["address"], dead_peer.as_str(), "{warn}");
    assert!(warn["timestamp"].as_str().unwrap().ends_with('Z'), "{warn}");
    assert!(
        lines.iter().all(|v| v["level"] != "DEBUG"),
        "DEBUG before the filter allows it"
    );

    // The filter, behind the token.
    let (code, _) = http(&http_addr, "GET", "/log-level", None, "");
    assert_eq!(code, 401, "/log-level without the token");
    let (code, body) = http(&http_addr, "GET", "/log-level", Some(TOKEN), "");
    assert_eq!((code, body.trim()), (200, "info"));
    let (code, body) = http(&http_addr, "PUT", "/log-level", Some(TOKEN), "info,x=loud");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("x=loud"), "{body}");
    let (code, body) = http(&http_addr, "GET", "/log-level", Some(TOKEN), "");
    assert_eq!(
        (code, body.trim()),
        (200, "info"),
        "a bad filter changes nothing"
    );
    assert!(
        json_lines(&relay).iter().all(|v| v["level"] != "DEBUG"),
        "still no DEBUG"
    );
    let (code, body) = http(
        &http_addr,
        "PUT",
        "/log-level",
        Some(TOKEN),
        "info,periscope_relay::peers=debug",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim(), "periscope_relay::peers=debug,info");
    wait_for("a DEBUG line after the change", &relay, || {
        json_lines(&relay).iter().any(|v| {
            v["level"] == "DEBUG"
                && v["target"] == "periscope_relay::peers"
                && v["message"] == "peer still not available"
        })
    });

    // The warning in periscope.logs (DEBUG lines are below --log-to-clickhouse's warn).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = ch.client();
    let count = |sql: &'static str| {
        let client = client.clone();
        rt.block_on(async move { client.query(sql).fetch_one::<u64>().await })
    };
    wait_for("the WARN row in periscope.logs", &relay, || {
        matches!(
            count(
                "SELECT count() FROM periscope.logs WHERE level = 'WARN' AND component = 'relay' \
                 AND target = 'periscope_relay::peers' \
                 AND message = 'peer not available; retrying with backoff'"
            ),
            Ok(n) if n >= 1
        )
    });
    let (fields, cluster, age): (String, String, i64) = rt
        .block_on(
            client
                .query(
                    "SELECT fields, cluster, toInt64(now()) - toInt64(time) FROM periscope.logs \
                     WHERE target = 'periscope_relay::peers' ORDER BY time_ns LIMIT 1",
                )
                .fetch_one(),
        )
        .expect("the row");
    let fields: Value = serde_json::from_str(&fields).expect("fields are a JSON object");
    assert_eq!(fields["address"], dead_peer.as_str());
    assert_eq!(cluster, "default");
    assert!((0..120).contains(&age), "time is now-ish: {age} s ago");
    assert_eq!(
        count("SELECT count() FROM periscope.logs WHERE level IN ('DEBUG', 'INFO')").unwrap(),
        0,
        "only warn and above are stored"
    );

    let (code, metrics) = http(&http_addr, "GET", "/metrics", Some(TOKEN), "");
    assert_eq!(code, 200);
    let shipped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("periscope_log_events_shipped_total "))
        .unwrap_or_else(|| panic!("no shipped counter in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(shipped >= 1, "{metrics}");
    assert!(
        metrics.contains("periscope_log_events_dropped_total{reason=\"queue_full\"} 0"),
        "{metrics}"
    );

    // SIGTERM: a clean stop, logged as JSON to the end.
    let status = relay.terminate().expect("relay was running");
    assert!(status.success(), "exit status {status}");
    let last = json_lines(&relay);
    assert!(
        last.iter().any(|v| v["message"] == "store writer stopped"),
        "the writer flushed and stopped"
    );
    let _ = std::fs::remove_dir_all(&spool);
}

const TOPO: &str = r#"
cluster: ops
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.214.0.1]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.214.1.1]}
"#;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-web, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

#[test]
fn agent_logs_json_changes_level_at_runtime_ships_warnings_and_flushes_at_sigterm() {
    let ch = TestServer::start().expect("clickhouse-server");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = ch.client();
    // The relay's migrations make the table; agents only insert.
    rt.block_on(periscope_storage::migrate(
        &client,
        &periscope_storage::MigrateConfig::default(),
    ))
    .expect("migrations");
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let _db_server = traffic::TcpEchoServer::start(tb.pod("data/db"), 5432);
    // etcd nobody serves: a WARN per failed session, then a DEBUG line before each retry.
    let dead_etcd = format!("http://127.0.0.1:{}", free_port());
    let mut agent = Agent::start(
        &tb,
        "n1",
        POLICY,
        &[
            "--log-format",
            "json",
            "--log-clickhouse-url",
            &ch.url(),
            "--etcd-endpoints",
            &dead_etcd,
            "--startup-jitter",
            "0",
        ],
    );
    let log = || agent.stderr();
    wait_log("the etcd warning on stderr", log, || {
        parse_lines(&agent.stderr())
            .iter()
            .any(|v| v["level"] == "WARN" && v["target"] == "periscope_agent::etcd")
    });
    assert!(
        parse_lines(&agent.stderr())
            .iter()
            .all(|v| v["level"] != "DEBUG"),
        "DEBUG before the filter allows it"
    );

    // The filter, on the metrics endpoint.
    let metrics = agent.metrics_address();
    let (code, body) = http(&metrics, "GET", "/log-level", None, "");
    assert_eq!((code, body.trim()), (200, "info"));
    let (code, body) = http(
        &metrics,
        "PUT",
        "/log-level",
        None,
        "info,periscope_agent::etcd=nope",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("periscope_agent::etcd=nope"), "{body}");
    let (code, body) = http(
        &metrics,
        "PUT",
        "/log-level",
        None,
        "info,periscope_agent::etcd=debug",
    );
    assert_eq!(
        (code, body.trim()),
        (200, "periscope_agent::etcd=debug,info")
    );
    assert!(
        http(&metrics, "GET", "/metrics", None, "")
            .1
            .contains("hubble_flows_processed_total")
    );
    wait_log("a DEBUG line after the change", log, || {
        parse_lines(&agent.stderr())
            .iter()
            .any(|v| v["level"] == "DEBUG" && v["message"] == "etcd reconnect backoff")
    });

    // A rejected policy is an ERROR; both it and the etcd warnings end up in periscope.logs.
    assert!(
        agent.set_policy("apiVersion: [").is_some(),
        "a bad policy is rejected"
    );
    let count = |sql: &'static str| {
        let client = client.clone();
        rt.block_on(async move { client.query(sql).fetch_one::<u64>().await })
    };
    wait_log("the agent's rows in periscope.logs", log, || {
        let warn = count(
            "SELECT count() FROM periscope.logs WHERE component = 'agent' AND node = 'n1' \
             AND cluster = 'ops' AND level = 'WARN' AND target = 'periscope_agent::etcd'",
        );
        let error = count(
            "SELECT count() FROM periscope.logs WHERE component = 'agent' AND level = 'ERROR' \
             AND message LIKE 'rejected new topology/policy%'",
        );
        matches!((warn, error), (Ok(w), Ok(e)) if w >= 1 && e >= 1)
    });
    assert_eq!(
        count("SELECT count() FROM periscope.logs WHERE level IN ('DEBUG', 'INFO')").unwrap(),
        0,
        "only warn and above are stored"
    );

    let metrics_text = http(&metrics, "GET", "/metrics", None, "").1;
    assert!(
        metrics_text
            .lines()
            .any(|l| l.starts_with("periscope_log_events_shipped_total ") && !l.ends_with(" 0")),
        "{metrics_text}"
    );

    // Traffic, then SIGTERM: every flow reaches the flow log, the pins stay.
    for _ in 0..3 {
        traffic::tcp_probe(
            tb.pod("shop/web"),
            tb.pod("data/db").v4(5432),
            Duration::from_millis(300),
        );
    }
    agent.terminate();
    let lines = parse_lines(&agent.stderr());
    assert!(
        lines.iter().any(|v| v["message"] == "flow outputs flushed"),
        "{}",
        agent.stderr()
    );
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "stopping; the datapath stays attached and keeps enforcing")
    );
    let flows = agent.flows();
    assert!(
        flows
            .iter()
            .any(|f| f.l4.as_ref().and_then(|l4| l4.protocol.as_ref()).is_some()),
        "the flows of the probes are in the flow log: {} flows",
        flows.len()
    );
}

//! The `periscope` CLI against a real agent on the test bed: observe with Hubble's flags,
//! outputs and field masks, status, list, and clear errors. Needs root (`cargo xtask test`).
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
    // Field masks: `--experimental-field-mask` (json only) gets just those fields from the
    // server; the default mask still gives compact lines.
    let (ok, out, err) = periscope(
        &server,
        &[
            "observe",
            "--to-pod",
            "data/db",
            "--experimental-field-mask",
            "time,verdict,source.pod_name",
            "-o",
            "json",
            "--last",
            "5",
        ],
    );
    assert!(ok, "{err}");
    assert!(!out.is_empty());
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("json line");
        let flow = v["flow"].as_object().expect("a flow");
        let mut keys: Vec<&str> = flow.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["source", "time", "verdict"], "{l}");
        let source: Vec<&String> = v["flow"]["source"].as_object().unwrap().keys().collect();
        assert_eq!(source, ["pod_name"], "{l}");
    }
    let (ok, _, err) = periscope(
        &server,
        &[
            "observe",
            "--experimental-field-mask",
            "time,no_such_field",
            "-o",
            "json",
        ],
    );
    assert!(!ok && err.contains("no_such_field"), "{err}");
    let (ok, out, err) = periscope(
        &server,
        &[
            "observe",
            "--experimental-use-default-field-masks",
            "--from-pod",
            "shop/api",
            "--last",
            "100",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        !out.is_empty()
            && out
                .lines()
                .all(|l| l.contains("shop/api:") && l.contains("data/db:5432")),
        "{out}"
    );
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

/// The venv's python with chdb-core (installed by `cargo xtask setup`).
fn chdb_python() -> std::path::PathBuf {
    let venv = std::env::var_os("PERISCOPE_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache"))
                })
                .map(|c| c.join("periscope-venv"))
        })
        .expect("PERISCOPE_VENV or HOME");
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "{} missing: run `cargo xtask setup`",
        py.display()
    );
    py
}

/// Runs `sql` in chdb (ClickHouse in-process, reading files as `clickhouse-local` does) and
/// returns its JSONEachRow rows.
fn chdb(sql: &str) -> Vec<serde_json::Value> {
    let out = Command::new(chdb_python())
        .args([
            "-c",
            "import sys, chdb; print(chdb.query(sys.argv[1], 'JSONEachRow'))",
            sql,
        ])
        .output()
        .expect("run chdb");
    assert!(
        out.status.success(),
        "chdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON row"))
        .collect()
}

#[test]
fn export_writes_jsonl_parquet_and_arrow_files_that_clickhouse_reads() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let agent = Agent::start(&tb, "n1", POLICY, &[]);
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let _s = TcpEchoServer::start(db, 5432);
    let t = Duration::from_millis(400);
    for _ in 0..3 {
        assert!(traffic::tcp_probe(api, db.v4(5432), t).is_echoed());
        assert!(!traffic::tcp_probe(web, db.v4(5432), t).is_echoed());
    }
    agent.wait_flows(Duration::from_secs(5), "flows", |f| {
        f.iter().filter(|f| f.verdict == 2).count() >= 6
    });
    let server = agent.api_address();
    let dir = std::env::temp_dir().join(format!("periscope-export-{}", tb.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();

    // Everything the agent holds, as JSON lines.
    let (ok, _, err) = periscope(
        &server,
        &["export", "--format", "jsonl", "--file", &path("all.jsonl")],
    );
    assert!(ok, "{err}");
    assert!(err.contains("exported"), "{err}");
    let all: Vec<periscope_proto::flow::Flow> = std::fs::read_to_string(path("all.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a protobuf-JSON flow per line"))
        .collect();
    assert!(all.len() >= 12, "{}", all.len());
    let dropped: Vec<_> = all.iter().filter(|f| f.verdict == 2).collect();
    assert!(dropped.len() >= 6);

    // Denied flows, as Parquet, read by ClickHouse's own Parquet reader.
    let (ok, _, err) = periscope(
        &server,
        &[
            "export",
            "--verdict",
            "DROPPED",
            "--file",
            &path("denied.parquet"),
        ],
    );
    assert!(ok, "{err}");
    let rows = chdb(&format!(
        "SELECT count() AS n, countIf(verdict = 'DROPPED') AS d, \
         groupUniqArray(source_pod_name) AS pods, min(destination_port) AS port, \
         toTypeName(time) AS tt FROM file('{}', Parquet)",
        path("denied.parquet")
    ));
    let r = &rows[0];
    let n = r["n"]
        .as_str()
        .map_or_else(|| r["n"].as_u64().unwrap(), |s| s.parse().unwrap());
    // The ring may have gained a periodic report since: at least every dropped flow seen before.
    assert!(n as usize >= dropped.len(), "{r}");
    assert_eq!(r["d"], r["n"], "{r}");
    assert_eq!(r["pods"], serde_json::json!(["web"]), "{r}");
    assert_eq!(r["port"], serde_json::json!(5432), "{r}");
    assert!(r["tt"].as_str().unwrap().starts_with("DateTime64(9"), "{r}");

    // The same selection as Arrow IPC: the same flows.
    let (ok, _, err) = periscope(
        &server,
        &[
            "export",
            "--format",
            "arrow",
            "--verdict",
            "DROPPED",
            "--until",
            "0s",
            "--file",
            &path("denied.arrow"),
        ],
    );
    assert!(ok, "{err}");
    let arrow_uuids: Vec<String> = chdb(&format!(
        "SELECT uuid FROM file('{}', Arrow) ORDER BY time_ns",
        path("denied.arrow")
    ))
    .iter()
    .map(|r| r["uuid"].as_str().unwrap().to_string())
    .collect();
    for f in &dropped {
        assert!(arrow_uuids.contains(&f.uuid), "{} missing", f.uuid);
    }
    assert!(!std::path::Path::new(&path("denied.arrow.partial")).exists());

    // Clear errors, and no file left behind.
    let (ok, _, err) = periscope(
        &server,
        &["export", "--follow", "--file", &path("x.parquet")],
    );
    assert!(!ok);
    assert!(err.contains("--follow is not supported"), "{err}");
    let (ok, _, err) = periscope(
        "127.0.0.1:1",
        &["export", "--file", &path("unreachable.parquet")],
    );
    assert!(!ok);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!std::path::Path::new(&path("unreachable.parquet")).exists());
    assert!(!std::path::Path::new(&path("unreachable.parquet.partial")).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

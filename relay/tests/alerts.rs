//! Alerting end to end inside the process: rule files on disk, the engine fed with synthetic
//! denied flows, the background evaluation, and real receivers: a small hyper server per test
//! that records every request (Alertmanager API and generic webhook), and a private ClickHouse
//! 18.16 server for the `alerts` table. Deadlines are generous and only bound the waiting;
//! nothing asserts on how long anything took.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use periscope_proto::flow::{DropReason, Endpoint, Flow, Layer4, Tcp, Verdict, Workload, layer4};
use periscope_relay::alerts::{
    AlertState, Alerting, AlertingConfig, AlertmanagerConfig, DeliveryConfig, Receiver,
    WebhookConfig,
};
use serde_json::Value;

/// Upper bound for any wait; never reached when things work.
const DEADLINE: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    content_type: String,
    body: Value,
    status: u16,
}

/// An HTTP receiver that records requests and answers 500 to the first `fail_first` ones.
struct ReceiverServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReceiverServer {
    async fn start(fail_first: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failures_left = Arc::new(AtomicUsize::new(fail_first));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                let failures_left = failures_left.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let recorded = recorded.clone();
                        let failures_left = failures_left.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let bytes = req.into_body().collect().await.unwrap().to_bytes();
                            let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                                Value::String(format!(
                                    "not JSON ({e}): {}",
                                    String::from_utf8_lossy(&bytes)
                                ))
                            });
                            let fail = failures_left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let status = if fail {
                                StatusCode::INTERNAL_SERVER_ERROR
                            } else {
                                StatusCode::OK
                            };
                            recorded.lock().unwrap().push(Recorded {
                                method,
                                path,
                                content_type,
                                body,
                                status: status.as_u16(),
                            });
                            let response = Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the recorded requests.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let start = tokio::time::Instant::now();
        loop {
            let requests = self.requests();
            if pred(&requests) {
                return requests;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "waiting for {what}: requests so far: {requests:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ReceiverServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn endpoint(ns: &str, pod: &str, app: &str, workload: (&str, &str)) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: vec![
            format!("k8s:app={app}"),
            format!("k8s:io.kubernetes.pod.namespace={ns}"),
        ],
        workloads: vec![Workload {
            kind: workload.0.into(),
            name: workload.1.into(),
        }],
        ..Default::default()
    }
}

/// A flow like the agent reports for a packet dropped by policy (the drop event).
fn denied_flow(uuid: &str, src: Endpoint, dst: Endpoint, port: u32) -> Flow {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    Flow {
        uuid: uuid.into(),
        time: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        verdict: Verdict::Dropped as i32,
        drop_reason_desc: DropReason::PolicyDenied as i32,
        node_name: "node-1".into(),
        source: Some(src),
        destination: Some(dst),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 41234,
                destination_port: port,
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

fn frontend() -> Endpoint {
    endpoint("shop", "frontend-1", "frontend", ("Deployment", "frontend"))
}

fn db() -> Endpoint {
    endpoint("data", "db-1", "db", ("StatefulSet", "db"))
}

fn cache() -> Endpoint {
    endpoint("data", "cache-1", "cache", ("Deployment", "cache"))
}

const RULES: &str = r#"
rules:
  - name: DbDenied
    selector:
      allow:
        - verdict: [DROPPED]
          destination_label: ["k8s:app=db"]
          drop_reason_desc: [POLICY_DENIED]
    window: 3s
    threshold: 5
    group_by: [source_namespace, source_workload, destination_workload, destination_port]
    severity: critical
    labels: {team: data}
    annotations:
      summary: "{{ source_workload }} denied {{ count }} times in {{ window }}"
    resolve_after: 2s
"#;

fn write_rules(dir: &Path, text: &str) {
    std::fs::write(dir.join("rules.yaml"), text).expect("writing rules");
}

/// Feeds denied flows (frontend → db, which the rule selects, plus some it does not) every
/// 50 ms until `stop` is set; returns the uuids of the selected ones.
fn start_feeding(
    alerting: Alerting,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut uuids = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let uuid = format!("00000000-0000-4000-8000-{i:012}");
            alerting.observe(&denied_flow(&uuid, frontend(), db(), 5432));
            uuids.push(uuid);
            // Not selected: another destination, and a forwarded flow to the db.
            alerting.observe(&denied_flow("other", frontend(), cache(), 6379));
            let mut forwarded = denied_flow("fwd", frontend(), db(), 5432);
            forwarded.verdict = Verdict::Forwarded as i32;
            forwarded.drop_reason_desc = 0;
            alerting.observe(&forwarded);
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        uuids
    })
}

fn labels(alert: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(alert["labels"].clone()).expect("labels")
}

fn time(v: &Value) -> SystemTime {
    let text = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let ts = periscope_proto::json::timestamp_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    SystemTime::UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_receives_firing_then_resolved() {
    let receiver = ReceiverServer::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), RULES);
    let began = SystemTime::now();
    let alerting = Alerting::start(AlertingConfig {
        rules_path: Some(dir.path().to_owned()),
        evaluation_interval: Duration::from_millis(100),
        receivers: vec![Receiver::Alertmanager(AlertmanagerConfig {
            generator_url: Some("http://periscope-ui:12000".into()),
            // No periodic re-post during the test: every request is a notification.
            resend_interval: periscope_relay::alerts::rules::DurationSpec(Duration::from_secs(
                3600,
            )),
            ..AlertmanagerConfig::new(receiver.url())
        })],
        ..AlertingConfig::default()
    })
    .expect("alerting starts");

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = start_feeding(alerting.clone(), stop.clone());
    let requests = receiver
        .wait_for("the firing alert", |r| !r.is_empty())
        .await;

    let firing = &requests[0];
    assert_eq!(firing.method, "POST");
    assert_eq!(firing.path, "/api/v2/alerts");
    assert_eq!(firing.content_type, "application/json");
    let alerts = firing
        .body
        .as_array()
        .expect("a JSON array of postableAlerts");
    assert_eq!(alerts.len(), 1, "{:#}", firing.body);
    let alert = &alerts[0];
    let expected: BTreeMap<String, String> = [
        ("alertname", "DbDenied"),
        ("severity", "critical"),
        ("team", "data"),
        ("source_namespace", "shop"),
        ("source_workload", "frontend"),
        ("destination_workload", "db"),
        ("destination_port", "5432"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(labels(alert), expected);
    let summary = alert["annotations"]["summary"].as_str().expect("summary");
    assert!(
        summary.starts_with("frontend denied ") && summary.ends_with(" times in 3s"),
        "{summary}"
    );
    let starts_at = time(&alert["startsAt"]);
    assert!(
        starts_at >= began - Duration::from_secs(1),
        "startsAt {alert}"
    );
    assert!(starts_at <= SystemTime::now(), "startsAt {alert}");
    assert!(
        alert.get("endsAt").is_none(),
        "firing alerts have no endsAt: {alert}"
    );

    // The in-memory list: the firing alert, with samples among the flows fed.
    let listed = alerting.alerts();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0].state, AlertState::Firing);
    assert_eq!(
        alert["generatorURL"],
        format!("http://periscope-ui:12000/alerts/{}", listed[0].fingerprint)
    );
    assert!(!listed[0].sample_flow_uuids.is_empty());

    // Stop the traffic: the alert resolves.
    stop.store(true, Ordering::SeqCst);
    let fed = feeder.await.unwrap();
    for uuid in &listed[0].sample_flow_uuids {
        assert!(fed.contains(uuid), "sample {uuid} was not fed");
    }
    let requests = receiver
        .wait_for("the resolved alert", |r| {
            r.iter().any(|q| q.body[0].get("endsAt").is_some())
        })
        .await;
    assert_eq!(
        requests.len(),
        2,
        "one notification on fire (deduplicated), one on resolve: {requests:#?}"
    );
    let resolved = &requests[1].body.as_array().expect("array")[0];
    assert_eq!(labels(resolved), expected);
    assert_eq!(time(&resolved["startsAt"]), starts_at);
    assert!(time(&resolved["endsAt"]) >= starts_at, "{resolved}");
    assert_eq!(resolved["generatorURL"], alert["generatorURL"]);

    let listed = alerting.alerts();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, AlertState::Resolved);
    assert!(listed[0].ends_at.is_some());

    let stats = alerting.stats();
    assert_eq!(stats.receivers[0].delivered, 2, "{stats:#?}");
    assert_eq!(stats.receivers[0].failed, 0, "{stats:#?}");
    assert!(stats.engine.rules[0].flows_matched >= 5, "{stats:#?}");
    alerting.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_gets_a_retry() {
    // Both receivers answer their first request with 500, then 200.
    let webhook = ReceiverServer::start(1).await;
    let alertmanager = ReceiverServer::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), RULES);
    let alerting = Alerting::start(AlertingConfig {
        rules_path: Some(dir.path().to_owned()),
        evaluation_interval: Duration::from_millis(100),
        delivery: DeliveryConfig {
            initial_backoff: Duration::from_millis(200),
            ..DeliveryConfig::default()
        },
        receivers: vec![
            Receiver::Webhook(WebhookConfig {
                url: format!("{}/hooks/periscope", webhook.url()),
            }),
            Receiver::Alertmanager(AlertmanagerConfig::new(alertmanager.url())),
        ],
        ..AlertingConfig::default()
    })
    .expect("alerting starts");

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = start_feeding(alerting.clone(), stop.clone());
    let hooks = webhook
        .wait_for("a retried webhook", |r| r.iter().any(|q| q.status == 200))
        .await;
    let am = alertmanager
        .wait_for("a retried Alertmanager post", |r| {
            r.iter().any(|q| q.status == 200)
        })
        .await;
    stop.store(true, Ordering::SeqCst);
    feeder.await.unwrap();

    assert_eq!(hooks[0].status, 500);
    assert_eq!(hooks[1].status, 200);
    assert_eq!(
        hooks[0].body, hooks[1].body,
        "the retry sends the same notification"
    );
    assert_eq!(hooks[1].path, "/hooks/periscope");
    let n = &hooks[1].body;
    assert_eq!(n["notification"], "firing");
    assert_eq!(n["state"], "firing");
    assert_eq!(n["rule"], "DbDenied");
    assert_eq!(n["group"]["source_workload"], "frontend");
    assert_eq!(n["labels"]["alertname"], "DbDenied");
    assert_eq!(n["threshold"], 5);
    assert_eq!(n["window"], "3s");
    assert!(n["count"].as_u64().unwrap() >= 5, "{n:#}");
    assert!(
        !n["sample_flow_uuids"].as_array().unwrap().is_empty(),
        "{n:#}"
    );
    assert!(n.get("ends_at").is_none(), "{n:#}");

    assert_eq!((am[0].status, am[1].status), (500, 200));
    assert_eq!(am[0].body, am[1].body);
    assert_eq!(am[1].path, "/api/v2/alerts");

    let stats = alerting.stats();
    for r in &stats.receivers {
        assert!(r.retries >= 1, "{stats:#?}");
        assert!(r.delivered >= 1, "{stats:#?}");
        assert_eq!(r.failed, 0, "{stats:#?}");
        assert_eq!(r.dropped, 0, "{stats:#?}");
    }
    alerting.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_rule_files_are_reloaded_and_bad_ones_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), RULES);
    let alerting = Alerting::start(AlertingConfig {
        rules_path: Some(dir.path().to_owned()),
        reload_interval: Duration::from_millis(100),
        ..AlertingConfig::default()
    })
    .expect("alerting starts");
    assert_eq!(alerting.rules().rules()[0].name, "DbDenied");

    let wait = |what: &'static str, pred: Box<dyn Fn(&Alerting) -> bool + Send>| {
        let alerting = alerting.clone();
        async move {
            let start = tokio::time::Instant::now();
            while !pred(&alerting) {
                assert!(
                    start.elapsed() < DEADLINE,
                    "waiting for {what}: {:#?}",
                    alerting.stats()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // A bad file: rejected, the rules in force stay.
    write_rules(
        dir.path(),
        &RULES.replace("window: 3s", "window: 3 seconds"),
    );
    wait(
        "the bad file to be rejected",
        Box::new(|a| a.stats().reload_failures >= 1),
    )
    .await;
    let stats = alerting.stats();
    let error = stats.last_reload_error.expect("error recorded");
    assert!(
        error.contains("rules.yaml")
            && error.contains("\"DbDenied\"")
            && error.contains("window")
            && error.contains("invalid duration"),
        "{error}"
    );
    assert_eq!(stats.rules, 1);
    assert_eq!(alerting.rules().rules()[0].name, "DbDenied");

    // Fixed, with another name: reloaded.
    write_rules(dir.path(), &RULES.replace("DbDenied", "DatabaseDenied"));
    wait(
        "the fixed file to be loaded",
        Box::new(|a| a.rules().rules()[0].name == "DatabaseDenied"),
    )
    .await;
    let stats = alerting.stats();
    assert_eq!(stats.last_reload_error, None);
    assert!(stats.reloads >= 1);
    alerting.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_stored_in_clickhouse() {
    use periscope_storage::{AlertRow, MigrateConfig, migrate, testing::TestServer};

    let server =
        TestServer::start().unwrap_or_else(|e| panic!("starting a private clickhouse-server: {e}"));
    let client = periscope_storage::prepare_client(server.client());
    let cfg = MigrateConfig {
        database: "periscope_alerts".into(),
        ..MigrateConfig::default()
    };
    migrate(&client, &cfg).await.expect("migrate");

    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), RULES);
    let alerting = Alerting::start(AlertingConfig {
        rules_path: Some(dir.path().to_owned()),
        evaluation_interval: Duration::from_millis(100),
        receivers: vec![Receiver::ClickHouse {
            client: Box::new(server.client()),
            database: cfg.database.clone(),
        }],
        ..AlertingConfig::default()
    })
    .expect("alerting starts");

    let latest = "SELECT ?fields FROM periscope_alerts.alerts \
                  ORDER BY updated_at_ns DESC LIMIT 1 BY fingerprint, starts_at_ns";
    let wait_for_state = |state: &'static str| {
        let client = client.clone();
        async move {
            let start = tokio::time::Instant::now();
            loop {
                let rows: Vec<AlertRow> = client
                    .query(latest)
                    .fetch_all()
                    .await
                    .expect("reading alerts");
                if rows.iter().any(|r| r.state == state) {
                    return rows;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "waiting for a {state} row: {rows:#?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = start_feeding(alerting.clone(), stop.clone());
    let rows = wait_for_state("firing").await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let firing = &rows[0];
    let listed = alerting.alerts();
    assert_eq!(firing.fingerprint, listed[0].fingerprint);
    assert_eq!(firing.rule, "DbDenied");
    assert_eq!(firing.notification, "firing");
    assert_eq!(firing.ends_at_ns, 0);
    assert_eq!(firing.window_ms, 3000);
    let labels: BTreeMap<_, _> = firing
        .label_keys
        .iter()
        .cloned()
        .zip(firing.label_values.iter().cloned())
        .collect();
    assert_eq!(labels["source_workload"], "frontend");
    assert!(!firing.sample_flow_uuids.is_empty());

    stop.store(true, Ordering::SeqCst);
    feeder.await.unwrap();
    let rows = wait_for_state("resolved").await;
    assert_eq!(rows.len(), 1, "one alert instance: {rows:#?}");
    assert_eq!(rows[0].starts_at_ns, firing.starts_at_ns);
    assert!(rows[0].ends_at_ns >= rows[0].starts_at_ns);
    alerting.shutdown(Duration::from_secs(5)).await;
}

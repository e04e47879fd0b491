//! End to end: a small in-process Observer + Health server with canned
//! responses on 127.0.0.1 (ephemeral port), driven through the library entry
//! point and through the built `periscope` binary.

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use periscope_cli::{CliError, flows_request_from_args, parse_cli, run};
use periscope_proto::flow::{CiliumEventType, Endpoint, Flow, Ip, IpVersion, Verdict};
use periscope_proto::observer::observer_server::{Observer, ObserverServer};
use periscope_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
    get_flows_response::ResponseTypes,
};
use periscope_proto::relay::{NodeState, NodeStatusEvent};
use prost_types::Timestamp;
use tonic::codegen::tokio_stream::{self, Stream, StreamExt};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake server answers.
#[derive(Clone, Default)]
struct Fake {
    responses: Vec<GetFlowsResponse>,
    /// GetFlows fails with this (code, message).
    error: Option<(tonic::Code, &'static str)>,
    /// The health check answers NOT_SERVING.
    not_serving: bool,
    /// Every GetFlows request received.
    requests: Arc<Mutex<Vec<GetFlowsRequest>>>,
}

#[tonic::async_trait]
impl Observer for Fake {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        self.requests.lock().unwrap().push(request.clone());
        if let Some((code, message)) = self.error {
            return Err(Status::new(code, message));
        }
        let items = tokio_stream::iter(self.responses.clone().into_iter().map(Ok));
        if request.follow {
            // Like a real server: stay open for new flows.
            Ok(Response::new(Box::pin(
                items.chain(tokio_stream::pending()),
            )))
        } else {
            Ok(Response::new(Box::pin(items)))
        }
    }

    async fn get_agent_events(
        &self,
        _: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn get_debug_events(
        &self,
        _: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn get_nodes(
        &self,
        _: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let node = |name: &str, state: NodeState, uptime_s: u64, num, max| Node {
            name: name.into(),
            version: "v0.1.0".into(),
            address: format!("{name}:4244"),
            state: state as i32,
            tls: None,
            uptime_ns: uptime_s * 1_000_000_000,
            num_flows: num,
            max_flows: max,
            seen_flows: uptime_s * 10,
        };
        Ok(Response::new(GetNodesResponse {
            nodes: vec![
                node("worker-2", NodeState::NodeUnavailable, 0, 0, 0),
                node("worker-1", NodeState::NodeConnected, 3723, 2048, 4096),
            ],
        }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        Ok(Response::new(GetNamespacesResponse {
            namespaces: vec![
                Namespace {
                    cluster: "kind".into(),
                    namespace: "default".into(),
                },
                Namespace {
                    cluster: "kind".into(),
                    namespace: "kube-system".into(),
                },
            ],
        }))
    }

    async fn server_status(
        &self,
        _: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse {
            num_flows: 4095,
            max_flows: 8192,
            seen_flows: 123_456,
            uptime_ns: 100_000_000_000,
            num_connected_nodes: Some(2),
            num_unavailable_nodes: Some(1),
            unavailable_nodes: vec!["worker-3".into()],
            version: "periscope-relay v0.1.0".into(),
        }))
    }
}

/// Starts the fake on its own runtime thread; returns its address.
fn start(fake: Fake) -> SocketAddr {
    start_with(fake, None)
}

/// The fake server, with TLS (mutual when the files name a client CA) when `tls` is given.
fn start_with(fake: Fake, tls: Option<periscope_tls::ServerTlsFiles>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            tx.send(listener.local_addr().expect("local addr"))
                .expect("send addr");
            let (reporter, health) = tonic_health::server::health_reporter();
            let status = if fake.not_serving {
                tonic_health::ServingStatus::NotServing
            } else {
                tonic_health::ServingStatus::Serving
            };
            reporter
                .set_service_status("hubble.server.Observer", status)
                .await;
            let router = Server::builder()
                .add_service(health)
                .add_service(ObserverServer::new(fake));
            match tls {
                None => {
                    router
                        .serve_with_incoming(TcpIncoming::from(listener))
                        .await
                }
                Some(files) => {
                    let config =
                        periscope_tls::ReloadingServerConfig::new(files).expect("server TLS files");
                    router
                        .serve_with_incoming(periscope_tls::tls_incoming(
                            listener,
                            Arc::new(config),
                        ))
                        .await
                }
            }
            .expect("fake server runs");
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("server started")
}

/// An address nothing listens on.
fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn flow(i: u32, reply: Option<bool>) -> Flow {
    Flow {
        time: Some(Timestamp {
            seconds: 1_700_000_000 + i64::from(i),
            nanos: 0,
        }),
        verdict: Verdict::Forwarded as i32,
        ip: Some(Ip {
            source: "10.0.0.1".into(),
            destination: "10.0.0.2".into(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
            source_xlated: String::new(),
        }),
        source: Some(Endpoint {
            namespace: "default".into(),
            pod_name: "client".into(),
            identity: 1000,
            ..Endpoint::default()
        }),
        destination: Some(Endpoint {
            identity: 2,
            ..Endpoint::default()
        }),
        node_name: "node-1".into(),
        event_type: Some(CiliumEventType {
            r#type: 4,
            sub_type: 5,
        }),
        is_reply: reply,
        summary: format!("flow {i}"),
        ..Flow::default()
    }
}

fn canned() -> Vec<GetFlowsResponse> {
    let wrap = |flow: Flow| GetFlowsResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        response_types: Some(ResponseTypes::Flow(flow)),
    };
    vec![
        wrap(flow(0, Some(false))),
        GetFlowsResponse {
            response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
                state_change: NodeState::NodeUnavailable as i32,
                node_names: vec!["worker-3".into()],
                message: String::new(),
            })),
            node_name: "relay".into(),
            time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        },
        wrap(flow(1, Some(true))),
    ]
}

const LINE_0: &str = "Nov 14 22:13:20.000: default/client (ID:1000) -> 10.0.0.2 (world) from-endpoint FORWARDED (flow 0)";
const LINE_1: &str = "Nov 14 22:13:21.000: 10.0.0.2 (world) <- default/client (ID:1000) from-endpoint FORWARDED (flow 1)";
const NODE_NOTICE: &str = "Nov 14 22:13:20.000 [relay]: 1 nodes are unavailable: worker-3";

struct Ran {
    result: Result<(), CliError>,
    out: String,
    err: String,
}

async fn run_lib(args: &[&str]) -> Ran {
    let cli = parse_cli(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        run(cli, &mut out, &mut err, std::future::pending()),
    )
    .await
    .expect("command finishes");
    Ran {
        result,
        out: String::from_utf8(out).expect("utf-8"),
        err: String::from_utf8(err).expect("utf-8"),
    }
}

#[tokio::test]
async fn observe_prints_flows_and_sends_default_request() {
    let fake = Fake {
        responses: canned(),
        ..Fake::default()
    };
    let requests = fake.requests.clone();
    let server = start(fake).to_string();
    let ran = run_lib(&["periscope", "observe", "--server", &server]).await;
    ran.result.expect("observe succeeds");
    assert_eq!(ran.out, format!("{LINE_0}\n{LINE_1}\n"));
    assert_eq!(ran.err, format!("{NODE_NOTICE}\n"));
    let received = requests.lock().unwrap().clone();
    assert_eq!(
        received,
        [GetFlowsRequest {
            number: 20,
            ..Default::default()
        }]
    );
}

#[tokio::test]
async fn observe_sends_filters_and_prints_json() {
    let fake = Fake {
        responses: canned(),
        ..Fake::default()
    };
    let requests = fake.requests.clone();
    let server = start(fake).to_string();
    let flags = [
        "--last",
        "2",
        "--ip",
        "10.0.0.1",
        "--not",
        "--verdict",
        "DROPPED",
        "-t",
        "trace:from-endpoint",
        "--since",
        "2023-11-14T00:00:00Z",
    ];
    let mut args = vec![
        "periscope",
        "observe",
        "flows",
        "--server",
        &server,
        "-o",
        "json",
    ];
    args.extend(flags);
    let ran = run_lib(&args).await;
    ran.result.expect("observe succeeds");

    let mut expected_args = vec!["periscope", "observe"];
    expected_args.extend(flags);
    let expected =
        flows_request_from_args(expected_args, SystemTime::now()).expect("request builds");
    assert_eq!(*requests.lock().unwrap(), std::slice::from_ref(&expected));
    assert_eq!(expected.number, 2);
    assert_eq!(expected.whitelist.len(), 2);
    assert_eq!(expected.blacklist[0].verdict, [Verdict::Dropped as i32]);

    let lines: Vec<serde_json::Value> = ran
        .out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["flow"]["Summary"], "flow 0");
    assert_eq!(lines[1]["flow"]["is_reply"], true);
    assert_eq!(lines[1]["time"], "2023-11-14T22:13:21Z");
    // The node notice goes to stderr as JSON.
    assert!(ran.err.contains("\"NODE_UNAVAILABLE\""), "{}", ran.err);
}

/// A Write that the test can read while the command runs.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn observe_follow_stops_cleanly_on_interrupt() {
    let fake = Fake {
        responses: canned(),
        ..Fake::default()
    };
    let requests = fake.requests.clone();
    let server = start(fake).to_string();
    let cli = parse_cli([
        "periscope",
        "observe",
        "--server",
        &server,
        "-f",
        "--from-pod",
        "default/client",
        "--print-node-name",
    ])
    .expect("parses");
    let out = Shared::default();
    let seen = out.clone();
    // "Ctrl-C" once both flows are printed; the stream itself never ends.
    let interrupt = async move {
        while seen
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (mut out_writer, mut err) = (out.clone(), Vec::new());
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        run(cli, &mut out_writer, &mut err, interrupt),
    )
    .await
    .expect("stops after the interrupt");
    result.expect("interrupted follow is a success");
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text,
        format!(
            "{}\n{}\n",
            LINE_0.replacen(": ", " [node-1]: ", 1),
            LINE_1.replacen(": ", " [node-1]: ", 1)
        )
    );
    let received = requests.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert!(received[0].follow);
    assert_eq!(received[0].number, 0);
    assert_eq!(received[0].whitelist[0].source_pod, ["default/client"]);
}

#[tokio::test]
async fn invalid_argument_is_reported() {
    let server = start(Fake {
        error: Some((tonic::Code::InvalidArgument, "invalid source_port filter")),
        ..Fake::default()
    })
    .to_string();
    let ran = run_lib(&["periscope", "observe", "--server", &server]).await;
    let error = ran.result.expect_err("fails");
    assert_eq!(
        error.to_string(),
        "rpc error: code = InvalidArgument desc = invalid source_port filter"
    );
    assert_eq!(ran.out, "");
}

#[tokio::test]
async fn unknown_code_prints_only_the_message() {
    let server = start(Fake {
        error: Some((tonic::Code::Unknown, "something odd")),
        ..Fake::default()
    })
    .to_string();
    let ran = run_lib(&["periscope", "observe", "--server", &server]).await;
    assert_eq!(ran.result.expect_err("fails").to_string(), "something odd");
}

#[tokio::test]
async fn unreachable_server() {
    let server = dead_address().to_string();
    let ran = run_lib(&[
        "periscope",
        "observe",
        "--server",
        &server,
        "--timeout",
        "3s",
    ])
    .await;
    assert_eq!(
        ran.result.expect_err("fails").to_string(),
        format!("cannot connect to {server}: connection refused")
    );
}

#[tokio::test]
async fn conflicts_fail_before_connecting() {
    // The server is unreachable: the error must be the client-side one.
    let server = dead_address().to_string();
    let ran = run_lib(&[
        "periscope",
        "observe",
        "--server",
        &server,
        "--pod",
        "a",
        "--namespace",
        "b",
    ])
    .await;
    assert_eq!(
        ran.result.expect_err("fails").to_string(),
        "filters --namespace and --pod cannot be combined"
    );
    let ran = run_lib(&[
        "periscope",
        "observe",
        "--server",
        &server,
        "--tls-client-cert-file",
        "/nonexistent/client.pem",
    ])
    .await;
    assert_eq!(
        ran.result.expect_err("fails").to_string(),
        "--tls-client-cert-file needs --tls-client-key-file"
    );
    let ran = run_lib(&[
        "periscope",
        "observe",
        "--server",
        &format!("tls://{server}"),
        "--tls-ca-cert-files",
        "/nonexistent/ca.pem",
    ])
    .await;
    let e = ran.result.expect_err("fails").to_string();
    assert!(
        e.starts_with("--tls-ca-cert-files /nonexistent/ca.pem: "),
        "{e}"
    );
}

/// Mutual TLS: the CLI with the right CA and client certificate gets flows; without a
/// client certificate, with one from another CA, or in plain text it is refused; a server
/// certificate from an unknown CA is refused by the CLI.
#[tokio::test]
async fn mutual_tls() {
    use periscope_tls::test_ca::TestCa;
    let dir = std::env::temp_dir().join(format!("periscope-cli-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca = TestCa::new("test CA");
    let rogue = TestCa::new("rogue CA");
    let (scert, skey) = ca.issue(&["observer.periscope.test"]);
    let (ccert, ckey) = ca.issue(&["cli"]);
    let (rcert, rkey) = rogue.issue(&["cli"]);
    let ca_f = file("ca.pem", &ca.pem);
    let rogue_ca_f = file("rogue-ca.pem", &rogue.pem);
    let (ccert_f, ckey_f) = (file("c.pem", &ccert), file("c.key", &ckey));
    let (rcert_f, rkey_f) = (file("r.pem", &rcert), file("r.key", &rkey));
    let files = periscope_tls::ServerTlsFiles {
        cert: file("s.pem", &scert).into(),
        key: file("s.key", &skey).into(),
        client_ca: Some(ca_f.clone().into()),
    };
    let fake = Fake {
        responses: canned(),
        ..Fake::default()
    };
    let server = start_with(fake, Some(files)).to_string();
    let base = |ca: &str, cert: &str, key: &str| {
        vec![
            "periscope".to_owned(),
            "observe".into(),
            "--server".into(),
            server.clone(),
            "--tls".into(),
            "--tls-server-name".into(),
            "observer.periscope.test".into(),
            "--tls-ca-cert-files".into(),
            ca.into(),
            "--tls-client-cert-file".into(),
            cert.into(),
            "--tls-client-key-file".into(),
            key.into(),
        ]
    };
    fn as_refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let ok = run_lib(&as_refs(&base(&ca_f, &ccert_f, &ckey_f))).await;
    ok.result.expect("mutual TLS with the right certificates");
    assert_eq!(ok.out, format!("{LINE_0}\n{LINE_1}\n"));

    let rogue_client = run_lib(&as_refs(&base(&ca_f, &rcert_f, &rkey_f))).await;
    assert!(
        rogue_client.result.is_err(),
        "unknown client certificate accepted"
    );
    let wrong_ca = run_lib(&as_refs(&base(&rogue_ca_f, &ccert_f, &ckey_f))).await;
    assert!(wrong_ca.result.is_err(), "server of an unknown CA accepted");
    let no_cert = run_lib(&[
        "periscope",
        "observe",
        "--server",
        &format!("tls://{server}"),
        "--tls-server-name",
        "observer.periscope.test",
        "--tls-ca-cert-files",
        &ca_f,
    ])
    .await;
    assert!(
        no_cert.result.is_err(),
        "missing client certificate accepted"
    );
    let plain = run_lib(&["periscope", "observe", "--server", &server]).await;
    assert!(plain.result.is_err(), "plain text accepted by a TLS server");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn print_raw_filters_does_not_connect() {
    let server = dead_address().to_string();
    let ran = run_lib(&[
        "periscope",
        "observe",
        "--server",
        &server,
        "--print-raw-filters",
        "--from-ip",
        "1.2.3.4",
    ])
    .await;
    ran.result.expect("no connection needed");
    assert_eq!(ran.out, "allowlist:\n- '{\"source_ip\":[\"1.2.3.4\"]}'\n");
}

#[tokio::test]
async fn status_output() {
    let server = start(Fake::default()).to_string();
    let ran = run_lib(&["periscope", "status", "--server", &server]).await;
    ran.result.expect("status succeeds");
    assert_eq!(
        ran.out,
        format!(
            "Healthcheck (via {server}): Ok
Current/Max Flows: 4,095/8,192 (49.99%)
Flows/s: 1234.56
Connected Nodes: 2/3
Unavailable Nodes: 1
  - worker-3
"
        )
    );
}

/// `--config`: the server comes from the file; a flag still wins; a bad setting is an error
/// before connecting.
#[tokio::test]
async fn the_config_file_names_the_server() {
    let server = start(Fake::default()).to_string();
    let path = std::env::temp_dir().join(format!("periscope-cli-e2e-{}.yaml", std::process::id()));
    std::fs::write(&path, format!("server: {server}\ntimeout: 3s\n")).unwrap();
    let config = path.to_str().unwrap();
    let ran = run_lib(&["periscope", "status", "--config", config]).await;
    ran.result.expect("status succeeds");
    assert!(
        ran.out
            .starts_with(&format!("Healthcheck (via {server}): Ok")),
        "{}",
        ran.out
    );
    let dead = dead_address().to_string();
    let ran = run_lib(&["periscope", "status", "--config", config, "--server", &dead]).await;
    assert!(
        ran.result.is_err(),
        "the flag's dead server wins: {}",
        ran.out
    );
    std::fs::write(&path, "sever: x:1\n").unwrap();
    let e = parse_cli(["periscope", "status", "--config", config]).unwrap_err();
    assert!(e.to_string().contains("unknown setting `sever`"), "{e}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn status_not_serving() {
    let server = start(Fake {
        not_serving: true,
        ..Fake::default()
    })
    .to_string();
    let ran = run_lib(&["periscope", "--server", &server, "status"]).await;
    assert_eq!(ran.result.expect_err("fails").to_string(), "not healthy");
    assert_eq!(
        ran.out,
        format!("Healthcheck (via {server}): Unavailable: NOT_SERVING\n")
    );
}

#[tokio::test]
async fn list_nodes_and_namespaces() {
    let server = start(Fake::default()).to_string();
    let ran = run_lib(&["periscope", "list", "nodes", "--server", &server]).await;
    ran.result.expect("list nodes succeeds");
    assert_eq!(
        ran.out,
        "NAME       STATUS        AGE      FLOWS/S   CURRENT/MAX-FLOWS
worker-1   Connected     1h2m3s   10.00     2048/4096 ( 50.00%)
worker-2   Unavailable   N/A      N/A       N/A
"
    );
    let ran = run_lib(&[
        "periscope",
        "list",
        "node",
        "-o",
        "wide",
        "--server",
        &server,
    ])
    .await;
    ran.result.expect("list nodes wide succeeds");
    assert!(
        ran.out
            .lines()
            .next()
            .unwrap()
            .ends_with("VERSION   ADDRESS         TLS"),
        "{}",
        ran.out
    );
    assert!(
        ran.out.contains("v0.1.0    worker-1:4244   N/A"),
        "{}",
        ran.out
    );

    let ran = run_lib(&["periscope", "list", "namespaces", "--server", &server]).await;
    ran.result.expect("list namespaces succeeds");
    assert_eq!(ran.out, "NAMESPACE\ndefault\nkube-system\n");
    let ran = run_lib(&[
        "periscope",
        "list",
        "namespaces",
        "-o",
        "json",
        "--server",
        &server,
    ])
    .await;
    ran.result.expect("json");
    let value: serde_json::Value = serde_json::from_str(&ran.out).expect("JSON");
    assert_eq!(value[1]["namespace"], "kube-system");
}

// ---- the binary --------------------------------------------------------------

fn periscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_periscope"))
        .args(args)
        .env_remove("PERISCOPE_SERVER")
        .env_remove("HUBBLE_SERVER")
        .output()
        .expect("runs the binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[test]
fn binary_observe_ok() {
    let server = start(Fake {
        responses: canned(),
        ..Fake::default()
    })
    .to_string();
    let output = periscope(&["observe", "--server", &server, "--last", "2"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(text(&output.stdout), format!("{LINE_0}\n{LINE_1}\n"));
    assert_eq!(text(&output.stderr), format!("{NODE_NOTICE}\n"));
}

#[test]
fn binary_server_from_environment() {
    let server = start(Fake::default()).to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_periscope"))
        .args(["list", "namespaces"])
        .env_remove("PERISCOPE_SERVER")
        .env("HUBBLE_SERVER", &server)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    let output = Command::new(env!("CARGO_BIN_EXE_periscope"))
        .args(["list", "namespaces"])
        .env("PERISCOPE_SERVER", &server)
        .env("HUBBLE_SERVER", dead_address().to_string())
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn binary_invalid_argument_exits_non_zero() {
    let server = start(Fake {
        error: Some((tonic::Code::InvalidArgument, "bad filter")),
        ..Fake::default()
    })
    .to_string();
    let output = periscope(&["observe", "--server", &server]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "rpc error: code = InvalidArgument desc = bad filter\n"
    );
    assert_eq!(text(&output.stdout), "");
}

#[test]
fn binary_unreachable_exits_non_zero() {
    let server = dead_address().to_string();
    let output = periscope(&["status", "--server", &server]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!("cannot connect to {server}: connection refused\n")
    );
}

#[test]
fn binary_usage_errors() {
    let output = periscope(&["observe", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--no-such-flag"));
    let output = periscope(&["observe", "--first", "3", "--follow", "--print-raw-filters"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "cannot set both --first and --follow\n"
    );
}

#[test]
fn binary_help_documents_everything() {
    let output = periscope(&["observe", "--help"]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    for flag in periscope_cli::filter::FILTER_FLAGS {
        assert!(
            help.contains(&format!("--{flag}")),
            "--{flag} missing from help"
        );
    }
    for flag in [
        "--last",
        "--first",
        "--all",
        "--follow",
        "--since",
        "--until",
        "--output",
        "--time-format",
        "--print-node-name",
        "--numeric",
        "--ip-translation",
        "--print-raw-filters",
        "--allowlist",
        "--denylist",
        "--experimental-field-mask",
        "--server",
        "--timeout",
        "--debug",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
    for command in [
        &["--help"][..],
        &["status", "--help"],
        &["list", "nodes", "--help"],
    ] {
        let output = periscope(command);
        assert!(output.status.success(), "{command:?}");
    }
    let top = text(&periscope(&["--help"]).stdout);
    for command in ["observe", "status", "list"] {
        assert!(top.contains(command), "{command} missing");
    }
}

#[test]
fn relative_since_is_anchored_at_now() {
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let request =
        flows_request_from_args(["periscope", "observe", "--since", "1h"], SystemTime::now())
            .expect("builds");
    let since = request.since.expect("since").seconds;
    assert!((before - 3600 - since).abs() <= 2, "{since} vs {before}");
}

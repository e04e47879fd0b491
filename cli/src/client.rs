//! Talking to the server: connecting, and the `observe`, `status` and `list`
//! commands.

use std::future::Future;
use std::io::Write;
use std::time::{Duration, SystemTime};

use periscope_proto::observer::observer_client::ObserverClient;
use periscope_proto::observer::{
    GetFlowsRequest, GetNamespacesRequest, GetNodesRequest, ServerStatusRequest,
};
use periscope_proto::relay::NodeState;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::args::{GlobalArgs, ListArgs, ListOutput, ObserveArgs};
use crate::printer::{Printer, tabulate};
use crate::request::flows_request;
use crate::time::go_duration_string;
use crate::{CliError, RpcError};

/// Health service name the hubble CLI checks before `status`.
pub const OBSERVER_HEALTH_SERVICE: &str = "hubble.server.Observer";

/// The URI tonic dials for a `--server` value: `https://` with TLS (`--tls`, a
/// `tls://` or `https://` prefix), `http://` (h2c) otherwise.
pub fn server_uri(server: &str, tls: bool) -> Result<String, CliError> {
    if server.starts_with("unix://") || server.starts_with("unix:") {
        return Err(CliError::Invalid(format!(
            "unix socket servers are not supported yet: {server}"
        )));
    }
    for prefix in ["tls://", "https://"] {
        if let Some(address) = server.strip_prefix(prefix) {
            return Ok(format!("https://{address}"));
        }
    }
    let address = server.strip_prefix("http://").unwrap_or(server);
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{address}"))
}

/// Whether any flag asks for TLS.
fn wants_tls(global: &GlobalArgs) -> bool {
    global.tls
        || !global.tls_ca_cert_files.is_empty()
        || global.tls_client_cert_file.is_some()
        || global.tls_client_key_file.is_some()
        || global.tls_server_name.is_some()
}

fn read_flag_file(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::Tls(format!("{flag} {}: {e}", path.display())))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(CliError::Tls(format!(
            "{flag} {}: no PEM item in the file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The TLS configuration of the `--tls*` flags for a server whose host is `host`.
pub fn tls_config(global: &GlobalArgs, host: &str) -> Result<ClientTlsConfig, CliError> {
    let name = global.tls_server_name.clone().unwrap_or_else(|| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    let mut config = ClientTlsConfig::new().domain_name(name);
    if global.tls_ca_cert_files.is_empty() {
        config = config.with_native_roots();
    }
    for ca in &global.tls_ca_cert_files {
        config = config.ca_certificate(Certificate::from_pem(read_flag_file(
            "--tls-ca-cert-files",
            ca,
        )?));
    }
    match (&global.tls_client_cert_file, &global.tls_client_key_file) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read_flag_file("--tls-client-cert-file", cert)?,
                read_flag_file("--tls-client-key-file", key)?,
            ));
        }
        (Some(_), None) => {
            return Err(CliError::Tls(
                "--tls-client-cert-file needs --tls-client-key-file".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(CliError::Tls(
                "--tls-client-key-file needs --tls-client-cert-file".into(),
            ));
        }
    }
    Ok(config)
}

/// Opens the HTTP/2 channel (h2c, or TLS per the `--tls*` flags), failing after
/// `--timeout`.
pub async fn connect(global: &GlobalArgs) -> Result<Channel, CliError> {
    let target = global.server_address();
    let uri = server_uri(&target, wants_tls(global))?;
    let mut endpoint = Endpoint::from_shared(uri.clone()).map_err(|e| CliError::Connect {
        target: target.clone(),
        reason: format!("invalid address: {e}"),
    })?;
    if uri.starts_with("https://") {
        let host = endpoint.uri().host().unwrap_or_default().to_owned();
        endpoint = endpoint
            .tls_config(tls_config(global, &host)?)
            .map_err(|e| CliError::Tls(format!("TLS configuration: {}", connect_reason(&e))))?;
    }
    let endpoint = endpoint.connect_timeout(global.timeout);
    match tokio::time::timeout(global.timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(CliError::Connect {
            target,
            reason: connect_reason(&e),
        }),
        Err(_) => Err(CliError::Connect {
            target,
            reason: format!("timed out after {}", duration_text(global.timeout)),
        }),
    }
}

fn duration_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        go_duration_string(d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The innermost useful cause of a dial error, in lower case like Go's
/// (`connection refused`, `failed to lookup address information: ...`).
fn connect_reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut last = error.to_string();
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
                std::io::ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
                _ => io.to_string(),
            };
        }
        last = e.to_string();
        current = e.source();
    }
    last
}

/// Runs a unary call with the `--request-timeout` deadline.
async fn unary<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "context deadline exceeded",
        )),
    }
}

/// `observe`: builds the request, then streams and prints flows until the
/// stream ends, fails, or `shutdown` completes (Ctrl-C).
pub async fn observe(
    global: &GlobalArgs,
    args: &ObserveArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CliError> {
    args.check().map_err(CliError::Invalid)?;
    let request = flows_request(&args.query(), SystemTime::now())?;
    if args.print_raw_filters {
        out.write_all(raw_filters_yaml(&request)?.as_bytes())?;
        return Ok(());
    }

    let channel = connect(global).await?;
    let mut client = ObserverClient::new(channel);
    let mut printer = Printer::new(args.print_options(global.debug));
    let follow = request.follow;
    let result = {
        let stream = async {
            let mut stream = client
                .get_flows(request)
                .await
                .map_err(RpcError::observe)?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        printer.write_response(&response, out, err)?;
                        if follow {
                            out.flush()?;
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(status) if status.code() == tonic::Code::Cancelled => return Ok(()),
                    Err(status) => return Err(RpcError::observe(status).into()),
                }
            }
        };
        tokio::select! {
            result = stream => result,
            () = shutdown => Ok(()),
        }
    };
    // The table is printed even when the stream failed, like hubble's deferred Close.
    printer.finish(out)?;
    result
}

/// The `--print-raw-filters` text: YAML (as hubble's yaml.v2 writes it) with
/// each filter as one protobuf-JSON string.
pub fn raw_filters_yaml(request: &GetFlowsRequest) -> Result<String, CliError> {
    let mut text = String::new();
    for (key, filters) in [
        ("allowlist", &request.whitelist),
        ("denylist", &request.blacklist),
    ] {
        if filters.is_empty() {
            continue;
        }
        text.push_str(key);
        text.push_str(":\n");
        for filter in filters {
            let json = serde_json::to_string(filter)
                .map_err(|e| CliError::Invalid(format!("encoding filter: {e}")))?;
            text.push_str(&format!("- '{}'\n", json.replace('\'', "''")));
        }
    }
    if text.is_empty() {
        text.push_str("{}\n");
    }
    Ok(text)
}

/// `status`: health check, then ServerStatus.
pub async fn status(global: &GlobalArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let target = global.server_address();
    let channel = connect(global).await?;
    let mut health = HealthClient::new(channel.clone());
    let check = HealthCheckRequest {
        service: OBSERVER_HEALTH_SERVICE.to_owned(),
    };
    let response = unary(global.request_timeout, health.check(check))
        .await
        .map_err(|s| RpcError::new("failed getting status: ", s))?;
    if response.status != ServingStatus::Serving as i32 {
        let state = ServingStatus::try_from(response.status).map_or_else(
            |_| response.status.to_string(),
            |s| s.as_str_name().to_owned(),
        );
        writeln!(out, "Healthcheck (via {target}): Unavailable: {state}")?;
        return Err(CliError::NotHealthy);
    }
    writeln!(out, "Healthcheck (via {target}): Ok")?;

    let mut client = ObserverClient::new(channel);
    let status = unary(
        global.request_timeout,
        client.server_status(ServerStatusRequest {}),
    )
    .await
    .map_err(|s| RpcError::new("failed to get hubble server status: ", s))?;
    let ratio = if status.max_flows > 0 {
        format!(
            " ({:.2}%)",
            status.num_flows as f64 / status.max_flows as f64 * 100.0
        )
    } else {
        String::new()
    };
    writeln!(
        out,
        "Current/Max Flows: {}/{}{ratio}",
        thousands(status.num_flows),
        thousands(status.max_flows)
    )?;
    let uptime = status.uptime_ns as f64 / 1e9;
    let rate = if uptime > 0.0 {
        format!("{:.2}", status.seen_flows as f64 / uptime)
    } else {
        "N/A".to_owned()
    };
    writeln!(out, "Flows/s: {rate}")?;
    if let Some(connected) = status.num_connected_nodes {
        let total = status
            .num_unavailable_nodes
            .map(|u| format!("/{}", u64::from(u) + u64::from(connected)))
            .unwrap_or_default();
        writeln!(out, "Connected Nodes: {connected}{total}")?;
    }
    if let Some(unavailable) = status.num_unavailable_nodes.filter(|&u| u > 0) {
        let mut names = status.unavailable_nodes.clone();
        if names.is_empty() {
            writeln!(out, "Unavailable Nodes: {unavailable}")?;
        } else {
            names.sort();
            if unavailable as usize > names.len() {
                names.push(format!(
                    "and {} more...",
                    unavailable as usize - names.len()
                ));
            }
            writeln!(
                out,
                "Unavailable Nodes: {unavailable}\n  - {}",
                names.join("\n  - ")
            )?;
        }
    }
    Ok(())
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `list nodes`: GetNodes, sorted by name.
pub async fn list_nodes(
    global: &GlobalArgs,
    args: &ListArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut client = ObserverClient::new(connect(global).await?);
    let mut nodes = unary(global.request_timeout, client.get_nodes(GetNodesRequest {}))
        .await
        .map_err(|s| RpcError::new("", s))?
        .nodes;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    if args.output == ListOutput::Json {
        return write_json_array(&nodes, out);
    }
    let wide = args.output == ListOutput::Wide;
    let mut header: Vec<String> = ["NAME", "STATUS", "AGE", "FLOWS/S", "CURRENT/MAX-FLOWS"]
        .map(str::to_owned)
        .to_vec();
    if wide {
        header.extend(["VERSION", "ADDRESS", "TLS"].map(str::to_owned));
    }
    let mut rows = vec![header];
    for node in &nodes {
        let uptime = node.uptime_ns.saturating_add(500_000_000) / 1_000_000_000;
        let (age, rate) = if uptime > 0 {
            (
                go_duration_string(uptime),
                format!("{:.2}", node.seen_flows as f64 / uptime as f64),
            )
        } else {
            ("N/A".to_owned(), "N/A".to_owned())
        };
        let flows = if node.max_flows > 0 {
            format!(
                "{}/{} ({:6.2}%)",
                node.num_flows,
                node.max_flows,
                node.num_flows as f64 / node.max_flows as f64 * 100.0
            )
        } else {
            "N/A".to_owned()
        };
        let state = match NodeState::try_from(node.state) {
            Ok(NodeState::NodeConnected) => "Connected",
            Ok(NodeState::NodeUnavailable) => "Unavailable",
            Ok(NodeState::NodeGone) => "Gone",
            Ok(NodeState::NodeError) => "Error",
            _ => "Unknown",
        };
        let mut row = vec![node.name.clone(), state.to_owned(), age, rate, flows];
        if wide {
            let version = if node.version.is_empty() {
                "N/A".to_owned()
            } else {
                node.version.clone()
            };
            let tls = match &node.tls {
                None => "N/A",
                Some(tls) if tls.enabled => "Enabled",
                Some(_) => "Disabled",
            };
            row.extend([version, node.address.clone(), tls.to_owned()]);
        }
        rows.push(row);
    }
    out.write_all(tabulate(&rows).as_bytes())?;
    Ok(())
}

/// `list namespaces`: GetNamespaces, in server order.
pub async fn list_namespaces(
    global: &GlobalArgs,
    args: &ListArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut client = ObserverClient::new(connect(global).await?);
    let namespaces = unary(
        global.request_timeout,
        client.get_namespaces(GetNamespacesRequest {}),
    )
    .await
    .map_err(|s| RpcError::new("", s))?
    .namespaces;
    if args.output == ListOutput::Json {
        return write_json_array(&namespaces, out);
    }
    let wide = args.output == ListOutput::Wide;
    let mut rows = vec![if wide {
        vec!["NAMESPACE".to_owned(), "CLUSTER".to_owned()]
    } else {
        vec!["NAMESPACE".to_owned()]
    }];
    for ns in namespaces {
        let mut row = vec![ns.namespace];
        if wide && !ns.cluster.is_empty() {
            row.push(ns.cluster);
        }
        rows.push(row);
    }
    out.write_all(tabulate(&rows).as_bytes())?;
    Ok(())
}

fn write_json_array<T: serde::Serialize>(items: &[T], out: &mut dyn Write) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(items)
        .map_err(|e| CliError::Invalid(format!("encoding JSON: {e}")))?;
    writeln!(out, "{text}")?;
    Ok(())
}

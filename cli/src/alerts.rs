//! `periscope alerts`: the relay's alerts, read from its HTTP API (`GET /api/v1/alerts`).
use std::io::{Read, Write};
use std::time::Duration;

use crate::CliError;
use crate::args::AlertsArgs;

/// GETs `path` from `addr` (HTTP/1.1, no keep-alive) and returns the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> Result<String, CliError> {
    let connect_err = |e: std::io::Error| CliError::Connect {
        target: addr.to_string(),
        reason: e.to_string(),
    };
    let sock: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| CliError::Invalid(format!("--api {addr:?}: no address")))?;
    let mut s =
        std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(connect_err)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| CliError::Invalid(format!("{addr}: not an HTTP answer")))?;
    let status = head.lines().next().unwrap_or_default();
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    if !status.contains(" 200 ") {
        return Err(CliError::Invalid(format!(
            "{addr}{path}: {status}: {}",
            body.trim()
        )));
    }
    Ok(body)
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs `alerts`.
pub async fn alerts(args: &AlertsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if !matches!(args.output.as_str(), "table" | "json") {
        return Err(CliError::Invalid(format!(
            "-o {:?}: expected table or json",
            args.output
        )));
    }
    let (addr, path) = (
        args.api.clone(),
        format!("/api/v1/alerts?state={}", args.state),
    );
    let body = tokio::task::spawn_blocking(move || http_get(&addr, &path))
        .await
        .map_err(|e| CliError::Invalid(e.to_string()))??;
    let alerts: Vec<serde_json::Value> = serde_json::from_str(&body)
        .map_err(|e| CliError::Invalid(format!("{}: unreadable alerts: {e}", args.api)))?;
    if args.output == "json" {
        for a in &alerts {
            writeln!(out, "{a}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<9} {:<9} {:<24} {:>6} {:<26} GROUP",
        "STATE", "SEVERITY", "ALERT", "COUNT", "SINCE"
    )?;
    for a in &alerts {
        let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
        let group = a["group"]
            .as_object()
            .map(|g| {
                g.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let since = a["starts_at"]
            .as_str()
            .or_else(|| a["active_at"].as_str())
            .unwrap_or("");
        writeln!(
            out,
            "{:<9} {:<9} {:<24} {:>6} {:<26} {group}",
            s("state"),
            s("severity"),
            s("rule"),
            a["count"].as_u64().unwrap_or(0),
            since
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(dechunk("zz\r\n"), "");
    }
}

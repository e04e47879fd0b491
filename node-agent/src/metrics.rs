//! Prometheus metrics with Hubble's names and labels, served as text on `/metrics`.
//!
//! Counted by the pipeline for every flow (one writer, so a mutex is uncontended):
//! `hubble_flows_processed_total{type,subtype,verdict,protocol}`, `hubble_drop_total{reason,protocol}`,
//! `hubble_policy_verdicts_total{direction,match,action}`, `hubble_tcp_flags_total{flag,family}`,
//! `hubble_port_distribution_total{port,protocol}`, `hubble_lost_events_total{source}`, and
//! `hubble_dns_queries_total` / `hubble_dns_responses_total` when DNS flows are seen.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use periscope_proto::flow::{self, Flow, layer4::Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Families {
    counters: BTreeMap<&'static str, BTreeMap<Labels, u64>>,
}

/// The metric registry.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Families>>,
}

const HELP: &[(&str, &str)] = &[
    (
        "hubble_flows_processed_total",
        "Total number of flows processed",
    ),
    ("hubble_drop_total", "Number of drops"),
    ("hubble_policy_verdicts_total", "Number of policy verdicts"),
    ("hubble_tcp_flags_total", "TCP flag occurrences"),
    (
        "hubble_port_distribution_total",
        "Numbers of packets distributed by destination port",
    ),
    ("hubble_lost_events_total", "Number of lost events"),
    ("hubble_dns_queries_total", "Number of DNS queries observed"),
    (
        "hubble_dns_responses_total",
        "Number of DNS responses observed",
    ),
];

fn protocol(f: &Flow) -> &'static str {
    match f.l4.as_ref().and_then(|l| l.protocol) {
        Some(Protocol::Tcp(_)) => "TCP",
        Some(Protocol::Udp(_)) => "UDP",
        Some(Protocol::IcmPv4(_)) => "ICMPv4",
        Some(Protocol::IcmPv6(_)) => "ICMPv6",
        Some(Protocol::Sctp(_)) => "SCTP",
        None => "",
    }
}

fn event_type_name(t: i32) -> &'static str {
    match t {
        1 => "Drop",
        4 => "Trace",
        5 => "PolicyVerdict",
        129 => "L7",
        _ => "Unknown",
    }
}

fn match_name(m: u32) -> &'static str {
    match m {
        1 => "l3-only",
        2 => "l3-l4",
        3 => "l4-only",
        4 => "all",
        5 => "l3-proto",
        6 => "proto-only",
        _ => "none",
    }
}

impl Metrics {
    fn inc(&self, fams: &mut Families, name: &'static str, labels: Labels, by: u64) {
        *fams
            .counters
            .entry(name)
            .or_default()
            .entry(labels)
            .or_default() += by;
    }

    /// Counts one flow.
    pub fn observe(&self, f: &Flow) {
        let mut fams = self.inner.lock().expect("metrics lock");
        let et = f.event_type.unwrap_or_default();
        let verdict = flow::Verdict::try_from(f.verdict)
            .map(|v| v.as_str_name())
            .unwrap_or("VERDICT_UNKNOWN");
        let proto = protocol(f);
        let subtype = match et.r#type {
            4 => match et.sub_type {
                0 => "to-endpoint",
                5 => "from-endpoint",
                _ => "other",
            }
            .to_string(),
            _ => String::new(),
        };
        self.inc(
            &mut fams,
            "hubble_flows_processed_total",
            vec![
                ("protocol", proto.into()),
                ("subtype", subtype),
                ("type", event_type_name(et.r#type).into()),
                ("verdict", verdict.into()),
            ],
            1,
        );
        if f.verdict == flow::Verdict::Dropped as i32 && et.r#type == 1 {
            let reason = flow::DropReason::try_from(f.drop_reason_desc)
                .map(|r| r.as_str_name().to_string())
                .unwrap_or_else(|_| f.drop_reason_desc.to_string());
            self.inc(
                &mut fams,
                "hubble_drop_total",
                vec![("protocol", proto.into()), ("reason", reason)],
                1,
            );
        }
        if et.r#type == 5 {
            let direction = match f.traffic_direction {
                1 => "ingress",
                2 => "egress",
                _ => "unknown",
            };
            self.inc(
                &mut fams,
                "hubble_policy_verdicts_total",
                vec![
                    ("action", verdict.to_ascii_lowercase()),
                    ("direction", direction.into()),
                    ("match", match_name(f.policy_match_type).into()),
                ],
                1,
            );
        }
        if let Some(Protocol::Tcp(t)) = f.l4.as_ref().and_then(|l| l.protocol)
            && let Some(fl) = t.flags
        {
            let family = match f.ip.as_ref().map(|i| i.ip_version) {
                Some(2) => "IPv6",
                _ => "IPv4",
            };
            let mut names = Vec::new();
            if fl.syn && fl.ack {
                names.push("SYN-ACK");
            } else if fl.syn {
                names.push("SYN");
            }
            if fl.fin {
                names.push("FIN");
            }
            if fl.rst {
                names.push("RST");
            }
            for n in names {
                self.inc(
                    &mut fams,
                    "hubble_tcp_flags_total",
                    vec![("family", family.into()), ("flag", n.into())],
                    1,
                );
            }
        }
        if et.r#type == 4
            && f.verdict == flow::Verdict::Forwarded as i32
            && f.is_reply == Some(false)
        {
            let port = match f.l4.as_ref().and_then(|l| l.protocol) {
                Some(Protocol::Tcp(t)) => t.destination_port,
                Some(Protocol::Udp(u)) => u.destination_port,
                Some(Protocol::Sctp(s)) => s.destination_port,
                _ => 0,
            };
            if port != 0 {
                self.inc(
                    &mut fams,
                    "hubble_port_distribution_total",
                    vec![("port", port.to_string()), ("protocol", proto.into())],
                    1,
                );
            }
        }
        if let Some(flow::layer7::Record::Dns(d)) = f.l7.as_ref().and_then(|l| l.record.as_ref()) {
            let name = if f.l7.as_ref().map(|l| l.r#type) == Some(flow::L7FlowType::Request as i32)
            {
                "hubble_dns_queries_total"
            } else {
                "hubble_dns_responses_total"
            };
            self.inc(&mut fams, name, vec![("rcode", d.rcode.to_string())], 1);
        }
    }

    /// Counts lost events of a source (`LostEventSource` enum value).
    pub fn lost(&self, source: i32, n: u64) {
        let name = flow::LostEventSource::try_from(source)
            .map(|s| s.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| source.to_string());
        let mut fams = self.inner.lock().expect("metrics lock");
        self.inc(
            &mut fams,
            "hubble_lost_events_total",
            vec![("source", name)],
            n,
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let fams = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        for (name, help) in HELP {
            let series = fams.counters.get(name);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in series.into_iter().flatten() {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| {
                        format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                    })
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {v}", l.join(","));
            }
        }
        // Log events shipped to ClickHouse (--log-clickhouse-url), when on.
        out.push_str(&periscope_logging::prometheus());
        out
    }

    /// Serves `GET /metrics` on `listener` (a minimal HTTP/1.1 responder, one request per
    /// connection), and, with `log`, `GET`/`PUT /log-level`: the log filter in force, changed
    /// by a PUT (or POST) whose body is the new filter
    /// ([`periscope_logging::http_log_level`]).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        log: Option<periscope_logging::LogHandle>,
    ) {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let m = self.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                let head_end = loop {
                    let Ok(Ok(r)) = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        sock.read(&mut buf[n..]),
                    )
                    .await
                    else {
                        return;
                    };
                    if r == 0 {
                        return;
                    }
                    n += r;
                    if let Some(p) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                        break p;
                    }
                    if n == buf.len() {
                        return;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let method = head.split_whitespace().next().unwrap_or("");
                let (status, ctype, body) = if head.starts_with("GET ")
                    && (path == "/metrics" || path.starts_with("/metrics?"))
                {
                    ("200 OK", "text/plain; version=0.0.4", m.render())
                } else if let Some(log) = log.as_ref().filter(|_| path == "/log-level") {
                    // The body: what came after the head, then the rest of Content-Length.
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0)
                        .min(4096);
                    let mut body = buf[head_end + 4..n].to_vec();
                    while body.len() < length {
                        let mut more = [0u8; 1024];
                        match tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            sock.read(&mut more),
                        )
                        .await
                        {
                            Ok(Ok(r)) if r > 0 => body.extend_from_slice(&more[..r]),
                            _ => return,
                        }
                    }
                    body.truncate(length);
                    let (code, text) = periscope_logging::http_log_level(
                        log,
                        method,
                        &String::from_utf8_lossy(&body),
                    );
                    let status = match code {
                        200 => "200 OK",
                        400 => "400 Bad Request",
                        _ => "405 Method Not Allowed",
                    };
                    (status, "text/plain", text)
                } else {
                    (
                        "404 Not Found",
                        "text/plain",
                        "not found: try /metrics\n".to_string(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_proto::flow::{CiliumEventType, Layer4, Tcp, TcpFlags};

    #[test]
    fn counts_with_hubble_names_and_labels() {
        let m = Metrics::default();
        let drop = Flow {
            verdict: flow::Verdict::Dropped as i32,
            drop_reason_desc: flow::DropReason::PolicyDenied as i32,
            event_type: Some(CiliumEventType {
                r#type: 1,
                sub_type: 133,
            }),
            l4: Some(Layer4 {
                protocol: Some(Protocol::Tcp(Tcp {
                    source_port: 1,
                    destination_port: 80,
                    flags: Some(TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            }),
            ..Default::default()
        };
        m.observe(&drop);
        m.observe(&drop);
        let pv = Flow {
            verdict: flow::Verdict::Forwarded as i32,
            event_type: Some(CiliumEventType {
                r#type: 5,
                sub_type: 0,
            }),
            traffic_direction: 1,
            policy_match_type: 2,
            ..Default::default()
        };
        m.observe(&pv);
        m.lost(flow::LostEventSource::PerfEventRingBuffer as i32, 7);
        let text = m.render();
        assert!(
            text.contains("hubble_drop_total{protocol=\"TCP\",reason=\"POLICY_DENIED\"} 2"),
            "{text}"
        );
        assert!(text.contains("hubble_flows_processed_total{protocol=\"TCP\",subtype=\"\",type=\"Drop\",verdict=\"DROPPED\"} 2"), "{text}");
        assert!(text.contains("hubble_policy_verdicts_total{action=\"forwarded\",direction=\"ingress\",match=\"l3-l4\"} 1"), "{text}");
        assert!(
            text.contains("hubble_tcp_flags_total{family=\"IPv4\",flag=\"SYN\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 7"),
            "{text}"
        );
        assert!(text.contains("# TYPE hubble_port_distribution_total counter"));
    }
}

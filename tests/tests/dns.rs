//! DNS visibility end to end: a pod resolves names through a DNS server pod (real UDP DNS
//! messages), the datapath captures the DNS packets, and the agent names later flows from the
//! answers. Checked through the flow log and through GetFlows with FQDN filters, and in the
//! Prometheus metrics. Needs root (`cargo xtask test`).
use std::net::IpAddr;
use std::time::Duration;

use periscope_proto::flow::{FlowFilter, L7FlowType, Verdict, layer7::Record};
use periscope_proto::observer::GetFlowsRequest;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_testbed::agent::Agent;
use periscope_testbed::dns::{self, DnsServer, Zone};
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions, http_get};

const TOPO: &str = r#"
cluster: dns
nodes: [{name: n1}]
pods:
  - {name: client, namespace: shop, node: n1, labels: {app: client}, ips: [10.214.0.1, "fd00:214::1"]}
  - {name: coredns, namespace: kube-system, node: n1, labels: {k8s-app: kube-dns}, ips: [10.214.0.53, "fd00:214::53"]}
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.214.0.80, "fd00:214::80"]}
  - {name: partner, node: n1, external: true, ips: [192.0.2.44]}
"#;

/// The client may reach DNS, web and the partner API; web may not be reached on 9999.
const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns, k8s:io.kubernetes.pod.namespace: kube-system}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - toCIDR: [192.0.2.44/32]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;

const T: Duration = Duration::from_millis(500);

#[test]
fn flows_are_named_from_observed_dns_answers() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let (client, coredns, web, partner) = (
        tb.pod("shop/client"),
        tb.pod("kube-system/coredns"),
        tb.pod("shop/web"),
        tb.pod("partner"),
    );
    // Default aggregation (medium): DNS messages are reported whatever the level.
    let agent = Agent::start(&tb, "n1", POLICY, &[]);
    let web_v4: IpAddr = "10.214.0.80".parse().unwrap();
    let web_v6: IpAddr = "fd00:214::80".parse().unwrap();
    let zone = Zone::new()
        .addr("web.shop.svc.cluster.local", &[web_v4, web_v6])
        .addr("edge.partner-cdn.net", &["192.0.2.44".parse().unwrap()])
        .cname("api.partner.example", "edge.partner-cdn.net");
    let server = DnsServer::start(coredns, 53, zone, 30).expect("DNS server");
    let _web = TcpEchoServer::start(web, 80);
    let _partner = TcpEchoServer::start(partner, 443);

    // Before any lookup, flows to web carry no names.
    assert!(traffic::tcp_probe(client, web.v4(80), T).is_echoed());
    let resolved = dns::resolve(
        client,
        coredns.v4(53),
        "web.shop.svc.cluster.local",
        dns::TYPE_A,
        T,
    )
    .expect("resolve web");
    assert_eq!(resolved, (0, vec![web_v4]));
    let resolved6 = dns::resolve(
        client,
        coredns.v6(53),
        "web.shop.svc.cluster.local",
        dns::TYPE_AAAA,
        T,
    )
    .expect("resolve web AAAA");
    assert_eq!(resolved6, (0, vec![web_v6]));
    let partner_ips = dns::resolve(
        client,
        coredns.v4(53),
        "api.partner.example",
        dns::TYPE_A,
        T,
    )
    .expect("resolve partner");
    assert_eq!(partner_ips.1, vec!["192.0.2.44".parse::<IpAddr>().unwrap()]);
    let nx = dns::resolve(client, coredns.v4(53), "nope.example", dns::TYPE_A, T).unwrap();
    assert_eq!(nx, (3, vec![]));
    // (The server counts an answer after sending it: wait for its count.)
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while server.answered() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.answered(), 4);
    // The answer and a connection right after it may be read from different CPUs' rings in
    // different reader batches; a moment between them keeps the test about naming, not about
    // that race (documented in node-agent/src/dns.rs).
    std::thread::sleep(Duration::from_millis(100));

    // After the lookups, new connections are named.
    assert!(traffic::tcp_probe(client, web.v4(80), T).is_echoed());
    assert!(traffic::tcp_probe(client, web.v6(80), T).is_echoed());
    assert!(traffic::tcp_probe(client, partner.v4(443), T).is_echoed());
    // A denied connection to a named address is named too.
    assert!(!traffic::tcp_probe(client, web.v4(9999), T).is_echoed());

    let flows = agent.wait_flows(Duration::from_secs(5), "named flows", |fl| {
        fl.iter()
            .filter(|f| !f.destination_names.is_empty() && f.verdict == Verdict::Dropped as i32)
            .count()
            >= 1
            && fl.iter().any(|f| {
                f.destination_names
                    .contains(&"api.partner.example".to_string())
            })
    });

    let tcp_dport = |f: &periscope_proto::flow::Flow| match f.l4.as_ref().and_then(|l| l.protocol) {
        Some(periscope_proto::flow::layer4::Protocol::Tcp(t)) => t.destination_port,
        _ => 0,
    };
    // The DNS messages themselves carry an L7 DNS record.
    let dns_records: Vec<_> = flows
        .iter()
        .filter_map(|f| match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(Record::Dns(d)) => Some((f, f.l7.as_ref().unwrap().r#type, d)),
            _ => None,
        })
        .collect();
    let answer = dns_records
        .iter()
        .find(|(_, t, d)| {
            *t == L7FlowType::Response as i32
                && d.query == "web.shop.svc.cluster.local."
                && d.qtypes == ["A"]
        })
        .expect("the DNS answer for web as an L7 record");
    assert_eq!(answer.2.ips, vec![web_v4.to_string()]);
    assert_eq!(answer.2.ttl, 30);
    assert_eq!(answer.2.rcode, 0);
    assert_eq!(answer.0.source.as_ref().unwrap().pod_name, "coredns");
    assert_eq!(
        answer.0.summary,
        "DNS Answer \"10.214.0.80\" TTL: 30 (Datapath web.shop.svc.cluster.local. A)"
    );
    assert!(
        dns_records
            .iter()
            .any(|(f, t, d)| *t == L7FlowType::Request as i32
                && d.query == "api.partner.example."
                && f.source.as_ref().unwrap().pod_name == "client")
    );
    let cname = dns_records
        .iter()
        .find(|(_, t, d)| *t == L7FlowType::Response as i32 && d.query == "api.partner.example.")
        .expect("partner answer");
    assert_eq!(cname.2.cnames, vec!["edge.partner-cdn.net."]);
    assert!(
        dns_records
            .iter()
            .any(|(_, t, d)| *t == L7FlowType::Response as i32
                && d.query == "nope.example."
                && d.rcode == 3)
    );

    // Connections before the lookup are unnamed; after it, named (IPv4 and IPv6).
    let to_web: Vec<_> = flows
        .iter()
        .filter(|f| tcp_dport(f) == 80 && f.is_reply == Some(false))
        .collect();
    assert!(
        to_web.iter().any(|f| f.destination_names.is_empty()),
        "the first connection"
    );
    for ip in [web_v4, web_v6] {
        let named = to_web
            .iter()
            .find(|f| {
                f.ip.as_ref().unwrap().destination == ip.to_string()
                    && !f.destination_names.is_empty()
            })
            .unwrap_or_else(|| panic!("a named flow to {ip}"));
        assert_eq!(named.destination_names, vec!["web.shop.svc.cluster.local"]);
    }
    // The world address is named by the question and the CNAME target.
    let to_partner = flows
        .iter()
        .find(|f| tcp_dport(f) == 443 && f.is_reply == Some(false))
        .expect("flow to the partner");
    assert_eq!(
        to_partner.destination_names,
        vec!["api.partner.example", "edge.partner-cdn.net"]
    );
    // Replies name their source.
    assert!(
        flows
            .iter()
            .any(|f| f.is_reply == Some(true) && f.source_names == ["web.shop.svc.cluster.local"])
    );
    let denied = flows
        .iter()
        .find(|f| tcp_dport(f) == 9999 && f.verdict == Verdict::Dropped as i32)
        .expect("denied flow");
    assert_eq!(denied.destination_names, vec!["web.shop.svc.cluster.local"]);

    // GetFlows with FQDN filters, as `periscope observe --to-fqdn` sends them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ObserverClient::connect(format!("http://{}", agent.api_address()))
            .await
            .expect("connect");
        let get = |filter: FlowFilter| {
            let mut c = c.clone();
            async move {
                let mut s = c
                    .get_flows(GetFlowsRequest {
                        number: 1000,
                        whitelist: vec![filter],
                        ..Default::default()
                    })
                    .await
                    .expect("GetFlows")
                    .into_inner();
                let mut out = Vec::new();
                while let Some(r) = s.message().await.expect("stream") {
                    if let Some(ResponseTypes::Flow(f)) = r.response_types {
                        out.push(f);
                    }
                }
                out
            }
        };
        let by_name = get(FlowFilter {
            destination_fqdn: vec!["web.shop.svc.cluster.local".into()],
            ..Default::default()
        })
        .await;
        assert!(by_name.len() >= 3, "{by_name:?}");
        assert!(
            by_name
                .iter()
                .all(|f| f.destination_names == ["web.shop.svc.cluster.local"])
        );
        let wildcard = get(FlowFilter {
            destination_fqdn: vec!["*.partner.example".into()],
            ..Default::default()
        })
        .await;
        assert!(!wildcard.is_empty());
        assert!(wildcard.iter().all(|f| tcp_dport(f) == 443));
        let queries = get(FlowFilter {
            dns_query: vec!["partner".into()],
            ..Default::default()
        })
        .await;
        assert!(queries.len() >= 2, "query and answer: {queries:?}");
        let _ = c
            .server_status(periscope_proto::observer::ServerStatusRequest {})
            .await;
    });

    // DNS metrics.
    let text = http_get(&agent.metrics_address(), "/metrics");
    assert!(
        text.contains("hubble_dns_queries_total{rcode=\"0\"}"),
        "{text}"
    );
    assert!(
        text.contains("hubble_dns_responses_total{rcode=\"3\"}"),
        "{text}"
    );
}

#[test]
fn dns_visibility_can_be_turned_off() {
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let (client, coredns) = (tb.pod("shop/client"), tb.pod("kube-system/coredns"));
    let agent = Agent::start(&tb, "n1", POLICY, &["--dns-visibility=false"]);
    let zone = Zone::new().addr(
        "web.shop.svc.cluster.local",
        &["10.214.0.80".parse().unwrap()],
    );
    let _server = DnsServer::start(coredns, 53, zone, 30).expect("DNS server");
    dns::resolve(
        client,
        coredns.v4(53),
        "web.shop.svc.cluster.local",
        dns::TYPE_A,
        T,
    )
    .unwrap();
    let flows = agent.wait_flows(Duration::from_secs(5), "the DNS flows", |fl| {
        fl.iter().filter(|f| f.is_reply == Some(true)).count() >= 1
    });
    assert!(
        flows
            .iter()
            .all(|f| f.l7.is_none() && f.destination_names.is_empty())
    );
}

//! The agent's hot path per event: decode a raw datapath event into a Hubble flow (enriched from
//! the agent's state), name it from the DNS cache, apply a request filter, and insert into the
//! ring buffer. Run with `cargo xtask bench agent` (or `cargo bench -p periscope-agent --bench
//! pipeline`). Uses the agent binary's allocator (mimalloc).
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use periscope_agent::agent::{BuildConfig, Remote, State};
use periscope_agent::decoder;
use periscope_agent::dns::{DnsConfig, DnsEnricher};
use periscope_agent::filters::FlowFilterSet;
use periscope_agent::policy::PolicySet;
use periscope_agent::ring::{Event, Ring};
use periscope_datapath_common::{self as dp, FlowEvent};
use periscope_proto::flow::FlowFilter;
use periscope_topology::Topology;

fn state() -> State {
    let mut pods = String::from("nodes: [{name: n1}]\npods:\n");
    for i in 0..200 {
        pods += &format!(
            "  - {{name: p{i}, namespace: ns{}, node: n1, labels: {{app: a{}}}, ips: [10.1.{}.{}]}}\n",
            i % 10,
            i % 20,
            i / 250,
            i % 250 + 1
        );
    }
    let t = Topology::parse(&pods, Path::new("bench.yaml")).expect("topology");
    let (mut s, specs) = State::build(
        "n1",
        &t,
        &Remote::default(),
        PolicySet::default(),
        &BuildConfig::default(),
    );
    let ids = specs
        .iter()
        .enumerate()
        .map(|(i, sp)| (sp.ifname.clone(), i as u32 + 1))
        .collect();
    s.set_endpoint_ids(&ids);
    s
}

fn events(st: &State) -> Vec<FlowEvent> {
    let eps: Vec<_> = st.endpoints.values().collect();
    (0..1024)
        .map(|i| {
            let a = eps[i % eps.len()];
            let b = eps[(i * 7 + 3) % eps.len()];
            let mut ev = FlowEvent {
                kind: if i % 5 == 0 {
                    dp::msg::POLICY_VERDICT
                } else {
                    dp::msg::TRACE
                },
                version: dp::EVENT_VERSION,
                verdict: dp::verdict::FORWARDED,
                direction: dp::dir::INGRESS,
                proto: dp::proto::TCP,
                tcp_flags: dp::tcp::ACK | dp::tcp::PSH,
                ep_id: b.id as u16,
                src_identity: a.identity,
                dst_identity: b.identity,
                src_port: 40000 + i as u16,
                dst_port: 8080,
                ts_ns: 1_000_000 + i as u64,
                flags: dp::EV_F_REPLY_KNOWN,
                ..Default::default()
            };
            ev.src_ip[..4].copy_from_slice(&a.pod.ipv4().unwrap().octets());
            ev.dst_ip[..4].copy_from_slice(&b.pod.ipv4().unwrap().octets());
            ev
        })
        .collect()
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A DNS enricher that knows names for a quarter of the pods (as if they had been looked up).
fn dns(st: &State) -> DnsEnricher {
    let mut d = DnsEnricher::new(DnsConfig::default());
    for (i, ep) in st
        .endpoints
        .values()
        .enumerate()
        .filter(|(i, _)| i % 4 == 0)
    {
        let ip = std::net::IpAddr::V4(ep.pod.ipv4().unwrap());
        d.cache_mut()
            .insert(ip, &format!("svc{i}.example.com."), 300, 0);
    }
    d
}

fn bench(c: &mut Criterion) {
    let st = state();
    let evs = events(&st);
    let mut dns = dns(&st);
    let ring = Ring::new(4095).unwrap();
    let filter = FlowFilterSet::compile(
        &[FlowFilter {
            source_pod: vec!["ns3/".into()],
            ..Default::default()
        }],
        &[FlowFilter {
            destination_port: vec!["22".into()],
            ..Default::default()
        }],
    )
    .unwrap();
    let mut g = c.benchmark_group("agent");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for ev in &evs {
                std::hint::black_box(decoder::decode(ev, &st, 0));
            }
        })
    });
    g.bench_function("decode+dns+ring", |b| {
        b.iter(|| {
            ring.write_batch(evs.iter().map(|ev| {
                let mut f = decoder::decode(ev, &st, 0);
                dns.enrich(&mut f, ev, &[]);
                Event::Flow(f)
            }))
        })
    });
    let flows: Vec<_> = evs.iter().map(|ev| decoder::decode(ev, &st, 0)).collect();
    g.bench_function("filter", |b| {
        b.iter(|| flows.iter().filter(|f| filter.matches(f)).count())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

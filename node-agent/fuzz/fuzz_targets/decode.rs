//! Fuzzes the decoder with arbitrary perf samples: parse (with any captured packet after the
//! event), turn into a Hubble flow against a small state, enrich with DNS, then render it.
//! Nothing may panic.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use periscope_agent::agent::{BuildConfig, Remote, State};
use periscope_agent::{decoder, dns, monitor, policy::PolicySet};

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let t = periscope_topology::Topology::parse(
            "nodes: [{name: n}]\npods:\n  - {name: a, namespace: x, node: n, labels: {app: a}, ips: [10.0.0.1, \"fd00::1\"]}\n",
            std::path::Path::new("fuzz.yaml"),
        )
        .expect("topology");
        State::build("n", &t, &Remote::default(), PolicySet::default(), &BuildConfig::default()).0
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some((ev, payload)) = monitor::parse_sample_with_payload(data) {
        let mut f = decoder::decode(&ev, state(), 0);
        dns::DnsEnricher::new(dns::DnsConfig::default()).enrich(&mut f, &ev, payload);
        let _ = decoder::compact(&f);
    }
});

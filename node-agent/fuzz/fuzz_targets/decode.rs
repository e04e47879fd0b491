//! Fuzzes the decoder with arbitrary perf samples: parse, then turn into a Hubble flow against a
//! small state, then render it. Nothing may panic.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use periscope_agent::agent::{BuildConfig, Remote, State};
use periscope_agent::{decoder, monitor, policy::PolicySet};

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
    if let Some(ev) = monitor::parse_sample(data) {
        let f = decoder::decode(&ev, state(), 0);
        let _ = decoder::compact(&f);
    }
});

//! Fuzzes the DNS enricher's parsers with arbitrary bytes, both as a bare DNS message and as a
//! captured Ethernet frame, then feeds the result through the cache and the L7 record. Nothing may
//! panic, loop or allocate without bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use periscope_agent::dns;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dns::parse(data) {
        let mut c = dns::FqdnCache::new(dns::DnsConfig::default());
        c.learn(&m, 0);
        let _ = dns::summary(&dns::l7_record(&m));
    }
    if let Ok(p) = dns::udp_packet(data) {
        let _ = dns::parse(p.payload);
    }
});

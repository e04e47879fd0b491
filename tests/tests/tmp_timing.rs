use periscope_testbed::*;
use std::time::Instant;
#[test]
fn timing() {
    let y = std::fs::read_to_string("tests/testbed.rs").unwrap();
    let start = y.find("r#\"").unwrap() + 3; let end = y[start..].find("\"#").unwrap() + start;
    let yaml = &y[start..end];
    for _ in 0..3 {
        let t = Instant::now();
        let tb = Testbed::from_yaml(yaml, TestbedOptions::default()).unwrap();
        let c = t.elapsed();
        let t = Instant::now();
        drop(tb);
        println!("create {:?} drop {:?}", c, t.elapsed());
    }
    let tb = Testbed::from_yaml(yaml, TestbedOptions::default()).unwrap();
    let r = traffic::tcp_probe(tb.pod("frontend-1"), "203.0.113.9:80".parse().unwrap(), std::time::Duration::from_millis(500));
    println!("{r:?}");
    let r = traffic::ping_rtt(tb.pod("frontend-1"), "203.0.113.9".parse().unwrap(), std::time::Duration::from_millis(500));
    println!("{r:?}");
    let r = traffic::udp_probe(tb.pod("frontend-1"), "[2001:db8:99::1]:80".parse().unwrap(), std::time::Duration::from_millis(500));
    println!("{r:?}");
    let err = Testbed::from_yaml(&yaml.replace("node: node-b, labels: {app: db}", "node: node-b, interface: fab0, labels: {app: db}"), TestbedOptions::default()).unwrap_err();
    println!("{err}");
}

//! The web UI in a real browser (Debian's headless Chromium through chromedriver) against a real
//! relay fed by the real test bed: allowed and denied traffic → agent → relay → the UI. Checks
//! that the map shows the expected nodes and edges with the right colours, a node's panel, that
//! filters narrow the flows table, that a policy-denied flow names its policy, the policies
//! view, that an alert appears and links to its flows, a narrow window, and no console errors.
//! Screenshots of every view are kept in `<target>/ui-screenshots/`. Needs root and the UI
//! bundle (`cargo xtask test` builds it; `PERISCOPE_UI_DIR` or `<target>/ui-dist`).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use periscope_testbed::agent::Agent;
use periscope_testbed::browser::Browser;
use periscope_testbed::relay::{Relay, free_port};
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};

const TOPO: &str = r#"
cluster: uib
nodes: [{name: n1}]
pods:
  - {name: web, namespace: shop, node: n1, labels: {app: web}, ips: [10.219.0.1]}
  - {name: api, namespace: shop, node: n1, labels: {app: api}, ips: [10.219.0.2]}
  - {name: db, namespace: data, node: n1, labels: {app: db}, ips: [10.219.1.1]}
"#;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-api, namespace: data}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

const RULES: &str = r#"
rules:
  - name: DbDenied
    selector:
      allow:
        - verdict: [DROPPED]
          destination_label: ["k8s:app=db"]
    window: 5m
    threshold: 3
    group_by: [source_namespace, source_pod]
    severity: critical
    annotations:
      summary: "{{ source_pod }} denied {{ count }} times"
"#;

const TOKEN: &str = "browser-test-token";
const WAIT: Duration = Duration::from_secs(30);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn ui_dir() -> PathBuf {
    let dir = std::env::var_os("PERISCOPE_UI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("ui-dist"));
    assert!(
        dir.join("index.html").is_file(),
        "no UI bundle in {} (build it with `cargo xtask ui`)",
        dir.display()
    );
    dir
}

fn shots() -> PathBuf {
    let d = target_dir().join("ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_ui_shows_the_map_flows_policies_and_alerts() {
    let ui = ui_dir();
    let tb = Testbed::from_yaml(TOPO, TestbedOptions::default()).expect("test bed");
    let agent = Agent::start(&tb, "n1", POLICY, &[]);
    let (web, api, db) = (tb.pod("shop/web"), tb.pod("shop/api"), tb.pod("data/db"));
    let _srv = TcpEchoServer::start(db, 5432);
    let dir = std::env::temp_dir().join(format!("periscope-e2e-uib-{}", tb.id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let _relay = Relay::start(
        "uib",
        &[
            "--peers",
            &agent.api_address(),
            "--http-listen",
            &http,
            "--ui-token-file",
            dir.join("token").to_str().unwrap(),
            "--ui-dir",
            ui.to_str().unwrap(),
            "--alert-rules",
            dir.join("rules.yaml").to_str().unwrap(),
            "--sort-drain-timeout",
            "300ms",
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let t = Duration::from_millis(300);
    for _ in 0..4 {
        assert!(traffic::tcp_probe(api, db.v4(5432), t).is_echoed());
        assert!(!traffic::tcp_probe(web, db.v4(5432), t).is_echoed());
    }

    let b = Browser::start(1280, 800).expect("headless Chromium");
    let shots = shots();
    b.goto(&format!("http://{http}/")).unwrap();
    // The relay wants a token: the form asks for it.
    let form = b.wait_for("#token-form", WAIT).expect("the token form");
    form.find("input[name=token]")
        .unwrap()
        .send_keys(TOKEN)
        .unwrap();
    b.execute(
        "const f = document.querySelector('#token-form'); f.requestSubmit ? f.requestSubmit() : f.submit();",
        &[],
    )
    .unwrap();

    // The map: nodes, and edges coloured by verdict.
    let denied_edge = r#".edge[data-source="shop/web"][data-destination="data/db"]"#;
    let allowed_edge = r#".edge[data-source="shop/api"][data-destination="data/db"]"#;
    b.wait_for(denied_edge, WAIT).expect("the denied edge");
    b.wait_for(allowed_edge, WAIT).expect("the allowed edge");
    for id in ["shop/web", "shop/api", "data/db"] {
        let n = b
            .find(&format!(r#"g.node[data-id="{id}"]"#))
            .expect("a node");
        assert_eq!(
            n.attribute("data-kind").unwrap().as_deref(),
            Some("workload")
        );
    }
    let look = |css: &str| b.find(css).unwrap().attribute("data-look").unwrap();
    assert_eq!(look(denied_edge).as_deref(), Some("dropped"));
    assert_eq!(look(allowed_edge).as_deref(), Some("forwarded"));
    // Colours: red for dropped, green for forwarded (computed style of the drawn edge).
    let stroke = |css: &str| {
        b.execute(
            "return getComputedStyle(document.querySelector(arguments[0])).stroke",
            &[serde_json::json!(css)],
        )
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
    };
    // The edges' titles give their flows and bytes: "… TCP/5432: 4 forwarded, 1.2 KiB (click …)".
    for css in [denied_edge, allowed_edge] {
        let title = b
            .execute(
                "return document.querySelector(arguments[0]).querySelector('title').textContent",
                &[serde_json::json!(css)],
            )
            .unwrap();
        let title = title.as_str().unwrap_or_default();
        let counts = title.trim_end_matches(" (click for the flows)");
        let last = counts.rsplit(", ").next().unwrap_or_default();
        assert!(
            last.ends_with(" B") || last.ends_with("KiB"),
            "no bytes in the edge's title: {title:?}"
        );
    }
    let (red, green) = (stroke(denied_edge), stroke(allowed_edge));
    assert_ne!(
        red, green,
        "dropped and forwarded edges look the same: {red}"
    );
    b.screenshot(shots.join("map.png")).unwrap();
    // The namespace list opens, and a click elsewhere closes it.
    b.find("details.ns-select summary")
        .unwrap()
        .click()
        .unwrap();
    b.wait_until("document.querySelector('details.ns-select').open", WAIT)
        .expect("the namespace list opens");
    b.execute(
        "document.querySelector('details.ns-select .ns-options').click()",
        &[],
    )
    .unwrap();
    assert_eq!(
        b.execute(
            "return document.querySelector('details.ns-select').open",
            &[]
        )
        .unwrap(),
        serde_json::json!(true),
        "a click inside keeps it open"
    );
    b.execute("document.body.click()", &[]).unwrap();
    b.wait_until("!document.querySelector('details.ns-select').open", WAIT)
        .expect("the namespace list closes on a click outside");

    // A node's panel: labels and the policy selecting it.
    b.find(r#"g.node[data-id="data/db"]"#)
        .unwrap()
        .click()
        .unwrap();
    let panel = b.wait_for("#node-detail", WAIT).expect("the node panel");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = panel.text().unwrap();
        if text.contains("k8s:app=db") && text.contains("db-from-api") {
            break;
        }
        assert!(Instant::now() < deadline, "node panel: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    b.screenshot(shots.join("map-node.png")).unwrap();

    // Flows: the verdict filter narrows the table; a denied flow names its policy.
    b.find("a#nav-flows").unwrap().click().unwrap();
    b.wait_for("tr.flow", WAIT).expect("flows in the table");
    b.wait_until(
        "document.querySelectorAll('tr.flow[data-verdict=FORWARDED]').length > 0",
        WAIT,
    )
    .expect("forwarded flows before filtering");
    b.execute(
        "const s = document.querySelector('select[name=verdict]'); s.value = 'DROPPED'; s.dispatchEvent(new Event('change', {bubbles: true})); s.dispatchEvent(new Event('input', {bubbles: true}));",
        &[],
    )
    .unwrap();
    b.find("#apply-filters").unwrap().click().unwrap();
    b.wait_until(
        "((r) => r.length > 0 && r.every(x => x.dataset.verdict === 'DROPPED'))([...document.querySelectorAll('tr.flow')])",
        WAIT,
    )
    .expect("only dropped flows after filtering");
    b.screenshot(shots.join("flows.png")).unwrap();
    b.find("tr.flow").unwrap().click().unwrap();
    let headline = b
        .wait_for("#flow-detail .explanation-headline", WAIT)
        .expect("the flow's explanation");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = headline.text().unwrap();
        if text.contains("db-from-api") {
            assert!(text.contains("denied"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "explanation: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    b.screenshot(shots.join("flow-detail.png")).unwrap();

    // Policies: the policy, who may talk to whom, and the denied flows overlaid.
    b.find("a#nav-policies").unwrap().click().unwrap();
    b.wait_for(r#".policy[data-name="db-from-api"]"#, WAIT)
        .expect("the policy in the list");
    b.wait_for(".policy-edge", WAIT).expect("an allowed pair");
    b.wait_for(".denied-edge", WAIT)
        .expect("the denied overlay");
    b.screenshot(shots.join("policies.png")).unwrap();

    // Alerts: the denied flows fired DbDenied; its link leads to its flows.
    b.find("a#nav-alerts").unwrap().click().unwrap();
    let alert = b
        .wait_for(r#".alert[data-rule="DbDenied"][data-state="firing"]"#, WAIT)
        .expect("the firing alert");
    b.screenshot(shots.join("alerts.png")).unwrap();
    alert.find("a.alert-flows").unwrap().click().unwrap();
    b.wait_until(
        "((r) => r.length > 0 && r.every(x => x.dataset.verdict === 'DROPPED'))([...document.querySelectorAll('tr.flow')])",
        WAIT,
    )
    .expect("the alert's flows");

    // A narrow window: the map still renders.
    b.set_window_size(420, 800).unwrap();
    b.find("a#nav-map").unwrap().click().unwrap();
    b.wait_for(denied_edge, WAIT)
        .expect("the map in a narrow window");
    b.screenshot(shots.join("map-narrow.png")).unwrap();

    let errors = b.console_errors().unwrap();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    eprintln!("screenshots in {}", shots.display());
}

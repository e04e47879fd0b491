//! `cargo xtask demo`: the demo topology on the network-namespace test bed (two nodes, three
//! namespaces, a load-balanced service), one agent per node, the demo policies, the relay
//! merging both agents with the web UI and the example alert rules, and traffic with allowed
//! and denied connections.
//!
//! Everything the demo makes lives under fixed names so `--down` can find it: test-bed id `demo`
//! (namespaces `ptdemo-*`), pins under `/sys/fs/bpf/periscope/demo`, state and logs under
//! `/run/periscope-demo`.
use std::fs;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use periscope_testbed::traffic::{self, TcpEchoServer, UdpEchoServer};
use periscope_testbed::{Testbed, TestbedOptions};
use periscope_topology::Topology;

const DEMO_ID: &str = "demo";
const RUN_DIR: &str = "/run/periscope-demo";
const BPFFS_DIR: &str = "/sys/fs/bpf/periscope/demo";
/// The relay's Observer API (the agents take 4244, 4246, …: every other port, skipping it).
const RELAY_GRPC: &str = "127.0.0.1:4245";
/// The relay's web UI and JSON API.
const RELAY_HTTP: &str = "127.0.0.1:12000";
/// The service the traffic goes through (deploy/demo/topology.yaml).
const API_SERVICE: &str = "10.96.0.20:80";

/// gRPC and metrics addresses of the agent of the `i`-th node.
fn agent_addrs(i: usize) -> (String, String) {
    (
        format!("127.0.0.1:{}", 4244 + 2 * i),
        format!("127.0.0.1:{}", 9965 + i),
    )
}

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Return once everything is up; processes keep running in the background with their logs
    /// in /run/periscope-demo. Stop with `--down`.
    #[arg(long, conflicts_with = "down")]
    detach: bool,
    /// Stop a detached demo and remove every namespace, link, pinned object and file it made.
    #[arg(long)]
    down: bool,
    /// Stop by itself after this many seconds (non-interactive runs).
    #[arg(long)]
    duration: Option<u64>,
    /// Topology file.
    #[arg(long, default_value = "deploy/demo/topology.yaml")]
    topology: PathBuf,
    /// Policy directory.
    #[arg(long, default_value = "deploy/demo/policies")]
    policies: PathBuf,
    /// Skip setup and build (use the binaries already built).
    #[arg(long)]
    no_build: bool,
    /// Before stopping (with `--duration`), check through the relay's API that flows, denied
    /// flows, the service map (through the api service, forwarded and dropped edges) and the
    /// DatabaseAccessDenied alert all appeared; fail otherwise. For CI.
    #[arg(long, requires = "duration")]
    check: bool,
    /// Start a private ClickHouse server (Debian's clickhouse-server, data in a temporary
    /// directory, removed at the end) and have the relay store every flow in it: history, the
    /// map's time ranges and SQL. Not with `--detach`.
    #[arg(long, conflicts_with = "detach")]
    clickhouse: bool,
}

fn run_dir() -> PathBuf {
    PathBuf::from(RUN_DIR)
}

/// Entry point.
pub fn run(a: DemoArgs) -> Result<()> {
    if a.down {
        return down();
    }
    let root = crate::root();
    let topo_path = root.join(&a.topology);
    let pol_path = root.join(&a.policies);
    let topology = Topology::load(&topo_path)?;
    if !a.no_build {
        crate::setup()?;
        eprintln!("[demo] building the agent and its eBPF datapath (release)…");
        crate::build_release()?;
    }
    // A previous demo (detached or crashed) is stopped first.
    down_quiet();
    fs::create_dir_all(run_dir())?;
    eprintln!(
        "[demo] creating the test bed: {} node(s), {} pods",
        topology.nodes.len(),
        topology.pods.len()
    );
    let testbed = Testbed::create(
        &topology,
        TestbedOptions {
            id: Some(DEMO_ID.into()),
            replace_stale: true,
            keep: a.detach,
        },
    )?;

    let mut agents = Vec::new();
    for (i, node) in topology.nodes.iter().enumerate() {
        agents.push(start_agent(&testbed, i, &node.name, &topo_path, &pol_path)?);
    }
    wait_ready(&topology)?;
    let clickhouse = if a.clickhouse {
        eprintln!("[demo] starting a private ClickHouse server");
        Some(
            periscope_storage::testing::TestServer::start()
                .context("starting clickhouse-server (xtask setup installs it)")?,
        )
    } else {
        None
    };
    eprintln!("[demo] agents ready; starting the relay and the web UI");
    agents.push(start_relay(&topology, clickhouse.as_ref())?);
    wait_relay()?;
    eprintln!("[demo] relay ready; starting traffic");

    if a.detach {
        let exe = std::env::current_exe()?;
        let state = run_dir().join("state.json");
        write_state(&state, &agents, None, &topo_path, &pol_path)?;
        let log = fs::File::create(run_dir().join("traffic.log"))?;
        let traffic = Command::new(exe)
            .args(["demo-traffic"])
            .arg(&state)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        write_state(&state, &agents, Some(traffic.id()), &topo_path, &pol_path)?;
        for (_, c) in agents {
            std::mem::forget(c);
        }
        std::mem::forget(testbed);
        print_where_to_look(&topology, true);
        return Ok(());
    }

    print_where_to_look(&topology, false);
    if let Some(ch) = &clickhouse {
        print_sql(ch);
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("signal handler")?;
    }
    let traffic_stop = stop.clone();
    let traffic = std::thread::scope(|s| -> Result<()> {
        let tb = &testbed;
        let t = s.spawn(move || traffic_loop(tb, &traffic_stop));
        follow_flows(&topology, &stop, a.duration.map(Duration::from_secs))?;
        let checked = if a.check {
            check(clickhouse.as_ref())
        } else {
            Ok(())
        };
        stop.store(true, Ordering::SeqCst);
        t.join().expect("traffic thread")?;
        checked
    });
    eprintln!("\n[demo] stopping");
    for (_, mut c) in agents {
        terminate(&mut c);
    }
    drop(testbed);
    cleanup_files();
    traffic?;
    eprintln!("[demo] cleaned up");
    Ok(())
}

fn agent_paths(node: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = run_dir();
    (
        d.join(format!("agent-{node}.flows")),
        d.join(format!("agent-{node}.log")),
        d.join(node),
    )
}

fn start_agent(
    tb: &Testbed,
    i: usize,
    node: &str,
    topo: &Path,
    pol: &Path,
) -> Result<(String, Child)> {
    let (flows, log, state) = agent_paths(node);
    let (listen, metrics) = agent_addrs(i);
    let child = Command::new(crate::agent_bin())
        .arg("--topology")
        .arg(topo)
        .args(["--node", node])
        .args(["--listen", &listen, "--metrics-listen", &metrics])
        .arg("--policy")
        .arg(pol)
        .arg("--netns")
        .arg(tb.node_netns_path(node))
        .arg("--bpffs-root")
        .arg(format!("{BPFFS_DIR}/{node}"))
        .arg("--state-dir")
        .arg(&state)
        .stdout(fs::File::create(&flows)?)
        .stderr(fs::File::create(&log)?)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", crate::agent_bin().display()))?;
    Ok((node.to_string(), child))
}

/// The relay: every agent as a peer, the web UI (`<target>/ui-dist`), the example alert rules,
/// and ClickHouse when given.
fn start_relay(
    topology: &Topology,
    clickhouse: Option<&periscope_storage::testing::TestServer>,
) -> Result<(String, Child)> {
    let log = run_dir().join("relay.log");
    let mut cmd = Command::new(crate::relay_bin());
    cmd.args(["--listen", RELAY_GRPC, "--http-listen", RELAY_HTTP]);
    if let Some(ch) = clickhouse {
        cmd.args([
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-database",
            "periscope",
        ])
        .arg("--spool-dir")
        .arg(run_dir().join("spool"));
    }
    for (i, n) in topology.nodes.iter().enumerate() {
        cmd.arg("--peers")
            .arg(format!("{}={}", n.name, agent_addrs(i).0));
    }
    let out = fs::File::create(&log)?;
    let child = cmd
        .arg("--ui-dir")
        .arg(crate::ui::ui_dist())
        .arg("--alert-rules")
        .arg(crate::root().join("deploy/examples/alert-rules"))
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", crate::relay_bin().display()))?;
    Ok(("relay".to_string(), child))
}

/// Waits until the relay's HTTP listener answers.
fn wait_relay() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr: std::net::SocketAddr = RELAY_HTTP.parse()?;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the relay did not start; its log:\n{}",
                fs::read_to_string(run_dir().join("relay.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn wait_ready(topology: &Topology) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in &topology.nodes {
        let (_, log, state) = agent_paths(&node.name);
        while !state.join("status.json").exists() {
            if Instant::now() > deadline {
                bail!(
                    "agent of {} did not become ready; its log:\n{}",
                    node.name,
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn terminate(c: &mut Child) {
    // SAFETY: kill with a pid we spawned.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn write_state(
    path: &Path,
    agents: &[(String, Child)],
    traffic: Option<u32>,
    topo: &Path,
    pol: &Path,
) -> Result<()> {
    let v = serde_json::json!({
        "agents": agents.iter().map(|(n, c)| serde_json::json!({"node": n, "pid": c.id()})).collect::<Vec<_>>(),
        "traffic_pid": traffic,
        "topology": topo,
        "policies": pol,
    });
    fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

fn print_where_to_look(topology: &Topology, detached: bool) {
    let d = run_dir();
    println!(
        "\nPeriscope demo is up: {} nodes, {} pods, policies in deploy/demo/policies",
        topology.nodes.len(),
        topology.pods.len()
    );
    for n in &topology.nodes {
        let (flows, log, state) = agent_paths(&n.name);
        println!(
            "  agent {}: flows {}  log {}  status {}",
            n.name,
            flows.display(),
            log.display(),
            state.join("status.json").display()
        );
    }
    println!(
        "  pinned datapath: {BPFFS_DIR}/<node>  (bpftool map dump pinned {BPFFS_DIR}/node-1/ep/<ifname>/policy_<version>)"
    );
    println!("  web UI (service map, flows, policies, alerts): http://{RELAY_HTTP}/");
    println!(
        "  Hubble API of the relay (both nodes, time-ordered): {RELAY_GRPC}; of the agents: {}",
        (0..topology.nodes.len())
            .map(|i| agent_addrs(i).0)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "    target/release/periscope --server {RELAY_GRPC} observe --verdict DROPPED --last 20"
    );
    println!(
        "    target/release/periscope --server {RELAY_GRPC} observe --to-service shop/api --follow"
    );
    println!(
        "    target/release/periscope --server {RELAY_GRPC} observe -n data -t policy-verdict --follow"
    );
    println!(
        "    curl -s http://{RELAY_HTTP}/api/v1/alerts   (DatabaseAccessDenied fires within a minute)"
    );
    println!("  relay log: {}", d.join("relay.log").display());
    println!(
        "  pod namespaces: ip netns list | grep ptdemo-   (e.g. ip netns exec ptdemo-frontend-1 …)"
    );
    if detached {
        println!(
            "  traffic generator log: {}",
            d.join("traffic.log").display()
        );
        println!(
            "Follow flows: tail -f {}/agent-*.flows    Stop: cargo xtask demo --down",
            d.display()
        );
    } else {
        println!("Flows follow (Ctrl-C stops and cleans up):\n");
    }
}

/// Where to run SQL when the demo has ClickHouse.
fn print_sql(ch: &periscope_storage::testing::TestServer) {
    let port = ch.tcp_port();
    println!("  ClickHouse (every flow; tables and queries: storage-schema/README.md), e.g.");
    println!(
        "    clickhouse-client --port {port} --database periscope --query \"SELECT verdict, count() FROM flows GROUP BY verdict\""
    );
    println!(
        "    clickhouse-client --port {port} --database periscope --query \"SELECT source_namespace, \
         source_workload, destination_workload, destination_port, uniqExact(uuid) AS denied \
         FROM flows_denied GROUP BY source_namespace, source_workload, destination_workload, \
         destination_port ORDER BY denied DESC\""
    );
    println!("  (with --clickhouse the map's time ranges, 5 min … 24 h, come from ClickHouse)\n");
}

/// `--check`: what a user of the demo should see, through the relay's JSON API; waits (with
/// the traffic still running) until everything is there, up to [`CHECK_PATIENCE`].
fn check(clickhouse: Option<&periscope_storage::testing::TestServer>) -> Result<()> {
    let start = Instant::now();
    loop {
        match check_once(clickhouse) {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() >= CHECK_PATIENCE => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

/// How long `--check` waits for everything to appear (the alert needs its rule's `for: 30s`
/// after five denied packets in a minute); far beyond what it takes.
const CHECK_PATIENCE: Duration = Duration::from_secs(180);

fn check_once(clickhouse: Option<&periscope_storage::testing::TestServer>) -> Result<()> {
    let addr: std::net::SocketAddr = RELAY_HTTP.parse()?;
    let get = |path: &str| -> Result<serde_json::Value> {
        let (status, body) = periscope_testbed::browser::http_request(
            addr,
            "GET",
            path,
            &[],
            None,
            Duration::from_secs(30),
        )
        .with_context(|| format!("GET http://{RELAY_HTTP}{path}"))?;
        if status != 200 {
            bail!(
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))
    };
    let mut problems = Vec::new();
    let flows = get("/api/v1/flows?limit=100")?;
    let n = flows["flows"].as_array().map_or(0, Vec::len);
    if n == 0 {
        problems.push("no flows".to_string());
    }
    let denied = get("/api/v1/flows?verdict=DROPPED&limit=100")?;
    let d = denied["flows"].as_array().map_or(0, Vec::len);
    if d == 0 {
        problems.push("no denied flows".to_string());
    }
    let map = get("/api/v1/map")?;
    let edges = map["edges"].as_array().cloned().unwrap_or_default();
    let has = |src: &str, dst: &str, key: &str| {
        edges.iter().any(|e| {
            e["source"] == src && e["destination"] == dst && e[key].as_u64().unwrap_or(0) > 0
        })
    };
    if !has("shop/frontend", "shop/api", "forwarded") {
        problems.push("no forwarded edge shop/frontend → shop/api on the map".to_string());
    }
    if !has("shop/intruder", "data/db", "dropped") {
        problems.push("no dropped edge shop/intruder → data/db on the map".to_string());
    }
    // The seeds' policies are enforced: seed 002's rule1 lets the empire land, not the alliance.
    if !has("default/tiefighter", "default/deathstar", "forwarded") {
        problems.push("no forwarded edge default/tiefighter → default/deathstar".to_string());
    }
    if !has("default/xwing", "default/deathstar", "dropped") {
        problems.push("no dropped edge default/xwing → default/deathstar (seed 002)".to_string());
    }
    // Bytes on the edges (the agents' Flow.periscope_bytes).
    if !edges.iter().any(|e| e["bytes"].as_u64().unwrap_or(0) > 0) {
        problems.push("no bytes on any map edge".to_string());
    }
    let alerts = get("/api/v1/alerts")?;
    let firing = alerts
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["rule"] == "DatabaseAccessDenied" && a["state"] == "firing");
    if !firing {
        problems.push("the DatabaseAccessDenied alert is not firing".to_string());
    }
    let stored = match clickhouse {
        Some(ch) => {
            let (status, body) = periscope_testbed::browser::http_request(
                ch.url()
                    .trim_start_matches("http://")
                    .parse()
                    .context("ClickHouse address")?,
                "GET",
                "/?query=SELECT%20count()%20FROM%20periscope.flows",
                &[],
                None,
                Duration::from_secs(30),
            )
            .context("asking ClickHouse")?;
            let n: u64 = String::from_utf8_lossy(&body).trim().parse().unwrap_or(0);
            if status != 200 || n == 0 {
                problems.push(format!(
                    "no flows stored in ClickHouse (HTTP {status}: {})",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
            format!(", {n} flows in ClickHouse")
        }
        None => String::new(),
    };
    println!(
        "[demo] check: {n} flows, {d} denied flows, {} map edges, DatabaseAccessDenied firing: {firing}{stored}",
        edges.len()
    );
    if !problems.is_empty() {
        bail!("the demo check failed: {}", problems.join("; "));
    }
    Ok(())
}

/// Prints the agents' flow lines as they come, until `stop` (or `duration`).
fn follow_flows(topology: &Topology, stop: &AtomicBool, duration: Option<Duration>) -> Result<()> {
    let start = Instant::now();
    let mut readers: Vec<(String, BufReader<fs::File>)> = Vec::new();
    for n in &topology.nodes {
        let (flows, _, _) = agent_paths(&n.name);
        let mut f = fs::File::open(&flows)?;
        f.seek(SeekFrom::Start(0))?;
        readers.push((n.name.clone(), BufReader::new(f)));
    }
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    while !stop.load(Ordering::SeqCst) && duration.is_none_or(|d| start.elapsed() < d) {
        let mut any = false;
        for (_, r) in readers.iter_mut() {
            let mut line = String::new();
            while r.read_line(&mut line)? > 0 {
                if line.ends_with('\n') {
                    print!("{line}");
                    for v in ["FORWARDED", "DROPPED", "ALLOWED", "DENIED", "AUDIT"] {
                        if line.contains(&format!(" {v} ")) {
                            *counts.entry(v.into()).or_default() += 1;
                        }
                    }
                    line.clear();
                    any = true;
                }
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("\n[demo] flows seen: {counts:?}");
    Ok(())
}

/// The demo's traffic: allowed and denied connections, once per second.
fn traffic_loop(tb: &Testbed, stop: &AtomicBool) -> Result<()> {
    let pod = |n: &str| tb.pod(n);
    let mut servers = vec![
        TcpEchoServer::start(pod("shop/frontend-1"), 8080),
        TcpEchoServer::start(pod("shop/frontend-1"), 22),
        TcpEchoServer::start(pod("shop/frontend-2"), 8080),
        TcpEchoServer::start(pod("data/db-1"), 5432),
    ];
    for api in ["shop/api-1", "shop/api-2", "shop/api-3"] {
        servers.push(TcpEchoServer::start(pod(api), 8080));
    }
    servers.push(TcpEchoServer::start(pod("default/deathstar-1"), 80));
    servers.push(TcpEchoServer::start(pod("default/protected-db-1"), 6379));
    let _cache = UdpEchoServer::start(pod("data/cache-1"), 6379);
    let t = Duration::from_millis(300);
    let frontends = [pod("shop/frontend-1"), pod("shop/frontend-2")];
    let api = pod("shop/api-1");
    let api2 = pod("shop/api-2");
    let db = pod("data/db-1");
    let cache = pod("data/cache-1");
    let prometheus = pod("monitoring/prometheus-1");
    let intruder = pod("shop/intruder");
    let world = pod("world-client");
    let service: std::net::SocketAddr = API_SERVICE.parse()?;
    while !stop.load(Ordering::SeqCst) {
        traffic::tcp_probe(world, frontends[0].v4(8080), t); // allowed: world → frontend:8080
        for f in frontends {
            // allowed: through the api service, spread over three backends on both nodes
            traffic::tcp_probe(f, service, t);
            traffic::tcp_probe(f, service, t);
        }
        traffic::tcp_probe(api, db.v4(5432), t); // allowed by db-allow-api (node-1 → node-2)
        traffic::tcp_probe(api2, db.v6(5432), t); // the same over IPv6, on node-2
        traffic::udp_probe(api2, cache.v4(6379), t); // allowed by cache-allow-api
        traffic::tcp_probe(prometheus, api.v4(8080), t); // allowed: api has no policy
        traffic::tcp_probe(frontends[0], db.v4(5432), t); // DENIED: default deny on db
        traffic::tcp_probe(intruder, db.v4(5432), t); // DENIED
        traffic::tcp_probe(prometheus, db.v4(5432), t); // DENIED
        traffic::tcp_probe(world, frontends[0].v4(22), t); // DENIED by the ingressDeny rule
        traffic::ping(frontends[1], api.ipv4().expect("api ipv4").into(), t); // allowed
        // The seeds' policies: allowed by rule1 (002) and clustermesh-ingress-l4-policy (000),
        // and denied by them (default deny once they select deathstar and protected-db).
        let (deathstar, protected_db) = (pod("default/deathstar-1"), pod("default/protected-db-1"));
        traffic::tcp_probe(pod("default/tiefighter"), deathstar.v4(80), t);
        traffic::tcp_probe(pod("default/employee-1"), protected_db.v4(6379), t);
        traffic::tcp_probe(pod("default/xwing"), deathstar.v4(80), t); // DENIED
        traffic::tcp_probe(pod("default/xwing"), protected_db.v4(6379), t); // DENIED
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(servers);
    Ok(())
}

/// `xtask demo-traffic <state>`: the traffic loop of a detached demo, against the namespaces
/// the demo left in place.
pub fn traffic_main(state: &Path) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(&fs::read(state)?)?;
    let topo = Topology::load(Path::new(
        v["topology"].as_str().context("topology in state")?,
    ))?;
    let tb = Testbed::attach(&topo, DEMO_ID)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))?;
    }
    traffic_loop(&tb, &stop)
}

fn cleanup_files() {
    let _ = fs::remove_dir_all(BPFFS_DIR);
    let _ = fs::remove_dir_all(run_dir());
}

fn down_quiet() {
    let state = run_dir().join("state.json");
    if let Ok(bytes) = fs::read(&state)
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
    {
        {
            let mut pids: Vec<i32> = v["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["pid"].as_i64())
                .map(|p| p as i32)
                .collect();
            pids.extend(v["traffic_pid"].as_i64().map(|p| p as i32));
            for pid in &pids {
                // SAFETY: signalling pids the demo recorded.
                unsafe { libc::kill(*pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                // SAFETY: signal 0 only checks for existence.
                && pids.iter().any(|p| unsafe { libc::kill(*p, 0) } == 0)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            for pid in &pids {
                // SAFETY: as above.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Testbed::cleanup_stale(DEMO_ID);
    cleanup_files();
}

fn down() -> Result<()> {
    crate::require_root()?;
    down_quiet();
    let left = Testbed::list_namespaces(DEMO_ID).unwrap_or_default();
    if !left.is_empty() {
        bail!("namespaces left behind: {left:?}");
    }
    println!("[demo] stopped; namespaces, pins ({BPFFS_DIR}) and files ({RUN_DIR}) removed");
    Ok(())
}

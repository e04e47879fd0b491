//! `cargo xtask demo`: the demo topology on the network-namespace test bed, one agent per node,
//! the demo policies, and traffic with allowed and denied connections.
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
    for node in &topology.nodes {
        agents.push(start_agent(&testbed, &node.name, &topo_path, &pol_path)?);
    }
    wait_ready(&topology)?;
    eprintln!("[demo] agents ready; starting traffic");

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
        stop.store(true, Ordering::SeqCst);
        t.join().expect("traffic thread")
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

fn start_agent(tb: &Testbed, node: &str, topo: &Path, pol: &Path) -> Result<(String, Child)> {
    let (flows, log, state) = agent_paths(node);
    let child = Command::new(crate::agent_bin())
        .arg("--topology")
        .arg(topo)
        .args(["--node", node])
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
    println!("  Hubble API of the agent: localhost:4244 (metrics :9965/metrics), e.g.");
    println!(
        "    target/release/periscope --server localhost:4244 observe --verdict DROPPED --last 20"
    );
    println!(
        "    target/release/periscope --server localhost:4244 observe -n data -t policy-verdict --follow"
    );
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
    let servers = (
        TcpEchoServer::start(pod("shop/frontend-1"), 8080),
        TcpEchoServer::start(pod("shop/frontend-1"), 22),
        TcpEchoServer::start(pod("shop/api-1"), 8080),
        TcpEchoServer::start(pod("data/db-1"), 5432),
        UdpEchoServer::start(pod("data/cache-1"), 6379),
    );
    let t = Duration::from_millis(300);
    let frontend = pod("shop/frontend-1");
    let api = pod("shop/api-1");
    let db = pod("data/db-1");
    let cache = pod("data/cache-1");
    let intruder = pod("shop/intruder");
    let world = pod("world-client");
    while !stop.load(Ordering::SeqCst) {
        traffic::tcp_probe(world, frontend.v4(8080), t); // allowed: world → frontend:8080
        traffic::tcp_probe(frontend, api.v4(8080), t); // allowed: api has no policy
        traffic::tcp_probe(api, db.v4(5432), t); // allowed by db-allow-api
        traffic::tcp_probe(api, db.v6(5432), t); // the same over IPv6
        traffic::udp_probe(api, cache.v4(6379), t); // allowed by cache-allow-api
        traffic::tcp_probe(frontend, db.v4(5432), t); // DENIED: default deny on db
        traffic::tcp_probe(intruder, db.v4(5432), t); // DENIED
        traffic::tcp_probe(world, frontend.v4(22), t); // DENIED by the ingressDeny rule
        traffic::ping(frontend, api.ipv4().expect("api ipv4").into(), t); // allowed
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

//! `cargo xtask bench`: benchmarks, reported as ratios against a baseline of the same run.
//!
//! `datapath` measures, on one topology (1 node; pods `bench/client` → `bench/server`, IPv4, same
//! node), pod-to-pod
//!
//! * TCP throughput (iperf3, one stream),
//! * request/response rate (one connection, 1-byte ping-pong, like netperf TCP_RR),
//! * new-connection rate (connect, 1 byte each way, close; like netperf TCP_CRR),
//!
//! in five configurations:
//!
//! * `a`    — no program, no iptables (the baseline);
//! * `b1`   — the Periscope datapath (policy + connection tracking + flow events with monitor
//!   aggregation `medium`), a policy allowing client → server on the benchmark port only;
//! * `b10k` — the same with 10,000 more allowed ports (policy map ≥ 10,000 entries);
//! * `c1`   — iptables in the node: conntrack ESTABLISHED first, one allow rule, then a drop;
//! * `c10k` — the same with 10,000 non-matching rules before the allow rule (a linear chain, the
//!   way kube-proxy style rule sets grow).
//!
//! Every configuration gets its own, freshly created test bed (its own namespaces, veths and bpffs
//! root), so no program or rule leaks between them; all five exist for the whole run and the
//! measurements are interleaved round-robin (rotating the order every round), so drift on the
//! machine hits every configuration alike. While one configuration is measured, the agents of the
//! others are paused (SIGSTOP) so their housekeeping does not steal CPU. Each cell is the median
//! of the repetitions. The report (a markdown table) is printed and written to
//! `artifacts/bench/datapath.md`. Goals missed are reported, not errors: only a failure to run the
//! benchmark is.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use periscope_testbed::traffic::{self, TcpEchoServer};
use periscope_testbed::{PodHandle, Testbed, TestbedOptions};
use periscope_topology::Topology;
use socket2::{Domain, Protocol, Socket, Type};

/// The benchmarks `cargo xtask bench` knows.
const BENCHMARKS: &[&str] = &["datapath", "agent", "relay", "lb", "ui"];

/// `cargo xtask bench lb`: service load balancing against kube-proxy's iptables rules.
mod lb;
/// The combined report, `artifacts/bench/REPORT.md`.
mod report;
/// `cargo xtask bench ui`: the service-map query over 10M stored flows and the map's first render.
mod ui;

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark: datapath, agent, relay, lb, ui, or all (the default) for every one;
    /// `report` only rebuilds the combined report from the last reports.
    /// Each writes `artifacts/bench/<name>.md`; then `artifacts/bench/REPORT.md` is rebuilt
    /// from all of them (goals table first; benchmarks not run now keep their last report,
    /// marked with its date).
    which: Option<String>,
    /// Smoke run: 1 s per measurement, 1 repetition.
    #[arg(long)]
    quick: bool,
    /// Seconds per measurement (default 4, or 1 with --quick).
    #[arg(long)]
    duration: Option<u64>,
    /// Repetitions of every measurement; the median is reported (default 3, or 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Skip setup and build (use the binaries already built).
    #[arg(long)]
    no_build: bool,
    /// Pin the client to CPU 0 and the server to CPU 1 (iperf3 -A, sched_setaffinity).
    #[arg(long)]
    pin: bool,
    /// Monitor aggregation of the agent in configuration (b): none, medium, maximum.
    #[arg(long, default_value = "medium")]
    monitor_aggregation: String,
}

/// Set by Ctrl-C / SIGTERM: the benchmark stops at the next check and cleans up.
static STOP: AtomicBool = AtomicBool::new(false);

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Entry point.
pub fn run(a: BenchArgs) -> Result<()> {
    let which = a.which.as_deref().unwrap_or("all");
    if which == "report" {
        let dir = crate::root().join("artifacts/bench");
        let path = report::write(&dir, BENCHMARKS, &[])?;
        eprintln!("[bench] combined report rebuilt: {}", path.display());
        return Ok(());
    }
    let selected: Vec<&str> = match which {
        "all" => BENCHMARKS.to_vec(),
        w if BENCHMARKS.contains(&w) => vec![w],
        w => bail!(
            "unknown benchmark {w:?}; known benchmarks: {} (or `all`, the default, or `report`)",
            BENCHMARKS.join(", ")
        ),
    };
    let opts = Opts {
        secs: a.duration.unwrap_or(if a.quick { 1 } else { 4 }).max(1),
        reps: a.reps.unwrap_or(if a.quick { 1 } else { 3 }).max(1),
        pin: a.pin && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        aggregation: a.monitor_aggregation.clone(),
    };
    crate::require_root()?;
    if !a.no_build {
        crate::setup()?;
        eprintln!("[bench] building the agent and its eBPF datapath (release)…");
        crate::build_release()?;
    }
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("signal handler")?;
    for &b in &selected {
        match b {
            "datapath" => datapath(&opts)?,
            "agent" => agent(&opts)?,
            "relay" => relay(&opts)?,
            "lb" => lb::run(&opts)?,
            "ui" => ui::run(&opts)?,
            other => unreachable!("benchmark {other} is listed but not dispatched"),
        }
    }
    let dir = crate::root().join("artifacts/bench");
    fs::create_dir_all(&dir)?;
    let path = report::write(&dir, BENCHMARKS, &selected)?;
    eprintln!(
        "[bench] combined report (every benchmark's goals and sections) written to {}",
        path.display()
    );
    Ok(())
}

/// Durations of a run.
#[derive(Clone, Debug)]
struct Opts {
    /// Seconds per measurement.
    secs: u64,
    /// Repetitions (median reported).
    reps: usize,
    /// Client on CPU 0, server on CPU 1.
    pin: bool,
    /// `--monitor-aggregation` of the agents.
    aggregation: String,
}

/// CPU of the client (`CLIENT_CPU`) and the server (`SERVER_CPU`) with `--pin`.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

/// Pins the calling thread to `cpu` (if `pin`).
fn pin_thread(pin: bool, cpu: usize) -> io::Result<()> {
    if !pin {
        return Ok(());
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity(0 = this thread) get a
    // pointer to it and its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The datapath benchmark: topology, policies, configurations.
// ---------------------------------------------------------------------------------------------

/// The one port every measurement uses (iperf3, RR and CRR servers run one after the other), so
/// that "1 entry" really is one policy entry / one iptables rule.
const PORT: u16 = 5201;
/// The 10,000 extra allowed ports of the wide configurations (two rules: at most 8192 ports per
/// range in a CiliumNetworkPolicy).
const WIDE_RANGES: [(u16, u16); 2] = [(20000, 27999), (28000, 29999)];
const WIDE_PORTS: usize = 10_000;
const CLIENT: &str = "bench/client";
const SERVER: &str = "bench/server";
const NODE: &str = "bench-node";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 20);

fn topology_yaml() -> String {
    format!(
        "# Periscope datapath benchmark: two pods on one node.\n\
         nodes: [{{name: {NODE}}}]\n\
         pods:\n  \
           - {{name: client, namespace: bench, node: {NODE}, labels: {{app: client}}, ips: [{CLIENT_IP}]}}\n  \
           - {{name: server, namespace: bench, node: {NODE}, labels: {{app: server}}, ips: [{SERVER_IP}]}}\n"
    )
}

fn policy_yaml(wide: bool) -> String {
    let mut ports = format!("            - {{port: \"{PORT}\", protocol: TCP}}\n");
    if wide {
        for (from, to) in WIDE_RANGES {
            let _ = writeln!(
                ports,
                "            - {{port: \"{from}\", endPort: {to}, protocol: TCP}}"
            );
        }
    }
    format!(
        "apiVersion: cilium.io/v2\n\
         kind: CiliumNetworkPolicy\n\
         metadata:\n  name: server-allow-client\n  namespace: bench\n\
         spec:\n  \
           endpointSelector:\n    matchLabels:\n      app: server\n  \
           ingress:\n    \
             - fromEndpoints:\n        - matchLabels:\n            app: client\n      \
               toPorts:\n        - ports:\n{ports}"
    )
}

/// iptables-restore input equivalent to the policy (in the node's FORWARD chain).
fn iptables_rules(wide: bool) -> String {
    let mut r =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    r.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    let allow = |r: &mut String, port: u16| {
        let _ = writeln!(
            r,
            "-A FORWARD -s {CLIENT_IP}/32 -d {SERVER_IP}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
        );
    };
    if wide {
        for (from, to) in WIDE_RANGES {
            for port in from..=to {
                allow(&mut r, port);
            }
        }
    }
    allow(&mut r, PORT);
    let _ = writeln!(r, "-A FORWARD -d {SERVER_IP}/32 -j DROP");
    r.push_str("COMMIT\n");
    r
}

/// A configuration under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    /// (a) Nothing attached.
    Plain,
    /// (b) The Periscope datapath; `true`: with the 10,000 extra entries.
    Periscope(bool),
    /// (c) iptables; `true`: with the 10,000 extra rules.
    Iptables(bool),
}

impl Setup {
    const ALL: [Setup; 5] = [
        Setup::Plain,
        Setup::Periscope(false),
        Setup::Periscope(true),
        Setup::Iptables(false),
        Setup::Iptables(true),
    ];

    fn key(self) -> &'static str {
        match self {
            Setup::Plain => "a",
            Setup::Periscope(false) => "b1",
            Setup::Periscope(true) => "b10k",
            Setup::Iptables(false) => "c1",
            Setup::Iptables(true) => "c10k",
        }
    }

    fn wide(self) -> bool {
        matches!(self, Setup::Periscope(true) | Setup::Iptables(true))
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    /// iperf3, bits/s.
    Throughput,
    /// Transactions/s on one connection.
    Rr,
    /// Connections/s.
    Crr,
}

impl Metric {
    const ALL: [Metric; 3] = [Metric::Throughput, Metric::Rr, Metric::Crr];

    /// Throughput and RR are compared at one entry; CRR at both sizes.
    fn applies(self, s: Setup) -> bool {
        self == Metric::Crr || !s.wide()
    }

    fn name(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput",
            Metric::Rr => "RR",
            Metric::Crr => "CRR",
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Metric::Throughput => format!("{:.2} Gbit/s", v / 1e9),
            Metric::Rr | Metric::Crr => format!("{}/s", group_digits(v.round() as u64)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and files cleaned up on drop.
// ---------------------------------------------------------------------------------------------

/// A child process that is killed (SIGKILL) and reaped when dropped.
struct Proc(Option<Child>);

impl Proc {
    /// Waits up to `timeout` for the process to exit by itself.
    fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(c) = self.0.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.0 = None;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `sig` to a process we started.
fn signal(c: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(c.id() as i32, sig) };
}

/// SIGTERM, then SIGKILL after 5 s.
fn terminate(c: &mut Child) {
    signal(c, libc::SIGCONT);
    signal(c, libc::SIGTERM);
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

/// Runs `cmd` to completion with its output captured; kills it after `timeout`.
fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out.with_context(|| format!("running {what}"))?),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our child; it has not been reaped (no result yet).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            bail!("{what} did not finish within {timeout:?}")
        }
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// The last 30 lines of a log file (empty when there is none or it cannot be read).
fn log_tail(path: Option<&Path>) -> String {
    let text = path
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Loads `rules` with `iptables-restore` inside the network namespace `netns`.
fn iptables_restore(netns: &str, rules: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "iptables-restore"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iptables-restore")?;
    child
        .stdin
        .take()
        .context("stdin of iptables-restore")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "iptables-restore in {netns}: {}",
        stderr_of(&out)
    );
    Ok(())
}

/// The benchmark's scratch directory (topology, policies, agent state and logs); removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// A test bed in one configuration.
// ---------------------------------------------------------------------------------------------

/// One configuration on its own test bed. Dropping it stops the agent, deletes the namespaces
/// (and with them the veths, programs and iptables rules) and removes the bpffs pins.
struct Bed {
    setup: Setup,
    agent: Option<Child>,
    agent_log: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    testbed: Option<Testbed>,
    bpffs: Option<PathBuf>,
    /// Entries of the server's policy map (Periscope).
    policy_entries: Option<usize>,
    /// Rules in the node's FORWARD chain (iptables).
    iptables_rules: Option<usize>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            terminate(&mut c);
        }
        if let Some(tb) = self.testbed.take() {
            let id = tb.id().to_string();
            if let Err(e) = tb.teardown() {
                eprintln!("[bench] teardown of test bed {id}: {e}");
            }
        }
        if let Some(dir) = self.bpffs.take()
            && let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!("[bench] removing {}: {e}", dir.display());
        }
    }
}

impl Bed {
    fn testbed(&self) -> &Testbed {
        self.testbed.as_ref().expect("test bed exists until drop")
    }

    fn client(&self) -> &PodHandle {
        self.testbed().pod(CLIENT)
    }

    fn server(&self) -> &PodHandle {
        self.testbed().pod(SERVER)
    }

    /// Creates the test bed and puts the configuration in place, then checks that it is in force.
    fn up(
        setup: Setup,
        opts: &Opts,
        topology: &Topology,
        topo_path: &Path,
        work: &Path,
    ) -> Result<Bed> {
        let mut bed = Bed {
            setup,
            agent: None,
            agent_log: None,
            state_dir: None,
            testbed: None,
            bpffs: None,
            policy_entries: None,
            iptables_rules: None,
        };
        let tb = Testbed::create(topology, TestbedOptions::default())
            .with_context(|| format!("creating the test bed of configuration {}", setup.key()))?;
        bed.testbed = Some(tb);
        // CRR closes with RST (no TIME_WAIT), and has the whole port range to cycle through.
        periscope_testbed::netns::write_sysctls(
            &bed.client().netns_path,
            &[
                ("net.ipv4.ip_local_port_range", "1024 65535"),
                ("net.ipv4.tcp_tw_reuse", "1"),
            ],
        )
        .context("client pod sysctls")?;
        match setup {
            Setup::Plain => {}
            Setup::Periscope(wide) => bed.start_agent(wide, &opts.aggregation, topo_path, work)?,
            Setup::Iptables(wide) => bed.load_iptables(wide)?,
        }
        bed.verify()?;
        Ok(bed)
    }

    fn start_agent(
        &mut self,
        wide: bool,
        aggregation: &str,
        topo_path: &Path,
        work: &Path,
    ) -> Result<()> {
        let key = self.setup.key();
        let policy = work.join(format!("policy-{key}.yaml"));
        fs::write(&policy, policy_yaml(wide))?;
        let state = work.join(format!("state-{key}"));
        let log = work.join(format!("agent-{key}.log"));
        let bpffs = PathBuf::from(format!(
            "/sys/fs/bpf/periscope/bench-{}-{key}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&bpffs);
        self.bpffs = Some(bpffs.clone());
        self.state_dir = Some(state.clone());
        self.agent_log = Some(log.clone());
        let child = Command::new(crate::agent_bin())
            .arg("--topology")
            .arg(topo_path)
            .args(["--node", NODE])
            .arg("--policy")
            .arg(&policy)
            .arg("--netns")
            .arg(self.testbed().node_netns_path(NODE))
            .arg("--bpffs-root")
            .arg(&bpffs)
            .arg("--state-dir")
            .arg(&state)
            .args(["--monitor-aggregation", aggregation, "--output", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", crate::agent_bin().display()))?;
        self.agent = Some(child);

        // Ready when the status file exists.
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = state.join("status.json");
        while !status.exists() {
            check_stop()?;
            if let Some(Ok(Some(st))) = self.agent.as_mut().map(Child::try_wait) {
                bail!(
                    "agent ({key}) exited with {st}; its log:\n{}",
                    self.agent_log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "agent ({key}) not ready after 60 s; its log:\n{}",
                    self.agent_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let doc = self.status()?;
        if let Some(err) = doc.get("error").and_then(|e| e.as_str()) {
            bail!("agent ({key}) rejected its input: {err}");
        }

        // The server's policy map must hold the policy (≥ 10,000 entries for the wide one).
        let want = if wide { WIDE_PORTS } else { 1 };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            check_stop()?;
            let n = self.count_policy_entries()?;
            if n >= want {
                self.policy_entries = Some(n);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "policy map of {SERVER} ({key}) holds {n} entries, expected at least {want}; agent log:\n{}",
                    self.agent_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Entries of the server endpoint's pinned policy map (`bpftool map dump`).
    fn count_policy_entries(&self) -> Result<usize> {
        let ep_dir = self
            .bpffs
            .as_ref()
            .context("no bpffs root")?
            .join("ep")
            .join(&self.server().host_ifname);
        let Ok(entries) = fs::read_dir(&ep_dir) else {
            return Ok(0);
        };
        let Some(map) = entries.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("policy_"))
        }) else {
            return Ok(0);
        };
        let out = output_with_timeout(
            Command::new("bpftool")
                .args(["-j", "map", "dump", "pinned"])
                .arg(&map),
            Duration::from_secs(30),
        )?;
        ensure!(
            out.status.success(),
            "bpftool map dump pinned {}: {}",
            map.display(),
            stderr_of(&out)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
        Ok(v.as_array().map_or(0, Vec::len))
    }

    fn status(&self) -> Result<serde_json::Value> {
        let path = self
            .state_dir
            .as_ref()
            .context("no agent")?
            .join("status.json");
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    fn agent_log_tail(&self) -> String {
        log_tail(self.agent_log.as_deref())
    }

    fn load_iptables(&mut self, wide: bool) -> Result<()> {
        let netns = self.testbed().node(NODE).netns.clone();
        iptables_restore(&netns, &iptables_rules(wide))?;
        let out = self
            .testbed()
            .node(NODE)
            .exec("iptables", ["-S", "FORWARD"]);
        ensure!(
            out.status.success(),
            "iptables -S FORWARD in {netns}: {}",
            stderr_of(&out)
        );
        let rules = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A FORWARD"))
            .count();
        let want = 3 + if wide { WIDE_PORTS } else { 0 };
        ensure!(
            rules >= want,
            "FORWARD chain in {netns} has {rules} rules, expected {want}"
        );
        self.iptables_rules = Some(rules);
        Ok(())
    }

    /// The allowed port echoes; a port the policy does not allow is dropped (a) refused in the
    /// baseline; a port of the wide range is allowed (refused: nothing listens) only when wide.
    fn verify(&self) -> Result<()> {
        let key = self.setup.key();
        let srv = TcpEchoServer::try_start(self.server(), PORT).context("echo server")?;
        let r = traffic::tcp_probe(
            self.client(),
            self.server().v4(PORT),
            Duration::from_secs(3),
        );
        ensure!(
            r.is_echoed(),
            "{key}: client → server:{PORT} should be allowed, got {r:?}"
        );
        drop(srv);
        let t = Duration::from_millis(700);
        let filtered = self.setup != Setup::Plain;
        for (port, allowed) in [
            (9, !filtered),
            (WIDE_RANGES[1].1, !filtered || self.setup.wide()),
        ] {
            let r = traffic::tcp_probe(self.client(), self.server().v4(port), t);
            let ok = if allowed {
                r.is_refused()
            } else {
                r.is_timed_out()
            };
            ensure!(
                ok,
                "{key}: client → server:{port} (nothing listens) should be {}, got {r:?}",
                if allowed {
                    "refused (allowed)"
                } else {
                    "dropped (timeout)"
                }
            );
        }
        Ok(())
    }

    /// Lets this bed's agent run and pauses it (SIGSTOP) or resumes it (SIGCONT).
    fn set_running(&self, running: bool) {
        if let Some(c) = &self.agent {
            signal(
                c,
                if running {
                    libc::SIGCONT
                } else {
                    libc::SIGSTOP
                },
            );
        }
    }

    fn measure(&self, m: Metric, opts: &Opts) -> Result<Sample> {
        let d = Duration::from_secs(opts.secs);
        match m {
            Metric::Throughput => Ok(Sample {
                value: self.iperf3(opts.secs, opts.pin)?,
                errors: 0,
            }),
            Metric::Rr => Ok(Sample {
                value: self.rr(d, opts.pin)?,
                errors: 0,
            }),
            Metric::Crr => self.crr(d, opts.pin),
        }
    }

    /// iperf3 (one TCP stream, client → server) for `secs`; received bits/s.
    fn iperf3(&self, secs: u64, pin: bool) -> Result<f64> {
        let server = self.server();
        let mut srv = Proc(Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &server.netns,
                    "iperf3",
                    "-s",
                    "-1",
                    "-p",
                    &PORT.to_string(),
                ])
                .args(pin.then(|| format!("-A{SERVER_CPU}")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 -s")?,
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = server.exec("ss", ["-Hltn", &format!("sport = :{PORT}")]);
            if out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                break;
            }
            ensure!(!srv.exited(), "iperf3 -s exited at once");
            ensure!(
                Instant::now() < deadline,
                "iperf3 -s is not listening after 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let client = self.client();
        let out = output_with_timeout(
            Command::new("ip")
                .args(["netns", "exec", &client.netns, "iperf3", "-c"])
                .args([
                    SERVER_IP.to_string(),
                    "-p".into(),
                    PORT.to_string(),
                    "-t".into(),
                    secs.to_string(),
                    "-J".into(),
                    "--connect-timeout".into(),
                    "3000".into(),
                ])
                .args(pin.then(|| format!("-A{CLIENT_CPU}"))),
            Duration::from_secs(secs + 20),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "iperf3 -c output is not JSON ({}): {}",
                out.status,
                stderr_of(&out)
            )
        })?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("iperf3 -c: {e}");
        }
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON without end.sum_received.bits_per_second")?;
        srv.wait_for_exit(Duration::from_secs(5));
        Ok(bps)
    }

    /// Starts the ping-pong server on the server pod: one connection at a time, echoes every byte
    /// until the peer closes (or resets) it. Used by RR and CRR.
    fn pingpong_server(&self, pin: bool) -> Result<PingPongServer> {
        let sock = self.server().try_run(|| -> io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())?;
            s.listen(1024)?;
            // accept() honours SO_RCVTIMEO: the loop looks at `stop` every 100 ms.
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("bench-pingpong".into())
                .spawn(move || {
                    if let Err(e) = pin_thread(pin, SERVER_CPU) {
                        eprintln!("[bench] cannot pin the server to CPU {SERVER_CPU}: {e}");
                    }
                    pingpong_serve(&sock, &stop)
                })?
        };
        Ok(PingPongServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Request/response: one connection, 1-byte ping-pong for `d`; transactions/s.
    fn rr(&self, d: Duration, pin: bool) -> Result<f64> {
        let _srv = self.pingpong_server(pin)?;
        let dst = self.server().v4(PORT);
        let (n, elapsed) = self
            .client()
            .try_run(move || -> io::Result<(u64, Duration)> {
                pin_thread(pin, CLIENT_CPU)?;
                let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.set_write_timeout(Some(Duration::from_secs(2)))?;
                let mut b = [0u8; 1];
                let mut n = 0u64;
                let start = Instant::now();
                let end = start + d;
                loop {
                    s.write_all(b"x")?;
                    s.read_exact(&mut b)?;
                    n += 1;
                    if Instant::now() >= end || STOP.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Ok((n, start.elapsed()))
            })??;
        check_stop()?;
        Ok(n as f64 / elapsed.as_secs_f64())
    }

    /// New connections: connect, 1 byte each way, close with RST, for `d`; connections/s.
    fn crr(&self, d: Duration, pin: bool) -> Result<Sample> {
        let _srv = self.pingpong_server(pin)?;
        let dst = self.server().v4(PORT);
        let (ok, errors, first_error, elapsed) = self.client().try_run(move || {
            if let Err(e) = pin_thread(pin, CLIENT_CPU) {
                eprintln!("[bench] cannot pin the client to CPU {CLIENT_CPU}: {e}");
            }
            let mut ok = 0u64;
            let mut errors = 0u64;
            let mut first_error = None;
            let start = Instant::now();
            let end = start + d;
            while Instant::now() < end && !STOP.load(Ordering::Relaxed) {
                match one_connection(dst) {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (ok, errors, first_error, start.elapsed())
        })?;
        check_stop()?;
        ensure!(
            ok > 0,
            "{}: no connection succeeded ({errors} failed; first error: {})",
            self.setup.key(),
            first_error.unwrap_or_default()
        );
        if let Some(e) = first_error {
            eprintln!(
                "[bench] {}: {errors} of {} connections failed, first: {e}",
                self.setup.key(),
                ok + errors
            );
        }
        Ok(Sample {
            value: ok as f64 / elapsed.as_secs_f64(),
            errors,
        })
    }
}

/// One CRR transaction. SO_LINGER 0: close sends RST, so the client keeps no TIME_WAIT and its
/// ports cycle freely. connect() is bounded by SO_SNDTIMEO.
fn one_connection(dst: SocketAddr) -> io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_linger(Some(Duration::ZERO))?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.connect(&dst.into())?;
    let mut t = TcpStream::from(s);
    t.set_nodelay(true)?;
    t.write_all(b"x")?;
    let mut b = [0u8; 1];
    t.read_exact(&mut b)?;
    Ok(())
}

struct PingPongServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PingPongServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pingpong_serve(listener: &Socket, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => continue, // timeout (stop check) or a connection reset before accept
        };
        let mut t = TcpStream::from(conn);
        if t.set_nodelay(true).is_err()
            || t.set_read_timeout(Some(Duration::from_millis(200)))
                .is_err()
        {
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            match t.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if t.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break, // reset: the CRR client closes with RST
            }
        }
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    value: f64,
    /// Failed connection attempts (CRR).
    errors: u64,
}

// ---------------------------------------------------------------------------------------------
// The run and the report.
// ---------------------------------------------------------------------------------------------

fn datapath(opts: &Opts) -> Result<()> {
    let started = Instant::now();
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_before = loadavg();
    let work = WorkDir(PathBuf::from(format!(
        "/run/periscope-bench-{}",
        std::process::id()
    )));
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir_all(&work.0).with_context(|| format!("creating {}", work.0.display()))?;
    let topo_path = work.0.join("topology.yaml");
    fs::write(&topo_path, topology_yaml())?;
    let topology = Topology::load(&topo_path)?;

    eprintln!(
        "[bench] datapath: {} configurations, {} s per measurement, {} repetition(s)",
        Setup::ALL.len(),
        opts.secs,
        opts.reps
    );
    let mut beds = Vec::new();
    for s in Setup::ALL {
        check_stop()?;
        let t = Instant::now();
        let bed = Bed::up(s, opts, &topology, &topo_path, &work.0)?;
        eprintln!(
            "[bench] configuration {} ready in {:.1} s{}{}",
            s.key(),
            t.elapsed().as_secs_f64(),
            bed.policy_entries
                .map(|n| format!(", policy map: {n} entries"))
                .unwrap_or_default(),
            bed.iptables_rules
                .map(|n| format!(", FORWARD chain: {n} rules"))
                .unwrap_or_default(),
        );
        beds.push(bed);
    }

    let mut samples: BTreeMap<(Metric, Setup), Vec<Sample>> = BTreeMap::new();
    for rep in 0..opts.reps {
        for m in Metric::ALL {
            let mut order: Vec<&Bed> = beds.iter().filter(|b| m.applies(b.setup)).collect();
            let k = rep % order.len();
            order.rotate_left(k);
            for bed in order {
                check_stop()?;
                for b in &beds {
                    b.set_running(std::ptr::eq(b, bed));
                }
                std::thread::sleep(Duration::from_millis(300));
                let s = bed.measure(m, opts).with_context(|| {
                    format!("{} of configuration {}", m.name(), bed.setup.key())
                })?;
                eprintln!(
                    "[bench] round {}/{}: {:>10} {:<4} {}",
                    rep + 1,
                    opts.reps,
                    m.name(),
                    bed.setup.key(),
                    m.format(s.value)
                );
                samples.entry((m, bed.setup)).or_default().push(s);
            }
        }
    }
    for b in &beds {
        b.set_running(true);
    }
    // Let the agents write a fresh status (every second) with their counters.
    std::thread::sleep(Duration::from_millis(1500));
    let mut notes = Vec::new();
    for b in &beds {
        if let Some(agent) = &b.agent
            && let Ok(st) = b.status()
        {
            let c = &st["counters"];
            let cpu = process_cpu_secs(agent.id()).map_or("?".into(), |s| format!("{s:.1} s"));
            notes.push(format!(
                "agent {} (CPU time {cpu}, user + system, paused while other configurations ran): events sent {}, lost in kernel {}, lost in ring {}, lost in queue {}, drops {}, CT entries {}",
                b.setup.key(),
                c["events_sent"],
                c["events_lost_in_kernel"],
                c["events_lost_ring"],
                c["events_lost_queue"],
                c["dropped"],
                c["ct_entries"]
            ));
        }
    }
    let facts = Facts {
        date,
        load_before,
        load_after: loadavg(),
        policy_entries: beds.iter().map(|b| (b.setup, b.policy_entries)).collect(),
        iptables_rules: beds.iter().map(|b| (b.setup, b.iptables_rules)).collect(),
        notes,
    };
    eprintln!("[bench] tearing down");
    drop(beds);
    drop(work);

    let report = report(opts, &samples, &facts, started.elapsed());
    println!("{report}");
    let dir = crate::root().join("artifacts/bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join("datapath.md");
    fs::write(&path, &report)?;
    eprintln!("[bench] report written to {}", path.display());
    Ok(())
}

struct Facts {
    date: String,
    load_before: String,
    load_after: String,
    policy_entries: BTreeMap<Setup, Option<usize>>,
    iptables_rules: BTreeMap<Setup, Option<usize>>,
    notes: Vec<String>,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(
    opts: &Opts,
    samples: &BTreeMap<(Metric, Setup), Vec<Sample>>,
    facts: &Facts,
    runtime: Duration,
) -> String {
    use Setup::*;
    let med = |m: Metric, s: Setup| {
        samples
            .get(&(m, s))
            .and_then(|v| median(&v.iter().map(|x| x.value).collect::<Vec<_>>()))
    };
    let cell = |m: Metric, s: Setup| med(m, s).map_or_else(|| "—".to_string(), |v| m.format(v));
    let mut r = String::new();
    let _ = writeln!(r, "## Datapath benchmark (`cargo xtask bench datapath`)\n");
    if opts.reps < 3 || opts.secs < 3 {
        let _ = writeln!(
            r,
            "**Smoke run ({} s × {}): numbers are indicative only.**\n",
            opts.secs, opts.reps
        );
    }
    let _ = writeln!(
        r,
        "{} · Linux {} · {} CPUs ({}) · {} · {} · {} s per measurement, median of {} (interleaved rounds) · load average before {} / after {} · total {:.0} s\n",
        facts.date,
        read_trim("/proc/sys/kernel/osrelease"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        command_line("iperf3", &["--version"]),
        command_line("iptables", &["-V"]),
        opts.secs,
        opts.reps,
        facts.load_before,
        facts.load_after,
        runtime.as_secs_f64(),
    );
    let _ = writeln!(
        r,
        "One node, pods `{CLIENT}` ({CLIENT_IP}, app=client) → `{SERVER}` ({SERVER_IP}, app=server), IPv4, TCP port {PORT}; each configuration on its own fresh test bed; {}.\n\
         (a) nothing attached · (b) Periscope: policy + conntrack + flow events, monitor aggregation {} · \
         (c) iptables in the node's FORWARD chain: conntrack ESTABLISHED,RELATED accept, allow rule(s), drop.\n",
        if opts.pin {
            format!("client pinned to CPU {CLIENT_CPU}, server to CPU {SERVER_CPU}")
        } else {
            "client and server not pinned".to_string()
        },
        opts.aggregation,
    );
    let _ = writeln!(
        r,
        "| Measurement | (a) no program | (b) Periscope | (c) iptables |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|");
    let _ = writeln!(
        r,
        "| TCP throughput (iperf3, 1 stream) | {} | {} | {} |",
        cell(Metric::Throughput, Plain),
        cell(Metric::Throughput, Periscope(false)),
        cell(Metric::Throughput, Iptables(false))
    );
    let _ = writeln!(
        r,
        "| Request/response (1 connection, 1 byte each way) | {} | {} | {} |",
        cell(Metric::Rr, Plain),
        cell(Metric::Rr, Periscope(false)),
        cell(Metric::Rr, Iptables(false))
    );
    let _ = writeln!(
        r,
        "| New connections, 1 policy entry / allow rule | {} | {} | {} |",
        cell(Metric::Crr, Plain),
        cell(Metric::Crr, Periscope(false)),
        cell(Metric::Crr, Iptables(false))
    );
    let _ = writeln!(
        r,
        "| New connections, 10,000 more policy entries / rules | — | {} | {} |",
        cell(Metric::Crr, Periscope(true)),
        cell(Metric::Crr, Iptables(true))
    );
    let _ = writeln!(r);
    let _ = writeln!(r, "| Ratio | Measured | Goal | Result |");
    let _ = writeln!(r, "|---|---:|---:|---|");
    let rows: [(&str, Metric, Setup, Setup, Option<f64>); 9] = [
        (
            "Throughput (b)/(a)",
            Metric::Throughput,
            Periscope(false),
            Plain,
            Some(0.90),
        ),
        (
            "Throughput (c)/(a)",
            Metric::Throughput,
            Iptables(false),
            Plain,
            None,
        ),
        (
            "Request/response (b)/(a)",
            Metric::Rr,
            Periscope(false),
            Plain,
            Some(0.90),
        ),
        (
            "Request/response (c)/(a)",
            Metric::Rr,
            Iptables(false),
            Plain,
            None,
        ),
        (
            "New connections (b1)/(a)",
            Metric::Crr,
            Periscope(false),
            Plain,
            None,
        ),
        (
            "New connections (b10k)/(b1)",
            Metric::Crr,
            Periscope(true),
            Periscope(false),
            Some(0.95),
        ),
        (
            "New connections (b10k)/(c10k)",
            Metric::Crr,
            Periscope(true),
            Iptables(true),
            Some(5.0),
        ),
        (
            "New connections (c1)/(a)",
            Metric::Crr,
            Iptables(false),
            Plain,
            None,
        ),
        (
            "New connections (c10k)/(c1)",
            Metric::Crr,
            Iptables(true),
            Iptables(false),
            None,
        ),
    ];
    for (name, m, num, den, goal) in rows {
        let ratio = match (med(m, num), med(m, den)) {
            (Some(n), Some(d)) if d > 0.0 => Some(n / d),
            _ => None,
        };
        let measured = ratio.map_or_else(|| "—".into(), |x| format!("{x:.2}×"));
        let (goal_s, result) = match (goal, ratio) {
            (Some(g), Some(x)) => (format!("≥ {g:.2}×"), if x >= g { "PASS" } else { "MISS" }),
            (Some(g), None) => (format!("≥ {g:.2}×"), "—"),
            (None, _) => ("(reference)".into(), ""),
        };
        let _ = writeln!(r, "| {name} | {measured} | {goal_s} | {result} |");
    }
    let _ = writeln!(r, "\nDetails:\n");
    let entries = |s: Setup| {
        facts
            .policy_entries
            .get(&s)
            .copied()
            .flatten()
            .map_or("?".into(), |n| group_digits(n as u64))
    };
    let rules = |s: Setup| {
        facts
            .iptables_rules
            .get(&s)
            .copied()
            .flatten()
            .map_or("?".into(), |n| group_digits(n as u64))
    };
    let _ = writeln!(
        r,
        "- Policy map of `{SERVER}` (bpftool map dump): b1 {} entries, b10k {} entries. \
         FORWARD chain (iptables -S): c1 {} rules, c10k {} rules (the 10,000 non-matching port rules come before the matching one).",
        entries(Periscope(false)),
        entries(Periscope(true)),
        rules(Iptables(false)),
        rules(Iptables(true)),
    );
    let _ = writeln!(
        r,
        "- New connections: one client thread, connect + 1 byte each way + close with RST (SO_LINGER 0: no TIME_WAIT); client port range 1024-65535; the server serves one connection at a time."
    );
    let errors: Vec<String> = samples
        .iter()
        .filter(|(_, v)| v.iter().any(|s| s.errors > 0))
        .map(|((m, s), v)| {
            format!(
                "{} {}: {}",
                m.name(),
                s.key(),
                v.iter().map(|x| x.errors).sum::<u64>()
            )
        })
        .collect();
    let _ = writeln!(
        r,
        "- Failed connection attempts: {}",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        }
    );
    for n in &facts.notes {
        let _ = writeln!(r, "- {n}");
    }
    let _ = writeln!(
        r,
        "- Samples (in measurement order, spread = (max − min)/median):"
    );
    for ((m, s), v) in samples {
        let vals: Vec<f64> = v.iter().map(|x| x.value).collect();
        let spread = match (
            median(&vals),
            vals.iter().copied().reduce(f64::max),
            vals.iter().copied().reduce(f64::min),
        ) {
            (Some(md), Some(hi), Some(lo)) if md > 0.0 => format!("{:.1}%", (hi - lo) / md * 100.0),
            _ => "—".into(),
        };
        let _ = writeln!(
            r,
            "  - {} {}: {} (spread {spread})",
            m.name(),
            s.key(),
            vals.iter()
                .map(|x| m.format(*x))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    r
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat`).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn loadavg() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// First line of a command's output (stdout, else stderr), or `?`.
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// `bench agent`: the agent's per-event hot path (decode + enrich, ring insert, filter) with
/// criterion, reported as events per second on one core.
fn agent(opts: &Opts) -> Result<()> {
    let measure = if opts.reps <= 1 { "2" } else { "5" };
    let out = Command::new("cargo")
        .current_dir(crate::root())
        .args([
            "bench",
            "-p",
            "periscope-agent",
            "--bench",
            "pipeline",
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            measure,
        ])
        .output()
        .context("cargo bench")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "cargo bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // criterion prints `agent/<name>  time: [...]` then `thrpt: [lo mid hi]`.
    let mut rows = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line
            .split_whitespace()
            .next()
            .filter(|w| w.starts_with("agent/"))
        {
            name = Some(n.trim_start_matches("agent/").to_string());
        }
        if let (Some(n), Some(rest)) = (&name, line.trim().strip_prefix("thrpt:")) {
            let parts: Vec<&str> = rest
                .trim_matches(|c| c == ' ' || c == '[' || c == ']')
                .split_whitespace()
                .collect();
            if parts.len() >= 4 {
                rows.push((n.clone(), format!("{} {}", parts[2], parts[3])));
                name = None;
            }
        }
    }
    let goal = 1.0e6;
    let per_sec = |v: &str| -> f64 {
        let mut it = v.split_whitespace();
        let x: f64 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
        match it.next().unwrap_or("") {
            "Gelem/s" => x * 1e9,
            "Melem/s" => x * 1e6,
            "Kelem/s" => x * 1e3,
            _ => x,
        }
    };
    let mut md = String::from("## Agent benchmark (`cargo xtask bench agent`)\n\n");
    md += "Per-event hot path on one core (criterion, 1,024 synthetic events against a 200-pod state; `decode+dns+ring` is the whole pipeline stage: decode and enrich, name from a DNS cache that knows a quarter of the pods, insert into the ring).\n\n";
    md += "| Stage | Events/s | Goal | Result |\n|---|---:|---:|---|\n";
    for (n, v) in &rows {
        let (g, r) = if n == "decode+dns+ring" {
            (
                "≥ 1,000,000".to_string(),
                if per_sec(v) >= goal { "PASS" } else { "MISS" }.to_string(),
            )
        } else {
            ("(reference)".into(), String::new())
        };
        md += &format!("| {n} | {v} | {g} | {r} |\n");
    }
    md += &agent_cpu_at_fixed_rate(opts)?;
    print!("{md}");
    std::fs::create_dir_all(crate::root().join("artifacts/bench"))?;
    std::fs::write(crate::root().join("artifacts/bench/agent.md"), md)?;
    Ok(())
}

/// Runs `cmd` (cargo), returning its stdout; fails with its stderr.
fn cargo_output(args: &[&str], envs: &[(&str, String)]) -> Result<String> {
    let out = Command::new("cargo")
        .current_dir(crate::root())
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "cargo {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of `key=` in a line of `key=value` words.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// The relay: merge throughput (4 fake agents → relay → client, over real gRPC, vs one agent
/// read directly) and ClickHouse ingest (the writer vs `clickhouse-client … FORMAT RowBinary`
/// inserting the same rows into a private 18.16 server), same run.
fn relay(opts: &Opts) -> Result<()> {
    let flows = if opts.reps <= 1 { 50_000 } else { 100_000 };
    let rows = if opts.reps <= 1 { 50_000 } else { 200_000 };
    eprintln!("[bench] relay merge ({flows} flows per agent)…");
    let merge = cargo_output(
        &["bench", "-p", "periscope-relay", "--bench", "merge"],
        &[("PERISCOPE_BENCH_FLOWS", flows.to_string())],
    )?;
    let line = merge
        .lines()
        .find(|l| l.starts_with("relay-merge"))
        .context("no result line from the merge benchmark")?;
    let direct = field(line, "direct_one_agent").context("direct rate")?;
    let merged = field(line, "merged_four_agents").context("merged rate")?;
    let follow = field(line, "merged_follow").context("follow rate")?;
    // CPU µs per flow of (agents, relay, client), not following and following.
    let cpu = |prefix: &str| -> Result<[f64; 3]> {
        let get = |role: &str| {
            field(line, &format!("{prefix}cpu_us_per_flow_{role}"))
                .with_context(|| format!("{prefix}cpu_us_per_flow_{role}"))
        };
        Ok([get("agents")?, get("relay")?, get("client")?])
    };
    let (cpu_all, cpu_follow) = (cpu("")?, cpu("follow_")?);
    eprintln!("[bench] ClickHouse ingest ({rows} rows)…");
    let ingest = cargo_output(
        &[
            "test",
            "--release",
            "-p",
            "periscope-relay",
            "--test",
            "store",
            "ingest_rate_vs_clickhouse_client",
            "--",
            "--ignored",
            "--nocapture",
        ],
        &[("PERISCOPE_BENCH_ROWS", rows.to_string())],
    )?;
    let line = ingest
        .lines()
        .find(|l| l.starts_with("ingest "))
        .context("no result line from the ingest benchmark")?;
    let rate = |marker: &str| -> Option<f64> {
        let i = line.find(marker)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    let writer = rate(" rows/s (").context("writer rate")?;
    let client = line
        .split("RowBinary ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("client rate")?;
    let mut md = String::from("## Relay benchmark (`cargo xtask bench relay`)\n\n");
    md += &format!(
        "| Measurement | Ours | Baseline (same run) | Ratio | Goal | Result |\n|---|---:|---:|---:|---:|---|\n\
         | Merge, 4 agents → 1 client ({} flows) | {merged:.0} flows/s | one agent read directly: {direct:.0} flows/s | {:.2}× | ≥ 500,000 flows/s | {} |\n\
         | Merge following, 4 agents → 1 client | {follow:.0} flows/s | one agent read directly: {direct:.0} flows/s | {:.2}× | ≥ 500,000 flows/s | {} |\n\
         | ClickHouse ingest ({rows} rows, 18.16) | {writer:.0} rows/s | clickhouse-client RowBinary: {client:.0} rows/s | {:.2}× | ≥ 0.8× | {} |\n",
        flows * 4,
        merged / direct,
        if merged >= 500_000.0 { "PASS" } else { "MISS" },
        follow / direct,
        if follow >= 500_000.0 { "PASS" } else { "MISS" },
        writer / client,
        if writer / client >= 0.8 {
            "PASS"
        } else {
            "MISS"
        },
    );
    md += &format!(
        "\nThe merge runs the fake agents, the relay and the client on the same machine ({} cores): \
         every flow is encoded by an agent, forwarded encoded by the relay (which reads only its time \
         and node), and decoded by the client. Not following, the relay gathers every agent's \
         history before it sends the first flow (the answer is sorted, whatever order the agents \
         send); following, it merges as flows come (sort buffer, drain timeout).\n\n\
         | CPU per flow (µs) | agents | relay | client | all | ceiling on {} cores |\n|---|---:|---:|---:|---:|---:|\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for (what, c) in [("not following", cpu_all), ("following", cpu_follow)] {
        let sum: f64 = c.iter().sum();
        md += &format!(
            "| {what} | {:.2} | {:.2} | {:.2} | {sum:.2} | {:.0} flows/s |\n",
            c[0],
            c[1],
            c[2],
            cores * 1e6 / sum
        );
    }
    md += "\n(ceiling: every core busy with nothing else; the client is one thread, so the rate can \
           never exceed 1 / its CPU per flow either.)\n";
    print!("{md}");
    std::fs::create_dir_all(crate::root().join("artifacts/bench"))?;
    std::fs::write(crate::root().join("artifacts/bench/relay.md"), md)?;
    Ok(())
}

/// End to end on the test bed: the agent's CPU while the datapath reports a fixed 10,000
/// events/s (UDP at 5,000 packets/s, monitor aggregation `none`: two trace events per packet).
fn agent_cpu_at_fixed_rate(opts: &Opts) -> Result<String> {
    use periscope_testbed::agent::Agent;
    let topo = "nodes: [{name: n1}]\npods:\n  - {name: src, namespace: b, node: n1, labels: {app: src}, ips: [10.216.0.1]}\n  - {name: dst, namespace: b, node: n1, labels: {app: dst}, ips: [10.216.0.2]}\n";
    let tb = periscope_testbed::Testbed::from_yaml(topo, Default::default())?;
    let agent = Agent::start_with(
        &tb,
        "n1",
        "",
        &["--monitor-aggregation", "none", "--output", "none"],
        false,
    );
    let pid = agent.pid().context("agent pid")?;
    let secs = if opts.reps <= 1 { 5 } else { 10 };
    let dst = tb.pod("b/dst").v4(9);
    let before_events = agent.counters()["events_read"].as_u64().unwrap_or(0);
    let cpu0 = process_cpu_secs(pid).context("agent cpu")?;
    let start = Instant::now();
    tb.pod("b/src").run(move || -> Result<()> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let period = Duration::from_micros(200); // 5,000 packets/s
        let mut next = Instant::now();
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            let _ = s.send_to(b"periscope", dst);
            next += period;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        Ok(())
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let cpu = process_cpu_secs(pid).context("agent cpu")? - cpu0;
    let events = agent.counters()["events_read"].as_u64().unwrap_or(0) - before_events;
    let rate = events as f64 / elapsed;
    let share = cpu / elapsed * 100.0;
    Ok(format!(
        "\nEnd to end (test bed, aggregation none, {secs} s): {rate:.0} events/s read; agent CPU {share:.1}% of one core \
         (goal ≤ 5% at 10,000 flows/s: {}).\n",
        if share <= 5.0 { "PASS" } else { "MISS" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_digits() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1234567), "1,234,567");
    }

    #[test]
    fn inputs_parse() {
        let t = Topology::parse(&topology_yaml(), Path::new("t.yaml")).unwrap();
        assert_eq!(t.pods.len(), 2);
        let wide = iptables_rules(true);
        assert_eq!(
            wide.lines().filter(|l| l.starts_with("-A FORWARD")).count(),
            3 + WIDE_PORTS
        );
        assert_eq!(
            WIDE_RANGES
                .iter()
                .map(|(a, b)| (b - a + 1) as usize)
                .sum::<usize>(),
            WIDE_PORTS
        );
        assert!(policy_yaml(true).contains("endPort: 27999"));
    }
}

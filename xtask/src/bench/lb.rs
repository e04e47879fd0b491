//! `cargo xtask bench lb`: the new-connection rate through a service (connect to the service
//! address, 1 byte each way, close with RST; `cargo xtask bench datapath`'s CRR), with 10 and
//! with 10,000 services configured, Periscope's datapath against iptables DNAT rules in
//! kube-proxy's layout, in one run:
//!
//! * `p10`, `p10k`  — the agent with its datapath (Maglev, default table size 16381, monitor
//!   aggregation medium, no policy), 10 / 10,000 services in the topology;
//! * `i10`, `i10k`  — no agent; the node's `nat` table as kube-proxy (iptables mode) writes it:
//!   `PREROUTING → KUBE-SERVICES`, one `-d <vip> --dport 80 → KUBE-SVC-*` rule per service, the
//!   service chain picking a `KUBE-SEP-*` chain with `-m statistic --mode random`, the endpoint
//!   chain DNATting. The measured service sits in the middle of KUBE-SERVICES (a service's
//!   expected place in kube-proxy's unordered chain).
//!
//! Every service has the same two backends (pods `bench/be-1`, `bench/be-2`, each running the
//! ping-pong server); the client connects to the measured service's cluster IP. Each
//! configuration gets its own test bed; the measurements are interleaved round-robin (rotating
//! the order every round) and the median of the repetitions is reported, with the goals: ours at
//! 10k ≥ 0.95 × ours at 10, and ≥ 5 × iptables at 10k. The report goes to stdout and
//! `artifacts/bench/lb.md`. Goals missed are reported, not errors.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use periscope_testbed::{Testbed, TestbedOptions};
use periscope_topology::Topology;
use socket2::{Domain, Protocol, Socket, Type};

use super::{
    CLIENT_CPU, Opts, SERVER_CPU, STOP, WorkDir, check_stop, group_digits, iptables_restore,
    median, one_connection, pin_thread, pingpong_serve, signal, stderr_of, terminate,
};

const NODE: &str = "lb-node";
const CLIENT: &str = "bench/client";
const BACKENDS: [&str; 2] = ["bench/be-1", "bench/be-2"];
const BACKEND_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 202, 1, 1), Ipv4Addr::new(10, 202, 1, 2)];
/// The backends' port (the ping-pong servers).
const TARGET_PORT: u16 = 5201;
/// The services' port.
const SERVICE_PORT: u16 = 80;

/// The cluster IP of service `i` (10.96.0.0/16 onwards).
fn vip(i: usize) -> Ipv4Addr {
    let n = 10 * 256 * 256 * 256 + 96 * 256 * 256 + i as u32 + 1;
    Ipv4Addr::from(n)
}

/// The measured service: the middle one.
fn measured(services: usize) -> usize {
    services / 2
}

fn topology_yaml(services: usize) -> String {
    let mut t = format!(
        "# Periscope load-balancer benchmark: a client and two backends on one node.\n\
         nodes: [{{name: {NODE}}}]\n\
         pods:\n  \
           - {{name: client, namespace: bench, node: {NODE}, labels: {{app: client}}, ips: [10.202.0.10]}}\n  \
           - {{name: be-1, namespace: bench, node: {NODE}, labels: {{app: be}}, ips: [{}]}}\n  \
           - {{name: be-2, namespace: bench, node: {NODE}, labels: {{app: be}}, ips: [{}]}}\n",
        BACKEND_IPS[0], BACKEND_IPS[1]
    );
    if services > 0 {
        t.push_str("services:\n");
        for i in 0..services {
            let _ = writeln!(
                t,
                "  - {{name: svc-{i}, namespace: bench, clusterIP: {}, ports: [{{port: {SERVICE_PORT}, targetPort: {TARGET_PORT}}}], backends: [{{ip: {}}}, {{ip: {}}}]}}",
                vip(i),
                BACKEND_IPS[0],
                BACKEND_IPS[1]
            );
        }
    }
    t
}

/// kube-proxy's iptables layout (nat table) for `services` services of two endpoints each.
fn kube_proxy_rules(services: usize) -> String {
    let mut r = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    let chain = |kind: &str, i: usize, j: Option<usize>| {
        // kube-proxy names chains by a hash; numbered names serve the same purpose here.
        match j {
            None => format!("KUBE-{kind}-{i:016X}"),
            Some(j) => format!("KUBE-{kind}-{i:014X}{j:02X}"),
        }
    };
    for i in 0..services {
        let _ = writeln!(r, ":{} - [0:0]", chain("SVC", i, None));
        for j in 0..BACKEND_IPS.len() {
            let _ = writeln!(r, ":{} - [0:0]", chain("SEP", i, Some(j)));
        }
    }
    r.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for i in 0..services {
        let _ = writeln!(
            r,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/svc-{i} cluster IP\" -m tcp --dport {SERVICE_PORT} -j {}",
            vip(i),
            chain("SVC", i, None)
        );
    }
    for i in 0..services {
        let n = BACKEND_IPS.len();
        for (j, ip) in BACKEND_IPS.iter().enumerate() {
            let sep = chain("SEP", i, Some(j));
            if j + 1 < n {
                let _ = writeln!(
                    r,
                    "-A {} -m statistic --mode random --probability {:.11} -j {sep}",
                    chain("SVC", i, None),
                    1.0 / (n - j) as f64
                );
            } else {
                let _ = writeln!(r, "-A {} -j {sep}", chain("SVC", i, None));
            }
            let _ = writeln!(
                r,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:{TARGET_PORT}"
            );
        }
    }
    r.push_str("COMMIT\n");
    r
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    Periscope(usize),
    Iptables(usize),
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::Periscope(10),
        Setup::Periscope(10_000),
        Setup::Iptables(10),
        Setup::Iptables(10_000),
    ];

    fn key(self) -> String {
        let n = |s: usize| {
            if s >= 1000 {
                format!("{}k", s / 1000)
            } else {
                s.to_string()
            }
        };
        match self {
            Setup::Periscope(s) => format!("p{}", n(s)),
            Setup::Iptables(s) => format!("i{}", n(s)),
        }
    }

    fn services(self) -> usize {
        match self {
            Setup::Periscope(s) | Setup::Iptables(s) => s,
        }
    }
}

struct Bed {
    setup: Setup,
    testbed: Option<Testbed>,
    agent: Option<Child>,
    log: Option<PathBuf>,
    bpffs: Option<PathBuf>,
    servers: Vec<Server>,
    rules: Option<usize>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.servers.clear();
        if let Some(mut c) = self.agent.take() {
            terminate(&mut c);
        }
        if let Some(tb) = self.testbed.take() {
            let id = tb.id().to_string();
            if let Err(e) = tb.teardown() {
                eprintln!("[bench] teardown of test bed {id}: {e}");
            }
        }
        if let Some(dir) = self.bpffs.take() {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// A ping-pong server thread in a backend pod.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Bed {
    fn testbed(&self) -> &Testbed {
        self.testbed.as_ref().expect("test bed exists until drop")
    }

    fn up(setup: Setup, opts: &Opts, work: &Path) -> Result<Bed> {
        let key = setup.key();
        let topo_path = work.join(format!("topology-{key}.yaml"));
        // iptables configurations: the pods only (the services are the rules).
        let services = match setup {
            Setup::Periscope(n) => n,
            Setup::Iptables(_) => 0,
        };
        fs::write(&topo_path, topology_yaml(services))?;
        let topology = Topology::load(&topo_path)?;
        let mut bed = Bed {
            setup,
            testbed: None,
            agent: None,
            log: None,
            bpffs: None,
            servers: Vec::new(),
            rules: None,
        };
        bed.testbed = Some(
            Testbed::create(&topology, TestbedOptions::default())
                .with_context(|| format!("creating the test bed of {key}"))?,
        );
        periscope_testbed::netns::write_sysctls(
            &bed.testbed().pod(CLIENT).netns_path,
            &[
                ("net.ipv4.ip_local_port_range", "1024 65535"),
                ("net.ipv4.tcp_tw_reuse", "1"),
            ],
        )
        .context("client pod sysctls")?;
        match setup {
            Setup::Periscope(_) => bed.start_agent(&topo_path, work)?,
            Setup::Iptables(n) => bed.load_rules(n)?,
        }
        for b in BACKENDS {
            bed.servers.push(start_server(bed.testbed(), b, opts.pin)?);
        }
        Ok(bed)
    }

    fn start_agent(&mut self, topo_path: &Path, work: &Path) -> Result<()> {
        let key = self.setup.key();
        let state = work.join(format!("state-{key}"));
        let log = work.join(format!("agent-{key}.log"));
        let bpffs = PathBuf::from(format!(
            "/sys/fs/bpf/periscope/bench-lb-{}-{key}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&bpffs);
        self.bpffs = Some(bpffs.clone());
        self.log = Some(log.clone());
        let child = Command::new(crate::agent_bin())
            .arg("--topology")
            .arg(topo_path)
            .args(["--node", NODE])
            .arg("--netns")
            .arg(self.testbed().node_netns_path(NODE))
            .arg("--bpffs-root")
            .arg(&bpffs)
            .arg("--state-dir")
            .arg(&state)
            .args(["--output", "none", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", crate::agent_bin().display()))?;
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(180);
        while !state.join("status.json").exists() {
            check_stop()?;
            if let Some(Ok(Some(st))) = self.agent.as_mut().map(Child::try_wait) {
                bail!(
                    "agent ({key}) exited with {st}; its log:\n{}",
                    self.log_tail()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "agent ({key}) not ready after 180 s; its log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The frontends in the services map.
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(bpffs.join("PSC_LB_SERVICES"))
            .output()?;
        ensure!(out.status.success(), "bpftool: {}", stderr_of(&out));
        Ok(())
    }

    fn log_tail(&self) -> String {
        super::log_tail(self.log.as_deref())
    }

    fn load_rules(&mut self, services: usize) -> Result<()> {
        let netns = self.testbed().node(NODE).netns.clone();
        iptables_restore(&netns, &kube_proxy_rules(services))?;
        let out = self
            .testbed()
            .node(NODE)
            .exec("iptables", ["-t", "nat", "-S", "KUBE-SERVICES"]);
        ensure!(out.status.success(), "iptables -S: {}", stderr_of(&out));
        let n = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .count();
        ensure!(
            n == services,
            "KUBE-SERVICES has {n} rules, expected {services}"
        );
        self.rules = Some(n);
        Ok(())
    }

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

    /// New connections to the measured service for `d`: (connections/s, failed attempts).
    fn crr(&self, d: Duration, pin: bool) -> Result<(f64, u64)> {
        let dst = SocketAddr::from((vip(measured(self.setup.services())), SERVICE_PORT));
        let (ok, errors, first_error, elapsed) = self.testbed().pod(CLIENT).try_run(move || {
            if let Err(e) = pin_thread(pin, CLIENT_CPU) {
                eprintln!("[bench] cannot pin the client to CPU {CLIENT_CPU}: {e}");
            }
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            let start = Instant::now();
            while start.elapsed() < d && !STOP.load(Ordering::Relaxed) {
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
            "{}: no connection to {dst} succeeded ({errors} failed; first error: {})",
            self.setup.key(),
            first_error.unwrap_or_default()
        );
        Ok((ok as f64 / elapsed.as_secs_f64(), errors))
    }
}

fn start_server(tb: &Testbed, pod: &str, pin: bool) -> Result<Server> {
    let sock = tb.pod(pod).try_run(|| -> io::Result<Socket> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, TARGET_PORT)).into())?;
        s.listen(1024)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(s)
    })??;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("bench-lb-{pod}"))
            .spawn(move || {
                let _ = pin_thread(pin, SERVER_CPU);
                pingpong_serve(&sock, &stop)
            })?
    };
    Ok(Server {
        stop,
        thread: Some(thread),
    })
}

/// Entry point of `cargo xtask bench lb`.
pub(super) fn run(opts: &Opts) -> Result<()> {
    let started = Instant::now();
    let work = WorkDir(PathBuf::from(format!(
        "/run/periscope-bench-lb-{}",
        std::process::id()
    )));
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir_all(&work.0)?;
    eprintln!(
        "[bench] lb: {} configurations, {} s per measurement, {} repetition(s)",
        Setup::ALL.len(),
        opts.secs,
        opts.reps
    );
    let mut beds = Vec::new();
    for s in Setup::ALL {
        check_stop()?;
        let t = Instant::now();
        let bed = Bed::up(s, opts, &work.0)?;
        // Pause the others while checking that this one serves.
        for b in &beds {
            Bed::set_running(b, false);
        }
        let (rate, _) = bed.crr(Duration::from_millis(300), false)?;
        eprintln!(
            "[bench] configuration {} ready in {:.1} s ({} services{}), check: {rate:.0} conn/s",
            s.key(),
            t.elapsed().as_secs_f64(),
            s.services(),
            bed.rules
                .map(|n| format!(", KUBE-SERVICES: {n} rules"))
                .unwrap_or_default()
        );
        beds.push(bed);
    }
    let mut samples: BTreeMap<Setup, Vec<f64>> = BTreeMap::new();
    let mut errors: BTreeMap<Setup, u64> = BTreeMap::new();
    for rep in 0..opts.reps {
        let mut order: Vec<&Bed> = beds.iter().collect();
        let k = rep % order.len();
        order.rotate_left(k);
        for bed in order {
            check_stop()?;
            for b in &beds {
                b.set_running(std::ptr::eq(b, bed));
            }
            std::thread::sleep(Duration::from_millis(300));
            let (v, e) = bed
                .crr(Duration::from_secs(opts.secs), opts.pin)
                .with_context(|| format!("CRR of {}", bed.setup.key()))?;
            eprintln!(
                "[bench] round {}/{}: CRR {:<5} {}/s",
                rep + 1,
                opts.reps,
                bed.setup.key(),
                group_digits(v.round() as u64)
            );
            samples.entry(bed.setup).or_default().push(v);
            *errors.entry(bed.setup).or_default() += e;
        }
    }
    for b in &beds {
        b.set_running(true);
    }
    eprintln!("[bench] tearing down");
    drop(beds);
    drop(work);

    let med = |s: Setup| samples.get(&s).and_then(|v| median(v)).unwrap_or(0.0);
    let (p10, p10k) = (med(Setup::Periscope(10)), med(Setup::Periscope(10_000)));
    let (i10, i10k) = (med(Setup::Iptables(10)), med(Setup::Iptables(10_000)));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut r = String::new();
    let _ = writeln!(r, "# Load-balancer benchmark (`cargo xtask bench lb`)\n");
    let _ = writeln!(
        r,
        "New connections per second to a service's cluster IP (connect, 1 byte each way, close with RST), \
         client and two backends on one node; {} s per measurement, median of {} interleaved repetition(s); \
         measured on {} ({} CPUs), run time {:.0} s.\n",
        opts.secs,
        opts.reps,
        super::cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        r,
        "| services | Periscope (eBPF, Maglev) | iptables (kube-proxy layout) | Periscope / iptables |"
    );
    let _ = writeln!(r, "|---:|---:|---:|---:|");
    for (n, p, i) in [(10, p10, i10), (10_000, p10k, i10k)] {
        let _ = writeln!(
            r,
            "| {} | {}/s | {}/s | {:.2}× |",
            group_digits(n),
            group_digits(p.round() as u64),
            group_digits(i.round() as u64),
            ratio(p, i)
        );
    }
    let goal = |ok: bool| if ok { "met" } else { "MISSED" };
    let _ = writeln!(
        r,
        "\n- Periscope at 10k / at 10: **{:.3}×** (goal ≥ 0.95: {})",
        ratio(p10k, p10),
        goal(ratio(p10k, p10) >= 0.95)
    );
    let _ = writeln!(
        r,
        "- Periscope / iptables at 10k: **{:.2}×** (goal ≥ 5: {})",
        ratio(p10k, i10k),
        goal(ratio(p10k, i10k) >= 5.0)
    );
    let _ = writeln!(
        r,
        "- iptables at 10k / at 10: {:.3}× (KUBE-SERVICES is a linear chain; the measured service is rule {} of it)",
        ratio(i10k, i10),
        measured(10_000) + 1
    );
    let failed: u64 = errors.values().sum();
    if failed > 0 {
        let _ = writeln!(r, "- failed connection attempts: {errors:?}");
    }
    println!("{r}");
    let dir = crate::root().join("artifacts/bench");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("lb.md"), &r)?;
    eprintln!("[bench] report written to {}", dir.join("lb.md").display());
    Ok(())
}

//! `periscope-agent`: the Periscope node agent.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use periscope_agent::agent::{Enforcement, State, fingerprint};
use periscope_agent::datapath::{Datapath, boottime_ns};
use periscope_agent::monitor::{RawEvent, Readers};
use periscope_agent::policy::{Mode, PolicySet};
use periscope_agent::status;
use periscope_datapath_common::{DatapathConfig, aggregation};
use periscope_topology::Topology;
use tokio::sync::{RwLock, mpsc};

/// Periscope node agent: loads the eBPF datapath on the pods of one node, enforces
/// CiliumNetworkPolicies by security identity, and prints (later: serves) the flows it sees.
///
/// The datapath keeps enforcing while the agent is stopped: programs and maps are pinned under
/// --bpffs-root and taken over again at the next start.
#[derive(Debug, Parser)]
#[command(name = "periscope-agent", version, about, long_about)]
struct Args {
    /// Topology file (YAML): nodes and pods with namespaces, labels and IPs.
    #[arg(long, env = "PERISCOPE_TOPOLOGY")]
    topology: PathBuf,
    /// Name of this node in the topology; its pods become this agent's endpoints.
    #[arg(long, env = "PERISCOPE_NODE")]
    node: String,
    /// Policy file or directory of *.yaml files (CiliumNetworkPolicy /
    /// CiliumClusterwideNetworkPolicy). Reloaded when it changes; a bad file is rejected with
    /// an error and the policies in force stay.
    #[arg(long, env = "PERISCOPE_POLICY")]
    policy: Option<PathBuf>,
    /// Network namespace to run in (path such as /run/netns/<name>): the node's pods' host-side
    /// interfaces live there.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// bpffs directory for this node's pinned maps and programs.
    #[arg(long, default_value = "/sys/fs/bpf/periscope/default")]
    bpffs_root: PathBuf,
    /// Directory for the agent's status file (status.json).
    #[arg(long, default_value = "/run/periscope/default")]
    state_dir: PathBuf,
    /// Policy enforcement mode: default (deny once a policy selects the endpoint), always, never.
    #[arg(long, default_value = "default", value_parser = parse_mode)]
    enforcement: Mode,
    /// Audit mode: would-be drops are forwarded and reported with verdict AUDIT.
    #[arg(long)]
    audit: bool,
    /// Per-endpoint override, repeatable: <namespace>/<pod>=<default|always|never>[,audit|,noaudit].
    #[arg(long = "endpoint-mode", value_parser = Enforcement::parse_override)]
    endpoint_modes: Vec<(String, periscope_agent::agent::EndpointMode)>,
    /// Monitor aggregation: none (every packet), medium (new connections, new TCP flags, periodic
    /// report), maximum (new connections and close only, periodic report). Drops are never
    /// aggregated.
    #[arg(long, default_value = "medium", value_parser = parse_aggregation)]
    monitor_aggregation: u8,
    /// Interval of the per-connection report under aggregation, seconds.
    #[arg(long, default_value_t = 5)]
    monitor_aggregation_interval: u64,
    /// Pages per CPU of the perf ring (power of two).
    #[arg(long, default_value_t = 64)]
    perf_ring_pages: usize,
    /// How flows are printed on stdout: compact (Hubble's line format) or none.
    #[arg(long, default_value = "compact")]
    output: String,
    /// Also append every flow to this file as length-delimited protobuf `flow.Flow` messages
    /// (a machine-readable record for tests and tools until the gRPC API serves them).
    #[arg(long)]
    flow_log: Option<PathBuf>,
    /// Log filter (tracing env-filter syntax), e.g. info, periscope_agent=debug.
    #[arg(long, env = "PERISCOPE_LOG", default_value = "info")]
    log: String,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_aggregation(s: &str) -> Result<u8, String> {
    match s {
        "none" => Ok(aggregation::NONE),
        "medium" => Ok(aggregation::MEDIUM),
        "maximum" => Ok(aggregation::MAXIMUM),
        other => Err(format!("{other:?} is not none, medium or maximum")),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    if !matches!(args.output.as_str(), "compact" | "none") {
        bail!("--output {:?}: expected compact or none", args.output);
    }
    // Enter the node's network namespace before any thread exists, so every thread inherits it.
    if let Some(ns) = &args.netns {
        enter_netns(ns)?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn enter_netns(path: &PathBuf) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("--netns {}", path.display()))?;
    // SAFETY: valid fd of a network namespace file.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "--netns {}: setns: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let topology = Topology::load(&args.topology)?;
    if !topology.nodes.iter().any(|n| n.name == args.node) {
        bail!(
            "--node {:?}: not a node of {}",
            args.node,
            args.topology.display()
        );
    }
    let policies = match &args.policy {
        Some(p) => PolicySet::load(p)?,
        None => PolicySet::default(),
    };
    for w in &policies.warnings {
        tracing::warn!(warning = %w, "unsupported policy feature");
    }
    let enforcement = Enforcement {
        mode: args.enforcement,
        audit: args.audit,
        endpoints: args.endpoint_modes.iter().cloned().collect(),
    };

    let mut dp = Datapath::open(&args.bpffs_root)?;
    let cfg = DatapathConfig {
        aggregation: args.monitor_aggregation,
        report_interval_ns: args.monitor_aggregation_interval.max(1) * 1_000_000_000,
        ..DatapathConfig::default()
    };
    dp.set_config(&cfg)?;
    let (mut state, specs) = State::build(&args.node, &topology, policies, &enforcement);
    dp.sync_ipcache(&state.ipcache)?;
    let ids = dp.sync_endpoints(&specs)?;
    state.set_endpoint_ids(&ids);
    let mut progress = status::Progress {
        revision: 1,
        ..Default::default()
    };
    status::write(&args.state_dir, &state, &progress, None)?;
    tracing::info!(node = %args.node, endpoints = ids.len(), policies = state.policies.policies.len(),
        version = dp.version(), "datapath ready");

    let (tx, mut rx) = mpsc::channel::<Vec<RawEvent>>(1024);
    let readers = Readers::start(
        dp.take_events().context("perf event array")?,
        args.perf_ring_pages,
        tx,
    )?;
    let state = Arc::new(RwLock::new(state));

    // Printer.
    let printer_state = state.clone();
    let output = args.output.clone();
    let mut flow_log = match &args.flow_log {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("--flow-log {}", p.display()))?,
        )),
        None => None,
    };
    let lost_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let printer_lost = lost_total.clone();
    let printer = tokio::spawn(async move {
        use std::io::Write;
        let boot_offset = periscope_agent::decoder::boot_to_realtime_offset_ns();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
        while let Some(batch) = rx.recv().await {
            let st = printer_state.read().await;
            for raw in batch {
                let line = match raw {
                    RawEvent::Sample(ev) => {
                        let flow = periscope_agent::decoder::decode(&ev, &st, boot_offset);
                        if let Some(w) = flow_log.as_mut() {
                            use prost::Message;
                            let _ = w.write_all(&flow.encode_length_delimited_to_vec());
                        }
                        match output.as_str() {
                            "compact" => periscope_agent::decoder::compact(&flow),
                            _ => continue,
                        }
                    }
                    RawEvent::Lost { cpu, count } => {
                        printer_lost.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                        format!("LOST: {count} events lost in the perf ring of CPU {cpu}")
                    }
                };
                if writeln!(out, "{line}").is_err() {
                    return;
                }
            }
            if rx.is_empty() {
                let _ = out.flush();
                if let Some(w) = flow_log.as_mut() {
                    let _ = w.flush();
                }
            }
        }
    });

    // Reload loop: policies and topology are re-read when their files change.
    let mut inputs: Vec<PathBuf> = vec![args.topology.clone()];
    inputs.extend(args.policy.clone());
    let mut seen = fingerprint(&inputs.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut gc_at = std::time::Instant::now();
    let mut status_at = std::time::Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        let force = tokio::select! {
            _ = tick.tick() => false,
            _ = sighup.recv() => true,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        };
        if status_at.elapsed() >= Duration::from_secs(1) {
            let st = state.read().await;
            let stats = status::Counters::collect(&dp, &readers.stats);
            status::write(&args.state_dir, &st, &progress, Some(&stats))?;
            status_at = std::time::Instant::now();
        }
        if gc_at.elapsed() > Duration::from_secs(30) {
            let n = dp.ct_gc(boottime_ns());
            tracing::debug!(removed = n, "conntrack gc");
            gc_at = std::time::Instant::now();
        }
        let now = fingerprint(&inputs.iter().map(|p| p.as_path()).collect::<Vec<_>>());
        if now == seen && !force {
            continue;
        }
        seen = now;
        let loaded = (|| -> Result<(Topology, PolicySet)> {
            let t = Topology::load(&args.topology)?;
            let p = match &args.policy {
                Some(p) => PolicySet::load(p)?,
                None => PolicySet::default(),
            };
            Ok((t, p))
        })();
        match loaded {
            Err(e) => {
                tracing::error!(error = %e, "rejected new topology/policy; the policies in force stay");
                progress.rejected += 1;
                progress.error = Some(format!("{e:#}"));
                status::write(&args.state_dir, &*state.read().await, &progress, None)?;
            }
            Ok((t, p)) => {
                for w in &p.warnings {
                    tracing::warn!(warning = %w, "unsupported policy feature");
                }
                let (mut new_state, specs) = State::build(&args.node, &t, p, &enforcement);
                let applied = dp
                    .sync_ipcache(&new_state.ipcache)
                    .and_then(|_| dp.sync_endpoints(&specs));
                match applied {
                    Ok(ids) => {
                        new_state.set_endpoint_ids(&ids);
                        progress.revision += 1;
                        progress.error = None;
                        status::write(&args.state_dir, &new_state, &progress, None)?;
                        tracing::info!(
                            revision = progress.revision,
                            endpoints = ids.len(),
                            "applied new policy/topology"
                        );
                        *state.write().await = new_state;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "applying the new state failed");
                        progress.rejected += 1;
                        progress.error = Some(e.to_string());
                        status::write(&args.state_dir, &*state.read().await, &progress, None)?;
                    }
                }
            }
        }
    }
    tracing::info!("stopping; the datapath stays attached and keeps enforcing");
    readers.stop();
    printer.abort();
    dp.release();
    Ok(())
}

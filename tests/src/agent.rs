//! Running the real `periscope-agent` against a test bed, for end-to-end tests and benchmarks.
//!
//! The agent binary is taken from `PERISCOPE_AGENT_BIN` (set by `cargo xtask test`), else from
//! the workspace's `target/release` or `target/debug`. Each [`Agent`] gets its own bpffs root,
//! state directory and files, and removes them (and the process) when dropped.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use periscope_proto::flow::Flow;
use prost::Message;

use crate::Testbed;

/// Path of the agent binary.
pub fn agent_bin() -> PathBuf {
    binary("PERISCOPE_AGENT_BIN", "periscope-agent")
}

/// Path of the `periscope` CLI binary.
pub fn cli_bin() -> PathBuf {
    binary("PERISCOPE_CLI_BIN", "periscope")
}

pub(crate) fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join("target"));
    for p in [
        target.join("release").join(name),
        target.join("debug").join(name),
    ] {
        if p.exists() {
            return p;
        }
    }
    panic!("{name} binary not found: run `cargo xtask test` or set {env}")
}

/// A running agent for one node of a test bed.
pub struct Agent {
    child: Option<Child>,
    base_args: Vec<String>,
    extra_args: Vec<String>,
    /// Node name.
    pub node: String,
    /// Scratch directory holding topology, policy, logs and state.
    pub dir: PathBuf,
    /// bpffs root of this agent's pins.
    pub bpffs_root: PathBuf,
    /// Policy file the agent watches.
    pub policy_path: PathBuf,
    /// Flow log of the current run (length-delimited protobuf flows).
    pub flow_log: PathBuf,
    restarts: u32,
    flow_log_enabled: bool,
}

impl Agent {
    /// Starts the agent for `node` with `policy` (YAML text, possibly empty) and extra flags,
    /// and waits until it is ready.
    pub fn start(tb: &Testbed, node: &str, policy: &str, extra: &[&str]) -> Agent {
        Self::start_with(tb, node, policy, extra, true)
    }

    /// Like [`Agent::start`]; `flow_log` false runs without the flow log (for measurements).
    pub fn start_with(
        tb: &Testbed,
        node: &str,
        policy: &str,
        extra: &[&str],
        with_flow_log: bool,
    ) -> Agent {
        let dir = std::env::temp_dir().join(format!("periscope-e2e-{}-{node}", tb.id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        let topo = dir.join("topology.yaml");
        fs::write(
            &topo,
            serde_yaml::to_string(tb.topology()).expect("topology yaml"),
        )
        .expect("write topology");
        let policy_path = dir.join("policy.yaml");
        fs::write(&policy_path, policy).expect("write policy");
        let bpffs_root = PathBuf::from(format!("/sys/fs/bpf/periscope-e2e/{}-{node}", tb.id()));
        let flow_log = dir.join("flows.pb");
        let args: Vec<String> = vec![
            "--topology".into(),
            topo.display().to_string(),
            "--node".into(),
            node.into(),
            "--policy".into(),
            policy_path.display().to_string(),
            "--netns".into(),
            tb.node_netns_path(node).display().to_string(),
            "--bpffs-root".into(),
            bpffs_root.display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        // An ephemeral loopback port unless the caller chose the address.
        let mut args = args;
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        let mut a = Agent {
            child: None,
            base_args: args,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            node: node.into(),
            dir,
            bpffs_root,
            policy_path,
            flow_log,
            restarts: 0,
            flow_log_enabled: with_flow_log,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let _ = fs::remove_file(self.dir.join("state/status.json"));
        self.flow_log = self.dir.join(format!("flows.{}.pb", self.restarts));
        let out = fs::File::create(self.dir.join(format!("stdout.{}", self.restarts)))
            .expect("stdout file");
        let err = fs::File::create(self.dir.join(format!("stderr.{}", self.restarts)))
            .expect("stderr file");
        let child = Command::new(agent_bin())
            .args(&self.base_args)
            .args(if self.flow_log_enabled {
                vec![
                    "--flow-log".to_string(),
                    self.flow_log.display().to_string(),
                ]
            } else {
                vec![]
            })
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start periscope-agent");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.dir.join("state/status.json").exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "agent exited with {status} before ready:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 30 s:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's stderr (log) of the current run.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join(format!("stderr.{}", self.restarts))).unwrap_or_default()
    }

    /// The agent's stdout (compact flow lines) of the current run.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.join(format!("stdout.{}", self.restarts))).unwrap_or_default()
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Kills the agent with SIGKILL (no cleanup of any kind runs).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM)
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
    }

    /// Starts the agent again with the same arguments (after [`Agent::kill9`] or
    /// [`Agent::terminate`]), replacing extra flags if `extra` is given.
    pub fn restart(&mut self, extra: Option<&[&str]>) {
        self.kill9();
        if let Some(extra) = extra {
            self.extra_args = extra.iter().map(|s| s.to_string()).collect();
        }
        self.restarts += 1;
        self.spawn();
    }

    /// Like [`Agent::restart`], listening on the address of the current run again (so clients
    /// that know it, such as a relay, find the agent again).
    pub fn restart_same_address(&mut self) {
        let address = self.api_address();
        if let Some(i) = self.base_args.iter().position(|a| a == "--listen") {
            self.base_args[i + 1] = address;
        }
        self.restart(None);
    }

    /// The status document.
    pub fn status(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.dir.join("state/status.json")).expect("status.json");
        serde_json::from_str(&text).expect("status.json is JSON")
    }

    /// Address of the agent's gRPC API (`127.0.0.1:<port>`).
    pub fn api_address(&self) -> String {
        self.status()["api_address"]
            .as_str()
            .expect("api_address in status")
            .to_string()
    }

    /// Address of the agent's metrics endpoint.
    pub fn metrics_address(&self) -> String {
        self.status()["metrics_address"]
            .as_str()
            .expect("metrics_address in status")
            .to_string()
    }

    /// The identity of a pod (`ns/name`), from the status file.
    pub fn identity(&self, pod: &str) -> u32 {
        let st = self.status();
        st["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["name"] == pod))
            .and_then(|e| e["identity"].as_u64())
            .unwrap_or_else(|| panic!("no endpoint {pod} in status: {st}")) as u32
    }

    /// Replaces the policy file and waits until the agent applied it (the revision grows) or
    /// rejected it; returns the agent's error for a rejected file.
    pub fn set_policy(&self, yaml: &str) -> Option<String> {
        let st = self.status();
        let before = st["revision"].as_u64().unwrap_or(0);
        let rejected_before = st["rejected"].as_u64().unwrap_or(0);
        let tmp = self.dir.join(".policy.tmp");
        fs::write(&tmp, yaml).expect("write policy");
        fs::rename(&tmp, &self.policy_path).expect("replace policy");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.status();
            if st["revision"].as_u64().unwrap_or(0) > before {
                return None;
            }
            if st["rejected"].as_u64().unwrap_or(0) > rejected_before {
                return Some(st["error"].as_str().unwrap_or_default().to_string());
            }
            assert!(
                Instant::now() < deadline,
                "policy not applied within 10 s: {st}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the topology file the agent watches (the test bed itself stays as it is: use it
    /// for changes the agent sees but the network does not, such as labels or container ports)
    /// and waits until the agent applied it (the revision grows) or rejected it; returns the
    /// agent's error for a rejected file.
    pub fn set_topology(&self, topology: &periscope_topology::Topology) -> Option<String> {
        let st = self.status();
        let before = st["revision"].as_u64().unwrap_or(0);
        let rejected_before = st["rejected"].as_u64().unwrap_or(0);
        let tmp = self.dir.join(".topology.tmp");
        fs::write(
            &tmp,
            serde_yaml::to_string(topology).expect("topology yaml"),
        )
        .expect("write topology");
        fs::rename(&tmp, self.dir.join("topology.yaml")).expect("replace topology");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.status();
            if st["revision"].as_u64().unwrap_or(0) > before {
                return None;
            }
            if st["rejected"].as_u64().unwrap_or(0) > rejected_before {
                return Some(st["error"].as_str().unwrap_or_default().to_string());
            }
            assert!(
                Instant::now() < deadline,
                "topology not applied within 10 s: {st}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every flow in the flow log so far.
    pub fn flows(&self) -> Vec<Flow> {
        let bytes = fs::read(&self.flow_log).unwrap_or_default();
        let mut buf = &bytes[..];
        let mut out = Vec::new();
        while !buf.is_empty() {
            match Flow::decode_length_delimited(&mut buf) {
                Ok(f) => out.push(f),
                Err(_) => break, // a partially written last record
            }
        }
        out
    }

    /// Waits until `pred` holds for the flows (polling), returning them; panics after `timeout`.
    pub fn wait_flows(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Flow]) -> bool,
    ) -> Vec<Flow> {
        let deadline = Instant::now() + timeout;
        loop {
            let flows = self.flows();
            if pred(&flows) {
                return flows;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for flows: {what}\n{} flows seen; agent stdout:\n{}",
                    flows.len(),
                    self.stdout()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Datapath counters from the status file, after waiting for a fresh write (≥ 1 s).
    pub fn counters(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        let start = fs::metadata(self.dir.join("state/status.json"))
            .and_then(|m| m.modified())
            .ok();
        loop {
            let now = fs::metadata(self.dir.join("state/status.json"))
                .and_then(|m| m.modified())
                .ok();
            let st = self.status();
            if now != start && !st["counters"].is_null() {
                return st["counters"].clone();
            }
            assert!(Instant::now() < deadline, "no counters in status: {st}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = fs::remove_dir_all(&self.bpffs_root);
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

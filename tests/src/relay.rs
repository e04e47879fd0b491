//! Running the real `periscope-relay` for end-to-end tests.
//!
//! The binary is taken from `PERISCOPE_RELAY_BIN` (set by `cargo xtask test`), else from the
//! workspace's `target/release` or `target/debug`. Each [`Relay`] listens on its own free port of
//! 127.0.0.1, logs to its own directory, and is killed (and the directory removed, unless the
//! test failed) when dropped.
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the relay binary.
pub fn relay_bin() -> PathBuf {
    crate::agent::binary("PERISCOPE_RELAY_BIN", "periscope-relay")
}

/// A free TCP port of 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running relay.
pub struct Relay {
    child: Option<Child>,
    args: Vec<String>,
    /// `127.0.0.1:<port>` it serves on.
    pub address: String,
    /// Scratch directory with its logs (`stderr.<run>`).
    pub dir: PathBuf,
    runs: u32,
}

impl Relay {
    /// Starts a relay named `name` (for its scratch directory) with `args` (besides `--listen`)
    /// and waits until it accepts connections.
    pub fn start(name: &str, args: &[&str]) -> Relay {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "periscope-e2e-relay-{name}-{}-{port}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("relay scratch dir");
        let mut all = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
        // The HTTP API's default port is shared: tests name one when they use it.
        if !args.contains(&"--http-listen") {
            all.extend(["--http-listen".to_string(), "off".to_string()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let mut r = Relay {
            child: None,
            args: all,
            address: format!("127.0.0.1:{port}"),
            dir,
            runs: 0,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let err = fs::File::create(self.dir.join(format!("stderr.{}", self.runs)))
            .expect("relay stderr file");
        let child = Command::new(relay_bin())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start periscope-relay");
        self.child = Some(child);
        let addr: SocketAddr = self.address.parse().expect("address");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "relay exited with {status} before ready:\n{}",
                    self.stderr()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "relay not listening after 20 s:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log of the current run.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join(format!("stderr.{}", self.runs))).unwrap_or_default()
    }

    /// Kills the relay with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the relay with SIGTERM and returns its exit status (SIGKILL after 15 s).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the relay again with the same arguments and address.
    pub fn restart(&mut self) {
        self.kill9();
        self.runs += 1;
        self.spawn();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

//! A private `clickhouse-server` for tests.
//!
//! Each [`TestServer`] runs its own server process with its own temporary data directory and its
//! own free loopback ports (HTTP and native), so tests neither touch nor conflict with a system
//! server or with each other. Dropping it kills the process and removes the directory.
//! [`TestServer::stop`] and [`TestServer::restart`] simulate an outage: the process is killed and
//! later started again on the same data directory and ports.
//!
//! The binary is `$PERISCOPE_CLICKHOUSE_SERVER`, else `clickhouse-server` on `PATH`, else
//! `/usr/sbin/clickhouse-server` (Debian's 18.16; `xtask/setup.sh` installs it).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer `/ping` after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts with fresh ports when a port was taken between choosing and binding it.
const START_ATTEMPTS: usize = 4;

/// A running private server; killed and its data removed on drop.
pub struct TestServer {
    /// `None` while stopped.
    child: Option<Child>,
    dir: tempfile::TempDir,
    http_port: u16,
    tcp_port: u16,
}

/// Locates the server binary.
pub fn server_binary() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PERISCOPE_CLICKHOUSE_SERVER") {
        return Ok(p.into());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("clickhouse-server"))
        .chain([PathBuf::from("/usr/sbin/clickhouse-server")])
        .find(|p| p.is_file());
    on_path.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "clickhouse-server not found (PATH, /usr/sbin): run `cargo xtask setup` \
             (Debian package clickhouse-server) or set PERISCOPE_CLICKHOUSE_SERVER",
        )
    })
}

pub(crate) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config_xml(dir: &Path, http_port: u16, tcp_port: u16, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{d}/log/server.log</log>
        <errorlog>{d}/log/error.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
    <mlock_executable>false</mlock_executable>
{extra}
</yandex>
"#
    )
}

const USERS_XML: &str = r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#;

impl TestServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> io::Result<Self> {
        let binary = server_binary()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary) {
                Ok(server) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn start_once(binary: &Path) -> io::Result<Self> {
        Self::start_configured(binary, free_port()?, free_port()?, "")
    }

    /// Starts a server on the given ports with `extra` XML inside its `<yandex>` configuration
    /// (a cluster's `remote_servers`, `zookeeper`, `macros`, ...), and waits until it answers.
    pub(crate) fn start_configured(
        binary: &Path,
        http_port: u16,
        tcp_port: u16,
        extra: &str,
    ) -> io::Result<Self> {
        // PERISCOPE_KEEP_TEST_DIRS=1 keeps the directory (data and logs) for a post-mortem.
        let dir = tempfile::Builder::new()
            .prefix("periscope-clickhouse-")
            .disable_cleanup(std::env::var_os("PERISCOPE_KEEP_TEST_DIRS").is_some())
            .tempdir()?;
        for sub in ["log", "data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let config = dir.path().join("config.xml");
        std::fs::write(&config, config_xml(dir.path(), http_port, tcp_port, extra))?;
        std::fs::write(dir.path().join("users.xml"), USERS_XML)?;
        let child = spawn(binary, dir.path())?;
        let mut server = Self {
            child: Some(child),
            dir,
            http_port,
            tcp_port,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Kills the server process (SIGKILL, like a crash or a lost machine) and waits for it to
    /// exit; the data directory and the ports stay reserved for [`TestServer::restart`]. A no-op
    /// when it is already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory and ports (after
    /// [`TestServer::stop`]) and waits until it answers. Stops it first if it is running.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let binary = server_binary()?;
        let mut last_error = None;
        // The ports were free a moment ago; a server that has just been killed may leave them
        // in use for a short while, so retry.
        for _ in 0..START_ATTEMPTS * 5 {
            self.child = Some(spawn(&binary, self.dir.path())?);
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.stop();
                    last_error = Some(e);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Whether the server process is running (not stopped and not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "clickhouse-server is stopped")
            })?;
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "clickhouse-server exited with {status} before answering: {}",
                    self.logs()
                )));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "clickhouse-server did not answer on port {} within {READY_TIMEOUT:?}: {}",
                        self.http_port,
                        self.logs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.http_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("Ok.\n")
    }

    /// The tail of the server's logs, for error messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["error.log", "stderr.log"] {
            let text =
                std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            if !tail.is_empty() {
                out.push_str(&format!("\n--- {name} (last lines) ---\n"));
                for line in tail.iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The HTTP port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native-protocol port (for `clickhouse-client --port`).
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// A client for this server, set up with [`crate::prepare_client`].
    pub fn client(&self) -> clickhouse::Client {
        crate::prepare_client(clickhouse::Client::default().with_url(self.url()))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `binary` on the configuration in `dir` (logs appended to `dir/log`).
fn spawn(binary: &Path, dir: &Path) -> io::Result<Child> {
    let log = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log").join(name))
    };
    Command::new(binary)
        .arg(format!(
            "--config-file={}",
            dir.join("config.xml").display()
        ))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log("stdout.log")?)
        .stderr(log("stderr.log")?)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", binary.display())))
}

//! A private ClickHouse cluster for tests: a ZooKeeper and N [`TestServer`]s that share a
//! `remote_servers` cluster, each with its own `{shard}` / `{replica}` macros.
//!
//! ZooKeeper is real because 18.16 needs it for everything cluster mode uses: `ON CLUSTER` DDL
//! goes through its distributed DDL queue, and `Replicated*` tables keep their parts' log there.
//! [`TestZooKeeper`] runs Debian's `zookeeper` (3.8, `xtask/setup.sh` installs it) as
//! `java -cp /usr/share/java/zookeeper.jar org.apache.zookeeper.server.ZooKeeperServerMain
//! <zoo.cfg>`: standalone, on a free loopback port, with a temporary data directory, killed and
//! removed on drop. `$PERISCOPE_ZOOKEEPER_JAR` overrides the jar (its manifest names its
//! dependencies), `$JAVA` the java binary.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{TestServer, free_port, server_binary};

/// How long ZooKeeper may take to answer `ruok`.
const ZOOKEEPER_TIMEOUT: Duration = Duration::from_secs(60);

/// A standalone ZooKeeper on a free loopback port; killed and its data removed on drop.
pub struct TestZooKeeper {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl TestZooKeeper {
    /// Starts ZooKeeper and waits until it serves requests (`srvr` answers `Mode: standalone`;
    /// `ruok` says `imok` earlier, while connections are still refused, and a 18.16 server whose
    /// first ZooKeeper session fails crashes on its first `ON CLUSTER` query).
    pub fn start() -> io::Result<Self> {
        let jar = std::env::var_os("PERISCOPE_ZOOKEEPER_JAR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/share/java/zookeeper.jar".into());
        if !jar.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} not found: run `cargo xtask setup` (Debian package zookeeper) or set \
                     PERISCOPE_ZOOKEEPER_JAR",
                    jar.display()
                ),
            ));
        }
        let java = std::env::var_os("JAVA").unwrap_or_else(|| "java".into());
        let dir = tempfile::Builder::new()
            .prefix("periscope-zookeeper-")
            .tempdir()?;
        let port = free_port()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let cfg = dir.path().join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxClientCnxns=0\n\
                 4lw.commands.whitelist=srvr\n",
                data.display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("zookeeper.log"))?;
        let child = Command::new(&java)
            .arg("-Xmx256m")
            .arg(format!("-Dzookeeper.log.dir={}", dir.path().display()))
            .arg("-cp")
            .arg(&jar)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&cfg)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting ZooKeeper (java): {e}")))?;
        let mut zk = Self { child, dir, port };
        let deadline = Instant::now() + ZOOKEEPER_TIMEOUT;
        while !zk.serving() {
            if let Some(status) = zk.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "ZooKeeper exited with {status}: {}",
                    zk.logs()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "ZooKeeper did not answer within {ZOOKEEPER_TIMEOUT:?}: {}",
                        zk.logs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(zk)
    }

    fn serving(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"srvr").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("Mode: standalone")
    }

    /// The client port (loopback).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// ZooKeeper's output, for error messages.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default()
    }
}

impl Drop for TestZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Servers of one cluster (`remote_servers` name [`TestCluster::name`]) and their ZooKeeper.
/// Server `i` has macros `shard` = its shard's number (`01`, `02`, ...) and `replica` =
/// `s<shard>r<replica>` (unique in the cluster).
pub struct TestCluster {
    // Dropped in order: the servers, then ZooKeeper.
    servers: Vec<TestServer>,
    layout: Vec<(usize, usize)>,
    name: String,
    zookeeper: TestZooKeeper,
}

impl TestCluster {
    /// Starts ZooKeeper and a server per replica: `replicas[s]` servers for shard `s + 1`
    /// (`&[1, 1]`: two shards of one replica; `&[2]`: one shard replicated twice).
    pub fn start(name: &str, replicas: &[usize]) -> io::Result<Self> {
        let zookeeper = TestZooKeeper::start()?;
        let binary = server_binary()?;
        let layout: Vec<(usize, usize)> = replicas
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| (1..=n).map(move |r| (s + 1, r)))
            .collect();
        let ports: Vec<(u16, u16, u16)> = layout
            .iter()
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<io::Result<_>>()?;
        let mut shards = String::new();
        for (s, _) in replicas.iter().enumerate() {
            shards.push_str("<shard><internal_replication>true</internal_replication>");
            for (i, (shard, _)) in layout.iter().enumerate() {
                if *shard == s + 1 {
                    shards.push_str(&format!(
                        "<replica><host>127.0.0.1</host><port>{}</port></replica>",
                        ports[i].1
                    ));
                }
            }
            shards.push_str("</shard>");
        }
        let mut servers = Vec::new();
        for (i, (shard, replica)) in layout.iter().enumerate() {
            let (http, tcp, interserver) = ports[i];
            let extra = format!(
                "    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <zookeeper><node><host>127.0.0.1</host><port>{zk}</port></node><session_timeout_ms>30000</session_timeout_ms></zookeeper>
    <remote_servers><{name}>{shards}</{name}></remote_servers>
    <macros><shard>{shard:02}</shard><replica>s{shard:02}r{replica}</replica></macros>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>",
                zk = zookeeper.port(),
            );
            servers.push(TestServer::start_configured(&binary, http, tcp, &extra)?);
        }
        Ok(Self {
            servers,
            layout,
            name: name.to_owned(),
            zookeeper,
        })
    }

    /// The cluster's `remote_servers` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every server, shard by shard.
    pub fn servers(&self) -> &[TestServer] {
        &self.servers
    }

    /// `(shard, replica)` of each server (1-based), in the order of [`TestCluster::servers`].
    pub fn layout(&self) -> &[(usize, usize)] {
        &self.layout
    }

    /// The ZooKeeper the servers share.
    pub fn zookeeper(&self) -> &TestZooKeeper {
        &self.zookeeper
    }
}

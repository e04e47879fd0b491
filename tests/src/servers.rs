//! Real servers for tests: each instance gets its own data directory and free ports on
//! 127.0.0.1, and is stopped and removed when dropped.
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An etcd server (Debian's `etcd-server`).
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    /// Client URL, `http://127.0.0.1:<port>`.
    pub url: String,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub fn start() -> Etcd {
        let dir = std::env::temp_dir().join(format!(
            "periscope-etcd-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let (client_port, peer_port) = (free_port(), free_port());
        let mut e = Etcd {
            child: None,
            dir,
            url: format!("http://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("log");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--name", "test"])
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{}",
                self.client_port
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                self.client_port
            ))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                self.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                self.peer_port
            ))
            .arg(format!(
                "--initial-cluster=test=http://127.0.0.1:{}",
                self.peer_port
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.url, "endpoint", "health"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl put key value`.
    pub fn put(&self, key: &str, value: &str) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "put", key, value])
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `etcdctl del key`.
    pub fn del(&self, key: &str) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "del", key])
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl del {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (its data stays for [`Etcd::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The bare-metal deployment files (`deploy/systemd/`) against the real tools and binaries:
//! systemd's own checker accepts the units, every flag they and the example settings pass
//! exists in the binaries' `--help`, and the relay starts from the example `relay.yaml`.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use periscope_testbed::TempDir;
use periscope_testbed::agent::agent_bin;
use periscope_testbed::relay::relay_bin;
use periscope_testbed::servers::free_port;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn help(bin: &Path) -> String {
    let out = Command::new(bin).arg("--help").output().expect("--help");
    assert!(out.status.success(), "{} --help", bin.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `--flags` of a command line.
fn flags(line: &str) -> Vec<String> {
    line.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap_or(w).to_string())
        .collect()
}

/// The value of `key=` in a unit or env file (the first line that sets it).
fn value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in\n{text}"))
}

#[test]
fn systemd_units_verify_and_pass_real_flags() {
    let dir = TempDir::new("deploy", "units");
    for (unit, bin) in [
        ("periscope-agent.service", agent_bin()),
        ("periscope-relay.service", relay_bin()),
    ] {
        let text = read(unit);
        let exec = value(&text, "ExecStart");
        let installed = exec.split_whitespace().next().unwrap();
        assert!(installed.starts_with("/usr/local/bin/"), "{unit}: {exec}");
        let usage = help(&bin);
        for flag in flags(exec) {
            assert!(
                usage.contains(&format!("{flag} ")),
                "{unit}: {flag} is not a flag of {}",
                bin.display()
            );
        }
        // systemd's checker, with the unit pointing at the binary under test.
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace(installed, &bin.display().to_string())).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian's systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{unit}: systemd-analyze verify:\n{stderr}"
        );
    }
}

#[test]
fn the_agent_env_example_sets_real_variables_and_flags() {
    let env = read("agent.env.example");
    let usage = help(&agent_bin());
    for line in env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (key, val) = line.split_once('=').unwrap();
        if key == "AGENT_ARGS" {
            // Passed to ExecStart as $AGENT_ARGS.
            assert!(read("periscope-agent.service").contains("$AGENT_ARGS"));
            for flag in flags(val) {
                assert!(
                    usage.contains(&format!("{flag} ")),
                    "{flag} is not an agent flag"
                );
            }
        } else {
            assert!(
                usage.contains(&format!("[env: {key}=")),
                "{key} is not an agent variable"
            );
        }
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example relay.yaml, with its paths moved into a temporary directory (token, password,
/// UI bundle, spool) and loopback ports, starts a relay whose UI API answers.
#[test]
fn the_relay_starts_from_the_example_config() {
    let dir = TempDir::new("deploy", "relay");
    let d = dir.path();
    for (path, content) in [
        ("etc/ui-token", "s3cret-token"),
        ("etc/clickhouse-password", "pw"),
        ("ui/index.html", "<html></html>"),
    ] {
        let p = d.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    // The example alert rules as /etc/periscope/alert-rules.
    std::fs::create_dir_all(d.join("etc/alert-rules")).unwrap();
    for e in std::fs::read_dir(deploy_dir().join("../examples/alert-rules")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join("etc/alert-rules").join(e.file_name())).unwrap();
    }
    let config = read("relay.yaml.example")
        .replace("/etc/periscope/", &format!("{}/etc/", d.display()))
        .replace(
            "/usr/share/periscope/ui",
            &d.join("ui").display().to_string(),
        )
        .replace(
            "/var/lib/periscope/relay/spool",
            &d.join("spool").display().to_string(),
        );
    assert!(
        !config.contains("/etc/periscope") && !config.contains("/var/lib"),
        "{config}"
    );
    let path = d.join("relay.yaml");
    std::fs::write(&path, config).unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(d.join("relay.log")).unwrap();
    let mut relay = Kill(
        Command::new(relay_bin())
            .arg("--config")
            .arg(&path)
            .args(["--listen", &grpc, "--http-listen", &http])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the relay"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(&http) {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET /api/v1/ui-config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            break;
        }
        let exited = relay.0.try_wait().expect("relay status");
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the relay did not start from the example config ({exited:?}):\n{}",
            std::fs::read_to_string(d.join("relay.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

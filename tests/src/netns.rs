//! Running code inside a network namespace.
//!
//! A network namespace is a property of a *thread*: these helpers start a fresh OS thread, move it
//! into the namespace with `setns(CLONE_NEWNET)` and run the closure there. Sockets created on that
//! thread belong to the namespace for their whole life, whichever thread uses them later.
//!
//! Pitfall: `/proc/net` is a link to `/proc/self/net`, i.e. the namespace of the process' *main*
//! thread. Inside these closures read `/proc/thread-self/net/...` instead. `/proc/sys/net` follows
//! the calling thread and works as expected.
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;

/// Where `ip netns add` puts its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// `/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Moves the calling thread into the namespace at `path`.
fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    crate::sys::setns_net(file.as_fd())
}

/// Runs `f` on a new thread inside the network namespace at `path` and returns its result; a panic
/// in `f` is propagated. Errors only if the namespace cannot be entered.
pub fn try_run_in<F, R>(path: &Path, f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(thread_name(path))
            .spawn_scoped(s, || {
                enter(path)?;
                Ok(f())
            })?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
    .map_err(|e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot enter netns {}: {e}", path.display()),
        )
    })
}

/// Like [`try_run_in`], but panics if the namespace cannot be entered.
pub fn run_in<F, R>(path: &Path, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    try_run_in(path, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `f` on a new thread inside the namespace at `path`. The thread panics (and `join`
/// returns the panic) if the namespace cannot be entered.
pub fn spawn_in<F, R>(path: &Path, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name(thread_name(&path))
        .spawn(move || {
            if let Err(e) = enter(&path) {
                panic!("cannot enter netns {}: {e}", path.display());
            }
            f()
        })
        .expect("cannot spawn a thread")
}

/// Runs `program args…` inside namespace `name` with `ip netns exec`; panics only if `ip` itself
/// cannot be started.
pub fn exec_in<I, S>(name: &str, program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new("ip")
        .args(["netns", "exec", name, program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip netns exec {name} {program}`: {e}"))
}

/// Writes sysctls (`net.ipv4.ip_forward` style keys) in the namespace at `path`.
pub fn write_sysctls(path: &Path, settings: &[(&str, &str)]) -> io::Result<()> {
    try_run_in(path, || {
        for (key, value) in settings {
            let file = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&file, value)
                .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))?;
        }
        Ok(())
    })?
}

/// Reads one sysctl in the namespace at `path`.
pub fn read_sysctl(path: &Path, key: &str) -> io::Result<String> {
    try_run_in(path, || {
        std::fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/")))
            .map(|s| s.trim().to_string())
    })?
}

/// The network namespaces under `/run/netns` whose name starts with `prefix`, sorted.
pub fn list(prefix: &str) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str().filter(|n| n.starts_with(prefix)) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn thread_name(path: &Path) -> String {
    let name = path.file_name().and_then(OsStr::to_str).unwrap_or("netns");
    // Thread names are cut to 15 bytes by the kernel anyway; keep the tail (the node/pod name).
    let tail: String = name
        .chars()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    tail
}

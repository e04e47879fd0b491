//! Runs iproute2 in batch mode: one `ip` process per namespace and phase instead of one per
//! command, with the failing command (and the namespace) named in the error.
use std::io::Write;
use std::process::{Command, Stdio};

use crate::TestbedError;

/// A list of `ip` commands (without the leading `ip`) to run in one namespace.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    netns: Option<String>,
    lines: Vec<String>,
}

impl Batch {
    /// Commands to run in namespace `netns` (`ip -n netns …`), or in the caller's namespace.
    pub(crate) fn new(netns: Option<&str>) -> Self {
        Self {
            netns: netns.map(str::to_string),
            lines: Vec::new(),
        }
    }

    /// Appends one command, e.g. `link set lo up`.
    pub(crate) fn push(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// The command as one would type it, for messages.
    fn display(&self, line: &str) -> String {
        match &self.netns {
            Some(ns) => format!("ip -n {ns} {line}"),
            None => format!("ip {line}"),
        }
    }

    /// Runs the batch; stops at the first failing command unless `force`.
    ///
    /// On failure returns how many commands (from the start) are known to have succeeded and the
    /// error naming the first failed command.
    pub(crate) fn run(&self, force: bool) -> Result<(), (usize, TestbedError)> {
        if self.lines.is_empty() {
            return Ok(());
        }
        let mut cmd = Command::new("ip");
        if let Some(ns) = &self.netns {
            cmd.args(["-n", ns]);
        }
        if force {
            cmd.arg("-force");
        }
        cmd.args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let io_err = |what: &str, source| {
            (
                0,
                TestbedError::Io {
                    context: format!("{what} `{}`", self.display("-batch -")),
                    source,
                },
            )
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| io_err("cannot start (is iproute2 installed?)", e))?;
        let mut input = self.lines.join("\n");
        input.push('\n');
        if let Some(mut stdin) = child.stdin.take() {
            // ip stops reading when a command fails; a broken pipe then is expected.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| io_err("cannot wait for", e))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let failed = failed_line(&stderr);
        let (ok, command) = match failed {
            Some(n) if n >= 1 && n <= self.lines.len() => (n - 1, self.display(&self.lines[n - 1])),
            _ => (
                0,
                format!("{} <<{}", self.display("-batch -"), self.lines.join("; ")),
            ),
        };
        let message: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("Command failed"))
            .collect();
        let mut stderr = message.join("; ");
        if stderr.is_empty() {
            stderr = format!("exit status {}", out.status);
        }
        Err((
            ok,
            TestbedError::Command {
                netns: self.netns.clone(),
                command,
                stderr,
            },
        ))
    }
}

/// The 1-based line number in iproute2's "Command failed -:N" (the first one).
fn failed_line(stderr: &str) -> Option<usize> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("Command failed -:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_failed_line() {
        assert_eq!(
            failed_line("RTNETLINK answers: File exists\nCommand failed -:12\n"),
            Some(12)
        );
        assert_eq!(failed_line("Error: bad\n"), None);
    }
}

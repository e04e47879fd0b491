//! The configuration file (`--config`, like hubble's): defaults for the connection flags.
//!
//! A YAML mapping keyed by the flags' names (`server`, `tls-ca-cert-files`; snake_case works
//! too). Read from `--config FILE`, else `$PERISCOPE_CLI_CONFIG`, else
//! `~/.config/periscope/config.yaml` when it exists. One precedence, as for the agent and the
//! relay: flag > environment variable > file > default. The file's values go through the flags'
//! own parsers (they are added to the command line as flags that were not given), so a bad
//! value is reported like a bad flag, and a key that is not a setting is an error naming it.
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "PERISCOPE_CLI_CONFIG";

/// The settings a file may hold: `(flag, environment variable that also sets it)`.
pub const KEYS: &[(&str, Option<&str>)] = &[
    ("server", Some("PERISCOPE_SERVER")),
    ("timeout", None),
    ("request-timeout", None),
    ("tls", None),
    ("tls-ca-cert-files", None),
    ("tls-client-cert-file", None),
    ("tls-client-key-file", None),
    ("tls-server-name", None),
    ("debug", None),
];

/// `--config`'s value on the command line (before a `--`), if any.
fn config_flag(argv: &[OsString]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            return None;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Whether `--flag` (or `-D` for debug) is on the command line.
fn given(argv: &[OsString], flag: &str) -> bool {
    let long = format!("--{flag}");
    let with_value = format!("--{flag}=");
    argv.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == long || a.starts_with(&with_value) || (flag == "debug" && a == "-D")
    })
}

/// The command line with the file's settings added as flags (those not given on the command
/// line nor by their environment variable). `env` reads the environment, `home` is `$HOME`.
pub fn merge(
    argv: Vec<OsString>,
    env: impl Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Vec<OsString>, String> {
    let (path, must_exist) = match config_flag(&argv) {
        Some(p) => (p, true),
        None => match env(CONFIG_ENV).filter(|v| !v.is_empty()) {
            Some(p) => (PathBuf::from(p), true),
            None => match home {
                Some(h) => (h.join(".config/periscope/config.yaml"), false),
                None => return Ok(argv),
            },
        },
    };
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(argv),
        Err(e) => return Err(format!("--config {shown}: {e}")),
    };
    if text.trim().is_empty() {
        return Ok(argv);
    }
    let file: serde_yaml::Mapping =
        serde_yaml::from_str(&text).map_err(|e| format!("--config {shown}: {e}"))?;
    let mut added: Vec<OsString> = Vec::new();
    for (key, value) in file {
        let key = key
            .as_str()
            .ok_or_else(|| format!("--config {shown}: a key is not a string: {key:?}"))?
            .replace('_', "-");
        let Some((flag, env_var)) = KEYS.iter().find(|(k, _)| *k == key) else {
            return Err(format!(
                "--config {shown}: unknown setting `{key}` (settings: {})",
                KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            ));
        };
        if given(&argv, flag) || env_var.and_then(&env).is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let scalar = |v: &serde_yaml::Value| -> Result<String, String> {
            match v {
                serde_yaml::Value::String(s) => Ok(s.clone()),
                serde_yaml::Value::Number(n) => Ok(n.to_string()),
                serde_yaml::Value::Bool(b) => Ok(b.to_string()),
                other => Err(format!(
                    "--config {shown}: `{key}`: expected a value, got {other:?}"
                )),
            }
        };
        match value {
            serde_yaml::Value::Null => {}
            serde_yaml::Value::Bool(b) if matches!(*flag, "tls" | "debug") => {
                if b {
                    added.push(format!("--{flag}").into());
                }
            }
            serde_yaml::Value::Sequence(items) => {
                for item in &items {
                    added.push(format!("--{flag}={}", scalar(item)?).into());
                }
            }
            v => added.push(format!("--{flag}={}", scalar(&v)?).into()),
        }
    }
    // Global flags may come anywhere: right after the program name.
    let mut out = Vec::with_capacity(argv.len() + added.len());
    let mut argv = argv.into_iter();
    out.extend(argv.next());
    out.extend(added);
    out.extend(argv);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    /// A scratch path under the temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Scratch(std::env::temp_dir().join(format!(
                "periscope-cli-config-{}-{n}-{name}",
                std::process::id()
            )))
        }
        fn to_str(&self) -> Option<&str> {
            self.0.to_str()
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file(text: &str) -> Scratch {
        let f = Scratch::new("config.yaml");
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_file_fills_what_flags_and_environment_do_not_give() {
        let f = file(
            "server: relay.example:4245\ntls: true\ntls_ca_cert_files: [a.pem, b.pem]\n\
             timeout: 2s\ndebug: false\n",
        );
        let p = f.to_str().unwrap();
        let out = merge(args(&["periscope", "--config", p, "status"]), no_env, None).unwrap();
        assert_eq!(
            out,
            args(&[
                "periscope",
                "--server=relay.example:4245",
                "--tls",
                "--tls-ca-cert-files=a.pem",
                "--tls-ca-cert-files=b.pem",
                "--timeout=2s",
                "--config",
                p,
                "status"
            ])
        );
        // A flag wins over the file; so does the server's environment variable.
        let out = merge(
            args(&["periscope", "status", "--config", p, "--timeout=9s"]),
            |k| (k == "PERISCOPE_SERVER").then(|| "env:4245".to_string()),
            None,
        )
        .unwrap();
        assert!(
            !out.iter()
                .any(|a| a.to_string_lossy().starts_with("--server"))
        );
        assert!(!out.contains(&OsString::from("--timeout=2s")));
        assert!(out.contains(&OsString::from("--tls")));
        // The file named by the environment, then the default path only when it exists.
        let out = merge(
            args(&["periscope", "status"]),
            |k| (k == CONFIG_ENV).then(|| p.to_string()),
            None,
        )
        .unwrap();
        assert!(out.contains(&OsString::from("--server=relay.example:4245")));
        let home = Scratch::new("home");
        std::fs::create_dir_all(home.path()).unwrap();
        let plain = args(&["periscope", "status"]);
        assert_eq!(
            merge(plain.clone(), no_env, Some(home.path())).unwrap(),
            plain
        );
        std::fs::create_dir_all(home.path().join(".config/periscope")).unwrap();
        std::fs::write(
            home.path().join(".config/periscope/config.yaml"),
            "server: home:4245\n",
        )
        .unwrap();
        let out = merge(plain, no_env, Some(home.path())).unwrap();
        assert_eq!(out[1], OsString::from("--server=home:4245"));
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_the_setting() {
        let f = file("server: x:1\nverdict: DROPPED\n");
        let p = f.to_str().unwrap().to_owned();
        let e = merge(args(&["periscope", "--config", &p, "status"]), no_env, None).unwrap_err();
        assert!(e.contains(&p) && e.contains("`verdict`"), "{e}");
        let e = merge(
            args(&[
                "periscope",
                "--config=/nonexistent/periscope.yaml",
                "status",
            ]),
            no_env,
            None,
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/periscope.yaml"), "{e}");
        let f = file("server: {a: 1}\n");
        let e = merge(
            args(&["periscope", "--config", f.to_str().unwrap(), "status"]),
            no_env,
            None,
        )
        .unwrap_err();
        assert!(e.contains("`server`: expected a value"), "{e}");
    }
}

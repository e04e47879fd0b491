//! [`StoreConfig`]: where the relay stores flows and how it batches and spools them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Result, StoreError};

/// Where the password comes from: exactly one of `file` and `env`. The configuration names the
/// source, never the secret itself, so configuration files and their logs stay free of it.
///
/// `password: { file: /run/secrets/clickhouse }` (a mounted Kubernetes secret; one trailing
/// newline is ignored) or `password: { env: PERISCOPE_CLICKHOUSE_PASSWORD }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordSource {
    /// A file holding the password.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default)]
    pub env: Option<String>,
}

impl PasswordSource {
    /// The password in `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            file: Some(path.into()),
            env: None,
        }
    }

    /// The password in the environment variable `name`.
    pub fn env(name: impl Into<String>) -> Self {
        Self {
            file: None,
            env: Some(name.into()),
        }
    }

    /// Reads the password. Errors name the source, not the value.
    pub fn read(&self) -> Result<String> {
        match (&self.file, &self.env) {
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|e| StoreError::Password {
                    source_name: format!("file {}", path.display()),
                    reason: e.to_string(),
                })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
            }
            (None, Some(name)) => std::env::var(name).map_err(|e| StoreError::Password {
                source_name: format!("environment variable {name}"),
                reason: e.to_string(),
            }),
            _ => Err(StoreError::Config {
                field: "password",
                reason: "give exactly one of file and env".into(),
            }),
        }
    }
}

/// The relay's flow storage: the ClickHouse server, batching, the spool and retention.
///
/// In YAML, durations are written like `5s`, `500ms` or `1m`:
///
/// ```yaml
/// url: http://clickhouse:8123
/// database: periscope
/// user: periscope
/// password: { file: /run/secrets/clickhouse }
/// cluster_name: prod-eu
/// max_rows: 100000
/// max_bytes: 33554432
/// period: 2s
/// spool_dir: /var/lib/periscope/spool
/// spool_max_bytes: 1073741824
/// retention_days: 7
/// settle_quiet: 1m
/// settle_every: 30s
/// clickhouse_cluster: periscope   # a remote_servers name: sharded, replicated tables
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// ClickHouse HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding Periscope's tables; created by the migrations if missing. Default
    /// `periscope`.
    #[serde(default = "defaults::database")]
    pub database: String,
    /// ClickHouse user. Default `default`.
    #[serde(default = "defaults::user")]
    pub user: String,
    /// Where the ClickHouse password comes from (a file or an environment variable); none when
    /// absent. The password itself is never part of the configuration and never logged.
    #[serde(default)]
    pub password: Option<PasswordSource>,
    /// Name of the cluster this relay serves, stored in every row's `cluster` column. Default
    /// `default`.
    #[serde(default = "defaults::cluster_name")]
    pub cluster_name: String,
    /// A batch is committed when it holds this many rows. Default 100000.
    #[serde(default = "defaults::max_rows")]
    pub max_rows: u64,
    /// A batch is committed when it holds this many uncompressed bytes. Default 32 MiB.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u64,
    /// A batch is committed at the latest this long after its first row, even when no more
    /// flows come (what makes a quiet stream visible in history). Default `2s`.
    #[serde(default = "defaults::period", with = "duration")]
    pub period: Duration,
    /// Timeout of one request to ClickHouse (sending a batch, its commit, a query); a server
    /// that hangs longer counts as down. Default `30s`.
    #[serde(default = "defaults::timeout", with = "duration")]
    pub timeout: Duration,
    /// Flows waiting between the live stream and the writer, at most; beyond, flows are
    /// dropped and counted (the live stream never waits for storage). Default 100000.
    #[serde(default = "defaults::queue_flows")]
    pub queue_flows: usize,
    /// Directory of the on-disk spool (created if missing). Flows that cannot be written to
    /// ClickHouse wait there, across relay restarts. Default `/var/lib/periscope/spool`.
    #[serde(default = "defaults::spool_dir")]
    pub spool_dir: PathBuf,
    /// Bytes the spool may take on disk; flows beyond are dropped and counted. Default 1 GiB.
    #[serde(default = "defaults::spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Days of flows to keep (at least 1): the tables' TTL on modern servers, dropped day
    /// partitions (at start and hourly) on 18.16. Default 7.
    #[serde(default = "defaults::retention_days")]
    pub retention_days: u32,
    /// A minute of the service map is settled (its edges' exact counts written down as plain
    /// numbers, which map queries read fast; see `store::settle`) once it has had no writes for
    /// this long. It must exceed the time a write takes on the server, so keep it well above the
    /// insert latency in production. Default `1m`.
    #[serde(default = "defaults::settle_quiet", with = "duration")]
    pub settle_quiet: Duration,
    /// How often the relay looks for minutes to settle (500 at most per round, newest first).
    /// Default `30s`.
    #[serde(default = "defaults::settle_every", with = "duration")]
    pub settle_every: Duration,
    /// ClickHouse cluster (a `remote_servers` name of the server at `url`) to shard and
    /// replicate the tables over; none (the default) for a single server. With a cluster the
    /// migrations create each table as a `Replicated*` local table `<name>_local` on every
    /// server (`ON CLUSTER`; the servers need ZooKeeper and the macros `{shard}` and
    /// `{replica}`) plus a `Distributed` table `<name>`, which the relay writes to (synchronously:
    /// `insert_distributed_sync`) and reads history from; any server of the cluster can be `url`.
    /// Flows are sharded by `cityHash64(uuid)`. A database created without a cluster cannot be
    /// switched to one. See storage-schema/README.md, "Clusters and sizing".
    #[serde(default)]
    pub clickhouse_cluster: Option<String>,
    /// Read history from ClickHouse without writing flows to it (no writer, spool, migrations
    /// or settling): for a relay above other relays that already store their nodes' flows (a
    /// top relay over shard relays, README "Many relays"), which would otherwise insert every
    /// flow a second time. Alerts are still stored. Default false.
    #[serde(default)]
    pub read_only: bool,
}

mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn database() -> String {
        "periscope".into()
    }
    pub fn user() -> String {
        "default".into()
    }
    pub fn cluster_name() -> String {
        "default".into()
    }
    pub fn max_rows() -> u64 {
        100_000
    }
    pub fn max_bytes() -> u64 {
        32 << 20
    }
    pub fn period() -> Duration {
        Duration::from_secs(2)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn settle_quiet() -> Duration {
        Duration::from_secs(60)
    }
    pub fn settle_every() -> Duration {
        Duration::from_secs(30)
    }
    pub fn queue_flows() -> usize {
        100_000
    }
    pub fn spool_dir() -> PathBuf {
        "/var/lib/periscope/spool".into()
    }
    pub fn spool_max_bytes() -> u64 {
        1 << 30
    }
    pub fn retention_days() -> u32 {
        7
    }
}

/// `Duration` as a humantime string (`2s`, `500ms`, `1m 30s`).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl StoreConfig {
    /// A configuration with every default, for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            database: defaults::database(),
            user: defaults::user(),
            password: None,
            cluster_name: defaults::cluster_name(),
            max_rows: defaults::max_rows(),
            max_bytes: defaults::max_bytes(),
            period: defaults::period(),
            timeout: defaults::timeout(),
            queue_flows: defaults::queue_flows(),
            spool_dir: defaults::spool_dir(),
            spool_max_bytes: defaults::spool_max_bytes(),
            retention_days: defaults::retention_days(),
            settle_quiet: defaults::settle_quiet(),
            settle_every: defaults::settle_every(),
            clickhouse_cluster: None,
            read_only: false,
        }
    }

    /// The storage crate's migration settings for this configuration.
    pub fn migrate_config(&self) -> periscope_storage::MigrateConfig {
        periscope_storage::MigrateConfig {
            database: self.database.clone(),
            retention_days: self.retention_days,
            cluster: self.clickhouse_cluster.clone(),
        }
    }

    /// Checks every value that could only fail later.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(StoreError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad("url", "must be an http:// or https:// URL");
        }
        if self.max_rows == 0 {
            return bad("max_rows", "must be at least 1");
        }
        if self.max_bytes == 0 {
            return bad("max_bytes", "must be at least 1");
        }
        if self.period.is_zero() {
            return bad("period", "must be longer than zero");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be longer than zero");
        }
        if self.queue_flows == 0 {
            return bad("queue_flows", "must be at least 1");
        }
        if self.settle_every.is_zero() {
            return bad("settle_every", "must be longer than zero");
        }
        if u32::try_from(self.settle_quiet.as_secs()).is_err() {
            return bad("settle_quiet", "must be shorter than 136 years");
        }
        if let Some(p) = &self.password
            && p.file.is_some() == p.env.is_some()
        {
            return bad("password", "give exactly one of file and env");
        }
        if self.spool_dir.as_os_str().is_empty() {
            return bad("spool_dir", "must not be empty");
        }
        self.migrate_config()
            .validate()
            .map_err(|e| StoreError::Config {
                field: "database/retention_days/clickhouse_cluster",
                reason: e.to_string(),
            })
    }

    /// A client for the server (no database selected: the migrations create it), with the
    /// password read from its source. Validation is off, as the storage crate requires; with a
    /// `clickhouse_cluster`, the settings its Distributed tables need
    /// ([`periscope_storage::MigrateConfig::prepare_client`]).
    pub fn client(&self) -> Result<clickhouse::Client> {
        let mut client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user);
        if let Some(source) = &self.password {
            client = client.with_password(source.read()?);
        }
        Ok(self.migrate_config().prepare_client(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_defaults_and_durations() {
        let cfg: StoreConfig = serde_yaml::from_str(
            "url: http://ch:8123\nperiod: 500ms\npassword: { env: CH_PW }\nspool_dir: /tmp/s\n",
        )
        .unwrap();
        assert_eq!(cfg.period, Duration::from_millis(500));
        assert_eq!(cfg.password, Some(PasswordSource::env("CH_PW")));
        assert_eq!(cfg.database, "periscope");
        assert_eq!(cfg.max_rows, 100_000);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_inline_passwords_are_refused() {
        let e = serde_yaml::from_str::<StoreConfig>("url: http://ch:8123\nbogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(
            serde_yaml::from_str::<StoreConfig>("url: http://ch:8123\npassword: hunter2\n")
                .is_err()
        );
        let both: StoreConfig = serde_yaml::from_str(
            "url: http://ch:8123\npassword: { env: A, file: /b }\nspool_dir: /tmp/s\n",
        )
        .unwrap();
        let e = both.validate().unwrap_err().to_string();
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn password_file_drops_one_newline_and_errors_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(PasswordSource::file(path).read().unwrap(), "s3cret");
        let e = PasswordSource::file(dir.path().join("missing"))
            .read()
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let e = PasswordSource::env("PERISCOPE_TEST_SURELY_UNSET_VAR")
            .read()
            .unwrap_err()
            .to_string();
        assert!(e.contains("PERISCOPE_TEST_SURELY_UNSET_VAR"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = StoreConfig::new("http://ch:8123");
        cfg.max_rows = 0;
        assert!(cfg.validate().unwrap_err().to_string().contains("max_rows"));
        let mut cfg = StoreConfig::new("ch:8123");
        cfg.spool_dir = "/tmp/x".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("url"));
        let mut cfg = StoreConfig::new("http://ch:8123");
        cfg.database = "bad-name".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("database"));
        let mut cfg = StoreConfig::new("http://ch:8123");
        cfg.clickhouse_cluster = Some("a b".into());
        assert!(cfg.validate().unwrap_err().to_string().contains("cluster"));
    }

    #[test]
    fn a_clickhouse_cluster_reaches_the_migrations() {
        let cfg: StoreConfig =
            serde_yaml::from_str("url: http://ch:8123\nclickhouse_cluster: periscope\n").unwrap();
        assert_eq!(cfg.clickhouse_cluster.as_deref(), Some("periscope"));
        assert_eq!(cfg.migrate_config().cluster.as_deref(), Some("periscope"));
        assert_eq!(
            StoreConfig::new("http://ch:8123").migrate_config().cluster,
            None
        );
    }
}

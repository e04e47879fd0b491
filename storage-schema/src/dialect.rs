//! Server version detection and the two DDL dialects.

use std::fmt;

use crate::{Error, Result, ch_err};

/// The SQL dialect of a server, which picks the migration files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// ClickHouse 18.16 up to 23.7: `DateTime` plus nanoseconds in `time_ns`, no TTL (retention by
    /// dropping partitions), no LowCardinality, no codecs; parameters bound client-side.
    Legacy,
    /// ClickHouse 23.8 and newer: `DateTime64(9)`, LowCardinality, TTL, codecs, skipping indexes;
    /// server-side `{name:Type}` query parameters.
    Modern,
}

impl Dialect {
    /// The oldest server this crate runs on.
    pub const OLDEST: ServerVersion = ServerVersion::new(18, 16, 0, 0);
    /// The first server that gets the modern DDL.
    pub const MODERN_SINCE: ServerVersion = ServerVersion::new(23, 8, 0, 0);

    /// The dialect for a server version, or [`Error::ServerTooOld`].
    pub fn for_version(version: ServerVersion) -> Result<Self> {
        if version < Self::OLDEST {
            Err(Error::ServerTooOld { version })
        } else if version < Self::MODERN_SINCE {
            Ok(Self::Legacy)
        } else {
            Ok(Self::Modern)
        }
    }

    /// Lower-case name, as recorded in `schema_migrations` and used as the migrations folder.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Modern => "modern",
        }
    }

    /// Inverse of [`Dialect::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "legacy" => Some(Self::Legacy),
            "modern" => Some(Self::Modern),
            _ => None,
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ClickHouse version as `SELECT version()` prints it (`18.16.1`, `23.8.2.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// Year-based major (18, 23, 26).
    pub major: u32,
    /// Minor (month of the release for 20.x and later).
    pub minor: u32,
    /// Patch.
    pub patch: u32,
    /// Build number (0 when absent).
    pub build: u32,
}

impl ServerVersion {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32, build: u32) -> Self {
        Self {
            major,
            minor,
            patch,
            build,
        }
    }

    /// Parses `major.minor[.patch[.build]]`, ignoring a suffix after the numbers of a part
    /// (`24.3.1.2672-lts`).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::UnparsableVersion {
            version: text.to_owned(),
        };
        let mut parts = [0u32; 4];
        let mut count = 0;
        for (i, part) in text.trim().split('.').take(4).enumerate() {
            let digits: &str = &part[..part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len())];
            if digits.is_empty() {
                break;
            }
            parts[i] = digits.parse().map_err(|_| bad())?;
            count = i + 1;
        }
        if count < 2 {
            return Err(bad());
        }
        Ok(Self::new(parts[0], parts[1], parts[2], parts[3]))
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if self.build != 0 {
            write!(f, ".{}", self.build)?;
        }
        Ok(())
    }
}

/// Asks the server for its version (`SELECT version()`).
pub async fn server_version(client: &clickhouse::Client) -> Result<ServerVersion> {
    let text: String = client
        .query_raw("SELECT version()")
        .fetch_one()
        .await
        .map_err(ch_err("asking the server for its version"))?;
    ServerVersion::parse(&text)
}

impl Dialect {
    /// Detects the server's version and its dialect.
    pub async fn detect(client: &clickhouse::Client) -> Result<(Self, ServerVersion)> {
        let version = server_version(client).await?;
        Ok((Self::for_version(version)?, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_pick_the_dialect() {
        let v = |s: &str| ServerVersion::parse(s).unwrap();
        assert_eq!(v("18.16.1"), ServerVersion::new(18, 16, 1, 0));
        assert_eq!(v("23.8.2.7"), ServerVersion::new(23, 8, 2, 7));
        assert_eq!(v("24.3.1.2672-lts"), ServerVersion::new(24, 3, 1, 2672));
        assert_eq!(v("26.9"), ServerVersion::new(26, 9, 0, 0));
        for bad in ["", "abc", "18", "x.1.2"] {
            assert!(ServerVersion::parse(bad).is_err(), "{bad:?} parsed");
        }

        assert_eq!(Dialect::for_version(v("18.16.1")).unwrap(), Dialect::Legacy);
        assert_eq!(Dialect::for_version(v("19.17.4")).unwrap(), Dialect::Legacy);
        assert_eq!(
            Dialect::for_version(v("23.7.6.1")).unwrap(),
            Dialect::Legacy
        );
        assert_eq!(
            Dialect::for_version(v("23.8.1.1")).unwrap(),
            Dialect::Modern
        );
        assert_eq!(
            Dialect::for_version(v("26.9.2.1")).unwrap(),
            Dialect::Modern
        );
        let err = Dialect::for_version(v("18.14.19")).unwrap_err();
        assert!(matches!(err, Error::ServerTooOld { .. }), "{err}");
        assert!(err.to_string().contains("18.14.19"), "{err}");
        assert!(err.to_string().contains("18.16"), "{err}");
    }

    #[test]
    fn dialect_names_round_trip() {
        for d in [Dialect::Legacy, Dialect::Modern] {
            assert_eq!(Dialect::from_name(d.as_str()), Some(d));
        }
        assert_eq!(Dialect::from_name("other"), None);
    }
}

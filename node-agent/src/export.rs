//! Flow export to a JSON-lines file: one `observer.ExportEvent` (protobuf JSON, Hubble's field
//! names) per line, selected by allow/deny FlowFilters, rotated by size (`file` →
//! `file.1` → … → `file.<backups>`), like Hubble's flow exporter.
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use periscope_proto::flow::{Flow, FlowFilter, LostEvent};
use periscope_proto::observer::ExportEvent;
use periscope_proto::observer::export_event::ResponseTypes;

use crate::filters::{FilterError, FlowFilterSet};

/// Exporter settings.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The file written.
    pub path: PathBuf,
    /// Rotate when the file reaches this size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_backups: u32,
    /// Allow list (any matches; empty = all).
    pub allow: Vec<FlowFilter>,
    /// Deny list (none may match).
    pub deny: Vec<FlowFilter>,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A filter of the allow/deny lists is invalid.
    #[error("export filter: {0}")]
    Filter(#[from] FilterError),
    /// A filter list is not FlowFilter JSON.
    #[error("export filter {flag}: {source}")]
    FilterJson {
        /// The flag.
        flag: &'static str,
        /// Cause.
        source: serde_json::Error,
    },
    /// The file cannot be written.
    #[error("export file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Parses a list of FlowFilters given as JSON objects (`{"source_pod":["ns/"]}`), one per item.
pub fn parse_filters(flag: &'static str, items: &[String]) -> Result<Vec<FlowFilter>, ExportError> {
    items
        .iter()
        .map(|s| {
            serde_json::from_str::<FlowFilter>(s)
                .map_err(|source| ExportError::FilterJson { flag, source })
        })
        .collect()
}

/// A running exporter.
pub struct Exporter {
    cfg: ExportConfig,
    filter: FlowFilterSet,
    out: BufWriter<File>,
    size: u64,
    /// Events written.
    pub written: u64,
}

fn open(path: &Path) -> Result<(BufWriter<File>, u64), ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    Ok((BufWriter::new(f), size))
}

impl Exporter {
    /// Opens (appends to) the export file.
    pub fn new(cfg: ExportConfig) -> Result<Self, ExportError> {
        let filter = FlowFilterSet::compile(&cfg.allow, &cfg.deny)?;
        let (out, size) = open(&cfg.path)?;
        Ok(Exporter {
            cfg,
            filter,
            out,
            size,
            written: 0,
        })
    }

    fn write_event(&mut self, ev: &ExportEvent) -> Result<(), ExportError> {
        let mut line = serde_json::to_vec(ev).expect("ExportEvent serializes");
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        self.out
            .write_all(&line)
            .map_err(|source| ExportError::Io {
                path: self.cfg.path.clone(),
                source,
            })?;
        self.size += line.len() as u64;
        self.written += 1;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), ExportError> {
        let io = |source| ExportError::Io {
            path: self.cfg.path.clone(),
            source,
        };
        self.out.flush().map_err(io)?;
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.cfg.path.display()));
        if self.cfg.max_backups == 0 {
            let _ = std::fs::remove_file(&self.cfg.path);
        } else {
            let _ = std::fs::remove_file(name(self.cfg.max_backups));
            for i in (1..self.cfg.max_backups).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            std::fs::rename(&self.cfg.path, name(1)).map_err(io)?;
        }
        let (out, size) = open(&self.cfg.path)?;
        self.out = out;
        self.size = size;
        Ok(())
    }

    /// Exports a flow if the filters select it.
    pub fn flow(&mut self, f: &Flow) -> Result<(), ExportError> {
        if !self.filter.matches(f) {
            return Ok(());
        }
        let ev = ExportEvent {
            node_name: f.node_name.clone(),
            time: f.time,
            response_types: Some(ResponseTypes::Flow(f.clone())),
        };
        self.write_event(&ev)
    }

    /// Exports a lost-events notice.
    pub fn lost(&mut self, l: &LostEvent, node: &str) -> Result<(), ExportError> {
        let ev = ExportEvent {
            node_name: node.into(),
            time: None,
            response_types: Some(ResponseTypes::LostEvents(*l)),
        };
        self.write_event(&ev)
    }

    /// Flushes buffered lines.
    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_proto::flow::{Endpoint, Verdict};

    fn flow(pod: &str, verdict: Verdict) -> Flow {
        Flow {
            verdict: verdict as i32,
            node_name: "n1".into(),
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: pod.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn filters_json_lines_and_rotation() {
        let dir = std::env::temp_dir().join(format!("periscope-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.json");
        let allow =
            parse_filters("--export-allowlist", &[r#"{"verdict":["DROPPED"]}"#.into()]).unwrap();
        let deny = parse_filters(
            "--export-denylist",
            &[r#"{"source_pod":["shop/noisy"]}"#.into()],
        )
        .unwrap();
        let mut e = Exporter::new(ExportConfig {
            path: path.clone(),
            max_bytes: 400,
            max_backups: 2,
            allow,
            deny,
        })
        .unwrap();
        for i in 0..20 {
            e.flow(&flow(
                if i % 2 == 0 { "web" } else { "noisy" },
                Verdict::Dropped,
            ))
            .unwrap();
            e.flow(&flow("web", Verdict::Forwarded)).unwrap();
        }
        e.flush();
        assert_eq!(e.written, 10, "only dropped flows of web");
        let mut lines = Vec::new();
        for p in [
            path.clone(),
            dir.join("flows.json.1"),
            dir.join("flows.json.2"),
        ] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 400, "{} is {} bytes", p.display(), text.len());
            lines.extend(text.lines().map(str::to_string));
        }
        assert!(!dir.join("flows.json.3").exists(), "at most 2 backups");
        assert!(lines.len() < 10, "the oldest rotated away");
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["flow"]["verdict"], "DROPPED");
            assert_eq!(v["node_name"], "n1");
            let back: ExportEvent = serde_json::from_str(l).unwrap();
            assert!(matches!(back.response_types, Some(ResponseTypes::Flow(_))));
        }
        let bad =
            parse_filters("--export-allowlist", &["{\"sauce_pod\":[\"x\"]}".into()]).unwrap_err();
        assert!(bad.to_string().contains("--export-allowlist"), "{bad}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

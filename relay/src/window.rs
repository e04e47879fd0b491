//! The embedded store: a bounded in-memory window of recent flows, kept as Arrow record batches
//! of the `flows` table's columns (`periscope_storage::arrow`). With no ClickHouse configured
//! (the demo's default) it answers the relay's history queries; its memory is bounded by a budget,
//! the oldest batches going first.
//!
//! Flows arrive in time order from the merge; they collect in an open batch of rows which is
//! sealed into a `RecordBatch` when it holds [`WindowConfig::batch_rows`] rows or is older than
//! [`WindowConfig::seal_after`]. Queries read sealed batches whose time range overlaps theirs
//! (each batch keeps its min/max time) and the open rows.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use periscope_filter::FlowFilterSet;
use periscope_proto::flow::Flow;
use periscope_storage::FlowRow;
use periscope_storage::arrow as pa;

/// Settings of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Most bytes the sealed Arrow batches may take (the Arrow buffers' memory); the oldest batch
    /// is evicted when a new one would exceed it.
    pub memory_budget_bytes: usize,
    /// Rows per sealed batch.
    pub batch_rows: usize,
    /// An open batch older than this is sealed even when not full.
    #[serde(with = "secs")]
    pub seal_after: Duration,
}

mod secs {
    use serde::Deserialize;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        Ok(std::time::Duration::from_secs_f64(f64::deserialize(d)?))
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            memory_budget_bytes: 256 << 20,
            batch_rows: 4096,
            seal_after: Duration::from_secs(5),
        }
    }
}

/// Counters of the window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WindowStats {
    /// Flows held (sealed and open).
    pub flows: u64,
    /// Sealed batches held.
    pub batches: u64,
    /// Bytes of the sealed batches.
    pub bytes: u64,
    /// Flows evicted to stay within the budget.
    pub evicted: u64,
    /// Flows that could not be converted (never expected; counted, not fatal).
    pub failed: u64,
}

struct Sealed {
    batch: RecordBatch,
    min_ns: i64,
    max_ns: i64,
    bytes: usize,
}

/// A history request against the window.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Oldest flow time (ns since the epoch), inclusive.
    pub since_ns: Option<i64>,
    /// Newest flow time, inclusive.
    pub until_ns: Option<i64>,
    /// Most flows returned (0 = all in the range).
    pub number: u64,
    /// The first `number` flows of the range instead of the last.
    pub first: bool,
}

/// The in-memory window.
pub struct Window {
    cfg: WindowConfig,
    cluster: String,
    sealed: VecDeque<Sealed>,
    open: Vec<FlowRow>,
    open_since: Option<Instant>,
    stats: WindowStats,
}

impl Window {
    /// An empty window; `cluster` names the flows' cluster in their rows.
    pub fn new(cfg: WindowConfig, cluster: &str) -> Window {
        Window {
            cfg: WindowConfig {
                batch_rows: cfg.batch_rows.max(1),
                ..cfg
            },
            cluster: cluster.to_string(),
            sealed: VecDeque::new(),
            open: Vec::new(),
            open_since: None,
            stats: WindowStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> WindowStats {
        self.stats
    }

    /// Adds flows (in time order, as the merge delivers them).
    pub fn push<'a>(&mut self, flows: impl IntoIterator<Item = &'a Flow>) {
        for f in flows {
            if self.open.is_empty() {
                self.open_since = Some(Instant::now());
            }
            self.open.push(FlowRow::from_flow(f, &self.cluster));
            self.stats.flows += 1;
            if self.open.len() >= self.cfg.batch_rows {
                self.seal();
            }
        }
        if self
            .open_since
            .is_some_and(|t| t.elapsed() >= self.cfg.seal_after)
        {
            self.seal();
        }
    }

    /// Seals the open rows into a batch (and evicts what the budget requires).
    pub fn seal(&mut self) {
        self.open_since = None;
        if self.open.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.open);
        match pa::to_batch(&rows) {
            Ok(batch) => {
                let (min_ns, max_ns) = pa::time_range(&batch).unwrap_or((0, 0));
                let bytes = batch.get_array_memory_size();
                self.stats.bytes += bytes as u64;
                self.stats.batches += 1;
                self.sealed.push_back(Sealed {
                    batch,
                    min_ns,
                    max_ns,
                    bytes,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = rows.len(), "cannot seal a window batch");
                self.stats.failed += rows.len() as u64;
                self.stats.flows -= rows.len() as u64;
            }
        }
        while self.stats.bytes as usize > self.cfg.memory_budget_bytes && self.sealed.len() > 1 {
            let old = self.sealed.pop_front().expect("non-empty");
            let n = old.batch.num_rows() as u64;
            self.stats.bytes -= old.bytes as u64;
            self.stats.batches -= 1;
            self.stats.flows -= n;
            self.stats.evicted += n;
        }
    }

    /// The oldest flow time held (ns), if any.
    pub fn oldest_ns(&self) -> Option<i64> {
        self.sealed
            .front()
            .map(|s| s.min_ns)
            .or_else(|| self.open.first().map(|r| r.time_ns))
    }

    /// Flows in the query's range that pass `filters`, oldest first; at most `number` (the last
    /// ones, or the first ones with `first`).
    pub fn query(&self, q: &Query, filters: &FlowFilterSet) -> Vec<Flow> {
        let lo = q.since_ns.unwrap_or(i64::MIN);
        let hi = q.until_ns.unwrap_or(i64::MAX);
        let in_range = |t: i64| t >= lo && t <= hi;
        let limit = if q.number == 0 {
            usize::MAX
        } else {
            q.number as usize
        };
        let mut out: VecDeque<Flow> = VecDeque::new();
        let take = |row: &FlowRow, out: &mut VecDeque<Flow>| -> bool {
            if !in_range(row.time_ns) {
                return true;
            }
            let Ok(f) = row.to_flow() else {
                return true;
            };
            if !filters.matches(&f) {
                return true;
            }
            out.push_back(f);
            if out.len() > limit {
                if q.first {
                    out.pop_back();
                    return false;
                }
                out.pop_front();
            }
            true
        };
        'scan: for s in &self.sealed {
            if s.max_ns < lo || s.min_ns > hi {
                continue;
            }
            let rows = match pa::from_batch(&s.batch) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable window batch");
                    continue;
                }
            };
            for r in &rows {
                if !take(r, &mut out) {
                    break 'scan;
                }
            }
        }
        if !(q.first && out.len() >= limit) {
            for r in &self.open {
                if !take(r, &mut out) {
                    break;
                }
            }
        }
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_proto::flow::{Endpoint, FlowFilter, Verdict};

    fn flow(i: i64, verdict: Verdict, pod: &str) -> Flow {
        Flow {
            uuid: format!("u{i}"),
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i,
                nanos: 5,
            }),
            verdict: verdict as i32,
            node_name: "c1/n1".into(),
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: pod.into(),
                labels: vec!["k8s:app=x".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ns(i: i64) -> i64 {
        (1_700_000_000 + i) * 1_000_000_000 + 5
    }

    fn all() -> FlowFilterSet {
        FlowFilterSet::compile(&[], &[]).unwrap()
    }

    #[test]
    fn answers_ranges_numbers_and_filters_across_sealed_and_open_rows() {
        let cfg = WindowConfig {
            batch_rows: 10,
            ..Default::default()
        };
        let mut w = Window::new(cfg, "c1");
        let flows: Vec<Flow> = (0..35)
            .map(|i| {
                let v = if i % 3 == 0 {
                    Verdict::Dropped
                } else {
                    Verdict::Forwarded
                };
                flow(i, v, if i % 2 == 0 { "web-1" } else { "api-1" })
            })
            .collect();
        w.push(&flows);
        assert_eq!(w.stats().batches, 3);
        assert_eq!(w.stats().flows, 35);
        assert_eq!(w.oldest_ns(), Some(ns(0)));

        let got = w.query(&Query::default(), &all());
        assert_eq!(got, flows, "every flow comes back whole, oldest first");
        let last = w.query(
            &Query {
                number: 4,
                ..Default::default()
            },
            &all(),
        );
        let uuids: Vec<_> = last.iter().map(|f| f.uuid.as_str()).collect();
        assert_eq!(uuids, ["u31", "u32", "u33", "u34"]);
        let first = w.query(
            &Query {
                number: 3,
                first: true,
                since_ns: Some(ns(8)),
                ..Default::default()
            },
            &all(),
        );
        let uuids: Vec<_> = first.iter().map(|f| f.uuid.as_str()).collect();
        assert_eq!(uuids, ["u8", "u9", "u10"]);
        let range = w.query(
            &Query {
                since_ns: Some(ns(12)),
                until_ns: Some(ns(21)),
                ..Default::default()
            },
            &all(),
        );
        assert_eq!(range.len(), 10);
        let dropped_web = FlowFilterSet::compile(
            &[FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                source_pod: vec!["shop/web".into()],
                ..Default::default()
            }],
            &[],
        )
        .unwrap();
        let got = w.query(&Query::default(), &dropped_web);
        let uuids: Vec<_> = got.iter().map(|f| f.uuid.as_str()).collect();
        assert_eq!(uuids, ["u0", "u6", "u12", "u18", "u24", "u30"]);
    }

    #[test]
    fn the_budget_evicts_the_oldest_batches() {
        let mut w = Window::new(
            WindowConfig {
                batch_rows: 100,
                memory_budget_bytes: 0,
                seal_after: Duration::from_secs(60),
            },
            "c1",
        );
        let flows: Vec<Flow> = (0..1000)
            .map(|i| flow(i, Verdict::Forwarded, "p"))
            .collect();
        w.push(&flows[..100]);
        let one_batch = w.stats().bytes as usize;
        assert!(one_batch > 0);
        // A budget of about three batches.
        w.cfg.memory_budget_bytes = one_batch * 3 + one_batch / 2;
        w.push(&flows[100..]);
        let st = w.stats();
        assert_eq!(st.batches, 3);
        assert_eq!(st.flows, 300);
        assert_eq!(st.evicted, 700);
        assert!(st.bytes as usize <= w.cfg.memory_budget_bytes);
        let got = w.query(&Query::default(), &all());
        assert_eq!(got.first().unwrap().uuid, "u700");
        assert_eq!(got.len(), 300);
    }

    #[test]
    fn an_open_batch_is_sealed_by_age() {
        let mut w = Window::new(
            WindowConfig {
                batch_rows: 1000,
                seal_after: Duration::ZERO,
                ..Default::default()
            },
            "c1",
        );
        w.push(&[flow(1, Verdict::Forwarded, "p")]);
        assert_eq!(w.stats().batches, 1);
        assert_eq!(w.query(&Query::default(), &all()).len(), 1);
    }
}

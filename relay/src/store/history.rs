//! [`History`]: GetFlows-style requests answered from ClickHouse.
//!
//! A request ([`HistoryRequest`]) has Hubble's GetFlows semantics: a window (`since`, `until`),
//! `number` (0: no limit) and `first` (the oldest `number` flows instead of the newest), and
//! allow/deny [`FlowFilter`]s. Results are always oldest first, like Hubble's output.
//!
//! What SQL can filter is pushed down into the shipped `history` query: the window, the cluster,
//! the verdict when every allow filter names exactly that one, and the namespace when every
//! allow filter's `source_pod` (or `destination_pod`) entries all lie in that one namespace. The
//! full [`FlowFilterSet`] then runs on every row read, so the answer is exactly Hubble's.
//!
//! Rows are read in pages (keyset paging on `(time_ns, uuid)`, so a long window never loads at
//! once and no row is read twice), until enough matching flows are found, the window is
//! exhausted, or the request has scanned [`HistoryLimits::max_scanned_rows`] rows (then the
//! result says `truncated`). The newest `number` flows are found by reading newest first and
//! handed out reversed; beyond [`HistoryLimits::max_buffered`] flows, the position of the
//! oldest one is found first and the flows are then read oldest first from there, so memory
//! stays bounded by a page.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt, stream};
use periscope_filter::FlowFilterSet;
use periscope_proto::flow::{Flow, FlowFilter, Verdict};
use periscope_proto::observer::GetFlowsRequest;
use periscope_storage::queries::{HistoryCursor, HistoryFilter, Window};
use periscope_storage::{Dialect, FlowRow, Queries};
use prost_types::Timestamp;
use tokio::sync::OnceCell;

use super::{Result, StoreConfig, StoreError};

/// The latest instant the legacy `time` column (a `DateTime`, seconds in a UInt32) can hold,
/// with the query's `+ 1` second: windows are clamped into `[0, MAX_NS]`.
const MAX_NS: i64 = (u32::MAX as i64 - 1) * 1_000_000_000 + 999_999_999;

/// A GetFlows-style history request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryRequest {
    /// Window start (inclusive); none: the beginning of time.
    pub since: Option<Timestamp>,
    /// Window end (inclusive); none: now (when the request starts).
    pub until: Option<Timestamp>,
    /// At most this many flows; 0: every flow in the window.
    pub number: u64,
    /// The oldest `number` flows of the window instead of the newest.
    pub first: bool,
    /// Keep a flow if any of these matches (none: keep all): GetFlows' `whitelist`.
    pub allow: Vec<FlowFilter>,
    /// Drop a flow if any of these matches: GetFlows' `blacklist`.
    pub deny: Vec<FlowFilter>,
    /// Only flows stored under this cluster name (none: every cluster in the database).
    pub cluster: Option<String>,
}

impl HistoryRequest {
    /// The history part of a GetFlows request (`follow` and the field mask are the caller's).
    pub fn from_get_flows(req: &GetFlowsRequest) -> Self {
        Self {
            since: req.since,
            until: req.until,
            number: req.number,
            first: req.first,
            allow: req.whitelist.clone(),
            deny: req.blacklist.clone(),
            cluster: None,
        }
    }
}

/// Bounds of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Rows per query. Default 5000.
    pub page_rows: u32,
    /// Rows a request may read before it stops with `truncated` (filters that match little in a
    /// long window). Default 2,000,000.
    pub max_scanned_rows: u64,
    /// The newest `number` flows are buffered and reversed up to this many; beyond, the start
    /// position is found first and the window read twice. Default 50,000.
    pub max_buffered: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            page_rows: 5000,
            max_scanned_rows: 2_000_000,
            max_buffered: 50_000,
        }
    }
}

/// The flows of a request, with what it took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryResult {
    /// Matching flows, oldest first.
    pub flows: Vec<Flow>,
    /// Rows read from ClickHouse.
    pub scanned_rows: u64,
    /// Stored rows that did not convert back into a Flow (skipped).
    pub unreadable_rows: u64,
    /// The request stopped at [`HistoryLimits::max_scanned_rows`] before it was complete.
    pub truncated: bool,
}

/// History reads from ClickHouse. Cheap to clone; the server's dialect is detected on first use.
#[derive(Clone)]
pub struct History {
    client: clickhouse::Client,
    database: String,
    queries: std::sync::Arc<OnceCell<Queries>>,
    limits: HistoryLimits,
    /// The schema is in cluster mode (`clickhouse_cluster`): queries read Distributed tables.
    cluster: bool,
}

impl History {
    /// History from the store's server and database.
    pub fn new(cfg: &StoreConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self::with_client(cfg.client()?, &cfg.database)
            .with_cluster(cfg.clickhouse_cluster.is_some()))
    }

    /// Reads a cluster-mode schema (Distributed tables; see
    /// [`periscope_storage::Queries::for_cluster`]); [`History::new`] sets it from the store's
    /// `clickhouse_cluster`.
    pub fn with_cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// History from `database` through `client` (no database selected on it).
    pub fn with_client(client: clickhouse::Client, database: &str) -> Self {
        Self {
            client: periscope_storage::prepare_client(client),
            database: database.to_owned(),
            queries: Default::default(),
            limits: HistoryLimits::default(),
            cluster: false,
        }
    }

    /// Other bounds.
    pub fn with_limits(mut self, limits: HistoryLimits) -> Self {
        self.limits = HistoryLimits {
            page_rows: limits.page_rows.max(1),
            ..limits
        };
        self
    }

    async fn queries(&self) -> Result<&Queries> {
        self.queries
            .get_or_try_init(|| async {
                let (dialect, _) =
                    Dialect::detect(&self.client)
                        .await
                        .map_err(|source| StoreError::Storage {
                            operation: "detecting the ClickHouse version for history".into(),
                            source,
                        })?;
                Queries::new(&self.client, &self.database, dialect)
                    .map(|q| q.for_cluster(self.cluster))
                    .map_err(|source| StoreError::Storage {
                        operation: "preparing history queries".into(),
                        source,
                    })
            })
            .await
    }

    /// Service-map edges of `[since_ns, until_ns]` from the per-minute view `flow_edges_1m`
    /// (one row per edge and verdict, most flows first, at most `limit`).
    pub async fn service_map_edges(
        &self,
        since_ns: i64,
        until_ns: i64,
        limit: u32,
    ) -> Result<Vec<periscope_storage::queries::ServiceMapEdge>> {
        let q = self.queries().await?;
        q.service_map_edges(
            periscope_storage::queries::Window { since_ns, until_ns },
            limit,
        )
        .await
        .map_err(|source| StoreError::Storage {
            operation: "reading the service map".into(),
            source,
        })
    }

    /// Pages through the answer to `req`, oldest first.
    pub fn pager(&self, req: &HistoryRequest) -> Result<HistoryPager> {
        let filters = FlowFilterSet::compile(&req.allow, &req.deny)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let since = req
            .since
            .as_ref()
            .map_or(0, |t| periscope_storage::time_ns_of(Some(t)))
            .clamp(0, MAX_NS);
        let until = req
            .until
            .as_ref()
            .map_or(now, |t| periscope_storage::time_ns_of(Some(t)))
            .clamp(0, MAX_NS);
        let (namespace, verdict) = push_down(&req.allow);
        let base = HistoryFilter {
            cluster: req.cluster.clone().unwrap_or_default(),
            namespace,
            verdict,
            ..HistoryFilter::window(
                Window {
                    since_ns: since,
                    until_ns: until,
                },
                self.limits.page_rows,
            )
        };
        let mode = if req.number == 0 || req.first {
            Mode::Forward {
                remaining: (req.number > 0).then_some(req.number),
            }
        } else {
            Mode::Last { n: req.number }
        };
        Ok(HistoryPager {
            history: self.clone(),
            filters,
            base,
            mode,
            cursor: None,
            skip_after: None,
            done: since > until,
            scanned_rows: 0,
            unreadable_rows: 0,
            truncated: false,
        })
    }

    /// Every matching flow of `req`, oldest first (for `number == 0`, bounded only by the
    /// window and [`HistoryLimits::max_scanned_rows`]: prefer [`History::stream`]).
    pub async fn flows(&self, req: &HistoryRequest) -> Result<HistoryResult> {
        let mut pager = self.pager(req)?;
        let mut flows = Vec::new();
        while let Some(page) = pager.next_page().await? {
            flows.extend(page);
        }
        Ok(HistoryResult {
            flows,
            scanned_rows: pager.scanned_rows,
            unreadable_rows: pager.unreadable_rows,
            truncated: pager.truncated,
        })
    }

    /// The matching flows of `req` one by one, oldest first, read a page at a time. The stream
    /// ends after the first error.
    pub fn stream(&self, req: &HistoryRequest) -> Result<impl Stream<Item = Result<Flow>> + Send> {
        let pager = self.pager(req)?;
        Ok(stream::unfold(Some(pager), |state| async move {
            let mut pager = state?;
            match pager.next_page().await {
                Ok(Some(page)) => Some((page.into_iter().map(Ok).collect::<Vec<_>>(), Some(pager))),
                Ok(None) => None,
                Err(e) => Some((vec![Err(e)], None)),
            }
        })
        .flat_map(stream::iter))
    }
}

/// The namespace and verdict implied by every allow filter ("" when none is).
fn push_down(allow: &[FlowFilter]) -> (String, String) {
    fn common(mut values: impl Iterator<Item = Option<String>>) -> Option<String> {
        let first = values.next()??;
        values
            .all(|v| v.as_deref() == Some(first.as_str()))
            .then_some(first)
    }
    fn namespace_of(pods: &[String]) -> Option<String> {
        common(pods.iter().map(|p| {
            let ns = p.split_once('/').map_or("default", |(ns, _)| ns);
            (!ns.is_empty()).then(|| ns.to_owned())
        }))
    }
    if allow.is_empty() {
        return (String::new(), String::new());
    }
    let verdict = common(allow.iter().map(|f| {
        match f.verdict.as_slice() {
            [v] => Verdict::try_from(*v)
                .ok()
                .map(|v| v.as_str_name().to_owned()),
            _ => None,
        }
    }));
    let namespace = common(
        allow
            .iter()
            .map(|f| namespace_of(&f.source_pod).or_else(|| namespace_of(&f.destination_pod))),
    );
    (namespace.unwrap_or_default(), verdict.unwrap_or_default())
}

enum Mode {
    /// Oldest first from the window's start (or the cursor); `remaining` flows at most.
    Forward { remaining: Option<u64> },
    /// The newest `n`: to be found.
    Last { n: u64 },
    /// The newest flows, found, sorted newest first: handed out from the back.
    Buffered(Vec<Flow>),
}

/// Pages of a history answer, oldest first ([`History::pager`]).
pub struct HistoryPager {
    history: History,
    filters: FlowFilterSet,
    base: HistoryFilter,
    mode: Mode,
    cursor: Option<HistoryCursor>,
    /// Reading forward: rows at this `time_ns` with a greater uuid are not part of the answer
    /// (they come after the oldest of the newest `n` in newest-first order).
    skip_after: Option<HistoryCursor>,
    done: bool,
    scanned_rows: u64,
    unreadable_rows: u64,
    truncated: bool,
}

impl HistoryPager {
    /// Rows read from ClickHouse so far.
    pub fn scanned_rows(&self) -> u64 {
        self.scanned_rows
    }

    /// Stored rows skipped so far because they did not convert back into a Flow.
    pub fn unreadable_rows(&self) -> u64 {
        self.unreadable_rows
    }

    /// Whether the request stopped at its scan limit before it was complete.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Reads one page: the matching flows with their positions; `None` when the window is
    /// exhausted or the scan budget spent.
    async fn read(&mut self, descending: bool) -> Result<Option<Vec<(HistoryCursor, Flow)>>> {
        let budget = self
            .history
            .limits
            .max_scanned_rows
            .saturating_sub(self.scanned_rows);
        if self.done || budget == 0 {
            self.truncated |= !self.done;
            self.done = true;
            return Ok(None);
        }
        let mut filter = self.base.clone();
        filter.descending = descending;
        filter.limit = filter.limit.min(u32::try_from(budget).unwrap_or(u32::MAX));
        if let Some(c) = &self.cursor {
            // Narrow the window too, for partition pruning.
            if descending {
                filter.window.until_ns = c.time_ns;
            } else {
                filter.window.since_ns = c.time_ns;
            }
        }
        filter.after = self.cursor.clone();
        let queries = self.history.queries().await?;
        let rows = queries
            .history(&filter)
            .await
            .map_err(|source| StoreError::Storage {
                operation: "reading history".into(),
                source,
            })?;
        self.scanned_rows += rows.len() as u64;
        if rows.len() < filter.limit as usize {
            self.done = true;
        } else if self.scanned_rows >= self.history.limits.max_scanned_rows {
            self.truncated = true;
            self.done = true;
        }
        if let Some(last) = rows.last() {
            self.cursor = Some(HistoryCursor::after(last));
        }
        let mut out = Vec::new();
        for row in &rows {
            if let Some(skip) = &self.skip_after
                && row.time_ns == skip.time_ns
                && row.uuid > skip.uuid
            {
                continue;
            }
            match FlowRow::to_flow(row) {
                Ok(flow) if self.filters.matches(&flow) => {
                    out.push((HistoryCursor::after(row), flow));
                }
                Ok(_) => {}
                Err(_) => self.unreadable_rows += 1,
            }
        }
        Ok(Some(out))
    }

    /// The next page of matching flows, oldest first; `None` at the end.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Flow>>> {
        loop {
            match &mut self.mode {
                Mode::Buffered(newest_first) => {
                    if newest_first.is_empty() {
                        return Ok(None);
                    }
                    let take = newest_first
                        .len()
                        .min(self.history.limits.page_rows as usize);
                    let mut page = newest_first.split_off(newest_first.len() - take);
                    page.reverse();
                    return Ok(Some(page));
                }
                Mode::Forward { remaining } => {
                    let remaining = *remaining;
                    if remaining == Some(0) {
                        return Ok(None);
                    }
                    let Some(found) = self.read(false).await? else {
                        return Ok(None);
                    };
                    let mut page: Vec<Flow> = found.into_iter().map(|(_, f)| f).collect();
                    if let Some(r) = remaining {
                        page.truncate(usize::try_from(r).unwrap_or(usize::MAX));
                        self.mode = Mode::Forward {
                            remaining: Some(r - page.len() as u64),
                        };
                    }
                    if !page.is_empty() {
                        return Ok(Some(page));
                    }
                }
                Mode::Last { n } => {
                    let n = *n;
                    self.find_last(n).await?;
                }
            }
        }
    }

    /// Finds the newest `n` matching flows (reading newest first): buffers them when few
    /// enough, else notes the oldest one's position and reads forward from there.
    async fn find_last(&mut self, n: u64) -> Result<()> {
        let buffer = n <= self.history.limits.max_buffered;
        let mut found_all: Vec<(HistoryCursor, Flow)> = Vec::new();
        let mut count = 0u64;
        let mut oldest: Option<HistoryCursor> = None;
        while count < n {
            let Some(found) = self.read(true).await? else {
                break;
            };
            for (cursor, flow) in found {
                if count == n {
                    break;
                }
                count += 1;
                if buffer {
                    found_all.push((cursor, flow));
                } else {
                    oldest = Some(cursor);
                }
            }
        }
        if buffer {
            // Newest first in (time, uuid) order, so that ties come out like a forward read.
            found_all.sort_by(|(a, _), (b, _)| (b.time_ns, &b.uuid).cmp(&(a.time_ns, &a.uuid)));
            self.mode = Mode::Buffered(found_all.into_iter().map(|(_, f)| f).collect());
            return Ok(());
        }
        match oldest {
            None => self.mode = Mode::Buffered(Vec::new()),
            Some(oldest) => {
                // Newest-first order puts, at the oldest one's time, the uuids up to its own
                // first: read forward from that time, skipping the greater uuids there.
                self.base.window.since_ns = oldest.time_ns;
                self.cursor = None;
                self.skip_after = Some(oldest);
                self.done = false;
                self.mode = Mode::Forward { remaining: Some(n) };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(source: &[&str], destination: &[&str]) -> FlowFilter {
        FlowFilter {
            source_pod: source.iter().map(|s| s.to_string()).collect(),
            destination_pod: destination.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn verdicts(v: &[Verdict]) -> FlowFilter {
        FlowFilter {
            verdict: v.iter().map(|v| *v as i32).collect(),
            ..Default::default()
        }
    }

    fn down(allow: &[FlowFilter]) -> (String, String) {
        push_down(allow)
    }

    #[test]
    fn pushes_down_only_what_every_allow_filter_implies() {
        let none = (String::new(), String::new());
        assert_eq!(down(&[]), none);
        assert_eq!(
            down(&[verdicts(&[Verdict::Dropped])]),
            (String::new(), "DROPPED".into())
        );
        // Two verdicts in one filter, or different ones in two filters: no push-down.
        assert_eq!(down(&[verdicts(&[Verdict::Dropped, Verdict::Audit])]), none);
        assert_eq!(
            down(&[verdicts(&[Verdict::Dropped]), verdicts(&[Verdict::Audit])]),
            none
        );
        // One allow filter without a verdict: any verdict can match.
        assert_eq!(
            down(&[verdicts(&[Verdict::Dropped]), pods(&["shop/"], &[])]),
            none
        );
        assert_eq!(
            down(&[pods(&["shop/front", "shop/api"], &[])]),
            ("shop".into(), String::new())
        );
        // A bare name is in the default namespace, like the filter engine reads it.
        assert_eq!(
            down(&[pods(&["frontend"], &[])]),
            ("default".into(), String::new())
        );
        assert_eq!(down(&[pods(&["shop/a", "data/b"], &[])]), none);
        assert_eq!(
            down(&[pods(&[], &["data/db"]), pods(&["data/x"], &[])]),
            ("data".into(), String::new())
        );
        assert_eq!(down(&[pods(&["/x"], &[])]), none);
    }

    #[test]
    fn requests_take_the_get_flows_fields() {
        let req = GetFlowsRequest {
            number: 5,
            first: true,
            since: Some(Timestamp {
                seconds: 1,
                nanos: 2,
            }),
            whitelist: vec![verdicts(&[Verdict::Dropped])],
            blacklist: vec![pods(&["a/"], &[])],
            ..Default::default()
        };
        let h = HistoryRequest::from_get_flows(&req);
        assert_eq!((h.number, h.first), (5, true));
        assert_eq!(h.since, req.since);
        assert_eq!(h.allow, req.whitelist);
        assert_eq!(h.deny, req.blacklist);
    }
}

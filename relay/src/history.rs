//! History in the relay's GetFlows: a request with `since` or `until` is answered from the
//! relay's store — ClickHouse ([`crate::store::History`]) or the embedded in-memory window
//! ([`crate::window::Window`]) — which holds every flow the relay ingested, not only what is left
//! in the agents' ring buffers. Hubble's relay cannot do this.
//!
//! - Without `follow`: the answer comes from the store alone (same filters, number/first
//!   semantics).
//! - With `follow`: the stored part first, then the live merged stream. The live stream is asked
//!   for flows from [`SEAM`] before the end of the stored part, and the flows already sent (by
//!   uuid) are skipped, so the seam has no gap and no duplicate.
//! - Requests with neither `since` nor `until` are forwarded to the peers, like Hubble's relay.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use periscope_filter::FlowFilterSet;
use periscope_proto::flow::Flow;
use periscope_proto::observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response};
use tonic::Status;

use crate::codec::EncodedResponse;
use crate::store::{History, HistoryRequest};
use crate::window::{Query, Window};

/// How far before the end of the stored part the live part of a followed history starts.
pub const SEAM: Duration = Duration::from_secs(5);

/// A store that answers history requests.
#[tonic::async_trait]
pub trait HistorySource: Send + Sync + 'static {
    /// The flows of `req`'s range that pass its filters, oldest first (number/first applied).
    async fn flows(&self, req: &GetFlowsRequest) -> Result<Vec<Flow>, Status>;

    /// Whether the store holds everything from `since_ns` on (`None`: from the beginning).
    /// When it does not, the request is forwarded to the peers instead, whose buffers may
    /// reach further back (a relay that just started, an in-memory window that evicted).
    fn covers(&self, since_ns: Option<i64>) -> bool {
        let _ = since_ns;
        true
    }
}

/// History from ClickHouse.
pub struct ClickHouseHistory(pub History);

#[tonic::async_trait]
impl HistorySource for ClickHouseHistory {
    async fn flows(&self, req: &GetFlowsRequest) -> Result<Vec<Flow>, Status> {
        let r = self
            .0
            .flows(&HistoryRequest::from_get_flows(req))
            .await
            .map_err(|e| Status::unavailable(format!("history from ClickHouse: {e}")))?;
        if r.truncated {
            tracing::warn!(
                scanned = r.scanned_rows,
                "history answer truncated at the scan limit"
            );
        }
        Ok(r.flows)
    }
}

/// History from the in-memory window.
pub struct WindowHistory(pub Arc<Mutex<Window>>);

/// Nanoseconds since the epoch of an optional timestamp (the flows table's `time_ns`).
fn ns(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(|t| periscope_storage::time_ns_of(Some(t)))
}

#[tonic::async_trait]
impl HistorySource for WindowHistory {
    async fn flows(&self, req: &GetFlowsRequest) -> Result<Vec<Flow>, Status> {
        let filters = FlowFilterSet::compile(&req.whitelist, &req.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let q = Query {
            since_ns: ns(&req.since),
            until_ns: ns(&req.until),
            number: req.number,
            first: req.first,
        };
        let w = self.0.clone();
        tokio::task::spawn_blocking(move || w.lock().expect("window lock").query(&q, &filters))
            .await
            .map_err(|e| Status::internal(format!("window query: {e}")))
    }

    fn covers(&self, since_ns: Option<i64>) -> bool {
        let w = self.0.lock().expect("window lock");
        match (since_ns, w.oldest_ns()) {
            (_, None) => false,
            // From the beginning: only the peers know what came before the relay started.
            (None, Some(_)) => false,
            (Some(s), Some(oldest)) => oldest <= s,
        }
    }
}

/// Whether `req` is answered (first) from `source`: it has `since` or `until`, and the store
/// covers its start.
pub fn wants_history(source: &dyn HistorySource, req: &GetFlowsRequest) -> bool {
    (req.since.is_some() || req.until.is_some()) && source.covers(ns(&req.since))
}

fn flow_response(f: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        time: f.time,
        node_name: f.node_name.clone(),
        response_types: Some(get_flows_response::ResponseTypes::Flow(f)),
    }
}

/// Sends the stored part of `req` on `tx`; with `follow`, returns the live request to forward to
/// the peers and the uuids near the seam to skip in its answer.
pub async fn serve_stored(
    source: &dyn HistorySource,
    req: &GetFlowsRequest,
    tx: &tokio::sync::mpsc::Sender<Result<EncodedResponse, Status>>,
) -> Result<Option<(GetFlowsRequest, HashSet<String>)>, Status> {
    let mut stored_req = req.clone();
    stored_req.follow = false;
    let flows = source.flows(&stored_req).await?;
    let last_ns = flows.last().and_then(|f| ns(&f.time));
    let seam_from = last_ns.map(|t| t - SEAM.as_nanos() as i64);
    let mut seen = HashSet::new();
    for f in flows {
        if req.follow
            && let (Some(from), Some(t)) = (seam_from, ns(&f.time))
            && t >= from
        {
            seen.insert(f.uuid.clone());
        }
        if tx
            .send(Ok(EncodedResponse::encode(&flow_response(f))))
            .await
            .is_err()
        {
            return Ok(None);
        }
    }
    if !req.follow {
        return Ok(None);
    }
    let mut live = req.clone();
    live.number = 0;
    live.first = false;
    live.until = None;
    live.since = match seam_from {
        Some(t) => Some(crate::fanout::timestamp(t.into())),
        None => req.since,
    };
    Ok(Some((live, seen)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowConfig;
    use periscope_proto::flow::{FlowFilter, Verdict};

    fn flow(i: i64, v: Verdict) -> Flow {
        Flow {
            uuid: format!("u{i}"),
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i,
                nanos: 0,
            }),
            verdict: v as i32,
            node_name: "n1".into(),
            ..Default::default()
        }
    }

    fn ts(i: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + i,
            nanos: 0,
        })
    }

    #[tokio::test]
    async fn stored_part_then_a_live_request_from_before_the_seam() {
        let mut w = Window::new(WindowConfig::default(), "c1");
        let flows: Vec<Flow> = (0..20)
            .map(|i| {
                flow(
                    i,
                    if i % 2 == 0 {
                        Verdict::Dropped
                    } else {
                        Verdict::Forwarded
                    },
                )
            })
            .collect();
        w.push(&flows);
        let src = WindowHistory(Arc::new(Mutex::new(w)));
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        let req = GetFlowsRequest {
            since: ts(10),
            whitelist: vec![FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            }],
            follow: true,
            ..Default::default()
        };
        assert!(wants_history(&src, &req));
        // Before the window's oldest flow, or from the beginning: not covered.
        let older = GetFlowsRequest {
            since: ts(-1),
            ..req.clone()
        };
        assert!(!wants_history(&src, &older));
        let unbounded = GetFlowsRequest {
            until: ts(5),
            ..Default::default()
        };
        assert!(!wants_history(&src, &unbounded));
        let (live, seen) = serve_stored(&src, &req, &tx).await.unwrap().unwrap();
        drop(tx);
        let mut got = Vec::new();
        while let Some(Ok(r)) = rx.recv().await {
            if let Some(get_flows_response::ResponseTypes::Flow(f)) =
                r.decode().unwrap().response_types
            {
                got.push(f.uuid);
            }
        }
        assert_eq!(got, ["u10", "u12", "u14", "u16", "u18"]);
        // The live part starts SEAM before the last stored flow and skips what was sent.
        assert_eq!(live.since, ts(18 - SEAM.as_secs() as i64));
        assert!(live.follow && live.until.is_none() && live.number == 0);
        assert_eq!(live.whitelist, req.whitelist);
        let mut seen: Vec<_> = seen.into_iter().collect();
        seen.sort();
        assert_eq!(seen, ["u14", "u16", "u18"]);

        // Without follow: the stored part only, with number.
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        let req = GetFlowsRequest {
            since: ts(0),
            until: ts(5),
            number: 2,
            ..Default::default()
        };
        assert!(serve_stored(&src, &req, &tx).await.unwrap().is_none());
        drop(tx);
        let mut got = Vec::new();
        while let Some(Ok(r)) = rx.recv().await {
            if let Some(get_flows_response::ResponseTypes::Flow(f)) =
                r.decode().unwrap().response_types
            {
                got.push(f.uuid);
            }
        }
        assert_eq!(got, ["u4", "u5"]);
        assert!(!wants_history(&src, &GetFlowsRequest::default()));
    }
}

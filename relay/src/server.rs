//! The relay's `observer.Observer` service (Hubble wire-compatible).
//!
//! - GetFlows / GetAgentEvents / GetDebugEvents: forwarded to every peer with the request's
//!   filters and bounds, merged by time ([`crate::fanout`]). GetFlows filters on `node_name`
//!   are applied by the relay itself, on the names clients see (`cluster/node`): the peers get
//!   the request without them (allow filters lose their node_name part, deny filters with one
//!   are left out), so they send a superset that the relay narrows.
//! - ServerStatus: flows summed over the connected peers (relays count their nodes), the relay's
//!   uptime, connected / unavailable node counts and the unavailable nodes' names.
//! - GetNodes: every node behind every peer with its state, version, flow counts, address and
//!   TLS; nodes of peers that are down are listed with their last known data.
//! - GetNamespaces: the union of the connected peers' namespaces.
//!
//! Unary calls to peers run concurrently and each is bounded by the dial timeout, so a stalled
//! peer delays an answer by at most that and is reported unavailable.
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use periscope_filter::FlowFilterSet;
use periscope_proto::flow::FlowFilter;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_proto::observer::observer_server::Observer;
use periscope_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
};
use periscope_proto::relay::{NodeState, NodeStatusEvent};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::fanout::{self, BoxFuture, MergeOptions, Rpc, Window, nanos, now_ts, timestamp};
use crate::history::{HistorySource, serve_stored, wants_history};
use crate::peers::{Peer, Pool, fetch_nodes};

/// Version string of ServerStatus.
pub const VERSION: &str = concat!("periscope-relay ", env!("CARGO_PKG_VERSION"));

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A GetFlows request as forwarded: the wire request for the peers and the filter the relay
/// applies itself (node names), if any.
#[derive(Clone, Debug)]
pub struct FlowsReq {
    /// What the peers get.
    pub wire: GetFlowsRequest,
    /// The whole filter, applied to renamed flows when the request filters on node names.
    pub local: Option<Arc<FlowFilterSet>>,
}

impl FlowsReq {
    /// Validates a client's request and splits off its node-name filters.
    pub fn new(r: GetFlowsRequest) -> Result<Self, Status> {
        if r.first && r.follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        if let (Some(s), Some(u)) = (&r.since, &r.until)
            && nanos(Some(s)) > nanos(Some(u))
        {
            return Err(Status::invalid_argument("since is after until"));
        }
        let set = FlowFilterSet::compile(&r.whitelist, &r.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let by_node = |f: &FlowFilter| !f.node_name.is_empty();
        if !r.whitelist.iter().any(by_node) && !r.blacklist.iter().any(by_node) {
            return Ok(FlowsReq {
                wire: r,
                local: None,
            });
        }
        let mut wire = r;
        for f in &mut wire.whitelist {
            f.node_name.clear();
        }
        wire.blacklist.retain(|f| !by_node(f));
        Ok(FlowsReq {
            wire,
            local: Some(Arc::new(set)),
        })
    }
}

fn rename_in_place(peer: &Peer, name: &mut String) {
    if let std::borrow::Cow::Owned(n) = peer.rename(name) {
        *name = n;
    }
}

/// GetFlows.
pub struct Flows;

impl Rpc for Flows {
    type Req = FlowsReq;
    type Resp = GetFlowsResponse;

    fn open(ch: Channel, req: FlowsReq) -> BoxFuture<Result<tonic::Streaming<Self::Resp>, Status>> {
        Box::pin(async move {
            let mut c = ObserverClient::new(ch).max_decoding_message_size(16 << 20);
            Ok(c.get_flows(req.wire).await?.into_inner())
        })
    }

    fn sort_key(r: &GetFlowsResponse) -> Option<(i128, String)> {
        match &r.response_types {
            Some(ResponseTypes::Flow(f)) => {
                let t = r.time.as_ref().or(f.time.as_ref());
                let node = if r.node_name.is_empty() {
                    &f.node_name
                } else {
                    &r.node_name
                };
                Some((nanos(t), node.clone()))
            }
            _ => None,
        }
    }

    fn adapt(req: &FlowsReq, r: &mut GetFlowsResponse, peer: &Peer) -> bool {
        match &mut r.response_types {
            Some(ResponseTypes::Flow(f)) => {
                rename_in_place(peer, &mut f.node_name);
                rename_in_place(peer, &mut r.node_name);
                if let Some(local) = &req.local {
                    // With a field mask the flow may lack node_name: filter on a copy that has it.
                    if f.node_name.is_empty() && !r.node_name.is_empty() {
                        let mut whole = f.clone();
                        whole.node_name = r.node_name.clone();
                        return local.matches(&whole);
                    }
                    return local.matches(f);
                }
                true
            }
            Some(ResponseTypes::NodeStatus(ev)) => {
                for n in &mut ev.node_names {
                    rename_in_place(peer, n);
                }
                true
            }
            Some(ResponseTypes::LostEvents(_)) => {
                rename_in_place(peer, &mut r.node_name);
                true
            }
            None => false,
        }
    }

    fn node_status(
        relay: &str,
        state: NodeState,
        node_names: Vec<String>,
        message: String,
    ) -> Option<GetFlowsResponse> {
        Some(GetFlowsResponse {
            node_name: relay.to_string(),
            time: Some(now_ts()),
            response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
                state_change: state as i32,
                node_names,
                message,
            })),
        })
    }

    fn resume(req: &FlowsReq, last: Option<i128>) -> FlowsReq {
        let Some(last) = last else {
            return req.clone();
        };
        let mut r = req.clone();
        r.wire.number = 0;
        r.wire.first = false;
        r.wire.follow = true;
        r.wire.since = Some(timestamp(last + 1));
        r
    }

    fn window(req: &FlowsReq) -> Window {
        Window {
            number: req.wire.number,
            first: req.wire.first,
            follow: req.wire.follow,
        }
    }
}

/// An events RPC (agent or debug events): merged like flows, but its responses have no node
/// status field, so peer failures are only logged.
macro_rules! events_rpc {
    ($(#[$doc:meta])* $name:ident, $req:ident, $resp:ident, $call:ident) => {
        $(#[$doc])*
        pub struct $name;

        impl Rpc for $name {
            type Req = $req;
            type Resp = $resp;

            fn open(
                ch: Channel,
                req: Self::Req,
            ) -> BoxFuture<Result<tonic::Streaming<Self::Resp>, Status>> {
                Box::pin(async move { Ok(ObserverClient::new(ch).$call(req).await?.into_inner()) })
            }

            fn sort_key(r: &Self::Resp) -> Option<(i128, String)> {
                Some((nanos(r.time.as_ref()), r.node_name.clone()))
            }

            fn adapt(_: &Self::Req, r: &mut Self::Resp, peer: &Peer) -> bool {
                rename_in_place(peer, &mut r.node_name);
                true
            }

            fn node_status(_: &str, _: NodeState, _: Vec<String>, _: String) -> Option<Self::Resp> {
                None
            }

            fn resume(req: &Self::Req, last: Option<i128>) -> Self::Req {
                let Some(last) = last else {
                    return *req;
                };
                $req {
                    number: 0,
                    first: false,
                    follow: true,
                    since: Some(timestamp(last + 1)),
                    until: req.until,
                }
            }

            fn window(req: &Self::Req) -> Window {
                Window {
                    number: req.number,
                    first: req.first,
                    follow: req.follow,
                }
            }
        }
    };
}

events_rpc!(
    /// GetAgentEvents.
    AgentEvents,
    GetAgentEventsRequest,
    GetAgentEventsResponse,
    get_agent_events
);
events_rpc!(
    /// GetDebugEvents (like GetAgentEvents).
    DebugEvents,
    GetDebugEventsRequest,
    GetDebugEventsResponse,
    get_debug_events
);

fn check_events_request(
    number_first_follow: (bool, bool),
    since: &Option<prost_types::Timestamp>,
    until: &Option<prost_types::Timestamp>,
) -> Result<(), Status> {
    let (first, follow) = number_first_follow;
    if first && follow {
        return Err(Status::invalid_argument(
            "first cannot be combined with follow",
        ));
    }
    if let (Some(s), Some(u)) = (since, until)
        && nanos(Some(s)) > nanos(Some(u))
    {
        return Err(Status::invalid_argument("since is after until"));
    }
    Ok(())
}

/// The relay's Observer service.
#[derive(Clone)]
pub struct RelayService {
    pool: Arc<Pool>,
    merge: MergeOptions,
    started: Instant,
    shutdown: watch::Receiver<bool>,
    history: Option<Arc<dyn HistorySource>>,
}

impl RelayService {
    /// A service over `pool`'s peers; streams end when `shutdown` turns true.
    pub fn new(pool: Arc<Pool>, merge: MergeOptions, shutdown: watch::Receiver<bool>) -> Self {
        RelayService {
            pool,
            merge,
            started: Instant::now(),
            shutdown,
            history: None,
        }
    }

    /// Answers GetFlows requests with `since`/`until` from `history` (see [`crate::history`]).
    pub fn with_history(mut self, history: Arc<dyn HistorySource>) -> Self {
        self.history = Some(history);
        self
    }

    /// A stored part from the history, then (with follow) the live stream without the flows
    /// sent already.
    fn history_stream(
        &self,
        history: Arc<dyn HistorySource>,
        req: GetFlowsRequest,
    ) -> BoxStream<GetFlowsResponse> {
        let (tx, rx) = mpsc::channel(1024);
        let (pool, merge, shutdown) =
            (self.pool.clone(), self.merge.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let live = match serve_stored(&*history, &req, &tx).await {
                Ok(Some(live)) => live,
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let (live_req, seen) = live;
            let live_req = match FlowsReq::new(live_req) {
                Ok(r) => r,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let (ltx, mut lrx) = mpsc::channel(1024);
            fanout::spawn::<Flows>(pool, live_req, merge, ltx, shutdown);
            while let Some(r) = lrx.recv().await {
                if let Ok(GetFlowsResponse {
                    response_types: Some(ResponseTypes::Flow(f)),
                    ..
                }) = &r
                    && seen.contains(&f.uuid)
                {
                    continue;
                }
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }

    fn timeout(&self) -> Duration {
        self.pool.options().dial_timeout
    }

    fn stream<R: Rpc>(&self, req: R::Req) -> BoxStream<R::Resp> {
        let (tx, rx) = mpsc::channel(1024);
        fanout::spawn::<R>(
            self.pool.clone(),
            req,
            self.merge.clone(),
            tx,
            self.shutdown.clone(),
        );
        Box::pin(ReceiverStream::new(rx))
    }
}

/// What one peer contributes to ServerStatus.
#[derive(Default)]
struct StatusPart {
    num_flows: u64,
    max_flows: u64,
    seen_flows: u64,
    connected: u32,
    unavailable: u32,
    unavailable_nodes: Vec<String>,
}

async fn peer_status(peer: Arc<Peer>, timeout: Duration) -> StatusPart {
    let snap = peer.snapshot();
    let down = || StatusPart {
        unavailable: peer.node_names().len() as u32,
        unavailable_nodes: peer.node_names(),
        ..Default::default()
    };
    let (NodeState::NodeConnected, Some(ch)) = (snap.state, snap.channel) else {
        return down();
    };
    let mut c = ObserverClient::new(ch);
    match tokio::time::timeout(timeout, c.server_status(ServerStatusRequest {})).await {
        Ok(Ok(st)) => {
            let st = st.into_inner();
            let mut part = StatusPart {
                num_flows: st.num_flows,
                max_flows: st.max_flows,
                seen_flows: st.seen_flows,
                ..Default::default()
            };
            if peer.is_relay() {
                part.connected = st.num_connected_nodes.unwrap_or(1);
                part.unavailable = st.num_unavailable_nodes.unwrap_or(0);
                part.unavailable_nodes = st
                    .unavailable_nodes
                    .iter()
                    .map(|n| peer.rename(n).into_owned())
                    .collect();
            } else {
                part.connected = 1;
            }
            part
        }
        _ => {
            peer.report_failure();
            down()
        }
    }
}

async fn peer_nodes(peer: Arc<Peer>, pool: Arc<Pool>) -> Vec<Node> {
    let snap = peer.snapshot();
    if let (NodeState::NodeConnected, Some(ch)) = (snap.state, snap.channel.clone()) {
        match fetch_nodes(&peer, ch, pool.options()).await {
            Ok((nodes, version)) => {
                peer.set_nodes(nodes.clone(), version);
                return nodes;
            }
            Err(_) => peer.report_failure(),
        }
    }
    let state = match snap.state {
        NodeState::NodeConnected | NodeState::UnknownNodeState => NodeState::NodeUnavailable,
        s => s,
    };
    if snap.nodes.is_empty() {
        return vec![Node {
            name: peer.display_name(),
            version: snap.version,
            address: peer.spec.address.clone(),
            state: state as i32,
            tls: Some(peer.tls_info(pool.options().tls.as_ref())),
            ..Default::default()
        }];
    }
    snap.nodes
        .into_iter()
        .map(|mut n| {
            // Counts of a node that is not reachable are unknown now.
            if !peer.is_relay() || n.state == NodeState::NodeConnected as i32 {
                n.state = state as i32;
            }
            n.uptime_ns = 0;
            n
        })
        .collect()
}

#[tonic::async_trait]
impl Observer for RelayService {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        req: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = req.into_inner();
        if let Some(h) = &self.history
            && wants_history(&**h, &req)
        {
            // Validate as a forwarded request would be (filters, first/follow, since/until).
            FlowsReq::new(req.clone())?;
            tracing::debug!(
                number = req.number,
                follow = req.follow,
                "GetFlows from history"
            );
            return Ok(Response::new(self.history_stream(h.clone(), req)));
        }
        let r = FlowsReq::new(req)?;
        tracing::debug!(
            number = r.wire.number,
            follow = r.wire.follow,
            first = r.wire.first,
            filters = r.wire.whitelist.len() + r.wire.blacklist.len(),
            "GetFlows"
        );
        Ok(Response::new(self.stream::<Flows>(r)))
    }

    async fn get_agent_events(
        &self,
        req: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        let r = req.into_inner();
        check_events_request((r.first, r.follow), &r.since, &r.until)?;
        Ok(Response::new(self.stream::<AgentEvents>(r)))
    }

    async fn get_debug_events(
        &self,
        req: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        let r = req.into_inner();
        check_events_request((r.first, r.follow), &r.since, &r.until)?;
        Ok(Response::new(self.stream::<DebugEvents>(r)))
    }

    async fn get_nodes(
        &self,
        _req: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let parts = join_all(
            self.pool
                .peers()
                .into_iter()
                .map(|p| peer_nodes(p, self.pool.clone())),
        )
        .await;
        let mut nodes: Vec<Node> = parts.into_iter().flatten().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        _req: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let timeout = self.timeout();
        let calls = self.pool.peers().into_iter().map(|p| async move {
            let snap = p.snapshot();
            let (NodeState::NodeConnected, Some(ch)) = (snap.state, snap.channel) else {
                return Vec::new();
            };
            let mut c = ObserverClient::new(ch);
            match tokio::time::timeout(timeout, c.get_namespaces(GetNamespacesRequest {})).await {
                Ok(Ok(r)) => r.into_inner().namespaces,
                _ => {
                    p.report_failure();
                    Vec::new()
                }
            }
        });
        let set: BTreeSet<(String, String)> = join_all(calls)
            .await
            .into_iter()
            .flatten()
            .map(|n| (n.cluster, n.namespace))
            .collect();
        Ok(Response::new(GetNamespacesResponse {
            namespaces: set
                .into_iter()
                .map(|(cluster, namespace)| Namespace { cluster, namespace })
                .collect(),
        }))
    }

    async fn server_status(
        &self,
        _req: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let timeout = self.timeout();
        let parts = join_all(
            self.pool
                .peers()
                .into_iter()
                .map(|p| peer_status(p, timeout)),
        )
        .await;
        let mut st = ServerStatusResponse {
            uptime_ns: self.started.elapsed().as_nanos() as u64,
            version: VERSION.into(),
            ..Default::default()
        };
        let (mut connected, mut unavailable) = (0u32, 0u32);
        for p in parts {
            st.num_flows += p.num_flows;
            st.max_flows += p.max_flows;
            st.seen_flows += p.seen_flows;
            connected += p.connected;
            unavailable += p.unavailable;
            st.unavailable_nodes.extend(p.unavailable_nodes);
        }
        st.unavailable_nodes.sort();
        st.num_connected_nodes = Some(connected);
        st.num_unavailable_nodes = Some(unavailable);
        Ok(Response::new(st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_filters_stay_at_the_relay() {
        let r = FlowsReq::new(GetFlowsRequest {
            whitelist: vec![FlowFilter {
                node_name: vec!["c1/*".into()],
                source_pod: vec!["shop/".into()],
                ..Default::default()
            }],
            blacklist: vec![
                FlowFilter {
                    node_name: vec!["c1/n2".into()],
                    ..Default::default()
                },
                FlowFilter {
                    verdict: vec![2],
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .unwrap();
        assert!(r.local.is_some());
        assert!(r.wire.whitelist[0].node_name.is_empty());
        assert_eq!(r.wire.whitelist[0].source_pod, ["shop/"]);
        assert_eq!(r.wire.blacklist.len(), 1);
        assert_eq!(r.wire.blacklist[0].verdict, [2]);
        // Without node filters the request goes as it is.
        let plain = FlowsReq::new(GetFlowsRequest {
            number: 5,
            ..Default::default()
        })
        .unwrap();
        assert!(plain.local.is_none());
        // Invalid requests are refused here, not by every peer.
        for bad in [
            GetFlowsRequest {
                first: true,
                follow: true,
                ..Default::default()
            },
            GetFlowsRequest {
                whitelist: vec![FlowFilter {
                    source_ip: vec!["not-an-ip".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ] {
            assert_eq!(
                FlowsReq::new(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }

    #[test]
    fn resume_follows_from_after_the_last_event() {
        let req = FlowsReq::new(GetFlowsRequest {
            number: 20,
            follow: true,
            ..Default::default()
        })
        .unwrap();
        let r = Flows::resume(&req, Some(1_500_000_000));
        assert_eq!((r.wire.number, r.wire.follow), (0, true));
        assert_eq!(
            r.wire.since,
            Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_001
            })
        );
        assert_eq!(Flows::resume(&req, None).wire.number, 20);
    }
}

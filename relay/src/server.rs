//! The relay's `observer.Observer` service (Hubble wire-compatible).
//!
//! - GetFlows / GetAgentEvents / GetDebugEvents: forwarded to every peer with the request's
//!   filters and bounds, merged by time ([`crate::fanout`]). GetFlows responses are forwarded
//!   as the peers encoded them ([`crate::codec`]; serve [`RelayServer`], not a plain
//!   `ObserverServer`, to write them out without decoding). GetFlows filters on `node_name`
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
use periscope_proto::observer::observer_server::{Observer, ObserverServer};
use periscope_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
};
use periscope_proto::relay::{NodeState, NodeStatusEvent};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::http::{self, uri::PathAndQuery};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::codec::{EncodedResponse, FlowsCodec, Kind};
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

/// Whether `peer` renames any node ([`Peer::rename`] depends only on the peer, and leaves
/// empty and already prefixed names alone: a peer that keeps a plain name keeps them all).
fn renames(peer: &Peer) -> bool {
    matches!(peer.rename("node"), std::borrow::Cow::Owned(_))
}

/// GetFlows.
pub struct Flows;

/// The gRPC path of GetFlows.
const GET_FLOWS: &str = "/observer.Observer/GetFlows";

/// GetFlows: peers' responses are forwarded encoded ([`EncodedResponse`]); only node names are
/// rewritten, and a flow is decoded only for a node-name filter of the relay.
impl Rpc for Flows {
    type Req = FlowsReq;
    type Resp = EncodedResponse;

    fn open(ch: Channel, req: FlowsReq) -> BoxFuture<Result<tonic::Streaming<Self::Resp>, Status>> {
        Box::pin(async move {
            let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(16 << 20);
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("peer not ready: {e}")))?;
            let call = grpc.server_streaming(
                Request::new(req.wire),
                PathAndQuery::from_static(GET_FLOWS),
                FlowsCodec::<GetFlowsRequest, EncodedResponse>::default(),
            );
            Ok(call.await?.into_inner())
        })
    }

    fn sort_key(r: &EncodedResponse) -> Option<(i128, &str)> {
        (r.kind() == Kind::Flow).then(|| (r.time(), r.node_name()))
    }

    fn adapt(req: &FlowsReq, r: &mut EncodedResponse, peer: &Peer) -> bool {
        match r.kind() {
            Kind::Flow => {
                if renames(peer) {
                    match r.renamed(|n| peer.rename(n)) {
                        Ok(Some(renamed)) => *r = renamed,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(peer = peer.id, error = %e.message(), "flow dropped");
                            return false;
                        }
                    }
                }
                let Some(local) = &req.local else {
                    return true;
                };
                match r.decode() {
                    Ok(GetFlowsResponse {
                        node_name,
                        response_types: Some(ResponseTypes::Flow(mut f)),
                        ..
                    }) => {
                        // With a field mask the flow may lack node_name: filter with the
                        // response's.
                        if f.node_name.is_empty() {
                            f.node_name = node_name;
                        }
                        local.matches(&f)
                    }
                    _ => false,
                }
            }
            // Rare: decoded, renamed and encoded again.
            Kind::NodeStatus | Kind::LostEvents => {
                let Ok(mut d) = r.decode() else {
                    return false;
                };
                match &mut d.response_types {
                    Some(ResponseTypes::NodeStatus(ev)) => {
                        for n in &mut ev.node_names {
                            rename_in_place(peer, n);
                        }
                    }
                    _ => rename_in_place(peer, &mut d.node_name),
                }
                *r = EncodedResponse::encode(&d);
                true
            }
            Kind::Other => false,
        }
    }

    fn node_status(
        relay: &str,
        state: NodeState,
        node_names: Vec<String>,
        message: String,
    ) -> Option<EncodedResponse> {
        Some(EncodedResponse::encode(&GetFlowsResponse {
            node_name: relay.to_string(),
            time: Some(now_ts()),
            response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
                state_change: state as i32,
                node_names,
                message,
            })),
        }))
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

            fn sort_key(r: &Self::Resp) -> Option<(i128, &str)> {
                Some((nanos(r.time.as_ref()), &r.node_name))
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
    ) -> BoxStream<EncodedResponse> {
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
                if !seen.is_empty()
                    && let Ok(r) = &r
                    && r.kind() == Kind::Flow
                    && r.flow_uuid().is_ok_and(|u| seen.contains(u))
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

impl RelayService {
    /// GetFlows, answered with the responses as encoded (see [`RelayServer`]).
    pub fn flows(&self, req: GetFlowsRequest) -> Result<BoxStream<EncodedResponse>, Status> {
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
            return Ok(self.history_stream(h.clone(), req));
        }
        let r = FlowsReq::new(req)?;
        tracing::debug!(
            number = r.wire.number,
            follow = r.wire.follow,
            first = r.wire.first,
            filters = r.wire.whitelist.len() + r.wire.blacklist.len(),
            "GetFlows"
        );
        Ok(self.stream::<Flows>(r))
    }

    /// The Observer service with GetFlows answered from encoded responses.
    pub fn into_server(self) -> RelayServer {
        RelayServer::new(self)
    }
}

#[tonic::async_trait]
impl Observer for RelayService {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    /// GetFlows with decoded responses: only for a plain [`ObserverServer`]; the relay serves
    /// [`RelayServer`], which writes them as they are.
    async fn get_flows(
        &self,
        req: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let s = self.flows(req.into_inner())?;
        Ok(Response::new(Box::pin(
            s.map(|r| r.and_then(|e| e.decode())),
        )))
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

/// The relay's `observer.Observer` service: [`ObserverServer`] over [`RelayService`], except
/// GetFlows, whose responses are written as the peers encoded them ([`FlowsCodec`]) instead of
/// being decoded into `GetFlowsResponse`s only to be encoded again.
#[derive(Clone)]
pub struct RelayServer {
    service: Arc<RelayService>,
    rest: ObserverServer<RelayService>,
    max_decoding: Option<usize>,
    max_encoding: Option<usize>,
}

impl RelayServer {
    /// The service over `service`.
    pub fn new(service: RelayService) -> Self {
        let service = Arc::new(service);
        RelayServer {
            rest: ObserverServer::from_arc(service.clone()),
            service,
            max_decoding: None,
            max_encoding: None,
        }
    }

    /// Limits the size of a decoded request (default 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding = Some(limit);
        self.rest = self.rest.max_decoding_message_size(limit);
        self
    }

    /// Limits the size of an encoded response (default unlimited).
    #[must_use]
    pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
        self.max_encoding = Some(limit);
        self.rest = self.rest.max_encoding_message_size(limit);
        self
    }
}

/// GetFlows of [`RelayServer`].
struct FlowsSvc(Arc<RelayService>);

impl tonic::server::ServerStreamingService<GetFlowsRequest> for FlowsSvc {
    type Response = EncodedResponse;
    type ResponseStream = BoxStream<EncodedResponse>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: Request<GetFlowsRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.flows(req.into_inner()).map(Response::new) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for RelayServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != GET_FLOWS {
            return self.rest.call(req);
        }
        let svc = FlowsSvc(self.service.clone());
        let (max_decoding, max_encoding) = (self.max_decoding, self.max_encoding);
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(FlowsCodec::<EncodedResponse, GetFlowsRequest>::default())
                    .apply_max_message_size_config(max_decoding, max_encoding);
            Ok(grpc.server_streaming(svc, req).await)
        })
    }
}

impl tonic::server::NamedService for RelayServer {
    const NAME: &'static str = "observer.Observer";
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

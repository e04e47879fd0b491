//! The Hubble-compatible gRPC API of the agent: `observer.Observer` (GetFlows, ServerStatus,
//! GetNodes, GetNamespaces, agent/debug events), `peer.Peer` (Notify) and the standard health
//! service reporting `hubble.server.Observer` as SERVING.
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use periscope_proto::flow::{self, Flow, LostEvent};
use periscope_proto::observer::observer_server::Observer;
use periscope_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
    get_flows_response::ResponseTypes,
};
use periscope_proto::peer::peer_server::Peer;
use periscope_proto::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};
use periscope_proto::relay::NodeState;
use prost_types::Timestamp;
use tokio::sync::{RwLock, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::agent::State;
use crate::filters::FlowFilterSet;
use crate::ring::{Event, Ring};

/// Version string reported by ServerStatus and GetNodes.
pub const VERSION: &str = concat!("periscope-agent ", env!("CARGO_PKG_VERSION"));

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service state shared by every request.
pub struct ObserverService {
    ring: Arc<Ring>,
    state: Arc<RwLock<State>>,
    started: Instant,
    /// Address this agent serves on (for Peer and GetNodes).
    pub address: String,
}

impl ObserverService {
    /// A service over `ring`, naming things from `state`.
    pub fn new(ring: Arc<Ring>, state: Arc<RwLock<State>>, address: String) -> Self {
        ObserverService {
            ring,
            state,
            started: Instant::now(),
            address,
        }
    }
}

fn nanos(t: &Option<Timestamp>) -> Option<i128> {
    t.as_ref()
        .map(|t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
}

fn response_of(e: &Event, node: &str) -> GetFlowsResponse {
    match e {
        Event::Flow(f) => GetFlowsResponse {
            node_name: f.node_name.clone(),
            time: f.time,
            response_types: Some(ResponseTypes::Flow(f.clone())),
        },
        Event::Lost(l) => GetFlowsResponse {
            node_name: node.to_string(),
            time: Some(now_ts()),
            response_types: Some(ResponseTypes::LostEvents(*l)),
        },
    }
}

fn now_ts() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn ring_lost(n: u64) -> Event {
    Event::Lost(LostEvent {
        source: flow::LostEventSource::HubbleRingBuffer as i32,
        num_events_lost: n,
        cpu: None,
    })
}

/// The parsed request: filters and bounds.
struct Query {
    filter: FlowFilterSet,
    since: Option<i128>,
    until: Option<i128>,
    number: u64,
    first: bool,
    follow: bool,
}

impl Query {
    fn parse(r: &GetFlowsRequest) -> Result<Self, Status> {
        let filter = FlowFilterSet::compile(&r.whitelist, &r.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.first && r.follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        let since = nanos(&r.since);
        let until = nanos(&r.until);
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(Status::invalid_argument("since is after until"));
        }
        Ok(Query {
            filter,
            since,
            until,
            number: r.number,
            first: r.first,
            follow: r.follow,
        })
    }

    /// Whether a flow is selected by filters and the time window (`until` only when not following).
    fn wants(&self, f: &Flow) -> bool {
        let t = nanos(&f.time).unwrap_or(0);
        self.since.is_none_or(|s| t >= s)
            && (self.follow || self.until.is_none_or(|u| t <= u))
            && self.filter.matches(f)
    }
}

/// Runs one GetFlows request against the ring, sending responses until done or the client goes.
async fn serve_flows(
    ring: Arc<Ring>,
    node: String,
    q: Query,
    tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let mut notify = ring.subscribe();
    let end = ring.written();
    let send = |e: &Event| response_of(e, &node);
    // The historical part.
    let mut history: Vec<Arc<Event>> = Vec::new();
    if q.first {
        let mut pos = ring.oldest();
        let mut batch = Vec::new();
        'scan: while pos < end {
            batch.clear();
            let (next, _) = ring.read_batch(pos, 512, &mut batch);
            for e in &batch {
                if let Event::Flow(f) = &**e {
                    if q.until.is_some_and(|u| nanos(&f.time).unwrap_or(0) > u) {
                        break 'scan;
                    }
                    if q.wants(f) {
                        history.push(e.clone());
                        if q.number > 0 && history.len() as u64 >= q.number {
                            break 'scan;
                        }
                    }
                }
            }
            pos = next;
        }
    } else if q.number > 0 || q.since.is_some() || !q.follow {
        // The newest `number` matching flows (all matching when number is 0), oldest first.
        let oldest = ring.oldest();
        let mut pos = end;
        while pos > oldest {
            let from = pos.saturating_sub(512).max(oldest);
            let mut batch = Vec::new();
            let (_, lost) = ring.read_batch(from, (pos - from) as usize, &mut batch);
            if lost > 0 {
                break; // overwritten while scanning: what is older is gone anyway
            }
            let mut done = false;
            for e in batch.iter().rev() {
                if let Event::Flow(f) = &**e {
                    let t = nanos(&f.time).unwrap_or(0);
                    if q.since.is_some_and(|s| t < s) {
                        done = true;
                        break;
                    }
                    if q.wants(f) {
                        history.push(e.clone());
                        if q.number > 0 && history.len() as u64 >= q.number {
                            done = true;
                            break;
                        }
                    }
                }
            }
            if done {
                break;
            }
            pos = from;
        }
        history.reverse();
    }
    for e in &history {
        if tx.send(Ok(send(e))).await.is_err() {
            return;
        }
    }
    if !q.follow {
        return;
    }
    // Following: everything written from the request on.
    let mut pos = end;
    let mut batch = Vec::new();
    loop {
        batch.clear();
        let (next, lost) = ring.read_batch(pos, 256, &mut batch);
        if lost > 0 && tx.send(Ok(send(&ring_lost(lost)))).await.is_err() {
            return;
        }
        for e in &batch {
            let keep = match &**e {
                Event::Flow(f) => q.wants(f),
                Event::Lost(_) => true,
            };
            if keep && tx.send(Ok(send(e))).await.is_err() {
                return;
            }
        }
        pos = next;
        if batch.is_empty() {
            tokio::select! {
                r = notify.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        req: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let q = Query::parse(req.get_ref())?;
        let (tx, rx) = mpsc::channel(1024);
        let node = self.state.read().await.node.clone();
        tokio::spawn(serve_flows(self.ring.clone(), node, q, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_agent_events(
        &self,
        _req: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn get_debug_events(
        &self,
        _req: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn get_nodes(
        &self,
        _req: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let st = self.state.read().await;
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: st.node.clone(),
                version: VERSION.into(),
                address: self.address.clone(),
                state: NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: self.started.elapsed().as_nanos() as u64,
                num_flows: self.ring.len() as u64,
                max_flows: self.ring.capacity() as u64,
                seen_flows: self.ring.written(),
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _req: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let st = self.state.read().await;
        let set: BTreeSet<&str> = st
            .pods_by_ip
            .values()
            .filter(|p| !p.external)
            .map(|p| p.namespace.as_str())
            .collect();
        Ok(Response::new(GetNamespacesResponse {
            namespaces: set
                .into_iter()
                .map(|ns| Namespace {
                    cluster: st.cluster.clone(),
                    namespace: ns.to_string(),
                })
                .collect(),
        }))
    }

    async fn server_status(
        &self,
        _req: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse {
            num_flows: self.ring.len() as u64,
            max_flows: self.ring.capacity() as u64,
            seen_flows: self.ring.written(),
            uptime_ns: self.started.elapsed().as_nanos() as u64,
            num_connected_nodes: None,
            num_unavailable_nodes: None,
            unavailable_nodes: vec![],
            version: VERSION.into(),
        }))
    }
}

/// The Peer service: the nodes of the cluster and where their agents serve.
pub struct PeerService {
    state: Arc<RwLock<State>>,
    address: String,
}

impl PeerService {
    /// A Peer service announcing this node at `address` and the topology's other nodes that
    /// declare an `address`.
    pub fn new(state: Arc<RwLock<State>>, address: String) -> Self {
        PeerService { state, address }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type NotifyStream = BoxStream<ChangeNotification>;

    async fn notify(
        &self,
        _req: Request<NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let st = self.state.read().await;
        let mut peers = vec![ChangeNotification {
            name: st.node.clone(),
            address: self.address.clone(),
            r#type: ChangeNotificationType::PeerAdded as i32,
            tls: None,
        }];
        for (name, addr) in &st.node_addresses {
            if *name != st.node {
                peers.push(ChangeNotification {
                    name: name.clone(),
                    address: addr.clone(),
                    r#type: ChangeNotificationType::PeerAdded as i32,
                    tls: None,
                });
            }
        }
        // The initial list, then the stream stays open (changes are announced on it).
        let s = tokio_stream::iter(peers.into_iter().map(Ok)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(s)))
    }
}

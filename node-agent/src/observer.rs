//! The Hubble-compatible gRPC API of the agent: `observer.Observer` (GetFlows, ServerStatus,
//! GetNodes, GetNamespaces, agent/debug events), `peer.Peer` (Notify) and the standard health
//! service reporting `hubble.server.Observer` as SERVING.
//!
//! - GetFlows: the flow ring through the request's filters, time window and field mask
//!   ([`crate::fieldmask`]).
//! - GetAgentEvents: the agent event ring ([`crate::events`]) with the same `number`, `first`,
//!   `follow`, `since` and `until` semantics as GetFlows (no filters exist for agent events).
//! - GetDebugEvents: the datapath emits no debug events (Cilium's `DBG_*` messages come from its
//!   `cilium_dbg` calls, which this datapath does not have), so the stream is always empty: it
//!   ends at once, or with `follow` stays open without events until the client leaves. Requests
//!   are still validated like GetAgentEvents'.
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use periscope_proto::flow::{self, Flow, LostEvent};
use periscope_proto::observer;
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
use crate::events::{AgentEventRing, Stamped};
use crate::fieldmask::FieldMask;
use crate::filters::FlowFilterSet;
use crate::ring::{Event, Ring};

/// Version string reported by ServerStatus and GetNodes.
pub const VERSION: &str = concat!("periscope-agent ", env!("CARGO_PKG_VERSION"));

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service state shared by every request.
pub struct ObserverService {
    ring: Arc<Ring>,
    agent_events: Arc<AgentEventRing>,
    state: Arc<RwLock<State>>,
    started: Instant,
    /// Address this agent serves on (for Peer and GetNodes).
    pub address: String,
    /// Set when the API is served with TLS: the server name clients should verify (may be
    /// empty: none announced).
    tls: Option<String>,
}

impl ObserverService {
    /// A service over the flow ring `ring` and the agent event ring `agent_events`, naming
    /// things from `state`.
    pub fn new(
        ring: Arc<Ring>,
        agent_events: Arc<AgentEventRing>,
        state: Arc<RwLock<State>>,
        address: String,
    ) -> Self {
        ObserverService {
            ring,
            agent_events,
            state,
            started: Instant::now(),
            address,
            tls: None,
        }
    }

    /// Announces in GetNodes that the API is served with TLS, with the server name clients
    /// should verify (empty: none).
    pub fn with_tls(mut self, server_name: Option<String>) -> Self {
        self.tls = server_name;
        self
    }
}

fn nanos(t: &Option<Timestamp>) -> Option<i128> {
    t.as_ref()
        .map(|t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
}

/// The response for a ring event; flows go through the request's field mask (the response's
/// `node_name` and `time` come from the whole flow, as Hubble's do).
fn response_of(e: &Event, node: &str, mask: &FieldMask) -> GetFlowsResponse {
    match e {
        Event::Flow(f) => GetFlowsResponse {
            node_name: f.node_name.clone(),
            time: f.time,
            response_types: Some(ResponseTypes::Flow(mask.apply(f))),
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

/// The parsed request: filters, bounds and field mask.
struct Query {
    filter: FlowFilterSet,
    mask: FieldMask,
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
        let paths = r
            .experimental
            .as_ref()
            .and_then(|x| x.field_mask.as_ref())
            .map(|m| m.paths.as_slice())
            .unwrap_or_default();
        let mask =
            FieldMask::compile(paths).map_err(|e| Status::invalid_argument(e.to_string()))?;
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
            mask,
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
/// Where a GetFlows request starts: taken when the request arrives (not when its task first
/// runs), so a follower misses nothing written in between.
struct FlowsStart {
    notify: tokio::sync::watch::Receiver<u64>,
    end: u64,
}

impl FlowsStart {
    fn now(ring: &Ring) -> FlowsStart {
        let notify = ring.subscribe();
        FlowsStart {
            notify,
            end: ring.written(),
        }
    }
}

async fn serve_flows(
    ring: Arc<Ring>,
    start: FlowsStart,
    node: String,
    q: Query,
    tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let FlowsStart {
        mut notify, end, ..
    } = start;
    let send = |e: &Event| response_of(e, &node, &q.mask);
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

/// The bounds of an agent or debug events request: GetFlows' without filters.
#[derive(Clone, Debug, PartialEq)]
struct EventsQuery {
    since: Option<i128>,
    until: Option<i128>,
    number: u64,
    first: bool,
    follow: bool,
}

impl EventsQuery {
    fn parse(
        number: u64,
        follow: bool,
        first: bool,
        since: &Option<Timestamp>,
        until: &Option<Timestamp>,
    ) -> Result<Self, Status> {
        if first && follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        let (since, until) = (nanos(since), nanos(until));
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(Status::invalid_argument("since is after until"));
        }
        Ok(EventsQuery {
            since,
            until,
            number,
            first,
            follow,
        })
    }

    /// Whether an event at `t` is in the window (`until` only when not following).
    fn wants(&self, t: i128) -> bool {
        self.since.is_none_or(|s| t >= s) && (self.follow || self.until.is_none_or(|u| t <= u))
    }

    /// The recorded events the request asks for before following, oldest first: the oldest
    /// `number` with `first`, else the newest `number` (every one when 0); none when only
    /// following.
    fn history(&self, recorded: &[Arc<Stamped>]) -> Vec<Arc<Stamped>> {
        let limit = if self.number == 0 {
            usize::MAX
        } else {
            usize::try_from(self.number).unwrap_or(usize::MAX)
        };
        let window = |s: &&Arc<Stamped>| self.wants(s.nanos());
        if self.first {
            recorded
                .iter()
                .filter(window)
                .take(limit)
                .cloned()
                .collect()
        } else if self.number > 0 || self.since.is_some() || !self.follow {
            let mut newest: Vec<_> = recorded
                .iter()
                .rev()
                .filter(window)
                .take(limit)
                .cloned()
                .collect();
            newest.reverse();
            newest
        } else {
            Vec::new()
        }
    }
}

/// Where a GetAgentEvents request starts, taken when it comes (not when its task first runs,
/// so no event recorded in between is missed).
struct EventsStart {
    /// Signals events recorded after `recorded`.
    notify: tokio::sync::watch::Receiver<u64>,
    /// The events held.
    recorded: Vec<Arc<Stamped>>,
    /// The position after them.
    pos: u64,
}

impl EventsStart {
    fn now(events: &AgentEventRing) -> Self {
        // Subscribed first: an event recorded in between is in `recorded` and signalled, and
        // the signal finds nothing new after `pos`.
        let notify = events.subscribe();
        let (recorded, pos) = events.read_from(0);
        EventsStart {
            notify,
            recorded,
            pos,
        }
    }
}

/// Runs one GetAgentEvents request: the history (the events recorded when the request came),
/// then (following) the events recorded from then on, until the client goes.
async fn serve_agent_events(
    events: Arc<AgentEventRing>,
    start: EventsStart,
    node: String,
    q: EventsQuery,
    tx: mpsc::Sender<Result<GetAgentEventsResponse, Status>>,
) {
    let response = |s: &Stamped| GetAgentEventsResponse {
        agent_event: Some(s.event.clone()),
        node_name: node.clone(),
        time: Some(s.time),
    };
    let EventsStart {
        mut notify,
        recorded,
        mut pos,
    } = start;
    for s in q.history(&recorded) {
        if tx.send(Ok(response(&s))).await.is_err() {
            return;
        }
    }
    if !q.follow {
        return;
    }
    loop {
        let (batch, next) = events.read_from(pos);
        for s in batch.iter().filter(|s| q.wants(s.nanos())) {
            if tx.send(Ok(response(s))).await.is_err() {
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
        let start = FlowsStart::now(&self.ring);
        let node = self.state.read().await.node.clone();
        tokio::spawn(serve_flows(self.ring.clone(), start, node, q, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_agent_events(
        &self,
        req: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        let r = req.get_ref();
        let q = EventsQuery::parse(r.number, r.follow, r.first, &r.since, &r.until)?;
        let (tx, rx) = mpsc::channel(256);
        let node = self.state.read().await.node.clone();
        let start = EventsStart::now(&self.agent_events);
        tokio::spawn(serve_agent_events(
            self.agent_events.clone(),
            start,
            node,
            q,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Always empty: the datapath emits no debug events (see the module doc). With `follow` the
    /// stream stays open, as it would on a node whose datapath is quiet.
    async fn get_debug_events(
        &self,
        req: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        let r = req.get_ref();
        let q = EventsQuery::parse(r.number, r.follow, r.first, &r.since, &r.until)?;
        if q.follow {
            Ok(Response::new(Box::pin(tokio_stream::pending())))
        } else {
            Ok(Response::new(Box::pin(tokio_stream::empty())))
        }
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
                tls: self.tls.as_ref().map(|server_name| observer::Tls {
                    enabled: true,
                    server_name: server_name.clone(),
                }),
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
    tls: Option<String>,
}

impl PeerService {
    /// A Peer service announcing this node at `address` and the topology's other nodes that
    /// declare an `address`.
    pub fn new(state: Arc<RwLock<State>>, address: String) -> Self {
        PeerService {
            state,
            address,
            tls: None,
        }
    }

    /// Announces the nodes as serving TLS (a fleet shares one TLS configuration), with the
    /// server name clients should verify (empty: none).
    pub fn with_tls(mut self, server_name: Option<String>) -> Self {
        self.tls = server_name;
        self
    }

    fn tls(&self) -> Option<periscope_proto::peer::Tls> {
        self.tls
            .as_ref()
            .map(|server_name| periscope_proto::peer::Tls {
                server_name: server_name.clone(),
            })
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
            tls: self.tls(),
        }];
        for (name, addr) in &st.node_addresses {
            if *name != st.node {
                peers.push(ChangeNotification {
                    name: name.clone(),
                    address: addr.clone(),
                    r#type: ChangeNotificationType::PeerAdded as i32,
                    tls: self.tls(),
                });
            }
        }
        // The initial list, then the stream stays open (changes are announced on it).
        let s = tokio_stream::iter(peers.into_iter().map(Ok)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::agent_started;
    use periscope_proto::flow::{Endpoint, agent_event::Notification};
    use periscope_proto::observer::get_flows_request::Experimental;
    use std::time::Duration;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    /// A service whose agent event ring holds AGENT_STARTED events at t = 1..=5 s (each
    /// carrying its second as its start time, to tell them apart).
    fn service() -> ObserverService {
        let events = AgentEventRing::new(16);
        for t in 1..=5 {
            events.push_at(ts(t), [agent_started(ts(t))]);
        }
        let mut state = State::default();
        state.node = "n1".into();
        ObserverService::new(
            Ring::new(7).unwrap(),
            events,
            Arc::new(RwLock::new(state)),
            "127.0.0.1:4244".into(),
        )
    }

    fn second(r: &GetAgentEventsResponse) -> i64 {
        match r.agent_event.as_ref().and_then(|e| e.notification.as_ref()) {
            Some(Notification::AgentStart(n)) => n.time.unwrap().seconds,
            other => panic!("{other:?}"),
        }
    }

    async fn agent_events(svc: &ObserverService, req: GetAgentEventsRequest) -> Vec<i64> {
        let mut s = svc
            .get_agent_events(Request::new(req))
            .await
            .expect("GetAgentEvents")
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            let r = r.expect("response");
            assert_eq!(r.node_name, "n1");
            assert_eq!(r.time.unwrap().seconds, second(&r), "stamped when recorded");
            out.push(second(&r));
        }
        out
    }

    #[tokio::test]
    async fn agent_events_select_like_get_flows() {
        let svc = service();
        let req = |number, first, since: Option<i64>, until: Option<i64>| GetAgentEventsRequest {
            number,
            first,
            follow: false,
            since: since.map(ts),
            until: until.map(ts),
        };
        assert_eq!(
            agent_events(&svc, req(0, false, None, None)).await,
            [1, 2, 3, 4, 5]
        );
        assert_eq!(agent_events(&svc, req(2, false, None, None)).await, [4, 5]);
        assert_eq!(agent_events(&svc, req(2, true, None, None)).await, [1, 2]);
        assert_eq!(
            agent_events(&svc, req(0, false, Some(3), None)).await,
            [3, 4, 5]
        );
        assert_eq!(
            agent_events(&svc, req(0, false, Some(2), Some(4))).await,
            [2, 3, 4]
        );
        assert_eq!(
            agent_events(&svc, req(2, true, Some(2), Some(5))).await,
            [2, 3]
        );
        assert_eq!(agent_events(&svc, req(1, false, None, Some(3))).await, [3]);
        for bad in [
            GetAgentEventsRequest {
                first: true,
                follow: true,
                ..Default::default()
            },
            req(0, false, Some(4), Some(3)),
        ] {
            let err = svc.get_agent_events(Request::new(bad)).await.err().unwrap();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
    }

    async fn next(s: &mut BoxStream<GetAgentEventsResponse>) -> GetAgentEventsResponse {
        tokio::time::timeout(Duration::from_secs(2), s.next())
            .await
            .expect("an event")
            .expect("stream open")
            .expect("a response")
    }

    #[tokio::test]
    async fn followers_get_new_agent_events() {
        let svc = service();
        // The newest one, then what comes.
        let mut s = svc
            .get_agent_events(Request::new(GetAgentEventsRequest {
                number: 1,
                follow: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second(&next(&mut s).await), 5);
        // Only following: nothing of the past.
        let mut only_new = svc
            .get_agent_events(Request::new(GetAgentEventsRequest {
                follow: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        svc.agent_events.push_at(ts(6), [agent_started(ts(6))]);
        assert_eq!(second(&next(&mut s).await), 6);
        assert_eq!(second(&next(&mut only_new).await), 6);
        let quiet = tokio::time::timeout(Duration::from_millis(100), s.next()).await;
        assert!(quiet.is_err(), "nothing more: {quiet:?}");
    }

    #[tokio::test]
    async fn debug_events_are_empty_and_validated() {
        let svc = service();
        let mut s = svc
            .get_debug_events(Request::new(GetDebugEventsRequest {
                number: 20,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(s.next().await.is_none(), "ends at once");
        let mut s = svc
            .get_debug_events(Request::new(GetDebugEventsRequest {
                follow: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let open = tokio::time::timeout(Duration::from_millis(100), s.next()).await;
        assert!(open.is_err(), "following stays open without events");
        let err = svc
            .get_debug_events(Request::new(GetDebugEventsRequest {
                first: true,
                follow: true,
                ..Default::default()
            }))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    fn masked_request(paths: &[&str]) -> GetFlowsRequest {
        GetFlowsRequest {
            experimental: Some(Experimental {
                field_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn get_flows_applies_the_field_mask_after_the_filters() {
        let svc = service();
        let flow = |pod: &str, t: i64| Flow {
            time: Some(ts(t)),
            node_name: "n1".into(),
            verdict: 1,
            source: Some(Endpoint {
                pod_name: pod.into(),
                namespace: "shop".into(),
                identity: 300,
                ..Default::default()
            }),
            summary: "TCP Flags: SYN".into(),
            ..Default::default()
        };
        svc.ring
            .write_batch([Event::Flow(flow("web", 1)), Event::Flow(flow("api", 2))]);
        // The filter looks at the namespace, which the mask leaves out.
        let mut req = masked_request(&["source.pod_name", "verdict"]);
        req.whitelist = vec![periscope_proto::flow::FlowFilter {
            source_pod: vec!["shop/api".into()],
            ..Default::default()
        }];
        let mut s = svc.get_flows(Request::new(req)).await.unwrap().into_inner();
        let r = s.next().await.unwrap().unwrap();
        assert_eq!((r.node_name.as_str(), r.time), ("n1", Some(ts(2))));
        let Some(ResponseTypes::Flow(f)) = r.response_types else {
            panic!("{r:?}")
        };
        assert_eq!(
            f,
            Flow {
                verdict: 1,
                source: Some(Endpoint {
                    pod_name: "api".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        );
        assert!(s.next().await.is_none());
        // An empty mask: whole flows.
        let mut s = svc
            .get_flows(Request::new(masked_request(&[])))
            .await
            .unwrap()
            .into_inner();
        let r = s.next().await.unwrap().unwrap();
        assert_eq!(r.response_types, Some(ResponseTypes::Flow(flow("web", 1))));
        // A path that is no field: InvalidArgument naming it.
        let err = svc
            .get_flows(Request::new(masked_request(&["time", "source.pod"])))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("\"source.pod\""),
            "{}",
            err.message()
        );
    }
}

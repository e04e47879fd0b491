//! Test and benchmark helpers (feature `testing`): a fake agent serving a fixed history and
//! live flows over the real gRPC API, and a server on a runtime of its own that can be dropped
//! like a killed process. Used by `tests/inprocess.rs` and `benches/merge.rs`; the real-kernel
//! tests use real agents.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use periscope_proto::flow::Flow;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_server::{Observer, ObserverServer};
use periscope_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
};
use periscope_proto::relay::NodeState;
use tokio::sync::broadcast;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A fake agent: a fixed history, live flows sent through `live`. Like a real agent's ring, the
/// history holds shared flows; a request copies each flow it sends once, as it sends it.
#[derive(Clone)]
pub struct FakeAgent {
    node: String,
    history: Arc<Mutex<Vec<Arc<Flow>>>>,
    live: broadcast::Sender<Arc<Flow>>,
}

impl FakeAgent {
    /// A fake agent of node `node` holding `history` (oldest first).
    pub fn new(node: &str, history: Vec<Flow>) -> Self {
        FakeAgent {
            node: node.into(),
            history: Arc::new(Mutex::new(history.into_iter().map(Arc::new).collect())),
            live: broadcast::channel(1024).0,
        }
    }

    /// Streams following this agent's live flows.
    pub fn followers(&self) -> usize {
        self.live.receiver_count()
    }

    /// Records `f` and sends it to followers.
    pub fn send(&self, f: Flow) {
        let f = Arc::new(f);
        self.history.lock().unwrap().push(f.clone());
        let _ = self.live.send(f);
    }
}

/// The GetFlows response carrying `f`.
pub fn response(f: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: f.node_name.clone(),
        time: f.time,
        response_types: Some(ResponseTypes::Flow(f)),
    }
}

#[tonic::async_trait]
impl Observer for FakeAgent {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        req: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let r = req.into_inner();
        let rx = self.live.subscribe();
        let since = r
            .since
            .map(|t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128);
        let h: Vec<Arc<Flow>> = self
            .history
            .lock()
            .unwrap()
            .iter()
            .filter(|f| {
                let t = f.time.unwrap();
                since.is_none_or(|s| t.seconds as i128 * 1_000_000_000 + t.nanos as i128 >= s)
            })
            .cloned()
            .collect();
        let n = usize::try_from(r.number).unwrap_or(usize::MAX);
        let range = if r.follow && r.number == 0 && since.is_none() {
            0..0
        } else if r.first && r.number > 0 {
            0..n.min(h.len())
        } else if r.number > 0 {
            h.len().saturating_sub(n)..h.len()
        } else {
            0..h.len()
        };
        let hist = tokio_stream::iter(
            h.into_iter()
                .skip(range.start)
                .take(range.len())
                .map(|f| Ok(response(Flow::clone(&f)))),
        );
        if !r.follow {
            return Ok(Response::new(Box::pin(hist)));
        }
        let live = tokio_stream::wrappers::BroadcastStream::new(rx)
            .filter_map(|f| f.ok().map(|f| Ok(response(Flow::clone(&f)))));
        Ok(Response::new(Box::pin(hist.chain(live))))
    }

    async fn get_agent_events(
        &self,
        _: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn get_debug_events(
        &self,
        _: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn get_nodes(
        &self,
        _: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let n = self.history.lock().unwrap().len() as u64;
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.node.clone(),
                version: "fake 1".into(),
                state: NodeState::NodeConnected as i32,
                uptime_ns: 1_000_000_000,
                num_flows: n,
                max_flows: 100,
                seen_flows: n,
                ..Default::default()
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        Ok(Response::new(GetNamespacesResponse {
            namespaces: vec![Namespace {
                cluster: "default".into(),
                namespace: format!("ns-{}", self.node),
            }],
        }))
    }

    async fn server_status(
        &self,
        _: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let n = self.history.lock().unwrap().len() as u64;
        Ok(Response::new(ServerStatusResponse {
            num_flows: n,
            max_flows: 100,
            seen_flows: n,
            uptime_ns: 1,
            version: "fake 1".into(),
            ..Default::default()
        }))
    }
}

/// A gRPC server on its own runtime and thread: dropping it kills every connection at once,
/// like a killed process.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Serves `svc` on `addr` (`127.0.0.1:0` for any port) on a runtime of its own.
pub fn serve_on<S>(addr: &str, svc: S) -> Server
where
    S: Observer,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fake-server")
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        tonic::transport::Server::builder()
            .add_service(ObserverServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    Server { addr, rt: Some(rt) }
}

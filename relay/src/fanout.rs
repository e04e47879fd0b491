//! Forwarding one streaming request (GetFlows, GetAgentEvents, GetDebugEvents) to every peer
//! and merging the answers into one stream.
//!
//! One forwarder task per peer opens the request on the peer's channel, renames nodes, and
//! sends what it gets to the request's central task over one bounded channel (in batches of
//! what it has received already). GetFlows responses stay encoded all the way
//! ([`crate::codec`]). The central task:
//!
//! - without `follow`: keeps the newest `number` events (the oldest with `first`) of all peers
//!   in a heap bounded by `number` ([`Newest`] / [`Oldest`]), or every event with `number` 0
//!   ([`All`]), and sends them in time order once every peer has finished: `number` is the last
//!   N overall, not N per peer;
//! - with `follow`: merges with the [`Merger`] (sort buffer per peer, drain timeout). With a
//!   `number`, the peers' histories are first gathered like above (until every peer has sent
//!   its history: an event newer than the request, or silence for the drain timeout; at most
//!   three drain timeouts), so the stream starts with the last N overall. Peers added while the
//!   request runs join it.
//!
//! A peer that is down when the request comes, or fails during it, becomes a node status
//! event at once (GetFlows only: NODE_UNAVAILABLE for connectivity, NODE_ERROR for a refusal,
//! NODE_GONE for a removed peer) while the other peers go on. Following, a forwarder whose peer
//! reconnects re-opens the request from the newest event it forwarded (NODE_CONNECTED then):
//! nothing the peer still holds is lost, but its backlog (what it recorded while the relay was
//! not connected to it) arrives after newer events of the other peers were sent, so it is
//! delivered late, in its own order.
//! A stalled peer is one that stops answering the pool's polls: it is then marked unavailable
//! and dropped from the request, and meanwhile the drain timeout keeps it from holding back
//! the others.
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use periscope_proto::relay::NodeState;
use prost_types::Timestamp;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::transport::Channel;

use futures_util::FutureExt;

use crate::merge::{All, Merger, Newest, Oldest};
use crate::peers::{Peer, PeerSnapshot, Pool, backoff, state_of, status_text};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Settings of the merge for every request.
#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// Events held per peer by the merge.
    pub sort_buffer: usize,
    /// Longest an event waits in the merge (and a silent peer is waited for).
    pub drain_timeout: Duration,
    /// Name of this relay in the node status events it emits (`GetFlowsResponse.node_name`).
    pub relay_name: String,
}

/// The bounds of a request that shape the merge.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    /// Newest (or oldest with `first`) N; 0 = no limit.
    pub number: u64,
    /// Count from the oldest.
    pub first: bool,
    /// Keep streaming.
    pub follow: bool,
}

/// One streaming RPC the relay forwards.
pub trait Rpc: Send + Sync + 'static {
    /// The request as forwarded (with whatever the relay needs besides the wire request).
    type Req: Clone + Send + Sync + 'static;
    /// A response.
    type Resp: Send + 'static;
    /// Opens the request on a peer.
    fn open(ch: Channel, req: Self::Req)
    -> BoxFuture<Result<tonic::Streaming<Self::Resp>, Status>>;
    /// Event time (ns) and node of a response merged by time; None for notices passed on at
    /// once (node status, lost events).
    fn sort_key(r: &Self::Resp) -> Option<(i128, &str)>;
    /// Renames nodes as clients see them; false drops the response (a filter the relay applies
    /// itself).
    fn adapt(req: &Self::Req, r: &mut Self::Resp, peer: &Peer) -> bool;
    /// A node status event, if this RPC has them.
    fn node_status(
        relay: &str,
        state: NodeState,
        names: Vec<String>,
        message: String,
    ) -> Option<Self::Resp>;
    /// The request re-opened on a reconnected peer: following from just after `last` (ns) —
    /// or the original request when nothing was forwarded yet.
    fn resume(req: &Self::Req, last: Option<i128>) -> Self::Req;
    /// The request's bounds.
    fn window(req: &Self::Req) -> Window;
}

/// ns since the epoch of a timestamp (0 when unset).
pub fn nanos(t: Option<&Timestamp>) -> i128 {
    t.map_or(0, |t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
}

/// The timestamp of ns since the epoch.
pub fn timestamp(ns: i128) -> Timestamp {
    Timestamp {
        seconds: ns.div_euclid(1_000_000_000) as i64,
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

/// Now as a timestamp.
pub fn now_ts() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Most messages a forwarder sends to the central task at once (what it has received already).
const BATCH: usize = 32;

/// What forwarders tell the central task.
enum Msg<T> {
    /// The source delivers (again).
    Open(u64),
    /// An event to merge by time: source, time (ns), node.
    Item(u64, i128, Arc<str>, T),
    /// A notice to send at once.
    Pass(T),
    /// The source delivers no more (for now).
    Close(u64),
}

/// Starts forwarding `req` to every peer of `pool`; responses go to `out` until the request is
/// done, `out` is closed (the client left) or `shutdown` turns true.
pub fn spawn<R: Rpc>(
    pool: Arc<Pool>,
    req: R::Req,
    opts: MergeOptions,
    out: mpsc::Sender<Result<R::Resp, Status>>,
    shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(run::<R>(pool, req, opts, out, shutdown));
}

/// Forwarders for the peers not attached yet; returns the new ones' ids.
fn attach<R: Rpc>(
    pool: &Pool,
    attached: &mut HashSet<u64>,
    req: &R::Req,
    follow: bool,
    tx: &mpsc::Sender<Vec<Msg<R::Resp>>>,
    relay: &Arc<str>,
) -> Vec<u64> {
    let mut new = Vec::new();
    for peer in pool.peers() {
        if attached.insert(peer.id) {
            new.push(peer.id);
            tokio::spawn(forward::<R>(
                peer,
                req.clone(),
                follow,
                tx.clone(),
                relay.clone(),
            ));
        }
    }
    new
}

async fn shut(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run<R: Rpc>(
    pool: Arc<Pool>,
    req: R::Req,
    opts: MergeOptions,
    out: mpsc::Sender<Result<R::Resp, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let w = R::window(&req);
    let relay: Arc<str> = opts.relay_name.as_str().into();
    // Batches of up to BATCH messages: at most 1024 in flight, as a channel of single messages.
    let (tx, mut rx) = mpsc::channel::<Vec<Msg<R::Resp>>>(1024 / BATCH);
    let mut attached = HashSet::new();
    let mut members = pool.members();
    members.borrow_and_update();
    let first_sources = attach::<R>(&pool, &mut attached, &req, w.follow, &tx, &relay);

    if !w.follow {
        drop(tx);
        let mut keep = if w.number == 0 {
            Keep::All(All::default())
        } else if w.first {
            Keep::Oldest(Oldest::new(w.number))
        } else {
            Keep::Newest(Newest::new(w.number))
        };
        loop {
            let batch = tokio::select! {
                m = rx.recv() => m,
                _ = out.closed() => return,
                _ = shut(&mut shutdown) => return,
            };
            let Some(batch) = batch else { break };
            for m in batch {
                match m {
                    Msg::Item(src, t, node, r) => match &mut keep {
                        Keep::All(a) => a.push(src, t, node, r),
                        Keep::Newest(n) => n.push(t, node, r),
                        Keep::Oldest(o) => o.push(t, node, r),
                    },
                    Msg::Pass(r) => {
                        if out.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                    Msg::Open(_) | Msg::Close(_) => {}
                }
            }
        }
        let sorted: Box<dyn Iterator<Item = R::Resp> + Send> = match keep {
            Keep::All(a) => Box::new(a.into_sorted()),
            Keep::Newest(n) => Box::new(n.into_sorted().into_iter()),
            Keep::Oldest(o) => Box::new(o.into_sorted().into_iter()),
        };
        for r in sorted {
            if out.send(Ok(r)).await.is_err() {
                return;
            }
        }
        return;
    }

    // Following.
    let start = Instant::now();
    let t0 = nanos(Some(&now_ts()));
    let drain = opts.drain_timeout;
    let mut merger: Merger<R::Resp> = Merger::new(opts.sort_buffer, drain);
    let mut phase = (w.number > 0).then(|| History::new(w.number, &first_sources, start));
    loop {
        let now = Instant::now();
        if phase.as_ref().is_some_and(|p| p.done(now, start, drain)) {
            let p = phase.take().expect("history phase");
            for src in p.open_sources() {
                merger.open(src, now);
            }
            for r in p.keep.into_sorted() {
                if out.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        }
        let now = Instant::now();
        while let Some(r) = merger.pop_ready(now) {
            if out.send(Ok(r)).await.is_err() {
                return;
            }
        }
        let wake = match (&phase, merger.next_deadline()) {
            (Some(_), _) => now + Duration::from_millis(50).min(drain),
            (None, Some(d)) => d,
            (None, None) => now + Duration::from_secs(3600),
        };
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { return };
                let now = Instant::now();
                for m in batch {
                    match m {
                        Msg::Open(src) => match &mut phase {
                            Some(p) => p.open(src, now),
                            None => merger.open(src, now),
                        },
                        Msg::Close(src) => match &mut phase {
                            Some(p) => p.close(src),
                            None => merger.close(src),
                        },
                        Msg::Item(src, t, node, r) => match &mut phase {
                            Some(p) => p.push(src, t, node, r, now, t0),
                            None => merger.push(src, t, node, r, now),
                        },
                        Msg::Pass(r) => {
                            if out.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            r = members.changed() => {
                if r.is_ok() {
                    let new = attach::<R>(&pool, &mut attached, &req, true, &tx, &relay);
                    if let Some(p) = &mut phase {
                        for src in new {
                            p.expect(src, Instant::now());
                        }
                    }
                }
            }
            _ = out.closed() => return,
            _ = shut(&mut shutdown) => return,
        }
    }
}

/// A source during the history phase of a following request with `number`.
struct HistorySource {
    /// When it was attached or (re)opened.
    since: Instant,
    /// Its last event.
    last: Option<Instant>,
    /// Sent an event newer than the request, or closed.
    done: bool,
    /// Delivering.
    open: bool,
}

/// Gathers the newest `number` events of every peer's history before following.
struct History<T> {
    keep: Newest<T>,
    sources: HashMap<u64, HistorySource>,
}

impl<T> History<T> {
    fn new(number: u64, sources: &[u64], now: Instant) -> Self {
        let mut h = History {
            keep: Newest::new(number),
            sources: HashMap::new(),
        };
        for s in sources {
            h.expect(*s, now);
        }
        h
    }

    /// A forwarder attached: its history is expected.
    fn expect(&mut self, src: u64, now: Instant) {
        self.sources.entry(src).or_insert(HistorySource {
            since: now,
            last: None,
            done: false,
            open: true,
        });
    }

    fn open(&mut self, src: u64, now: Instant) {
        let s = self.sources.entry(src).or_insert(HistorySource {
            since: now,
            last: None,
            done: false,
            open: true,
        });
        s.open = true;
        s.since = now;
    }

    fn close(&mut self, src: u64) {
        if let Some(s) = self.sources.get_mut(&src) {
            s.open = false;
            s.done = true;
        }
    }

    fn push(&mut self, src: u64, t: i128, node: Arc<str>, item: T, now: Instant, t0: i128) {
        self.open(src, now);
        let s = self.sources.get_mut(&src).expect("source");
        s.last = Some(now);
        if t > t0 {
            s.done = true;
        }
        self.keep.push(t, node, item);
    }

    /// Whether every source sent its history (or is not waited for any more).
    fn done(&self, now: Instant, start: Instant, drain: Duration) -> bool {
        if now.duration_since(start) >= drain * 3 {
            return true;
        }
        self.sources.values().all(|s| {
            s.done
                || match s.last {
                    Some(last) => now.duration_since(last) >= drain,
                    None => now.duration_since(s.since) >= drain * 2,
                }
        })
    }

    fn open_sources(&self) -> Vec<u64> {
        self.sources
            .iter()
            .filter(|(_, s)| s.open)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Completes when the peer is no longer connected on generation `generation`; gives the state.
async fn lost(state: &mut watch::Receiver<PeerSnapshot>, generation: u64) -> (NodeState, String) {
    loop {
        {
            let s = state.borrow_and_update();
            if s.state != NodeState::NodeConnected || s.generation != generation {
                let st = if s.state == NodeState::NodeConnected {
                    NodeState::NodeUnavailable
                } else {
                    s.state
                };
                return (
                    st,
                    s.last_error
                        .clone()
                        .unwrap_or_else(|| "connection lost".into()),
                );
            }
        }
        if state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sends `m` if there is one; false when the request is gone.
async fn send_opt<T>(tx: &mpsc::Sender<Vec<Msg<T>>>, m: Option<Msg<T>>) -> bool {
    match m {
        Some(m) => tx.send(vec![m]).await.is_ok(),
        None => true,
    }
}

/// What a request without `follow` keeps.
enum Keep<T> {
    /// Everything (`number` 0).
    All(All<T>),
    /// The newest `number`.
    Newest(Newest<T>),
    /// The oldest `number` (`first`).
    Oldest(Oldest<T>),
}

/// The node names of one peer's events, each allocated once.
#[derive(Default)]
struct Names {
    last: Option<Arc<str>>,
    all: HashSet<Arc<str>>,
}

impl Names {
    /// The shared name `node`; a name not seen before is taught to the pool.
    fn get(&mut self, node: &str, peer: &Peer) -> Arc<str> {
        if let Some(last) = &self.last
            && **last == *node
        {
            return last.clone();
        }
        let name = match self.all.get(node) {
            Some(n) => n.clone(),
            None => {
                peer.learn_node(node);
                let n: Arc<str> = node.into();
                self.all.insert(n.clone());
                n
            }
        };
        self.last = Some(name.clone());
        name
    }
}

/// The forwarder of one peer for one request.
async fn forward<R: Rpc>(
    peer: Arc<Peer>,
    req: R::Req,
    follow: bool,
    tx: mpsc::Sender<Vec<Msg<R::Resp>>>,
    relay: Arc<str>,
) {
    let src = peer.id;
    let mut state = peer.subscribe();
    let mut last: Option<i128> = None;
    let mut down_reported = false;
    let mut opened_once = false;
    let mut retry = 0u32;
    // Node names seen in this peer's events (taught to the pool once each), shared by the
    // merge keys of their events.
    let mut known = Names::default();
    let status = |st: NodeState, message: String| {
        R::node_status(&relay, st, peer.node_names(), message).map(Msg::Pass)
    };
    loop {
        let snap = state.borrow_and_update().clone();
        if snap.state == NodeState::NodeGone {
            if let Some(m) = status(NodeState::NodeGone, "the peer was removed".into()) {
                let _ = tx.send(vec![m]).await;
            }
            let _ = tx.send(vec![Msg::Close(src)]).await;
            return;
        }
        let channel = match (snap.state, snap.channel) {
            (NodeState::NodeConnected, Some(c)) => c,
            (st, _) => {
                // Not connected (yet): not waited for by the merge.
                if tx.send(vec![Msg::Close(src)]).await.is_err() {
                    return;
                }
                let never_tried = st == NodeState::UnknownNodeState;
                if !(down_reported || never_tried && follow) {
                    let st = if st == NodeState::NodeError {
                        st
                    } else {
                        NodeState::NodeUnavailable
                    };
                    let msg = snap
                        .last_error
                        .unwrap_or_else(|| "not connected yet".into());
                    if !send_opt(&tx, status(st, msg)).await {
                        return;
                    }
                    down_reported = true;
                }
                if !follow {
                    return;
                }
                tokio::select! {
                    r = state.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
                continue;
            }
        };
        let request = if opened_once {
            R::resume(&req, last)
        } else {
            req.clone()
        };
        let opened = tokio::select! {
            r = R::open(channel, request) => r.map_err(|s| (state_of(&s), status_text(&s))),
            // A peer that accepts the call but never answers is dropped once the pool sees it
            // stalled.
            f = lost(&mut state, snap.generation) => Err(f),
            _ = tx.closed() => return,
        };
        let failure = match opened {
            Err(f) => Some(f),
            Ok(mut stream) => {
                opened_once = true;
                retry = 0;
                if (down_reported || !peer.is_relay())
                    && !send_opt(&tx, status(NodeState::NodeConnected, String::new())).await
                {
                    return;
                }
                down_reported = false;
                if tx.send(vec![Msg::Open(src)]).await.is_err() {
                    return;
                }
                let mut batch = Vec::with_capacity(BATCH);
                loop {
                    let mut m = tokio::select! {
                        m = stream.message() => m,
                        f = lost(&mut state, snap.generation) => break Some(f),
                        _ = tx.closed() => return,
                    };
                    // The responses received already join the first one's batch.
                    let mut forwarded = 0;
                    let end = loop {
                        match m {
                            Ok(Some(mut r)) => {
                                if R::adapt(&req, &mut r, &peer) {
                                    forwarded += 1;
                                    batch.push(match R::sort_key(&r) {
                                        Some((t, node)) => {
                                            last = Some(last.map_or(t, |l| l.max(t)));
                                            let node = known.get(node, &peer);
                                            Msg::Item(src, t, node, r)
                                        }
                                        None => Msg::Pass(r),
                                    });
                                }
                                match stream.message().now_or_never() {
                                    Some(next) if batch.len() < BATCH => m = next,
                                    Some(next) => {
                                        // Full: this one starts the next batch.
                                        m = next;
                                        if tx.send(std::mem::take(&mut batch)).await.is_err() {
                                            return;
                                        }
                                    }
                                    None => break None,
                                }
                            }
                            Ok(None) if follow => {
                                break Some(Some((
                                    NodeState::NodeUnavailable,
                                    "the peer ended the stream".to_string(),
                                )));
                            }
                            Ok(None) => break Some(None),
                            Err(s) => break Some(Some((state_of(&s), status_text(&s)))),
                        }
                    };
                    peer.forwarded.fetch_add(forwarded, Ordering::Relaxed);
                    if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
                        return;
                    }
                    if let Some(failure) = end {
                        break failure;
                    }
                }
            }
        };
        if tx.send(vec![Msg::Close(src)]).await.is_err() {
            return;
        }
        let Some((st, message)) = failure else {
            return;
        };
        tracing::info!(peer = src, address = %peer.spec.address, state = ?st, error = %message,
            "peer failed during a request");
        if !down_reported {
            if !send_opt(&tx, status(st, message)).await {
                return;
            }
            down_reported = true;
        }
        peer.report_failure();
        if !follow || st == NodeState::NodeError {
            return;
        }
        // Following: try again when the peer is back (or after a short backoff if the pool
        // still sees it connected: the stream failed but the connection did not).
        let delay = backoff(
            retry,
            Duration::from_millis(200),
            Duration::from_secs(5),
            fastrand::f64(),
        );
        retry = retry.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = state.changed() => {}
            _ = tx.closed() => return,
        }
    }
}

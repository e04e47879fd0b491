//! The relay's live merged ingest stream: one persistent follow stream from every peer, with
//! no filters, independent of client requests, for the consumers inside the relay (the
//! ClickHouse writer of [`crate::store`], the alert engine of [`crate::alerts`]).
//!
//! ```no_run
//! # async fn demo(pool: std::sync::Arc<periscope_relay::peers::Pool>,
//! #               merge: periscope_relay::fanout::MergeOptions) {
//! let (_stop_tx, stop) = tokio::sync::watch::channel(false);
//! let ingest = periscope_relay::ingest::spawn_ingest(pool, merge, stop);
//! let mut flows = ingest.subscribe();
//! loop {
//!     match flows.recv().await {
//!         Ok(flow) => { /* store or evaluate `flow` (an Arc<Flow>, node named `cluster/node`) */ }
//!         Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => { /* n flows lost */ }
//!         Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
//!     }
//! }
//! # }
//! ```
//!
//! - Flows come merged in time order (the same merge as GetFlows with `follow`), with node
//!   names as clients see them.
//! - A peer that reconnects is followed again from just after the last flow received from it
//!   (no gap for a peer that was briefly unreachable; a restarted agent starts from its new
//!   ring).
//! - The stream never blocks the peers: it is a [`tokio::sync::broadcast`] channel of
//!   [`INGEST_CAPACITY`] flows; a consumer that falls further behind gets `Lagged(n)` (n flows
//!   lost for it) and must count that. Subscribe before the flows you need arrive: a receiver
//!   sees only what is sent after it subscribed.
//! - Node status events are not in this stream; a consumer wanting the peers' states reads
//!   [`crate::peers::Pool::peers`] and each [`crate::peers::Peer::subscribe`].
use std::sync::Arc;

use periscope_proto::flow::Flow;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::{GetFlowsRequest, GetFlowsResponse};
use tokio::sync::{broadcast, mpsc, watch};

use crate::codec::Kind;
use crate::fanout::{self, MergeOptions};
use crate::peers::Pool;
use crate::server::{Flows, FlowsReq};

/// Flows the ingest broadcast holds for slow consumers.
pub const INGEST_CAPACITY: usize = 16_384;

/// Handle of the ingest stream.
#[derive(Clone)]
pub struct Ingest {
    tx: broadcast::Sender<Arc<Flow>>,
}

impl Ingest {
    /// A receiver of every flow sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Flow>> {
        self.tx.subscribe()
    }
}

/// Starts the ingest stream over the peers of `pool` (needs a Tokio runtime); it runs until
/// `shutdown` turns true.
pub fn spawn_ingest(
    pool: Arc<Pool>,
    merge: MergeOptions,
    shutdown: watch::Receiver<bool>,
) -> Ingest {
    let (tx, _) = broadcast::channel(INGEST_CAPACITY);
    let (out, mut merged) = mpsc::channel(1024);
    let req = FlowsReq {
        wire: GetFlowsRequest {
            follow: true,
            ..Default::default()
        },
        local: None,
    };
    fanout::spawn::<Flows>(pool, req, merge, out, shutdown);
    let btx = tx.clone();
    tokio::spawn(async move {
        while let Some(r) = merged.recv().await {
            // The merge forwards flows encoded; the consumers here need them decoded.
            let Ok(r) = r else { continue };
            if r.kind() != Kind::Flow {
                continue;
            }
            match r.decode() {
                Ok(GetFlowsResponse {
                    response_types: Some(ResponseTypes::Flow(f)),
                    ..
                }) => {
                    // No receiver is not an error: nobody consumes yet.
                    let _ = btx.send(Arc::new(f));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e.message(), "undecodable flow skipped"),
            }
        }
    });
    Ingest { tx }
}

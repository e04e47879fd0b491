//! A hook for ingest benchmarks (`cargo xtask bench relay`): flows through the whole writer path
//! (queue, intake, FlowRow conversion, inserter, ClickHouse commit), timed.

use std::time::Duration;

use periscope_proto::flow::{
    self, Endpoint, Flow, FlowType, IpVersion, Layer4, TcpFlags, TrafficDirection, Verdict,
    Workload, layer4::Protocol,
};
use prost_types::Timestamp;
use tokio::time::Instant;

use super::{Result, StoreConfig, StoreError, Writer, WriterStats};

/// What [`ingest`] measured.
#[derive(Clone, Debug)]
pub struct IngestTiming {
    /// Rows committed.
    pub rows: u64,
    /// From the first flow handed to the writer until the last row was committed.
    pub elapsed: Duration,
    /// The writer's counters at the end.
    pub stats: WriterStats,
}

impl IngestTiming {
    /// Rows per second.
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Starts a writer on `cfg`, waits for its schema (not timed), then hands it `flows` in
/// batches of `batch` and returns the time until every one of them is committed. The writer
/// path includes the spool: if the inserter falls behind, flows take the spool and count when
/// replayed. Fails if the rows are not all committed within `deadline`.
pub async fn ingest(
    cfg: StoreConfig,
    flows: Vec<Flow>,
    batch: usize,
    deadline: Duration,
) -> Result<IngestTiming> {
    let writer = Writer::start(cfg)?;
    let handle = writer.handle();
    let until = Instant::now() + deadline;
    while !handle.stats().healthy {
        if Instant::now() > until {
            return Err(StoreError::Config {
                field: "url",
                reason: format!(
                    "ClickHouse not ready within {deadline:?}: {:?}",
                    handle.stats().last_error
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = handle.stats().rows_written;
    let n = flows.len() as u64;
    let start = Instant::now();
    let mut flows = flows.into_iter();
    loop {
        let chunk: Vec<Flow> = flows.by_ref().take(batch.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        handle.send(chunk).await;
    }
    writer.flush().await?;
    while handle.stats().rows_written - before < n {
        if Instant::now() > until {
            let stats = writer.shutdown().await;
            return Err(StoreError::Config {
                field: "url",
                reason: format!(
                    "only {} of {n} rows committed within {deadline:?} ({stats:?})",
                    stats.rows_written - before
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    let stats = writer.shutdown().await;
    Ok(IngestTiming {
        rows: stats.rows_written - before,
        elapsed,
        stats,
    })
}

/// `n` distinct, realistic L3/L4 flows (unique uuids, times 1 µs apart from `start_ns`), for
/// benchmarks and tests.
pub fn synthetic_flows(n: usize, start_ns: i64) -> Vec<Flow> {
    (0..n).map(|i| synthetic_flow(i, start_ns)).collect()
}

/// The `i`-th flow of [`synthetic_flows`].
pub fn synthetic_flow(i: usize, start_ns: i64) -> Flow {
    let ns = start_ns + i as i64 * 1000;
    let pod = i % 50;
    let endpoint = |ns_name: &str, app: &str, n: usize| Endpoint {
        id: n as u32 + 1,
        identity: 10_000 + n as u32,
        namespace: ns_name.into(),
        labels: vec![format!("k8s:app={app}")],
        pod_name: format!("{app}-{n}"),
        workloads: vec![Workload {
            name: app.into(),
            kind: "Deployment".into(),
        }],
    };
    Flow {
        time: Some(Timestamp {
            seconds: ns.div_euclid(1_000_000_000),
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }),
        uuid: format!("5e1f0000-0000-4000-8000-{i:012x}"),
        verdict: if i.is_multiple_of(10) {
            Verdict::Dropped as i32
        } else {
            Verdict::Forwarded as i32
        },
        ip: Some(flow::Ip {
            source: format!("10.0.{}.{}", pod / 250, pod % 250 + 1),
            destination: format!("10.1.0.{}", i % 7 + 1),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
            source_xlated: String::new(),
        }),
        l4: Some(Layer4 {
            protocol: Some(Protocol::Tcp(flow::Tcp {
                source_port: 30_000 + (i % 20_000) as u32,
                destination_port: [80, 443, 5432, 8080][i % 4],
                flags: Some(TcpFlags {
                    syn: true,
                    ..Default::default()
                }),
            })),
        }),
        source: Some(endpoint("shop", "frontend", pod)),
        destination: Some(endpoint("data", "db", i % 7)),
        r#type: FlowType::L3L4 as i32,
        node_name: format!("bench/node-{}", i % 3),
        traffic_direction: TrafficDirection::Egress as i32,
        summary: "TCP Flags: SYN".into(),
        ..Default::default()
    }
}

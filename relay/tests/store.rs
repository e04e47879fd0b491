//! The relay's store against a real ClickHouse (Debian's 18.16): each test starts its own
//! private server (`periscope_storage::testing::TestServer`, killed on drop) and its own spool
//! directory.
//!
//! Waits use generous deadlines and never assert on timing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use periscope_filter::FlowFilterSet;
use periscope_proto::flow::{Flow, FlowFilter, Verdict};
use periscope_relay::store::bench::synthetic_flow;
use periscope_relay::store::history::HistoryLimits;
use periscope_relay::store::spool::{self, Spool};
use periscope_relay::store::{
    History, HistoryRequest, StoreConfig, Writer, WriterStats, synthetic_flows,
};
use periscope_storage::FlowRow;
use periscope_storage::testing::{TestCluster, TestServer};
use prost_types::Timestamp;

const DB: &str = "periscope";
const CLUSTER: &str = "test-cluster";
/// Deadline of every wait; far beyond what any step takes.
const PATIENCE: Duration = Duration::from_secs(120);

fn start_server() -> TestServer {
    TestServer::start().unwrap_or_else(|e| panic!("starting clickhouse-server: {e}"))
}

fn config(server: &TestServer, spool: &Path) -> StoreConfig {
    StoreConfig {
        database: DB.into(),
        cluster_name: CLUSTER.into(),
        max_rows: 2000,
        period: Duration::from_millis(300),
        timeout: Duration::from_secs(10),
        spool_dir: spool.to_path_buf(),
        spool_max_bytes: 256 << 20,
        ..StoreConfig::new(server.url())
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn ts(ns: i64) -> Timestamp {
    Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_healthy(writer: &Writer) {
    wait_until("the writer to reach ClickHouse", async || {
        writer.stats().healthy
    })
    .await;
}

/// `(count(), uniqExact(uuid))` of the flows table; `None` while the server does not answer.
async fn counts(client: &clickhouse::Client) -> Option<(u64, u64)> {
    client
        .query(&format!("SELECT count(), uniqExact(uuid) FROM {DB}.flows"))
        .fetch_one::<(u64, u64)>()
        .await
        .ok()
}

async fn wait_distinct(client: &clickhouse::Client, n: u64) {
    wait_until(&format!("{n} distinct flows in ClickHouse"), async || {
        counts(client)
            .await
            .is_some_and(|(_, distinct)| distinct >= n)
    })
    .await;
}

fn no_losses(stats: &WriterStats) {
    assert_eq!(stats.lost(), 0, "{stats:?}");
}

/// A flow's value after the storage round trip (what history can give back).
fn stored(flow: &Flow) -> Flow {
    FlowRow::from_flow(flow, CLUSTER).to_flow().unwrap()
}

fn by_time(mut flows: Vec<Flow>) -> Vec<Flow> {
    flows.sort_by(|a, b| {
        let key = |f: &Flow| {
            (
                periscope_storage::time_ns_of(f.time.as_ref()),
                f.uuid.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    flows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_equal_flows_sent() {
    let server = start_server();
    let spool = tempfile::tempdir().unwrap();
    let writer = Writer::start(config(&server, spool.path())).unwrap();
    let handle = writer.handle();
    let flows = synthetic_flows(20_000, now_ns() - 3_600_000_000_000);
    for chunk in flows.chunks(500) {
        // The queue holds 100000 flows: nothing is dropped, even before ClickHouse is reached.
        assert_eq!(
            handle.try_send(chunk.to_vec()),
            periscope_relay::store::SendOutcome::Queued
        );
    }
    writer.flush().await.unwrap();
    let client = server.client();
    wait_distinct(&client, 20_000).await;
    wait_until("every row counted as written", async || {
        writer.stats().rows_written >= 20_000
    })
    .await;
    let stats = writer.shutdown().await;
    let (rows, distinct) = counts(&client).await.unwrap();
    assert_eq!(distinct, 20_000);
    assert_eq!(rows, stats.rows_written, "{stats:?}");
    assert_eq!(stats.received, 20_000);
    assert_eq!(
        stats.spooled_rows, 0,
        "a healthy server: no spooling {stats:?}"
    );
    assert!(stats.batches >= 10, "bounded by max_rows: {stats:?}");
    no_losses(&stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_is_committed_by_the_timer() {
    let server = start_server();
    let spool = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_rows: 1_000_000,
        max_bytes: 1 << 30,
        period: Duration::from_millis(500),
        ..config(&server, spool.path())
    };
    let writer = Writer::start(cfg).unwrap();
    wait_healthy(&writer).await;
    writer.handle().try_send(vec![synthetic_flow(0, now_ns())]);
    // No flush, no more traffic: only the period can commit it.
    let client = server.client();
    wait_distinct(&client, 1).await;
    // The row is visible as soon as ClickHouse committed it; the writer counts it just after.
    wait_until("the row counted as written", async || {
        writer.stats().rows_written >= 1
    })
    .await;
    let stats = writer.stats();
    assert_eq!(stats.rows_written, 1, "{stats:?}");
    assert_eq!(stats.spooled_rows, 0, "{stats:?}");
    writer.shutdown().await;
}

/// ClickHouse is killed while flows keep coming, stays down for `outage`, and is restarted on
/// the same data directory: every flow arrives exactly once (as counted by the schema's
/// design: uniqExact(uuid), history, and after merges).
async fn outage_under_load(outage: Duration) {
    let mut server = start_server();
    let spool = tempfile::tempdir().unwrap();
    let writer = Writer::start(config(&server, spool.path())).unwrap();
    wait_healthy(&writer).await;
    let handle = writer.handle();
    let client = server.client();
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1?}] {what}", t0.elapsed());

    // About 2000 flows/s in batches of 100, until told to stop.
    let start_ns = now_ns() - 600_000_000_000;
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let generator = tokio::spawn({
        let (handle, sent, stop) = (handle.clone(), sent.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let first = sent.load(Ordering::Relaxed);
                let batch: Vec<Flow> = (first..first + 100)
                    .map(|i| synthetic_flow(i, start_ns))
                    .collect();
                assert_eq!(
                    handle.try_send(batch),
                    periscope_relay::store::SendOutcome::Queued
                );
                sent.fetch_add(100, Ordering::Relaxed);
            }
        }
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| server.stop());
    phase("ClickHouse killed");
    let down_at = sent.load(Ordering::Relaxed);
    wait_until("the writer to notice the outage", async || {
        !writer.stats().healthy
    })
    .await;
    tokio::time::sleep(outage).await;
    let during = writer.stats();
    assert!(during.spooled_rows > 0, "{during:?}");
    assert!(
        sent.load(Ordering::Relaxed) > down_at,
        "the live stream kept going"
    );
    tokio::task::block_in_place(|| server.restart())
        .unwrap_or_else(|e| panic!("restarting clickhouse-server: {e}"));
    phase("ClickHouse restarted");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    generator.await.unwrap();
    writer.flush().await.unwrap();
    let total = sent.load(Ordering::Relaxed) as u64;

    phase(&format!("{total} flows sent"));
    wait_distinct(&client, total).await;
    wait_until("the spool to drain", async || {
        writer.stats().spool_segments == 0
    })
    .await;
    let stats = writer.shutdown().await;
    phase(&format!("all in ClickHouse: {stats:?}"));
    no_losses(&stats);
    assert_eq!(stats.received, total);
    assert!(stats.replayed_rows > 0, "{stats:?}");
    let (rows, distinct) = counts(&client).await.unwrap();
    assert_eq!(distinct, total, "{stats:?}");
    assert!(rows >= total);

    // History counts each flow once, whatever copies the table still holds.
    let history = History::with_client(server.client(), DB);
    let result = history
        .flows(&HistoryRequest {
            since: Some(ts(start_ns)),
            until: Some(ts(now_ns())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!result.truncated);
    assert_eq!(result.flows.len() as u64, total);
    let uuids: BTreeSet<&str> = result.flows.iter().map(|f| f.uuid.as_str()).collect();
    assert_eq!(uuids.len() as u64, total);
    phase("history read");

    // And merges collapse the copies for good.
    client
        .query(&format!("OPTIMIZE TABLE {DB}.flows FINAL"))
        .execute()
        .await
        .unwrap();
    assert_eq!(counts(&client).await.unwrap(), (total, total));
    phase("merged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_60s_under_load_then_restarted_exact_count() {
    outage_under_load(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_briefly_under_load_exact_count() {
    outage_under_load(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_overflow_is_dropped_and_counted_and_the_rest_arrives() {
    let mut server = start_server();
    let spool = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        spool_max_bytes: 64 << 10,
        ..config(&server, spool.path())
    };
    let writer = Writer::start(cfg).unwrap();
    wait_healthy(&writer).await;
    tokio::task::block_in_place(|| server.stop());
    let handle = writer.handle();
    let flows = synthetic_flows(2000, now_ns() - 60_000_000_000);
    for chunk in flows.chunks(100) {
        handle.try_send(chunk.to_vec());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.flush().await.unwrap();
    wait_until("every flow spooled or dropped", async || {
        let s = writer.stats();
        s.spooled_rows + s.dropped_spool >= 2000
    })
    .await;
    let during = writer.stats();
    assert!(during.dropped_spool > 0, "{during:?}");
    assert!(during.spool_bytes <= 64 << 10, "{during:?}");
    assert_eq!(
        during.spooled_rows + during.dropped_spool,
        2000,
        "{during:?}"
    );

    tokio::task::block_in_place(|| server.restart()).unwrap();
    let client = server.client();
    wait_distinct(&client, during.spooled_rows).await;
    wait_until("the spool to drain", async || {
        writer.stats().spool_segments == 0
    })
    .await;
    let stats = writer.shutdown().await;
    assert_eq!(stats.lost(), stats.dropped_spool, "{stats:?}");
    assert_eq!(stats.dropped_spool, during.dropped_spool);
    let (_, distinct) = counts(&client).await.unwrap();
    assert_eq!(distinct, 2000 - stats.dropped_spool, "{stats:?}");
    // Nothing stays on disk.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_spool_record_is_skipped() {
    let server = start_server();
    let dir = tempfile::tempdir().unwrap();
    let flows = synthetic_flows(10, now_ns() - 60_000_000_000);
    {
        // A spool left by a relay that died in the middle of its last append.
        let mut spool = Spool::open(dir.path(), 1 << 20, CLUSTER).unwrap();
        spool.append(&flows).unwrap();
        spool.seal().unwrap();
        let seg = spool.next_replay().unwrap().unwrap();
        let len = std::fs::metadata(&seg.path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .unwrap()
            .set_len(len - 7)
            .unwrap();
        assert_eq!(spool::read_segment(&seg.path).unwrap().flows.len(), 9);
    }
    let writer = Writer::start(config(&server, dir.path())).unwrap();
    let client = server.client();
    wait_distinct(&client, 9).await;
    wait_until("the spool to drain", async || {
        writer.stats().spool_segments == 0
    })
    .await;
    let stats = writer.shutdown().await;
    assert_eq!(stats.replayed_rows, 9, "{stats:?}");
    assert_eq!(stats.spool_corrupt_records, 1, "{stats:?}");
    let history = History::with_client(server.client(), DB);
    let got = history
        .flows(&HistoryRequest::default())
        .await
        .unwrap()
        .flows;
    let want: Vec<Flow> = flows[..9].iter().map(stored).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_is_replayed_after_a_writer_restart() {
    let mut server = start_server();
    tokio::task::block_in_place(|| server.stop());
    let dir = tempfile::tempdir().unwrap();
    let flows = synthetic_flows(1500, now_ns() - 60_000_000_000);
    {
        // ClickHouse is down for the whole life of this writer.
        let writer = Writer::start(config(&server, dir.path())).unwrap();
        writer.handle().try_send(flows.clone());
        writer.flush().await.unwrap();
        let stats = writer.shutdown().await;
        assert_eq!(stats.spooled_rows, 1500, "{stats:?}");
        assert_eq!(stats.rows_written, 0, "{stats:?}");
        assert!(!stats.schema_ready);
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().count() > 0);
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let writer = Writer::start(config(&server, dir.path())).unwrap();
    let client = server.client();
    wait_distinct(&client, 1500).await;
    wait_until("the spool to drain", async || {
        writer.stats().spool_segments == 0
    })
    .await;
    let stats = writer.shutdown().await;
    assert_eq!(stats.replayed_rows, 1500, "{stats:?}");
    no_losses(&stats);
    assert_eq!(counts(&client).await.unwrap(), (1500, 1500));
}

/// The writer settles the map's quiet minutes in the background (storage migration 0006) and
/// the map reads the same from them, bytes included (0007): a first writer that never settles stores flows (some twice),
/// the map is read; a second writer on the same database settles, and the map reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_settles_quiet_minutes_and_the_map_stays_the_same() {
    let server = start_server();
    let spool = tempfile::tempdir().unwrap();
    let start_ns = now_ns() - 600_000_000_000;
    // Flows over ten minutes, a replayed copy of some.
    let flows: Vec<Flow> = synthetic_flows(3000, start_ns)
        .into_iter()
        .enumerate()
        .map(|(i, mut f)| {
            f.time = Some(ts(start_ns
                + (i as i64 % 10) * 60_000_000_000
                + i as i64 * 1000));
            f.periscope_bytes = 100;
            f
        })
        .collect();
    let never = StoreConfig {
        settle_every: Duration::from_secs(86_400),
        ..config(&server, spool.path())
    };
    let writer = Writer::start(never).unwrap();
    writer.handle().try_send(flows.clone());
    writer.handle().try_send(flows[100..400].to_vec());
    writer.flush().await.unwrap();
    let client = server.client();
    wait_distinct(&client, 3000).await;
    let stats = writer.shutdown().await;
    assert_eq!(stats.settled_minutes, 0, "{stats:?}");

    let history = History::with_client(server.client(), DB);
    let (since_ns, until_ns) = (start_ns - 60_000_000_000, now_ns());
    let map = || history.service_map_edges(since_ns, until_ns, 10_000);
    let unsettled = map().await.unwrap();
    let total: u64 = unsettled.iter().map(|e| e.flows).sum();
    assert!(total > 0, "the map has edges: {unsettled:?}");
    // Bytes (migration 0007): 100 per counted flow, and again for a replayed copy (sums, unlike
    // the uuid sets, cannot tell copies apart): 300 flows were sent twice.
    let bytes: u64 = unsettled.iter().map(|e| e.bytes).sum();
    assert!(
        unsettled.iter().all(|e| e.bytes >= 100 * e.flows),
        "{unsettled:?}"
    );
    assert!(
        (100 * total..=100 * (total + 300)).contains(&bytes),
        "{bytes} bytes for {total} flows"
    );
    let minutes = |sql: &'static str| {
        let client = client.clone();
        async move { client.query(sql).fetch_one::<u64>().await.unwrap() }
    };
    assert_eq!(
        minutes("SELECT count() FROM periscope.flow_minutes_settled").await,
        0
    );

    let settling = StoreConfig {
        settle_every: Duration::from_millis(200),
        settle_quiet: Duration::ZERO,
        ..config(&server, spool.path())
    };
    let writer = Writer::start(settling).unwrap();
    let written = minutes("SELECT uniqExact(minute) FROM periscope.flow_minutes").await;
    assert!(written >= 10, "{written} minutes written");
    wait_until("every minute settled", async || {
        writer.stats().settled_minutes >= written
    })
    .await;
    let settled = minutes("SELECT uniqExact(minute) FROM periscope.flow_minutes_settled").await;
    assert_eq!(settled, written);
    assert_eq!(map().await.unwrap(), unsettled);
    writer.shutdown().await;
}

/// Flows with a mix of verdicts, pods and ports, every few a fully populated one; some sent
/// twice (as a replay would).
fn history_fixture(start_ns: i64) -> Vec<Flow> {
    let mut flows = synthetic_flows(400, start_ns);
    let mut full = periscope_storage::testing::full_flow();
    for i in 0..5 {
        full.uuid = format!("f011f011-0000-4000-8000-{i:012}");
        full.time = Some(ts(start_ns + 7_777 + i64::from(i) * 50_000_000));
        flows.push(full.clone());
    }
    // Two flows at the same nanosecond: ties are ordered by uuid.
    let mut tie = synthetic_flow(1000, start_ns);
    tie.time = flows[100].time;
    flows.push(tie);
    flows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_gives_back_the_written_flows_and_honours_the_request() {
    let server = start_server();
    let spool = tempfile::tempdir().unwrap();
    let writer = Writer::start(config(&server, spool.path())).unwrap();
    let start_ns = now_ns() - 7_200_000_000_000;
    let flows = history_fixture(start_ns);
    writer.handle().try_send(flows.clone());
    // A replayed copy of some of them.
    writer.handle().try_send(flows[50..80].to_vec());
    writer.flush().await.unwrap();
    let client = server.client();
    wait_distinct(&client, flows.len() as u64).await;
    writer.shutdown().await;

    let all = by_time(flows.iter().map(stored).collect());
    let window = |since: i64, until: i64| HistoryRequest {
        since: Some(ts(since)),
        until: Some(ts(until)),
        ..Default::default()
    };
    let everything = window(start_ns - 1, now_ns());
    // Small pages and a tiny buffer, so that paging and the two-pass "newest n" are exercised.
    let paged = History::with_client(server.client(), DB).with_limits(HistoryLimits {
        page_rows: 7,
        max_scanned_rows: 1_000_000,
        max_buffered: 3,
    });
    let default = History::with_client(server.client(), DB);

    for history in [&default, &paged] {
        // Everything, once each, oldest first, every field as written.
        let got = history.flows(&everything).await.unwrap();
        assert!(!got.truncated);
        assert_eq!(got.unreadable_rows, 0);
        assert_eq!(got.flows, all);

        // The stream gives the same.
        let streamed: Vec<Flow> = history
            .stream(&everything)
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(streamed, all);

        // since/until, nanosecond-exact and inclusive.
        let (a, b) = (
            periscope_storage::time_ns_of(all[10].time.as_ref()),
            periscope_storage::time_ns_of(all[40].time.as_ref()),
        );
        let got = history.flows(&window(a, b)).await.unwrap().flows;
        let want: Vec<Flow> = all
            .iter()
            .filter(|f| (a..=b).contains(&periscope_storage::time_ns_of(f.time.as_ref())))
            .cloned()
            .collect();
        assert_eq!(got, want);

        // number: the newest n, or with `first` the oldest n; oldest first either way.
        for n in [1u64, 10, 101] {
            let last = history
                .flows(&HistoryRequest {
                    number: n,
                    ..everything.clone()
                })
                .await
                .unwrap()
                .flows;
            assert_eq!(last, all[all.len() - n as usize..], "last {n}");
            let first = history
                .flows(&HistoryRequest {
                    number: n,
                    first: true,
                    ..everything.clone()
                })
                .await
                .unwrap()
                .flows;
            assert_eq!(first, all[..n as usize], "first {n}");
        }

        // Filters, pushed down or not, give what the filter engine gives.
        let cases: Vec<(&str, Vec<FlowFilter>, Vec<FlowFilter>)> = vec![
            (
                "verdict DROPPED",
                vec![FlowFilter {
                    verdict: vec![Verdict::Dropped as i32],
                    ..Default::default()
                }],
                vec![],
            ),
            (
                "source_pod prefix",
                vec![FlowFilter {
                    source_pod: vec!["shop/frontend-1".into()],
                    ..Default::default()
                }],
                vec![],
            ),
            (
                "destination port",
                vec![FlowFilter {
                    destination_port: vec!["5432".into()],
                    ..Default::default()
                }],
                vec![],
            ),
            (
                "dropped to 5432 from shop, two allow filters",
                vec![
                    FlowFilter {
                        verdict: vec![Verdict::Dropped as i32],
                        destination_port: vec!["5432".into()],
                        ..Default::default()
                    },
                    FlowFilter {
                        verdict: vec![Verdict::Dropped as i32],
                        source_pod: vec!["shop/".into()],
                        ..Default::default()
                    },
                ],
                vec![],
            ),
            (
                "deny forwarded",
                vec![],
                vec![FlowFilter {
                    verdict: vec![Verdict::Forwarded as i32],
                    ..Default::default()
                }],
            ),
        ];
        for (name, allow, deny) in cases {
            let set = FlowFilterSet::compile(&allow, &deny).unwrap();
            let want: Vec<Flow> = all.iter().filter(|f| set.matches(f)).cloned().collect();
            assert!(
                !want.is_empty() && want.len() < all.len(),
                "{name}: a useful case"
            );
            let req = HistoryRequest {
                allow: allow.clone(),
                deny: deny.clone(),
                ..everything.clone()
            };
            assert_eq!(history.flows(&req).await.unwrap().flows, want, "{name}");
            let n = (want.len() / 2).max(1);
            let last = history
                .flows(&HistoryRequest {
                    number: n as u64,
                    ..req.clone()
                })
                .await
                .unwrap()
                .flows;
            assert_eq!(last, want[want.len() - n..], "{name}: last {n}");
            let first = history
                .flows(&HistoryRequest {
                    number: n as u64,
                    first: true,
                    ..req
                })
                .await
                .unwrap()
                .flows;
            assert_eq!(first, want[..n], "{name}: first {n}");
        }
    }

    // The scan bound: a request that would read more stops and says so.
    let bounded = History::with_client(server.client(), DB).with_limits(HistoryLimits {
        page_rows: 50,
        max_scanned_rows: 120,
        max_buffered: 1000,
    });
    let got = bounded.flows(&everything).await.unwrap();
    assert!(got.truncated);
    assert_eq!(got.scanned_rows, 120);
    assert_eq!(got.flows, all[..120]);

    // Per-uuid equality with what was sent, field by field.
    let sent: BTreeMap<&str, Flow> = flows.iter().map(|f| (f.uuid.as_str(), stored(f))).collect();
    for f in &default.flows(&everything).await.unwrap().flows {
        assert_eq!(Some(f), sent.get(f.uuid.as_str()));
    }
}

/// Ingest benchmark (numbers printed, not asserted): rows/s through the writer path (queue,
/// intake, FlowRow conversion, inserter, commit) against `clickhouse-client` inserting the same
/// rows as RowBinary over the native protocol into an identical table, on the same server in the
/// same run. `PERISCOPE_BENCH_ROWS` rows (default 200000).
///
/// `cargo test -p periscope-relay --release --test store -- --ignored --nocapture ingest_rate`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture (release build)"]
async fn ingest_rate_vs_clickhouse_client() {
    use clickhouse::Row;
    let n: usize = std::env::var("PERISCOPE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let server = start_server();
    let spool = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_rows: 100_000,
        period: Duration::from_secs(1),
        queue_flows: 200_000,
        ..config(&server, spool.path())
    };
    let flows = synthetic_flows(n, now_ns() - 3_600_000_000_000);
    let timing = periscope_relay::store::ingest(cfg, flows, 1000, Duration::from_secs(900))
        .await
        .unwrap();
    assert_eq!(timing.rows, n as u64);

    // Baseline: the very rows, exported as RowBinary, inserted by clickhouse-client.
    let client = server.client();
    let columns = FlowRow::COLUMN_NAMES.join(", ");
    let bytes = client
        .query(&format!("SELECT {columns} FROM {DB}.flows"))
        .fetch_bytes("RowBinary")
        .unwrap()
        .collect()
        .await
        .unwrap();
    periscope_storage::migrate(
        &client,
        &periscope_storage::MigrateConfig {
            database: "baseline".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.bin");
    std::fs::write(&file, &bytes).unwrap();
    let tcp_port = server.tcp_port().to_string();
    let started = std::time::Instant::now();
    let status = std::process::Command::new("clickhouse-client")
        .args(["--host", "127.0.0.1", "--port", &tcp_port, "--query"])
        .arg(format!(
            "INSERT INTO baseline.flows ({columns}) FORMAT RowBinary"
        ))
        .stdin(std::fs::File::open(&file).unwrap())
        .status()
        .unwrap();
    let baseline = started.elapsed();
    assert!(status.success(), "clickhouse-client failed");
    let copied: u64 = client
        .query("SELECT count() FROM baseline.flows")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(copied, n as u64);
    let baseline_rate = n as f64 / baseline.as_secs_f64();
    println!(
        "ingest {n} rows ({} bytes RowBinary): writer {:.0} rows/s ({:.2?}, {} batches, {} rows \
         through the spool); clickhouse-client RowBinary {:.0} rows/s ({:.2?}); \
         writer/baseline = {:.2}",
        bytes.len(),
        timing.rows_per_sec(),
        timing.elapsed,
        timing.stats.batches,
        timing.stats.spooled_rows,
        baseline_rate,
        baseline,
        timing.rows_per_sec() / baseline_rate,
    );
}

/// Cluster mode (`clickhouse_cluster`), on a private 18.16 cluster of two shards with its own
/// ZooKeeper (`TestCluster`; ZooKeeper is real: `ON CLUSTER` DDL and `Replicated*` tables need
/// it): the writer migrates the cluster and writes through the Distributed `flows` of one
/// server, then copies of a thousand flows (a replay); the flows land on both shards, and
/// history read through the other shard's server, in one page and in pages of 7, gives every
/// flow back once, as written; the service map answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_cluster_is_written_and_read_through_distributed_tables() {
    let name = "periscope_relay";
    let cluster = TestCluster::start(name, &[1, 1])
        .unwrap_or_else(|e| panic!("starting ZooKeeper and two clickhouse-servers: {e}"));
    let [first, second] = cluster.servers() else {
        panic!("two servers")
    };
    let spool = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        clickhouse_cluster: Some(name.into()),
        ..config(first, spool.path())
    };
    let writer = Writer::start(cfg.clone()).unwrap();
    let start_ns = now_ns() - 600_000_000_000;
    let flows = synthetic_flows(3000, start_ns);
    for chunk in flows.chunks(500) {
        assert_eq!(
            writer.handle().try_send(chunk.to_vec()),
            periscope_relay::store::SendOutcome::Queued
        );
    }
    writer.flush().await.unwrap();
    wait_distinct(&first.client(), 3000).await;
    // Copies of some flows (a replay), cut into other batches: history still gives each once.
    for chunk in flows[100..1100].chunks(300) {
        assert_eq!(
            writer.handle().try_send(chunk.to_vec()),
            periscope_relay::store::SendOutcome::Queued
        );
    }
    writer.flush().await.unwrap();
    wait_until("every row counted as written", async || {
        writer.stats().rows_written >= 4000
    })
    .await;
    let stats = writer.shutdown().await;
    no_losses(&stats);

    let local = |server: &TestServer| {
        let client = server.client();
        async move {
            client
                .query(&format!("SELECT count() FROM {DB}.flows_local"))
                .fetch_one::<u64>()
                .await
                .expect("counting a shard's rows")
        }
    };
    let (a, b) = (local(first).await, local(second).await);
    assert!(a > 0 && b > 0, "both shards hold flows: {a} + {b}");
    // Every flow, and at most every row written (merges may have collapsed copies already).
    assert!(
        (3000..=stats.rows_written).contains(&(a + b)),
        "{a} + {b}, {stats:?}"
    );

    let other = StoreConfig {
        url: second.url(),
        ..cfg
    };
    let want = by_time(flows.iter().map(stored).collect());
    let history = History::new(&other).unwrap();
    // Small pages too: each page's LIMIT must not be cut on a shard before copies are dropped.
    let paged = History::new(&other).unwrap().with_limits(HistoryLimits {
        page_rows: 7,
        max_scanned_rows: 1_000_000,
        max_buffered: 3,
    });
    for history in [&history, &paged] {
        let got = history
            .flows(&HistoryRequest {
                since: Some(ts(start_ns)),
                until: Some(ts(now_ns())),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!got.truncated);
        assert_eq!(by_time(got.flows), want);
    }
    let edges = history
        .service_map_edges(start_ns - 60_000_000_000, now_ns(), 10_000)
        .await
        .unwrap();
    let counted: u64 = edges.iter().map(|e| e.flows).sum();
    assert!(counted > 0 && counted <= 3000, "{edges:?}");
}

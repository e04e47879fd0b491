//! What the 18.16 tests (one server, and a cluster) do against a real server: insert rows the
//! way the relay does, run statements, run the shipped queries' cases, settle.
use std::time::Duration;

use clickhouse::Client;
use periscope_storage::queries::SettleCandidate;
use periscope_storage::{FlowRow, Queries};

use super::{Case, Expected};

/// Writes rows the way the relay does: RowBinary into `flows` (on a cluster, the Distributed
/// table).
pub async fn insert(client: &Client, database: &str, rows: &[FlowRow]) {
    let client = client.clone().with_database(database);
    let mut insert = client
        .insert::<FlowRow>(periscope_storage::FLOWS_TABLE)
        .await
        .expect("starting an insert");
    for row in rows {
        insert.write(row).await.expect("writing a row");
    }
    insert.end().await.expect("finishing an insert");
}

/// The one number `sql` answers.
pub async fn scalar_u64(client: &Client, sql: &str) -> u64 {
    client
        .query_raw(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs statements in order, panicking with the one that failed.
pub async fn run_all(client: &Client, statements: &[String]) {
    for statement in statements {
        client
            .query_raw(statement)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Every case answers what it expects; `when` names the moment in failures.
pub async fn run_cases(queries: &Queries, cases: &[Case], when: &str) {
    for case in cases {
        let query = queries
            .prepare(&case.spec, &case.params)
            .unwrap_or_else(|e| panic!("{}: {e}", case.id));
        let id = format!("{} ({when})", case.id);
        match &case.expected {
            Expected::DeniedByPolicy(want) => check(query, want, &id).await,
            Expected::TopTalkers(want) => check(query, want, &id).await,
            Expected::NewWorldDestinations(want) => check(query, want, &id).await,
            Expected::DnsFailures(want) => check(query, want, &id).await,
            Expected::TcpResets(want) => check(query, want, &id).await,
            Expected::PodFlows(want) => check(query, want, &id).await,
            Expected::ServiceMapEdges(want) => check(query, want, &id).await,
            Expected::History(want) => check(query, want, &id).await,
        }
    }
}

async fn check<T>(query: clickhouse::query::Query, want: &[T], id: &str)
where
    T: clickhouse::RowOwned + clickhouse::RowRead + PartialEq + std::fmt::Debug,
{
    let got: Vec<T> = query
        .fetch_all()
        .await
        .unwrap_or_else(|e| panic!("case {id}: {e}"));
    assert_eq!(got, want, "case {id}");
}

/// Settles every minute whose writes are done (the quiet time 0: a minute is settled once its
/// latest write is in an earlier second), checking that a second run finds nothing left.
pub async fn settle_all(queries: &Queries) -> Vec<SettleCandidate> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let settled = queries.settle(0, 100_000).await.expect("settling");
    let again = queries.settle(0, 100_000).await.expect("settling again");
    assert_eq!(again, [], "settling twice");
    settled
}

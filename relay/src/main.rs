//! `periscope-relay`: see `periscope-relay --help` and the crate documentation of
//! `periscope_relay`.
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use periscope_logging::clickhouse::{Shipper, ShipperConfig};
use periscope_logging::{LogHandle, LogOptions, ShipOptions};
use periscope_proto::flow::Flow;
use periscope_relay::alerts::{
    Alerting, AlertingConfig, AlertmanagerConfig, Receiver, WebhookConfig,
};
use periscope_relay::api::{ApiState, StorageStatus};
use periscope_relay::config::{Cli, Config, DEFAULT_CLUSTER};
use periscope_relay::fanout::MergeOptions;
use periscope_relay::history::{ClickHouseHistory, HistorySource, WindowHistory};
use periscope_relay::ingest::spawn_ingest;
use periscope_relay::peers::{Origin, Pool, PoolOptions, follow_peer_service};
use periscope_relay::server::RelayService;
use periscope_relay::store::{History, Writer, WriterHandle};
use periscope_relay::tls::{ReloadingServerConfig, tls_incoming};
use periscope_relay::ui::live::LiveMap;
use periscope_relay::ui::{MapStore, PolicySource, UiAccess, UiState};
use periscope_relay::window::Window;
use periscope_ui_api::DataSource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Longest the relay waits for open streams to end at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli)?;
    let (log, ship) = periscope_logging::init(&LogOptions {
        filter: config.log.clone(),
        format: config.log_format,
        ship: config.log_to_clickhouse.map(|min_level| ShipOptions {
            min_level,
            ..ShipOptions::default()
        }),
    })
    .context("--log")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?
        .block_on(run(config, log, ship))
}

/// This host's name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "periscope-relay".into())
}

/// The name of this relay in the node status events it emits: its host name, prefixed with the
/// cluster name unless that is `default`.
fn relay_name(cluster: &str) -> String {
    let host = host_name();
    if cluster == DEFAULT_CLUSTER {
        host
    } else {
        format!("{cluster}/{host}")
    }
}

/// Feeds every flow of the ingest stream to the alert engine and the store, in batches. At
/// shutdown (`stop`) it takes what the stream still holds, hands the last batch over and returns,
/// so that the writer's shutdown stores it.
async fn consume(
    mut rx: tokio::sync::broadcast::Receiver<Arc<Flow>>,
    alerting: Arc<Alerting>,
    writer: Option<WriterHandle>,
    window: Option<Arc<Mutex<Window>>>,
    live_map: Arc<LiveMap>,
    lagged: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    const BATCH: usize = 512;
    let mut batch: Vec<Flow> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = false;
    while !last {
        let flush = tokio::select! {
            _ = stop.wait_for(|s| *s) => {
                while let Ok(f) = rx.try_recv() {
                    alerting.observe(&f);
                    batch.push(Flow::clone(&f));
                }
                last = true;
                true
            }
            r = rx.recv() => match r {
                Ok(f) => {
                    alerting.observe(&f);
                    batch.push(Flow::clone(&f));
                    batch.len() >= BATCH
                }
                Err(RecvError::Lagged(n)) => {
                    lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(flows = n, "storage and alerting fell behind the live stream");
                    false
                }
                Err(RecvError::Closed) => {
                    last = true;
                    true
                }
            },
            _ = tick.tick() => true,
        };
        if flush {
            live_map.observe(&batch);
            if let Some(w) = &window {
                // Also seals an aged open batch when nothing arrives.
                w.lock().expect("window lock").push(&batch);
            }
            if let Some(h) = &writer
                && !batch.is_empty()
            {
                let _ = h.try_send(std::mem::take(&mut batch));
            }
            batch.clear();
        }
    }
}

/// The policies in force, asked of the agents when the UI wants them.
fn policy_source(pool: Arc<Pool>) -> PolicySource {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move { periscope_relay::policies::policy_graph(&pool).await })
    })
}

/// Completes at SIGINT or SIGTERM, after telling every stream to end.
async fn shutdown_signal(stop: watch::Sender<bool>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
    let _ = stop.send(true);
}

async fn run(
    config: Config,
    log: LogHandle,
    ship: Option<periscope_logging::ShipQueue>,
) -> Result<()> {
    // The relay's own warnings and errors into ClickHouse's `logs` (created by the writer's
    // migrations; rows wait in the shipper until the table exists).
    let shipper = match (ship, &config.store) {
        (Some(queue), Some(store)) => {
            tracing::info!(min_level = ?config.log_to_clickhouse, "storing log events in ClickHouse");
            Some(Shipper::start(
                queue,
                ShipperConfig::new(
                    store.client().context("ClickHouse client for logs")?,
                    store.database.clone(),
                    "relay",
                    host_name(),
                    config.cluster_name.clone(),
                ),
            ))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("--listen {}", config.listen))?;
    let local = listener.local_addr()?;
    let (stop_tx, stop) = watch::channel(false);

    let pool = Pool::new(PoolOptions {
        cluster_name: config.cluster_name.clone(),
        dial_timeout: config.dial_timeout,
        retry_timeout: config.retry_timeout,
        tls: config.peer_tls.clone(),
    });
    for p in &config.peers {
        pool.add(p.clone(), Origin::Static);
    }
    if let Some(address) = &config.peer_service {
        tokio::spawn(follow_peer_service(pool.clone(), address.clone()));
    }
    if let Some(k8s) = &config.k8s_peers {
        let client = periscope_relay::k8s::client(k8s).map_err(anyhow::Error::msg)?;
        tracing::info!(namespace = %k8s.namespace, selector = %k8s.selector, "finding agents in Kubernetes");
        tokio::spawn(periscope_relay::k8s::follow_pods(
            pool.clone(),
            client,
            k8s.clone(),
        ));
    }
    let dynamic = config.peer_service.is_some() || config.k8s_peers.is_some();
    if config.peers.is_empty() && !dynamic {
        tracing::warn!(
            "no peers configured (--peers, --peer-service, --k8s-api-server, --relay-peer): every answer will be empty"
        );
    }
    if config.peer_tls.is_none() && (!config.peers.is_empty() || dynamic) {
        tracing::warn!("dialing peers in plain text (no --peer-tls-ca)");
    }
    let merge = MergeOptions {
        sort_buffer: config.sort_buffer,
        drain_timeout: config.sort_drain_timeout,
        relay_name: relay_name(&config.cluster_name),
    };

    // The live merged stream feeds the alert engine and the store (ClickHouse or the window).
    let ingest = spawn_ingest(pool.clone(), merge.clone(), stop.clone());
    let mut receivers = Vec::new();
    for url in &config.alertmanager_urls {
        receivers.push(Receiver::Alertmanager(AlertmanagerConfig::new(url.clone())));
    }
    for url in &config.alert_webhooks {
        receivers.push(Receiver::Webhook(WebhookConfig { url: url.clone() }));
    }
    if let Some(store) = &config.store {
        receivers.push(Receiver::ClickHouse {
            client: Box::new(store.client().context("ClickHouse client")?),
            database: store.database.clone(),
        });
    }
    let alerting = Arc::new(
        Alerting::start(AlertingConfig {
            rules_path: config.alert_rules.clone(),
            receivers,
            ..AlertingConfig::default()
        })
        .context("--alert-rules")?,
    );
    let (history, writer, window): (Arc<dyn HistorySource>, Option<Writer>, _) = match &config.store
    {
        Some(cfg) => {
            let writer = if cfg.read_only {
                tracing::info!(
                    url = %cfg.url,
                    database = %cfg.database,
                    "reading history from ClickHouse; flows are not written (read_only)"
                );
                None
            } else {
                tracing::info!(url = %cfg.url, database = %cfg.database, "storing flows in ClickHouse");
                Some(Writer::start(cfg.clone()).context("ClickHouse writer")?)
            };
            let history = History::new(cfg).context("ClickHouse history")?;
            (Arc::new(ClickHouseHistory(history)), writer, None)
        }
        None => {
            let w = Arc::new(Mutex::new(Window::new(config.window, &config.cluster_name)));
            tracing::info!(
                budget_bytes = config.window.memory_budget_bytes,
                "no ClickHouse configured: keeping recent flows in memory"
            );
            (Arc::new(WindowHistory(w.clone())), None, Some(w))
        }
    };
    let lagged = Arc::new(AtomicU64::new(0));
    let live_map = Arc::new(LiveMap::new());
    let consumer = tokio::spawn(consume(
        ingest.subscribe(),
        alerting.clone(),
        writer.as_ref().map(|w| w.handle()),
        window.clone(),
        live_map.clone(),
        lagged.clone(),
        stop.clone(),
    ));
    let storage_status: Box<dyn Fn() -> StorageStatus + Send + Sync> = match (&writer, &window) {
        (Some(w), _) => {
            let h = w.handle();
            Box::new(move || StorageStatus::Clickhouse(h.stats()))
        }
        (None, Some(w)) => {
            let w = w.clone();
            Box::new(move || StorageStatus::Window(w.lock().expect("window lock").stats()))
        }
        // A read-only store: nothing is written.
        (None, None) => {
            Box::new(|| StorageStatus::Clickhouse(periscope_relay::store::WriterStats::default()))
        }
    };
    if let Some(addr) = config.http_listen {
        let access = Arc::new(UiAccess {
            token: config.ui_token.clone(),
            cluster: config.cluster_name.clone(),
            history: if config.store.is_some() {
                DataSource::Clickhouse
            } else {
                DataSource::Window
            },
        });
        let ui_state = Arc::new(UiState {
            live: live_map.clone(),
            store: match &config.store {
                Some(cfg) => {
                    MapStore::Clickhouse(Box::new(History::new(cfg).context("ClickHouse history")?))
                }
                None => MapStore::Window(history.clone()),
            },
            observer: Arc::new(
                RelayService::new(pool.clone(), merge.clone(), stop.clone())
                    .with_history(history.clone()),
            ),
            ingest: ingest.clone(),
            policies: policy_source(pool.clone()),
            ui_dir: config.ui_dir.clone(),
            cluster: config.cluster_name.clone(),
        });
        if let Some(dir) = &config.ui_dir {
            tracing::info!(dir = %dir.display(), "serving the web UI");
        }
        let api = periscope_relay::api::router(Arc::new(ApiState {
            alerting: alerting.clone(),
            storage: storage_status,
            ingest_lagged: lagged.clone(),
            pool: pool.clone(),
        }))
        .merge(periscope_relay::ui::router(ui_state, access.clone()))
        .merge(periscope_relay::api::log_level_router(log.clone()))
        .layer(axum::middleware::from_fn_with_state(
            access,
            periscope_relay::ui::require_token,
        ));
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--http-listen {addr}"))?;
        tracing::info!(address = %l.local_addr()?, "serving the HTTP API");
        let mut stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, api)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
    }

    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "hubble.server.Observer",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    // GetFlows responses go out as the peers encoded them (see `periscope_relay::codec`).
    let observer = RelayService::new(pool.clone(), merge, stop.clone())
        .with_history(history)
        .into_server()
        .max_encoding_message_size(16 << 20);
    let router = tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(observer)
        // periscope.policy.Policies: every peer's policies merged (for relays in front of this one).
        .add_service(periscope_relay::policies::PolicyRelayService::server(
            pool.clone(),
        ));
    let signal = shutdown_signal(stop_tx);
    let server = match &config.server_tls {
        None => {
            tracing::warn!(address = %local, "serving the Observer API in plain text (no --tls-cert/--tls-key)");
            tokio::spawn(router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                signal,
            ))
        }
        Some(files) => {
            let tls = std::sync::Arc::new(ReloadingServerConfig::new(files.clone())?);
            tracing::info!(address = %local, client_certificates = files.client_ca.is_some(),
                "serving the Observer API with TLS");
            tokio::spawn(router.serve_with_incoming_shutdown(tls_incoming(listener, tls), signal))
        }
    };
    tracing::info!(address = %local, peers = config.peers.len(), cluster = %config.cluster_name,
        "relay started");
    let mut server = server;
    let mut stopped = stop.clone();
    let early = tokio::select! {
        _ = stopped.wait_for(|s| *s) => None,
        r = &mut server => Some(r),
    };
    let result = match early {
        Some(r) => Some(r),
        None => tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.ok(),
    };
    pool.close();
    // The flows the consumer still batches go to the writer before it stops.
    if tokio::time::timeout(Duration::from_secs(2), consumer)
        .await
        .is_err()
    {
        tracing::warn!("the store's feed did not stop within 2 s");
    }
    alerting.shutdown(Duration::from_secs(2)).await;
    if let Some(w) = writer {
        w.shutdown().await;
    }
    if let Some(s) = shipper {
        s.shutdown(Duration::from_secs(5)).await;
    }
    match result {
        Some(Ok(Ok(()))) => tracing::info!("stopped"),
        Some(Ok(Err(e))) => return Err(e).context("gRPC server"),
        Some(Err(e)) => return Err(e).context("gRPC server task"),
        None => tracing::warn!("streams still open after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    Ok(())
}

//! `periscope-relay`: see `periscope-relay --help` and the crate documentation of
//! `periscope_relay`.
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use periscope_proto::observer::observer_server::ObserverServer;
use periscope_relay::config::{Cli, Config, DEFAULT_CLUSTER};
use periscope_relay::fanout::MergeOptions;
use periscope_relay::peers::{Origin, Pool, PoolOptions, follow_peer_service};
use periscope_relay::server::RelayService;
use periscope_relay::tls::{ReloadingServerConfig, tls_incoming};
use tokio::sync::watch;

/// Longest the relay waits for open streams to end at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&cli)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?
        .block_on(run(config))
}

/// The name of this relay in the node status events it emits: its host name, prefixed with the
/// cluster name unless that is `default`.
fn relay_name(cluster: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "periscope-relay".into());
    if cluster == DEFAULT_CLUSTER {
        host
    } else {
        format!("{cluster}/{host}")
    }
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

async fn run(config: Config) -> Result<()> {
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
    if config.peers.is_empty() && config.peer_service.is_none() {
        tracing::warn!(
            "no peers configured (--peers, --peer-service, --relay-peer): every answer will be empty"
        );
    }
    if config.peer_tls.is_none() && (!config.peers.is_empty() || config.peer_service.is_some()) {
        tracing::warn!("dialing peers in plain text (no --peer-tls-ca)");
    }
    let merge = MergeOptions {
        sort_buffer: config.sort_buffer,
        drain_timeout: config.sort_drain_timeout,
        relay_name: relay_name(&config.cluster_name),
    };

    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "hubble.server.Observer",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let observer = ObserverServer::new(RelayService::new(pool.clone(), merge, stop.clone()))
        .max_encoding_message_size(16 << 20);
    let router = tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(observer);
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
    match result {
        Some(Ok(Ok(()))) => tracing::info!("stopped"),
        Some(Ok(Err(e))) => return Err(e).context("gRPC server"),
        Some(Err(e)) => return Err(e).context("gRPC server task"),
        None => tracing::warn!("streams still open after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    Ok(())
}

//! tapwire-replayer: receives captured requests from listeners and replays each one to every
//! staging target. Data moves through the modules in this order:
//!
//! - [`server`]: the gRPC service that accepts listener streams, drops resent copies
//!   ([`dedup`]), paces them (original timing, queued global rate) and acknowledges batches.
//! - [`fanout`]: parses each record once; global [`filter`]s, rate and [`rewrite`]s; offers it
//!   to every target.
//! - [`target`]: per-target filters, sampling and rate ([`rate`]), bounded queue,
//!   concurrency-limited hyper client, preserved sessions.
//!
//! [`tls`] guards the listener link. [`config`] is the configuration as data (flags or TOML), [`plan`] its compiled form,
//! [`metrics`] the counters that account for every request.

pub mod config;
pub mod dedup;
pub mod fanout;
pub mod filter;
pub mod metrics;
pub mod plan;
pub mod rate;
pub mod rewrite;
pub mod server;
pub mod target;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tapwire_shared::proto::replay_server::ReplayServer;
use tonic::transport::server::TcpIncoming;

pub use config::{ReplayerArgs, ReplayerConfig};
use fanout::FanOut;
use metrics::ReplayerMetrics;

/// Largest gRPC message accepted: a batch, or one large request alone.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// HTTP/2 flow-control window per listener stream.
const LINK_WINDOW_BYTES: u32 = 8 << 20;
/// How long shutdown waits for listener connections to close once their streams have ended.
const CONNECTION_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves listeners until `shutdown` resolves, then ends their streams, lets targets finish
/// what is queued (up to the drain timeout), and logs the final accounting.
pub async fn run(config: ReplayerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = ReplayerMetrics::register(&mut registry);
    if let Some(addr) = config.metrics_listen {
        tapwire_telemetry::serve_metrics(addr, Arc::new(registry)).await?;
    }
    let plan = config.compile()?;
    let token = plan.token.clone();
    let tls = plan.tls.clone();
    let target_names: Vec<String> = plan.targets.iter().map(|t| t.name.clone()).collect();
    let pacing = server::Pacing {
        timing: plan.timing,
        speed: plan.speed,
    };
    let (fanout, target_workers) = FanOut::start(plan, &metrics);
    let fanout = Arc::new(fanout);
    let (stopping, stop_watch) = tokio::sync::watch::channel(false);
    let mut stop_requested = stop_watch.clone();

    let listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), targets = target_names.len(), "grpc server listening");
    let service = ReplayServer::new(server::ReplayService::new(
        Arc::clone(&fanout),
        pacing,
        stop_watch,
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let service = tonic::service::interceptor::InterceptedService::new(
        service,
        server::TokenCheck::new(token, metrics.streams_unauthenticated.clone()),
    );
    let server = tonic::transport::Server::builder()
        // Each listener sends everything on one stream: h2's 64 KiB default window would cap
        // it at one window per round trip.
        .initial_stream_window_size(LINK_WINDOW_BYTES)
        .initial_connection_window_size(LINK_WINDOW_BYTES)
        .add_service(service);
    let stop_streams = async {
        shutdown.await;
        // End open streams too: they would otherwise keep the server alive.
        let _ = stopping.send(true);
    };
    let serve = async {
        match tls {
            Some(tls) => {
                let incoming = tls::accept(listener, tls, metrics.tls_handshakes_failed.clone());
                server
                    .serve_with_incoming_shutdown(incoming, stop_streams)
                    .await
            }
            None => {
                // The builder's `tcp_nodelay` is ignored for an incoming stream: set it here, or
                // each small ack waits on Nagle for the listener's delayed ACK (40 ms).
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                server
                    .serve_with_incoming_shutdown(incoming, stop_streams)
                    .await
            }
        }
    };
    // Streams end at once on shutdown, but the connection of a listener that reads nothing
    // cannot flush its last frames, and the server would wait on it for ever.
    let grace = async {
        let _ = stop_requested.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(CONNECTION_CLOSE_GRACE).await;
    };
    tokio::select! {
        served = serve => served.context("gRPC server failed")?,
        () = grace => tracing::warn!(
            grace = ?CONNECTION_CLOSE_GRACE,
            "listener connections still open after their streams ended; not waiting for them"
        ),
    }

    tracing::info!(timeout = ?config.drain_timeout, "stopped accepting; draining target queues");
    // Streams have ended, so this is the last handle: dropping it closes every target queue.
    drop(fanout);
    let drained = tokio::time::timeout(config.drain_timeout, async {
        for worker in target_workers {
            let _ = worker.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout passed; requests still queued are not sent");
    }
    tracing::info!(summary = %metrics.summary(), "replayer stopped");
    for name in target_names {
        tracing::info!(target = %name, summary = %metrics.target(&name).summary(), "target totals");
    }
    Ok(())
}

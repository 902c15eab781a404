//! kvm-manager's own HTTP server on `HTTP_PORT`: `/healthz`, `/readyz`, `/metrics` and a web
//! console (noVNC over a WebSocket that we bridge to qemu's VNC).
//!
//! It runs as a task beside the VM and never blocks PID 1's main work: requests in flight are
//! bounded ([`MAX_REQUESTS`]), each has a timeout, web-console viewers are bounded
//! ([`webconsole::MAX_VIEWERS`]), and handlers never panic on input. Connections carry their
//! peer address ([`axum::extract::ConnectInfo`]): the web console admits by it.

pub mod health;
pub mod metrics;
pub mod webconsole;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;

pub use health::{Phase, Readiness, VmStatus};

/// Requests handled at once; more wait their turn.
const MAX_REQUESTS: usize = 32;
/// Longest a request may take (a `/healthz` asks QMP with its own 2 s limit).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("could not listen on HTTP_PORT {port} (is another process using it?)")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// What the server needs to answer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub port: u16,
    pub console: webconsole::ConsoleConfig,
}

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    status: Arc<VmStatus>,
}

pub fn router(config: &HttpConfig, status: Arc<VmStatus>) -> Router {
    let state = AppState { status };
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::serve))
        .merge(webconsole::router(&config.console))
        .with_state(state)
        // A slow or stuck client cannot hold a handler (a WebSocket is past this once upgraded).
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_REQUESTS))
}

/// Binds `0.0.0.0:port` (the pod IP, for the kubelet's probes) and serves in a task.
pub async fn serve(config: &HttpConfig, status: Arc<VmStatus>) -> Result<SocketAddr, HttpError> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, config.port))
        .await
        .map_err(|source| HttpError::Bind {
            port: config.port,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        port: config.port,
        source,
    })?;
    let app = router(config, status);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    tracing::info!(%addr, "HTTP server listening (/healthz, /readyz, /metrics, web console at /)");
    Ok(addr)
}

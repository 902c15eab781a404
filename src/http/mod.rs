//! kvm-manager's own HTTP server on `HTTP_PORT`: `/healthz`, `/readyz`, `/metrics`, `/status`,
//! `POST /freeze` and `/thaw` (loopback or token only) and a web console (noVNC over a
//! WebSocket that we bridge to qemu's VNC).
//!
//! It runs as a task beside the VM and never blocks PID 1's main work: connections are capped
//! and closed when idle or slow (`connections.rs`, `listener.rs`), requests in flight are
//! bounded ([`MAX_REQUESTS`], and [`MAX_PROBE_REQUESTS`] apart for the probes), each has a
//! timeout, web-console viewers are bounded ([`webconsole::MAX_VIEWERS`]), and handlers never
//! panic on input. Connections carry their peer address
//! ([`axum::extract::ConnectInfo`]): the web console admits by it.

mod connections;
mod control;
pub(crate) mod health;
mod listener;
mod status;
pub(crate) mod webconsole;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;

pub(crate) use health::{GuestLink, Phase, Readiness, VmStatus};

/// Requests handled at once, besides the probes; more wait their turn.
const MAX_REQUESTS: usize = 32;
/// Probe requests (`/healthz`, `/readyz`) handled at once: a budget of their own, so that slow
/// requests to other paths never queue ahead of the kubelet.
const MAX_PROBE_REQUESTS: usize = 16;
/// Pending connections the kernel queues for us (capped by `net.core.somaxconn`): a burst of
/// connections must not crowd a probe's out of the queue before the accept loop takes it.
const LISTEN_BACKLOG: u32 = 4096;
/// Longest a request may take (a `/healthz` asks QMP with its own 2 s limit).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("could not listen on HTTP_PORT {port} (is another process using it?)")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// What the server needs to answer.
#[derive(Debug, Clone)]
pub(crate) struct HttpConfig {
    pub port: u16,
    pub console: webconsole::ConsoleConfig,
    /// `CONTROL_TOKEN_FILE`'s token: lets POST /freeze and /thaw in from the pod network.
    pub control_token: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    status: Arc<VmStatus>,
    control_token: Option<Arc<str>>,
}

pub(crate) fn router(config: &HttpConfig, status: Arc<VmStatus>) -> Router {
    let state = AppState {
        status,
        control_token: config.control_token.as_deref().map(Arc::from),
    };
    let probes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_PROBE_REQUESTS,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status::status))
        .route("/freeze", axum::routing::post(control::freeze))
        .route("/thaw", axum::routing::post(control::thaw))
        .route("/backup", axum::routing::post(control::backup))
        .merge(webconsole::router(&config.console))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_REQUESTS))
        .merge(probes)
        .with_state(state)
        // Outermost, so that waiting for a turn counts too: a slow or stuck client cannot hold
        // a handler (a WebSocket is past this once upgraded).
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// `/metrics`: renders [`crate::metrics`], which every area counts into.
async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(),
    )
}

/// A JSON body (axum's `Json` needs a feature we do not build).
fn json_response(
    code: axum::http::StatusCode,
    body: &serde_json::Value,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// Binds `0.0.0.0:port` (the pod IP, for the kubelet's probes) and serves in a task.
pub(crate) async fn serve(
    config: &HttpConfig,
    status: Arc<VmStatus>,
) -> Result<SocketAddr, HttpError> {
    let bind = |source| HttpError::Bind {
        port: config.port,
        source,
    };
    let socket = tokio::net::TcpSocket::new_v4().map_err(bind)?;
    // As std and tokio do: a restarted container rebinds while old connections linger.
    socket.set_reuseaddr(true).map_err(bind)?;
    socket
        .bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port)))
        .map_err(bind)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let open_files = crate::sys::open_files_limit().unwrap_or(1024);
    let limits = connections::Limits::for_open_files(open_files);
    let app = router(config, status);
    tokio::spawn(listener::run(listener, app, limits));
    tracing::info!(
        %addr,
        max_connections = limits.cap,
        idle_timeout = ?limits.idle,
        header_timeout = ?limits.header,
        "HTTP server listening (/healthz, /readyz, /metrics, /status, web console at /)"
    );
    Ok(addr)
}

//! The web console: a small page of ours that loads the vendored noVNC client from
//! `/novnc/`, and a WebSocket at `/websockify` bridged byte for byte to qemu's VNC server.
//!
//! Who gets in ([`Access`]): the pod IP is reachable from every pod of the cluster, and a
//! console is a keyboard on the VM. Without `VNC_PASSWORD`, qemu's VNC listens on loopback
//! and these routes answer only peers on the pod's loopback, which is where `kubectl
//! port-forward` connects: Kubernetes RBAC on `pods/portforward` decides who may. With
//! `VNC_PASSWORD` they answer everyone and VNC's own authentication asks for the password.
//! `/healthz`, `/readyz` and `/metrics` are not behind this gate.
//!
//! Browsers: a WebSocket is not bound by the same-origin policy, so any page a user visits
//! could open one to the console; the upgrade is refused unless `Origin` names the host the
//! page was served from. Without a password, `Host` must also be a loopback name or an IP
//! address: a DNS-rebinding page has the same origin as itself, but a domain name as `Host`.
//!
//! Holding the console: a viewer that sends no input for `CONSOLE_IDLE_TIMEOUT` is closed,
//! and a new viewer always gets a slot ([`viewers`]).

mod rfb;
mod viewers;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PAGE: &str = include_str!("console.html");

/// WebSocket close code for a viewer we closed (4000-4999: for applications).
const CLOSE_IDLE: u16 = 4000;
const CLOSE_REPLACED: u16 = 4001;

/// Who may use the console; decided by `VNC_PASSWORD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// No password: only peers on the pod's loopback (`kubectl port-forward`).
    Loopback,
    /// VNC authentication guards it: every address.
    Password,
}

/// What the console needs.
#[derive(Debug, Clone)]
pub(crate) struct ConsoleConfig {
    /// Where the vendored noVNC files are (`core/rfb.js` below it).
    pub novnc_dir: PathBuf,
    /// qemu's VNC server; `None` with `NO_VNC`.
    pub vnc: Option<SocketAddr>,
    pub access: Access,
    /// A viewer with no input for this long is closed.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
struct Console {
    vnc: Option<SocketAddr>,
    access: Access,
    idle_timeout: Duration,
    viewers: viewers::Viewers,
}

/// `/`, `/websockify` and `/novnc/…`, behind the access gate.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(config: &ConsoleConfig) -> Router<S> {
    let console = Console {
        vnc: config.vnc,
        access: config.access,
        idle_timeout: config.idle_timeout,
        viewers: viewers::Viewers::default(),
    };
    Router::new()
        .route("/", get(page))
        .route("/websockify", get(websocket))
        .nest_service(
            "/novnc",
            tower_http::services::ServeDir::new(&config.novnc_dir),
        )
        .layer(axum::middleware::from_fn_with_state(config.access, gate))
        .with_state(console)
}

/// Logs who can reach the console and how to connect (once, at start).
pub(crate) fn announce(access: Option<Access>, http_port: Option<u16>, vnc_port: u16) {
    let web = http_port.map_or_else(
        || "no web console (HTTP_PORT=0)".to_owned(),
        |port| format!("web console on port {port}"),
    );
    match access {
        None => tracing::info!("console: NO_VNC is set, there is no VNC and no web console"),
        Some(Access::Loopback) => tracing::info!(
            "console: no VNC_PASSWORD, so VNC (port {vnc_port}) and the {web} answer only on \
             the pod's loopback, i.e. through `kubectl port-forward POD {}` (then open \
             http://localhost:{0}/); who may do that is Kubernetes RBAC on pods/portforward. \
             Set VNC_PASSWORD to also open them on the pod IP",
            http_port.unwrap_or(vnc_port)
        ),
        Some(Access::Password) => tracing::info!(
            "console: VNC_PASSWORD is set, so VNC (port {vnc_port}) and the {web} answer on \
             every address of the pod and ask for the password"
        ),
    }
}

/// Whether a request from `peer` for `host` may see the console.
fn admits(access: Access, peer: Option<SocketAddr>, host: Option<&str>) -> bool {
    match access {
        Access::Password => true,
        // No peer known (a server without connect info) is refused: fail closed.
        Access::Loopback => {
            peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
                && host.is_none_or(is_loopback_host)
        }
    }
}

/// `Host` as a browser sends it for a port-forward: an IP address or `localhost`.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// A browser's `Origin` must be the page's own: `http(s)://` + `Host`. No `Origin` at all is
/// not a browser (nothing a web page can make), so it is not refused.
fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(host) = host else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn gate(State(access): State<Access>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let host = header_str(request.headers(), header::HOST);
    if admits(access, peer, host) {
        return next.run(request).await;
    }
    tracing::debug!(
        ?peer,
        ?host,
        "web console refused: not on the pod's loopback"
    );
    (
        StatusCode::FORBIDDEN,
        "the web console is only reachable through `kubectl port-forward` (no VNC_PASSWORD)\n",
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn websocket(
    State(console): State<Console>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(vnc) = console.vnc else {
        return (StatusCode::NOT_FOUND, "VNC is disabled (NO_VNC is set)\n").into_response();
    };
    let origin = header_str(&headers, header::ORIGIN);
    if !same_origin(origin, header_str(&headers, header::HOST)) {
        tracing::warn!(
            origin,
            "web console refused a WebSocket from another origin"
        );
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused\n").into_response();
    }
    ws.protocols(["binary"])
        .on_upgrade(move |socket| bridge(socket, vnc, console))
}

/// Why a bridge ended on our side.
enum End {
    Closed,
    Idle,
    Replaced,
}

async fn bridge(socket: WebSocket, vnc: SocketAddr, console: Console) {
    let joined = console.viewers.join(std::time::Instant::now());
    if let Some(idle) = joined.evicted_idle {
        tracing::info!(
            idle = %humantime::format_duration(Duration::from_secs(idle.as_secs())),
            "web console: every viewer slot was taken; the viewer idle the longest was closed"
        );
    }
    let mut seat = joined.seat;
    let tcp = match TcpStream::connect(vnc).await {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::warn!(%vnc, error = %e, "web console: cannot reach qemu's VNC server");
            return;
        }
    };
    tracing::info!(
        viewers = console.viewers.count(),
        "web console viewer connected"
    );
    let auth = match console.access {
        Access::Loopback => rfb::Auth::None,
        Access::Password => rfb::Auth::Vnc,
    };
    let mut scanner = rfb::InputScanner::new(auth);
    let (mut vnc_read, mut vnc_write) = tcp.into_split();
    let (ws_send, mut ws_recv) = socket.split();
    let ws_send = tokio::sync::Mutex::new(ws_send);
    let to_vnc = async {
        let mut deadline = Instant::now() + console.idle_timeout;
        loop {
            let message = tokio::select! {
                message = ws_recv.next() => message,
                () = tokio::time::sleep_until(deadline) => return End::Idle,
                _ = &mut seat.evicted => return End::Replaced,
            };
            let bytes = match message {
                Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                Some(Ok(Message::Text(text))) => text.as_str().as_bytes().to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return End::Closed,
            };
            let was_lost = scanner.lost();
            if scanner.feed(&bytes) {
                deadline = Instant::now() + console.idle_timeout;
                seat.input(std::time::Instant::now());
            } else if scanner.lost() && !was_lost {
                tracing::warn!(
                    "web console: a viewer sent an RFB message we cannot size; it will be closed \
                     after CONSOLE_IDLE_TIMEOUT whatever it sends"
                );
            }
            if vnc_write.write_all(&bytes).await.is_err() {
                return End::Closed;
            }
        }
    };
    let from_vnc = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match vnc_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let message = Message::Binary(buf[..n].to_vec().into());
                    if ws_send.lock().await.send(message).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let end = tokio::select! {
        end = to_vnc => end,
        () = from_vnc => End::Closed,
    };
    let (code, reason) = match end {
        End::Closed => {
            let _ = ws_send.lock().await.close().await;
            tracing::info!("web console viewer disconnected");
            return;
        }
        End::Idle => (CLOSE_IDLE, "no input for CONSOLE_IDLE_TIMEOUT"),
        End::Replaced => (CLOSE_REPLACED, "replaced by a newer viewer"),
    };
    tracing::info!(reason, "web console viewer closed");
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = ws_send.lock().await.send(Message::Close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use tower::Service as _;

    use super::*;

    /// `GET path` through the console's router, from `peer` (`None`: no connect info).
    async fn get_page(access: Access, peer: Option<SocketAddr>, path: &str) -> StatusCode {
        let config = ConsoleConfig {
            novnc_dir: PathBuf::from("/nonexistent"),
            vnc: None,
            access,
            idle_timeout: Duration::from_secs(60),
        };
        let mut request = Request::builder()
            .uri(path)
            .header(header::HOST, "localhost:8080")
            .body(axum::body::Body::empty())
            .expect("request");
        if let Some(peer) = peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let mut router = router::<()>(&config);
        match router.call(request).await {
            Ok(response) => response.status(),
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn the_router_serves_the_page_to_loopback_and_refuses_others_and_unknown_peers() {
        let page = |access, ip| get_page(access, peer(ip), "/");
        assert_eq!(page(Access::Loopback, "127.0.0.1").await, StatusCode::OK);
        assert_eq!(
            page(Access::Loopback, "10.200.0.1").await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get_page(Access::Loopback, peer("10.200.0.1"), "/novnc/core/rfb.js").await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get_page(Access::Loopback, None, "/").await,
            StatusCode::FORBIDDEN,
            "fail closed without connect info"
        );
        assert_eq!(page(Access::Password, "10.200.0.1").await, StatusCode::OK);
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().expect("ip"), 40000))
    }

    #[test]
    fn without_a_password_only_the_pods_loopback_is_admitted() {
        let a = Access::Loopback;
        assert!(admits(a, peer("127.0.0.1"), Some("localhost:8080")));
        assert!(admits(a, peer("::1"), Some("127.0.0.1:8080")));
        assert!(admits(a, peer("::ffff:127.0.0.1"), Some("[::1]:8080")));
        assert!(!admits(a, peer("10.200.0.1"), Some("10.200.0.2:8080")));
        assert!(!admits(
            a,
            peer("192.168.254.2"),
            Some("192.168.254.1:8080")
        ));
        assert!(!admits(a, None, Some("localhost:8080")), "unknown peer");
    }

    #[test]
    fn without_a_password_a_domain_name_as_host_is_refused_against_dns_rebinding() {
        let a = Access::Loopback;
        assert!(!admits(a, peer("127.0.0.1"), Some("evil.example:8080")));
        assert!(!admits(
            a,
            peer("127.0.0.1"),
            Some("localhost.evil.example")
        ));
        assert!(admits(a, peer("127.0.0.1"), Some("LOCALHOST")));
        assert!(admits(a, peer("127.0.0.1"), None));
    }

    #[test]
    fn with_a_password_everyone_is_admitted() {
        assert!(admits(
            Access::Password,
            peer("10.200.0.1"),
            Some("vm.example:8080")
        ));
        assert!(admits(Access::Password, None, None));
    }

    #[test]
    fn a_websocket_must_come_from_the_pages_own_origin() {
        let host = Some("localhost:8080");
        assert!(same_origin(Some("http://localhost:8080"), host));
        assert!(same_origin(Some("https://LocalHost:8080"), host));
        assert!(same_origin(None, host), "not a browser");
        assert!(!same_origin(Some("http://evil.example"), host));
        assert!(!same_origin(Some("http://localhost:9090"), host));
        assert!(!same_origin(Some("null"), host));
        assert!(!same_origin(Some("http://localhost:8080"), None));
        assert!(!same_origin(
            Some("http://localhost:8080.evil.example"),
            host
        ));
    }
}

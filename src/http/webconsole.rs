//! The web console: a small page of ours that loads the vendored noVNC client from
//! `/novnc/`, and a WebSocket at `/websockify` bridged byte for byte to qemu's VNC server.
//! VNC's own authentication (`VNC_PASSWORD`) passes through unchanged.

use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::AppState;

/// Concurrent web-console viewers; more get 503.
pub const MAX_VIEWERS: usize = 8;

const PAGE: &str = include_str!("console.html");

pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}

pub(crate) async fn websocket(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let Some(vnc) = state.vnc else {
        return (StatusCode::NOT_FOUND, "VNC is disabled (NO_VNC is set)\n").into_response();
    };
    let Ok(permit) = state.ws_slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console viewers\n",
        )
            .into_response();
    };
    ws.protocols(["binary"])
        .on_upgrade(move |socket| async move {
            bridge(socket, vnc).await;
            drop(permit);
        })
}

async fn bridge(socket: WebSocket, vnc: SocketAddr) {
    let tcp = match TcpStream::connect(vnc).await {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::warn!(%vnc, error = %e, "web console: cannot reach qemu's VNC server");
            return;
        }
    };
    tracing::info!("web console viewer connected");
    let (mut vnc_read, mut vnc_write) = tcp.into_split();
    let (mut ws_send, mut ws_recv) = socket.split();
    let to_vnc = async {
        while let Some(Ok(message)) = ws_recv.next().await {
            let bytes = match message {
                Message::Binary(bytes) => bytes.to_vec(),
                Message::Text(text) => text.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if vnc_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    let from_vnc = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match vnc_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_send
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_send.close().await;
    };
    tokio::select! {
        () = to_vnc => {}
        () = from_vnc => {}
    }
    tracing::info!("web console viewer disconnected");
}

//! The accept loop and the life of each connection: the IO half of `connections.rs`.
//!
//! Probes get reserved capacity, not a separate accept path. One listener and one accept loop
//! serve everything, and the loop never waits on anything but the kernel: admitting a
//! connection is a decision in memory (at the cap, the connections idle the longest are closed
//! to make room), so a probe's connection is always taken, and as the newest it is the last to
//! be shed. Its request then has a concurrency budget of its own (see `router`). A second
//! listener would not help: it would be on the pod IP too, as reachable and floodable from the
//! cluster, and the chart and users' manifests probe `HTTP_PORT`.
//!
//! What a listener cannot change is the kernel's accept queue: it is first come, first served,
//! so a probe waits behind every connection queued before it. That is why the cap is high and
//! an idle connection cheap (the socket only, until its first byte: no hyper state), so that a
//! flood is held rather than churned through the queue.
//!
//! Every connection runs in its own task, which drops it (and its buffers) when it overstays
//! or is shed. A WebSocket upgrade ends the task; the upgraded socket lives on in its handler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::connections::{self, Activity, Check, Limits, ShedLog, TrimPolicy};
use crate::locked::Locked as _;

/// Largest request head (and read buffer) a connection may hold. Our requests are small GETs;
/// hyper's default (~400 KiB) would let every slow connection pin that much memory.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// How often the shed warning is flushed and memory trimming considered.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// Pause before accepting again when the process is out of file descriptors and nothing can
/// be shed (the descriptors are held elsewhere).
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

/// The open connections and what the server has done about them.
#[derive(Debug)]
struct Server {
    limits: Limits,
    table: Mutex<Table>,
    shed_log: Mutex<ShedLog>,
    /// Told when a connection is admitted or shed: wakes a parked housekeeping.
    activity: Notify,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    /// Most connections open at once since the last housekeeping.
    peak: usize,
}

/// One connection as the server tracks it.
#[derive(Debug)]
struct Conn {
    activity: Mutex<Activity>,
    /// Told when the connection is shed.
    close: Notify,
}

impl Conn {
    fn activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.locked()
    }
}

/// Serves `router` on `listener` until the process ends.
pub(super) async fn run(listener: TcpListener, router: Router, limits: Limits) {
    let server = Arc::new(Server {
        limits,
        table: Mutex::new(Table::default()),
        shed_log: Mutex::new(ShedLog::default()),
        activity: Notify::new(),
    });
    tokio::spawn(housekeeping(Arc::clone(&server)));
    let mut http = hyper::server::conn::http1::Builder::new();
    // No hyper timer: the timeouts are ours (connections.rs), which also know about idle time.
    http.header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let http = Arc::new(http);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (id, conn) = server.admit();
                let task = serve_connection(
                    Arc::clone(&http),
                    server.limits,
                    stream,
                    peer,
                    conn,
                    router.clone(),
                );
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    task.await;
                    server.forget(id);
                });
            }
            Err(e) if out_of_descriptors(&e) => {
                // The pending connection stays in the backlog; make room and take it next time.
                if !server.shed_one() {
                    tracing::debug!(error = %e, "HTTP: out of file descriptors, none to shed");
                    tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
                }
                tokio::task::yield_now().await;
            }
            // A connection reset before we took it, and the like: nothing to do.
            Err(e) => tracing::debug!(error = %e, "HTTP: accept failed"),
        }
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl Server {
    /// Registers a new connection, shedding others first if the table is full.
    fn admit(&self) -> (u64, Arc<Conn>) {
        let conn = Arc::new(Conn {
            activity: Mutex::new(Activity::accepted(Instant::now())),
            close: Notify::new(),
        });
        let (id, shed) = {
            let mut table = self.table.locked();
            let shed = if table.open.len() >= self.limits.cap {
                Self::shed_from(&mut table, connections::shed_batch(self.limits.cap))
            } else {
                0
            };
            let id = table.next_id;
            table.next_id += 1;
            table.open.insert(id, Arc::clone(&conn));
            table.peak = table.peak.max(table.open.len());
            (id, shed)
        };
        self.note_shed(shed);
        self.activity.notify_one();
        (id, conn)
    }

    /// Sheds one connection, if there is one; whether it did.
    fn shed_one(&self) -> bool {
        let shed = Self::shed_from(&mut self.table.locked(), 1);
        self.note_shed(shed);
        shed > 0
    }

    /// Sheds `n` connections (fewer if there are not so many); how many it shed.
    fn shed_from(table: &mut Table, n: usize) -> u64 {
        let victims = connections::victims(
            table.open.iter().map(|(id, conn)| (*id, *conn.activity())),
            n,
        );
        let mut shed = 0;
        for id in victims {
            if let Some(conn) = table.open.remove(&id) {
                // Its task drops the connection; it is out of the count already.
                conn.close.notify_one();
                shed += 1;
            }
        }
        shed
    }

    fn note_shed(&self, count: u64) {
        if count == 0 {
            return;
        }
        self.activity.notify_one();
        if let Some(count) = self.shed_log.locked().shed(Instant::now(), count) {
            self.warn_shed(count);
        }
    }

    fn warn_shed(&self, count: u64) {
        tracing::warn!(
            shed = count,
            cap = self.limits.cap,
            "HTTP: closed {count} connection(s) since the last report, idle the longest first, \
             to admit new ones at the cap of {} open connections (is a client opening many \
             and sending nothing?)",
            self.limits.cap
        );
    }

    fn forget(&self, id: u64) {
        self.table.locked().open.remove(&id);
    }
}

/// Flushes the shed warning and hands freed memory back once a flood is over.
async fn housekeeping(server: Arc<Server>) {
    let mut trim = TrimPolicy::default();
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    loop {
        tick.tick().await;
        if let Some(count) = server.shed_log.locked().flush(Instant::now()) {
            server.warn_shed(count);
        }
        let (peak, open) = {
            let mut table = server.table.locked();
            let open = table.open.len();
            (std::mem::replace(&mut table.peak, open), open)
        };
        if trim.observe(peak, open) {
            server.table.locked().open.shrink_to(open);
            let released = crate::sys::release_free_memory();
            tracing::debug!(
                peak,
                open,
                released,
                "HTTP: connections closed after a peak"
            );
        }
        // No connection open or seen since the last look and nothing left to log (`observe`
        // has trimmed after any peak once nothing is open): park until the next connection,
        // so that an idle pod costs no wakeup here. A connection admitted meanwhile left a
        // permit, so none is missed.
        if open == 0 && peak == 0 && !server.shed_log.locked().pending() {
            server.activity.notified().await;
            tick.reset();
        }
    }
}

/// Serves one connection until it ends, overstays, or is shed.
async fn serve_connection(
    http: Arc<hyper::server::conn::http1::Builder>,
    limits: Limits,
    stream: TcpStream,
    peer: SocketAddr,
    conn: Arc<Conn>,
    router: Router,
) {
    // Until its first byte, a connection is only a socket: no hyper state, no buffers.
    loop {
        let Some(wake) = next_wake(&conn, &limits, peer) else {
            return;
        };
        tokio::select! {
            () = shed(&conn, peer) => return,
            ready = stream.readable() => {
                if ready.is_err() {
                    return;
                }
                break;
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
    let io = TokioIo::new(Tracked {
        stream,
        conn: Arc::clone(&conn),
    });
    let service = {
        let conn = Arc::clone(&conn);
        hyper::service::service_fn(move |request| {
            handle(request, peer, Arc::clone(&conn), router.clone())
        })
    };
    let connection = http.serve_connection(io, service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    loop {
        let Some(wake) = next_wake(&conn, &limits, peer) else {
            return;
        };
        tokio::select! {
            () = shed(&conn, peer) => return,
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP: connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
}

/// When to look at the connection again, or `None` (logged) when it has expired.
fn next_wake(conn: &Conn, limits: &Limits, peer: SocketAddr) -> Option<Instant> {
    match conn.activity().check(Instant::now(), limits) {
        Check::At(wake) => Some(wake),
        Check::Expired(why) => {
            tracing::debug!(%peer, reason = why.as_str(), "HTTP: connection closed");
            None
        }
    }
}

/// Resolves (logged) when the connection is shed to make room for others.
/// The wait starts here, when `select!` builds its branches, not at the first poll.
fn shed(conn: &Conn, peer: SocketAddr) -> impl std::future::Future<Output = ()> + '_ {
    let notified = conn.close.notified();
    async move {
        notified.await;
        tracing::debug!(%peer, "HTTP: connection shed");
    }
}

/// One request: marks the connection busy until its response is sent in full.
async fn handle(
    mut request: hyper::Request<Incoming>,
    peer: SocketAddr,
    conn: Arc<Conn>,
    mut router: Router,
) -> Result<axum::response::Response, std::convert::Infallible> {
    conn.activity().request_started(Instant::now());
    let busy = Busy(conn);
    // What `axum::serve(…into_make_service_with_connect_info…)` would provide.
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = tower::Service::call(&mut router, request).await?;
    // The body outlives the handler (hyper sends it after we return): the connection stays
    // busy until hyper drops it, sent or not.
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _still_busy = &busy;
            frame
        }))
    }))
}

/// Held while a request is in flight.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity().response_done(Instant::now());
    }
}

/// The connection's socket, noting when bytes arrive (the start of a request head).
struct Tracked {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.activity().bytes_read(Instant::now());
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

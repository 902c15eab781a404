//! The listening half: UDP and TCP on `VM_GW:53` (and `[VM_GW6]:53` with IPv6) only (never 0.0.0.0, never the pod IP: the
//! pod IP's port 53 belongs to the VM through the NAT, and we are not an open resolver).
//! Each query is planned by [`query`], relayed by [`Upstreams`], and answered — with SERVFAIL
//! when every upstream failed, never with silence.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::query::{self, LocalNames, Plan};
use super::upstream::{Transport, Upstreams};
use crate::lan::drop_log::shown;
use crate::lan::{DropLog, LogLimits};
use crate::metrics::DNS;

pub const PORT: u16 = 53;
/// Queries relayed at once over UDP; beyond this, new ones are dropped (the VM retries).
const MAX_IN_FLIGHT: usize = 1024;
/// TCP connections at once, and how long one may sit idle.
const MAX_TCP: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest UDP message we read from the VM (EDNS payloads beyond this are fiction).
const UDP_BUFFER: usize = 4096;

/// Everything a query needs, shared by the tasks.
#[derive(Debug)]
pub struct Shared {
    pub local: LocalNames,
    pub upstreams: Upstreams,
    pub malformed: std::sync::Mutex<DropLog>,
    /// Per-query lines (SERVFAIL): a flooding guest must not flood the pod's log.
    pub lines: std::sync::Mutex<LogLimits>,
}

pub fn bind_udp(bridge: &str, ip: impl Into<IpAddr>) -> std::io::Result<UdpSocket> {
    let ip = ip.into();
    let socket = Socket::new(domain(ip), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((ip, PORT)).into())?;
    UdpSocket::from_std(socket.into())
}

/// `VM_GW` or, for a VM with IPv6 (issue 23), `VM_GW6`.
fn domain(ip: IpAddr) -> Domain {
    match ip {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    }
}

pub fn bind_tcp(bridge: &str, ip: impl Into<IpAddr>) -> std::io::Result<TcpListener> {
    let ip = ip.into();
    let socket = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((ip, PORT)).into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// What to send back for one query, or nothing for a packet that is not one.
async fn answer(shared: &Shared, bytes: &[u8], peer: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
    DNS.queries.inc();
    let plan = match query::plan(bytes, &shared.local) {
        Ok(plan) => plan,
        Err(e) => {
            DNS.malformed.inc();
            if let Ok(mut log) = shared.malformed.lock() {
                log.dropped(peer, &e);
            }
            return None;
        }
    };
    match plan {
        Plan::Answer(bytes) => {
            DNS.local.inc();
            Some(bytes)
        }
        Plan::Forward { query, max_udp } => {
            let transport = if tcp {
                Transport::Tcp
            } else {
                Transport::Udp { max: max_udp }
            };
            match shared.upstreams.resolve(bytes, &query, transport).await {
                Some(answer) => {
                    DNS.forwarded.inc();
                    Some(answer)
                }
                None => {
                    DNS.servfail.inc();
                    let admitted = shared
                        .lines
                        .lock()
                        .ok()
                        .and_then(|mut l| l.admit("servfail"));
                    if let Some(suppressed) = admitted {
                        tracing::warn!(question = ?query.queries.first(), suppressed = shown(suppressed), "every upstream failed; answering SERVFAIL");
                    }
                    Some(query::servfail(&query))
                }
            }
        }
    }
}

pub async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "receiving a DNS query failed");
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            DNS.dropped.inc();
            continue;
        };
        let bytes = buf[..len].to_vec();
        let (socket, shared) = (Arc::clone(&socket), Arc::clone(&shared));
        tokio::spawn(async move {
            if let Some(reply) = answer(&shared, &bytes, peer, false).await {
                if let Err(e) = socket.send_to(&reply, peer).await {
                    tracing::debug!(%peer, error = %e, "sending a DNS answer failed");
                }
            }
            drop(permit);
        });
    }
}

pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "accepting a DNS connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            DNS.dropped.inc();
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = connection(stream, peer, &shared).await {
                tracing::debug!(%peer, error = %e, "DNS connection ended");
            }
            drop(permit);
        });
    }
}

/// RFC 7766: length-prefixed messages, several per connection, answered in order.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let mut bytes = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut bytes))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(reply) = answer(shared, &bytes, peer, true).await else {
            return Ok(());
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

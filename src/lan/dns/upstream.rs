//! Relaying one query to the pod's nameservers: in order, each with its own timeout, over UDP
//! first and again over TCP when the answer comes back truncated. `None` when all failed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};

use super::exchange::Exchange;
use super::query;

/// The most we ever wait for one upstream, whatever resolv.conf says: the VM's resolver has
/// its own timeout (glibc: 5 s), and a SERVFAIL before it gives up beats silence.
const MAX_PER_TRY: Duration = Duration::from_secs(2);
/// The most one query may take in all before we answer SERVFAIL.
pub const TOTAL: Duration = Duration::from_secs(4);

#[derive(Debug)]
pub struct Upstreams {
    servers: Vec<(SocketAddr, Exchange)>,
    per_try: Duration,
}

/// Transport of the VM's query, which decides how big an answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp { max: u16 },
    Tcp,
}

impl Upstreams {
    /// `exclude`: our own address, so a resolv.conf naming VM_GW cannot make us loop.
    /// Opens the UDP sockets to each upstream; returns the tasks that receive on them. An
    /// upstream whose sockets cannot be opened is left out with a warning.
    pub fn open(
        nameservers: &[IpAddr],
        per_try: Duration,
        exclude: IpAddr,
    ) -> (Self, Vec<AbortHandle>) {
        let mut servers = Vec::new();
        let mut tasks = Vec::new();
        for ip in nameservers.iter().filter(|ip| **ip != exclude) {
            let server = SocketAddr::new(*ip, 53);
            match Exchange::open(server) {
                Ok((exchange, receivers)) => {
                    servers.push((server, exchange));
                    tasks.extend(receivers);
                }
                Err(e) => {
                    tracing::warn!(%server, error = %e, "cannot reach this nameserver of the pod; leaving it out")
                }
            }
        }
        let upstreams = Self {
            servers,
            per_try: per_try.min(MAX_PER_TRY),
        };
        (upstreams, tasks)
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The answer to relay to the VM, or `None` when every upstream failed.
    pub async fn resolve(
        &self,
        raw: &[u8],
        query: &Message,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + TOTAL;
        let mut fallback = None;
        for (server, exchange) in &self.servers {
            let try_deadline = deadline.min(Instant::now() + self.per_try);
            let answer = match udp(exchange, raw, query, try_deadline).await {
                Ok((bytes, message)) if message.metadata.truncation => {
                    // TC: the full answer over TCP, if it fits what the VM can take.
                    let tcp_deadline = deadline.min(Instant::now() + self.per_try);
                    match tcp(*server, raw, query, tcp_deadline).await {
                        Ok((full, _)) if fits(&full, transport) => Ok((full, message)),
                        _ if transport != Transport::Tcp => Ok((bytes, message)),
                        Err(e) => Err(e),
                        Ok(_) => Err(std::io::ErrorKind::InvalidData.into()),
                    }
                }
                other => other,
            };
            let upstream = server.to_string();
            crate::metrics::DNS.upstream_query(&upstream);
            match answer {
                Ok((bytes, message)) => match message.metadata.response_code {
                    // Another server may know better; keep this answer in case none does.
                    ResponseCode::ServFail | ResponseCode::Refused => {
                        crate::metrics::DNS.upstream_failure(&upstream);
                        fallback = Some(bytes);
                    }
                    _ => return Some(bytes),
                },
                Err(e) => {
                    crate::metrics::DNS.upstream_failure(&upstream);
                    tracing::debug!(%server, error = %e, "upstream failed; trying the next");
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        fallback
    }
}

fn fits(answer: &[u8], transport: Transport) -> bool {
    match transport {
        Transport::Udp { max } => answer.len() <= usize::from(max),
        Transport::Tcp => true,
    }
}

async fn udp(
    exchange: &Exchange,
    raw: &[u8],
    query: &Message,
    deadline: Instant,
) -> std::io::Result<(Vec<u8>, Message)> {
    let bytes = exchange.ask(raw, deadline).await?;
    // An answer to another question under the right id (spoofing) counts as a failure.
    let message = query::answers(query, &bytes).ok_or(std::io::ErrorKind::InvalidData)?;
    Ok((bytes, message))
}

/// A TCP connection to `server` from a socket marked as ours: without the mark, a nameserver
/// on 127.0.0.1 or the pod IP would be DNAT'ed to the VM like `kubectl port-forward` is.
async fn connect_marked(server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        None,
    )?;
    crate::net::nft::mark_own(&socket);
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(server).await
}

async fn tcp(
    server: SocketAddr,
    raw: &[u8],
    query: &Message,
    deadline: Instant,
) -> std::io::Result<(Vec<u8>, Message)> {
    let exchange = async {
        let mut stream = connect_marked(server).await?;
        let len = u16::try_from(raw.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut framed = Vec::with_capacity(raw.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(raw);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        let message = query::answers(query, &buf).ok_or(std::io::ErrorKind::InvalidData)?;
        Ok((buf, message))
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

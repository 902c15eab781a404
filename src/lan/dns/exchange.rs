//! UDP exchanges with one upstream over a small pool of long-lived sockets, queries told apart
//! by a fresh random id (the VM's id is put back into the answer).
//!
//! A socket per query costs four syscalls and an epoll registration each time; dnsmasq keeps
//! a pool of random-port sockets for the same reason. Each socket is connected to the upstream,
//! so only the upstream can answer on it, and an ICMP "port unreachable" shows up as
//! ECONNREFUSED on that socket: every query waiting on it fails at once, and the caller
//! fails over immediately instead of waiting out its timeout. The sockets carry
//! [`crate::net::ruleset::LOCAL_MARK`], so the NAT leaves them alone.

use crate::locked::Locked as _;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};

/// Sockets (source ports) per upstream.
const POOL: usize = 8;
/// The largest answer accepted over UDP; larger ones are cut, fail to decode and count as a
/// failure of that upstream.
const MAX_UDP_ANSWER: usize = 4096;
/// Ids in use at once per upstream; beyond this a query fails over (it cannot be told apart).
const MAX_PENDING: usize = 16384;

type Waiter = oneshot::Sender<std::io::Result<Vec<u8>>>;

#[derive(Debug)]
pub struct Exchange {
    sockets: Vec<Arc<UdpSocket>>,
    next: AtomicUsize,
    /// Our id → (socket index, who waits for it).
    pending: Arc<Mutex<HashMap<u16, (usize, Waiter)>>>,
}

impl Exchange {
    /// Binds the pool and starts one receiving task per socket (returned for shutdown).
    pub fn open(server: SocketAddr) -> std::io::Result<(Self, Vec<AbortHandle>)> {
        let local: IpAddr = match server {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let pending = Arc::new(Mutex::new(HashMap::new()));
        let mut sockets = Vec::with_capacity(POOL);
        let mut tasks = Vec::with_capacity(POOL);
        for index in 0..POOL {
            let socket = Socket::new(Domain::for_address(server), Type::DGRAM, None)?;
            // A nameserver on the pod IP is ours to ask, not the VM's to answer.
            crate::net::nft::mark_own(&socket);
            socket.bind(&SocketAddr::new(local, 0).into())?;
            socket.connect(&server.into())?;
            socket.set_nonblocking(true)?;
            let socket = Arc::new(UdpSocket::from_std(socket.into())?);
            tasks.push(
                tokio::spawn(receive(Arc::clone(&socket), index, Arc::clone(&pending)))
                    .abort_handle(),
            );
            sockets.push(socket);
        }
        let exchange = Self {
            sockets,
            next: AtomicUsize::new(0),
            pending,
        };
        Ok((exchange, tasks))
    }

    /// Sends `raw` (a query) and waits until `deadline` for the answer to it, with the
    /// query's own id restored.
    pub async fn ask(&self, raw: &[u8], deadline: Instant) -> std::io::Result<Vec<u8>> {
        if raw.len() < 2 {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.sockets.len();
        let (tx, rx) = oneshot::channel();
        let id = self.register(index, tx)?;
        let mut query = raw.to_vec();
        query[..2].copy_from_slice(&id.to_be_bytes());
        if let Err(e) = self.sockets[index].send(&query).await {
            self.forget(id);
            return Err(e);
        }
        let answer = timeout_at(deadline, rx).await;
        match answer {
            Ok(Ok(Ok(mut bytes))) => {
                bytes[..2].copy_from_slice(&raw[..2]);
                Ok(bytes)
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(std::io::ErrorKind::BrokenPipe.into()),
            Err(_) => {
                self.forget(id);
                Err(std::io::ErrorKind::TimedOut.into())
            }
        }
    }

    fn register(&self, index: usize, waiter: Waiter) -> std::io::Result<u16> {
        let mut pending = self.pending.locked();
        if pending.len() >= MAX_PENDING {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        loop {
            let id: u16 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(slot) = pending.entry(id) {
                slot.insert((index, waiter));
                return Ok(id);
            }
        }
    }

    fn forget(&self, id: u16) {
        self.pending.locked().remove(&id);
    }
}

/// Hands each datagram to the query waiting for its id; anything else is dropped.
async fn receive(
    socket: Arc<UdpSocket>,
    index: usize,
    pending: Arc<Mutex<HashMap<u16, (usize, Waiter)>>>,
) {
    let mut buf = vec![0u8; MAX_UDP_ANSWER];
    loop {
        match socket.recv(&mut buf).await {
            Ok(len) if len >= 12 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let mut map = pending.locked();
                // Only a waiter on this very socket: an id is unique per upstream, but an
                // answer must also come back where its query went.
                if map.get(&id).is_some_and(|(at, _)| *at == index) {
                    if let Some((_, waiter)) = map.remove(&id) {
                        let _ = waiter.send(Ok(buf[..len].to_vec()));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                // ECONNREFUSED and the like: the upstream is not there; fail this socket's
                // waiters now so they move on to the next upstream.
                let mut map = pending.locked();
                let ids: Vec<u16> = map
                    .iter()
                    .filter(|(_, (at, _))| *at == index)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    if let Some((_, waiter)) = map.remove(&id) {
                        let _ = waiter.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    }
                }
            }
        }
    }
}

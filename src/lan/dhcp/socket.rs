//! UDP port 67 on the bridge only, and carrying each decision out.
//!
//! The socket is bound to 0.0.0.0:67 (clients without an address broadcast from 0.0.0.0, so
//! binding VM_GW would miss them) and SO_BINDTODEVICE'd to the bridge, so nothing arriving on
//! the pod's uplink is ever answered: we must not hand leases to the cluster network.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::codec;
use super::policy::{self, Decision, Destination, Event};
use super::Lease;
use crate::lan::drop_log::shown;
use crate::lan::{DropLog, LogLimits};
use crate::metrics::DHCP;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Larger than any Ethernet frame: a bigger datagram is truncated and then rejected.
const RECV_BUFFER: usize = 4096;
/// Bound on the set of foreign MACs remembered for "logged once".
const MAX_FOREIGN_MACS: usize = 256;

pub fn bind(bridge: &str) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    // Our broadcast replies loop back into the bridge's input; the mark tells the NAT's
    // anti-spoofing chain that they are ours, not the VM's.
    crate::net::nft::mark_own(&socket);
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, SERVER_PORT)).into())?;
    UdpSocket::from_std(socket.into())
}

#[derive(Debug)]
pub struct Server {
    socket: UdpSocket,
    bridge: String,
    lease: Lease,
    leased: watch::Sender<bool>,
    malformed: DropLog,
    /// Every per-packet line: a flooding guest must not flood the pod's log.
    lines: LogLimits,
    foreign: HashSet<macaddr::MacAddr6>,
}

impl Server {
    pub fn new(
        socket: UdpSocket,
        bridge: String,
        lease: Lease,
        leased: watch::Sender<bool>,
    ) -> Self {
        Self {
            socket,
            bridge,
            lease,
            leased,
            malformed: DropLog::new("DHCP"),
            lines: LogLimits::default(),
            foreign: HashSet::new(),
        }
    }

    /// Serves forever; every error is per packet and logged (PID 1 must not die of a packet).
    pub async fn run(mut self) {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let (len, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(e) => {
                    if let Some(suppressed) = self.lines.admit("recv") {
                        tracing::warn!(error = %e, suppressed = shown(suppressed), "receiving a DHCP packet failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            DHCP.received.inc();
            let request = match codec::decode(&buf[..len]) {
                Ok(request) => request,
                Err(e) => {
                    DHCP.malformed.inc();
                    self.malformed.dropped(peer, &e);
                    continue;
                }
            };
            let budget = codec::reply_budget(&request, self.lease.mtu);
            match policy::decide(&self.lease, &request) {
                Decision::Silent(event) => self.note(&event),
                Decision::Reply { message, to, event } => match codec::encode(*message, budget) {
                    Ok((bytes, trimmed)) => {
                        if !trimmed.is_empty() {
                            if let Some(suppressed) = self.lines.admit("trimmed") {
                                tracing::warn!(?trimmed, budget, suppressed = shown(suppressed), "the reply did not fit what the client accepts; options left out");
                            }
                        }
                        if let Err(e) = self.send(&bytes, to).await {
                            if let Some(suppressed) = self.lines.admit("send") {
                                tracing::warn!(error = %e, ?to, suppressed = shown(suppressed), "sending the DHCP reply failed");
                            }
                            continue;
                        }
                        self.note(&event);
                    }
                    Err(e) => {
                        if let Some(suppressed) = self.lines.admit("encode") {
                            tracing::error!(error = %crate::logging::render_chain(&e), suppressed = shown(suppressed), "could not encode a DHCP reply");
                        }
                    }
                },
            }
        }
    }

    async fn send(&self, bytes: &[u8], to: Destination) -> io::Result<usize> {
        let target = match to {
            Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
            Destination::Relay(ip) => SocketAddrV4::new(ip, SERVER_PORT),
            Destination::Unicast { ip, mac: None } => SocketAddrV4::new(ip, CLIENT_PORT),
            Destination::Unicast { ip, mac: Some(mac) } => {
                // The client cannot answer ARP for an address it does not have yet: write the
                // neighbour entry ourselves (as dnsmasq does), or fall back to broadcast
                // (RFC 2131 §4.1 allows it).
                match crate::sys::set_arp_entry(&self.socket, &self.bridge, ip, mac.into_array()) {
                    Ok(()) => SocketAddrV4::new(ip, CLIENT_PORT),
                    Err(e) => {
                        tracing::debug!(error = %e, "could not write the neighbour entry; broadcasting");
                        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
                    }
                }
            }
        };
        self.socket.send_to(bytes, target).await
    }

    fn note(&mut self, event: &Event) {
        let vm_ip = self.lease.vm_ip;
        let lines = &mut self.lines;
        match event {
            Event::Offered => {
                DHCP.offers.inc();
                if let Some(suppressed) = lines.admit("offer") {
                    tracing::info!(%vm_ip, suppressed = shown(suppressed), "DHCP offer sent");
                }
            }
            Event::Acked => {
                DHCP.acks.inc();
                if !*self.leased.borrow() {
                    if let Some(suppressed) = lines.admit("leased") {
                        tracing::info!(%vm_ip, suppressed = shown(suppressed), "the VM took its DHCP lease");
                    }
                } else {
                    tracing::debug!("DHCP lease renewed");
                }
                self.leased.send_replace(true);
            }
            Event::Informed => {
                DHCP.acks.inc();
                tracing::debug!("answered a DHCP INFORM");
            }
            Event::Naked { requested } => {
                DHCP.naks.inc();
                if let Some(suppressed) = lines.admit("nak") {
                    tracing::info!(%requested, %vm_ip, suppressed = shown(suppressed), "DHCP NAK: the VM asked for another address");
                }
            }
            Event::Released => {
                if let Some(suppressed) = lines.admit("released") {
                    tracing::info!(
                        suppressed = shown(suppressed),
                        "the VM released its DHCP lease"
                    );
                }
                self.leased.send_replace(false);
            }
            Event::Declined => {
                if let Some(suppressed) = lines.admit("declined") {
                    tracing::warn!(%vm_ip, suppressed = shown(suppressed), "the VM declined its address (another host on the bridge uses it?)");
                }
                self.leased.send_replace(false);
            }
            Event::ForeignMac(mac) => {
                DHCP.ignored.inc();
                if self.foreign.len() < MAX_FOREIGN_MACS && self.foreign.insert(*mac) {
                    if let Some(suppressed) = lines.admit("foreign") {
                        tracing::warn!(%mac, vm_mac = %self.lease.vm_mac, suppressed = shown(suppressed), "ignoring DHCP from a MAC that is not the VM's (logged once per MAC)");
                    }
                }
            }
            Event::OtherServer(server) => {
                DHCP.ignored.inc();
                if let Some(suppressed) = lines.admit("other-server") {
                    tracing::info!(%server, suppressed = shown(suppressed), "the VM chose another DHCP server on the bridge");
                }
            }
            Event::Ignored(reason) => {
                DHCP.ignored.inc();
                tracing::debug!(reason, "ignored a DHCP packet");
            }
        }
    }
}

//! Router advertisements on the bridge (issue 23): the prefix of `VM_GW6`'s /64 (on-link,
//! SLAAC), the MTU, RDNSS and DNSSL, a default route, the M and O flags (DHCPv6 answers
//! those); sent unsolicited, often at first and then every minute, and in answer to every
//! router solicitation. The socket is bound to the bridge: nothing reaches the uplink.

pub mod codec;

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::ipv6::Ipv6Error;
use super::{DropLog, Lan6};
use codec::Advert;

/// Unsolicited RAs: `FAST_COUNT` every `FAST` while the guest boots, then every `SLOW`.
const FAST: Duration = Duration::from_secs(2);
const FAST_COUNT: u32 = 30;
const SLOW: Duration = Duration::from_secs(60);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// The running sender; dropping it stops it.
#[derive(Debug)]
pub struct RaServer {
    task: AbortHandle,
}

impl Drop for RaServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What we advertise for `lan` (pure).
pub fn advert(lan: &Lan6) -> Advert {
    Advert {
        router_mac: lan.bridge_mac,
        prefix: lan.prefix,
        mtu: lan.mtu,
        dns: lan.dns.clone(),
        search: lan.search.clone(),
        managed: true,
        other: true,
        router_lifetime_s: 1800,
    }
}

/// Where the answer to a solicitation from `from` goes: back to a link-local sender, else
/// (`::`, a host still without an address) to all nodes.
pub fn reply_to(from: Ipv6Addr) -> Ipv6Addr {
    if from.segments()[0] & 0xffc0 == 0xfe80 {
        from
    } else {
        ALL_NODES
    }
}

/// Opens the socket on `bridge` and starts sending; its failure is a network error (exit 4).
pub async fn serve(bridge: &str, lan: &Lan6) -> Result<RaServer, Ipv6Error> {
    let error = |source| Ipv6Error::RaSocket {
        bridge: bridge.to_owned(),
        source,
    };
    let index =
        nix::net::if_::if_nametoindex(bridge).map_err(|e| error(std::io::Error::from(e)))?;
    let socket = open(bridge, index).map_err(error)?;
    let packet = codec::encode(&advert(lan));
    tracing::info!(prefix = %lan.prefix, dns = ?lan.dns, "sending router advertisements");
    let task = tokio::spawn(run(socket, index, packet)).abort_handle();
    Ok(RaServer { task })
}

fn open(bridge: &str, index: u32) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    // RFC 4861: hosts drop any ND message whose hop limit is not 255.
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_if_v6(index)?;
    socket.set_multicast_loop_v6(false)?;
    // Solicitations go to all-routers; with forwarding on the bridge joined it already.
    if let Err(e) = socket.join_multicast_v6(&ALL_ROUTERS, index) {
        tracing::debug!(error = %e, "joining all-routers on the bridge");
    }
    socket.set_nonblocking(true)?;
    // A datagram socket as far as tokio is concerned: send_to/recv_from are all we use.
    UdpSocket::from_std(std::net::UdpSocket::from(socket))
}

async fn run(socket: UdpSocket, index: u32, packet: Vec<u8>) {
    let all_nodes = SocketAddrV6::new(ALL_NODES, 0, 0, index);
    let mut sent = 0u32;
    let mut next = tokio::time::Instant::now();
    let mut dropped = DropLog::new("router solicitation");
    let mut buf = [0u8; 1500];
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                // Fails until the bridge has a carrier and its link-local address: retried.
                if let Err(e) = socket.send_to(&packet, all_nodes).await {
                    tracing::debug!(error = %e, "router advertisement not sent");
                }
                sent = sent.saturating_add(1);
                next += if sent < FAST_COUNT { FAST } else { SLOW };
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                let std::net::SocketAddr::V6(from) = from else { continue };
                match codec::decode_rs(&buf[..len]) {
                    Ok(_) => {
                        let to = SocketAddrV6::new(reply_to(*from.ip()), 0, 0, index);
                        if let Err(e) = socket.send_to(&packet, to).await {
                            tracing::debug!(error = %e, "router advertisement not sent");
                        }
                    }
                    Err(codec::RsError::NotRs) => {}
                    Err(e) => dropped.dropped(from.ip(), &e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solicitations_are_answered_to_their_link_local_sender_or_to_all_nodes() {
        let ll: Ipv6Addr = "fe80::5054:ff:feaa:bbcc".parse().expect("v6");
        assert_eq!(reply_to(ll), ll);
        assert_eq!(reply_to(Ipv6Addr::UNSPECIFIED), ALL_NODES);
        assert_eq!(reply_to("fd6b:766d::9".parse().expect("v6")), ALL_NODES);
    }
}

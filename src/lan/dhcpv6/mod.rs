//! The DHCPv6 server on the bridge (issue 23): UDP 547 bound to the bridge only, listening on
//! All_DHCP_Relay_Agents_and_Servers (ff02::1:2); [`policy`] decides, dhcproto encodes.

pub mod policy;

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::ipv6::Ipv6Error;
use super::{DropLog, Lan6};
use policy::{Decision, Lease6};

const SERVER_PORT: u16 = 547;
const CLIENT_PORT: u16 = 546;
const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// The running server; dropping it stops it.
#[derive(Debug)]
pub struct Dhcpv6Server {
    task: AbortHandle,
}

impl Drop for Dhcpv6Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the server hands out for `lan` (pure): invalid search names are left out.
pub fn lease(lan: &Lan6, vm_mac: macaddr::MacAddr6) -> Lease6 {
    Lease6 {
        vm: lan.vm,
        vm_mac,
        server_duid: policy::duid_ll(lan.bridge_mac),
        dns: lan.dns.clone(),
        search: lan
            .search
            .iter()
            .filter_map(|d| format!("{}.", d.trim_end_matches('.')).parse().ok())
            .collect(),
    }
}

pub async fn serve(
    bridge: &str,
    lan: &Lan6,
    vm_mac: macaddr::MacAddr6,
) -> Result<Dhcpv6Server, Ipv6Error> {
    let error = |source| Ipv6Error::Dhcpv6Socket {
        bridge: bridge.to_owned(),
        source,
    };
    let index =
        nix::net::if_::if_nametoindex(bridge).map_err(|e| error(std::io::Error::from(e)))?;
    let socket = open(bridge, index).map_err(error)?;
    let lease = lease(lan, vm_mac);
    tracing::info!(address = %lease.vm, "serving DHCPv6");
    let task = tokio::spawn(run(socket, index, lease)).abort_handle();
    Ok(Dhcpv6Server { task })
}

fn open(bridge: &str, index: u32) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, SERVER_PORT)).into())?;
    socket.join_multicast_v6(&ALL_SERVERS, index)?;
    UdpSocket::from_std(socket.into())
}

async fn run(socket: UdpSocket, index: u32, lease: Lease6) {
    let mut dropped = DropLog::new("DHCPv6");
    let mut buf = [0u8; 1500];
    loop {
        let Ok((len, SocketAddr::V6(from))) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let request = match policy::decode(&buf[..len]) {
            Ok(request) => request,
            Err(why) => {
                dropped.dropped(from.ip(), &Dropped(why));
                continue;
            }
        };
        match policy::decide(&lease, &request) {
            Decision::Reply(reply) => {
                let Some(bytes) = policy::encode(&reply) else {
                    continue;
                };
                let to = SocketAddrV6::new(*from.ip(), CLIENT_PORT, 0, index);
                if let Err(e) = socket.send_to(&bytes, to).await {
                    tracing::debug!(error = %e, "DHCPv6 reply not sent");
                } else {
                    tracing::debug!(kind = ?reply.msg_type(), to = %from.ip(), "DHCPv6 reply");
                }
            }
            Decision::Ignore(why) => tracing::debug!(from = %from.ip(), why, "DHCPv6 ignored"),
        }
    }
}

/// A dropped packet's reason, for [`DropLog`].
#[derive(Debug)]
struct Dropped(&'static str);

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Dropped {}

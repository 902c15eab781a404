//! What the VM's IPv6 services (issue 23: router advertisements, DHCPv6) share.

/// Why the VM's IPv6 services (issue 23) could not start.
#[derive(Debug, thiserror::Error)]
pub enum Ipv6Error {
    #[error(
        "could not open the ICMPv6 socket for router advertisements on bridge {bridge}. Fix: \
         grant the container NET_RAW, or set IPV6=off"
    )]
    RaSocket {
        bridge: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not listen for DHCPv6 on port 547 of bridge {bridge} (is another DHCPv6 server \
         running in the pod?). Fix: stop it, or set IPV6=off"
    )]
    Dhcpv6Socket {
        bridge: String,
        #[source]
        source: std::io::Error,
    },
}

//! Finds what the CNI gave the pod: the uplink (the interface of the IPv4 default route), its
//! address, prefix and MTU, and the default gateway; and whether `/dev/vhost-net` is usable.
//!
//! Read-only: needs no capability. The choice among what the kernel reports is pure
//! ([`default_route`], [`primary_address`]) and unit-tested.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::NetError;

/// The pod's network as the CNI set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodNet {
    pub uplink: String,
    pub uplink_index: u32,
    pub pod_ip: Ipv4Addr,
    pub pod_prefix: u8,
    pub mtu: u32,
    /// `None` for a device route (`default dev eth0`).
    pub gateway: Option<Ipv4Addr>,
    pub vhost_net: bool,
    /// The pod's global IPv6, if it has any (issue 23): `None` on an IPv4-only pod.
    pub ipv6: Option<PodNet6>,
}

/// The pod's IPv6 uplink: the interface of the IPv6 default route and its global address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodNet6 {
    pub uplink: String,
    pub pod_ip: Ipv6Addr,
    pub prefix: u8,
}

/// The default route's interface index and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DefaultRoute {
    pub oif: u32,
    pub gateway: Option<Ipv4Addr>,
}

/// Opens a netlink connection whose driver runs on the current tokio runtime.
pub(crate) fn connect() -> Result<Handle, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
    tokio::spawn(connection);
    Ok(handle)
}

pub(crate) async fn discover() -> Result<PodNet, NetError> {
    let handle = connect()?;
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetError::Netlink {
            op: "list the routes",
            source,
        })?;
    let route = default_route(&routes).ok_or(NetError::NoDefaultRoute)?;
    // The uplink and its addresses: two requests in flight at once.
    let links = async {
        handle
            .link()
            .get()
            .match_index(route.oif)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|source| NetError::Netlink {
                op: "read the uplink",
                source,
            })
    };
    let addresses = async {
        handle
            .address()
            .get()
            .set_link_index_filter(route.oif)
            .execute()
            .try_collect::<Vec<AddressMessage>>()
            .await
            .map_err(|source| NetError::Netlink {
                op: "list the uplink's addresses",
                source,
            })
    };
    let (links, addresses) = tokio::try_join!(links, addresses)?;
    let attrs = links
        .first()
        .map(|l| l.attributes.as_slice())
        .unwrap_or(&[]);
    let uplink = attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("if{}", route.oif));
    let mtu = attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(1500);
    let (pod_ip, pod_prefix) =
        primary_address(&addresses).ok_or_else(|| NetError::UplinkHasNoAddress {
            uplink: uplink.clone(),
        })?;
    let ipv6 = discover6(&handle, route.oif, &uplink, &addresses).await?;
    Ok(PodNet {
        uplink,
        uplink_index: route.oif,
        pod_ip,
        pod_prefix,
        mtu,
        gateway: route.gateway,
        vhost_net: vhost_net_usable(),
        ipv6,
    })
}

// --- issue 23: the pod's IPv6 ---
/// The IPv6 default route's interface and its global address; `None` when either is missing
/// (an IPv4-only pod, or IPv6 disabled in its netns).
async fn discover6(
    handle: &Handle,
    oif4: u32,
    uplink4: &str,
    addresses4: &[AddressMessage],
) -> Result<Option<PodNet6>, NetError> {
    let routes: Vec<RouteMessage> = match handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
    {
        Ok(routes) => routes,
        // A kernel without IPv6 refuses the dump: the pod has no IPv6.
        Err(e) => {
            tracing::debug!(error = %e, "no IPv6 routes to read");
            return Ok(None);
        }
    };
    let Some(oif) = default_route6(&routes) else {
        return Ok(None);
    };
    // Usually the IPv4 uplink: its addresses and name are known already.
    let (uplink, addresses) = if oif == oif4 {
        (uplink4.to_owned(), addresses4.to_vec())
    } else {
        let links = handle
            .link()
            .get()
            .match_index(oif)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|source| NetError::Netlink {
                op: "read the IPv6 uplink",
                source,
            })?;
        let name = links
            .first()
            .and_then(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| format!("if{oif}"));
        let addresses = handle
            .address()
            .get()
            .set_link_index_filter(oif)
            .execute()
            .try_collect::<Vec<AddressMessage>>()
            .await
            .map_err(|source| NetError::Netlink {
                op: "list the IPv6 uplink's addresses",
                source,
            })?;
        (name, addresses)
    };
    Ok(global_address6(&addresses).map(|(pod_ip, prefix)| PodNet6 {
        uplink,
        pod_ip,
        prefix,
    }))
}

/// The interface of the main table's IPv6 default route with the lowest metric.
pub(crate) fn default_route6(routes: &[RouteMessage]) -> Option<u32> {
    routes
        .iter()
        .filter(|r| {
            r.header.address_family == AddressFamily::Inet6
                && r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast
                && table_of(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
        })
        .filter_map(|r| {
            let mut oif = None;
            let mut metric = 0;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            oif.map(|oif| (metric, oif))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, oif)| oif)
}

/// The first global-scope IPv6 address that is usable (not deprecated, DAD not failed).
/// ULAs count: clusters often number pods from fd00::/8.
pub(crate) fn global_address6(addresses: &[AddressMessage]) -> Option<(Ipv6Addr, u8)> {
    addresses
        .iter()
        .filter(|a| {
            a.header.family == AddressFamily::Inet6
                && a.header.scope == AddressScope::Universe
                && !a
                    .header
                    .flags
                    .intersects(AddressHeaderFlags::Dadfailed | AddressHeaderFlags::Deprecated)
        })
        .find_map(|a| {
            a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V6(ip))
                | AddressAttribute::Local(IpAddr::V6(ip))
                    if !ip.is_loopback() =>
                {
                    Some((*ip, a.header.prefix_len))
                }
                _ => None,
            })
        })
}
// --- end issue 23 ---

/// The main table's IPv4 default route with the lowest metric.
pub(crate) fn default_route(routes: &[RouteMessage]) -> Option<DefaultRoute> {
    routes
        .iter()
        .filter(|r| {
            r.header.address_family == AddressFamily::Inet
                && r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast
                && table_of(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
        })
        .filter_map(|r| {
            let mut oif = None;
            let mut gateway = None;
            let mut metric = 0;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => gateway = Some(*gw),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            oif.map(|oif| (metric, DefaultRoute { oif, gateway }))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, route)| route)
}

/// RTA_TABLE wins over the 8-bit header field (tables above 255 only fit there).
fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// The first IPv4 address that is not a secondary one.
pub(crate) fn primary_address(addresses: &[AddressMessage]) -> Option<(Ipv4Addr, u8)> {
    addresses
        .iter()
        .filter(|a| {
            a.header.family == AddressFamily::Inet
                && !a.header.flags.contains(AddressHeaderFlags::Secondary)
        })
        .find_map(|a| {
            a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        })
}

/// qemu's `vhost=on` needs `/dev/vhost-net` to open read-write.
fn vhost_net_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-net")
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: u8, table: u8, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.destination_prefix_length = prefix;
        r.header.table = table;
        r.header.kind = RouteType::Unicast;
        r.attributes = attrs;
        r
    }

    #[test]
    fn picks_the_main_table_default_route_with_the_lowest_metric() {
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let routes = vec![
            route(24, 254, vec![RouteAttribute::Oif(2)]),
            route(0, 100, vec![RouteAttribute::Oif(9)]),
            route(
                0,
                254,
                vec![RouteAttribute::Oif(3), RouteAttribute::Priority(200)],
            ),
            route(
                0,
                254,
                vec![
                    RouteAttribute::Oif(2),
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)),
                    RouteAttribute::Priority(100),
                ],
            ),
        ];
        assert_eq!(
            default_route(&routes),
            Some(DefaultRoute {
                oif: 2,
                gateway: Some(gw)
            })
        );
    }

    #[test]
    fn the_ipv6_default_route_and_global_address_are_found_and_link_local_ones_skipped() {
        let mut v6 = route(0, 254, vec![RouteAttribute::Oif(4)]);
        v6.header.address_family = AddressFamily::Inet6;
        let v4 = route(0, 254, vec![RouteAttribute::Oif(2)]);
        assert_eq!(default_route6(&[v4.clone(), v6]), Some(4));
        assert_eq!(default_route6(&[v4]), None);

        let address = |ip: &str, scope: AddressScope, flags: AddressHeaderFlags| {
            let mut a = AddressMessage::default();
            a.header.family = AddressFamily::Inet6;
            a.header.prefix_len = 64;
            a.header.scope = scope;
            a.header.flags = flags;
            a.attributes = vec![AddressAttribute::Address(IpAddr::V6(
                ip.parse().expect("v6"),
            ))];
            a
        };
        let none = AddressHeaderFlags::empty();
        let link = address("fe80::1", AddressScope::Link, none);
        let failed = address(
            "fd00::9",
            AddressScope::Universe,
            AddressHeaderFlags::Dadfailed,
        );
        let global = address("fd00::5", AddressScope::Universe, none);
        assert_eq!(
            global_address6(&[link.clone(), failed, global]),
            Some(("fd00::5".parse().expect("v6"), 64))
        );
        assert_eq!(global_address6(&[link]), None);
    }

    #[test]
    fn no_default_route_is_none() {
        let routes = vec![route(24, 254, vec![RouteAttribute::Oif(2)])];
        assert_eq!(default_route(&routes), None);
    }

    #[test]
    fn primary_address_skips_secondaries() {
        let mut secondary = AddressMessage::default();
        secondary.header.family = AddressFamily::Inet;
        secondary.header.prefix_len = 24;
        secondary.header.flags = AddressHeaderFlags::Secondary;
        secondary.attributes = vec![AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(
            10, 0, 0, 9,
        )))];
        let mut primary = secondary.clone();
        primary.header.flags = AddressHeaderFlags::empty();
        primary.header.prefix_len = 32;
        primary.attributes = vec![AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(
            10, 0, 0, 5,
        )))];
        assert_eq!(
            primary_address(&[secondary, primary]),
            Some((Ipv4Addr::new(10, 0, 0, 5), 32))
        );
    }
}

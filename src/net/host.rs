//! Carries out a [`NetPlan`] on the pod's network namespace with rtnetlink: the bridge (kind,
//! MAC, MTU, `VM_GW/30`, up), the tap enslaved to it, and the sysctls forwarding needs.
//!
//! Every step converges: an existing bridge or tap is reused, a wrong one (other kind, MTU,
//! MAC, address, controller) is corrected, nothing is added twice. This is what makes a
//! container restart in a surviving pod netns a no-op.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::ip6::Net64;
use super::plan::NetPlan;
use super::slash30::Slash30;
use super::{tap, NetError};

const CAP_NET_ADMIN: u32 = 12;

/// Fails early, before anything changes, when CAP_NET_ADMIN is missing.
pub(crate) fn require_net_admin() -> Result<(), NetError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|source| NetError::Sysctl {
            path: PathBuf::from("/proc/self/status"),
            source,
        })?;
    match effective_caps(&status) {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) == 0 => Err(NetError::MissingNetAdmin),
        _ => Ok(()),
    }
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
pub(crate) fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Bridge, addresses, tap, sysctls — in that order.
pub(crate) async fn converge_links(handle: &Handle, plan: &NetPlan) -> Result<(), NetError> {
    let bridge = ensure_kind(handle, &plan.bridge, InfoKind::Bridge).await?;
    let mac = plan.bridge_mac.as_bytes().to_vec();
    let (bridge, created) = match bridge {
        Some(link) => {
            if needs_configure(&link, plan.mtu, &mac) {
                // An MTU set explicitly sticks: the bridge no longer follows its ports' minimum.
                handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(link.header.index)
                            .mtu(plan.mtu)
                            .address(mac)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|source| netlink("configure the bridge", source))?;
            }
            (link.header.index, false)
        }
        None => {
            handle
                .link()
                .add(
                    // Created up, with its MAC from the start (so the IPv6 link-local address
                    // derived at creation is the same in every pod) and its MTU.
                    LinkBridge::new(&plan.bridge)
                        .address(mac)
                        .mtu(plan.mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(|source| netlink("create the bridge", source))?;
            (index_of(handle, &plan.bridge).await?, true)
        }
    };
    if created {
        // A bridge made just now has no IPv4 address: nothing stale to look for.
        add_address(handle, bridge, plan.slash30.gw()).await?;
    } else {
        ensure_only_address(handle, bridge, plan.slash30.gw()).await?;
    }
    converge_ip6(handle, bridge, plan).await?;

    // A tun-kind link is reattached as it is; anything else by that name is removed first.
    ensure_kind(handle, &plan.tap, InfoKind::Tun).await?;
    // --- issue 24: a tap made for another queue count is made again (its flag is fixed).
    if tap::ensure_persistent(&plan.tap, plan.queues > 1)? == tap::Attached::OtherQueueMode {
        tracing::info!(tap = %plan.tap, queues = plan.queues, "remaking the tap for another NIC queue count");
        if let Some(link) = find(handle, &plan.tap).await? {
            handle
                .link()
                .del(link.header.index)
                .execute()
                .await
                .map_err(|source| netlink("delete the tap of another queue count", source))?;
        }
        if tap::ensure_persistent(&plan.tap, plan.queues > 1)? != tap::Attached::Ready {
            return Err(NetError::Tap {
                name: plan.tap.clone(),
                source: std::io::Error::other("the kernel refused the tap's multiqueue flag"),
            });
        }
    }
    // --- end issue 24 ---
    // Looked up through netlink once the tap's descriptor is closed, not through the
    // descriptor: enslaving the tap right after the close (its carrier just went off) left
    // the bridge port in another state on a first start than on a restart (the restart test).
    let tap_index = index_of(handle, &plan.tap).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(tap_index)
                .mtu(plan.mtu)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|source| netlink("enslave the tap to the bridge", source))?;
    Ok(())
}

/// Whether an existing bridge lacks our MTU, our MAC or the up flag. One that has them all is
/// left alone: a SETLINK that changes nothing still runs the kernel's change notifications
/// (about 0.5 ms for the bridge here).
fn needs_configure(link: &LinkMessage, mtu: u32, mac: &[u8]) -> bool {
    let up = link.header.flags.contains(LinkFlags::Up);
    let has_mtu = link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Mtu(m) if *m == mtu));
    let has_mac = link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Address(a) if a.as_slice() == mac));
    !(up && has_mtu && has_mac)
}

/// The link called `name` if it is of `kind`; one of another kind is deleted (returns None).
async fn ensure_kind(
    handle: &Handle,
    name: &str,
    kind: InfoKind,
) -> Result<Option<LinkMessage>, NetError> {
    let Some(link) = find(handle, name).await? else {
        return Ok(None);
    };
    if kind_of(&link) == Some(&kind) {
        return Ok(Some(link));
    }
    tracing::warn!(link = name, found = ?kind_of(&link), wanted = ?kind, "replacing a link of the wrong kind");
    handle
        .link()
        .del(link.header.index)
        .execute()
        .await
        .map_err(|source| netlink("delete a link of the wrong kind", source))?;
    Ok(None)
}

fn kind_of(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

async fn find(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let result: Result<Vec<LinkMessage>, _> = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_collect()
        .await;
    match result {
        Ok(links) => Ok(links.into_iter().next()),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-(nix::errno::Errno::ENODEV as i32)) =>
        {
            Ok(None)
        }
        Err(source) => Err(netlink("look up a link", source)),
    }
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetError> {
    find(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::LinkVanished {
            name: name.to_owned(),
        })
}

/// Leaves exactly `gw/30` as the link's IPv4 address.
async fn ensure_only_address(handle: &Handle, index: u32, gw: Ipv4Addr) -> Result<(), NetError> {
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|source| netlink("list the bridge's addresses", source))?;
    let mut present = false;
    for address in addresses
        .into_iter()
        .filter(|a| a.header.family == AddressFamily::Inet)
    {
        let local = address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        if local == Some(IpAddr::V4(gw)) && address.header.prefix_len == Slash30::PREFIX {
            present = true;
            continue;
        }
        tracing::warn!(
            ?local,
            prefix = address.header.prefix_len,
            "removing a stale bridge address"
        );
        handle
            .address()
            .del(address)
            .execute()
            .await
            .map_err(|source| netlink("remove a stale bridge address", source))?;
    }
    if !present {
        add_address(handle, index, gw).await?;
    }
    Ok(())
}

async fn add_address(handle: &Handle, index: u32, gw: Ipv4Addr) -> Result<(), NetError> {
    handle
        .address()
        .add(index, IpAddr::V4(gw), Slash30::PREFIX)
        .execute()
        .await
        .map_err(|source| netlink("add VM_GW to the bridge", source))
}

// --- issue 23: the bridge's IPv6 ---
/// Leaves exactly `VM_GW6/64` (or, without IPv6, no global address) on the bridge; its
/// link-local address (the source of our RAs) is the kernel's and stays.
async fn converge_ip6(handle: &Handle, index: u32, plan: &NetPlan) -> Result<(), NetError> {
    let wanted = plan.ipv6.as_ref().map(|v6| v6.gw);
    if wanted.is_some() {
        // Before the address: a pod whose default disables IPv6 on new links, and a bridge
        // that would take a router's advertisements as a host, are both fixed here.
        let conf = format!("/proc/sys/net/ipv6/conf/{}", plan.bridge);
        let path = PathBuf::from(format!("{conf}/disable_ipv6"));
        write_value(&path, "0").map_err(|source| NetError::Ip6Disabled { path, source })?;
        // No DAD on the bridge either (its link-local address sources our first RAs); both
        // only refine, so a read-only /proc/sys leaves them as they are.
        for key in ["accept_ra", "accept_dad"] {
            let path = PathBuf::from(format!("{conf}/{key}"));
            if let Err(e) = write_value(&path, "0") {
                tracing::debug!(path = %path.display(), error = %e, "bridge IPv6 setting left as it is");
            }
        }
    }
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|source| netlink("list the bridge's addresses", source))?;
    let mut present = false;
    for address in addresses.into_iter().filter(|a| {
        a.header.family == AddressFamily::Inet6 && a.header.scope == AddressScope::Universe
    }) {
        let local = address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
            _ => None,
        });
        if local.is_some() && local == wanted && address.header.prefix_len == Net64::PREFIX {
            present = true;
            continue;
        }
        tracing::warn!(?local, "removing a stale bridge IPv6 address");
        handle
            .address()
            .del(address)
            .execute()
            .await
            .map_err(|source| netlink("remove a stale bridge IPv6 address", source))?;
    }
    if let (Some(gw), false) = (wanted, present) {
        let mut add = handle.address().add(index, IpAddr::V6(gw), Net64::PREFIX);
        // No duplicate detection: the /64 is ours alone, and a tentative address could not
        // be the source of our first router advertisements.
        let message = add.message_mut();
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        add.execute()
            .await
            .map_err(|source| netlink("add VM_GW6 to the bridge", source))?;
    }
    Ok(())
}

/// `net.ipv6.conf.all.forwarding=1` for a VM with IPv6. An uplink that takes its default
/// route from router advertisements (accept_ra=1) would stop taking them once forwarding is
/// on: it is moved to accept_ra=2, which keeps taking them.
pub(crate) fn set_sysctls6(plan: &NetPlan) -> Result<(), NetError> {
    let Some(v6) = &plan.ipv6 else {
        return Ok(());
    };
    let accept_ra = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{}/accept_ra", v6.uplink));
    if std::fs::read_to_string(&accept_ra).is_ok_and(|v| v.trim() == "1") {
        if let Err(e) = std::fs::write(&accept_ra, b"2\n") {
            tracing::warn!(path = %accept_ra.display(), error = %e, "cannot keep the uplink taking router advertisements once IPv6 forwarding is on");
        }
    }
    let forward = PathBuf::from("/proc/sys/net/ipv6/conf/all/forwarding");
    write_value(&forward, "1").map_err(|source| NetError::Ip6Forward {
        path: forward.clone(),
        source,
    })
}

/// Writes `value` unless it is already there (a read-only /proc/sys is fine then).
fn write_value(path: &PathBuf, value: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path)?.trim() == value {
        return Ok(());
    }
    std::fs::write(path, format!("{value}\n"))
}
// --- end issue 23 ---

/// `net.ipv4.ip_forward=1` (required) and `route_localnet=1` on the bridge (needed only for
/// port-forwards to 127.0.0.1, so a read-only /proc/sys there is a warning).
pub(crate) fn set_sysctls(bridge: &str) -> Result<(), NetError> {
    let forward = PathBuf::from("/proc/sys/net/ipv4/ip_forward");
    write_sysctl(&forward).map_err(|source| NetError::IpForward {
        path: forward.clone(),
        source,
    })?;
    let localnet = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"));
    let all = PathBuf::from("/proc/sys/net/ipv4/conf/all/route_localnet");
    if let Err(e) = write_sysctl(&localnet) {
        if !std::fs::read_to_string(&all).is_ok_and(|v| v.trim() == "1") {
            tracing::warn!(
                path = %localnet.display(),
                error = %e,
                "cannot enable route_localnet: port-forwards to 127.0.0.1 will not reach the VM \
                 (set the pod sysctl net.ipv4.conf.all.route_localnet=1 to fix)"
            );
        }
    }
    Ok(())
}

/// Writes `1` unless it is already `1` (a read-only /proc/sys is fine then).
fn write_sysctl(path: &PathBuf) -> std::io::Result<()> {
    if std::fs::read_to_string(path)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(path, b"1\n")
}

fn netlink(op: &'static str, source: rtnetlink::Error) -> NetError {
    if let rtnetlink::Error::NetlinkError(e) = &source {
        if e.code.map(|c| c.get()) == Some(-(nix::errno::Errno::EPERM as i32)) {
            return NetError::MissingNetAdmin;
        }
    }
    NetError::Netlink { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_capability_mask() {
        let status = "Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffefff\n";
        let caps = effective_caps(status).expect("CapEff present");
        assert_eq!(caps & (1 << CAP_NET_ADMIN), 0);
        assert_ne!(caps & 1, 0);
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn a_bridge_is_reconfigured_only_when_its_mtu_mac_or_up_flag_differs() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let link = |mtu: u32, address: &[u8], up: bool| {
            let mut link = LinkMessage::default();
            if up {
                link.header.flags |= LinkFlags::Up;
            }
            link.attributes = vec![
                LinkAttribute::Mtu(mtu),
                LinkAttribute::Address(address.to_vec()),
            ];
            link
        };
        assert!(!needs_configure(&link(1450, &mac, true), 1450, &mac));
        assert!(needs_configure(&link(1500, &mac, true), 1450, &mac));
        assert!(needs_configure(&link(1450, &[0; 6], true), 1450, &mac));
        assert!(needs_configure(&link(1450, &mac, false), 1450, &mac));
        assert!(needs_configure(&LinkMessage::default(), 1450, &mac));
    }
}

//! The pod side of the VM's network: discover the pod uplink, plan (pure) the bridge, tap and
//! NAT, and apply the plan so that a re-run in the same pod netns changes nothing.
//!
//! - [`discover()`]: uplink, pod IP/prefix, MTU, gateway (read-only netlink).
//! - [`plan()`]: config + pod facts + VM MAC → [`NetPlan`]; [`ruleset::ruleset`] turns it into
//!   our nft table's text.
//! - [`apply()`]: checks capabilities, /dev/net/tun and `nft` first, then bridge and tap (netlink, /dev/net/tun),
//!   sysctls, and finally our nftables table in one transaction.
//!
//! Host plumbing, applied once before the VM needs it; the servers that then live on the
//! bridge until qemu exits (DHCP, DNS) are [`crate::lan`].

pub(crate) mod discover;
pub(crate) mod host;
pub(crate) mod ip6;
pub(crate) mod mode;
pub(crate) mod nft;
pub(crate) mod passt;
pub(crate) mod plan;
pub(crate) mod ruleset;
pub(crate) mod slash30;
pub(crate) mod spoof;
pub(crate) mod tap;
pub(crate) mod wiring;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub(crate) use discover::discover;
pub(crate) use plan::{plan, NetPlan};
pub(crate) use ruleset::SpoofWake;
pub(crate) use slash30::Slash30;
pub(crate) use wiring::{wire, Wiring};

/// What `kvm-manager network` prints: the plan, then the ruleset computed from it.
pub(crate) fn printout(plan: &NetPlan) -> String {
    format!("{plan}ruleset:\n{}", ruleset::ruleset(plan))
}

use crate::pid1::{ExitStatus, Pid1Error, Reaper};

const NET_ADMIN_FIX: &str = "add `securityContext: {capabilities: {add: [NET_ADMIN]}}` to the \
     container (or run it privileged)";

#[derive(Debug, thiserror::Error)]
pub(crate) enum NetError {
    #[error("could not open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("could not {op}")]
    Netlink {
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(
        "the pod has no IPv4 default route, so there is no uplink to put the VM behind. Fix: \
         run the pod in a CNI network that gives it a default route"
    )]
    NoDefaultRoute,
    #[error("the uplink {uplink} (the default route's interface) has no IPv4 address")]
    UplinkHasNoAddress { uplink: String },
    #[error(
        "VM_IP's /30 {vm_net} overlaps the pod subnet {pod_net}. Fix: set VM_IP and VM_GW to a \
         /30 the cluster does not use, e.g. VM_GW=192.168.254.1 VM_IP=192.168.254.2"
    )]
    Overlap { vm_net: String, pod_net: String },
    #[error(
        "VM_GW6's /64 {vm_net} overlaps the pod's IPv6 {pod_net}. Fix: set VM_GW6 (and VM_IP6) \
         to a /64 the cluster does not use, e.g. VM_GW6=fd6b:766d::1, or set IPV6=off"
    )]
    Overlap6 { vm_net: String, pod_net: String },
    #[error(
        "could not enable IPv6 on the bridge through {path}. Fix: allow the sysctl on the pod, \
         or set IPV6=off to give the VM IPv4 only"
    )]
    Ip6Disabled {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not enable IPv6 forwarding through {path}. Fix: allow the sysctl on the pod \
         (net.ipv6.conf.all.forwarding=1), or set IPV6=off to give the VM IPv4 only"
    )]
    Ip6Forward {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "VM_IP's /30 {vm_net} contains the pod's default gateway {gateway}. Fix: set VM_IP and \
         VM_GW to a /30 the cluster does not use, e.g. VM_GW=192.168.254.1 VM_IP=192.168.254.2"
    )]
    GatewayInVmNet { vm_net: String, gateway: Ipv4Addr },
    #[error(
        "kvm-manager lacks CAP_NET_ADMIN, needed for the bridge, tap and NAT. Fix: {NET_ADMIN_FIX}"
    )]
    MissingNetAdmin,
    #[error(
        "/dev/net/tun does not exist in the container, so no tap can be made for qemu. Fix: \
         expose it with a device plugin that offers /dev/net/tun, or run the container with \
         `securityContext: {{privileged: true}}`"
    )]
    NoTunDevice,
    #[error("could not create or open the persistent tap {name}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the tap {name} is held open by another process (a qemu still running?); stop it first"
    )]
    TapBusy { name: String },
    #[error("the link {name} disappeared while it was being configured")]
    LinkVanished { name: String },
    #[error(
        "could not enable IP forwarding through {path}. Fix: allow the sysctl on the pod \
         (`securityContext: {{sysctls: [{{name: net.ipv4.ip_forward, value: \"1\"}}]}}`, and \
         --allowed-unsafe-sysctls=net.ipv4.ip_forward on the kubelet) or run privileged"
    )]
    IpForward {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the `nft` binary was not found on PATH. Fix: install the nftables package in the image"
    )]
    NftMissing,
    #[error(
        "the kernel has no nf_tables (nft said: {stderr}). Fix: load the nf_tables and nft_nat \
         modules on the node (modprobe nf_tables nft_nat)"
    )]
    NoNfTables { stderr: String },
    #[error("nft rejected our ruleset ({status}): {stderr}")]
    NftRejected { status: ExitStatus, stderr: String },
    #[error(
        "NETWORK_MODE=nat needs CAP_NET_ADMIN, which the container lacks. Fix: {NET_ADMIN_FIX}, \
         or set NETWORK_MODE=passt (or auto), which needs no capability"
    )]
    NatNeedsNetAdmin,
    #[error(
        "NETWORK_MODE=nat needs /dev/net/tun, which the container cannot open. Fix: expose it \
         with a device plugin that offers /dev/net/tun (or run privileged), or set \
         NETWORK_MODE=passt (or auto), which needs no tun device"
    )]
    NatNeedsTun,
    #[error(
        "NETWORK_MODE=passt, but the `passt` binary was not found on PATH. Fix: install the \
         passt package in the image"
    )]
    PasstMissing,
    #[error(
        "no network mode can work: {reason}, so NAT cannot, and the `passt` binary was not \
         found on PATH. Fix: install the passt package in the image (passt needs no \
         capability), or {NET_ADMIN_FIX} and expose /dev/net/tun"
    )]
    NoMode { reason: &'static str },
    #[error("could not prepare passt's socket directory {path}")]
    PasstSocketDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start passt")]
    PasstSpawn(#[source] Pid1Error),
    #[error("passt exited ({status}) before it was ready; its last words:\n{last_words}")]
    PasstEarlyExit {
        status: ExitStatus,
        last_words: String,
    },
    #[error(
        "passt did not create its socket {path} in time. Fix: RUNTIME_DIR and every directory \
         above it must be searchable by the user passt runs as (nobody when kvm-manager runs \
         as root). Its last words:\n{last_words}"
    )]
    PasstNoSocket { path: PathBuf, last_words: String },
    #[error(
        "passt, which carried the VM's network, exited ({status}); the VM was stopped. Its last \
         words:\n{last_words}"
    )]
    PasstDied {
        status: ExitStatus,
        last_words: String,
    },
    #[error("passt (pid {pid}) was lost by the reaper; the VM was stopped")]
    PasstLost { pid: i32 },
    #[error("could not run nft")]
    NftSpawn(#[source] Pid1Error),
    #[error("could not talk to nft")]
    NftPipe(#[source] std::io::Error),
}

/// Applies `plan`: every step converges, so running it again in the same netns is a no-op.
/// `reaper` runs `nft` (PID 1's reaper owns every child's exit status). Says how the
/// spoofed-packet watch is woken.
pub(crate) async fn apply(plan: &NetPlan, reaper: &Reaper) -> Result<SpoofWake, NetError> {
    let nft = apply_links(plan).await?;
    apply_nat(plan, &nft, reaper).await
}

/// The links half of [`apply`]: checks what the NAT will need (so that nothing is changed when
/// it cannot work), then bridge, address, tap, MTU and sysctls. Returns the `nft` to use.
pub(crate) async fn apply_links(plan: &NetPlan) -> Result<std::path::PathBuf, NetError> {
    host::require_net_admin()?;
    if !std::path::Path::new(tap::TUN_DEVICE).exists() {
        return Err(NetError::NoTunDevice);
    }
    let nft = nft::find_nft()?;
    let handle = discover::connect()?;
    host::converge_links(&handle, plan).await?;
    host::set_sysctls(&plan.bridge)?;
    host::set_sysctls6(plan)?;
    if let Some(why) = plan.no_ipv6_because {
        tracing::info!(reason = why, "the VM gets IPv4 only");
    }
    Ok(nft)
}

/// The NAT half of [`apply`]: our nft table, in one transaction. `run` starts qemu while this
/// runs: the guest sends its first packet seconds after qemu starts.
///
/// A kernel without `nfnetlink_log` refuses the rule that wakes the spoofed-packet watch; the
/// table then goes without it (the drop and its counter stay) and the watch polls.
pub(crate) async fn apply_nat(
    plan: &NetPlan,
    nft: &std::path::Path,
    reaper: &Reaper,
) -> Result<SpoofWake, NetError> {
    let text = ruleset::ruleset(plan);
    match replace_table(nft, &text, reaper).await {
        Ok(()) => Ok(SpoofWake::Nflog),
        Err(NetError::NftRejected { stderr, .. }) => {
            replace_table(nft, &ruleset::without_spoof_log(&text), reaper).await?;
            tracing::warn!(
                %stderr,
                "nft refused the nflog rule (is the kernel module nfnetlink_log missing on \
                 this node?); the table works without it, and the spoofed-packet counter is \
                 read every few seconds instead"
            );
            Ok(SpoofWake::Poll)
        }
        Err(e) => Err(e),
    }
}

/// `text` as our table, in one transaction.
async fn replace_table(nft: &std::path::Path, text: &str, reaper: &Reaper) -> Result<(), NetError> {
    // Flushing our table's rules is several times faster than deleting the table (a table
    // deletion waits for an RCU grace period) and converges the same way while our chains keep
    // their hooks; when they do not (a ruleset from another version), delete and recreate.
    match nft::replace_table(nft, &ruleset::flushing(text), reaper).await {
        Err(NetError::NftRejected { stderr, .. }) => {
            tracing::debug!(%stderr, "flushing our nft table was refused; replacing it whole");
            nft::replace_table(nft, text, reaper).await
        }
        other => other,
    }
}

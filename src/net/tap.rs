//! The persistent tap qemu opens by name (`-netdev tap,ifname=…,script=no,downscript=no`).
//!
//! rtnetlink cannot create taps (the kernel refuses RTM_NEWLINK for them), so the tap is made
//! through `/dev/net/tun` with `IFF_VNET_HDR` (what virtio-net and vhost-net expect), marked
//! persistent, and the descriptor closed again: the device outlives us, has no owner or group
//! (any process with CAP_NET_ADMIN may attach — qemu does), and a later start attaches to the
//! same device instead of creating a second one.
//!
//! A VM with more than one NIC queue pair gets a multiqueue tap (`IFF_MULTI_QUEUE`): qemu opens
//! one descriptor per queue. The kernel refuses to attach with the other multiqueue flag than
//! the tap was made with (EINVAL), so a tap left by a start with another queue count is
//! reported as [`Attached::OtherQueueMode`] and made again by the caller.

use std::io;
use std::path::Path;

use nix::errno::Errno;
use tun_rs::{DeviceBuilder, Layer};

use super::NetError;

pub(crate) const TUN_DEVICE: &str = "/dev/net/tun";

/// Whether [`ensure_persistent`] could attach to the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attached {
    Ready,
    /// The tap exists with the other multiqueue flag: delete it and try again.
    OtherQueueMode,
}

/// Creates the tap `name`, or attaches to it if it exists, and leaves it persistent;
/// `multi_queue` for a NIC of more than one queue pair.
pub(crate) fn ensure_persistent(name: &str, multi_queue: bool) -> Result<Attached, NetError> {
    // tun-rs would mknod a missing node, which a container cannot do (or must not); say what
    // the operator has to change instead.
    if !Path::new(TUN_DEVICE).exists() {
        return Err(NetError::NoTunDevice);
    }
    let device = DeviceBuilder::new()
        .name(name)
        .layer(Layer::L2)
        .offload(true)
        .multi_queue(multi_queue)
        .build_sync();
    let device = match device {
        Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
            return Ok(Attached::OtherQueueMode)
        }
        other => other.map_err(|source| tap_error(name, source))?,
    };
    device.persist().map_err(|source| tap_error(name, source))?;
    Ok(Attached::Ready)
}

fn tap_error(name: &str, source: io::Error) -> NetError {
    match source.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EPERM) => NetError::MissingNetAdmin,
        Some(Errno::EBUSY) => NetError::TapBusy {
            name: name.to_owned(),
        },
        _ => NetError::Tap {
            name: name.to_owned(),
            source,
        },
    }
}

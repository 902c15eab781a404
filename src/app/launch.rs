//! Composes qemu's [`Launch`] from the config and the decided network plan: accelerator,
//! size, disks, NIC, VNC and sockets. Shared by `run` and `qemu-args` so they cannot differ.

use std::path::{Path, PathBuf};

use crate::config::{Config, DriveFormat};
use crate::image::source::DiskFormat;
use crate::net::NetPlan;
use crate::qemu::accel::{self, KVM_FIX};
use crate::qemu::args::{Base, BaseFormat, Launch, Nic, Vnc};
use crate::qemu::sizing;
use crate::qemu::QemuError;

pub const KVM_DEVICE: &str = "/dev/kvm";

/// Where `run` writes the config drive.
pub fn config_drive_path(config: &Config) -> Option<PathBuf> {
    (config.config_drive.format != DriveFormat::None)
        .then(|| config.runtime_dir.join("config-drive.iso"))
}

pub fn qmp_socket(config: &Config) -> PathBuf {
    config.runtime_dir.join("qmp.sock")
}

/// The base qemu opens under the overlay, with the format `image` found (in `run` the base
/// was just checked). A base that is not there yet (`qemu-args` before the first download)
/// or no longer a disk is named qcow2: qemu then refuses to open anything else, rather than
/// guessing.
fn base(path: PathBuf) -> Base {
    let path = std::path::absolute(&path).unwrap_or(path);
    let format = match crate::image::inspect_file(&path) {
        Ok(Ok(DiskFormat::Raw { .. })) => BaseFormat::Raw,
        _ => BaseFormat::Qcow2,
    };
    Base { path, format }
}

/// Decides everything qemu's command line depends on; logs the choices that were derived.
pub fn decide(config: &Config, plan: Option<&NetPlan>) -> Result<Launch, QemuError> {
    let (accel, fallback) = accel::resolve(config.vm.accel, Path::new(KVM_DEVICE))?;
    if let Some(accel::Fallback(reason)) = fallback {
        tracing::warn!(
            device = KVM_DEVICE,
            %reason,
            "no usable KVM: the VM runs under TCG software emulation, many times slower; {KVM_FIX}"
        );
    }
    let limits = sizing::read_own_limits();
    let sizing = sizing::decide(config.vm.cpus, config.vm.memory, limits)?;
    tracing::info!(
        cpus = sizing.cpus,
        memory_mib = sizing.memory_mib,
        cpu_limit_millis = ?limits.cpu_millis,
        memory_limit = ?limits.memory,
        "VM size (VM_CPUS/VM_MEMORY, else the container's limits, else 1 CPU and 1GiB)"
    );
    Ok(Launch {
        qemu: config.vm.qemu.clone(),
        name: config.hostname.to_string(),
        accel,
        sizing,
        disk: config.overlay_path(),
        base: config.image.target_path().map(base),
        config_drive: config_drive_path(config),
        nic: plan.map(|plan| Nic {
            tap: plan.tap.clone(),
            mac: plan.vm_mac,
            mtu: plan.mtu,
            vhost: plan.vhost_net,
        }),
        vnc: (!config.net.no_vnc).then_some(Vnc {
            password: config.vm.vnc_password.is_some(),
        }),
        qmp_socket: qmp_socket(config),
        extra: config.vm.extra_args.clone(),
    })
}

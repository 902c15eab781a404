//! The qemu command line, decided purely from typed inputs (golden-tested).
//!
//! Choices and why:
//! - `-nodefaults -no-user-config`: only the devices listed here, nothing from host files.
//! - machine `pc` (i440fx): the most widely supported board for legacy guests; the config
//!   drive sits on its IDE controller as a cdrom, which every OS can read.
//! - the serial console is qemu's stdio (`signal=off`: a Ctrl-C is for the guest), so qemu's
//!   stdout carries only guest output while its own messages go to stderr.
//! - the VNC password is never on the command line (visible in /proc): it is set over QMP.
//! - VNC without a password listens on loopback only: inside the pod, so only the web console
//!   bridge and `kubectl port-forward` reach it (access governed by RBAC on
//!   `pods/portforward`). With a password it listens on every address, the pod IP included.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use macaddr::MacAddr6;

use super::sizing::Sizing;

/// Resolved accelerator (`ACCEL=auto` already decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// The VM's NIC: our tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: MacAddr6,
    pub mtu: u32,
    pub vhost: bool,
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct Launch {
    pub qemu: PathBuf,
    pub name: String,
    pub accel: Accel,
    pub sizing: Sizing,
    pub disk: PathBuf,
    pub config_drive: Option<PathBuf>,
    pub nic: Option<Nic>,
    /// `None`: no VNC (`NO_VNC`).
    pub vnc: Option<Vnc>,
    pub qmp_socket: PathBuf,
    pub extra: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vnc {
    /// Require a password (set later over QMP); also decides where VNC listens.
    pub password: bool,
}

impl Vnc {
    /// qemu's `-vnc` value: display 0 (TCP 5900), on loopback unless a password guards it.
    fn option(self) -> &'static str {
        if self.password {
            ":0,password=on"
        } else {
            "127.0.0.1:0"
        }
    }
}

/// Escapes a value inside a qemu `key=value,…` option: a comma is written twice.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path_value(path: &Path) -> String {
    escape(&path.to_string_lossy())
}

/// The argv, program first.
pub fn build(launch: &Launch) -> Vec<OsString> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));

    push(&[
        "-name",
        &format!("guest={},debug-threads=on", escape(&launch.name)),
    ]);
    push(&["-nodefaults", "-no-user-config"]);
    let (accel, cpu) = match launch.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    push(&["-machine", &format!("pc,accel={accel}")]);
    push(&["-cpu", cpu]);
    push(&["-smp", &launch.sizing.cpus.to_string()]);
    push(&["-m", &format!("{}M", launch.sizing.memory_mib)]);
    push(&["-rtc", "base=utc"]);

    push(&[
        "-drive",
        &format!(
            "file={},if=none,id=disk0,format=qcow2,discard=unmap",
            path_value(&launch.disk)
        ),
    ]);
    push(&["-device", "virtio-blk-pci,drive=disk0,bootindex=1"]);
    if let Some(iso) = &launch.config_drive {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=cd0,media=cdrom,readonly=on,format=raw",
                path_value(iso)
            ),
        ]);
        push(&["-device", "ide-cd,drive=cd0,bus=ide.1,unit=0"]);
    }

    if let Some(nic) = &launch.nic {
        let vhost = if nic.vhost { "on" } else { "off" };
        push(&[
            "-netdev",
            &format!(
                "tap,id=net0,ifname={},script=no,downscript=no,vhost={vhost}",
                escape(&nic.tap)
            ),
        ]);
        let mac = nic.mac.to_string().to_ascii_lowercase();
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={mac},host_mtu={}", nic.mtu),
        ]);
    }

    match launch.vnc {
        Some(vnc) => {
            push(&["-device", "VGA"]);
            push(&["-usb", "-device", "usb-tablet"]);
            push(&["-vnc", vnc.option()]);
        }
        None => push(&["-display", "none"]),
    }

    push(&["-chardev", "stdio,id=console0,signal=off"]);
    push(&["-serial", "chardev:console0"]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", path_value(&launch.qmp_socket)),
    ]);
    push(&["-msg", "timestamp=off"]);

    let mut argv = vec![launch.qemu.clone().into_os_string()];
    argv.extend(args.into_iter().map(OsString::from));
    argv.extend(launch.extra.iter().map(OsString::from));
    argv
}

#[cfg(test)]
mod tests;

//! The qemu command line, decided purely from typed inputs (golden-tested).
//!
//! Choices and why:
//! - `-nodefaults -no-user-config`: only the devices listed here, nothing from host files.
//! - machine `pc` (i440fx): the most widely supported board for legacy guests; the config
//!   drive sits on its IDE controller as a cdrom, which every OS can read.
//! - the serial console is qemu's stdio (`signal=off`: a Ctrl-C is for the guest), so qemu's
//!   stdout carries only guest output while its own messages go to stderr.
//! - the VNC password is never on the command line (visible in /proc): it is set over QMP.
//! - the disk is an explicit `-blockdev` graph: the pet overlay's `backing` is the base node,
//!   opened read-only with its format named and `"backing": null`, so no header (of the
//!   overlay or of the base) can make qemu open a file we did not name or probe a format.
//!   The device keeps `-drive`'s defaults, spelt out: write-back cache, and `werror=enospc`
//!   (a full `PET_DIR` pauses the VM instead of failing the guest's writes).
//! - VNC without a password listens on loopback only: inside the pod, so only the web console
//!   bridge and `kubectl port-forward` reach it (access governed by RBAC on
//!   `pods/portforward`). With a password it listens on every address, the pod IP included.
//! - a virtio-serial port `org.qemu.guest_agent.0` on a socket in `RUNTIME_DIR`, always: a
//!   guest without an agent never opens it and it costs nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use macaddr::MacAddr6;

use super::sizing::Sizing;

/// Resolved accelerator (`ACCEL=auto` already decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accel {
    Kvm,
    Tcg,
}

/// The VM's NIC and what carries its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Nic {
    pub backend: NicBackend,
    pub mac: MacAddr6,
    pub mtu: u32,
    /// Queue pairs (a multiqueue tap above 1; passt: 1).
    pub queues: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NicBackend {
    /// NAT mode: our tap on the bridge.
    Tap { tap: String, vhost: bool },
    /// passt mode: passt's unix socket (`-netdev stream`, QEMU 7.2's client for it).
    Stream { socket: PathBuf },
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub qemu: PathBuf,
    pub name: String,
    pub accel: Accel,
    pub sizing: Sizing,
    /// The pet overlay (qcow2).
    pub disk: PathBuf,
    /// The base image the overlay is backed by. `None` only when no image is configured
    /// (`qemu-args` without `IMG_TARGET`): qemu then follows the overlay's header.
    pub base: Option<Base>,
    pub config_drive: Option<PathBuf>,
    pub nic: Option<Nic>,
    /// `None`: no VNC (`NO_VNC`).
    pub vnc: Option<Vnc>,
    pub qmp_socket: PathBuf,
    /// The guest agent's channel (always there: a guest without an agent never opens it).
    pub agent_socket: PathBuf,
    /// An Ignition config qemu passes by fw_cfg (`opt/com.coreos/config`).
    pub ignition: Option<PathBuf>,
    /// `SHARES`, their transports decided.
    pub shares: Vec<super::shares::ShareDevice>,
    /// Board and firmware (OVMF's files for UEFI).
    pub firmware: Firmware,
    /// Read-only CD-ROMs after the disk in the boot order: the installer ISO (when the base
    /// is one) and `INSTALL_MEDIA`.
    pub media: Vec<PathBuf>,
    /// SMBIOS type 1 system UUID and serial (`None` only in unit tests' bare launches).
    pub smbios: Option<Smbios>,
    /// `TPM=2.0`: swtpm's socket and the device qemu shows the guest.
    pub tpm: Option<super::tpm::TpmPlan>,
    pub extra: Vec<String>,
}

/// The machine's identity in SMBIOS type 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Smbios {
    pub uuid: String,
    pub serial: String,
}

/// The board and, for UEFI, OVMF's code and the VM's variable store (pflash 0 and 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Firmware {
    pub machine: crate::config::Machine,
    pub uefi: Option<super::firmware::Uefi>,
}

/// The base image: its path and the format qemu must open it with (never probed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Base {
    pub path: PathBuf,
    pub format: BaseFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BaseFormat {
    Qcow2,
    Raw,
}

impl BaseFormat {
    pub(crate) fn driver(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vnc {
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
pub(crate) fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path_value(path: &Path) -> String {
    escape(&path.to_string_lossy())
}

/// The argv, program first.
pub(crate) fn build(launch: &Launch) -> Vec<OsString> {
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
    push(&["-machine", &machine_option(&launch.firmware, accel)]);
    for node in firmware_nodes(&launch.firmware) {
        push(&["-blockdev", &node.to_string()]);
    }
    if launch
        .firmware
        .uefi
        .as_ref()
        .is_some_and(|uefi| uefi.secure)
    {
        // Only SMM code may write the flash: the OS cannot replace the Secure Boot keys.
        push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
    }
    push(&["-cpu", cpu]);
    push(&["-smp", &launch.sizing.cpus.to_string()]);
    push(&["-m", &format!("{}M", launch.sizing.memory_mib)]);
    push(&["-rtc", "base=utc"]);
    if let Some(smbios) = &launch.smbios {
        push(&["-uuid", &smbios.uuid]);
        push(&[
            "-smbios",
            &format!("type=1,serial={}", escape(&smbios.serial)),
        ]);
    }

    for node in disk_nodes(launch) {
        push(&["-blockdev", &node.to_string()]);
    }
    push(&[
        "-device",
        "virtio-blk-pci,drive=disk0,bootindex=1,write-cache=on,werror=enospc,rerror=report",
    ]);
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

    if let Some(ignition) = &launch.ignition {
        push(&["-fw_cfg", &ignition_value(ignition)]);
    }
    let shares = super::shares::args(&launch.shares, launch.sizing.memory_mib);
    push(&shares.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, (iso, slot)) in launch
        .media
        .iter()
        .zip(media_slots(launch.firmware.machine))
        .enumerate()
    {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=media{i},media=cdrom,readonly=on,format=raw",
                path_value(iso)
            ),
        ]);
        push(&[
            "-device",
            &format!("ide-cd,drive=media{i},{slot},bootindex={}", i + 2),
        ]);
    }
    if let Some(tpm) = &launch.tpm {
        push(&tpm_args(tpm).each_ref().map(String::as_str));
    }

    if let Some(nic) = &launch.nic {
        push(&nic_args(nic).each_ref().map(String::as_str));
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
    push(
        &agent_args(&launch.agent_socket)
            .each_ref()
            .map(String::as_str),
    );
    push(&["-msg", "timestamp=off"]);

    let mut argv = vec![launch.qemu.clone().into_os_string()];
    argv.extend(args.into_iter().map(OsString::from));
    argv.extend(launch.extra.iter().map(OsString::from));
    argv
}

/// The fw_cfg item Ignition's `qemu` platform reads.
pub(crate) const IGNITION_FW_CFG: &str = "opt/com.coreos/config";

/// `-fw_cfg`'s value for the Ignition config: qemu reads the file once, at start.
fn ignition_value(file: &Path) -> String {
    format!("name={IGNITION_FW_CFG},file={}", path_value(file))
}

/// `-machine`: the board, the accelerator, and OVMF's flash nodes for UEFI.
fn machine_option(firmware: &Firmware, accel: &str) -> String {
    let mut option = format!("{},accel={accel}", firmware.machine.name());
    if let Some(uefi) = &firmware.uefi {
        option.push_str(",pflash0=fw-code,pflash1=fw-vars");
        if uefi.secure {
            option.push_str(",smm=on");
        }
    }
    option
}

/// OVMF as two `-blockdev` graphs: the code read-only, the VM's variable store writable.
/// Formats named (raw), never probed.
fn firmware_nodes(firmware: &Firmware) -> Vec<serde_json::Value> {
    use serde_json::json;
    let Some(uefi) = &firmware.uefi else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for (name, path, read_only) in [
        ("fw-code", &uefi.code, true),
        ("fw-vars", &uefi.vars, false),
    ] {
        nodes.push(json!({
            "driver": "file",
            "node-name": format!("{name}-file"),
            "filename": path.to_string_lossy(),
            "read-only": read_only,
        }));
        nodes.push(json!({
            "driver": "raw",
            "node-name": name,
            "file": format!("{name}-file"),
            "read-only": read_only,
        }));
    }
    nodes
}

/// Where the install CD-ROMs go: the IDE (pc) or AHCI (q35) places the config drive
/// (`ide.1`, unit 0) leaves free, after it where there is room, so that the guest finds the
/// config drive as its first CD-ROM.
fn media_slots(machine: crate::config::Machine) -> [&'static str; 2] {
    match machine {
        crate::config::Machine::Pc => ["bus=ide.1,unit=1", "bus=ide.0,unit=0"],
        crate::config::Machine::Q35 => ["bus=ide.2,unit=0", "bus=ide.3,unit=0"],
    }
}

/// The TPM: qemu's emulator backend on swtpm's control socket, and the device.
fn tpm_args(tpm: &super::tpm::TpmPlan) -> [String; 6] {
    [
        "-chardev".to_owned(),
        format!("socket,id=tpm0-ctrl,path={}", path_value(&tpm.socket)),
        "-tpmdev".to_owned(),
        "emulator,id=tpm0,chardev=tpm0-ctrl".to_owned(),
        "-device".to_owned(),
        format!("{},tpmdev=tpm0", tpm.device),
    ]
}

/// `-netdev` and `-device` of the VM's NIC: a tap (NAT mode) or passt's socket.
fn nic_args(nic: &Nic) -> [String; 4] {
    let mut netdev = match &nic.backend {
        NicBackend::Tap { tap, vhost } => format!(
            "tap,id=net0,ifname={},script=no,downscript=no,vhost={}",
            escape(tap),
            if *vhost { "on" } else { "off" }
        ),
        NicBackend::Stream { socket } => format!(
            "stream,id=net0,server=off,addr.type=unix,addr.path={}",
            path_value(socket)
        ),
    };
    let mac = nic.mac.to_string().to_ascii_lowercase();
    let mut device = format!("virtio-net-pci,netdev=net0,mac={mac},host_mtu={}", nic.mtu);
    if nic.queues > 1 {
        // One MSI-X vector per queue of each direction, one for config, one for control.
        netdev.push_str(&format!(",queues={}", nic.queues));
        device.push_str(&format!(",mq=on,vectors={}", 2 * nic.queues + 2));
    }
    ["-netdev".to_owned(), netdev, "-device".to_owned(), device]
}

/// The guest agent's virtio-serial port; qemu listens on `socket`, our client connects.
fn agent_args(socket: &Path) -> [String; 6] {
    [
        "-chardev".to_owned(),
        format!(
            "socket,id={},path={},server=on,wait=off",
            super::agent::port::CHARDEV,
            path_value(socket)
        ),
        "-device".to_owned(),
        "virtio-serial-pci,id=serial0".to_owned(),
        "-device".to_owned(),
        format!(
            "virtserialport,bus=serial0.0,id={},chardev={},name={}",
            super::agent::port::PORT_ID,
            super::agent::port::CHARDEV,
            super::agent::CHANNEL
        ),
    ]
}

/// The `-blockdev` nodes of the disk, JSON (no comma escaping to get wrong): the base's
/// file and format nodes (read-only, `"backing": null`), then the overlay's, backed by the
/// base node.
fn disk_nodes(launch: &Launch) -> Vec<serde_json::Value> {
    use serde_json::{json, Value};
    let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    let mut nodes = Vec::new();
    let mut overlay = json!({
        "driver": "qcow2",
        "node-name": "disk0",
        "file": "disk0-file",
        "discard": "unmap",
    });
    if let Some(base) = &launch.base {
        nodes.push(json!({
            "driver": "file",
            "node-name": "base-file",
            "filename": path(&base.path),
            "read-only": true,
        }));
        let mut format = json!({
            "driver": base.format.driver(),
            "node-name": "base",
            "file": "base-file",
            "read-only": true,
        });
        if base.format == BaseFormat::Qcow2 {
            format["backing"] = Value::Null;
        }
        nodes.push(format);
        overlay["backing"] = json!("base");
    }
    nodes.push(json!({
        "driver": "file",
        "node-name": "disk0-file",
        "filename": path(&launch.disk),
        "discard": "unmap",
    }));
    nodes.push(overlay);
    nodes
}

#[cfg(test)]
mod tests;

//! Composes qemu's [`Launch`] from the config and the decided network plan: accelerator,
//! size, disks, NIC, VNC and sockets. Shared by `run` and `qemu-args` so they cannot differ.
//! [`probe`] asks the host (/dev/kvm, cgroups, the base's format); [`compose`] decides, purely.

use std::path::{Path, PathBuf};

use crate::config::{
    Config, DriveFormat, Firmware as FirmwareKind, FirmwareChoice, ImageConfig, ImageSource,
    ImageTarget, ShareTransport,
};
use crate::configdrive::ignition::Ignition;
use crate::image::boot_detect::Detection;
use crate::image::source::DiskFormat;
use crate::image::BaseImage;
use crate::net::Wiring;
use crate::qemu::accel::{self, KVM_FIX};
use crate::qemu::args::{Accel, Base, BaseFormat, Firmware, Launch, Nic, NicBackend, Smbios, Vnc};
use crate::qemu::firmware::{self, FirmwareError, Plan, Uefi, VarsAction};
use crate::qemu::shares::{self, ShareBackend, ShareDevice, Transport};
use crate::qemu::sizing::{self, Limits};
use crate::qemu::QemuError;

pub(super) const KVM_DEVICE: &str = "/dev/kvm";

/// Where `run` writes the config drive.
pub(super) fn config_drive_path(config: &Config) -> Option<PathBuf> {
    (config.config_drive.format != DriveFormat::None)
        .then(|| config.runtime_dir.join("config-drive.iso"))
}

pub(super) fn qmp_socket(config: &Config) -> PathBuf {
    config.runtime_dir.join("qmp.sock")
}

/// The base qemu opens under the overlay, with the format `image` found (in `run` the base
/// was just checked). A base that is not there yet (`qemu-args` before the first download)
/// or no longer a disk is named qcow2: qemu then refuses to open anything else, rather than
/// guessing.
fn probe_base(path: PathBuf) -> Base {
    let path = std::path::absolute(&path).unwrap_or(path);
    let format = match crate::image::inspect_file(&path) {
        Ok(Ok(format)) => base_format(format),
        _ => BaseFormat::Qcow2,
    };
    Base { path, format }
}

fn base_format(format: DiskFormat) -> BaseFormat {
    match format {
        DiskFormat::Raw { .. } => BaseFormat::Raw,
        DiskFormat::Qcow2 { .. } => BaseFormat::Qcow2,
    }
}

/// What the host says, read once by [`probe`]: everything [`compose`] needs besides the config.
#[derive(Debug)]
pub(super) struct Probed {
    pub accel: Accel,
    /// Why `ACCEL=auto` fell back to TCG, for the warning.
    pub fallback: Option<accel::Fallback>,
    /// The container's cgroup limits.
    pub limits: Limits,
    /// `None` when no image is configured (`qemu-args` without `IMG_TARGET`).
    pub base: Option<Base>,
    /// The `VIRTIOFSD` binary, when it is found (`SHARE_TRANSPORT=auto` needs it for virtio-fs).
    pub virtiofsd: Option<PathBuf>,
    /// The base is an installer ISO: a CD-ROM, not the disk's backing file.
    pub base_is_iso: bool,
}

/// The IO half of [`decide`]: opens /dev/kvm, reads our cgroup limits, and the base's format
/// unless `run` already decided it (`known`).
pub(super) fn probe(config: &Config, known: Option<&BaseImage>) -> Result<Probed, QemuError> {
    let (accel, fallback) = accel::resolve(config.vm.accel, Path::new(KVM_DEVICE))?;
    let base = match known {
        Some(known) => Some(Base {
            path: std::path::absolute(&known.path).unwrap_or_else(|_| known.path.clone()),
            format: base_format(known.format),
        }),
        None => config
            .image_target
            .as_ref()
            .map(|target| probe_base(target.path(&config.image.dir))),
    };
    let base_is_iso = base
        .as_ref()
        .is_some_and(|base| crate::image::iso_detect::is_iso(&base.path).unwrap_or(false));
    Ok(Probed {
        accel,
        fallback,
        limits: sizing::read_own_limits(),
        base,
        virtiofsd: find_program(&config.guest_io.virtiofsd),
        base_is_iso,
    })
}

/// The firmware of this start, from the config and what the pet state recorded (`existed`:
/// the VM booted before, [`booted_before`]); `None` when `FIRMWARE=auto` must
/// first read the base ([`detect_boot`], [`firmware_detected`]).
pub(super) fn firmware(
    config: &Config,
    existed: bool,
    record: Option<&crate::state::FirmwareRecord>,
) -> Result<Option<Plan>, FirmwareError> {
    let recorded = firmware::recorded(existed, record);
    if firmware::needs_detection(&config.firmware, recorded.as_ref()) {
        return Ok(None);
    }
    let vars = firmware::vars_path(&config.pet_dir, &config.hostname);
    let plan = firmware::decide(&config.firmware, recorded.as_ref(), vars, None)?;
    if config.firmware.firmware == FirmwareChoice::Auto {
        tracing::info!(
            firmware = plan.record.firmware.name(),
            machine = plan.machine.name(),
            "FIRMWARE=auto: the firmware this VM first booted with"
        );
    }
    Ok(Some(plan))
}

/// Reads what `base` boots with, for `FIRMWARE=auto` (IO: a few sectors of the base). A base
/// qemu can open but we cannot read gets BIOS, with a warning, rather than no VM at all.
pub(super) fn detect_boot(base: &BaseImage) -> Detection {
    use crate::image::boot_detect;
    boot_detect::detect(&base.path, base.format).unwrap_or_else(|error| {
        tracing::warn!(base = %base.path.display(), %error, "FIRMWARE=auto could not read the base image's partition table and takes bios; if it boots only under UEFI, set FIRMWARE=uefi (and FIRMWARE_RESET=1 once, on this VM)");
        boot_detect::UNREADABLE
    })
}

/// `FIRMWARE=auto` at the first boot (or with `FIRMWARE_RESET`): decides from what the base
/// at `base` boots with ([`detect_boot`]) and says what it chose and why. `records`: the
/// caller writes the choice into the pet state (`run`, `image`); `qemu-args` does not.
pub(super) fn firmware_detected(
    config: &Config,
    existed: bool,
    record: Option<&crate::state::FirmwareRecord>,
    base: &Path,
    found: Detection,
    records: bool,
) -> Result<Plan, FirmwareError> {
    let detected = if found.uefi {
        FirmwareKind::Uefi
    } else {
        FirmwareKind::Bios
    };
    let outcome = if records {
        "this VM keeps it from now on"
    } else {
        "nothing is recorded yet: the first boot decides, from this base"
    };
    tracing::info!(
        firmware = detected.name(),
        base = %base.display(),
        why = found.why,
        "FIRMWARE=auto chose {} from the base image; {outcome}",
        detected.name()
    );
    let recorded = firmware::recorded(existed, record);
    let vars = firmware::vars_path(&config.pet_dir, &config.hostname);
    firmware::decide(&config.firmware, recorded.as_ref(), vars, Some(detected))
}

/// Whether this VM booted before, as far as a state without a firmware record tells: its state
/// and its pet disk are both there. `config-drive` and `network` write a state but no disk,
/// and a VM that never had a disk has no OS whose firmware could be switched under it: auto
/// still decides for it.
pub(super) fn booted_before(config: &Config, state_exists: bool) -> bool {
    state_exists && config.overlay_path().exists()
}

/// [`firmware()`] for `qemu-args`: where `FIRMWARE=auto` still has to decide, from the base if
/// it is already downloaded, else BIOS with a line saying the first boot decides.
pub(super) fn firmware_preview(
    config: &Config,
    existed: bool,
    record: Option<&crate::state::FirmwareRecord>,
) -> Result<Plan, FirmwareError> {
    if let Some(plan) = firmware(config, existed, record)? {
        return Ok(plan);
    }
    let path = config
        .image_target
        .as_ref()
        .map(|target| target.path(&config.image.dir));
    let base = path.and_then(|path| match crate::image::inspect_file(&path) {
        Ok(Ok(format)) => Some(BaseImage { path, format }),
        _ => None,
    });
    match base {
        Some(base) => {
            let found = detect_boot(&base);
            firmware_detected(config, existed, record, &base.path, found, false)
        }
        None => {
            tracing::info!(
                "FIRMWARE=auto decides at the first boot, from the base image, which is not \
                 downloaded yet: shown as bios"
            );
            let recorded = firmware::recorded(existed, record);
            let vars = firmware::vars_path(&config.pet_dir, &config.hostname);
            firmware::decide(&config.firmware, recorded.as_ref(), vars, None)
        }
    }
}

/// `INSTALL_MEDIA` as a URL: fetched into `IMAGE_DIR` like a base image, with the base's
/// download limits; `IMG_AUTH_FILE`'s credentials are the base's and stay with it.
pub(super) fn media_fetch(config: &Config) -> Option<(ImageConfig, ImageTarget)> {
    let fetch = config.firmware.install_media.as_ref()?.fetch.as_ref()?;
    let image = ImageConfig {
        source: Some(ImageSource::Url(fetch.url.clone())),
        sha256: fetch.sha256.clone(),
        dir: config.image.dir.clone(),
        auth: None,
        fetch: config.image.fetch,
    };
    Some((image, ImageTarget::Name(fetch.name.clone())))
}

/// Creates or reuses the UEFI variable store, and says which.
pub(super) fn prepare_vars(uefi: &Uefi, action: VarsAction) -> Result<(), FirmwareError> {
    let created = firmware::prepare_vars(uefi, action)?;
    match (created, action) {
        (true, VarsAction::Recreate) => {
            tracing::warn!(vars = %uefi.vars.display(), template = %uefi.template.display(), "FIRMWARE_RESET is set: the UEFI variable store was re-created from the template (boot entries and variables reset); unset FIRMWARE_RESET to keep them from now on")
        }
        (true, VarsAction::Keep) => {
            tracing::info!(vars = %uefi.vars.display(), template = %uefi.template.display(), "UEFI variable store created from the template")
        }
        (false, _) => tracing::info!(vars = %uefi.vars.display(), "UEFI variable store reused"),
    }
    Ok(())
}

/// `VM_UUID` and `VM_SERIAL`, each defaulting to the instance id: a UUID the pet state keeps.
fn smbios(config: &Config, instance_id: &str) -> Smbios {
    Smbios {
        uuid: config
            .firmware
            .uuid
            .map_or_else(|| instance_id.to_owned(), |uuid| uuid.to_string()),
        serial: config
            .firmware
            .serial
            .clone()
            .unwrap_or_else(|| instance_id.to_owned()),
    }
}

/// `program` as given when it names a path, else the first match on PATH.
pub(super) fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Each share with its transport decided: its own, else `SHARE_TRANSPORT` (`auto`: virtio-fs
/// when virtiofsd was found, else 9p).
fn share_devices(config: &Config, virtiofsd_found: bool) -> Vec<ShareDevice> {
    let default = match config.guest_io.share_transport {
        ShareTransport::Only(transport) => transport,
        ShareTransport::Auto if virtiofsd_found => Transport::VirtioFs,
        ShareTransport::Auto => Transport::NineP,
    };
    config
        .guest_io
        .shares
        .iter()
        .map(|share| ShareDevice {
            tag: share.tag.clone(),
            backend: match share.transport.unwrap_or(default) {
                Transport::NineP => ShareBackend::NineP {
                    path: share.path.clone(),
                    writable: share.writable,
                },
                Transport::VirtioFs => ShareBackend::VirtioFs {
                    socket: shares::socket_path(&config.runtime_dir, &share.tag),
                },
            },
        })
        .collect()
}

/// The NIC's queue pairs in NAT mode (`NIC_QUEUES` against the vCPUs `compose` will give the
/// VM), decided before the tap is made: its multiqueue flag cannot change later.
pub(super) fn nic_queues(config: &Config) -> Result<u32, QemuError> {
    let sizing = sizing::decide(config.vm.cpus, config.vm.memory, sizing::read_own_limits())?;
    Ok(config.guest_io.nic_queues.resolve(sizing.cpus))
}

/// The VM's NIC: the tap on our bridge (NAT) or passt's socket.
fn nic(wiring: &Wiring) -> Nic {
    match wiring {
        Wiring::Nat { plan, .. } => Nic {
            backend: NicBackend::Tap {
                tap: plan.tap.clone(),
                vhost: plan.vhost_net,
            },
            mac: plan.vm_mac,
            mtu: plan.mtu,
            queues: plan.queues,
        },
        Wiring::Passt(passt) => Nic {
            backend: NicBackend::Stream {
                socket: passt.socket.clone(),
            },
            mac: passt.vm_mac,
            mtu: passt.mtu,
            // passt's stream socket carries one queue.
            queues: 1,
        },
    }
}

/// The pure half of [`decide`]: config + network wiring + host facts → qemu's [`Launch`].
pub(super) fn compose(
    config: &Config,
    wiring: Option<&Wiring>,
    probed: &Probed,
    ignition: Option<&Ignition>,
    firmware: &Plan,
) -> Result<Launch, QemuError> {
    Ok(Launch {
        qemu: config.vm.qemu.clone(),
        name: config.hostname.to_string(),
        accel: probed.accel,
        sizing: sizing::decide(config.vm.cpus, config.vm.memory, probed.limits)?,
        disk: config.overlay_path(),
        base: probed.base.clone().filter(|_| !probed.base_is_iso),
        config_drive: config_drive_path(config),
        nic: wiring.map(nic),
        vnc: (!config.net.no_vnc).then_some(Vnc {
            password: config.vm.vnc_password.is_some(),
        }),
        qmp_socket: qmp_socket(config),
        agent_socket: crate::qemu::agent::socket_path(&config.runtime_dir),
        ignition: ignition.map(|i| i.path.clone()),
        shares: share_devices(config, probed.virtiofsd.is_some()),
        firmware: Firmware {
            machine: firmware.machine,
            uefi: firmware.uefi.as_ref().map(|(uefi, _)| uefi.clone()),
        },
        smbios: None,
        media: probed
            .base
            .iter()
            .filter(|_| probed.base_is_iso)
            .map(|base| base.path.clone())
            .chain(
                config
                    .firmware
                    .install_media
                    .as_ref()
                    .map(|m| m.path.clone()),
            )
            .collect(),
        tpm: config.firmware.tpm.then(|| {
            crate::qemu::tpm::plan(
                &config.pet_dir,
                &config.hostname,
                &config.runtime_dir,
                firmware.machine,
            )
        }),
        extra: config.vm.extra_args.clone(),
    })
}

/// Decides everything qemu's command line depends on; logs the choices that were derived.
/// `base`: the base image `run` just checked, so that its format is not read twice.
/// `ignition`: the Ignition config qemu passes by fw_cfg ([`crate::configdrive::ignition`]).
pub(super) fn decide(
    config: &Config,
    wiring: Option<&Wiring>,
    base: Option<&BaseImage>,
    ignition: Option<&Ignition>,
    firmware: &Plan,
    instance_id: &str,
) -> Result<Launch, QemuError> {
    let probed = probe(config, base)?;
    if let Some(accel::Fallback(reason)) = &probed.fallback {
        tracing::warn!(
            device = KVM_DEVICE,
            %reason,
            "no usable KVM: the VM runs under TCG software emulation, many times slower; {KVM_FIX}"
        );
    }
    if config.guest_io.share_transport == ShareTransport::Auto
        && probed.virtiofsd.is_none()
        && config.guest_io.shares.iter().any(|s| s.transport.is_none())
    {
        tracing::warn!(
            virtiofsd = %config.guest_io.virtiofsd.display(),
            "virtiofsd not found: SHARES go by 9p (slower); install virtiofsd or set VIRTIOFSD"
        );
    }
    let mut launch = compose(config, wiring, &probed, ignition, firmware)?;
    launch.smbios = Some(smbios(config, instance_id));
    tracing::info!(
        cpus = launch.sizing.cpus,
        memory_mib = launch.sizing.memory_mib,
        cpu_limit_millis = ?probed.limits.cpu_millis,
        memory_limit = ?probed.limits.memory,
        "VM size (VM_CPUS/VM_MEMORY, else the container's limits, else 1 CPU and 1GiB)"
    );
    Ok(launch)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use clap::Parser as _;
    use macaddr::MacAddr6;

    use super::*;
    use crate::cli::Cli;
    use crate::config::Hostname;
    use crate::size::{GIB, MIB};

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["kvm-manager"];
        argv.extend_from_slice(args);
        let settings = Cli::try_parse_from(argv).expect("valid arguments").settings;
        let hostname = Hostname::parse("vm-0").expect("valid hostname");
        Config::from_settings(&settings, hostname, Vec::new()).expect("valid")
    }

    fn bios() -> Plan {
        let wanted = config(&[]).firmware;
        crate::qemu::firmware::decide(&wanted, None, PathBuf::from("/pet/vm-0.vars"), None)
            .expect("a first boot")
    }

    fn host(limits: Limits) -> Probed {
        Probed {
            accel: Accel::Tcg,
            fallback: None,
            limits,
            base: None,
            virtiofsd: None,
            base_is_iso: false,
        }
    }

    fn plan() -> Wiring {
        let plan = crate::net::NetPlan {
            uplink: "eth0".into(),
            bridge: "kvmbr0".into(),
            bridge_mac: MacAddr6::new(0x52, 0x54, 0, 0, 0, 1),
            tap: "kvmtap0".into(),
            mtu: 1450,
            slash30: crate::net::Slash30::new(
                Ipv4Addr::new(192, 168, 254, 2),
                Ipv4Addr::new(192, 168, 254, 1),
            )
            .expect("a /30"),
            vm_mac: MacAddr6::new(0x52, 0x54, 0, 0, 0, 2),
            pod_ip: Ipv4Addr::new(10, 0, 0, 5),
            pod_prefix: 24,
            excluded_tcp_ports: Vec::new(),
            vhost_net: true,
            queues: 1,
            ipv6: None,
            no_ipv6_because: None,
        };
        Wiring::Nat {
            plan,
            nft: PathBuf::from("nft"),
        }
    }

    #[test]
    fn a_base_run_already_checked_is_not_read_again() {
        // The file does not exist: read again, it would be named qcow2.
        let known = BaseImage {
            path: PathBuf::from("/nonexistent/base.img"),
            format: DiskFormat::Raw { size: 1 << 20 },
        };
        let probed = probe(&config(&["--accel", "tcg"]), Some(&known)).expect("probes");
        let base = probed.base.expect("a base");
        assert_eq!(base.format, BaseFormat::Raw);
        assert_eq!(base.path, PathBuf::from("/nonexistent/base.img"));
    }

    #[test]
    fn the_container_limits_size_the_vm_unless_vm_cpus_and_vm_memory_say_otherwise() {
        let limits = Limits {
            cpu_millis: Some(2500),
            memory: Some(4 * GIB),
        };
        let launch = compose(&config(&[]), None, &host(limits), None, &bios()).expect("composes");
        assert_eq!(launch.sizing.cpus, 3);
        assert_eq!(launch.sizing.memory_mib, (4 * GIB - 512 * MIB) / MIB);
        let launch = compose(
            &config(&["--vm-cpus", "1", "--vm-memory", "2G"]),
            None,
            &host(limits),
            None,
            &bios(),
        )
        .expect("composes");
        assert_eq!((launch.sizing.cpus, launch.sizing.memory_mib), (1, 2048));
    }

    #[test]
    fn a_memory_limit_too_small_for_qemu_is_a_sizing_error() {
        let tiny = Limits {
            cpu_millis: None,
            memory: Some(200 * MIB),
        };
        let err = compose(&config(&[]), None, &host(tiny), None, &bios()).expect_err("too small");
        assert!(matches!(err, QemuError::Sizing(_)), "{err}");
    }

    #[test]
    fn the_plan_becomes_the_nic_and_no_vnc_drops_the_display() {
        let launch = compose(
            &config(&["--no-vnc"]),
            Some(&plan()),
            &host(Limits::default()),
            None,
            &bios(),
        )
        .expect("composes");
        let nic = launch.nic.expect("a NIC");
        assert_eq!(
            nic.backend,
            NicBackend::Tap {
                tap: "kvmtap0".into(),
                vhost: true
            }
        );
        assert_eq!(nic.mac, MacAddr6::new(0x52, 0x54, 0, 0, 0, 2));
        assert_eq!(nic.mtu, 1450);
        assert!(launch.vnc.is_none());
        assert_eq!(launch.accel, Accel::Tcg);
        assert_eq!(launch.disk, PathBuf::from("/pet/vm-0.qcow2"));
        assert_eq!(launch.qmp_socket, config(&[]).runtime_dir.join("qmp.sock"));
    }

    #[test]
    fn vnc_has_a_password_only_when_vnc_password_is_set_and_the_base_comes_from_the_probe() {
        let mut probed = host(Limits::default());
        probed.base = Some(Base {
            path: PathBuf::from("/images/base.raw"),
            format: BaseFormat::Raw,
        });
        let launch = compose(&config(&[]), None, &probed, None, &bios()).expect("composes");
        assert_eq!(launch.vnc, Some(Vnc { password: false }));
        assert_eq!(launch.base, probed.base);
        assert!(launch.nic.is_none());
        assert_eq!(
            launch.config_drive,
            Some(config(&[]).runtime_dir.join("config-drive.iso"))
        );
    }

    #[test]
    fn shares_go_by_virtio_fs_when_virtiofsd_is_found_else_by_9p_unless_they_name_one() {
        let config = config(&["--shares", "a=/a,b=/b:rw:9p,c=/c:virtiofs"]);
        let kinds = |found: bool| -> Vec<&'static str> {
            share_devices(&config, found)
                .iter()
                .map(|d| match d.backend {
                    ShareBackend::NineP { .. } => "9p",
                    ShareBackend::VirtioFs { .. } => "virtiofs",
                })
                .collect()
        };
        assert_eq!(kinds(true), ["virtiofs", "9p", "virtiofs"]);
        assert_eq!(kinds(false), ["9p", "9p", "virtiofs"]);
        let forced = super::tests::config(&["--shares", "a=/a", "--share-transport", "9p"]);
        assert!(matches!(
            share_devices(&forced, true)[0].backend,
            ShareBackend::NineP { .. }
        ));
        let launch =
            compose(&config, None, &host(Limits::default()), None, &bios()).expect("composes");
        assert_eq!(
            launch.shares[0].backend,
            ShareBackend::NineP {
                path: "/a".into(),
                writable: false
            },
            "no virtiofsd in the probe: 9p"
        );
    }

    #[test]
    fn under_firmware_auto_machine_and_the_tpm_device_follow_what_the_base_boots_with() {
        let config = config(&["--tpm", "2.0"]);
        let decided = |detected| {
            crate::qemu::firmware::decide(
                &config.firmware,
                None,
                PathBuf::from("/pet/vm-0.vars"),
                Some(detected),
            )
            .expect("a first boot")
        };
        let probed = host(Limits::default());
        let uefi =
            compose(&config, None, &probed, None, &decided(FirmwareKind::Uefi)).expect("composes");
        assert_eq!(uefi.firmware.machine, crate::config::Machine::Q35);
        assert!(uefi.firmware.uefi.is_some());
        assert_eq!(uefi.tpm.expect("a TPM").device, "tpm-crb");
        let bios =
            compose(&config, None, &probed, None, &decided(FirmwareKind::Bios)).expect("composes");
        assert_eq!(bios.firmware.machine, crate::config::Machine::Pc);
        assert_eq!(bios.tpm.expect("a TPM").device, "tpm-tis");
    }
}

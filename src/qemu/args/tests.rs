//! Golden argv files in tests/golden/qemu-args/: one argument per line, as `qemu-args`
//! prints them. `UPDATE_GOLDEN=1 cargo test` rewrites them after a deliberate change.

use std::path::PathBuf;

use super::*;
use crate::qemu::sizing;
use crate::test_support::assert_golden;

fn golden(name: &str, argv: &[OsString]) {
    let text: String = argv
        .iter()
        .map(|a| format!("{}\n", a.to_string_lossy()))
        .collect();
    assert_golden("qemu-args", &format!("{name}.txt"), &text);
}

fn base() -> Launch {
    Launch {
        qemu: "qemu-system-x86_64".into(),
        name: "vm-0".into(),
        accel: Accel::Kvm,
        sizing: Sizing {
            cpus: 2,
            memory_mib: 2048,
        },
        disk: "/pet/vm-0.qcow2".into(),
        base: Some(Base {
            path: "/image/debian-12.qcow2".into(),
            format: BaseFormat::Qcow2,
        }),
        config_drive: Some("/run/kvm-manager/config-drive.iso".into()),
        nic: Some(Nic {
            backend: NicBackend::Tap {
                tap: "kvm-tap0".into(),
                vhost: true,
            },
            mac: MacAddr6::new(0x52, 0x54, 0, 0x12, 0x34, 0x56),
            mtu: 1450,
            queues: 1,
        }),
        vnc: Some(Vnc { password: false }),
        qmp_socket: "/run/kvm-manager/qmp.sock".into(),
        agent_socket: "/run/kvm-manager/agent.sock".into(),
        ignition: None,
        shares: Vec::new(),
        firmware: Firmware {
            machine: crate::config::Machine::Pc,
            uefi: None,
        },
        media: Vec::new(),
        smbios: None,
        tpm: None,
        extra: Vec::new(),
    }
}

fn fixture_sizing(dir: &str, self_cgroup: &str) -> Sizing {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    sizing::decide(None, None, sizing::read_limits(&root, self_cgroup))
        .expect("fixture limits are large enough")
}

#[test]
fn kvm_with_vnc_and_vhost() {
    golden("kvm", &build(&base()));
}

#[test]
fn tcg_without_vhost() {
    let mut launch = base();
    launch.accel = Accel::Tcg;
    if let Some(nic) = launch.nic.as_mut() {
        nic.backend = NicBackend::Tap {
            tap: "kvm-tap0".into(),
            vhost: false,
        };
    }
    golden("tcg", &build(&launch));
}

#[test]
fn passt_mode_connects_the_nic_to_passts_socket() {
    let mut launch = base();
    launch.accel = Accel::Tcg;
    if let Some(nic) = launch.nic.as_mut() {
        nic.backend = NicBackend::Stream {
            socket: "/run/kvm-manager/passt/passt.sock".into(),
        };
    }
    let argv = build(&launch);
    assert!(
        argv.windows(2).any(|w| w[0] == "-netdev"
            && w[1]
                == "stream,id=net0,server=off,addr.type=unix,addr.path=/run/kvm-manager/passt/passt.sock"),
        "{argv:?}"
    );
    assert!(!argv.iter().any(|a| a.to_string_lossy().contains("tap")));
    golden("passt", &argv);
}

#[test]
fn no_vnc_has_no_display_and_no_tablet() {
    let mut launch = base();
    launch.vnc = None;
    let argv = build(&launch);
    assert!(!argv.iter().any(|a| a == "-vnc" || a == "usb-tablet"));
    golden("no-vnc", &argv);
}

#[test]
fn vnc_password_is_required_but_never_on_the_command_line() {
    let mut launch = base();
    launch.vnc = Some(Vnc { password: true });
    let argv = build(&launch);
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-vnc" && w[1] == ":0,password=on"));
    golden("vnc-password", &argv);
}

#[test]
fn vnc_without_a_password_listens_on_loopback_only() {
    let argv = build(&base());
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "-vnc" && w[1] == "127.0.0.1:0"),
        "{argv:?}"
    );
}

#[test]
fn cgroup_v2_limits_size_the_vm() {
    let mut launch = base();
    launch.sizing = fixture_sizing("cgroup-v2", "0::/\n");
    assert_eq!(
        launch.sizing,
        Sizing {
            cpus: 3,
            memory_mib: 3584
        }
    );
    golden("cgroup-v2", &build(&launch));
}

#[test]
fn cgroup_v1_limits_size_the_vm() {
    let mut launch = base();
    launch.sizing = fixture_sizing(
        "cgroup-v1",
        "5:memory:/kubepods/x\n4:cpu,cpuacct:/kubepods/x\n",
    );
    assert_eq!(
        launch.sizing,
        Sizing {
            cpus: 1,
            memory_mib: 1344
        }
    );
    golden("cgroup-v1", &build(&launch));
}

#[test]
fn extra_args_come_last_unchanged() {
    let mut launch = base();
    launch.extra = vec![
        "-vga".into(),
        "none,odd".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
    ];
    let argv = build(&launch);
    assert_eq!(
        argv[argv.len() - 4..],
        ["-vga", "none,odd", "-device", "virtio-rng-pci"].map(OsString::from)
    );
    golden("extra-args", &argv);
}

#[test]
fn commas_in_paths_and_names_are_doubled() {
    let mut launch = base();
    launch.name = "odd,name".into();
    launch.disk = "/pet/a,b.qcow2".into();
    launch.config_drive = Some("/run/x,y/cd.iso".into());
    launch.qmp_socket = "/run/q,m/qmp.sock".into();
    let argv = build(&launch);
    let joined: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // A -blockdev value is JSON: its commas are not doubled.
    assert!(
        joined.contains(
            &r#"{"discard":"unmap","driver":"file","filename":"/pet/a,b.qcow2","node-name":"disk0-file"}"#
                .to_owned()
        ),
        "{joined:?}"
    );
    assert!(
        joined.contains(&"guest=odd,,name,debug-threads=on".to_owned()),
        "{joined:?}"
    );
    golden("commas", &argv);
}

#[test]
fn without_config_drive_or_nic_there_is_no_cdrom_or_netdev() {
    let mut launch = base();
    launch.config_drive = None;
    launch.nic = None;
    let argv = build(&launch);
    assert!(!argv
        .iter()
        .any(|a| a == "-netdev" || a.to_string_lossy().starts_with("ide-cd")));
}

#[test]
fn the_base_is_read_only_with_its_format_named_and_no_backing_of_its_own() {
    let argv = build(&base());
    let nodes: Vec<serde_json::Value> = argv
        .windows(2)
        .filter(|w| w[0] == "-blockdev")
        .map(|w| serde_json::from_str(&w[1].to_string_lossy()).expect("JSON"))
        .collect();
    let node = |name: &str| {
        nodes
            .iter()
            .find(|n| n["node-name"] == name)
            .unwrap_or_else(|| panic!("no node {name}: {nodes:?}"))
    };
    assert_eq!(node("base-file")["filename"], "/image/debian-12.qcow2");
    assert_eq!(node("base")["driver"], "qcow2");
    assert_eq!(node("base")["read-only"], true);
    assert!(node("base")["backing"].is_null());
    assert!(node("base")
        .as_object()
        .expect("object")
        .contains_key("backing"));
    assert_eq!(node("disk0")["backing"], "base");
    assert_eq!(node("disk0")["file"], "disk0-file");
    let device = argv
        .iter()
        .find(|a| a.to_string_lossy().starts_with("virtio-blk-pci"))
        .expect("disk device");
    assert!(
        device.to_string_lossy().contains("werror=enospc"),
        "{device:?}"
    );
}

#[test]
fn a_raw_base_is_opened_as_raw() {
    let mut launch = base();
    launch.base = Some(Base {
        path: "/image/disk.img".into(),
        format: BaseFormat::Raw,
    });
    let argv = build(&launch);
    assert!(argv.contains(&OsString::from(
        r#"{"driver":"raw","file":"base-file","node-name":"base","read-only":true}"#
    )));
    golden("raw-base", &argv);
}

#[test]
fn an_ignition_config_goes_by_fw_cfg_as_opt_com_coreos_config() {
    let mut launch = base();
    launch.ignition = Some("/run/kvm-manager/ignition.json".into());
    let argv = build(&launch);
    assert!(
        argv.windows(2).any(|w| w[0] == "-fw_cfg"
            && w[1] == "name=opt/com.coreos/config,file=/run/kvm-manager/ignition.json"),
        "{argv:?}"
    );
    assert!(!build(&base()).iter().any(|a| a == "-fw_cfg"));
    golden("ignition", &argv);
}

#[test]
fn a_multiqueue_nic_has_one_queue_pair_per_queue_and_vectors_for_them() {
    let mut launch = base();
    launch.sizing.cpus = 4;
    if let Some(nic) = launch.nic.as_mut() {
        nic.queues = 4;
    }
    let argv = build(&launch);
    assert!(
        argv.windows(2).any(|w| w[0] == "-netdev"
            && w[1] == "tap,id=net0,ifname=kvm-tap0,script=no,downscript=no,vhost=on,queues=4"),
        "{argv:?}"
    );
    assert!(
        argv.iter().any(|a| a
            .to_string_lossy()
            .ends_with(",host_mtu=1450,mq=on,vectors=10")),
        "{argv:?}"
    );
    assert!(!build(&base())
        .iter()
        .any(|a| a.to_string_lossy().contains("mq=on")));
    golden("multiqueue", &argv);
}

#[test]
fn shares_add_their_devices_and_virtio_fs_shares_the_guest_memory() {
    use crate::qemu::shares::{ShareBackend, ShareDevice};
    let mut launch = base();
    launch.shares = vec![
        ShareDevice {
            tag: "config".into(),
            backend: ShareBackend::NineP {
                path: "/etc/app".into(),
                writable: false,
            },
        },
        ShareDevice {
            tag: "data".into(),
            backend: ShareBackend::VirtioFs {
                socket: "/run/kvm-manager/virtiofsd-data.sock".into(),
            },
        },
    ];
    let argv = build(&launch);
    assert!(
        argv.windows(2).any(
            |w| w[0] == "-object" && w[1] == "memory-backend-memfd,id=mem0,size=2048M,share=on"
        ),
        "{argv:?}"
    );
    golden("shares", &argv);
}

#[test]
fn uefi_on_q35_maps_ovmf_code_read_only_and_the_vms_own_variable_store() {
    let mut launch = base();
    launch.accel = Accel::Tcg;
    launch.firmware = Firmware {
        machine: crate::config::Machine::Q35,
        uefi: Some(crate::qemu::firmware::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/pet/vm-0.vars".into(),
            template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            secure: false,
        }),
    };
    let argv = build(&launch);
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-machine" && w[1] == "q35,accel=tcg,pflash0=fw-code,pflash1=fw-vars"));
    // The template itself is never handed to qemu: the guest writes only its own copy.
    assert!(!argv
        .iter()
        .any(|a| a.to_string_lossy().contains("OVMF_VARS")));
    golden("uefi-q35", &argv);
}

#[test]
fn bios_on_q35_has_no_flash() {
    let mut launch = base();
    launch.firmware.machine = crate::config::Machine::Q35;
    let argv = build(&launch);
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-machine" && w[1] == "q35,accel=kvm"));
    assert!(!argv.iter().any(|a| a.to_string_lossy().contains("pflash")));
}

#[test]
fn a_tpm_is_swtpms_socket_behind_crb_on_q35() {
    let mut launch = base();
    launch.accel = Accel::Tcg;
    launch.firmware.machine = crate::config::Machine::Q35;
    let hostname = crate::config::Hostname::parse("vm-0").expect("valid");
    launch.tpm = Some(crate::qemu::tpm::plan(
        std::path::Path::new("/pet"),
        &hostname,
        std::path::Path::new("/run/kvm-manager"),
        crate::config::Machine::Q35,
    ));
    let argv = build(&launch);
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-device" && w[1] == "tpm-crb,tpmdev=tpm0"));
    golden("tpm-q35", &argv);
}

#[test]
fn secure_boot_turns_on_smm_and_guards_the_flash() {
    let mut launch = base();
    launch.accel = Accel::Tcg;
    launch.firmware = Firmware {
        machine: crate::config::Machine::Q35,
        uefi: Some(crate::qemu::firmware::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into(),
            vars: "/pet/vm-0.vars".into(),
            template: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd".into(),
            secure: true,
        }),
    };
    let argv = build(&launch);
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-machine"
            && w[1] == "q35,accel=tcg,pflash0=fw-code,pflash1=fw-vars,smm=on"));
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-global" && w[1] == "driver=cfi.pflash01,property=secure,value=on"));
    golden("uefi-secure", &argv);
}

#[test]
fn an_installer_iso_and_install_media_are_read_only_cdroms_after_the_disk() {
    let mut launch = base();
    launch.base = None;
    launch.media = vec!["/image/installer.iso".into(), "/media/drivers.iso".into()];
    let argv = build(&launch);
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-device" && w[1] == "ide-cd,drive=media0,bus=ide.1,unit=1,bootindex=2"));
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-device" && w[1] == "ide-cd,drive=media1,bus=ide.0,unit=0,bootindex=3"));
    golden("install-media", &argv);
}

#[test]
fn the_smbios_uuid_and_serial_are_the_vms_identity() {
    let mut launch = base();
    launch.smbios = Some(Smbios {
        uuid: "5f0c1b2e-8a47-4c1e-9d3a-0b6f2e7c9a10".into(),
        serial: "SN,1".into(),
    });
    let argv = build(&launch);
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-uuid" && w[1] == "5f0c1b2e-8a47-4c1e-9d3a-0b6f2e7c9a10"));
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "-smbios" && w[1] == "type=1,serial=SN,,1"));
}

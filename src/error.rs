//! The top-level error: wraps each module's error, decides the exit code, and is printed once
//! as a chain ([`crate::logging::render_chain`]) by [`crate::app::main`]. It only points down:
//! it imports every module's error, and only `app` (above it) imports it.

use crate::config::ConfigError;
use crate::configdrive::ConfigDriveError;
use crate::http::HttpError;
use crate::image::owner::OwnerError;
use crate::image::ImageError;
use crate::lan::dhcp::DhcpError;
use crate::lan::dns::DnsError;
use crate::lan::LanError;
use crate::logging::LogError;
use crate::net::NetError;
use crate::pid1::Pid1Error;
use crate::qemu::firmware::FirmwareError;
use crate::qemu::tpm::TpmError;
use crate::qemu::virtiofsd::ShareError;
use crate::qemu::QemuError;
use crate::state::StateError;

/// Exit codes, documented in the README and in `--help`.
pub(crate) mod exit {
    pub(crate) const INTERNAL: u8 = 1;
    pub(crate) const CONFIG: u8 = 2;
    pub(crate) const IMAGE: u8 = 3;
    pub(crate) const NETWORK: u8 = 4;
    pub(crate) const CONFIG_DRIVE: u8 = 5;
    pub(crate) const QEMU_START: u8 = 6;
    /// The guest ignored the ACPI power button for SHUTDOWN_TIMEOUT; qemu was made to quit.
    pub(crate) const SHUTDOWN_FORCED: u8 = 7;
    /// Another kvm-manager owns this pet (`PET_DIR/<hostname>.lock`); nothing was changed.
    pub(crate) const PET_OWNED: u8 = 8;
    /// A virtio-fs share's virtiofsd could not start, or died under the running VM (which was
    /// then stopped).
    pub(crate) const SHARE: u8 = 9;
    /// swtpm (`TPM=2.0`) died under the running VM, or refused to start.
    pub(crate) const TPM: u8 = 10;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("the DHCP server failed")]
    Dhcp(#[from] DhcpError),
    #[error("the DNS forwarder failed")]
    Dns(#[from] DnsError),
    #[error("could not start logging")]
    Log(#[from] LogError),
    #[error("supervisor failed")]
    Pid1(#[from] Pid1Error),
    #[error("could not start the HTTP server")]
    Http(#[from] HttpError),
    #[error("qemu failed")]
    Qemu(#[from] QemuError),
    #[error("the VM's IPv6 services failed")]
    Ipv6(#[from] crate::lan::ipv6::Ipv6Error),
    #[error("could not set up the pod network for the VM")]
    Net(#[from] NetError),
    #[error("could not prepare the VM's disk")]
    Image(#[from] ImageError),
    #[error("could not take ownership of this VM's pet in PET_DIR")]
    Owner(#[from] OwnerError),
    #[error("could not load this VM's persisted state in PET_DIR")]
    State(#[from] StateError),
    #[error("could not build the config drive")]
    ConfigDrive(#[from] ConfigDriveError),
    #[error("a virtio-fs share failed")]
    Share(#[from] ShareError),
    #[error("backup or restore failed")]
    Backup(#[from] crate::backup::BackupError),
    #[error("could not set up the VM's firmware")]
    Firmware(#[from] FirmwareError),
    #[error("the VM's TPM failed")]
    Tpm(#[from] TpmError),
}

/// The LAN services' error keeps its own top line ("the DHCP server failed", "the DNS forwarder
/// failed"), as each server's error did before they were started together.
impl From<LanError> for Error {
    fn from(error: LanError) -> Self {
        match error {
            LanError::Dhcp(e) => Error::Dhcp(e),
            LanError::Dns(e) => Error::Dns(e),
            // The IPv6 side's sockets (issue 23): a network error like the rest.
            LanError::Ipv6(e) => Error::Ipv6(e),
        }
    }
}

impl Error {
    /// The exit code, decided here for every nested variant: the modules below report what
    /// went wrong and know no exit-code table (as Firecracker's `main.rs` maps its errors).
    /// The matches name every variant, so a new one cannot get a code by accident.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Log(_) => exit::CONFIG,
            Error::Dhcp(_) | Error::Dns(_) | Error::Net(_) | Error::Http(_) => exit::NETWORK,
            Error::Ipv6(_) => exit::NETWORK,
            Error::Pid1(e) => pid1_code(e),
            Error::Image(e) => image_code(e),
            Error::State(_) => exit::IMAGE,
            Error::Owner(e) => owner_code(e),
            Error::Qemu(e) => qemu_code(e),
            Error::ConfigDrive(_) => exit::CONFIG_DRIVE,
            Error::Share(_) => exit::SHARE,
            Error::Backup(e) => backup_code(e),
            Error::Firmware(e) => firmware_code(e),
            Error::Tpm(e) => tpm_code(e),
        }
    }
}

/// A restore that cannot or must not touch the pet disk is a PET_DIR error (3); a backup that
/// failed changed nothing of the VM (1).
fn backup_code(error: &crate::backup::BackupError) -> u8 {
    use crate::backup::BackupError as B;
    match error {
        B::Checksum { .. } | B::PetExists { .. } | B::NoBase { .. } | B::BadManifest { .. } => {
            exit::IMAGE
        }
        B::Io { .. }
        | B::Qmp(_)
        | B::Create { .. }
        | B::Job(_)
        | B::Cancelled
        | B::NoIncremental(_)
        | B::Busy
        | B::NoDir { .. }
        | B::Tool { .. }
        | B::Spawn { .. }
        | B::Connect { .. }
        | B::Refused(_) => exit::INTERNAL,
    }
}

fn pid1_code(error: &Pid1Error) -> u8 {
    match error {
        Pid1Error::Spawn { .. } => exit::QEMU_START,
        Pid1Error::BlockSignals(_)
        | Pid1Error::SignalFd(_)
        | Pid1Error::Subreaper(_)
        | Pid1Error::Runtime(_)
        | Pid1Error::ReaperGone(_) => exit::INTERNAL,
    }
}

fn qemu_code(error: &QemuError) -> u8 {
    match error {
        QemuError::EarlyExit { status, .. } if status.code() != 0 => status.code(),
        QemuError::Sizing(_) => exit::CONFIG,
        QemuError::Reaper(e) => pid1_code(e),
        // `freeze`/`thaw` refused or unreachable: no VM was started or stopped.
        QemuError::Control(_) => exit::INTERNAL,
        QemuError::NotFound { .. }
        | QemuError::Spawn { .. }
        | QemuError::Kvm(_)
        | QemuError::RuntimeDir { .. }
        | QemuError::EarlyExit { .. }
        | QemuError::Qmp(_)
        | QemuError::Console(_)
        | QemuError::VncPassword(_) => exit::QEMU_START,
    }
}

fn image_code(error: &ImageError) -> u8 {
    match error {
        // The shell convention for "killed by a signal".
        ImageError::Interrupted(signal) => 128u8.wrapping_add(*signal as i32 as u8),
        ImageError::IsoNeedsDiskSize { .. } => exit::CONFIG,
        ImageError::NoSource { .. }
        | ImageError::CreateDir { .. }
        | ImageError::Lock { .. }
        | ImageError::HttpClient(_)
        | ImageError::Network { .. }
        | ImageError::BodyBroken { .. }
        | ImageError::ServerStatus { .. }
        | ImageError::ClientStatus { .. }
        | ImageError::BadRange { .. }
        | ImageError::RangeIgnored { .. }
        | ImageError::ShortBody { .. }
        | ImageError::Stalled { .. }
        | ImageError::TooSlow { .. }
        | ImageError::GaveUp { .. }
        | ImageError::Reserve { .. }
        | ImageError::Read { .. }
        | ImageError::Write { .. }
        | ImageError::NoSpace { .. }
        | ImageError::Decompress { .. }
        | ImageError::Checksum { .. }
        | ImageError::NotADisk { .. }
        | ImageError::ExistingInvalid { .. }
        | ImageError::ExistingChecksum { .. }
        | ImageError::Rename { .. }
        | ImageError::Overlay { .. }
        | ImageError::BackingMismatch { .. }
        | ImageError::OverlayInUse { .. }
        | ImageError::NotBlank { .. }
        | ImageError::Internal(_) => exit::IMAGE,
    }
}

fn firmware_code(error: &FirmwareError) -> u8 {
    match error {
        // The operator's setting contradicts the pet: a configuration to fix.
        FirmwareError::Changed { .. } | FirmwareError::UefiOnPc => exit::CONFIG,
        FirmwareError::Missing { .. } => exit::QEMU_START,
        FirmwareError::Vars { .. } => exit::IMAGE,
    }
}

fn tpm_code(error: &TpmError) -> u8 {
    match error {
        // The pet's TPM state is missing or unreadable: a pet-volume problem, like the disk's.
        TpmError::Incomplete { .. } | TpmError::Unreadable { .. } | TpmError::CreateDir { .. } => {
            exit::IMAGE
        }
        TpmError::Spawn(_)
        | TpmError::EarlyExit { .. }
        | TpmError::NoSocket { .. }
        | TpmError::Died { .. } => exit::TPM,
    }
}

fn owner_code(error: &OwnerError) -> u8 {
    match error {
        OwnerError::Held { .. } => exit::PET_OWNED,
        // PET_DIR is the pet's disk: a PET_DIR that cannot be used is a disk problem, in every
        // subcommand.
        OwnerError::CreateDir { .. } | OwnerError::Lock { .. } => exit::IMAGE,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use super::*;
    use crate::config::Hostname;
    use crate::lan::resolv_conf::ResolvConfError;
    use crate::logging::render_chain;
    use crate::qemu::{attach::AttachError, qmp::QmpError};
    use crate::regular_file::RegularFileError;

    #[test]
    fn chain_prints_every_cause_once_in_order() {
        let err = Error::Config(ConfigError::Missing {
            var: "IMG_SOURCE",
            fix: "set it".into(),
        });
        assert_eq!(
            render_chain(&err),
            "error: invalid configuration\n  caused by: IMG_SOURCE (--img-source) is required: set it"
        );
        assert_eq!(err.exit_code(), exit::CONFIG);
    }

    fn denied() -> io::Error {
        io::Error::from(io::ErrorKind::PermissionDenied)
    }

    fn path() -> PathBuf {
        PathBuf::from("/pet/vm-0")
    }

    fn spawn_failed(program: &str) -> Pid1Error {
        Pid1Error::Spawn {
            program: program.into(),
            source: denied(),
        }
    }

    /// At least one error of every top-level variant, with the nested variants that wrap
    /// another error of ours (where two messages meet).
    fn samples() -> Vec<Error> {
        vec![
            ConfigError::Missing {
                var: "IMG_SOURCE",
                fix: "set it".into(),
            }
            .into(),
            DhcpError::Bind {
                bridge: "br0".into(),
                source: denied(),
            }
            .into(),
            DnsError::Bind {
                ip: std::net::Ipv4Addr::new(192, 168, 254, 1).into(),
                bridge: "br0".into(),
                transport: "udp",
                source: denied(),
            }
            .into(),
            DnsError::ResolvConf(ResolvConfError::Read {
                path: "/etc/resolv.conf".into(),
                source: denied(),
            })
            .into(),
            DnsError::ResolvConf(ResolvConfError::Open {
                path: "/etc/resolv.conf".into(),
                source: RegularFileError::Open(denied()),
            })
            .into(),
            crate::lan::ipv6::Ipv6Error::RaSocket {
                bridge: "br0".into(),
                source: denied(),
            }
            .into(),
            LogError::Install("already".into()).into(),
            crate::backup::BackupError::Checksum {
                path: "/backup/vm-S-full.qcow2".into(),
                want: "00".into(),
                got: "11".into(),
            }
            .into(),
            spawn_failed("/bin/true").into(),
            Pid1Error::Runtime(denied()).into(),
            Pid1Error::ReaperGone(7).into(),
            HttpError::Bind {
                port: 8080,
                source: denied(),
            }
            .into(),
            QemuError::Spawn {
                qemu: "/usr/bin/qemu-system-x86_64".into(),
                source: denied(),
            }
            .into(),
            QemuError::Reaper(Pid1Error::ReaperGone(7)).into(),
            QemuError::RuntimeDir {
                path: "/run/kvm-manager".into(),
                source: denied(),
            }
            .into(),
            QemuError::Qmp(QmpError::Connect {
                path: "/run/kvm-manager/qmp.sock".into(),
                source: denied(),
            })
            .into(),
            QemuError::VncPassword(QmpError::Closed).into(),
            QemuError::Console(AttachError::Listen {
                path: "/run/kvm-manager/console.sock".into(),
                source: denied(),
            })
            .into(),
            NetError::NftSpawn(spawn_failed("nft")).into(),
            NetError::NftSpawn(Pid1Error::ReaperGone(7)).into(),
            NetError::Tap {
                name: "tap0".into(),
                source: denied(),
            }
            .into(),
            ImageError::CreateDir {
                dir: "/images".into(),
                source: denied(),
            }
            .into(),
            ImageError::Overlay {
                path: path(),
                source: denied(),
            }
            .into(),
            OwnerError::CreateDir {
                dir: path(),
                source: denied(),
            }
            .into(),
            OwnerError::Lock {
                path: path(),
                source: denied(),
            }
            .into(),
            StateError::Write {
                path: path(),
                source: denied(),
            }
            .into(),
            ConfigDriveError::Write {
                path: "/run/config-drive.iso".into(),
                source: denied(),
            }
            .into(),
            ConfigDriveError::BuildIso(hadris_fs::PathError::new(
                hadris_fs::ErrorKind::InvalidInput,
                "a sample",
            ))
            .into(),
            crate::qemu::virtiofsd::ShareError::Lost {
                tag: "data".into(),
                pid: 42,
            }
            .into(),
            firmware_changed().into(),
            FirmwareError::Missing {
                path: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            }
            .into(),
            FirmwareError::Vars {
                path: "/pet/vm-0.vars".into(),
                source: denied(),
            }
            .into(),
            FirmwareError::UefiOnPc.into(),
            TpmError::Died {
                status: crate::pid1::ExitStatus::Signaled(nix::sys::signal::Signal::SIGKILL),
                last_words: String::new(),
            }
            .into(),
        ]
    }

    fn firmware_changed() -> FirmwareError {
        use crate::config::{Firmware, Machine};
        use crate::state::FirmwareRecord;
        let record = |firmware, machine| FirmwareRecord {
            firmware,
            machine,
            vars_template: None,
        };
        FirmwareError::Changed {
            recorded: record(Firmware::Bios, Machine::Pc),
            wanted: record(Firmware::Uefi, Machine::Q35),
        }
    }

    #[test]
    fn a_firmware_change_on_an_existing_vm_is_a_configuration_error() {
        assert_eq!(Error::from(firmware_changed()).exit_code(), exit::CONFIG);
        assert_eq!(
            Error::from(FirmwareError::UefiOnPc).exit_code(),
            exit::CONFIG
        );
    }

    /// Every run of three words of `message`, lowercased, punctuation and quotes aside, that
    /// says something: a run that starts with an article names a thing ("the DHCP server"),
    /// and two levels may name the same thing; they may not say the same ("could not start").
    fn phrases(message: &str) -> Vec<String> {
        let words: Vec<String> = message
            .split(|c: char| c.is_whitespace() || ",;:()\"'.".contains(c))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        words
            .windows(3)
            .filter(|w| !["the", "a", "an"].contains(&w[0].as_str()))
            .map(|w| w.join(" "))
            .collect()
    }

    #[test]
    fn no_chain_says_the_same_words_twice_in_a_row() {
        let samples = samples();
        let mut covered = std::collections::BTreeSet::new();
        let mut failures = Vec::new();
        for error in &samples {
            // Names every variant: a new one fails to compile until it has a sample.
            covered.insert(match error {
                Error::Config(_) => "config",
                Error::Dhcp(_) => "dhcp",
                Error::Dns(_) => "dns",
                Error::Ipv6(_) => "ipv6",
                Error::Log(_) => "log",
                Error::Pid1(_) => "pid1",
                Error::Http(_) => "http",
                Error::Qemu(_) => "qemu",
                Error::Net(_) => "net",
                Error::Image(_) => "image",
                Error::Owner(_) => "owner",
                Error::State(_) => "state",
                Error::ConfigDrive(_) => "config-drive",
                Error::Share(_) => "share",
                Error::Backup(_) => "backup",
                Error::Firmware(_) => "firmware",
                Error::Tpm(_) => "tpm",
            });
            let mut levels = vec![error.to_string()];
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                levels.push(cause.to_string());
                source = cause.source();
            }
            for pair in levels.windows(2) {
                let upper = phrases(&pair[0]);
                let repeated: Vec<String> = phrases(&pair[1])
                    .into_iter()
                    .filter(|p| upper.contains(p))
                    .collect();
                if !repeated.is_empty() {
                    failures.push(format!(
                        "{repeated:?} twice in a row:\n{}",
                        render_chain(error)
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert_eq!(covered.len(), 17, "a sample of every variant: {covered:?}");
    }

    #[test]
    fn an_unusable_pet_dir_is_named_and_exits_3_like_every_disk_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("write");
        // A directory cannot be made beneath a regular file, not even by root.
        let pet_dir = file.join("pet");
        let host = Hostname::parse("vm-0").expect("valid hostname");
        let err = Error::from(
            crate::image::owner::acquire(&pet_dir, &host, "run").expect_err("unusable PET_DIR"),
        );
        assert_eq!(err.exit_code(), exit::IMAGE);
        let chain = render_chain(&err);
        assert!(chain.contains("could not create PET_DIR"), "{chain}");
        assert!(!chain.contains("RUNTIME_DIR"), "{chain}");
    }

    #[test]
    fn a_second_owner_exits_8() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = Hostname::parse("vm-0").expect("valid hostname");
        let _first = crate::image::owner::acquire(dir.path(), &host, "run").expect("first owner");
        let err = crate::image::owner::acquire(dir.path(), &host, "image").expect_err("second");
        assert_eq!(Error::from(err).exit_code(), exit::PET_OWNED);
    }

    #[test]
    fn a_lost_qemu_is_an_internal_error_not_an_invented_exit_status() {
        let err = Error::from(QemuError::Reaper(Pid1Error::ReaperGone(7)));
        assert_eq!(err.exit_code(), exit::INTERNAL);
        assert!(render_chain(&err).contains("process 7"));
    }

    #[test]
    fn a_share_whose_virtiofsd_failed_exits_9() {
        let err = Error::from(crate::qemu::virtiofsd::ShareError::Lost {
            tag: "data".into(),
            pid: 42,
        });
        assert_eq!(err.exit_code(), exit::SHARE);
        assert_eq!(exit::SHARE, 9);
    }
}

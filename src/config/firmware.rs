//! The VM's firmware, board and TPM: `FIRMWARE`, `MACHINE`, `FIRMWARE_RESET`, `TPM`.
//!
//! What is recorded in the pet state (and refused when it changes) is decided in
//! [`crate::qemu::firmware`]; here only what the operator asked for is parsed.

use serde::{Deserialize, Serialize};

use super::{choice, invalid, non_empty, ConfigError, ImageUrl, COMPRESSION_SUFFIXES};
use crate::cli::Settings;

/// `FIRMWARE`: SeaBIOS or OVMF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
    /// OVMF's Secure Boot build with Microsoft's keys enrolled, q35 with SMM.
    #[serde(rename = "uefi-secure")]
    UefiSecure,
}

impl Firmware {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Bios => "bios",
            Self::Uefi => "uefi",
            Self::UefiSecure => "uefi-secure",
        }
    }
}

/// `MACHINE`: qemu's board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// i440fx + PIIX: the widest legacy support.
    Pc,
    /// Q35 + ICH9 (AHCI, PCIe): what UEFI guests expect.
    Q35,
}

impl Machine {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pc => "pc",
            Self::Q35 => "q35",
        }
    }
}

/// `FIRMWARE` as asked: `auto` is resolved at the VM's first boot, from its base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareChoice {
    Auto,
    Only(Firmware),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareConfig {
    pub firmware: FirmwareChoice,
    /// `MACHINE`, when set; else it follows the resolved firmware (`q35` for UEFI, `pc` for
    /// BIOS) or, under `FIRMWARE=auto`, what the VM first booted with.
    pub machine: Option<Machine>,
    /// `FIRMWARE_RESET`: accept a firmware or machine different from the recorded one, and
    /// re-create the UEFI variable store.
    pub reset: bool,
    /// `TPM=2.0`: a software TPM (swtpm) with its state in the pet volume.
    pub tpm: bool,
    /// `INSTALL_MEDIA`: another ISO (e.g. a driver disk) as a second read-only CD-ROM.
    pub install_media: Option<InstallMedia>,
    /// `VM_UUID`: the SMBIOS system UUID; default: the pet state's instance id.
    pub uuid: Option<uuid::Uuid>,
    /// `VM_SERIAL`: the SMBIOS system serial number; default: the pet state's instance id.
    pub serial: Option<String>,
}

/// `INSTALL_MEDIA`: a path in the container, or an http(s) URL fetched into `IMAGE_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallMedia {
    /// Where qemu opens it: the path given, or `IMAGE_DIR/<the URL's file name>`.
    pub path: std::path::PathBuf,
    /// A URL: fetched, verified and cached there the way a base image is.
    pub fetch: Option<MediaFetch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFetch {
    pub url: ImageUrl,
    /// The file name in `IMAGE_DIR`: the URL's last segment, minus a compression suffix.
    pub name: String,
    /// `INSTALL_MEDIA_SHA256`, lowercase hex.
    pub sha256: Option<String>,
}

fn parse_install_media(settings: &Settings) -> Result<Option<InstallMedia>, ConfigError> {
    let sha256 = non_empty(&settings.install_media_sha256)
        .map(|raw| super::image::parse_sha256_of("INSTALL_MEDIA_SHA256", raw))
        .transpose()?;
    let Some(raw) = non_empty(&settings.install_media) else {
        return match sha256 {
            Some(_) => Err(invalid(
                "INSTALL_MEDIA_SHA256",
                settings.install_media_sha256.as_deref().unwrap_or_default(),
                "INSTALL_MEDIA is not set",
                "set INSTALL_MEDIA to the ISO's URL, or unset INSTALL_MEDIA_SHA256",
            )),
            None => Ok(None),
        };
    };
    const FIX: &str = "give an http(s) URL of the ISO, or its absolute path in the container \
                       (e.g. a volume mounted at /media)";
    if raw.starts_with('/') {
        if sha256.is_some() {
            return Err(invalid(
                "INSTALL_MEDIA_SHA256",
                settings.install_media_sha256.as_deref().unwrap_or_default(),
                "INSTALL_MEDIA is a path, which is not fetched",
                "unset INSTALL_MEDIA_SHA256, or make INSTALL_MEDIA a URL",
            ));
        }
        return Ok(Some(InstallMedia {
            path: std::path::PathBuf::from(raw),
            fetch: None,
        }));
    }
    if !raw.contains("://") {
        return Err(invalid("INSTALL_MEDIA", raw, "not an absolute path", FIX));
    }
    let shown = super::url::redact_raw(raw);
    let url = url::Url::parse(raw)
        .map_err(|e| invalid("INSTALL_MEDIA", &shown, format!("not a URL ({e})"), FIX))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            "INSTALL_MEDIA",
            &shown,
            "not an http(s) URL with a host",
            FIX,
        ));
    }
    let url = ImageUrl::new(url);
    let segment = url.last_segment();
    let name = COMPRESSION_SUFFIXES
        .iter()
        .find_map(|suffix| segment.strip_suffix(suffix))
        .unwrap_or(segment)
        .to_owned();
    super::image::check_file_name(&name).map_err(|reason| {
        invalid(
            "INSTALL_MEDIA",
            &shown,
            format!(
                "cannot derive the file name in IMAGE_DIR from it: the last path segment {reason}"
            ),
            "use a URL whose last path segment names the file, e.g. https://host/drivers.iso",
        )
    })?;
    Ok(Some(InstallMedia {
        path: settings.image_dir.join(&name),
        fetch: Some(MediaFetch { url, name, sha256 }),
    }))
}

pub(super) fn parse_firmware(settings: &Settings) -> Result<FirmwareConfig, ConfigError> {
    let firmware = choice(
        "FIRMWARE",
        &settings.firmware,
        &[
            ("auto", FirmwareChoice::Auto),
            ("bios", FirmwareChoice::Only(Firmware::Bios)),
            ("uefi", FirmwareChoice::Only(Firmware::Uefi)),
            ("uefi-secure", FirmwareChoice::Only(Firmware::UefiSecure)),
        ],
    )?;
    let machine = non_empty(&settings.machine)
        .map(|raw| {
            choice(
                "MACHINE",
                raw,
                &[("pc", Machine::Pc), ("q35", Machine::Q35)],
            )
        })
        .transpose()?;
    let uefi = matches!(firmware, FirmwareChoice::Only(f) if f != Firmware::Bios);
    if uefi && machine == Some(Machine::Pc) {
        // OVMF leaves the PIIX IDE controller of `pc` unused, so the config drive (an IDE
        // cdrom) would be invisible to a UEFI guest.
        return Err(invalid(
            "MACHINE",
            settings.machine.as_deref().unwrap_or_default(),
            "UEFI firmware does not see pc's IDE controller, where the config drive sits",
            "use MACHINE=q35 (or unset it) with FIRMWARE=uefi or uefi-secure",
        ));
    }
    let tpm = choice("TPM", &settings.tpm, &[("none", false), ("2.0", true)])?;
    let install_media = parse_install_media(settings)?;
    let uuid = non_empty(&settings.vm_uuid)
        .map(|raw| {
            uuid::Uuid::parse_str(raw).map_err(|e| {
                invalid(
                    "VM_UUID",
                    raw,
                    format!("not a UUID ({e})"),
                    "e.g. VM_UUID=4c4c4544-0042-3510-8052-b4c04f4e3132, or unset it to use the \
                     VM's instance id",
                )
            })
        })
        .transpose()?;
    let serial = match non_empty(&settings.vm_serial) {
        Some(raw) if raw.len() > 64 || !raw.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
            return Err(invalid(
                "VM_SERIAL",
                raw,
                "not at most 64 printable ASCII characters",
                "e.g. VM_SERIAL=SN-0001, or unset it to use the VM's instance id",
            ))
        }
        Some(raw) => Some(raw.to_owned()),
        None => None,
    };
    Ok(FirmwareConfig {
        firmware,
        machine,
        reset: settings.firmware_reset,
        tpm,
        install_media,
        uuid,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    fn parse(args: &[&str]) -> Result<FirmwareConfig, ConfigError> {
        let mut argv = vec!["kvm-manager"];
        argv.extend_from_slice(args);
        parse_firmware(&Cli::try_parse_from(argv).expect("valid arguments").settings)
    }

    #[test]
    fn auto_is_the_default_and_machine_follows_the_firmware_unless_set() {
        let default = parse(&[]).expect("valid");
        assert_eq!(
            (default.firmware, default.machine),
            (FirmwareChoice::Auto, None)
        );
        assert!(!default.reset);
        let uefi = parse(&["--firmware", "UEFI"]).expect("valid");
        assert_eq!(uefi.firmware, FirmwareChoice::Only(Firmware::Uefi));
        let secure = parse(&["--firmware", "uefi-secure"]).expect("valid");
        assert_eq!(secure.firmware, FirmwareChoice::Only(Firmware::UefiSecure));
        assert!(parse(&["--firmware", "uefi-secure", "--machine", "pc"]).is_err());
        let bios_q35 = parse(&["--firmware", "bios", "--machine", "q35"]).expect("valid");
        assert_eq!(bios_q35.machine, Some(Machine::Q35));
        // Under auto, pc is refused only if the base turns out to be UEFI-only.
        let auto_pc = parse(&["--machine", "pc"]).expect("valid");
        assert_eq!(auto_pc.machine, Some(Machine::Pc));
    }

    #[test]
    fn uefi_on_pc_is_refused_naming_machine() {
        let err = parse(&["--firmware", "uefi", "--machine", "pc"]).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("MACHINE (--machine)") && text.contains("q35"),
            "{text}"
        );
    }

    #[test]
    fn install_media_is_an_absolute_path() {
        let media = parse(&["--install-media", "/media/drivers.iso"]).expect("valid");
        assert_eq!(
            media.install_media,
            Some(InstallMedia {
                path: std::path::PathBuf::from("/media/drivers.iso"),
                fetch: None
            })
        );
        let err = parse(&["--install-media", "drivers.iso"]).expect_err("relative");
        assert!(
            err.to_string().contains("INSTALL_MEDIA (--install-media)"),
            "{err}"
        );
    }

    #[test]
    fn install_media_may_be_a_url_fetched_into_image_dir() {
        let digest = "AB".repeat(32);
        let media = parse(&[
            "--install-media",
            "https://mirror.example/virtio/drivers.iso.gz?x=1",
            "--install-media-sha256",
            &digest,
            "--image-dir",
            "/images",
        ])
        .expect("valid")
        .install_media
        .expect("set");
        assert_eq!(media.path, std::path::PathBuf::from("/images/drivers.iso"));
        let fetch = media.fetch.expect("a URL");
        assert_eq!(fetch.name, "drivers.iso");
        assert_eq!(fetch.sha256, Some("ab".repeat(32)));
        for (args, var) in [
            (
                &["--install-media", "ftp://host/a.iso"][..],
                "INSTALL_MEDIA (--install-media)",
            ),
            (
                &["--install-media", "https://host/"],
                "INSTALL_MEDIA (--install-media)",
            ),
            (
                &[
                    "--install-media",
                    "https://host/a.iso",
                    "--install-media-sha256",
                    "12",
                ],
                "INSTALL_MEDIA_SHA256 (--install-media-sha256)",
            ),
            (
                &["--install-media-sha256", &digest],
                "INSTALL_MEDIA_SHA256 (--install-media-sha256)",
            ),
            (
                &[
                    "--install-media",
                    "/media/a.iso",
                    "--install-media-sha256",
                    &digest,
                ],
                "INSTALL_MEDIA_SHA256 (--install-media-sha256)",
            ),
        ] {
            let err = parse(args).expect_err("refused");
            assert!(err.to_string().contains(var), "{args:?}: {err}");
        }
    }

    #[test]
    fn vm_uuid_must_be_a_uuid_and_vm_serial_printable() {
        let set = parse(&[
            "--vm-uuid",
            "4C4C4544-0042-3510-8052-B4C04F4E3132",
            "--vm-serial",
            "SN 1",
        ])
        .expect("valid");
        assert_eq!(
            set.uuid.map(|u| u.to_string()).as_deref(),
            Some("4c4c4544-0042-3510-8052-b4c04f4e3132")
        );
        assert_eq!(set.serial.as_deref(), Some("SN 1"));
        let err = parse(&["--vm-uuid", "not-a-uuid"]).expect_err("refused");
        assert!(err.to_string().contains("VM_UUID (--vm-uuid)"), "{err}");
        let err = parse(&["--vm-serial", "a\tb"]).expect_err("refused");
        assert!(err.to_string().contains("VM_SERIAL (--vm-serial)"), "{err}");
    }

    #[test]
    fn unknown_words_name_the_variable() {
        let err = parse(&["--firmware", "efi"]).expect_err("refused");
        assert!(err.to_string().contains("FIRMWARE (--firmware)"), "{err}");
        let err = parse(&["--machine", "virt"]).expect_err("refused");
        assert!(err.to_string().contains("MACHINE (--machine)"), "{err}");
        let err = parse(&["--tpm", "1.2"]).expect_err("refused");
        assert!(err.to_string().contains("TPM (--tpm)"), "{err}");
        assert!(parse(&["--tpm", "2.0"]).expect("valid").tpm);
    }
}

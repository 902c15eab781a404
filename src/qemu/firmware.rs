//! The VM's firmware: which one, on which board, and its UEFI variable store.
//!
//! [`decide`] is pure: from what the operator asks (`FIRMWARE`, `MACHINE`, `FIRMWARE_RESET`)
//! and what the pet state recorded at the first boot, it returns a [`Plan`] or refuses a
//! change, because switching firmware or board under an installed OS breaks its boot (a BIOS
//! install has no EFI boot entry; Windows sees new hardware). [`prepare_vars`] carries out the
//! plan's variable store: `PET_DIR/<hostname>.vars` is copied once from Debian's OVMF template
//! (temporary name, fsync, rename) and then always reused, so boot entries and variables the
//! guest writes survive restarts and rescheduling with the pet volume.
//!
//! `FIRMWARE=auto` (the default) is resolved here too, once: at the first boot (or with
//! `FIRMWARE_RESET`) from what the base boots with ([`crate::image::boot_detect`]), later from
//! the record, so that a VM never changes firmware because its base image did.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{Firmware, FirmwareChoice, FirmwareConfig, Hostname, Machine};
use crate::state::FirmwareRecord;

/// Debian's `ovmf` package.
pub(crate) const OVMF_DIR: &str = "/usr/share/OVMF";
/// 4 MiB builds: the 2 MiB ones are too small for Secure Boot's key databases.
const OVMF_CODE: &str = "OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "OVMF_VARS_4M.fd";
/// Secure Boot: the build that needs SMM (so the guest OS cannot write the key databases
/// behind the firmware's back), and a template with Microsoft's keys enrolled (shim, Windows).
const OVMF_CODE_SECURE: &str = "OVMF_CODE_4M.secboot.fd";
const OVMF_VARS_SECURE: &str = "OVMF_VARS_4M.ms.fd";

#[derive(Debug, thiserror::Error)]
pub(crate) enum FirmwareError {
    #[error(
        "this VM first booted with FIRMWARE={} MACHINE={}, now FIRMWARE={} MACHINE={} is set; \
         its OS would not boot the same way. Fix: set them back, or set FIRMWARE_RESET=1 to \
         switch deliberately (the UEFI variable store is re-created; see the README on moving \
         a BIOS VM to UEFI)",
        recorded.firmware.name(), recorded.machine.name(),
        wanted.firmware.name(), wanted.machine.name()
    )]
    Changed {
        recorded: FirmwareRecord,
        wanted: FirmwareRecord,
    },
    #[error(
        "FIRMWARE=auto chose UEFI for this base image, but MACHINE=pc is set and UEFI does not \
         see pc's IDE controller, where the config drive sits. Fix: unset MACHINE (or set \
         MACHINE=q35), or set FIRMWARE=bios"
    )]
    UefiOnPc,
    #[error(
        "the OVMF firmware file {} is missing; install Debian's ovmf package in the image",
        path.display()
    )]
    Missing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not create the UEFI variable store {} (is PET_DIR writable?)", path.display())]
    Vars {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The OVMF files of one UEFI VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Uefi {
    /// Read-only code (pflash 0).
    pub code: PathBuf,
    /// The VM's own variable store (pflash 1).
    pub vars: PathBuf,
    pub template: PathBuf,
    /// Secure Boot: SMM on, the flash writable only from SMM.
    pub secure: bool,
}

/// What to do with the variable store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarsAction {
    /// Copy the template if the store is missing (first boot), else reuse it.
    Keep,
    /// `FIRMWARE_RESET`: replace it by a fresh copy of the template.
    Recreate,
}

/// How this start boots, and what the pet state records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub record: FirmwareRecord,
    pub machine: Machine,
    /// `None` for BIOS.
    pub uefi: Option<(Uefi, VarsAction)>,
}

/// The recorded firmware of a pet: `None` before its first boot (`existed`: see
/// `app::launch::booted_before`); a state without a record booted SeaBIOS on `pc`.
pub(crate) fn recorded(existed: bool, record: Option<&FirmwareRecord>) -> Option<FirmwareRecord> {
    match record {
        Some(record) => Some(record.clone()),
        None if existed => Some(FirmwareRecord {
            firmware: Firmware::Bios,
            machine: Machine::Pc,
            vars_template: None,
        }),
        None => None,
    }
}

pub(crate) fn vars_path(pet_dir: &Path, hostname: &Hostname) -> PathBuf {
    pet_dir.join(format!("{hostname}.vars"))
}

/// Whether this start must read the base to resolve `FIRMWARE=auto`: at the VM's first boot,
/// or when `FIRMWARE_RESET` asks for a fresh decision.
pub(crate) fn needs_detection(wanted: &FirmwareConfig, recorded: Option<&FirmwareRecord>) -> bool {
    wanted.firmware == FirmwareChoice::Auto && (recorded.is_none() || wanted.reset)
}

fn default_machine(firmware: Firmware) -> Machine {
    match firmware {
        Firmware::Bios => Machine::Pc,
        Firmware::Uefi | Firmware::UefiSecure => Machine::Q35,
    }
}

/// Decides the firmware of this start. `recorded`: see [`recorded`]. `detected`: what the
/// base boots with, when [`needs_detection`] (`None` there means BIOS: `qemu-args` before the
/// base is downloaded, which says so).
pub(crate) fn decide(
    wanted: &FirmwareConfig,
    recorded: Option<&FirmwareRecord>,
    vars: PathBuf,
    detected: Option<Firmware>,
) -> Result<Plan, FirmwareError> {
    let (firmware, machine) = match (wanted.firmware, recorded, detected) {
        (FirmwareChoice::Only(f), _, _) => (f, default_machine(f)),
        // auto on a VM that booted before: what it booted with, board included.
        (FirmwareChoice::Auto, Some(r), _) if !needs_detection(wanted, recorded) => {
            (r.firmware, r.machine)
        }
        (FirmwareChoice::Auto, _, Some(f)) => (f, default_machine(f)),
        (FirmwareChoice::Auto, _, None) => (Firmware::Bios, Machine::Pc),
    };
    let machine = wanted.machine.unwrap_or(machine);
    if firmware != Firmware::Bios && machine == Machine::Pc {
        return Err(FirmwareError::UefiOnPc);
    }
    let ovmf = Path::new(OVMF_DIR);
    let secure = firmware == Firmware::UefiSecure;
    let (code, template) = if secure {
        (OVMF_CODE_SECURE, OVMF_VARS_SECURE)
    } else {
        (OVMF_CODE, OVMF_VARS)
    };
    let template = ovmf.join(template);
    let record = FirmwareRecord {
        firmware,
        machine,
        vars_template: (firmware != Firmware::Bios).then(|| template.clone()),
    };
    let same = |r: &FirmwareRecord| r.firmware == record.firmware && r.machine == record.machine;
    let record = match recorded {
        // Keep what was recorded (its template too): the store was copied from that one.
        Some(r) if same(r) && !wanted.reset => r.clone(),
        Some(r) if !same(r) && !wanted.reset => {
            return Err(FirmwareError::Changed {
                recorded: r.clone(),
                wanted: record,
            })
        }
        _ => record,
    };
    let action = if wanted.reset {
        VarsAction::Recreate
    } else {
        VarsAction::Keep
    };
    let uefi = (record.firmware != Firmware::Bios).then(|| {
        let uefi = Uefi {
            code: ovmf.join(code),
            vars,
            template: record.vars_template.clone().unwrap_or(template),
            secure,
        };
        (uefi, action)
    });
    Ok(Plan {
        machine: record.machine,
        record,
        uefi,
    })
}

/// Carries out the plan's variable store: copies the template when the store is missing or
/// a reset was asked for, durably; otherwise leaves the store alone. Returns whether it
/// (re)created the store. Checks that the code file is there, so that a missing `ovmf`
/// package is named here rather than in qemu's messages.
pub(crate) fn prepare_vars(uefi: &Uefi, action: VarsAction) -> Result<bool, FirmwareError> {
    std::fs::metadata(&uefi.code).map_err(|source| FirmwareError::Missing {
        path: uefi.code.clone(),
        source,
    })?;
    if action == VarsAction::Keep && uefi.vars.exists() {
        return Ok(false);
    }
    let template = std::fs::read(&uefi.template).map_err(|source| FirmwareError::Missing {
        path: uefi.template.clone(),
        source,
    })?;
    crate::atomic_file::write(&uefi.vars, &template).map_err(|source| FirmwareError::Vars {
        path: uefi.vars.clone(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(firmware: Firmware, machine: Machine, reset: bool) -> FirmwareConfig {
        FirmwareConfig {
            firmware: FirmwareChoice::Only(firmware),
            machine: Some(machine),
            reset,
            tpm: false,
            install_media: None,
            uuid: None,
            serial: None,
        }
    }

    fn vars() -> PathBuf {
        PathBuf::from("/pet/vm-0.vars")
    }

    #[test]
    fn a_first_uefi_boot_records_uefi_q35_and_its_template() {
        let plan = decide(
            &wanted(Firmware::Uefi, Machine::Q35, false),
            None,
            vars(),
            None,
        )
        .expect("decided");
        assert_eq!(plan.record.firmware, Firmware::Uefi);
        assert_eq!(plan.machine, Machine::Q35);
        let (uefi, action) = plan.uefi.expect("uefi");
        assert_eq!(action, VarsAction::Keep);
        assert_eq!(uefi.vars, vars());
        assert_eq!(
            plan.record.vars_template,
            Some(PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"))
        );
    }

    #[test]
    fn secure_boot_uses_the_smm_build_and_microsofts_keys() {
        let plan = decide(
            &wanted(Firmware::UefiSecure, Machine::Q35, false),
            None,
            vars(),
            None,
        )
        .expect("decided");
        let (uefi, _) = plan.uefi.expect("uefi");
        assert!(uefi.secure);
        assert_eq!(
            uefi.code,
            PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
        );
        assert_eq!(
            uefi.template,
            PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
        );
        // uefi and uefi-secure are different firmware: a switch is refused like any other.
        assert!(matches!(
            decide(
                &wanted(Firmware::Uefi, Machine::Q35, false),
                Some(&plan.record),
                vars(),
                None
            ),
            Err(FirmwareError::Changed { .. })
        ));
    }

    #[test]
    fn a_pet_without_a_record_booted_bios_on_pc_and_switching_it_is_refused() {
        let old = recorded(true, None).expect("an existing pet");
        assert_eq!((old.firmware, old.machine), (Firmware::Bios, Machine::Pc));
        assert_eq!(recorded(false, None), None);
        let err = decide(
            &wanted(Firmware::Uefi, Machine::Q35, false),
            Some(&old),
            vars(),
            None,
        )
        .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("FIRMWARE=bios MACHINE=pc"), "{text}");
        assert!(text.contains("FIRMWARE_RESET=1"), "{text}");
        let plan = decide(
            &wanted(Firmware::Bios, Machine::Pc, false),
            Some(&old),
            vars(),
            None,
        )
        .expect("same as before");
        assert_eq!(plan.uefi, None);
    }

    fn auto(machine: Option<Machine>, reset: bool) -> FirmwareConfig {
        FirmwareConfig {
            firmware: FirmwareChoice::Auto,
            machine,
            ..wanted(Firmware::Bios, Machine::Pc, reset)
        }
    }

    #[test]
    fn auto_decides_from_the_base_at_the_first_boot_only() {
        assert!(needs_detection(&auto(None, false), None));
        let uefi = decide(&auto(None, false), None, vars(), Some(Firmware::Uefi)).expect("uefi");
        assert_eq!(
            (uefi.record.firmware, uefi.machine),
            (Firmware::Uefi, Machine::Q35)
        );
        assert!(uefi.uefi.is_some());
        let bios = decide(&auto(None, false), None, vars(), Some(Firmware::Bios)).expect("bios");
        assert_eq!(
            (bios.record.firmware, bios.machine),
            (Firmware::Bios, Machine::Pc)
        );
        // Later starts keep the record, whatever the base says now.
        assert!(!needs_detection(&auto(None, false), Some(&bios.record)));
        let kept = decide(
            &auto(None, false),
            Some(&bios.record),
            vars(),
            Some(Firmware::Uefi),
        )
        .expect("kept");
        assert_eq!(kept.record, bios.record);
        assert_eq!(kept.uefi, None);
        let kept = decide(&auto(None, false), Some(&uefi.record), vars(), None).expect("kept");
        assert_eq!(kept.record, uefi.record);
    }

    #[test]
    fn auto_keeps_an_old_pet_on_bios_and_a_reset_decides_again() {
        let old = recorded(true, None).expect("an existing pet");
        let plan = decide(&auto(None, false), Some(&old), vars(), None).expect("kept");
        assert_eq!(
            (plan.record.firmware, plan.machine),
            (Firmware::Bios, Machine::Pc)
        );
        assert!(needs_detection(&auto(None, true), Some(&old)));
        let plan =
            decide(&auto(None, true), Some(&old), vars(), Some(Firmware::Uefi)).expect("reset");
        assert_eq!(plan.record.firmware, Firmware::Uefi);
        assert_eq!(plan.uefi.expect("uefi").1, VarsAction::Recreate);
    }

    #[test]
    fn under_auto_machine_follows_the_firmware_and_uefi_on_pc_is_refused() {
        let plan = decide(
            &auto(Some(Machine::Q35), false),
            None,
            vars(),
            Some(Firmware::Bios),
        )
        .expect("bios on q35");
        assert_eq!(plan.machine, Machine::Q35);
        let err = decide(
            &auto(Some(Machine::Pc), false),
            None,
            vars(),
            Some(Firmware::Uefi),
        )
        .expect_err("uefi on pc");
        assert!(err.to_string().contains("MACHINE=q35"), "{err}");
        // A MACHINE different from the recorded board is a change, as with any FIRMWARE.
        let old = recorded(true, None).expect("an existing pet");
        assert!(matches!(
            decide(&auto(Some(Machine::Q35), false), Some(&old), vars(), None),
            Err(FirmwareError::Changed { .. })
        ));
    }

    #[test]
    fn a_machine_change_alone_is_refused_too() {
        let old = FirmwareRecord {
            firmware: Firmware::Bios,
            machine: Machine::Pc,
            vars_template: None,
        };
        assert!(matches!(
            decide(
                &wanted(Firmware::Bios, Machine::Q35, false),
                Some(&old),
                vars(),
                None
            ),
            Err(FirmwareError::Changed { .. })
        ));
    }

    #[test]
    fn firmware_reset_accepts_the_change_and_recreates_the_store() {
        let old = recorded(true, None).expect("an existing pet");
        let plan = decide(
            &wanted(Firmware::Uefi, Machine::Q35, true),
            Some(&old),
            vars(),
            None,
        )
        .expect("accepted");
        assert_eq!(plan.record.firmware, Firmware::Uefi);
        assert_eq!(plan.uefi.expect("uefi").1, VarsAction::Recreate);
    }

    #[test]
    fn a_recorded_template_is_kept() {
        let old = FirmwareRecord {
            firmware: Firmware::Uefi,
            machine: Machine::Q35,
            vars_template: Some(PathBuf::from("/old/VARS.fd")),
        };
        let plan = decide(
            &wanted(Firmware::Uefi, Machine::Q35, false),
            Some(&old),
            vars(),
            None,
        )
        .expect("same");
        assert_eq!(plan.record, old);
        assert_eq!(
            plan.uefi.expect("uefi").0.template,
            PathBuf::from("/old/VARS.fd")
        );
    }

    #[test]
    fn the_store_is_copied_once_then_reused_and_replaced_only_on_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let code = dir.path().join("CODE.fd");
        let template = dir.path().join("VARS.fd");
        std::fs::write(&code, b"code").expect("code");
        std::fs::write(&template, b"template").expect("template");
        let uefi = Uefi {
            code,
            vars: dir.path().join("vm-0.vars"),
            template,
            secure: false,
        };
        assert!(prepare_vars(&uefi, VarsAction::Keep).expect("created"));
        std::fs::write(&uefi.vars, b"guest wrote").expect("guest");
        assert!(!prepare_vars(&uefi, VarsAction::Keep).expect("kept"));
        assert_eq!(std::fs::read(&uefi.vars).expect("read"), b"guest wrote");
        assert!(prepare_vars(&uefi, VarsAction::Recreate).expect("recreated"));
        assert_eq!(std::fs::read(&uefi.vars).expect("read"), b"template");
    }

    #[test]
    fn a_missing_ovmf_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uefi = Uefi {
            code: dir.path().join("nope.fd"),
            vars: dir.path().join("vm-0.vars"),
            template: dir.path().join("VARS.fd"),
            secure: false,
        };
        let err = prepare_vars(&uefi, VarsAction::Keep).expect_err("missing");
        assert!(err.to_string().contains("ovmf package"), "{err}");
    }
}

//! The machine: `VM_CPUS`, `VM_MEMORY`, `VM_DISK_SIZE`, `ACCEL`, `VNC_PASSWORD`,
//! `SHUTDOWN_TIMEOUT`, `CONSOLE_IDLE_TIMEOUT`, `QEMU`.

use std::time::Duration;

use super::{choice, duration, invalid, non_empty, Accel, ConfigError, Secret, VmConfig};
use crate::cli::Settings;
use crate::size::{ByteSize, MIB};

pub(super) fn parse_vm(
    settings: &Settings,
    extra_args: Vec<String>,
) -> Result<VmConfig, ConfigError> {
    let cpus = non_empty(&settings.vm_cpus).map(parse_cpus).transpose()?;
    let memory = non_empty(&settings.vm_memory)
        .map(parse_memory)
        .transpose()?;
    let disk_size = non_empty(&settings.vm_disk_size)
        .map(parse_disk_size)
        .transpose()?;
    let accel = choice(
        "ACCEL",
        &settings.accel,
        &[
            ("auto", Accel::Auto),
            ("kvm", Accel::Kvm),
            ("tcg", Accel::Tcg),
        ],
    )?;
    let vnc_password = non_empty(&settings.vnc_password)
        .map(parse_vnc_password)
        .transpose()?;
    let shutdown_timeout = parse_timeout("SHUTDOWN_TIMEOUT", &settings.shutdown_timeout)?;
    let console_idle_timeout =
        parse_timeout("CONSOLE_IDLE_TIMEOUT", &settings.console_idle_timeout)?;
    if console_idle_timeout.is_zero() {
        return Err(invalid(
            "CONSOLE_IDLE_TIMEOUT",
            &settings.console_idle_timeout,
            "zero would disconnect every viewer at once",
            "use a duration like 15m or 90s",
        ));
    }
    Ok(VmConfig {
        cpus,
        memory,
        disk_size,
        accel,
        qemu: settings.qemu.clone(),
        vnc_password,
        shutdown_timeout,
        console_idle_timeout,
        extra_args,
    })
}

fn parse_cpus(raw: &str) -> Result<u32, ConfigError> {
    match raw.parse::<u32>() {
        Ok(n @ 1..=1024) => Ok(n),
        _ => Err(invalid(
            "VM_CPUS",
            raw,
            "not a whole number from 1 to 1024",
            "e.g. VM_CPUS=2, or unset it to follow the container's CPU limit",
        )),
    }
}

fn parse_memory(raw: &str) -> Result<ByteSize, ConfigError> {
    const FIX: &str = "e.g. VM_MEMORY=2Gi, or unset it to follow the container's memory limit";
    let size = ByteSize::parse(raw, Some(MIB))
        .map_err(|e| invalid("VM_MEMORY", raw, e.to_string(), FIX))?;
    if size.bytes() < 64 * MIB {
        Err(invalid(
            "VM_MEMORY",
            raw,
            "less than 64MiB (a bare number means MiB)",
            FIX,
        ))
    } else if !size.bytes().is_multiple_of(MIB) {
        Err(invalid("VM_MEMORY", raw, "not a whole number of MiB", FIX))
    } else {
        Ok(size)
    }
}

fn parse_disk_size(raw: &str) -> Result<ByteSize, ConfigError> {
    const FIX: &str = "e.g. VM_DISK_SIZE=20Gi (it only ever grows the disk), or unset it";
    let size =
        ByteSize::parse(raw, None).map_err(|e| invalid("VM_DISK_SIZE", raw, e.to_string(), FIX))?;
    if size.bytes() < MIB || !size.bytes().is_multiple_of(512) {
        Err(invalid(
            "VM_DISK_SIZE",
            raw,
            "not a multiple of 512 bytes of at least 1MiB",
            FIX,
        ))
    } else {
        Ok(size)
    }
}

/// The value is a secret: the error says how long it is, never what it is.
fn parse_vnc_password(raw: &str) -> Result<Secret, ConfigError> {
    if raw.len() > 8 {
        return Err(ConfigError::Invalid {
            var: "VNC_PASSWORD",
            value: "(hidden)".to_owned(),
            reason: format!(
                "{} characters long, but VNC authentication uses at most 8",
                raw.len()
            ),
            fix: "use a password of at most 8 characters (and keep VNC off the public network)"
                .to_owned(),
        });
    }
    Ok(Secret(raw.to_owned()))
}

/// `30s`, `2m`, `1m30s`, or a bare number of seconds.
pub(super) fn parse_timeout(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    const FIX: &str = "use a duration like 25s or 2m (a bare number means seconds)";
    let duration = duration::parse(var, raw, FIX)?;
    if duration > duration::DAY {
        return Err(invalid(var, raw, "longer than a day", FIX));
    }
    Ok(duration)
}

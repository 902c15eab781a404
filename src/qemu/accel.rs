//! `ACCEL=auto|kvm|tcg` → the accelerator qemu gets, decided by whether `/dev/kvm` opens.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use super::args::Accel;
use crate::config;

/// What the operator should change when /dev/kvm is missing.
pub(crate) const KVM_FIX: &str =
    "give the pod /dev/kvm (the chart requests the devices.kubevirt.io/kvm \
     resource, or set privileged: true) on a node with hardware virtualization, or set ACCEL=tcg \
     (software emulation, much slower)";

#[derive(Debug, thiserror::Error)]
#[error("ACCEL=kvm, but {device} cannot be opened; {KVM_FIX}", device = device.display())]
pub(crate) struct KvmUnavailable {
    pub device: std::path::PathBuf,
    #[source]
    pub source: io::Error,
}

/// Why `auto` fell back to TCG, for a warning.
#[derive(Debug)]
pub(crate) struct Fallback(pub io::Error);

/// Decides the accelerator. `auto` falls back to TCG (with the reason) when `device` does
/// not open read-write.
pub(crate) fn resolve(
    requested: config::Accel,
    device: &Path,
) -> Result<(Accel, Option<Fallback>), KvmUnavailable> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map(drop)
    };
    match requested {
        config::Accel::Tcg => Ok((Accel::Tcg, None)),
        config::Accel::Kvm => {
            open()
                .map(|()| (Accel::Kvm, None))
                .map_err(|source| KvmUnavailable {
                    device: device.to_owned(),
                    source,
                })
        }
        config::Accel::Auto => match open() {
            Ok(()) => Ok((Accel::Kvm, None)),
            Err(e) => Ok((Accel::Tcg, Some(Fallback(e)))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_tcg_when_the_device_is_missing() {
        let missing = Path::new("/nonexistent/kvm");
        let (accel, fallback) = resolve(config::Accel::Auto, missing).expect("auto never fails");
        assert_eq!(accel, Accel::Tcg);
        assert!(fallback.is_some());
        let err = resolve(config::Accel::Kvm, missing).expect_err("kvm requires the device");
        assert!(err.to_string().contains("devices.kubevirt.io/kvm"), "{err}");
        assert_eq!(
            resolve(config::Accel::Tcg, missing).expect("tcg").0,
            Accel::Tcg
        );
    }

    #[test]
    fn auto_uses_kvm_when_the_device_opens() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        assert_eq!(
            resolve(config::Accel::Auto, file.path()).expect("opens").0,
            Accel::Kvm
        );
    }
}

//! qemu: the command line (pure), the process and its supervision, QMP, the console.

pub(crate) mod accel;
pub(crate) mod agent;
pub(crate) mod args;
pub(crate) mod attach;
pub(crate) mod console;
pub(crate) mod firmware;
pub(crate) mod pause;
pub(crate) mod process;
pub(crate) mod qmp;
pub(crate) mod shares;
pub(crate) mod sizing;
pub(crate) mod tpm;
pub(crate) mod virtiofsd;

use std::path::PathBuf;

use crate::pid1::{ExitStatus, Pid1Error};

#[derive(Debug, thiserror::Error)]
pub(crate) enum QemuError {
    #[error(
        "QEMU={qemu}: not found (searched PATH={path}); install qemu-system-x86 in the image or \
         set QEMU to the binary's path (RHEL-style images: /usr/libexec/qemu-kvm)",
        qemu = qemu.display()
    )]
    NotFound { qemu: PathBuf, path: String },
    #[error("could not start QEMU={}", qemu.display())]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Supervising qemu failed (the reaper's channel closed before it reported qemu's exit).
    #[error("lost track of qemu")]
    Reaper(#[source] Pid1Error),
    #[error(transparent)]
    Kvm(#[from] accel::KvmUnavailable),
    #[error("could not size the VM")]
    Sizing(#[from] sizing::SizingError),
    #[error("could not create RUNTIME_DIR {}", path.display())]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu {status} before the VM was up; its last messages:\n{stderr}")]
    EarlyExit { status: ExitStatus, stderr: String },
    #[error("qemu is running but its QMP socket does not answer")]
    Qmp(#[source] qmp::QmpError),
    #[error(transparent)]
    Console(#[from] attach::AttachError),
    #[error(transparent)]
    Control(#[from] agent::control::ControlError),
    #[error("could not set the VNC password")]
    VncPassword(#[source] qmp::QmpError),
}

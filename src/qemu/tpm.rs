//! The VM's TPM 2.0 (`TPM=2.0`): swtpm in socket mode as a supervised child, its state in
//! `PET_DIR/<hostname>.tpm/`, created once and then always reused.
//!
//! A TPM's state holds keys the guest sealed (BitLocker, LUKS): a state that cannot be read is
//! an error naming it, never replaced by a fresh TPM, which would lose them. [`plan`] and
//! [`swtpm_args`] decide; [`check_state`] and [`start`] act (swtpm loads the state at its
//! start, so a damaged one stops the start with swtpm's own words). swtpm dying stops the VM (its own
//! exit code): a guest whose TPM vanished would fail every later TPM command.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::config::{Hostname, Machine};
use crate::pid1::daemon::Daemon;
use crate::pid1::{ExitStatus, Pid1Error, Reaper};

/// swtpm's file of a TPM 2.0's permanent state (seeds, NV indices, hierarchies).
const PERMALL: &str = "tpm2-00.permall";
/// How long swtpm gets to create its control socket.
const SOCKET_WAIT: Duration = Duration::from_secs(15);
/// How long swtpm gets to obey SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum TpmError {
    #[error(
        "the TPM state {} is incomplete ({PERMALL} is missing or empty); it is never replaced \
         by a fresh TPM, which would lose the keys the guest sealed. Fix: restore it from a \
         backup, or move the directory aside to give the VM a new, empty TPM",
        dir.display()
    )]
    Incomplete { dir: PathBuf },
    #[error(
        "could not read the TPM state {}; it is never replaced by a fresh TPM. Fix: make \
         PET_DIR readable, or restore the state from a backup",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not create the TPM state directory {} (is PET_DIR writable?)", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not start swtpm (install Debian's swtpm package in the image)")]
    Spawn(#[source] Pid1Error),
    #[error(
        "swtpm {status} at start (a damaged TPM state is refused, never replaced); its last \
         words:\n{last_words}"
    )]
    EarlyExit {
        status: ExitStatus,
        last_words: String,
    },
    #[error("swtpm did not create its socket {} in time", path.display())]
    NoSocket { path: PathBuf },
    #[error("swtpm {status}; its last words:\n{last_words}")]
    Died {
        status: ExitStatus,
        last_words: String,
    },
}

/// Where the TPM lives and how qemu sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TpmPlan {
    pub state_dir: PathBuf,
    /// swtpm's control socket; qemu connects to it.
    pub socket: PathBuf,
    /// `tpm-crb` on q35 (what Windows 11 and current Linux expect), `tpm-tis` on pc, whose
    /// i440fx has no room for CRB's MMIO window.
    pub device: &'static str,
}

pub(crate) fn plan(
    pet_dir: &Path,
    hostname: &Hostname,
    runtime_dir: &Path,
    machine: Machine,
) -> TpmPlan {
    TpmPlan {
        state_dir: pet_dir.join(format!("{hostname}.tpm")),
        socket: runtime_dir.join("swtpm.sock"),
        device: match machine {
            Machine::Q35 => "tpm-crb",
            Machine::Pc => "tpm-tis",
        },
    }
}

/// swtpm's arguments: a TPM 2.0 whose state is the pet's directory, controlled (and fed its
/// data channel) by qemu over one unix socket.
pub(crate) fn swtpm_args(plan: &TpmPlan) -> Vec<String> {
    vec![
        "socket".to_owned(),
        "--tpm2".to_owned(),
        "--tpmstate".to_owned(),
        format!("dir={},mode=0600", escape(&plan.state_dir)),
        "--ctrl".to_owned(),
        format!("type=unixio,path={},mode=0600", escape(&plan.socket)),
        "--log".to_owned(),
        "level=1".to_owned(),
        // Load (or manufacture) the state now, not at qemu's first command: a damaged state
        // makes swtpm exit here, naming the damage, before the VM starts.
        "--flags".to_owned(),
        "not-need-init".to_owned(),
    ]
}

/// A path inside swtpm's `key=value,…` options: a comma is written twice (as for qemu).
fn escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// Whether the state is new (created now) or the one from before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateCheck {
    Created,
    Existing,
}

/// Creates the state directory on the first start; afterwards requires swtpm's permanent
/// state in it, readable and not empty. A directory without it is a TPM whose state was lost
/// or never written, and is refused rather than silently becoming a new TPM.
pub(crate) fn check_state(dir: &Path) -> Result<StateCheck, TpmError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let failed = |source| TpmError::CreateDir {
                dir: dir.to_owned(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(failed)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(failed)?;
            return Ok(StateCheck::Created);
        }
        Err(source) => {
            return Err(TpmError::Unreadable {
                path: dir.to_owned(),
                source,
            })
        }
        Ok(_) => {}
    }
    let permall = dir.join(PERMALL);
    match std::fs::File::open(&permall).and_then(|f| f.metadata()) {
        Ok(meta) if meta.len() > 0 => Ok(StateCheck::Existing),
        Ok(_) => Err(TpmError::Incomplete {
            dir: dir.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TpmError::Incomplete {
            dir: dir.to_owned(),
        }),
        Err(source) => Err(TpmError::Unreadable {
            path: permall,
            source,
        }),
    }
}

/// A running swtpm.
#[derive(Debug)]
pub(crate) struct Swtpm(Daemon);

/// Starts swtpm per `plan` and returns once its socket is there for qemu.
pub(crate) async fn start(plan: &TpmPlan, reaper: &Reaper) -> Result<Swtpm, TpmError> {
    let state = check_state(&plan.state_dir)?;
    let _ = std::fs::remove_file(&plan.socket);
    let args = swtpm_args(plan);
    let mut swtpm = Daemon::spawn(reaper, std::ffi::OsStr::new("swtpm"), &args, |line| {
        tracing::warn!(target: "swtpm", "{line}");
        true
    })
    .map_err(TpmError::Spawn)?;
    tracing::info!(pid = swtpm.pid().as_raw(), state = %plan.state_dir.display(), new = (state == StateCheck::Created), "swtpm started");
    // swtpm creates its socket before it loads the state: ready is when it answers on it.
    let deadline = Instant::now() + SOCKET_WAIT;
    while !answers(&plan.socket).await {
        if let Some(status) = swtpm.exited().await {
            return Err(TpmError::EarlyExit {
                status,
                last_words: swtpm.last_words(),
            });
        }
        if Instant::now() >= deadline {
            swtpm.stop(STOP_GRACE).await;
            return Err(TpmError::NoSocket {
                path: plan.socket.clone(),
            });
        }
        // swtpm answers a few ms after its exec: a coarse poll would be most of its cost.
        sleep(Duration::from_millis(2)).await;
    }
    Ok(Swtpm(swtpm))
}

/// Whether swtpm answers `CMD_GET_TPMESTABLISHED` (4) with success on its control socket: it
/// does once the TPM (its state loaded) serves requests.
async fn answers(socket: &Path) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ask = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
        stream.write_all(&4u32.to_be_bytes()).await.ok()?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await.ok()?;
        // The result code (0: success) comes first.
        (reply == [0; 4]).then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ask).await,
        Ok(Some(()))
    )
}

impl Swtpm {
    /// Resolves when swtpm exits, with the error that reports it.
    pub(crate) async fn died(&mut self) -> TpmError {
        match self.0.died(Duration::ZERO).await {
            Some(status) => TpmError::Died {
                status,
                last_words: self.0.last_words(),
            },
            // The reaper is gone: report it as a death we could not see the status of.
            None => TpmError::NoSocket {
                path: PathBuf::from("(swtpm lost)"),
            },
        }
    }

    /// SIGTERM (swtpm writes its volatile state and exits), then SIGKILL after a grace period.
    pub(crate) async fn stop(self) {
        self.0.stop(STOP_GRACE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostname() -> Hostname {
        Hostname::parse("vm-0").expect("valid")
    }

    #[test]
    fn q35_gets_crb_and_pc_gets_tis_with_the_state_in_the_pet() {
        let plan = plan(
            Path::new("/pet"),
            &hostname(),
            Path::new("/run/k"),
            Machine::Q35,
        );
        assert_eq!(plan.device, "tpm-crb");
        assert_eq!(plan.state_dir, PathBuf::from("/pet/vm-0.tpm"));
        assert_eq!(plan.socket, PathBuf::from("/run/k/swtpm.sock"));
        let pc = super::plan(
            Path::new("/pet"),
            &hostname(),
            Path::new("/run/k"),
            Machine::Pc,
        );
        assert_eq!(pc.device, "tpm-tis");
        assert_eq!(
            swtpm_args(&plan).join(" "),
            "socket --tpm2 --tpmstate dir=/pet/vm-0.tpm,mode=0600 --ctrl \
             type=unixio,path=/run/k/swtpm.sock,mode=0600 --log level=1 --flags not-need-init"
        );
    }

    #[test]
    fn the_state_is_created_once_and_a_directory_without_it_is_refused() {
        let pet = tempfile::tempdir().expect("tempdir");
        let dir = pet.path().join("vm-0.tpm");
        assert_eq!(check_state(&dir).expect("created"), StateCheck::Created);
        let err = check_state(&dir).expect_err("empty directory");
        assert!(matches!(err, TpmError::Incomplete { .. }), "{err}");
        std::fs::write(dir.join(PERMALL), b"").expect("empty state");
        assert!(matches!(
            check_state(&dir),
            Err(TpmError::Incomplete { .. })
        ));
        std::fs::write(dir.join(PERMALL), b"state").expect("state");
        assert_eq!(check_state(&dir).expect("existing"), StateCheck::Existing);
        assert_eq!(std::fs::read(dir.join(PERMALL)).expect("kept"), b"state");
    }
}

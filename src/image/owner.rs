//! One owner per pet: an exclusive lock on `PET_DIR/<hostname>.lock`, taken first by every
//! subcommand that writes to the pet (`run`, `image`, `config-drive`, `network`) and
//! held by `run` for as long as the VM lives.
//!
//! It protects what only one process may change at a time: the state file (the decision of a
//! new instance id and MAC), the pet overlay (creation and growth: qemu marks an image corrupt
//! when its header changes under it) and their temporary files. A second owner — a
//! misconfigured StatefulSet, two pods on one RWX volume, a `kubectl exec … kvm-manager image`
//! beside the running VM — fails at once, having changed nothing, with an error naming the
//! holder recorded in the lock file (hostname, pid, start time, subcommand).
//!
//! The lock is `flock(2)`, like the base image's [`super::lock`]: it belongs to the open file
//! description, so the kernel releases it when the holder dies (even by SIGKILL, even with its
//! whole PID namespace), and no stale lock file can block a restart; the file is never removed
//! (removing a lock file races with the next locker). On NFS, Linux turns `flock` into a
//! whole-file POSIX lock that the server arbitrates, so pods on different nodes sharing an RWX
//! volume exclude each other too (an OFD `fcntl` lock would behave the same; `flock` needs no
//! `unsafe` and is what the image lock already uses). The descriptor is opened `O_CLOEXEC`
//! (Rust's default), so qemu and the other children never inherit it and cannot keep the pet
//! locked after kvm-manager is gone.
//!
//! Under the lock, [`acquire`] removes what a killed writer left behind: the state file's and
//! the overlay's temporary files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::config::Hostname;

#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnerError {
    #[error(
        "another kvm-manager owns this pet ({path}): {holder}. A pet (PET_DIR and hostname) has \
         one owner at a time: stop the other one, or give this pod its own PET_DIR"
    )]
    Held { path: PathBuf, holder: String },
    #[error(
        "could not create PET_DIR {dir}; mount a writable volume there or set PET_DIR to a \
         writable directory"
    )]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not lock {path} (is PET_DIR writable?)")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Held while this process owns the pet; released on drop or death.
#[derive(Debug)]
pub(crate) struct PetLock {
    _lock: Flock<File>,
}

/// `PET_DIR/<hostname>.lock`.
pub(crate) fn path(pet_dir: &Path, hostname: &Hostname) -> PathBuf {
    pet_dir.join(format!("{hostname}.lock"))
}

/// What the lock file says about its holder: one line, `key=value` words.
fn record(hostname: &str, pid: u32, started: SystemTime, command: &str) -> String {
    format!(
        "hostname={hostname} pid={pid} started={} command={command}\n",
        humantime::format_rfc3339_seconds(started)
    )
}

/// Takes the pet for `command` (the subcommand, recorded for whoever is refused), creating
/// `PET_DIR` if needed, then removes the temporary files a killed writer left. Never waits: a
/// second owner is an error naming the first.
pub(crate) fn acquire(
    pet_dir: &Path,
    hostname: &Hostname,
    command: &str,
) -> Result<PetLock, OwnerError> {
    let path = path(pet_dir, hostname);
    let lock_err = |source: io::Error| OwnerError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(pet_dir).map_err(|source| OwnerError::CreateDir {
        dir: pet_dir.to_owned(),
        source,
    })?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                // The holder has the lock but has not written its record yet.
                "" => "holder unknown (it is just starting)".to_owned(),
                known => known.to_owned(),
            };
            return Err(OwnerError::Held { path, holder });
        }
        Err((_, errno)) => return Err(lock_err(errno.into())),
    };
    let me = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| hostname.to_string());
    let line = record(&me, std::process::id(), SystemTime::now(), command);
    lock.set_len(0)
        .and_then(|()| lock.write_all(line.as_bytes()))
        .map_err(lock_err)?;
    for leftover in leftovers(pet_dir, hostname) {
        tracing::warn!(file = %leftover.display(), "removed a temporary file left by a killed start");
    }
    Ok(PetLock { _lock: lock })
}

/// Removes the state's and the overlay's temporary files; returns what it removed. Only ever
/// called under the lock: nobody else may be writing them.
fn leftovers(pet_dir: &Path, hostname: &Hostname) -> Vec<PathBuf> {
    let mut removed = crate::state::remove_temps(pet_dir, hostname);
    removed.extend(super::overlay::remove_temps(&super::overlay::path(
        pet_dir, hostname,
    )));
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Hostname {
        Hostname::parse("vm-0").expect("valid hostname")
    }

    #[test]
    fn a_second_owner_is_refused_naming_the_holder_until_the_first_drops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire(dir.path(), &host(), "run").expect("first owner");
        let err = acquire(dir.path(), &host(), "image").expect_err("a second owner");
        let message = err.to_string();
        // Its exit code (8) is asserted where codes are decided, in `crate::error`.
        assert!(message.contains("vm-0.lock"), "{message}");
        assert!(
            message.contains(&format!("pid={}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("command=run"), "{message}");
        assert!(message.contains("started=20"), "{message}");
        drop(first);
        let again = acquire(dir.path(), &host(), "image").expect("released on drop");
        let recorded = std::fs::read_to_string(path(dir.path(), &host())).expect("read");
        assert!(recorded.contains("command=image"), "{recorded}");
        assert_eq!(
            recorded.lines().count(),
            1,
            "the record is replaced: {recorded}"
        );
        drop(again);
    }

    #[test]
    fn another_hostname_is_another_pet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = acquire(dir.path(), &host(), "run").expect("vm-0");
        let other = Hostname::parse("vm-1").expect("valid hostname");
        acquire(dir.path(), &other, "run").expect("vm-1 has its own lock");
    }

    #[test]
    fn taking_the_pet_removes_leftover_temporary_files_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let planted = [
            ".vm-0.qcow2.creating1",
            ".vm-0.qcow2.creatingAbC123",
            ".vm-0.state.json.tmp1",
            ".vm-0.state.json.tmpXyZ987",
        ];
        let kept = [
            "vm-0.qcow2",
            "vm-0.state.json",
            ".vm-1.qcow2.creating1",
            ".vm-0.qcow2.other",
        ];
        for name in planted.iter().chain(&kept) {
            std::fs::write(dir.path().join(name), b"x").expect("plant");
        }
        let _lock = acquire(dir.path(), &host(), "image").expect("owner");
        for name in planted {
            assert!(!dir.path().join(name).exists(), "{name} left behind");
        }
        for name in kept {
            assert!(dir.path().join(name).exists(), "{name} removed");
        }
    }

    #[test]
    fn a_refused_owner_removes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = acquire(dir.path(), &host(), "run").expect("first owner");
        // The holder's own write in progress.
        let temp = dir.path().join(".vm-0.qcow2.creatingLive01");
        std::fs::write(&temp, b"x").expect("plant");
        acquire(dir.path(), &host(), "image").expect_err("second owner");
        assert!(
            temp.exists(),
            "a refused owner must not touch the holder's files"
        );
    }
}

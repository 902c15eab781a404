//! The sole owner of `waitpid(-1)`, and the one way we start children.
//!
//! Spawning and reaping take the same lock, so a child that exits at once cannot be reaped
//! before its exit status has somewhere to go. Statuses of pids nobody spawned through us
//! (orphans re-parented to PID 1 or to our subreaper) are logged and dropped.
//!
//! Children start through `posix_spawnp(3)`, which glibc runs as a vfork-style clone: the
//! parent's memory is not copied (a `fork` of this process costs 0.6-0.8 ms, and makes every
//! page it writes afterwards fault once more). The attributes give the child an empty signal
//! mask (ours blocks what the signalfd consumes, and a mask survives `execve`) and the default
//! action for SIGPIPE and for every signal we consume or forward: an ignored signal survives
//! `execve` too, std ignores SIGPIPE in this process, and whoever started us may have ignored
//! others (`nohup` ignores SIGHUP, which a shell then cannot even trap).
//!
//! Children get a minimal environment ([`child_env`]): ours carries the contract's variables,
//! secrets among them (`VNC_PASSWORD`, a credentialed `IMG_SOURCE`), and a child's environment
//! is readable in `/proc/<pid>/environ` by anything running as its user. qemu, nft, passt,
//! swtpm and virtiofsd need none of them.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::{ExitStatus, Pid1Error};
use crate::locked::Locked as _;

/// Where one of a child's standard streams goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdio {
    /// Ours.
    Inherit,
    /// `/dev/null`.
    Null,
    /// A pipe whose other end [`Spawned::pipes`] holds.
    Piped,
}

/// Our ends of a child's streams spawned as [`Stdio::Piped`].
#[derive(Debug, Default)]
pub(crate) struct Pipes {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// The environment a child starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Env {
    /// Only [`CHILD_ENV`], from ours: for every program kvm-manager runs itself.
    Minimal,
    /// All of ours: for the `supervise` test hook, which runs what its caller gives.
    Inherit,
}

/// The variables a child keeps, when we have them: where to find programs, how to render
/// text and time, and where to put temporary files (qemu's `-snapshot` and `g_get_tmp_dir`).
pub(crate) const CHILD_ENV: [&str; 5] = ["PATH", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Of `vars` (ours), the ones a child started with `env` gets.
pub(crate) fn child_env(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    env: Env,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vars.into_iter()
        .filter(|(key, _)| env == Env::Inherit || CHILD_ENV.iter().any(|keep| key == keep))
        .collect()
}

/// A child started through the reaper.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: Pid,
    /// Resolves once when the reaper collects the child.
    pub exit: oneshot::Receiver<ExitStatus>,
    pub pipes: Pipes,
}

#[derive(Debug, Default)]
pub(crate) struct Reaper {
    watched: Mutex<HashMap<Pid, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Starts `program` (looked up in `PATH` unless it has a slash) with `args`, the minimal
    /// environment ([`Env::Minimal`]) and `stdio` for its stdin, stdout and stderr, and
    /// watches its exit. Our pipe ends are registered with the tokio runtime, so this runs
    /// inside one.
    pub(crate) fn spawn(
        &self,
        program: &OsStr,
        args: &[impl AsRef<OsStr>],
        stdio: [Stdio; 3],
    ) -> Result<Spawned, Pid1Error> {
        self.spawn_with(program, args, stdio, Env::Minimal)
    }

    /// [`Reaper::spawn`] with the environment chosen by `env`.
    pub(crate) fn spawn_with(
        &self,
        program: &OsStr,
        args: &[impl AsRef<OsStr>],
        stdio: [Stdio; 3],
        env: Env,
    ) -> Result<Spawned, Pid1Error> {
        let failed = |source| Pid1Error::Spawn {
            program: program.into(),
            source,
        };
        let mut watched = self.watched.locked();
        let (pid, pipes) = spawn(program, args, stdio, env).map_err(failed)?;
        let (tx, exit) = oneshot::channel();
        watched.insert(pid, tx);
        Ok(Spawned { pid, exit, pipes })
    }

    /// Collects every child that has exited; returns how many there were.
    pub(crate) fn reap(&self) -> usize {
        let mut watched = self.watched.locked();
        let mut reaped = 0;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _core)) => (pid, ExitStatus::Signaled(signal)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
                Err(Errno::EINTR) => continue,
                // Stopped/continued are only reported with flags we do not pass.
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return reaped;
                }
            };
            reaped += 1;
            match watched.remove(&pid) {
                Some(tx) => {
                    tracing::debug!(pid = pid.as_raw(), %status, "child exited");
                    // The receiver may be gone if nobody waits any more; nothing to do then.
                    let _ = tx.send(status);
                }
                None => tracing::debug!(pid = pid.as_raw(), %status, "reaped orphan"),
            }
        }
    }
}

/// `posix_spawnp` with `stdio` wired; returns the pid and our ends of the pipes, registered
/// with the runtime before the child exists (so nothing can fail once it runs).
fn spawn(
    program: &OsStr,
    args: &[impl AsRef<OsStr>],
    stdio: [Stdio; 3],
    env: Env,
) -> io::Result<(Pid, Pipes)> {
    let c_string = |s: &OsStr| {
        CString::new(s.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
    };
    let file = c_string(program)?;
    let argv = std::iter::once(program)
        .chain(args.iter().map(AsRef::as_ref))
        .map(c_string)
        .collect::<io::Result<Vec<_>>>()?;
    let env = child_env(std::env::vars_os(), env)
        .into_iter()
        .map(|(key, value)| {
            let mut pair = key.into_encoded_bytes();
            pair.push(b'=');
            pair.extend_from_slice(value.as_encoded_bytes());
            CString::new(pair).map_err(|_| io::Error::other("a NUL byte in the environment"))
        })
        .collect::<io::Result<Vec<_>>>()?;

    let mut actions = PosixSpawnFileActions::init()?;
    let mut pipes = Pipes::default();
    // The child's ends stay open (close-on-exec, like ours) until the spawn returned.
    let mut theirs = Vec::new();
    for (fd, how) in [0, 1, 2].into_iter().zip(stdio) {
        match how {
            Stdio::Inherit => {}
            Stdio::Null => actions.add_open(fd, "/dev/null", OFlag::O_RDWR, Mode::empty())?,
            Stdio::Piped => {
                let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                let (mine, child) = if fd == 0 {
                    (write, read)
                } else {
                    (read, write)
                };
                // With a standard stream of ours closed, the child's end can land on 0..=2,
                // where another stream's dup2 would overwrite it: move it to 3 or above
                // (`try_clone` duplicates with F_DUPFD_CLOEXEC from 3).
                let child = if child.as_raw_fd() <= 2 {
                    child.try_clone()?
                } else {
                    child
                };
                actions.add_dup2(child.as_raw_fd(), fd)?;
                theirs.push(child);
                match fd {
                    0 => pipes.stdin = Some(pipe::Sender::from_owned_fd(mine)?),
                    1 => pipes.stdout = Some(pipe::Receiver::from_owned_fd(mine)?),
                    _ => pipes.stderr = Some(pipe::Receiver::from_owned_fd(mine)?),
                }
            }
        }
    }
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut defaults = super::signals::handled_set();
    defaults.add(Signal::SIGPIPE);
    attr.set_sigdefault(&defaults)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    let pid = posix_spawnp(&file, &actions, &attr, &argv, &env)?;
    drop(theirs);
    Ok((pid, pipes))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    const OURS: [(&str, &str); 7] = [
        ("PATH", "/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("TZ", "UTC"),
        ("VNC_PASSWORD", "s3cret"),
        ("IMG_SOURCE", "http://user:pass@images/x.qcow2"),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("PATHX", "not PATH"),
    ];

    #[test]
    fn a_child_keeps_path_locale_and_timezone_and_no_secret() {
        let kept = child_env(vars(&OURS), Env::Minimal);
        assert_eq!(
            kept,
            vars(&[
                ("PATH", "/usr/bin:/bin"),
                ("LANG", "C.UTF-8"),
                ("TZ", "UTC")
            ])
        );
    }

    #[test]
    fn a_missing_variable_is_not_invented() {
        assert!(child_env(vars(&[("HOME", "/root")]), Env::Minimal).is_empty());
    }

    #[test]
    fn the_supervise_hook_passes_everything_on() {
        assert_eq!(child_env(vars(&OURS), Env::Inherit), vars(&OURS));
    }
}

//! The only module with `unsafe`: thin wrappers over libc calls that std and nix do not cover
//! safely. Each block states why it is sound.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};

/// Makes `command`'s child start with an empty signal mask.
///
/// PID 1 blocks the signals it consumes through a signalfd; a blocked mask survives `execve`,
/// and `std::process::Command` does not reset it, so without this the child (qemu) would never
/// see SIGTERM, SIGINT or SIGCHLD.
pub fn reset_signal_mask_in_child(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called; it calls sigprocmask(2) alone, which is
    // async-signal-safe, allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)
        });
    }
}

/// Registers a signalfd with tokio's reactor (readable interest only).
pub fn register_signalfd(
    fd: nix::sys::signalfd::SignalFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<nix::sys::signalfd::SignalFd>> {
    // SAFETY: `SignalFd` owns its descriptor (an `OwnedFd`) for its whole lifetime and its
    // `as_raw_fd` always returns that same descriptor; the `AsyncFd` takes ownership of it, so
    // the descriptor stays open and unchanged until the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

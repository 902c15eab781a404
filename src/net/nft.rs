//! Our nftables table applied: `nft -f -` replaces it in one transaction (the text is
//! [`super::ruleset`]), and our own sockets carry the mark the ruleset lets through.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::ruleset::LOCAL_MARK;
use super::NetError;
use crate::pid1::reaper::Stdio;
use crate::pid1::{Pid1Error, Reaper};

/// Marks one of our sockets with [`LOCAL_MARK`]. Needs CAP_NET_ADMIN, which the NAT needs
/// too; without it (no NAT then) the socket is left unmarked.
pub(crate) fn mark_own(socket: &socket2::Socket) {
    if let Err(e) = socket.set_mark(LOCAL_MARK) {
        tracing::debug!(error = %e, "could not mark our socket; it is NAT'ed like any other");
    }
}

/// Why `nft` failed, read from its stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NftFailure {
    NotPermitted,
    NoNfTables,
    Rejected,
}

pub(crate) fn classify_failure(stderr: &str) -> NftFailure {
    if stderr.contains("Operation not permitted") {
        NftFailure::NotPermitted
    } else if stderr.contains("Protocol not supported")
        || stderr.contains("Operation not supported")
        || stderr.contains("Address family not supported")
    {
        NftFailure::NoNfTables
    } else {
        NftFailure::Rejected
    }
}

/// The `nft` binary on PATH, found before anything is changed.
pub(crate) fn find_nft() -> Result<PathBuf, NetError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file())
        .ok_or(NetError::NftMissing)
}

/// Runs `nft -f -` with `ruleset` on stdin: one atomic transaction.
pub(crate) async fn replace_table(
    nft: &Path,
    ruleset: &str,
    reaper: &Reaper,
) -> Result<(), NetError> {
    let mut spawned = reaper
        .spawn(
            nft.as_os_str(),
            &["-f", "-"],
            [Stdio::Piped, Stdio::Null, Stdio::Piped],
        )
        .map_err(|e| match e {
            Pid1Error::Spawn { source, .. } if source.kind() == ErrorKind::NotFound => {
                NetError::NftMissing
            }
            other => NetError::NftSpawn(other),
        })?;
    // A small ruleset: nft reads it all before it writes anything, so this cannot deadlock.
    let written = match spawned.pipes.stdin.take() {
        Some(mut stdin) => stdin.write_all(ruleset.as_bytes()).await,
        None => Err(std::io::Error::other("stdin was not piped")),
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = spawned.pipes.stderr.take() {
        pipe.read_to_string(&mut stderr)
            .await
            .map_err(NetError::NftPipe)?;
    }
    let status = spawned
        .exit
        .await
        .map_err(|_| NetError::NftSpawn(Pid1Error::ReaperGone(spawned.pid.as_raw())))?;
    if status.success() {
        return written.map_err(NetError::NftPipe);
    }
    let stderr = stderr.trim().to_owned();
    Err(match classify_failure(&stderr) {
        NftFailure::NotPermitted => NetError::MissingNetAdmin,
        NftFailure::NoNfTables => NetError::NoNfTables { stderr },
        NftFailure::Rejected => NetError::NftRejected { status, stderr },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_stderr_is_classified_for_the_operator() {
        assert_eq!(
            classify_failure("netlink: Error: cannot open socket: Operation not permitted"),
            NftFailure::NotPermitted
        );
        assert_eq!(
            classify_failure("Error: Could not process rule: Operation not supported"),
            NftFailure::NoNfTables
        );
        assert_eq!(
            classify_failure("mnl_socket_open: Protocol not supported"),
            NftFailure::NoNfTables
        );
        assert_eq!(
            classify_failure("/dev/stdin:3:1-5: Error: syntax error"),
            NftFailure::Rejected
        );
    }
}

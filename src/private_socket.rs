//! Unix sockets that change the VM (console input, freeze, backup): owner-only from their
//! first moment.
//!
//! `bind` then `chmod` leaves a window in which the socket has the mode the umask gives; a
//! PID 1 started with umask 0 would let anyone in the pod connect in that window. So the socket
//! is bound inside a fresh directory only the owner can enter, given mode 0600 there, and only
//! then renamed to its path (a rename keeps the bound inode: clients connect by path, and the
//! path appears complete).

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;

use tokio::net::UnixListener;

/// Binds `path` (replacing a stale socket there) with mode 0600. Needs a tokio runtime.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a socket path needs a directory and a name",
        ));
    };
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".{}.bind", std::process::id()));
    let staging = dir.join(staging_name);
    // Left over by a crash of an earlier run with the same pid (PID 1: always 1).
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let inner = staging.join("s");
        let listener = UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt as _;

    #[tokio::test]
    async fn the_socket_is_owner_only_replaces_a_stale_one_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        std::fs::write(&path, b"stale").expect("stale file");
        let listener = bind(&path).expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["control.sock"], "only the socket is left");
        // Clients reach the listener by the final path.
        let client = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let (_server, _) = listener.accept().await.expect("accept");
        drop(client);
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = bind(&dir.path().join("absent/x.sock")).expect_err("no directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}

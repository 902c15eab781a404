//! Files that are either absent or complete: written to a temporary name in the same
//! directory, fsynced, renamed over the target, and the directory fsynced (or, for files
//! rebuilt on every start, the same without the fsyncs).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The hidden temporary name used for `path` while it is being written.
pub fn temp_path(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}"))
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

/// Writes `bytes` to `path` atomically (readers see the old or the new file, never a part)
/// but not durably: for files rebuilt on every start, where a crash costs nothing.
pub fn write_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let temp = temp_path(path, &format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&temp, path)?;
        if durable {
            sync_parent(path)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Fsyncs the directory holding `path`, so that a rename into it survives a crash.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_writers_replace_the_target_and_leave_no_temporary_file() {
        for write in [write, write_unsynced] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("state.json");
            write(&path, b"one").expect("first write");
            write(&path, b"two").expect("second write");
            assert_eq!(fs::read(&path).expect("read"), b"two");
            let names: Vec<_> = fs::read_dir(dir.path())
                .expect("ls")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        }
    }

    #[test]
    fn temp_names_are_hidden_siblings() {
        assert_eq!(
            temp_path(Path::new("/pet/vm-0.qcow2"), "part"),
            PathBuf::from("/pet/.vm-0.qcow2.part")
        );
    }
}

//! Files that are either absent or complete: written to a temporary name in the same
//! directory, fsynced, renamed over the target, and the directory fsynced (or, for files
//! rebuilt on every start, the same without the fsyncs).
//!
//! Temporary names are unique and created exclusively (`O_EXCL`, a random suffix): two
//! writers of one file never share a temporary, even when both are PID 1 of their own pod on
//! one shared volume. A killed writer's temporary stays until [`remove_temps`] (the pet's
//! owner calls it at start).

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The tag of [`write`]'s and [`write_unsynced`]'s temporary files: `.NAME.tmp<random>`.
pub(crate) const TMP: &str = "tmp";

/// The hidden temporary name used for `path` while it is being written.
pub(crate) fn temp_path(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}"))
}

/// Writes `bytes` to `path` atomically and durably.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

/// Writes `bytes` to `path` atomically (readers see the old or the new file, never a part)
/// but not durably: for files rebuilt on every start, where a crash costs nothing.
pub(crate) fn write_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    // Dropped on error: the temporary file is removed.
    let mut temp = unique_temp(path, TMP)?;
    temp.write_all(bytes)?;
    if durable {
        temp.as_file().sync_all()?;
    }
    temp.persist(path).map_err(|e| e.error)?;
    if durable {
        sync_parent(path)?;
    }
    Ok(())
}

/// A new, exclusively created `.NAME.TAG<random>` beside `path`, removed when dropped unless
/// persisted. Mode 0666 less the umask, as `File::create` would give.
pub(crate) fn unique_temp(path: &Path, tag: &str) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&temp_prefix(path, tag))
        .rand_bytes(8)
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(parent(path))
}

/// Removes every `.NAME.TAG*` beside `path` (the temporaries of killed writers); returns what
/// it removed. Only for a caller that knows nobody else is writing `path`.
pub(crate) fn remove_temps(path: &Path, tag: &str) -> Vec<PathBuf> {
    let prefix = temp_prefix(path, tag);
    let Ok(entries) = fs::read_dir(parent(path)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .filter(|p| fs::remove_file(p).is_ok())
        .collect()
}

fn temp_prefix(path: &Path, tag: &str) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.{tag}")
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsyncs the directory holding `path`, so that a rename into it survives a crash.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
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
    fn temporaries_are_unique_exclusive_and_leftovers_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm-0.state.json");
        // Two writers at once (both PID 1 in their pods) get two distinct files.
        let a = unique_temp(&path, TMP).expect("first temp");
        let b = unique_temp(&path, TMP).expect("second temp");
        assert_ne!(a.path(), b.path());
        for temp in [&a, &b] {
            let name = temp.path().file_name().expect("name").to_string_lossy();
            assert!(name.starts_with(".vm-0.state.json.tmp"), "{name}");
            assert!(!name.contains(&std::process::id().to_string()), "{name}");
        }
        let (a, b) = (a.keep().expect("keep").1, b.keep().expect("keep").1);
        fs::write(dir.path().join(".vm-0.state.json.tmp1"), b"old").expect("plant");
        fs::write(dir.path().join(".vm-1.state.json.tmp1"), b"other").expect("plant");
        write(&path, b"state").expect("write");
        let mut removed = remove_temps(&path, TMP);
        removed.sort();
        let mut want = vec![a, b, dir.path().join(".vm-0.state.json.tmp1")];
        want.sort();
        assert_eq!(removed, want);
        assert!(path.exists(), "the file itself stays");
        assert!(
            dir.path().join(".vm-1.state.json.tmp1").exists(),
            "another file's stays"
        );
    }

    #[test]
    fn temp_names_are_hidden_siblings() {
        assert_eq!(
            temp_path(Path::new("/pet/vm-0.qcow2"), "part"),
            PathBuf::from("/pet/.vm-0.qcow2.part")
        );
    }
}

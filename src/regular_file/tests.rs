//! Opening only regular files, without blocking, links followed or not.

use std::io::Read as _;
use std::os::unix::fs::symlink;

use super::*;

fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
}

/// A ConfigMap volume as the kubelet writes it, plus a secret outside of it.
fn config_map(root: &Path) -> std::path::PathBuf {
    let cm = root.join("cm");
    let generation = cm.join("..2026_11_21_00_00_00.1");
    std::fs::create_dir_all(&generation).expect("mkdir");
    std::fs::write(generation.join("user-data"), b"#cloud-config\n").expect("key");
    symlink("..2026_11_21_00_00_00.1", cm.join("..data")).expect("..data");
    symlink("..data/user-data", cm.join("user-data")).expect("key link");
    std::fs::write(root.join("secret"), b"TOP-SECRET").expect("secret");
    cm
}

fn read_all(file: RegularFile) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.into_file().read_to_end(&mut bytes).expect("read");
    bytes
}

#[test]
fn a_regular_file_opens_in_blocking_mode_with_its_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, b"hello").expect("write");
    let file = open(&path).expect("open");
    assert_eq!(file.len(), 5);
    let flags = fcntl::fcntl(&file.file, FcntlArg::F_GETFL).expect("getfl");
    assert!(!OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK));
    assert_eq!(read_all(file), b"hello");
}

#[test]
fn a_fifo_a_directory_and_a_device_are_refused_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipe = dir.path().join("pipe");
    fifo(&pipe);
    // No writer ever opens the FIFO: a blocking open would never return.
    let cases = [
        (pipe.as_path(), Kind::Fifo),
        (dir.path(), Kind::Directory),
        (Path::new("/dev/null"), Kind::CharDevice),
    ];
    for (path, kind) in cases {
        match open(path) {
            Err(RegularFileError::NotRegular(found)) => assert_eq!(found, kind, "{path:?}"),
            other => panic!("{path:?}: {other:?}"),
        }
    }
    match open_beneath(dir.path(), Path::new("pipe")) {
        Err(RegularFileError::NotRegular(Kind::Fifo)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_socket_is_named_as_a_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let err = open(&path).expect_err("a socket");
    assert!(
        matches!(err, RegularFileError::NotRegular(Kind::Socket)),
        "{err:?}"
    );
    let err = open_beneath(dir.path(), Path::new("sock")).expect_err("a socket");
    assert!(
        matches!(err, RegularFileError::NotRegular(Kind::Socket)),
        "{err:?}"
    );
}

/// Both ways of resolving beneath a directory give the same answers.
fn containment_cases(open: fn(&Path, &Path) -> Result<RegularFile, RegularFileError>) {
    let root = tempfile::tempdir().expect("tempdir");
    let cm = config_map(root.path());
    assert_eq!(
        read_all(open(&cm, Path::new("user-data")).expect("a ConfigMap key")),
        b"#cloud-config\n"
    );
    symlink("../secret", cm.join("up")).expect("link");
    symlink(root.path().join("secret"), cm.join("absolute")).expect("link");
    symlink("/proc/self/environ", cm.join("environ")).expect("link");
    symlink("../missing", cm.join("dangling-out")).expect("link");
    for name in ["up", "absolute", "environ", "dangling-out"] {
        match open(&cm, Path::new(name)) {
            Err(RegularFileError::Escapes) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    symlink("..data/nope", cm.join("dangling-in")).expect("link");
    let err = open(&cm, Path::new("dangling-in")).expect_err("missing");
    assert!(err.is_not_found(), "{err:?}");
}

#[test]
fn links_resolve_only_inside_the_directory() {
    containment_cases(open_beneath);
}

#[test]
fn without_openat2_the_prefix_check_gives_the_same_answers() {
    containment_cases(open_beneath_by_prefix);
}

//! Opening an input file we are about to read (user-data, meta-data, resolv.conf): without
//! blocking, and only if it is a regular file.
//!
//! `open(2)` of a FIFO blocks until a writer appears, and reading a character device may never
//! end, so a FIFO mounted where user-data is expected used to hang the pod's start for good.
//! We open with `O_NONBLOCK` (an open that returns at once whatever the file is), prove with
//! `fstat` on the open descriptor (no race with the name) that it is a regular file, and only
//! then clear the flag and hand it out. `O_NOCTTY`: as PID 1 we are a session leader, and
//! opening a terminal would make it our controlling terminal.
//!
//! [`open_beneath`] also keeps symlinks inside a directory: a ConfigMap volume's keys are
//! relative links (`user-data -> ..data/user-data`, `..data -> ..2026_11_21_…`), which stay
//! inside it; a link to `/proc/self/environ` or `../elsewhere` would put another file's
//! secrets on the guest's config drive. The kernel checks this for us with `openat2(2)` and
//! `RESOLVE_BENEATH` (Linux 5.6), race-free, during the one lookup that opens the file. Where
//! `openat2` is missing (an older kernel, or a seccomp profile that predates it and answers
//! `ENOSYS`/`EPERM`) we canonicalize and check the prefix before opening with `O_NOFOLLOW`;
//! that leaves a window in which a writer of the directory could swap a component for a
//! link, which matters only for volumes the attacker can write while we start (a ConfigMap
//! volume is written only by the kubelet).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{self, FcntlArg, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, Mode, SFlag};

#[derive(Debug, thiserror::Error)]
pub enum RegularFileError {
    #[error("could not open it")]
    Open(#[source] io::Error),
    #[error("it is {0}, not a regular file")]
    NotRegular(Kind),
    #[error("it is a symlink that leads out of its directory")]
    Escapes,
}

impl RegularFileError {
    /// True when the file (or the target of its link) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Open(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// What a file that is not a regular file is, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Directory,
    Other,
}

impl Kind {
    /// `None` for a regular file.
    fn of(mode: u32) -> Option<Self> {
        let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
        Some(match kind {
            SFlag::S_IFREG => return None,
            SFlag::S_IFIFO => Self::Fifo,
            SFlag::S_IFSOCK => Self::Socket,
            SFlag::S_IFCHR => Self::CharDevice,
            SFlag::S_IFBLK => Self::BlockDevice,
            SFlag::S_IFDIR => Self::Directory,
            _ => Self::Other,
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fifo => "a FIFO (named pipe)",
            Self::Socket => "a socket",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
            Self::Directory => "a directory",
            Self::Other => "a special file",
        })
    }
}

/// An open regular file in blocking mode, and its size when it was opened.
#[derive(Debug)]
pub(crate) struct RegularFile {
    file: File,
    len: u64,
}

impl RegularFile {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn into_file(self) -> File {
        self.file
    }
}

/// The flags of every open here: read-only, never blocking, never our controlling terminal.
fn read_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC
}

/// Opens `path` (following symlinks anywhere) if it is a regular file.
pub(crate) fn open(path: &Path) -> Result<RegularFile, RegularFileError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
    {
        Ok(file) => prove(file.into()),
        // A socket cannot be opened at all (ENXIO); say what it is rather than "no such
        // device or address".
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => match std::fs::metadata(path) {
            Ok(meta) => Err(not_regular(std::os::unix::fs::MetadataExt::mode(&meta), e)),
            Err(_) => Err(RegularFileError::Open(e)),
        },
        Err(e) => Err(RegularFileError::Open(e)),
    }
}

/// Opens `name` inside the directory `dir` if it is a regular file and every symlink on the
/// way resolves inside `dir` (absolute links are refused too). `dir` itself is taken as given.
pub(crate) fn open_beneath(dir: &Path, name: &Path) -> Result<RegularFile, RegularFileError> {
    let dir_fd = fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RegularFileError::Open(e.into()))?;
    let how = |flags| {
        OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    match fcntl::openat2(&dir_fd, name, how(read_flags())) {
        Ok(fd) => prove(fd),
        Err(Errno::EXDEV) => Err(RegularFileError::Escapes),
        Err(Errno::ENOSYS | Errno::EPERM) => open_beneath_by_prefix(dir, name),
        Err(Errno::ENXIO) => match fcntl::openat2(&dir_fd, name, how(OFlag::O_PATH)) {
            Ok(fd) => match stat::fstat(&fd) {
                Ok(st) => Err(not_regular(st.st_mode, Errno::ENXIO.into())),
                Err(e) => Err(RegularFileError::Open(e.into())),
            },
            Err(_) => Err(RegularFileError::Open(Errno::ENXIO.into())),
        },
        Err(e) => Err(RegularFileError::Open(e.into())),
    }
}

/// [`open_beneath`] without `openat2`: canonicalize, check the prefix, open the canonical path
/// without following a last link (see the module notes for the window this leaves).
fn open_beneath_by_prefix(dir: &Path, name: &Path) -> Result<RegularFile, RegularFileError> {
    let dir = dir.canonicalize().map_err(RegularFileError::Open)?;
    let lexical = dir.join(name);
    let target = lexical.canonicalize().map_err(|e| {
        // A link to a missing file outside the directory is still a link out of it.
        match std::fs::read_link(&lexical) {
            Ok(link) if link.is_absolute() || link.starts_with("..") => RegularFileError::Escapes,
            _ => RegularFileError::Open(e),
        }
    })?;
    if !target.starts_with(&dir) {
        return Err(RegularFileError::Escapes);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_NOFOLLOW).bits())
        .open(&target);
    match file {
        Ok(file) => prove(file.into()),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => match std::fs::metadata(&target) {
            Ok(meta) => Err(not_regular(std::os::unix::fs::MetadataExt::mode(&meta), e)),
            Err(_) => Err(RegularFileError::Open(e)),
        },
        Err(e) => Err(RegularFileError::Open(e)),
    }
}

fn not_regular(mode: u32, fallback: io::Error) -> RegularFileError {
    match Kind::of(mode) {
        Some(kind) => RegularFileError::NotRegular(kind),
        None => RegularFileError::Open(fallback),
    }
}

/// The proof: fstat on the descriptor says regular file; then back to blocking reads.
fn prove(fd: OwnedFd) -> Result<RegularFile, RegularFileError> {
    let st = stat::fstat(fd.as_fd()).map_err(|e| RegularFileError::Open(e.into()))?;
    if let Some(kind) = Kind::of(st.st_mode) {
        return Err(RegularFileError::NotRegular(kind));
    }
    let flags =
        fcntl::fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| RegularFileError::Open(e.into()))?;
    let blocking = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl::fcntl(&fd, FcntlArg::F_SETFL(blocking)).map_err(|e| RegularFileError::Open(e.into()))?;
    Ok(RegularFile {
        file: File::from(fd),
        len: u64::try_from(st.st_size).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests;

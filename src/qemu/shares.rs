//! `SHARES`: pod directories shared into the guest, parsed purely, and their qemu devices.
//!
//! Two transports:
//! - virtio-fs: a `virtiofsd` child per share (see [`super::virtiofsd`]) serves the directory
//!   over a vhost-user socket; qemu connects with `vhost-user-fs-pci`. virtiofsd maps guest
//!   memory, so qemu's RAM must be shared memory: a `memory-backend-memfd` with `share=on`.
//! - 9p: qemu's own server (`-fsdev local` + `virtio-9p-pci`), no daemon, slower; for guests
//!   without virtio-fs and pods without virtiofsd. `security_model=none`: files are created
//!   as the user qemu runs as and guest chown/chmod failures are ignored (a ConfigMap or a
//!   data volume has no xattrs to map owners into).
//!
//! A read-only share is read-only on the pod side (9p `readonly=on`, virtiofsd `--readonly`):
//! the guest cannot write it whatever it mounts. Symlinks are passed to the guest as symlinks
//! and resolved there, inside the share: a ConfigMap's `..data` swap shows at once.

use std::path::{Path, PathBuf};

/// Escapes a value inside a qemu `key=value,…` option (as [`super::args`] does, which uses this
/// module: a comma is written twice).
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// Which way a share reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    VirtioFs,
    NineP,
}

/// One entry of `SHARES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Share {
    /// What the guest mounts (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// The pod directory.
    pub path: PathBuf,
    pub writable: bool,
    /// `None`: `SHARE_TRANSPORT` decides.
    pub transport: Option<Transport>,
}

/// Why one entry of `SHARES` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpecError {
    pub entry: String,
    pub reason: String,
}

/// The longest tag: 9p's `mount_tag` and virtio-fs's `tag` both fit 31 bytes everywhere.
pub(crate) const MAX_TAG: usize = 31;

/// `TAG=/PATH[:ro|:rw][:virtiofs|:9p],…`; read-only unless `:rw`. Paths may not contain `,`.
/// An entry without `TAG=` is a directory of mount points: each of its subdirectories (as
/// `subdirs` lists them; hidden ones skipped) is a share tagged with its name, with the
/// entry's mode and transport.
pub(crate) fn parse(
    raw: &str,
    subdirs: impl Fn(&Path) -> std::io::Result<Vec<String>>,
) -> Result<Vec<Share>, SpecError> {
    let mut shares: Vec<Share> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let fail = |reason: &str| SpecError {
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        };
        let (tag, mut rest) = match entry.split_once('=') {
            Some((tag, rest)) => (Some(tag.trim()), rest),
            None => (None, entry),
        };
        let (mut writable, mut transport) = (None, None);
        while let Some((head, suffix)) = rest.rsplit_once(':') {
            match suffix {
                "ro" | "rw" if writable.is_none() => writable = Some(suffix == "rw"),
                "virtiofs" if transport.is_none() => transport = Some(Transport::VirtioFs),
                "9p" if transport.is_none() => transport = Some(Transport::NineP),
                _ => break,
            }
            rest = head;
        }
        let path = Path::new(rest.trim());
        if !path.is_absolute() {
            return Err(fail("the path must be absolute"));
        }
        let found: Vec<(String, PathBuf)> = match tag {
            Some(tag) => vec![(tag.to_owned(), path.to_owned())],
            None => {
                let mut names = subdirs(path)
                    .map_err(|e| fail(&format!("no `=`, and not a directory to list ({e})")))?;
                names.retain(|name| !name.starts_with('.'));
                names.sort();
                names
                    .into_iter()
                    .map(|name| (name.clone(), path.join(name)))
                    .collect()
            }
        };
        for (tag, path) in found {
            if !valid_tag(&tag) {
                return Err(fail(&format!(
                    "tag {tag:?}: a tag must be 1 to 31 letters, digits, `-` or `_`"
                )));
            }
            if shares.iter().any(|s| s.tag == tag) {
                return Err(fail(&format!("tag {tag:?} is used twice")));
            }
            shares.push(Share {
                tag,
                path,
                writable: writable.unwrap_or(false),
                transport,
            });
        }
    }
    Ok(shares)
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The subdirectories of `dir` (the IO [`parse`] needs for a directory of mount points).
pub(crate) fn subdirectories(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// A share as qemu's command line needs it, its transport decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShareDevice {
    pub tag: String,
    pub backend: ShareBackend,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ShareBackend {
    /// qemu serves `path` itself.
    NineP { path: PathBuf, writable: bool },
    /// virtiofsd listens on `socket`.
    VirtioFs { socket: PathBuf },
}

/// The vhost-user socket of the virtiofsd serving `tag`.
pub(crate) fn socket_path(runtime_dir: &Path, tag: &str) -> PathBuf {
    runtime_dir.join(format!("virtiofsd-{tag}.sock"))
}

/// Whether qemu's memory must be shared (virtio-fs maps it from virtiofsd).
pub(crate) fn needs_shared_memory(devices: &[ShareDevice]) -> bool {
    devices
        .iter()
        .any(|d| matches!(d.backend, ShareBackend::VirtioFs { .. }))
}

/// qemu's arguments for the shares, and the memfd memory backend virtio-fs needs.
pub(crate) fn args(devices: &[ShareDevice], memory_mib: u64) -> Vec<String> {
    let mut args = Vec::new();
    if needs_shared_memory(devices) {
        args.extend([
            "-object".to_owned(),
            format!("memory-backend-memfd,id=mem0,size={memory_mib}M,share=on"),
            "-numa".to_owned(),
            "node,memdev=mem0".to_owned(),
        ]);
    }
    for (i, device) in devices.iter().enumerate() {
        let tag = escape(&device.tag);
        match &device.backend {
            ShareBackend::NineP { path, writable } => {
                let mut fsdev = format!(
                    "local,id=fs{i},path={},security_model=none",
                    escape(&path.to_string_lossy())
                );
                if !writable {
                    fsdev.push_str(",readonly=on");
                }
                args.extend([
                    "-fsdev".to_owned(),
                    fsdev,
                    "-device".to_owned(),
                    format!("virtio-9p-pci,fsdev=fs{i},mount_tag={tag}"),
                ]);
            }
            ShareBackend::VirtioFs { socket } => args.extend([
                "-chardev".to_owned(),
                format!("socket,id=fs{i},path={}", escape(&socket.to_string_lossy())),
                "-device".to_owned(),
                format!("vhost-user-fs-pci,chardev=fs{i},tag={tag}"),
            ]),
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_dirs(_: &Path) -> std::io::Result<Vec<String>> {
        Err(std::io::ErrorKind::NotFound.into())
    }

    #[test]
    fn a_directory_of_mount_points_shares_each_subdirectory_under_its_name() {
        let list = |dir: &Path| {
            assert_eq!(dir, Path::new("/shares"));
            Ok(vec!["data".into(), "..data".into(), "config".into()])
        };
        let shares = parse("/shares:rw,extra=/x", list).expect("valid");
        let tags: Vec<(&str, &Path, bool)> = shares
            .iter()
            .map(|s| (s.tag.as_str(), s.path.as_path(), s.writable))
            .collect();
        assert_eq!(
            tags,
            [
                ("config", Path::new("/shares/config"), true),
                ("data", Path::new("/shares/data"), true),
                ("extra", Path::new("/x"), false),
            ]
        );
        let clash = parse("data=/d,/shares", list).expect_err("clash");
        assert!(clash.reason.contains("twice"), "{clash:?}");
        let bad = parse("/shares", |_: &Path| Ok(vec!["has space".into()])).expect_err("bad");
        assert!(bad.reason.contains("a tag must"), "{bad:?}");
    }

    #[test]
    fn shares_are_read_only_unless_rw_and_may_name_their_transport() {
        let shares = parse(
            "config=/etc/app:ro, data=/data:rw ,logs=/var/log:9p,x=/a:b:rw:virtiofs",
            no_dirs,
        )
        .expect("valid");
        assert_eq!(
            shares,
            vec![
                Share {
                    tag: "config".into(),
                    path: "/etc/app".into(),
                    writable: false,
                    transport: None
                },
                Share {
                    tag: "data".into(),
                    path: "/data".into(),
                    writable: true,
                    transport: None
                },
                Share {
                    tag: "logs".into(),
                    path: "/var/log".into(),
                    writable: false,
                    transport: Some(Transport::NineP)
                },
                Share {
                    tag: "x".into(),
                    path: "/a:b".into(),
                    writable: true,
                    transport: Some(Transport::VirtioFs)
                },
            ]
        );
        assert_eq!(parse("", no_dirs).expect("empty"), Vec::new());
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (raw, reason) in [
            ("data", "absolute"),
            ("/data", "not a directory to list"),
            ("=/data", "a tag must"),
            ("da ta=/data", "a tag must"),
            ("a-very-long-tag-that-is-over-31-bytes=/d", "a tag must"),
            ("data=relative", "absolute"),
            ("data=/a,data=/b", "twice"),
        ] {
            let err = parse(raw, no_dirs).expect_err(raw);
            assert!(err.reason.contains(reason), "{raw}: {err:?}");
        }
    }

    #[test]
    fn nine_p_is_qemus_own_and_virtio_fs_adds_shared_memory() {
        let nine = ShareDevice {
            tag: "cm".into(),
            backend: ShareBackend::NineP {
                path: "/etc/app".into(),
                writable: false,
            },
        };
        assert_eq!(
            args(std::slice::from_ref(&nine), 256),
            [
                "-fsdev",
                "local,id=fs0,path=/etc/app,security_model=none,readonly=on",
                "-device",
                "virtio-9p-pci,fsdev=fs0,mount_tag=cm"
            ]
        );
        let fs = ShareDevice {
            tag: "data".into(),
            backend: ShareBackend::VirtioFs {
                socket: socket_path(Path::new("/run/kvm-manager"), "data"),
            },
        };
        let both = args(&[nine, fs], 256);
        assert_eq!(
            both[..4],
            [
                "-object",
                "memory-backend-memfd,id=mem0,size=256M,share=on",
                "-numa",
                "node,memdev=mem0"
            ]
        );
        assert_eq!(
            both[8..],
            [
                "-chardev",
                "socket,id=fs1,path=/run/kvm-manager/virtiofsd-data.sock",
                "-device",
                "vhost-user-fs-pci,chardev=fs1,tag=data"
            ]
        );
    }
}

//! SSH keys from a file or a mounted Secret (`SSH_AUTHORIZED_KEYS`) into the guest user's
//! `authorized_keys`, through the agent's `guest-ssh-add-authorized-keys` (keys are added, never
//! removed: the guest's own keys, cloud-init's included, stay). Pushed whenever the agent
//! (re)appears (so at every start) and whenever the keys change: the poller reads them at each
//! poll (a few small files; a Secret's `..data` symlink swap is just a change), so this costs
//! no wakeup of its own.
//!
//! The user is `SSH_USER`, or else the guest's first regular user, UID 1000 in its
//! `/etc/passwd` (read through `guest-file-open`/`-read`): cloud-init creates the image's
//! default cloud user (`debian`, `ubuntu`, `cloud-user`…) first, so it gets UID 1000.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Agent, AgentError, DEADLINE};

/// Largest key file read (a few hundred keys).
const MAX_KEYS_BYTES: u64 = 256 * 1024;

/// Where the keys come from and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshKeys {
    /// A file, or a directory whose every visible regular file holds keys (a mounted Secret).
    pub path: PathBuf,
    /// `None`: the guest's UID 1000 user.
    pub user: Option<String>,
}

/// The keys of `text`: every line that is not blank or a comment, trimmed.
pub(crate) fn parse_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Reads the keys at `path` (sorted, without duplicates, so that the same keys compare equal
/// however the files are laid out). Hidden entries (a Secret's `..data`, `..2026_…`) are
/// skipped: their content is reached through the visible links.
pub(crate) fn read_keys(path: &Path) -> std::io::Result<Vec<String>> {
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with('.') {
                files.push(entry.path());
            }
        }
    } else {
        files.push(path.to_owned());
    }
    let mut keys = Vec::new();
    for file in files {
        let Ok(opened) = crate::regular_file::open(&file) else {
            continue;
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(opened.into_file(), MAX_KEYS_BYTES),
            &mut text,
        )?;
        keys.extend(parse_keys(&text));
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The name of the user with UID 1000 in a passwd file.
pub(crate) fn first_regular_user(passwd: &str) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid = fields.nth(1)?;
        (uid == "1000" && !name.is_empty()).then(|| name.to_owned())
    })
}

/// Standard base64 (the agent's `buf-b64`), padding optional; `None` on anything else.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|&b| b != b'=' && b != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend(&acc.to_be_bytes()[1..=n]);
    }
    Some(out)
}

/// The guest's `/etc/passwd`, read through the agent (at most 64 KiB).
async fn guest_passwd(agent: &Agent) -> Result<String, AgentError> {
    let handle = agent
        .execute(
            "guest-file-open",
            Some(json!({ "path": "/etc/passwd", "mode": "r" })),
            DEADLINE,
        )
        .await?;
    let read = agent
        .execute(
            "guest-file-read",
            Some(json!({ "handle": handle, "count": 65536 })),
            DEADLINE,
        )
        .await;
    let _ = agent
        .execute(
            "guest-file-close",
            Some(json!({ "handle": handle })),
            DEADLINE,
        )
        .await;
    let buf = read?
        .get("buf-b64")
        .and_then(Value::as_str)
        .and_then(base64_decode)
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Adds `keys` to the user's `authorized_keys`; returns the user.
pub(crate) async fn push(
    agent: &Agent,
    user: Option<&str>,
    keys: &[String],
) -> Result<String, String> {
    let user = match user {
        Some(user) => user.to_owned(),
        None => {
            let passwd = guest_passwd(agent).await.map_err(|e| e.to_string())?;
            first_regular_user(&passwd).ok_or(
                "the guest has no user with UID 1000 (the image's cloud user): set SSH_USER",
            )?
        }
    };
    agent
        .execute(
            "guest-ssh-add-authorized-keys",
            Some(json!({ "username": user, "keys": keys, "reset": false })),
            DEADLINE,
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_lines_that_are_not_blank_or_comments() {
        let text = "# team keys\nssh-ed25519 AAAA a@b\n\n  ssh-rsa BBBB c@d  \n";
        assert_eq!(
            parse_keys(text),
            ["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"]
        );
    }

    #[test]
    fn a_secret_directory_is_read_through_its_visible_links_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("..2026_12_02");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("authorized_keys"), "ssh-ed25519 AAAA a@b\n").expect("write");
        std::fs::write(
            data.join("more"),
            "ssh-ed25519 AAAA a@b\nssh-rsa BBBB c@d\n",
        )
        .expect("write");
        std::os::unix::fs::symlink("..2026_12_02", dir.path().join("..data")).expect("link");
        for key in ["authorized_keys", "more"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key))
                .expect("link");
        }
        assert_eq!(
            read_keys(dir.path()).expect("read"),
            ["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"]
        );
        assert_eq!(
            read_keys(&dir.path().join("authorized_keys")).expect("a file"),
            ["ssh-ed25519 AAAA a@b"]
        );
    }

    #[test]
    fn the_default_user_is_uid_1000() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\ndebian:x:1000:1000::/home/debian:/bin/bash\n";
        assert_eq!(first_regular_user(passwd).as_deref(), Some("debian"));
        assert_eq!(first_regular_user("root:x:0:0::/root:/bin/sh\n"), None);
    }

    #[test]
    fn base64_decodes_the_agents_buffers() {
        assert_eq!(
            base64_decode("cm9vdDp4OjA6MAo=").as_deref(),
            Some(&b"root:x:0:0\n"[..])
        );
        assert_eq!(base64_decode("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("!!!!"), None);
    }
}

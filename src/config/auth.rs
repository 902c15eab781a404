//! `IMG_AUTH_FILE`: how we prove to the image server that we may fetch the image. The file
//! holds a secret: no error quotes it.

use std::fmt;
use std::io::Read as _;
use std::path::Path;

use super::{invalid, ConfigError, Secret};
use crate::size::ByteSize;

/// How the image server learns who we are (from `IMG_AUTH_FILE`).
#[derive(Clone, PartialEq, Eq)]
pub enum ImageAuth {
    Bearer(Secret),
    Basic { user: String, password: Secret },
}

impl fmt::Debug for ImageAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bearer(_) => "Bearer(***)",
            Self::Basic { .. } => "Basic(***)",
        })
    }
}

/// Largest `IMG_AUTH_FILE` read: a token or `user:password` is far smaller.
const AUTH_FILE_MAX: u64 = 64 << 10;

/// Reads `IMG_AUTH_FILE`: a bearer token, or `user:password` for basic authentication (a
/// bearer token has no `:`, RFC 6750 §2.1). Opened without blocking (a FIFO must not hang the
/// start) and only when it is a regular file (a Secret's key is a symlink to one: followed).
pub(super) fn read_auth_file(path: &Path) -> Result<ImageAuth, ConfigError> {
    let shown = path.display().to_string();
    let fail = |reason: String| {
        invalid(
            "IMG_AUTH_FILE",
            &shown,
            reason,
            "mount a Secret key holding a bearer token or user:password and point \
             IMG_AUTH_FILE at it, or unset it",
        )
    };
    let opened = crate::regular_file::open(path).map_err(|e| match e {
        crate::regular_file::RegularFileError::Open(io) => fail(format!("cannot open it ({io})")),
        other => fail(other.to_string()),
    })?;
    let len = opened.len();
    let mut file = opened.into_file();
    if len > AUTH_FILE_MAX {
        return Err(fail(format!(
            "{} bytes, more than a credential ({} at most)",
            len,
            ByteSize(AUTH_FILE_MAX)
        )));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(AUTH_FILE_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read it ({e})")))?;
    // Never quote the content: it is the secret.
    let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".to_owned()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    if text.chars().any(char::is_control) {
        return Err(fail(
            "it holds more than one line or control characters".to_owned(),
        ));
    }
    Ok(match text.split_once(':') {
        Some((user, password)) => ImageAuth::Basic {
            user: user.to_owned(),
            password: Secret(password.to_owned()),
        },
        None => ImageAuth::Bearer(Secret(text.to_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_file_holds_a_bearer_token_or_user_and_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cred");
        std::fs::write(&path, "tok.en-1\n").expect("write");
        assert_eq!(
            read_auth_file(&path).expect("token"),
            ImageAuth::Bearer(Secret("tok.en-1".into()))
        );
        std::fs::write(&path, "bob:pa:ss").expect("write");
        assert_eq!(
            read_auth_file(&path).expect("basic"),
            ImageAuth::Basic {
                user: "bob".into(),
                password: Secret("pa:ss".into())
            }
        );
        for bad in ["", "\n", "two\nlines"] {
            std::fs::write(&path, bad).expect("write");
            let err = read_auth_file(&path).expect_err(bad).to_string();
            assert!(!err.contains("two"), "never quoted: {err}");
        }
        let err = read_auth_file(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}

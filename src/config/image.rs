//! `IMG_SOURCE`, `IMG_TARGET`, `IMG_SHA256`: where the base image comes from and where it goes;
//! `IMG_AUTH_FILE` is read by [`super::auth`], the URL's redaction is in [`super::url`], the
//! download's limits are in [`super::fetch_limits`].

use std::path::{Path, PathBuf};

use url::Url;

use super::auth::read_auth_file;
use super::fetch_limits::parse_fetch_limits;
use super::url::{redact_raw, ImageUrl};
use super::{
    invalid, non_empty, ConfigError, ImageConfig, ImageSource, ImageTarget, COMPRESSION_SUFFIXES,
};
use crate::cli::Settings;

/// The image settings and the target, `None` when neither `IMG_SOURCE` nor `IMG_TARGET` is set.
pub(super) fn parse_image(
    settings: &Settings,
) -> Result<(ImageConfig, Option<ImageTarget>), ConfigError> {
    let source = non_empty(&settings.img_source)
        .map(parse_source)
        .transpose()?;
    let target = match non_empty(&settings.img_target) {
        Some(raw) => Some(parse_target(raw, &settings.image_dir)?),
        None => match &source {
            Some(source) => Some(ImageTarget::Name(default_target(source)?)),
            None => None,
        },
    };
    let sha256 = non_empty(&settings.img_sha256)
        .map(parse_sha256)
        .transpose()?;
    let auth = settings
        .img_auth_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
        .map(read_auth_file)
        .transpose()?;
    if let (Some(_), Some(ImageSource::Url(url))) = (&auth, &source) {
        if url.has_credentials() {
            return Err(invalid(
                "IMG_AUTH_FILE",
                &settings
                    .img_auth_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "IMG_SOURCE carries credentials too (user:password@)",
                "keep the credentials in IMG_AUTH_FILE only and remove them from IMG_SOURCE",
            ));
        }
    }
    let fetch = parse_fetch_limits(settings)?;

    let image = ImageConfig {
        source,
        sha256,
        dir: settings.image_dir.clone(),
        auth,
        fetch,
    };
    Ok((image, target))
}

/// The target of a base image that is needed (`run`, `image`): one that exists, or one that
/// `IMG_SOURCE` can fill.
pub(super) fn needed_target(
    image: &ImageConfig,
    target: Option<&ImageTarget>,
) -> Result<ImageTarget, ConfigError> {
    match target {
        // With a source, the target is always set (IMG_TARGET or the source's file name).
        Some(target) if image.source.is_some() => Ok(target.clone()),
        Some(target @ ImageTarget::Existing(_)) => Ok(target.clone()),
        Some(target @ ImageTarget::Name(name)) if image.dir.join(name).is_file() => {
            Ok(target.clone())
        }
        _ => Err(ConfigError::Missing {
            var: "IMG_SOURCE",
            fix: format!(
                "set it to the http(s) URL or path of a qcow2 or raw base image, or set \
                 IMG_TARGET to an image that already exists in IMAGE_DIR ({})",
                image.dir.display()
            ),
        }),
    }
}

fn parse_source(raw: &str) -> Result<ImageSource, ConfigError> {
    const FIX: &str = "use an http://, https:// or file:// URL, or a local path";
    if !raw.contains("://") {
        return Ok(ImageSource::Path(PathBuf::from(raw)));
    }
    // The value may hold a password: errors show it redacted.
    let shown = redact_raw(raw);
    let url = Url::parse(raw)
        .map_err(|e| invalid("IMG_SOURCE", &shown, format!("not a URL ({e})"), FIX))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(ImageSource::Url(ImageUrl::new(url))),
        "http" | "https" => Err(invalid("IMG_SOURCE", &shown, "the URL has no host", FIX)),
        "file" => url
            .to_file_path()
            .map(ImageSource::Path)
            .map_err(|()| invalid("IMG_SOURCE", &shown, "not a local file URL", FIX)),
        other => Err(invalid(
            "IMG_SOURCE",
            &shown,
            format!("unsupported scheme `{other}`"),
            FIX,
        )),
    }
}

/// The last path segment of the source, minus a compression suffix.
fn default_target(source: &ImageSource) -> Result<String, ConfigError> {
    let (raw, segment) = match source {
        ImageSource::Url(url) => (url.to_string(), url.last_segment().to_owned()),
        ImageSource::Path(path) => (
            path.display().to_string(),
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    let name = COMPRESSION_SUFFIXES
        .iter()
        .find_map(|suffix| segment.strip_suffix(suffix))
        .unwrap_or(&segment);
    check_file_name(name).map(str::to_owned).map_err(|reason| {
        invalid(
            "IMG_SOURCE",
            &raw,
            format!("cannot derive the image file name from it: the last path segment {reason}"),
            "set IMG_TARGET to the file name the base image should have in IMAGE_DIR",
        )
    })
}

pub(super) fn check_file_name(name: &str) -> Result<&str, &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains('/') {
        Err("contains `/`")
    } else if name.contains("..") {
        Err("contains `..`")
    } else if name.starts_with('.') {
        Err("starts with `.` (names starting with `.` are kvm-manager's temporary files)")
    } else if name.len() > 200 {
        Err("is longer than 200 bytes")
    } else if name.chars().any(char::is_control) {
        Err("contains control characters")
    } else {
        Ok(name)
    }
}

fn parse_target(raw: &str, image_dir: &Path) -> Result<ImageTarget, ConfigError> {
    let path = Path::new(raw);
    if path.is_absolute() {
        return if path.is_file() {
            Ok(ImageTarget::Existing(path.to_path_buf()))
        } else {
            Err(invalid(
                "IMG_TARGET",
                raw,
                "an absolute path must name an existing image file, and none is there",
                format!(
                    "mount the image at that path, or give a plain file name to download into \
                     IMAGE_DIR ({})",
                    image_dir.display()
                ),
            ))
        };
    }
    check_file_name(raw).map(|name| ImageTarget::Name(name.to_owned())).map_err(|reason| {
        invalid(
            "IMG_TARGET",
            raw,
            format!("the file name {reason}"),
            "use a plain file name such as debian-12.qcow2, or the absolute path of an existing image",
        )
    })
}

fn parse_sha256(raw: &str) -> Result<String, ConfigError> {
    parse_sha256_of("IMG_SHA256", raw)
}

/// A sha256 digest in `var` (also `INSTALL_MEDIA_SHA256`).
pub(super) fn parse_sha256_of(var: &'static str, raw: &str) -> Result<String, ConfigError> {
    let hex = raw
        .strip_prefix("sha256:")
        .unwrap_or(raw)
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(invalid(
            var,
            raw,
            format!("expected 64 hex digits, got {} characters", hex.len()),
            "paste the output of `sha256sum` for the file as downloaded, or unset it",
        ))
    }
}

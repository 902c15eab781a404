//! What can go wrong with the disk: fetching, verifying and placing the base, and the overlay.

use std::io;
use std::path::PathBuf;

use reqwest::StatusCode;

use super::source::Compression;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    #[error(
        "the base image {target} does not exist and IMG_SOURCE is not set; set IMG_SOURCE to \
         its URL"
    )]
    NoSource { target: PathBuf },
    #[error("could not create the directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not lock {path} (is IMAGE_DIR writable?)")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not set up the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("downloading {url} failed")]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "{url} broke off after {received} of {} bytes",
        .total.map_or_else(|| "an unknown number of".to_owned(), |t| t.to_string())
    )]
    BodyBroken {
        url: String,
        received: u64,
        total: Option<u64>,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    ServerStatus { url: String, status: StatusCode },
    #[error("{url} answered {status}; check IMG_SOURCE (and that the server allows this pod)")]
    ClientStatus { url: String, status: StatusCode },
    #[error("{url} answered a range request with the wrong range; starting over")]
    BadRange { url: String },
    #[error(
        "{url} answered a range request with the whole file (the file changed, or the server \
         ignores ranges); starting over"
    )]
    RangeIgnored { url: String },
    #[error("{url} ended after {received} of {total} bytes")]
    ShortBody {
        url: String,
        received: u64,
        total: u64,
    },
    #[error(
        "{url} sent nothing for {} (FETCH_STALL_TIMEOUT) after {received} bytes",
        humantime::format_duration(*.timeout)
    )]
    Stalled {
        url: String,
        timeout: std::time::Duration,
        received: u64,
    },
    #[error(
        "{url} sent only {bytes} bytes in the last {}, below FETCH_MIN_RATE ({min_rate} bytes/s), \
         after {received} bytes",
        humantime::format_duration(*.window)
    )]
    TooSlow {
        url: String,
        bytes: u64,
        window: std::time::Duration,
        min_rate: u64,
        received: u64,
    },
    #[error(
        "gave up downloading {url} after {attempts} attempts (FETCH_ATTEMPTS={limit}); {kept}. \
         Check the server, or raise FETCH_ATTEMPTS, FETCH_STALL_TIMEOUT or lower FETCH_MIN_RATE"
    )]
    GaveUp {
        url: String,
        attempts: u32,
        limit: u32,
        kept: String,
        #[source]
        last: Box<ImageError>,
    },
    #[error(
        "stopped the download at {} bytes{}{}: writing more would leave less than \
         IMAGE_DIR_RESERVE ({}) free in {dir} ({} free). Give the volume more space, remove \
         unused images, or lower IMAGE_DIR_RESERVE",
        .downloaded,
        .total.map(|t| format!(" of {t}")).unwrap_or_else(|| " (the server sent no length)".to_owned()),
        .unpacked.map(|u| format!(", unpacked to {u} bytes ({:.1} GiB) so far", u as f64 / crate::size::GIB as f64)).unwrap_or_default(),
        crate::size::ByteSize(*.reserve),
        show(Some(*.available))
    )]
    Reserve {
        dir: PathBuf,
        downloaded: u64,
        total: Option<u64>,
        /// Bytes of the unpacked image, when unpacking is what wanted more.
        unpacked: Option<u64>,
        available: u64,
        reserve: u64,
    },
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "not enough space in IMAGE_DIR {dir}: {} needed and IMAGE_DIR_RESERVE ({}) kept free, {} \
         free; give the volume more space, remove unused images or lower IMAGE_DIR_RESERVE",
        show(*.needed), crate::size::ByteSize(*.reserve), show(*.available)
    )]
    NoSpace {
        dir: PathBuf,
        needed: Option<u64>,
        available: Option<u64>,
        reserve: u64,
    },
    #[error("the {compression} stream is corrupt or cut short")]
    Decompress {
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error(
        "sha256 of {source_name} is {actual}, but IMG_SHA256 is {expected}; the download was \
         removed. Check IMG_SHA256 against the publisher's checksum list"
    )]
    Checksum {
        source_name: String,
        expected: String,
        actual: String,
    },
    #[error("{source_name} is not a usable base image: received {what}; the download was removed")]
    NotADisk { source_name: String, what: String },
    #[error(
        "{path} exists but is not a usable disk image: {what}. Remove it to download it again"
    )]
    ExistingInvalid { path: PathBuf, what: String },
    #[error(
        "sha256 of the base image {path} is {actual}, but IMG_SHA256 is {expected}; refusing \
         to boot it. The file is left in place (other pods may use it): if IMG_SHA256 is right, \
         remove {path} (or set IMG_TARGET to another name) to download it again"
    )]
    ExistingChecksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("could not rename {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not create or update the pet overlay {path}")]
    Overlay {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the pet overlay {overlay} is backed by {recorded} ({recorded_format}), but the base \
         image is now {base} ({base_format}). Choose one: point IMG_SOURCE/IMG_TARGET back at \
         the old base; or, if the new base has the same content (the image moved), run \
         `qemu-img rebase -u -b {base} -F {base_format} {overlay}`; or move the overlay aside \
         to start this VM from a fresh disk (its data stays in the moved file)"
    )]
    BackingMismatch {
        overlay: PathBuf,
        recorded: String,
        recorded_format: String,
        base: PathBuf,
        base_format: &'static str,
    },
    #[error(
        "the pet overlay {path} is in use: {holder}. It is grown (VM_DISK_SIZE) only while no \
         qemu has it open; stop the process that has it open, then start again"
    )]
    OverlayInUse { path: PathBuf, holder: String },
    #[error(
        "the base image {path} is an installer ISO: the VM installs onto a blank disk whose \
         size VM_DISK_SIZE (--vm-disk-size) must give. Fix: set VM_DISK_SIZE, e.g. 20Gi"
    )]
    IsoNeedsDiskSize { path: PathBuf },
    #[error(
        "the pet disk {path} is backed by {recorded}, but the base image is now an installer \
         ISO (installs go to a blank disk). Fix: set IMG_SOURCE back, or move the pet disk \
         aside to install anew"
    )]
    NotBlank { path: PathBuf, recorded: String },
    #[error(
        "interrupted by {0}; a partial download that can be resumed is kept for the next start"
    )]
    Interrupted(nix::sys::signal::Signal),
    #[error("internal error: {0}")]
    Internal(String),
}

fn show(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "an unknown size".to_owned(),
        |b| format!("{b} bytes ({:.1} GiB)", b as f64 / crate::size::GIB as f64),
    )
}

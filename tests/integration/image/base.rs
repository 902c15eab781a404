//! What may become a base image, through `kvm-manager image` as a pod runs it: a qcow2 whose
//! header names another file or is broken is refused (exit 3) and not kept; a base planted in
//! the shared `IMAGE_DIR` is held to `IMG_SHA256` (cheaply, by its verification record, while
//! it is unchanged) and left in place when it does not match; an error about a file that is
//! not an image describes it without quoting it.

use std::io::{Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::server::{Route, Server};
use super::{disk, file, names_in, qemu, sha256, Pod, DISK};

/// A line of `/etc/shadow`: none of it may reach a log line.
const SHADOW: &str = "root:$6$s3cr3tSALT$HASHofTHErootPASSWORD:19000:0:99999:7:::\n";

fn qcow2(dir: &Path, name: &str, options: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(options);
    let path_arg = path.display().to_string();
    args.extend_from_slice(&[&path_arg, "4M"]);
    qemu("qemu-img", &args);
    std::fs::read(&path).expect("qcow2")
}

/// Serves `bytes` at `/name` and runs `image` on it: the outcome, the pod and the server.
fn download(name: &str, bytes: Vec<u8>) -> (super::Outcome, Pod) {
    let server = Server::start();
    let path = format!("/{name}");
    server.route(&path, Route::File(file(bytes)));
    let pod = Pod::new();
    let outcome = pod.run(&server.url(&path), &[]);
    (outcome, pod)
}

fn refused_and_not_kept(name: &str, bytes: Vec<u8>, reason: &str) -> super::Outcome {
    let (outcome, pod) = download(name, bytes);
    outcome.failed_with(reason);
    assert_eq!(
        names_in(&pod.image_dir),
        [format!(".{name}.lock")],
        "the refused download is not kept: {outcome:#?}"
    );
    outcome
}

#[test]
fn a_qcow2_base_naming_a_backing_file_is_refused_and_not_kept() {
    let work = tempfile::tempdir().expect("tempdir");
    let secret = work.path().join("shadow");
    std::fs::write(&secret, SHADOW.repeat(100)).expect("secret");
    let secret_arg = secret.display().to_string();
    let bytes = qcow2(work.path(), "evil.qcow2", &["-b", &secret_arg, "-F", "raw"]);
    let outcome = refused_and_not_kept("evil.qcow2", bytes, "names a backing file");
    assert!(outcome.stderr.contains(&secret_arg), "{outcome:#?}");
    assert!(outcome.stderr.contains("self-contained"), "{outcome:#?}");

    // The same file mounted as IMG_TARGET: refused too, and left where the operator put it.
    let mounted = work.path().join("evil.qcow2");
    let pod = Pod::new();
    let outcome = pod.run(
        "http://127.0.0.1:9/unused.qcow2",
        &[("IMG_TARGET", &mounted.display().to_string())],
    );
    outcome.failed_with("names a backing file");
    assert!(mounted.is_file());
}

#[test]
fn a_qcow2_base_with_an_external_data_file_is_refused_and_not_kept() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("other-vm.raw");
    let option = format!("data_file={}", data.display());
    let bytes = qcow2(work.path(), "data.qcow2", &["-o", &option]);
    refused_and_not_kept("data.qcow2", bytes, "external data file");
}

#[test]
fn a_qcow2_base_of_one_pib_or_with_a_short_l1_table_is_refused_and_not_kept() {
    let work = tempfile::tempdir().expect("tempdir");
    let valid = qcow2(work.path(), "valid.qcow2", &[]);

    let mut huge = valid.clone();
    huge[24..32].copy_from_slice(&(1u64 << 50).to_be_bytes());
    refused_and_not_kept("huge.qcow2", huge, "above the limit of 64TiB");

    let mut short_l1 = valid;
    short_l1[36..40].copy_from_slice(&0u32.to_be_bytes());
    refused_and_not_kept("short.qcow2", short_l1, "its L1 table has 0 entries");
}

#[test]
fn a_planted_base_with_the_wrong_sha256_is_refused_and_left_in_place() {
    let published = disk(DISK, 21);
    let server = Server::start();
    server.route("/base.raw", Route::File(file(published.clone())));
    let pod = Pod::new();
    std::fs::create_dir_all(&pod.image_dir).expect("image dir");
    let planted = disk(DISK, 22);
    let base = pod.image_dir.join("base.raw");
    std::fs::write(&base, &planted).expect("plant");

    let expected = sha256(&published);
    let outcome = pod.run(&server.url("/base.raw"), &[("IMG_SHA256", &expected)]);
    outcome.failed_with(&format!(
        "is {}, but IMG_SHA256 is {expected}",
        sha256(&planted)
    ));
    assert!(outcome.stderr.contains("left in place"), "{outcome:#?}");
    assert_eq!(std::fs::read(&base).expect("base"), planted, "not replaced");
    assert!(server.seen("/base.raw").is_empty(), "nothing downloaded");
}

#[test]
fn a_planted_base_with_the_right_sha256_is_verified_once_then_by_its_record() {
    let body = disk(DISK, 23);
    let digest = sha256(&body);
    let pod = Pod::new();
    std::fs::create_dir_all(&pod.image_dir).expect("image dir");
    let base = pod.image_dir.join("base.raw");
    std::fs::write(&base, &body).expect("plant");
    let source = "http://127.0.0.1:9/base.raw";
    let pinned = [("IMG_SHA256", digest.as_str())];

    let first = pod.run(source, &pinned);
    first.paths();
    assert!(
        first.stderr.contains("verified by hashing it"),
        "{first:#?}"
    );
    let record = pod.image_dir.join(".base.raw.verified");
    let mode = std::fs::metadata(&record)
        .expect("record")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the record is private");

    let second = pod.run(source, &pinned);
    second.paths();
    assert!(
        second
            .stderr
            .contains("verified by its verification record"),
        "the unchanged file is not hashed again: {second:#?}"
    );

    // Touched: hashed again (and still right).
    let handle = std::fs::File::options()
        .write(true)
        .open(&base)
        .expect("open");
    handle
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("touch");
    let third = pod.run(source, &pinned);
    third.paths();
    assert!(
        third.stderr.contains("verified by hashing it"),
        "{third:#?}"
    );

    // One byte changed in place, same size: the record does not vouch for it any more.
    let mut handle = handle;
    handle.seek(SeekFrom::Start(4096)).expect("seek");
    handle.write_all(&[!body[4096]]).expect("flip");
    drop(handle);
    pod.run(source, &pinned)
        .failed_with(&format!("but IMG_SHA256 is {digest}"));
    assert!(base.is_file(), "left in place");
}

#[test]
fn a_compressed_download_is_verified_by_its_record_on_the_next_start() {
    let body = disk(DISK, 24);
    let work = tempfile::tempdir().expect("tempdir");
    let raw = work.path().join("disk.raw");
    std::fs::write(&raw, &body).expect("raw");
    let packed = std::process::Command::new("zstd")
        .args(["-c", "-1"])
        .arg(&raw)
        .output()
        .expect("zstd");
    assert!(packed.status.success());
    let server = Server::start();
    server.route("/disk.raw.zst", Route::File(file(packed.stdout.clone())));
    let pod = Pod::new();
    let url = server.url("/disk.raw.zst");
    let digest = sha256(&packed.stdout);
    let pinned = [("IMG_SHA256", digest.as_str())];

    let (base, _) = pod.run(&url, &pinned).paths();
    let second = pod.run(&url, &pinned);
    assert_eq!(second.paths().0, base);
    assert!(
        second
            .stderr
            .contains("verified by its verification record"),
        "{second:#?}"
    );
    // Touched: the unpacked bytes are hashed and the record still ties them to the download.
    std::fs::File::options()
        .write(true)
        .open(&base)
        .expect("open")
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("touch");
    let third = pod.run(&url, &pinned);
    third.paths();
    assert!(
        third.stderr.contains("verified by hashing it"),
        "{third:#?}"
    );
    assert_eq!(server.full_downloads("/disk.raw.zst"), 1);
}

#[test]
fn an_error_about_a_text_file_describes_it_without_quoting_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let shadow = work.path().join("shadow");
    std::fs::write(&shadow, SHADOW).expect("shadow");
    let pod = Pod::new();
    let outcome = pod.run(
        "http://127.0.0.1:9/unused.raw",
        &[("IMG_TARGET", &shadow.display().to_string())],
    );
    outcome.failed_with(&format!("text ({} bytes), not a disk image", SHADOW.len()));
    for secret in ["root:", "s3cr3tSALT", "HASHofTHE", "99999"] {
        assert!(
            !outcome.stderr.contains(secret),
            "{secret} leaked: {outcome:#?}"
        );
        assert!(
            !outcome.stdout.contains(secret),
            "{secret} leaked: {outcome:#?}"
        );
    }

    // The same bytes downloaded.
    let (outcome, _pod) = download("shadow.raw", SHADOW.as_bytes().to_vec());
    outcome.failed_with("received text");
    assert!(!outcome.stderr.contains("s3cr3tSALT"), "{outcome:#?}");
}

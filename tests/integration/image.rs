//! `kvm-manager image` against a local HTTP server: download once, resume, verify, reject
//! what is not a disk, and an overlay that qemu accepts and that is never rewritten.

mod base;
mod ends;
mod parallel;
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use self::server::{File, Route, Server};
use crate::support::{names_in, Running, BIN};

const T: Duration = Duration::from_secs(60);
const DISK: usize = 4 << 20;

/// Deterministic bytes that look like a raw disk (boot signature, not text).
fn disk(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file(body: Vec<u8>) -> File {
    File {
        body: body.into(),
        etag: Some("\"v1\"".into()),
        ranges: true,
        ..File::default()
    }
}

/// One pod's volumes.
struct Pod {
    _dir: tempfile::TempDir,
    image_dir: PathBuf,
    pet_dir: PathBuf,
}

impl Pod {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let image_dir = dir.path().join("image");
        let pet_dir = dir.path().join("pet");
        std::fs::create_dir_all(&pet_dir).expect("pet dir");
        Self {
            image_dir,
            pet_dir,
            _dir: dir,
        }
    }

    fn command(&self, source: &str, extra: &[(&str, &str)]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("image")
            .env("IMG_SOURCE", source)
            .env("IMAGE_DIR", &self.image_dir)
            .env("PET_DIR", &self.pet_dir)
            .env("LOG_LEVEL", "info")
            .envs(extra.iter().copied());
        command
    }

    fn run(&self, source: &str, extra: &[(&str, &str)]) -> Outcome {
        let mut command = Command::new("timeout");
        let inner = self.command(source, extra);
        command
            .arg("120")
            .arg(inner.get_program())
            .args(inner.get_args());
        for (key, value) in inner.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        let output = command.output().expect("run kvm-manager image");
        Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The base and overlay paths printed on success.
    fn paths(&self) -> (PathBuf, PathBuf) {
        assert_eq!(self.code, Some(0), "{self:#?}");
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "two paths on stdout: {self:#?}");
        (PathBuf::from(lines[0]), PathBuf::from(lines[1]))
    }

    fn failed_with(&self, needle: &str) {
        assert_eq!(self.code, Some(3), "{self:#?}");
        assert!(self.stderr.contains(needle), "{needle:?} not in {self:#?}");
    }
}

fn qemu(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (install qemu-utils: scripts/deps): {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {args:?}: {text}");
    text
}

#[test]
fn qcow2_base_gets_a_v3_overlay_that_qemu_accepts_and_reruns_never_rewrite() {
    let work = tempfile::tempdir().expect("tempdir");
    let raw = work.path().join("disk.raw");
    std::fs::write(&raw, disk(DISK, 1)).expect("raw");
    let qcow2 = work.path().join("disk.qcow2");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            &raw.display().to_string(),
            &qcow2.display().to_string(),
        ],
    );
    let bytes = std::fs::read(&qcow2).expect("qcow2");
    let server = Server::start();
    server.route("/base.qcow2", Route::File(file(bytes.clone())));
    let pod = Pod::new();
    let url = server.url("/base.qcow2");
    let digest = sha256(&bytes);

    let (base, overlay) = pod.run(&url, &[("IMG_SHA256", &digest)]).paths();
    assert_eq!(base, pod.image_dir.join("base.qcow2"));
    assert_eq!(sha256(&std::fs::read(&base).expect("base")), digest);
    assert_eq!(
        names_in(&pod.image_dir),
        [".base.qcow2.lock", ".base.qcow2.verified", "base.qcow2"],
        "no temporary files left; the verification record beside the base"
    );
    let state = names_in(&pod.pet_dir);
    assert!(
        state.iter().any(|n| n.ends_with(".state.json")),
        "{state:?}"
    );

    let overlay_arg = overlay.display().to_string();
    qemu("qemu-img", &["check", &overlay_arg]);
    let info = qemu(
        "qemu-img",
        &["info", "--backing-chain", "--output=json", &overlay_arg],
    );
    let chain: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(chain[0]["format"], "qcow2");
    assert_eq!(chain[0]["backing-filename"], base.display().to_string());
    assert_eq!(chain[0]["backing-filename-format"], "qcow2");
    assert_eq!(
        chain[0]["format-specific"]["data"]["compat"], "1.1",
        "qcow2 v3"
    );
    assert_eq!(chain[1]["filename"], base.display().to_string());
    assert_eq!(chain[0]["virtual-size"], DISK);

    // A rerun uses the cached base without the network and leaves the overlay as it was.
    let before = std::fs::read(&overlay).expect("overlay");
    let requests = server.seen("/base.qcow2").len();
    assert_eq!(
        pod.run(&url, &[("IMG_SHA256", &digest)]).paths(),
        (base.clone(), overlay.clone())
    );
    assert_eq!(
        std::fs::read(&overlay).expect("overlay"),
        before,
        "byte-identical"
    );
    assert_eq!(
        server.seen("/base.qcow2").len(),
        requests,
        "no request for a cached base"
    );

    // The guest's writes survive a rerun; a larger VM_DISK_SIZE grows the disk.
    qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xab 0 64k", &overlay_arg],
    );
    pod.run(&url, &[("VM_DISK_SIZE", "64Mi")]).paths();
    let read = qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0xab 0 64k", &overlay_arg],
    );
    assert!(!read.contains("Pattern verification failed"), "{read}");
    qemu("qemu-img", &["check", &overlay_arg]);
    let info = qemu("qemu-img", &["info", "--output=json", &overlay_arg]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["virtual-size"], 64 << 20);

    // A smaller size is only a warning.
    let outcome = pod.run(&url, &[("VM_DISK_SIZE", "8Mi")]);
    outcome.paths();
    assert!(outcome.stderr.contains("never shrink"), "{outcome:#?}");
}

#[test]
fn an_overlay_on_another_base_is_refused_with_the_choices() {
    let server = Server::start();
    server.route("/a.raw", Route::File(file(disk(DISK, 2))));
    server.route("/b.raw", Route::File(file(disk(DISK, 3))));
    let pod = Pod::new();
    let (_, overlay) = pod.run(&server.url("/a.raw"), &[]).paths();
    let before = std::fs::read(&overlay).expect("overlay");
    let outcome = pod.run(&server.url("/b.raw"), &[]);
    outcome.failed_with("qemu-img rebase");
    assert!(outcome.stderr.contains("a.raw"), "{outcome:#?}");
    assert_eq!(
        std::fs::read(&overlay).expect("overlay"),
        before,
        "untouched"
    );
}

#[test]
fn a_host_name_in_img_source_is_resolved_by_the_static_binary() {
    // The binary is linked statically (.cargo/config.toml): host names must still resolve,
    // through glibc's built-in "files" source here.
    let body = disk(DISK, 7);
    let server = Server::start();
    server.route("/named.raw", Route::File(file(body.clone())));
    let pod = Pod::new();
    let url = server.url("/named.raw").replace("127.0.0.1", "localhost");
    assert!(url.starts_with("http://localhost:"), "{url}");
    let (base, _) = pod.run(&url, &[("IMG_SHA256", &sha256(&body))]).paths();
    assert_eq!(sha256(&std::fs::read(base).expect("base")), sha256(&body));
}

#[test]
fn a_cut_connection_is_resumed_with_a_validated_range_request() {
    let body = disk(DISK, 4);
    let server = Server::start();
    server.route(
        "/cut.raw",
        Route::File(File {
            cut_first: 1,
            ..file(body.clone())
        }),
    );
    let pod = Pod::new();
    let (base, _) = pod
        .run(&server.url("/cut.raw"), &[("IMG_SHA256", &sha256(&body))])
        .paths();
    assert_eq!(sha256(&std::fs::read(base).expect("base")), sha256(&body));
    let seen = server.seen("/cut.raw");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].status, 206, "{seen:?}");
    assert_eq!(seen[1].range.as_deref(), Some("bytes=2097152-"), "{seen:?}");
    assert_eq!(seen[1].if_range.as_deref(), Some("\"v1\""), "{seen:?}");
}

#[test]
fn a_server_without_range_support_starts_over_and_5xx_is_retried() {
    let body = disk(DISK, 5);
    let server = Server::start();
    let no_ranges = File {
        ranges: false,
        cut_first: 1,
        fail_first: 2,
        ..file(body.clone())
    };
    server.route("/plain.raw", Route::File(no_ranges));
    let pod = Pod::new();
    let (base, _) = pod
        .run(&server.url("/plain.raw"), &[("IMG_SHA256", &sha256(&body))])
        .paths();
    assert_eq!(sha256(&std::fs::read(base).expect("base")), sha256(&body));
    let statuses: Vec<u16> = server.seen("/plain.raw").iter().map(|s| s.status).collect();
    assert_eq!(statuses, [500, 500, 200, 200]);
}

#[test]
fn a_404_fails_at_once_naming_the_status_and_url() {
    let server = Server::start();
    let pod = Pod::new();
    let url = server.url("/missing.qcow2");
    let outcome = pod.run(&url, &[]);
    outcome.failed_with("404 Not Found");
    assert!(outcome.stderr.contains(&url), "{outcome:#?}");
    assert_eq!(server.seen("/missing.qcow2").len(), 1, "no retry on 4xx");
    server.route("/private.qcow2", Route::Status(403));
    pod.run(&server.url("/private.qcow2"), &[])
        .failed_with("403 Forbidden");
    assert_eq!(server.seen("/private.qcow2").len(), 1, "no retry on 4xx");
}

#[test]
fn an_html_page_is_rejected_saying_what_was_received() {
    let server = Server::start();
    server.route("/login.qcow2", Route::Html);
    let pod = Pod::new();
    let outcome = pod.run(&server.url("/login.qcow2"), &[]);
    outcome.failed_with("received an HTML page");
    // Described, never quoted: a page may carry a token, a file may be /etc/shadow.
    assert!(!outcome.stderr.contains("<!DOCTYPE html>"), "{outcome:#?}");
    assert!(!outcome.stderr.contains("Please log in"), "{outcome:#?}");
    assert_eq!(
        names_in(&pod.image_dir),
        [".login.qcow2.lock"],
        "nothing kept"
    );
}

#[test]
fn a_checksum_mismatch_is_retried_once_then_fails_and_leaves_nothing() {
    let server = Server::start();
    server.route("/wrong.raw", Route::File(file(disk(DISK, 6))));
    let pod = Pod::new();
    let outcome = pod.run(
        &server.url("/wrong.raw"),
        &[("IMG_SHA256", &"0".repeat(64))],
    );
    outcome.failed_with("but IMG_SHA256 is 0000");
    assert_eq!(server.full_downloads("/wrong.raw"), 2);
    assert_eq!(names_in(&pod.image_dir), [".wrong.raw.lock"]);
}

#[test]
fn redirects_are_followed_and_compressed_images_are_unpacked() {
    let body = disk(DISK, 7);
    let work = tempfile::tempdir().expect("tempdir");
    let raw = work.path().join("disk.raw");
    std::fs::write(&raw, &body).expect("raw");
    let server = Server::start();
    for (tool, suffix) in [("xz", "xz"), ("gzip", "gz"), ("zstd", "zst")] {
        let packed = Command::new(tool)
            .args(["-c", "-1"])
            .arg(&raw)
            .output()
            .expect("compressor");
        assert!(packed.status.success(), "{tool}");
        server.route(
            &format!("/disk.raw.{suffix}"),
            Route::File(file(packed.stdout.clone())),
        );
        // Without a suffix the magic bytes tell.
        server.route(
            &format!("/{suffix}-magic.raw"),
            Route::File(file(packed.stdout)),
        );
    }
    server.route(
        "/moved.raw.zst",
        Route::Redirect(server.url("/disk.raw.zst")),
    );
    for path in [
        "/disk.raw.xz",
        "/disk.raw.gz",
        "/moved.raw.zst",
        "/xz-magic.raw",
        "/gz-magic.raw",
    ] {
        let pod = Pod::new();
        let (base, _) = pod.run(&server.url(path), &[]).paths();
        assert!(
            !base.display().to_string().ends_with(".xz"),
            "suffix stripped"
        );
        assert_eq!(
            sha256(&std::fs::read(&base).expect("base")),
            sha256(&body),
            "{path}"
        );
    }
}

#[test]
fn a_local_path_source_is_copied_and_verified() {
    let body = disk(DISK, 8);
    let work = tempfile::tempdir().expect("tempdir");
    let raw = work.path().join("local.raw");
    std::fs::write(&raw, &body).expect("raw");
    let pod = Pod::new();
    let source = format!("file://{}", raw.display());
    let (base, _) = pod.run(&source, &[("IMG_SHA256", &sha256(&body))]).paths();
    assert_eq!(base, pod.image_dir.join("local.raw"));
    assert_eq!(std::fs::read(base).expect("base"), body);
}

#[test]
fn eight_concurrent_pods_download_once_and_all_succeed() {
    let body = disk(DISK, 9);
    let server = Server::start();
    server.route("/shared.raw", Route::File(file(body.clone())));
    server.throttle(8 << 20);
    let shared = Pod::new();
    let url = server.url("/shared.raw");
    let mut running: Vec<(Pod, Running)> = (0..8)
        .map(|_| {
            let pod = Pod::new();
            let mut command = shared.command(&url, &[("IMG_SHA256", &sha256(&body))]);
            command.env("PET_DIR", &pod.pet_dir);
            let child = Running::spawn(&mut command);
            (pod, child)
        })
        .collect();
    for (_, child) in &mut running {
        let status = child.wait(T);
        assert!(status.success(), "{}", child.output());
    }
    assert_eq!(server.full_downloads("/shared.raw"), 1);
    assert_eq!(server.seen("/shared.raw").len(), 1);
    let waited = running
        .iter()
        .filter(|(_, c)| c.output().contains("waiting for it"))
        .count();
    assert!(waited >= 1, "the others said they were waiting");
    let base = shared.image_dir.join("shared.raw");
    assert_eq!(sha256(&std::fs::read(base).expect("base")), sha256(&body));
}

/// Waits until the partial download has at least `bytes`.
fn wait_for_partial(part: &Path, bytes: u64) {
    let deadline = Instant::now() + T;
    while std::fs::metadata(part).map_or(0, |m| m.len()) < bytes {
        assert!(
            Instant::now() < deadline,
            "no partial download at {}",
            part.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_kill_9_mid_download_are_resumed_to_the_right_digest() {
    let body = disk(16 << 20, 10);
    let server = Server::start();
    server.route("/slow.raw", Route::File(file(body.clone())));
    server.throttle(4 << 20);
    let pod = Pod::new();
    let url = server.url("/slow.raw");
    let digest = sha256(&body);
    let part = pod.image_dir.join(".slow.raw.part");

    // SIGTERM: exits 128+15 and keeps the partial file.
    let mut first = Running::spawn(&mut pod.command(&url, &[("IMG_SHA256", &digest)]));
    wait_for_partial(&part, 1 << 20);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(first.wait(T).code(), Some(143), "{}", first.output());
    let kept = std::fs::metadata(&part).expect("partial kept").len();

    // SIGKILL: no chance to clean up; the lock dies with the process.
    let mut second = Running::spawn(&mut pod.command(&url, &[("IMG_SHA256", &digest)]));
    wait_for_partial(&part, kept + (1 << 20));
    second.child.kill().expect("SIGKILL");
    second.wait(T);

    server.throttle(0);
    let (base, _) = pod.run(&url, &[("IMG_SHA256", &digest)]).paths();
    assert_eq!(sha256(&std::fs::read(base).expect("base")), digest);
    let seen = server.seen("/slow.raw");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.status == 206 && s.if_range.is_some()),
        "{seen:?}"
    );
    assert_eq!(server.full_downloads("/slow.raw"), 1, "{seen:?}");
}

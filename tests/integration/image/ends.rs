//! Downloads that end, and credentials that stay secret: `kvm-manager image` against servers
//! that misbehave (cut every response, drip, stall, send forever, a decompression bomb) ends
//! in exit 3 within a bounded time, leaves behind only a partial file it can resume, and says
//! the sizes it reached; a password or token in `IMG_SOURCE` or `IMG_AUTH_FILE` reaches the
//! server and nothing else.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::server::{File, Route, Server};
use super::{disk, file, names_in, sha256, Outcome, Pod, DISK};
use crate::support::{require_root, BIN};

/// Every misbehaving server here must be given up on well within this.
const BOUND: Duration = Duration::from_secs(60);

fn timed(run: impl FnOnce() -> Outcome) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = run();
    (outcome, started.elapsed())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// The number that follows `before` in `text`.
fn number_after(text: &str, before: &str) -> u64 {
    let at = text
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} not in {text}"));
    text[at + before.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {before:?} in {text}"))
}

#[test]
fn a_server_that_cuts_every_response_short_is_given_up_after_bounded_attempts() {
    let server = Server::start();
    // With a validator: every attempt brings bytes that can be resumed, which earns one more
    // attempt each, at most FETCH_ATTEMPTS more: 4 requests, each half of what was left.
    server.route(
        "/cut.raw",
        Route::File(File {
            cut_first: usize::MAX,
            ..file(disk(DISK, 20))
        }),
    );
    let pod = Pod::new();
    let (outcome, took) = timed(|| pod.run(&server.url("/cut.raw"), &[("FETCH_ATTEMPTS", "2")]));
    outcome.failed_with("gave up downloading");
    assert!(took < BOUND, "took {took:?}");
    assert!(outcome.stderr.contains("after 4 attempts"), "{outcome:#?}");
    let received = DISK - DISK / 16;
    let sizes = format!("broke off after {received} of {DISK} bytes");
    assert!(outcome.stderr.contains(&sizes), "{sizes:?} in {outcome:#?}");
    assert!(
        outcome
            .stderr
            .contains("is kept and resumed on the next start"),
        "{outcome:#?}"
    );
    assert_eq!(server.seen("/cut.raw").len(), 4);
    assert_eq!(
        names_in(&pod.image_dir),
        [".cut.raw.lock", ".cut.raw.part", ".cut.raw.part.meta"],
        "a resumable partial stays, nothing else"
    );
    let part = pod.image_dir.join(".cut.raw.part");
    assert_eq!(
        std::fs::metadata(&part).expect("part").len(),
        received as u64
    );
    assert_eq!(mode(&part), 0o600);
    assert_eq!(mode(&pod.image_dir.join(".cut.raw.part.meta")), 0o600);

    // Without a validator nothing can be resumed: no progress, no extra attempt, no file.
    server.route(
        "/cut-plain.raw",
        Route::File(File {
            body: disk(DISK, 21).into(),
            cut_first: usize::MAX,
            ..File::default()
        }),
    );
    let pod = Pod::new();
    let (outcome, took) =
        timed(|| pod.run(&server.url("/cut-plain.raw"), &[("FETCH_ATTEMPTS", "2")]));
    outcome.failed_with("after 2 attempts");
    assert!(took < BOUND, "took {took:?}");
    let sizes = format!("broke off after {} of {DISK} bytes", DISK / 2);
    assert!(outcome.stderr.contains(&sizes), "{sizes:?} in {outcome:#?}");
    assert!(outcome.stderr.contains("nothing was kept"), "{outcome:#?}");
    assert_eq!(server.seen("/cut-plain.raw").len(), 2);
    assert_eq!(names_in(&pod.image_dir), [".cut-plain.raw.lock"]);
}

#[test]
fn a_body_that_drips_or_stalls_is_given_up_by_rate_and_by_timeout() {
    let server = Server::start();
    server.route(
        "/drip.raw",
        Route::Drip {
            len: DISK,
            every: Duration::from_millis(500),
        },
    );
    let pod = Pod::new();
    let limits = [
        ("FETCH_ATTEMPTS", "2"),
        ("FETCH_MIN_RATE", "1Ki"),
        ("FETCH_RATE_WINDOW", "3s"),
        ("FETCH_STALL_TIMEOUT", "30s"),
    ];
    let (outcome, took) = timed(|| pod.run(&server.url("/drip.raw"), &limits));
    outcome.failed_with("below FETCH_MIN_RATE (1024 bytes/s)");
    assert!(took < BOUND, "took {took:?}");
    assert!(outcome.stderr.contains("after 2 attempts"), "{outcome:#?}");
    assert!(
        outcome.stderr.contains("in the last 3s"),
        "the window: {outcome:#?}"
    );
    assert_eq!(server.seen("/drip.raw").len(), 2);
    assert_eq!(names_in(&pod.image_dir), [".drip.raw.lock"]);

    // Headers, then silence.
    server.route(
        "/stall.raw",
        Route::Drip {
            len: 16,
            every: Duration::from_secs(30),
        },
    );
    let pod = Pod::new();
    let limits = [("FETCH_ATTEMPTS", "2"), ("FETCH_STALL_TIMEOUT", "2s")];
    let (outcome, took) = timed(|| pod.run(&server.url("/stall.raw"), &limits));
    outcome.failed_with("sent nothing for 2s (FETCH_STALL_TIMEOUT) after 0 bytes");
    assert!(took < BOUND, "took {took:?}");
    assert!(outcome.stderr.contains("after 2 attempts"), "{outcome:#?}");
    assert_eq!(server.seen("/stall.raw").len(), 2);
    assert_eq!(names_in(&pod.image_dir), [".stall.raw.lock"]);
}

/// A small tmpfs as IMAGE_DIR, so that filling it harms nobody; unmounted on drop.
struct SmallVolume(PathBuf);

impl SmallVolume {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "mount a tmpfs at {}", path.display());
        Self(path.to_path_buf())
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn an_endless_body_without_a_length_stops_at_the_reserve_and_leaves_nothing() {
    if !require_root("an_endless_body_without_a_length_stops_at_the_reserve") {
        return;
    }
    let server = Server::start();
    server.route("/endless.raw", Route::Endless);
    let pod = Pod::new();
    let _volume = SmallVolume::mount(&pod.image_dir, "64m");
    let (outcome, took) = timed(|| {
        pod.run(
            &server.url("/endless.raw"),
            &[("IMAGE_DIR_RESERVE", "32Mi")],
        )
    });
    outcome.failed_with("IMAGE_DIR_RESERVE (32MiB)");
    assert!(took < BOUND, "took {took:?}");
    assert!(
        outcome.stderr.contains("(the server sent no length)"),
        "{outcome:#?}"
    );
    let stopped_at = number_after(&outcome.stderr, "stopped the download at ");
    assert!(
        (28 * MIB..=33 * MIB).contains(&stopped_at),
        "about 64 MiB - 32 MiB: {stopped_at}"
    );
    assert_eq!(
        server.seen("/endless.raw").len(),
        1,
        "a full volume is not retried"
    );
    assert_eq!(names_in(&pod.image_dir), [".endless.raw.lock"]);
}

/// A zstd frame of `total` zero bytes made of RLE blocks: 4 bytes per 128 KiB.
fn zstd_zeros(total: u64) -> Vec<u8> {
    const BLOCK: u32 = 128 << 10;
    // Magic; no content size, no checksum; a window of 2^(10+7) = 128 KiB.
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    let blocks = total / u64::from(BLOCK);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (BLOCK << 3) | (1 << 1) | last;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.push(0);
    }
    out
}

#[test]
fn a_decompression_bomb_stops_at_the_reserve_naming_the_unpacked_size() {
    if !require_root("a_decompression_bomb_stops_at_the_reserve") {
        return;
    }
    let bomb = zstd_zeros(64 << 30);
    assert!(bomb.len() < (3 << 20), "64 GiB made small: {}", bomb.len());
    let server = Server::start();
    server.route("/bomb.raw.zst", Route::File(file(bomb.clone())));
    let pod = Pod::new();
    let _volume = SmallVolume::mount(&pod.image_dir, "64m");
    let (outcome, took) = timed(|| {
        pod.run(
            &server.url("/bomb.raw.zst"),
            &[("IMAGE_DIR_RESERVE", "32Mi")],
        )
    });
    outcome.failed_with("IMAGE_DIR_RESERVE (32MiB)");
    assert!(took < BOUND, "took {took:?}");
    let unpacked = number_after(&outcome.stderr, "unpacked to ");
    assert!(
        (20 * MIB..=33 * MIB).contains(&unpacked),
        "the unpacked bytes so far, not the compressed size: {unpacked}"
    );
    let downloaded = number_after(&outcome.stderr, "stopped the download at ");
    assert!(
        downloaded <= bomb.len() as u64 && downloaded < MIB,
        "{downloaded}"
    );
    assert!(
        outcome.stderr.contains(&format!(" of {},", bomb.len())),
        "{outcome:#?}"
    );
    assert_eq!(
        server.seen("/bomb.raw.zst").len(),
        1,
        "a bomb is not retried"
    );
    assert_eq!(
        names_in(&pod.image_dir),
        [".bomb.raw.lock"],
        "a bomb is not kept to be resumed"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Fails when any secret is in the outcome or in any file under the pod's volumes.
fn assert_no_secret(pod: &Pod, outcome: &Outcome, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !outcome.stdout.contains(secret) && !outcome.stderr.contains(secret),
            "{secret:?} leaked into the output: {outcome:#?}"
        );
        for path in files_under(&pod.image_dir)
            .into_iter()
            .chain(files_under(&pod.pet_dir))
        {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} leaked into {}",
                path.display()
            );
        }
    }
}

#[test]
fn credentials_in_img_source_reach_the_server_and_no_log_error_or_file() {
    let body = disk(DISK, 22);
    let server = Server::start();
    let path = "/cred.raw?token=t0k3n-value&arch=amd64";
    server.route(
        path,
        Route::File(File {
            cut_first: 2,
            ..file(body.clone())
        }),
    );
    let url = server
        .url(path)
        .replace("http://", "http://alice:s3cr3t-pw@");
    let secrets = ["s3cr3t-pw", "t0k3n-value", "alice", "YWxpY2U6czNjcjN0LXB3"];
    let pod = Pod::new();

    // A failed first start (two cut responses: one attempt and the one it earned): warnings,
    // the final error and the kept partial download.
    let outcome = pod.run(&url, &[("FETCH_ATTEMPTS", "1")]);
    outcome.failed_with("gave up downloading http://***@127.0.0.1:");
    assert!(outcome.stderr.contains("token=***"), "{outcome:#?}");
    assert!(
        outcome.stderr.contains("arch=amd64"),
        "not a secret: {outcome:#?}"
    );
    assert_no_secret(&pod, &outcome, &secrets);
    assert_eq!(
        names_in(&pod.image_dir),
        [".cred.raw.lock", ".cred.raw.part", ".cred.raw.part.meta"]
    );
    for path in files_under(&pod.image_dir) {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }

    // The next start resumes that partial file (the redacted URL in it still matches).
    let outcome = pod.run(&url, &[("IMG_SHA256", &sha256(&body))]);
    let (base, _) = outcome.paths();
    assert_no_secret(&pod, &outcome, &secrets);
    assert_eq!(mode(&base), 0o644, "every pod on the volume reads the base");
    for path in files_under(&pod.image_dir)
        .into_iter()
        .filter(|p| *p != base)
    {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let seen = server.seen(path);
    assert_eq!(
        seen.iter().map(|s| s.status).collect::<Vec<_>>(),
        [200, 206, 206]
    );
    for request in &seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some("Basic YWxpY2U6czNjcjN0LXB3"),
            "the URL's user:password as basic authentication"
        );
    }

    // --help shows no variable's value, and an invalid URL is quoted redacted.
    let help = Command::new(BIN)
        .arg("--help")
        .env("IMG_SOURCE", &url)
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("IMG_AUTH_FILE"), "{help}");
    assert!(
        !help.contains("s3cr3t-pw") && !help.contains("t0k3n"),
        "{help}"
    );
    let outcome = pod.run(
        "ftp://alice:s3cr3t-pw@h.invalid/x.raw?token=t0k3n-value",
        &[],
    );
    assert_eq!(outcome.code, Some(2), "{outcome:#?}");
    assert!(outcome.stderr.contains("IMG_SOURCE"), "{outcome:#?}");
    assert_no_secret(&pod, &outcome, &secrets);
}

#[test]
fn img_auth_file_is_the_authorization_header_and_stays_on_its_host() {
    let body = disk(DISK, 23);
    let origin = Server::start();
    let mirror = Server::start();
    mirror.route("/moved.raw", Route::File(file(body.clone())));
    // Another host: the name `localhost` and another port.
    let elsewhere = mirror.url("/moved.raw").replace("127.0.0.1", "localhost");
    origin.route("/moved.raw", Route::Redirect(elsewhere));
    origin.route("/direct.raw", Route::File(file(body.clone())));
    let secrets = dir_with_secrets();
    let bearer = secrets.path().join("token");
    let basic = secrets.path().join("basic");

    let pod = Pod::new();
    let token = bearer.display().to_string();
    let outcome = pod.run(&origin.url("/moved.raw"), &[("IMG_AUTH_FILE", &token)]);
    outcome.paths();
    assert_no_secret(&pod, &outcome, &["b3arer-t0ken"]);
    let asked = origin.seen("/moved.raw");
    assert_eq!(
        asked[0].authorization.as_deref(),
        Some("Bearer b3arer-t0ken")
    );
    let followed = mirror.seen("/moved.raw");
    assert_eq!(followed.len(), 1);
    assert_eq!(
        followed[0].authorization, None,
        "no credential for another host"
    );

    let pod = Pod::new();
    let user_password = basic.display().to_string();
    let outcome = pod.run(
        &origin.url("/direct.raw"),
        &[("IMG_AUTH_FILE", &user_password)],
    );
    outcome.paths();
    assert_no_secret(&pod, &outcome, &["pa55word", "Ym9iOnBhNTV3b3Jk"]);
    assert_eq!(
        origin.seen("/direct.raw")[0].authorization.as_deref(),
        Some("Basic Ym9iOnBhNTV3b3Jk")
    );

    // Refused at once, with exit 2, when it cannot be a credential file — a FIFO included,
    // which must not block the start.
    let fifo = secrets.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let missing = secrets.path().join("missing");
    for (path, why) in [
        (&missing, "cannot open it"),
        (&secrets.path().to_path_buf(), "not a regular file"),
        (&fifo, "not a regular file"),
    ] {
        let pod = Pod::new();
        let path = path.display().to_string();
        let (outcome, took) =
            timed(|| pod.run(&origin.url("/direct.raw"), &[("IMG_AUTH_FILE", &path)]));
        assert_eq!(outcome.code, Some(2), "{path}: {outcome:#?}");
        assert!(
            outcome.stderr.contains("IMG_AUTH_FILE") && outcome.stderr.contains(why),
            "{outcome:#?}"
        );
        assert!(took < BOUND, "took {took:?}");
    }
    let pod = Pod::new();
    let with_password = origin
        .url("/direct.raw")
        .replace("http://", "http://bob:pa55word@");
    let outcome = pod.run(&with_password, &[("IMG_AUTH_FILE", &token)]);
    assert_eq!(outcome.code, Some(2), "{outcome:#?}");
    assert!(outcome.stderr.contains("only"), "{outcome:#?}");
    assert_no_secret(&pod, &outcome, &["pa55word", "b3arer-t0ken"]);
}

/// A directory like a mounted Secret: a bearer token and a user:password, each in a key.
fn dir_with_secrets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "b3arer-t0ken\n").expect("token");
    std::fs::write(dir.path().join("basic"), "bob:pa55word").expect("basic");
    dir
}

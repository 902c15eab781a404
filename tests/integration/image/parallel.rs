//! `FETCH_CONNECTIONS=4`: a large download is fetched in spans over several connections into
//! one partial file, and keeps every promise of the single stream — the digest, one download
//! across pods, resume after kill -9 or a cut connection (only the missing ranges), `If-Range`,
//! one stream for a server without ranges and for compressed images, nothing left behind.
//! `FETCH_PARALLEL_MIN_SIZE=1Mi` makes the test files "large".

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::server::{File, Route, Server};
use super::{disk, file, sha256, Pod, T};
use crate::support::{names_in, Running};

const FOUR: [(&str, &str); 2] = [
    ("FETCH_CONNECTIONS", "4"),
    ("FETCH_PARALLEL_MIN_SIZE", "1Mi"),
];
const SIZE: usize = 16 << 20;

fn four_and<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    FOUR.iter().chain(extra).copied().collect()
}

/// Requests that asked for a span `bytes=A-B`.
fn span_requests(server: &Server, path: &str) -> usize {
    server
        .seen(path)
        .iter()
        .filter(|s| s.range.as_deref().is_some_and(|r| !r.ends_with('-')))
        .count()
}

/// Starts a download of `url` and kills it with SIGKILL once `journal` holds four records:
/// some of every connection's bytes are on disk.
fn kill_9_once_every_connection_wrote(pod: &Pod, url: &str, env: &[(&str, &str)], journal: &Path) {
    let mut first = Running::spawn(&mut pod.command(url, env));
    let deadline = Instant::now() + T;
    while std::fs::metadata(journal).map_or(0, |m| m.len()) < 4 * 16 {
        assert!(
            Instant::now() < deadline,
            "no journal at {}",
            journal.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.child.kill().expect("SIGKILL");
    first.wait(T);
}

#[test]
fn four_connections_fetch_validated_spans_into_one_file_with_the_right_digest() {
    let body = disk(SIZE, 21);
    let digest = sha256(&body);
    let server = Server::start();
    server.route("/big.raw", Route::File(file(body.clone())));
    let pod = Pod::new();
    let outcome = pod.run(
        &server.url("/big.raw"),
        &four_and(&[("IMG_SHA256", &digest)]),
    );
    let (base, _) = outcome.paths();
    assert_eq!(sha256(&std::fs::read(&base).expect("base")), digest);
    assert!(
        outcome.stderr.contains("downloading over 4 connections"),
        "{outcome:#?}"
    );
    let seen = server.seen("/big.raw");
    assert_eq!(server.full_downloads("/big.raw"), 1, "{seen:?}");
    assert!(span_requests(&server, "/big.raw") >= 3, "{seen:?}");
    assert!(
        seen.iter()
            .filter(|s| s.range.is_some())
            .all(|s| s.status == 206 && s.if_range.as_deref() == Some("\"v1\"")),
        "every span is validated: {seen:?}"
    );
    assert_eq!(
        names_in(&pod.image_dir),
        [".big.raw.lock", ".big.raw.verified", "big.raw"],
        "no partial file, validator or journal left"
    );
}

#[test]
fn compressed_images_and_small_ones_use_one_stream_with_four_connections() {
    let body = disk(SIZE, 22);
    let work = tempfile::tempdir().expect("tempdir");
    let raw = work.path().join("disk.raw");
    std::fs::write(&raw, &body).expect("raw");
    let packed = Command::new("xz")
        .args(["-c", "-0"])
        .arg(&raw)
        .output()
        .expect("xz");
    assert!(packed.status.success());
    let server = Server::start();
    server.route("/disk.raw.xz", Route::File(file(packed.stdout.clone())));
    server.route("/magic.raw", Route::File(file(packed.stdout)));
    server.route("/small.raw", Route::File(file(body.clone())));
    for path in ["/disk.raw.xz", "/magic.raw"] {
        let pod = Pod::new();
        let (base, _) = pod
            .run(
                &server.url(path),
                &[FOUR[0], ("FETCH_PARALLEL_MIN_SIZE", "1")],
            )
            .paths();
        assert_eq!(sha256(&std::fs::read(base).expect("base")), sha256(&body));
        assert_eq!(server.seen(path).len(), 1, "{path}: one stream");
    }
    let pod = Pod::new();
    pod.run(&server.url("/small.raw"), &[FOUR[0]]).paths();
    assert_eq!(
        server.seen("/small.raw").len(),
        1,
        "below the default FETCH_PARALLEL_MIN_SIZE (64Mi)"
    );
}

#[test]
fn a_server_without_ranges_or_that_ignores_them_is_downloaded_over_one_stream() {
    let body = disk(SIZE, 23);
    let digest = sha256(&body);
    let server = Server::start();
    let no_ranges = File {
        ranges: false,
        ..file(body.clone())
    };
    server.route("/plain.raw", Route::File(no_ranges));
    let liar = File {
        ignores_ranges: true,
        ..file(body.clone())
    };
    server.route("/liar.raw", Route::File(liar));

    let pod = Pod::new();
    let url = server.url("/plain.raw");
    let (base, _) = pod.run(&url, &four_and(&[("IMG_SHA256", &digest)])).paths();
    assert_eq!(sha256(&std::fs::read(base).expect("base")), digest);
    let statuses: Vec<u16> = server.seen("/plain.raw").iter().map(|s| s.status).collect();
    assert_eq!(statuses, [200], "no Accept-Ranges: one request");

    // Says Accept-Ranges, then answers the spans with the whole file (same ETag).
    let pod = Pod::new();
    let outcome = pod.run(
        &server.url("/liar.raw"),
        &four_and(&[("IMG_SHA256", &digest)]),
    );
    let (base, _) = outcome.paths();
    assert_eq!(sha256(&std::fs::read(base).expect("base")), digest);
    assert!(
        outcome
            .stderr
            .contains("ignores ranges; downloading over one connection"),
        "{outcome:#?}"
    );
    let seen = server.seen("/liar.raw");
    let last = seen.last().expect("requests");
    assert_eq!(
        (last.status, last.range.as_deref()),
        (200, None),
        "{seen:?}"
    );
}

#[test]
fn cut_spans_are_resumed_from_the_journal_with_if_range() {
    let body = disk(SIZE, 24);
    let digest = sha256(&body);
    let server = Server::start();
    let cut = File {
        cut_first: 3,
        ..file(body.clone())
    };
    server.route("/cut.raw", Route::File(cut));
    let pod = Pod::new();
    let (base, _) = pod
        .run(
            &server.url("/cut.raw"),
            &four_and(&[("IMG_SHA256", &digest)]),
        )
        .paths();
    assert_eq!(sha256(&std::fs::read(base).expect("base")), digest);
    let seen = server.seen("/cut.raw");
    assert_eq!(server.full_downloads("/cut.raw"), 1, "{seen:?}");
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.if_range.as_deref() == Some("\"v1\"")),
        "{seen:?}"
    );
    // The cut halves were kept: well under two files' worth was sent in all.
    let sent = server.bytes_sent("/cut.raw");
    assert!(
        sent < 2 * SIZE as u64,
        "{sent} bytes for a {SIZE}-byte file"
    );
}

#[test]
fn eight_pods_with_four_connections_each_download_once() {
    let body = disk(SIZE, 25);
    let digest = sha256(&body);
    let server = Server::start();
    server.route("/shared.raw", Route::File(file(body.clone())));
    server.throttle(4 << 20);
    let shared = Pod::new();
    let url = server.url("/shared.raw");
    let extra = four_and(&[("IMG_SHA256", &digest)]);
    let mut running: Vec<(Pod, Running)> = (0..8)
        .map(|_| {
            let pod = Pod::new();
            let mut command = shared.command(&url, &extra);
            command.env("PET_DIR", &pod.pet_dir);
            let child = Running::spawn(&mut command);
            (pod, child)
        })
        .collect();
    for (_, child) in &mut running {
        let status = child.wait(T);
        assert!(status.success(), "{}", child.output());
    }
    let downloaded = running
        .iter()
        .filter(|(_, c)| c.output().contains("downloading over 4 connections"))
        .count();
    assert_eq!(downloaded, 1, "one pod downloads, the others wait");
    assert_eq!(server.full_downloads("/shared.raw"), 1);
    let sent = server.bytes_sent("/shared.raw");
    assert!(
        sent < 2 * SIZE as u64,
        "{sent} bytes for one {SIZE}-byte file"
    );
    let base = shared.image_dir.join("shared.raw");
    assert_eq!(sha256(&std::fs::read(base).expect("base")), digest);
}

#[test]
fn kill_9_mid_parallel_download_refetches_only_the_missing_ranges() {
    let body = disk(SIZE, 26);
    let digest = sha256(&body);
    let server = Server::start();
    server.route("/slow.raw", Route::File(file(body.clone())));
    // 1 MiB/s per connection: the journal records each connection's progress every second.
    server.throttle(1 << 20);
    let pod = Pod::new();
    let url = server.url("/slow.raw");
    let extra = four_and(&[("IMG_SHA256", &digest)]);
    let journal = pod.image_dir.join(".slow.raw.part.ranges");

    kill_9_once_every_connection_wrote(&pod, &url, &extra, &journal);
    let before = server.bytes_sent("/slow.raw");
    let requests_before = server.seen("/slow.raw").len();

    server.throttle(0);
    let outcome = pod.run(&url, &extra);
    let (base, _) = outcome.paths();
    assert_eq!(sha256(&std::fs::read(base).expect("base")), digest);
    let refetched = server.bytes_sent("/slow.raw") - before;
    assert!(
        refetched < SIZE as u64 - (2 << 20),
        "re-fetched {refetched} of {SIZE} bytes: {outcome:#?}"
    );
    let seen = server.seen("/slow.raw");
    assert!(
        seen[requests_before..]
            .iter()
            .all(|s| s.status == 206 && s.if_range.as_deref() == Some("\"v1\"")),
        "{seen:?}"
    );
    assert_eq!(server.full_downloads("/slow.raw"), 1, "{seen:?}");
}

#[test]
fn a_file_changed_between_starts_is_downloaded_anew_never_spliced() {
    let old = disk(SIZE, 27);
    let new = disk(SIZE, 28);
    let server = Server::start();
    server.route("/moving.raw", Route::File(file(old)));
    server.throttle(1 << 20);
    let pod = Pod::new();
    let url = server.url("/moving.raw");
    let journal = pod.image_dir.join(".moving.raw.part.ranges");

    kill_9_once_every_connection_wrote(&pod, &url, &FOUR, &journal);

    // The mirror now serves another file under another ETag.
    server.route(
        "/moving.raw",
        Route::File(File {
            etag: Some("\"v2\"".into()),
            ..file(new.clone())
        }),
    );
    server.throttle(0);
    let requests_before = server.seen("/moving.raw").len();
    let outcome = pod.run(&url, &FOUR);
    let (base, _) = outcome.paths();
    assert_eq!(
        sha256(&std::fs::read(base).expect("base")),
        sha256(&new),
        "the new file, whole: {outcome:#?}"
    );
    let seen = server.seen("/moving.raw");
    let resumed = &seen[requests_before..];
    assert!(
        resumed
            .iter()
            .any(|s| s.if_range.as_deref() == Some("\"v1\"") && s.status == 200),
        "the resume asked with the old validator and got the whole new file: {seen:?}"
    );
    assert!(
        outcome
            .stderr
            .contains("the file changed, or the server ignores ranges"),
        "{outcome:#?}"
    );
}

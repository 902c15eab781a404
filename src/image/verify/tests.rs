//! Verification records: when they answer for a base image, and when it is hashed again.

use super::*;

const A: &str = "aa";
const B: &str = "bb";
const C: &str = "cc";

fn identity(ino: u64) -> Identity {
    Identity {
        dev: 1,
        ino,
        size: 4096,
        mtime: 10,
        mtime_nsec: 0,
        ctime: 10,
        ctime_nsec: 5,
    }
}

fn record(sha256: &str, source: &str, ino: u64) -> Record {
    Record {
        sha256: sha256.to_owned(),
        source_sha256: source.to_owned(),
        identity: identity(ino),
    }
}

#[test]
fn an_unchanged_file_is_judged_by_its_record() {
    let r = record(A, A, 7);
    assert_eq!(
        by_record(Some(&r), &identity(7), A),
        Some(Verdict::Verified { cheap: true })
    );
    assert_eq!(
        by_record(Some(&r), &identity(7), B),
        Some(Verdict::Mismatch { actual: A.into() })
    );
}

#[test]
fn a_record_also_answers_for_the_digest_of_the_unpacked_file() {
    let r = record(A, C, 7);
    assert_eq!(
        by_record(Some(&r), &identity(7), A),
        Some(Verdict::Verified { cheap: true })
    );
}

#[test]
fn any_change_of_identity_or_no_record_means_hashing() {
    let r = record(A, A, 7);
    assert_eq!(by_record(Some(&r), &identity(8), A), None);
    let mut touched = identity(7);
    touched.ctime_nsec += 1;
    assert_eq!(by_record(Some(&r), &touched, A), None);
    assert_eq!(by_record(None, &identity(7), A), None);
}

#[test]
fn a_hashed_file_matches_directly_or_through_the_download_it_came_from() {
    assert_eq!(by_digest(None, A, A).0, Verdict::Verified { cheap: false });
    // Unpacked from a download whose digest was C.
    let r = record(A, C, 7);
    assert_eq!(
        by_digest(Some(&r), A, C),
        (Verdict::Verified { cheap: false }, C.to_owned())
    );
    assert_eq!(
        by_digest(Some(&r), A, B).0,
        Verdict::Mismatch { actual: C.into() }
    );
}

#[test]
fn a_record_of_other_bytes_vouches_for_nothing() {
    let r = record(B, C, 7);
    assert_eq!(
        by_digest(Some(&r), A, C).0,
        Verdict::Mismatch { actual: A.into() }
    );
}

#[test]
fn records_are_hidden_beside_the_base_and_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("debian.qcow2");
    std::fs::write(&base, b"disk").expect("write");
    assert_eq!(
        record_path(&base),
        dir.path().join(".debian.qcow2.verified")
    );
    let (digest, id) = hash(&base).expect("hash");
    let id = id.expect("unchanged while hashed");
    let r = Record {
        sha256: digest.clone(),
        source_sha256: digest,
        identity: id,
    };
    save(&base, &r).expect("save");
    assert_eq!(load(&base), Some(r));
    let mode = std::fs::metadata(record_path(&base)).expect("meta").mode();
    assert_eq!(mode & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}

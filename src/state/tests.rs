//! The pet state across restarts: kept, changed only by VM_MAC, corrupt files named.

use super::*;

fn host(name: &str) -> Hostname {
    Hostname::parse(name).expect("valid hostname")
}

#[test]
fn derived_mac_is_stable_unicast_and_differs_per_host() {
    let a = derived_mac(&host("vm-0"));
    assert_eq!(a, derived_mac(&host("vm-0")));
    assert_ne!(a, derived_mac(&host("vm-1")));
    assert_eq!(a.as_bytes()[0] & 1, 0, "unicast");
    assert_eq!(&a.as_bytes()[..3], &[0x52, 0x54, 0x00]);
}

#[test]
fn state_survives_a_restart_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = load_or_create(dir.path(), &host("vm-0"), None).expect("create");
    let second = load_or_create(dir.path(), &host("vm-0"), None).expect("reload");
    assert_eq!(first, second);
    assert_eq!(first.mac(), derived_mac(&host("vm-0")));
    assert_eq!(first.instance_id.len(), 36);
}

#[test]
fn configured_mac_wins_and_keeps_the_instance_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = load_or_create(dir.path(), &host("vm-0"), None).expect("create");
    let mac: MacAddr6 = "52:54:00:aa:bb:cc".parse().expect("mac");
    let second = load_or_create(dir.path(), &host("vm-0"), Some(mac)).expect("override");
    assert_eq!(second.mac(), mac);
    assert_eq!(second.instance_id, first.instance_id);
    let third = load_or_create(dir.path(), &host("vm-0"), None).expect("reload");
    assert_eq!(third.mac(), mac, "the override is persisted");
}

#[test]
fn peek_writes_nothing_and_agrees_with_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peeked = peek(dir.path(), &host("vm-0"), None).expect("peek");
    assert!(
        std::fs::read_dir(dir.path()).expect("ls").next().is_none(),
        "peek wrote a file"
    );
    let loaded = load_or_create(dir.path(), &host("vm-0"), None).expect("create");
    assert_eq!(peeked.mac, loaded.mac);
    assert_eq!(peek(dir.path(), &host("vm-0"), None).expect("peek"), loaded);
}

#[test]
fn load_writes_only_when_persisted_and_only_what_is_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = |dir: &Path| std::fs::read_dir(dir).expect("ls").next().is_none();
    let first = load(dir.path(), &host("vm-0"), None).expect("load");
    assert!(empty(dir.path()), "load wrote a file");
    first.persist().expect("persist");
    let again = load(dir.path(), &host("vm-0"), None).expect("reload");
    assert_eq!(again.state, first.state);
    assert!(
        again.unsaved.is_none(),
        "an unchanged state is not rewritten"
    );
    let mac: MacAddr6 = "52:54:00:aa:bb:cc".parse().expect("mac");
    let changed = load(dir.path(), &host("vm-0"), Some(mac)).expect("override");
    assert!(changed.unsaved.is_some(), "a new VM_MAC is written");
}

#[test]
fn the_file_keeps_the_mac_as_a_lowercase_string() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mac: MacAddr6 = "52:54:00:AA:BB:CC".parse().expect("mac");
    load_or_create(dir.path(), &host("vm-0"), Some(mac)).expect("create");
    let text = std::fs::read_to_string(path(dir.path(), &host("vm-0"))).expect("read");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["mac"], "52:54:00:aa:bb:cc");
    let written = r#"{"mac": "52:54:00:12:34:56", "instance_id": "x"}"#;
    std::fs::write(path(dir.path(), &host("vm-1")), written).expect("write");
    let state = load_or_create(dir.path(), &host("vm-1"), None).expect("load");
    assert_eq!(state.mac(), MacAddr6::new(0x52, 0x54, 0, 0x12, 0x34, 0x56));
}

#[test]
fn a_mac_that_is_not_one_makes_the_file_corrupt_instead_of_all_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = r#"{"mac": "not a mac", "instance_id": "x"}"#;
    std::fs::write(path(dir.path(), &host("vm-0")), written).expect("write");
    let err = peek(dir.path(), &host("vm-0"), None).expect_err("corrupt");
    assert!(matches!(err, StateError::Parse { .. }), "{err}");
}

#[test]
fn corrupt_state_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(path(dir.path(), &host("vm-0")), b"{not json").expect("write");
    let err = load_or_create(dir.path(), &host("vm-0"), None).expect_err("corrupt");
    assert!(err.to_string().contains("vm-0.state.json"), "{err}");
}

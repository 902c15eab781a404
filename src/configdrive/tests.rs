//! The deciding half (layout, golden files) and the inputs, without root or external tools.
//! Reading the ISO back with isoinfo/xorriso and cloud-init is in tests/integration.

use std::path::Path;

use super::input::tests::config_map;
use super::*;
use crate::config::DriveFormat;

fn host() -> Hostname {
    Hostname::parse("vm-0").expect("valid hostname")
}

fn state() -> PetState {
    PetState {
        mac: "52:54:00:12:34:56".parse().expect("a MAC"),
        instance_id: "5f0c1b2e-8a47-4c1e-9d3a-0b6f2e7c9a10".into(),
        firmware: None,
    }
}

fn drive(format: DriveFormat, dir: &Path) -> ConfigDriveConfig {
    ConfigDriveConfig {
        format,
        userdata: dir.join("userdata"),
        metadata: dir.join("metadata"),
        shares: Vec::new(),
    }
}

fn golden_inputs() -> layout::Inputs {
    let metadata = metadata::parse(
        Path::new("meta-data"),
        b"public-keys:\n  - ssh-ed25519 AAAAC3Nz test@example\nzone: lab\nhostname: custom-name\n",
    )
    .expect("metadata");
    layout::Inputs {
        user_data: Some(b"#cloud-config\npackages: [htop]\n".to_vec()),
        metadata,
    }
}

/// A readable listing of a layout: label, then each file's path, size and text.
fn render(layout: &Layout) -> String {
    let mut out = format!("label: {}\n", layout.label);
    for file in &layout.files {
        let text = String::from_utf8_lossy(file.bytes());
        out.push_str(&format!(
            "\n== {} ({} bytes)\n{text}",
            file.path,
            file.bytes().len()
        ));
    }
    out
}

/// Compares with `tests/golden/configdrive/<name>.txt`; `UPDATE_GOLDEN=1` rewrites it.
fn assert_golden(name: &str, actual: &str) {
    crate::test_support::assert_golden("configdrive", &format!("{name}.txt"), actual);
}

#[test]
fn config_2_layout_matches_golden() {
    let layout = layout::plan(
        layout::Format::ConfigDrive,
        golden_inputs(),
        &host(),
        &state(),
    )
    .expect("plan");
    assert_golden("config-2", &render(&layout));
}

#[test]
fn nocloud_layout_matches_golden() {
    let layout =
        layout::plan(layout::Format::NoCloud, golden_inputs(), &host(), &state()).expect("plan");
    assert_golden("nocloud", &render(&layout));
}

#[test]
fn layouts_without_inputs_still_carry_instance_id_and_hostname() {
    let empty = layout::Inputs::default();
    let config_2 = layout::plan(
        layout::Format::ConfigDrive,
        empty.clone(),
        &host(),
        &state(),
    )
    .expect("plan");
    let paths: Vec<&str> = config_2.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "openstack/2012-08-10/meta_data.json",
            "openstack/2012-08-10/network_data.json",
            "openstack/latest/meta_data.json",
            "openstack/latest/network_data.json",
        ]
    );
    let meta: serde_json::Value =
        serde_json::from_slice(config_2.files[0].bytes()).expect("meta_data.json");
    assert_eq!(meta["uuid"], state().instance_id);
    assert_eq!(meta["hostname"], "vm-0");

    let nocloud = layout::plan(layout::Format::NoCloud, empty, &host(), &state()).expect("plan");
    let user_data = nocloud
        .files
        .iter()
        .find(|f| f.path == "user-data")
        .expect("user-data");
    assert!(
        user_data.bytes().is_empty(),
        "cloud-init requires the file, even empty"
    );
}

#[test]
fn user_data_is_copied_byte_for_byte() {
    // gzip magic, a NUL, invalid UTF-8 and CRLF: nothing may be normalised.
    let raw: Vec<u8> = b"\x1f\x8b\x08\x00\xff\xfe\r\n#!/bin/sh\r\n".to_vec();
    let inputs = layout::Inputs {
        user_data: Some(raw.clone()),
        ..Default::default()
    };
    for format in [layout::Format::ConfigDrive, layout::Format::NoCloud] {
        let layout = layout::plan(format, inputs.clone(), &host(), &state()).expect("plan");
        let copies: Vec<_> = layout
            .files
            .iter()
            .filter(|f| f.path.ends_with("user_data") || f.path == "user-data")
            .collect();
        assert!(!copies.is_empty());
        for copy in copies {
            assert_eq!(copy.bytes(), &raw[..], "{}", copy.path);
        }
    }
}

#[test]
fn none_builds_no_drive_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = drive(DriveFormat::None, dir.path());
    assert!(build(&config, &host(), &state()).expect("build").is_none());
    let output = dir.path().join("drive.iso");
    assert!(!write(&config, &host(), &state(), &output).expect("write"));
    assert!(!output.exists());
}

#[test]
fn two_builds_give_identical_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("userdata"), b"#cloud-config\n").expect("userdata");
    std::fs::write(dir.path().join("metadata"), b"{\"zone\": \"a\"}").expect("metadata");
    for format in [DriveFormat::ConfigDrive, DriveFormat::NoCloud] {
        let config = drive(format, dir.path());
        let first = build(&config, &host(), &state())
            .expect("build")
            .expect("a drive");
        let second = build(&config, &host(), &state())
            .expect("build")
            .expect("a drive");
        assert!(first == second, "{format:?} is not deterministic");
        assert_eq!(
            &first[0x8001..0x8006],
            b"CD001",
            "an ISO 9660 volume descriptor"
        );
    }
}

#[test]
fn the_written_file_holds_the_built_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("userdata"), vec![0xa5; 300_000]).expect("userdata");
    for format in [DriveFormat::ConfigDrive, DriveFormat::NoCloud] {
        let config = drive(format, dir.path());
        let output = dir.path().join("drive.iso");
        assert!(write(&config, &host(), &state(), &output).expect("write"));
        let built = build(&config, &host(), &state())
            .expect("build")
            .expect("a drive");
        assert!(std::fs::read(&output).expect("read") == built, "{format:?}");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}

#[test]
fn a_missing_output_directory_is_a_write_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("no-such-dir/drive.iso");
    let err = write(
        &drive(DriveFormat::NoCloud, dir.path()),
        &host(),
        &state(),
        &output,
    )
    .expect_err("no directory");
    assert!(matches!(err, ConfigDriveError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir/drive.iso"), "{err}");
}

#[test]
fn instance_id_survives_a_restart_with_the_same_pet_dir() {
    let pet = tempfile::tempdir().expect("pet dir");
    let inputs = tempfile::tempdir().expect("inputs");
    let config = drive(DriveFormat::ConfigDrive, inputs.path());
    let output = pet.path().join("config-drive.iso");

    let first_state = crate::state::load_or_create(pet.path(), &host(), None).expect("state");
    assert!(write(&config, &host(), &first_state, &output).expect("write"));
    let first = std::fs::read(&output).expect("read");

    // A container restart: a fresh process loads the state from the same PET_DIR.
    let second_state = crate::state::load_or_create(pet.path(), &host(), None).expect("state");
    assert!(write(&config, &host(), &second_state, &output).expect("write"));
    assert_eq!(first_state.instance_id, second_state.instance_id);
    assert!(
        first == std::fs::read(&output).expect("read"),
        "the drive changed"
    );
}

#[test]
fn config_map_directories_are_read_through_their_symlinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = config_map(
        &dir.path().join("userdata"),
        &[("userdata", b"#!/bin/sh\necho hi\n")],
    );
    let meta = config_map(&dir.path().join("metadata"), &[("meta_data", b"zone: b\n")]);
    let config = ConfigDriveConfig {
        format: DriveFormat::NoCloud,
        userdata: user,
        metadata: meta,
        shares: Vec::new(),
    };

    let found = input::read("USERDATA", &config.userdata, input::USER_DATA_KEYS)
        .expect("read")
        .expect("present");
    assert_eq!(found.bytes, b"#!/bin/sh\necho hi\n");
    assert!(
        found.path.ends_with("userdata/userdata"),
        "{}",
        found.path.display()
    );
    let found = input::read("METADATA", &config.metadata, input::METADATA_KEYS)
        .expect("read")
        .expect("present");
    assert_eq!(found.bytes, b"zone: b\n");
    assert!(build(&config, &host(), &state()).expect("build").is_some());
}

#[test]
fn bad_metadata_fails_the_build_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("metadata"), b"zone: a\n  bad: [\n").expect("metadata");
    let err = build(&drive(DriveFormat::NoCloud, dir.path()), &host(), &state()).expect_err("bad");
    let message = err.to_string();
    assert!(message.contains("metadata:"), "{message}");
    assert!(
        matches!(err, ConfigDriveError::ParseMetadata { .. }),
        "{err:?}"
    );
}

#[test]
fn shares_add_vendor_data_that_mounts_each_share_in_both_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = drive(DriveFormat::ConfigDrive, dir.path());
    config.shares = crate::qemu::shares::parse("data=/data:rw,config=/etc/app", |_| Ok(Vec::new()))
        .expect("valid");
    let layout = plan(&config, &host(), &state())
        .expect("plan")
        .expect("a drive");
    for version in ["2012-08-10", "latest"] {
        let path = format!("openstack/{version}/vendor_data.json");
        let file = layout
            .files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path}"));
        let json: serde_json::Value = serde_json::from_slice(file.bytes()).expect("JSON");
        let cloud_config = json["cloud-init"].as_str().expect("cloud-init key");
        assert!(
            cloud_config.starts_with("#cloud-config\n"),
            "{cloud_config}"
        );
        let parsed: serde_json::Value = serde_saphyr::from_str(cloud_config).expect("YAML");
        let commands: Vec<&str> = parsed["bootcmd"]
            .as_array()
            .expect("bootcmd")
            .iter()
            .filter_map(|c| c[2].as_str())
            .collect();
        assert_eq!(commands.len(), 2, "{cloud_config}");
        assert!(
            commands[0].contains("mount -t virtiofs data /mnt/data")
                && commands[1].contains("mount -t virtiofs -o ro config /mnt/config"),
            "{commands:?}"
        );
    }
    config.format = DriveFormat::NoCloud;
    let layout = plan(&config, &host(), &state())
        .expect("plan")
        .expect("a drive");
    let vendor = layout
        .files
        .iter()
        .find(|f| f.path == "vendor-data")
        .expect("vendor-data");
    assert!(String::from_utf8_lossy(vendor.bytes()).contains("bootcmd"));

    config.shares.clear();
    let layout = plan(&config, &host(), &state())
        .expect("plan")
        .expect("a drive");
    assert!(!layout.files.iter().any(|f| f.path.contains("vendor")));
}

//! `kvm-manager config-drive` as its readers see it: isoinfo and xorriso (label, Rock Ridge,
//! Joliet, file tree, exact bytes) and cloud-init's own datasources (instance id, hostname,
//! user-data, network config).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{Running, BIN};

/// Where scripts/deps unpacks cloud-init's Python modules (not installed: it would run at boot).
const CLOUD_INIT: &str = "/usr/local/lib/kvm-manager-test/cloud-init/usr/lib/python3/dist-packages";
const DATASOURCE_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/integration/cloud_init_datasource.py"
);

/// True when `tool` exists; otherwise skips loudly, or fails under CI (which installs it).
fn require(test: &str, tool: &str) -> bool {
    if Path::new(tool).exists() || which(tool) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {tool}; CI must run scripts/deps"
    );
    eprintln!("SKIPPED {test}: {tool} is missing; run scripts/deps");
    false
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned()
}

/// A pod's volumes: user-data and meta-data inputs and a PET_DIR.
struct Pod {
    dir: tempfile::TempDir,
}

impl Pod {
    fn new(user_data: &[u8], metadata: &[u8]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("userdata"), user_data).expect("userdata");
        std::fs::write(dir.path().join("metadata"), metadata).expect("metadata");
        std::fs::create_dir(dir.path().join("pet")).expect("pet dir");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kvm-manager config-drive --output <name>` with `CONFIG_DRIVE=format`, not started.
    fn command(&self, format: &str, name: &str) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["config-drive", "--output"])
            .arg(self.path(name))
            .env("CONFIG_DRIVE", format)
            .env("USERDATA", self.path("userdata"))
            .env("METADATA", self.path("metadata"))
            .env("PET_DIR", self.path("pet"))
            .env("LOG_LEVEL", "warn")
            .env_remove("VM_MAC");
        command
    }

    /// Runs `kvm-manager config-drive --output <name>` with `CONFIG_DRIVE=format`.
    fn config_drive(&self, format: &str, name: &str) -> Output {
        self.command(format, name)
            .output()
            .expect("run kvm-manager")
    }

    /// Replaces the `userdata` or `metadata` input with a kubelet-style ConfigMap directory:
    /// each key a link through `..data` into a timestamped generation.
    fn config_map(&self, input: &str, entries: &[(&str, &[u8])]) {
        let dir = self.path(input);
        std::fs::remove_file(&dir).expect("rm the input file");
        let generation = "..2026_12_02_13_00_00.123456789";
        std::fs::create_dir_all(dir.join(generation)).expect("generation dir");
        for (key, bytes) in entries {
            std::fs::write(dir.join(generation).join(key), bytes).expect("key file");
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).expect("key link");
        }
        std::os::unix::fs::symlink(generation, dir.join("..data")).expect("..data link");
    }

    /// Builds the drive and checks the exit code and the printed path.
    fn build(&self, format: &str, name: &str) -> PathBuf {
        let output = self.config_drive(format, name);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "config-drive failed: {stderr}");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert_eq!(printed.trim_end(), self.path(name).display().to_string());
        self.path(name)
    }

    fn state(&self) -> Value {
        let path = self.path(&format!("pet/{}.state.json", hostname()));
        serde_json::from_slice(&std::fs::read(path).expect("state file")).expect("state json")
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program).args(args).output().expect(program);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn isoinfo(iso: &Path, args: &[&str]) -> Vec<u8> {
    let iso = iso.to_str().expect("utf-8 path");
    let mut all = vec!["-i", iso];
    all.extend_from_slice(args);
    run("isoinfo", &all)
}

/// The paths of a tree as isoinfo lists it (`-R` Rock Ridge or `-J` Joliet).
fn listing(iso: &Path, tree: &str) -> BTreeSet<String> {
    String::from_utf8(isoinfo(iso, &[tree, "-f"]))
        .expect("utf-8 listing")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Not valid UTF-8, CRLF, NUL, gzip magic: user-data must survive as bytes.
fn binary_user_data() -> Vec<u8> {
    let mut bytes = b"\x1f\x8b\x08\x00\r\n\x00\xff".to_vec();
    bytes.extend((0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    bytes
}

fn read_back(format: &str, label: &str, files: &[String], user_data_files: &[String]) {
    let user_data = binary_user_data();
    let pod = Pod::new(&user_data, b"zone: lab\n");
    let iso = pod.build(format, "drive.iso");

    let info = String::from_utf8(isoinfo(&iso, &["-d"])).expect("isoinfo -d");
    assert!(info.contains(&format!("Volume id: {label}\n")), "{info}");
    assert!(
        info.contains("Rock Ridge signatures"),
        "no Rock Ridge: {info}"
    );
    assert!(info.contains("Joliet with UCS level"), "no Joliet: {info}");

    let expected: BTreeSet<String> = files.iter().cloned().collect();
    assert_eq!(listing(&iso, "-R"), expected, "Rock Ridge tree");
    assert_eq!(listing(&iso, "-J"), expected, "Joliet tree");
    for file in user_data_files {
        for tree in ["-R", "-J"] {
            let bytes = isoinfo(&iso, &[tree, "-x", file]);
            assert!(
                bytes == user_data,
                "{file} via {tree} differs from the input"
            );
        }
    }

    // xorriso, a second reader, extracts the same tree with the same bytes.
    let out = pod.path("extracted");
    let iso_arg = iso.to_str().expect("utf-8");
    let out_arg = out.to_str().expect("utf-8");
    run(
        "xorriso",
        &[
            "-osirrox", "on", "-indev", iso_arg, "-extract", "/", out_arg,
        ],
    );
    for file in user_data_files {
        let extracted = std::fs::read(out.join(file.trim_start_matches('/'))).expect("extracted");
        assert!(
            extracted == user_data,
            "{file} via xorriso differs from the input"
        );
    }

    // A restarted container (same PET_DIR) writes the very same bytes.
    let first = std::fs::read(&iso).expect("read drive");
    let again = pod.build(format, "drive.iso");
    assert!(
        first == std::fs::read(again).expect("read drive"),
        "drive changed on restart"
    );
}

#[test]
fn config_2_drive_reads_back_with_label_extensions_tree_and_exact_user_data() {
    if !require("config_2_drive_reads_back", "isoinfo") || !require("config_2", "xorriso") {
        return;
    }
    let mut files = vec!["/openstack".to_owned()];
    let mut user_data = Vec::new();
    for version in ["2012-08-10", "latest"] {
        for file in ["", "/meta_data.json", "/network_data.json", "/user_data"] {
            files.push(format!("/openstack/{version}{file}"));
        }
        user_data.push(format!("/openstack/{version}/user_data"));
    }
    read_back("config-2", "config-2", &files, &user_data);
}

#[test]
fn nocloud_drive_reads_back_with_label_extensions_tree_and_exact_user_data() {
    if !require("nocloud_drive_reads_back", "isoinfo") || !require("nocloud", "xorriso") {
        return;
    }
    read_back(
        "nocloud",
        "cidata",
        &strings(&["/meta-data", "/network-config", "/user-data"]),
        &strings(&["/user-data"]),
    );
}

/// The seed directory cloud-init's datasource for `format` searches.
fn seed_of(format: &str) -> &'static str {
    if format == "config-2" {
        "config_drive"
    } else {
        "nocloud"
    }
}

/// Extracts the drive into cloud-init's seed directory and runs its datasource on it.
fn cloud_init_view(pod: &Pod, format: &str, iso: &Path, mac: &str) -> Output {
    let cloud = pod.path("cloud");
    let _ = std::fs::remove_dir_all(&cloud);
    let seed_dir = cloud.join("seed").join(seed_of(format));
    std::fs::create_dir_all(cloud.join("seed")).expect("seed dir");
    let (iso_arg, seed_arg) = (
        iso.to_str().expect("utf-8"),
        seed_dir.to_str().expect("utf-8"),
    );
    run(
        "xorriso",
        &[
            "-osirrox", "on", "-indev", iso_arg, "-extract", "/", seed_arg,
        ],
    );
    Command::new("/usr/bin/python3")
        .arg(DATASOURCE_PY)
        .args([format, cloud.to_str().expect("utf-8"), mac])
        .env("PYTHONPATH", CLOUD_INIT)
        .output()
        .expect("python3")
}

fn cloud_init_reads(format: &str) {
    let test = "cloud_init_reads_our_drives";
    if !require(test, "xorriso") || !require(test, "/usr/bin/python3") || !require(test, CLOUD_INIT)
    {
        return;
    }
    let user_data = b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo hello > /run/hello']\n";
    let pod = Pod::new(
        user_data,
        b"public-keys:\n  - ssh-ed25519 AAAAC3Nz test@example\n",
    );
    let iso = pod.build(format, "drive.iso");
    let state = pod.state();
    let mac = state["mac"].as_str().expect("mac");
    let output = cloud_init_view(&pod, format, &iso, mac);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "cloud-init could not read the {format} drive: {stderr}"
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("datasource json");

    assert_eq!(seen["instance_id"], state["instance_id"], "{seen}");
    assert_eq!(seen["hostname"], hostname(), "{seen}");
    let hex: String = user_data.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        seen["user_data_hex"], hex,
        "user-data as cloud-init read it"
    );
    assert_eq!(
        seen["metadata"]["public-keys"][0],
        "ssh-ed25519 AAAAC3Nz test@example"
    );
    let network = seen["network_config"].to_string();
    assert!(
        network.contains(mac),
        "network config does not name our MAC: {network}"
    );
    assert!(
        network.contains("dhcp"),
        "network config does not ask for DHCP: {network}"
    );
}

#[test]
fn cloud_init_reads_our_config_2_drive() {
    cloud_init_reads("config-2");
}

#[test]
fn cloud_init_reads_our_nocloud_drive() {
    cloud_init_reads("nocloud");
}

const METADATA_TYPES_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/integration/metadata_types.py"
);

/// Scalars whose type differs between YAML 1.1 (PyYAML, cloud-init) and YAML 1.2, and the
/// other corners of PyYAML's reading: tags, block scalars, anchors, merge keys, escapes.
const TRICKY_METADATA: &str = r#"k_n: n
k_y: y
k_N: N
k_Y: Y
k_yes: yes
k_No: No
k_on: on
k_OFF: OFF
k_True: True
k_tRUE: tRUE
k_octal: 0755
k_neg_octal: -0755
k_0o: 0o755
k_hex: 0x1F
k_bin: 0b101
k_underscore: 1_000
k_plus: +12
k_09: 09
k_base60: 190:20:30
k_base60_float: 190:20:30.15
k_mac: 52:54:00:12:34:56
k_big: 123456789012345678901234567890
k_1e3: 1e3
k_1_0e3: 1.0e3
k_1_0e_plus_3: 1.0e+3
k_float: 1.5
k_trailing_dot: 1.
k_leading_dot: .5
k_neg_inf: -.inf
k_nan: .NaN
k_tilde: ~
k_empty:
k_null: null
k_NULL: NULL
k_nULL: nULL
k_date: 2002-12-14
k_short_date: 2002-1-14
k_datetime: 2001-12-14t21:59:43.10-05:00
k_spaced_datetime: 2001-12-14 21:59:43.10 -5
k_utc: 2001-12-15T02:59:43Z
k_quoted_yes: 'yes'
k_quoted_octal: "0755"
k_tag_str: !!str 0755
k_tag_int: !!int "42"
k_tag_float: !!float "1"
k_tag_bool: !!bool "On"
k_literal: |
  line one
  0755
k_folded: >
  folded
  text
k_list: [y, n, yes, 0755, 1e3, ~, 2002-12-14]
k_nested: {a: off, deep: {x: 010, y: '010'}}
k_bool_keys: {yes: a, no: b}
k_int_keys: {1: one, 0x10: sixteen}
k_escapes: "caf\u00e9 \u2028 \x7f \t \"quoted\" \\ back \U0001F600"
k_colon: "a: b"
k_hash: "x #not a comment"
k_anchor: &anchor {p: 1, q: y}
k_alias: *anchor
k_merge:
  <<: *anchor
  q: n
"=": a quoted key
"<<": a quoted merge key is a string
"#;

#[test]
fn tricky_meta_data_scalars_read_in_cloud_init_as_pyyaml_reads_the_input() {
    let test = "tricky_meta_data_scalars";
    if !require(test, "isoinfo")
        || !require(test, "xorriso")
        || !require(test, "/usr/bin/python3")
        || !require(test, CLOUD_INIT)
    {
        return;
    }
    let pod = Pod::new(b"", TRICKY_METADATA.as_bytes());
    for (format, file) in [
        ("config-2", "/openstack/latest/meta_data.json"),
        ("nocloud", "/meta-data"),
    ] {
        let iso = pod.build(format, "drive.iso");
        let ours = pod.path("ours");
        std::fs::write(&ours, isoinfo(&iso, &["-R", "-x", file])).expect("write");
        let mac = pod.state()["mac"].as_str().expect("mac").to_owned();
        let view = cloud_init_view(&pod, format, &iso, &mac);
        assert!(
            view.status.success(),
            "cloud-init could not read the {format} drive: {}",
            String::from_utf8_lossy(&view.stderr)
        );
        let seen = pod.path("cloud-init.json");
        std::fs::write(&seen, &view.stdout).expect("write");
        let compared = Command::new("/usr/bin/python3")
            .arg(METADATA_TYPES_PY)
            .arg(format)
            .args([pod.path("metadata"), ours, seen])
            .output()
            .expect("python3");
        assert!(
            compared.status.success(),
            "{format}: our drive does not read as PyYAML reads the input:\n{}{}",
            String::from_utf8_lossy(&compared.stdout),
            String::from_utf8_lossy(&compared.stderr)
        );
    }
}

#[test]
fn bad_metadata_fails_with_the_config_drive_exit_code_and_its_position() {
    let pod = Pod::new(b"", b"zone: a\nkeys: [a, b\nname: x\n");
    let output = pod.config_drive("nocloud", "drive.iso");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    let at = format!("{}:", pod.path("metadata").display());
    assert!(stderr.contains(&at), "no file:line:column in {stderr}");
    assert!(!pod.path("drive.iso").exists(), "no drive on failure");
}

#[test]
fn config_drive_none_writes_nothing_and_prints_nothing() {
    let pod = Pod::new(b"", b"");
    let output = pod.config_drive("none", "drive.iso");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty());
    assert!(!pod.path("drive.iso").exists());
}

/// Every file and directory under `dir`, with its bytes (empty for directories).
fn tree_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        if meta.is_dir() {
            out.extend(tree_bytes(&path));
        } else if meta.is_file() {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_fifo_as_user_data_ends_at_once_with_exit_5_naming_it() {
    let pod = Pod::new(b"", b"");
    std::fs::remove_file(pod.path("userdata")).expect("rm");
    // Nobody ever writes to this FIFO: a blocking open() would wait for good.
    nix::unistd::mkfifo(
        &pod.path("userdata"),
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .expect("mkfifo");
    let mut running = Running::spawn(&mut pod.command("nocloud", "drive.iso"));
    // Generous: a hang is what is tested, not speed.
    let status = running.wait(std::time::Duration::from_secs(60));
    let output = running.output();
    assert_eq!(status.code(), Some(5), "{output}");
    assert!(
        output.contains("FIFO") && output.contains(&pod.path("userdata").display().to_string()),
        "the error names the file and what it is: {output}"
    );
    assert!(!pod.path("drive.iso").exists(), "no drive on failure");
}

#[test]
fn a_user_data_key_that_is_a_directory_or_socket_is_refused_with_exit_5() {
    for kind in ["directory", "socket"] {
        let pod = Pod::new(b"", b"");
        std::fs::remove_file(pod.path("userdata")).expect("rm");
        std::fs::create_dir(pod.path("userdata")).expect("mkdir");
        let key = pod.path("userdata/user-data");
        let _listener = match kind {
            "directory" => {
                std::fs::create_dir(&key).expect("mkdir key");
                None
            }
            _ => Some(std::os::unix::net::UnixListener::bind(&key).expect("bind")),
        };
        let output = pod.config_drive("config-2", "drive.iso");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "{kind}: {stderr}");
        assert!(
            stderr.contains(&format!("a {kind}")) && stderr.contains(&key.display().to_string()),
            "{kind}: {stderr}"
        );
    }
}

/// Builds the drive with an input that links out of its directory and checks that it is refused,
/// the link named, and `secret` appears nowhere: not in the output, not in any file written.
fn refuses_link_out(pod: &Pod, link: &Path, secret: &[u8], env: &[(&str, String)]) {
    let mut command = pod.command("config-2", "drive.iso");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run kvm-manager");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains(&link.display().to_string()) && stderr.contains("symlink"),
        "the error names the link: {stderr}"
    );
    assert!(
        !contains(&output.stdout, secret) && !contains(&output.stderr, secret),
        "the secret leaked into the output: {stderr}"
    );
    assert!(!pod.path("drive.iso").exists(), "no drive on failure");
    for (path, bytes) in tree_bytes(pod.dir.path()) {
        // The secret's own file, planted by the test, is the one place it may be.
        if !path.ends_with("elsewhere/secret") {
            assert!(
                !contains(&bytes, secret),
                "the secret is in {}",
                path.display()
            );
        }
    }
}

#[test]
fn user_data_links_out_of_their_directory_are_refused_and_nothing_leaks() {
    let secret = b"s3cr3t-not-for-the-guest";
    let pod = Pod::new(b"", b"");
    std::fs::create_dir(pod.path("elsewhere")).expect("mkdir");
    std::fs::write(pod.path("elsewhere/secret"), secret).expect("secret");

    // A ConfigMap-style directory whose key leads out with `..`.
    pod.config_map("userdata", &[]);
    let key = pod.path("userdata/user-data");
    std::os::unix::fs::symlink("../elsewhere/secret", &key).expect("link");
    refuses_link_out(&pod, &key, secret, &[]);

    // The same key as an absolute link.
    std::fs::remove_file(&key).expect("rm");
    std::os::unix::fs::symlink(pod.path("elsewhere/secret"), &key).expect("link");
    refuses_link_out(&pod, &key, secret, &[]);

    // USERDATA naming a file that is itself a link out of its directory.
    std::fs::create_dir(pod.path("inputs")).expect("mkdir");
    let file = pod.path("inputs/userdata");
    std::os::unix::fs::symlink("../elsewhere/secret", &file).expect("link");
    let userdata = file.display().to_string();
    refuses_link_out(&pod, &file, secret, &[("USERDATA", userdata)]);
}

#[test]
fn a_link_to_our_own_environment_is_refused_and_the_variable_does_not_leak() {
    let secret = "pw7f3a9c";
    let pod = Pod::new(b"", b"");
    pod.config_map("metadata", &[]);
    std::fs::remove_file(pod.path("userdata")).expect("rm");
    std::os::unix::fs::symlink("/proc/self/environ", pod.path("userdata")).expect("link");
    refuses_link_out(
        &pod,
        &pod.path("userdata"),
        secret.as_bytes(),
        &[("VNC_PASSWORD", secret.to_owned())],
    );
    // The same through a meta-data key: refused as well.
    std::fs::remove_file(pod.path("userdata")).expect("rm");
    std::fs::write(pod.path("userdata"), b"#cloud-config\n").expect("userdata");
    let key = pod.path("metadata/meta-data");
    std::os::unix::fs::symlink("/proc/self/environ", &key).expect("link");
    refuses_link_out(
        &pod,
        &key,
        secret.as_bytes(),
        &[("VNC_PASSWORD", secret.to_owned())],
    );
}

#[test]
fn a_kubelet_style_config_map_with_data_links_builds_the_drive() {
    if !require("a_kubelet_style_config_map", "isoinfo") {
        return;
    }
    let pod = Pod::new(b"", b"");
    let user_data = b"#cloud-config\nhostname: from-the-config-map\n";
    pod.config_map(
        "userdata",
        &[("user-data", user_data), ("meta-data", b"zone: cm\n")],
    );
    // METADATA points at the key inside the ConfigMap directory, not at the directory.
    std::fs::remove_file(pod.path("metadata")).expect("rm");
    let output = pod
        .command("config-2", "drive.iso")
        .env("METADATA", pod.path("userdata/meta-data"))
        .output()
        .expect("run kvm-manager");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let iso = pod.path("drive.iso");
    let read = isoinfo(&iso, &["-R", "-x", "/openstack/latest/user_data"]);
    assert_eq!(read, user_data);
    let meta: Value = serde_json::from_slice(&isoinfo(
        &iso,
        &["-R", "-x", "/openstack/latest/meta_data.json"],
    ))
    .expect("meta_data.json");
    assert_eq!(meta["zone"], "cm", "{meta}");
}

//! Ignition guests (issue 24): an Ignition user-data also goes to the guest by fw_cfg as
//! `opt/com.coreos/config` (and stays on the config drive); other user-data adds no fw_cfg.

use sha2::{Digest, Sha256};

use crate::vm::{self, field, Cluster, BOOT};

const IGNITION: &str = r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/motd","contents":{"source":"data:,hello%20from%20kvm-manager"}}]}}"#;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `kvm-manager qemu-args` in the cluster's pod, one argument per line.
fn qemu_args(cluster: &Cluster, extra: &[(&str, &str)]) -> Vec<String> {
    let mut args = cluster.pod.kvm_manager(&["qemu-args"], &cluster.env(extra));
    let status = args.wait(vm::T);
    assert!(status.success(), "qemu-args failed:\n{}", args.output());
    args.seen.clone()
}

#[test]
fn an_ignition_user_data_reaches_the_guest_by_fw_cfg_and_stays_on_the_config_drive() {
    let Some(cluster) = Cluster::for_test("ign", "vm-ign") else {
        return;
    };
    cluster.user_data(IGNITION);
    let args = qemu_args(&cluster, &[]);
    let at = args
        .iter()
        .position(|a| a == "-fw_cfg")
        .unwrap_or_else(|| panic!("no -fw_cfg in {args:?}"));
    assert!(
        args[at + 1].starts_with("name=opt/com.coreos/config,file=")
            && args[at + 1].ends_with("/ignition.json"),
        "{}",
        args[at + 1]
    );

    let mut vm = cluster.boot(&[]);
    let want = sha256_hex(IGNITION.as_bytes());
    let line = vm.wait_for_line("KVMTEST ignition", BOOT);
    assert_eq!(field(&line, "sha256"), want, "{line}");
    assert_eq!(field(&line, "bytes"), IGNITION.len().to_string(), "{line}");
    let drive = vm.wait_for_line("KVMTEST file path=openstack/latest/user_data", BOOT);
    assert_eq!(field(&drive, "sha256"), want, "{drive}");
    vm::stop(&mut vm);
}

#[test]
fn cloud_config_user_data_and_ignition_off_add_no_fw_cfg() {
    let Some(cluster) = Cluster::for_test("ignoff", "vm-ignoff") else {
        return;
    };
    // The cluster's default user-data is cloud-config.
    let args = qemu_args(&cluster, &[]);
    assert!(!args.iter().any(|a| a == "-fw_cfg"), "{args:?}");
    cluster.user_data(IGNITION);
    let args = qemu_args(&cluster, &[("IGNITION", "off")]);
    assert!(!args.iter().any(|a| a == "-fw_cfg"), "{args:?}");
    let args = qemu_args(&cluster, &[("IGNITION", "auto")]);
    assert!(args.iter().any(|a| a == "-fw_cfg"), "{args:?}");
}

#[test]
fn a_large_ignition_config_is_passed_whole_with_a_warning_that_fw_cfg_gets_slow() {
    let Some(cluster) = Cluster::for_test("ignbig", "vm-ignbig") else {
        return;
    };
    // Over 1 MiB: an inline file of 1.1 MiB of base64-looking text.
    let big = format!(
        r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"files":[{{"path":"/big","contents":{{"source":"data:;base64,{}"}}}}]}}}}"#,
        "QUJD".repeat(1_100_000 / 4)
    );
    cluster.user_data(&big);
    let mut vm = cluster.start(&[]);
    let warning = vm.wait_for_line("the Ignition config is large", BOOT);
    assert!(
        warning.contains(&format!("bytes={}", big.len())),
        "{warning}"
    );
    let line = vm.wait_for_line("KVMTEST ignition", BOOT);
    assert_eq!(field(&line, "sha256"), sha256_hex(big.as_bytes()), "{line}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    vm::stop(&mut vm);
}

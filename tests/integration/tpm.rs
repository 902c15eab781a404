//! The VM's TPM 2.0 (issue 20): swtpm as a supervised child with its state in the pet. A
//! value the guest stores in a TPM NV index is there after 3 container restarts; swtpm
//! killed under a running VM stops it with exit 10 and leaves no process; a damaged or
//! incomplete TPM state is refused and left as it was, never replaced by a fresh TPM. On `pc`
//! the TPM is a `tpm-tis` one, found by the guest's `tpm_tis` driver, and keeps its values too.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::Running;
use crate::vm::{field, stop, Cluster, BOOT, T};

/// swtpm died or refused its state.
const TPM: i32 = 10;
/// A `PET_DIR` problem.
const PET: i32 = 3;

/// The pids of the pod's processes named `name`.
fn named(pids: &[String], name: &str) -> Vec<i32> {
    pids.iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|comm| comm.trim() == name)
                .unwrap_or(false)
        })
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

/// The first boot on a new TPM: the guest finds no NV index, stores `value` in one through
/// the raw TPM 2.0 commands (NV_DefineSpace, NV_Write, NV_Read), and its kernel's `driver`
/// finds a TPM 2.0. The VM is stopped after.
fn first_boot_stores(cluster: &Cluster, env: &[(&str, &str)], value: &str, driver: &str) {
    cluster.user_data(&format!("#cloud-config\n# kvmtest.tpm_nv={value}\n"));
    let mut vm = cluster.start(env);
    let tpm = vm.wait_for_line("KVMTEST tpm dev=", BOOT);
    assert_eq!(field(&tpm, "nv"), "", "a new TPM has no index yet: {tpm}");
    vm.wait_for_line(&format!("KVMTEST tpm written={value}"), T);
    let dev = vm.wait_for_line("KVMTEST tpmdev ", T);
    assert_eq!(field(&dev, "version"), "2", "{dev}");
    assert_eq!(field(&dev, "driver"), driver, "{dev}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    stop(&mut vm);
}

/// A later boot: the guest reads `value` back from the TPM. The VM is left running.
fn boot_reads(cluster: &Cluster, env: &[(&str, &str)], value: &str, what: &str) -> Running {
    let mut vm = cluster.start(env);
    let tpm = vm.wait_for_line("KVMTEST tpm dev=", BOOT);
    assert_eq!(field(&tpm, "nv"), value, "{what}: {tpm}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    vm
}

/// `FIRMWARE=bios MACHINE=q35`: SeaBIOS boots fast, and q35 gives the guest a CRB TPM.
const ENV: [(&str, &str); 2] = [("TPM", "2.0"), ("MACHINE", "q35")];

#[test]
fn a_value_stored_in_the_tpm_survives_three_restarts_and_swtpm_dying_exits_10() {
    let Some(cluster) = Cluster::for_test("kmtp", "vm-tpm") else {
        return;
    };
    let pod = &cluster.pod;
    // q35 gives tpm-crb.
    first_boot_stores(&cluster, &ENV, "tpmkept1", "tpm_crb");
    assert!(
        pod.path("pet/vm-tpm.tpm/tpm2-00.permall").exists(),
        "no TPM state in the pet"
    );

    for restart in 1..=3 {
        let mut vm = boot_reads(&cluster, &ENV, "tpmkept1", &format!("restart {restart}"));
        if restart < 3 {
            stop(&mut vm);
            continue;
        }
        // The last one: swtpm is killed under the running VM.
        let swtpm = named(&pod.pids(), "swtpm");
        assert_eq!(swtpm.len(), 1, "one swtpm: {swtpm:?}");
        kill(Pid::from_raw(swtpm[0]), Signal::SIGKILL).expect("kill -9 swtpm");
        assert_eq!(vm.wait(BOOT).code(), Some(TPM), "{}", vm.output());
        assert!(
            vm.output().contains("swtpm"),
            "the death is not reported:\n{}",
            vm.output()
        );
        assert_eq!(
            pod.pids(),
            Vec::<String>::new(),
            "processes left in the pod"
        );
    }
}

fn refused(cluster: &Cluster, permall: Option<&[u8]>, code: i32, words: &str) {
    let dir = cluster.pod.path("pet/vm-bad.tpm");
    std::fs::create_dir_all(&dir).expect("state directory");
    let file = dir.join("tpm2-00.permall");
    let _ = std::fs::remove_file(&file);
    if let Some(bytes) = permall {
        std::fs::write(&file, bytes).expect("state");
    }
    let mut vm = cluster.start(&ENV);
    assert_eq!(vm.wait(T).code(), Some(code), "{}", vm.output());
    assert!(
        vm.output().contains(words),
        "{words:?} not in:\n{}",
        vm.output()
    );
    assert_eq!(
        std::fs::read(&file).ok().as_deref(),
        permall,
        "the TPM state was replaced"
    );
    assert!(named(&cluster.pod.pids(), "swtpm").is_empty(), "swtpm left");
}

#[test]
fn a_damaged_or_incomplete_tpm_state_is_refused_and_left_as_it_was() {
    let Some(cluster) = Cluster::for_test("kmtb", "vm-bad") else {
        return;
    };
    let damaged: Vec<u8> = (0..1362u32).map(|i| (i * 7 % 251) as u8).collect();
    refused(&cluster, Some(&damaged), TPM, "never replaced");
    refused(&cluster, None, PET, "is incomplete");
    assert!(!Path::new(&cluster.pod.path("pet/vm-bad.vars")).exists());
}

/// `TPM=2.0` on the default board, `pc`, with SeaBIOS: qemu gets `tpm-tis` (the ISA TPM
/// interface; `pc` has no CRB), and the guest's built-in `tpm_tis` driver finds it.
#[test]
fn on_pc_the_guest_sees_a_tis_tpm_2_0_and_a_stored_value_is_read_back_after_a_restart() {
    let Some(cluster) = Cluster::for_test("kmtt", "vm-tis") else {
        return;
    };
    let pod = &cluster.pod;
    let env = [("TPM", "2.0")];
    let mut args = pod.kvm_manager(&["qemu-args"], &cluster.env(&env));
    assert_eq!(args.wait(T).code(), Some(0), "{}", args.output());
    let out = args.output();
    assert!(out.contains("pc,accel=tcg"), "{out}");
    assert!(out.contains("tpm-tis,tpmdev=tpm0"), "{out}");
    assert!(!out.contains("tpm-crb"), "{out}");

    first_boot_stores(&cluster, &env, "tiskept1", "tpm_tis");
    let mut vm = boot_reads(&cluster, &env, "tiskept1", "after a restart");
    stop(&mut vm);
    assert!(
        pod.path("pet/vm-tis.tpm/tpm2-00.permall").exists(),
        "no TPM state in the pet"
    );
}

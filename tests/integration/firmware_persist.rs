//! UEFI variables after the pod is deleted and re-created (issue 20): a variable the UEFI
//! test guest writes lives in `PET_DIR/<hostname>.vars`, so a new pod (new network namespace,
//! new processes, a new, empty image cache and runtime directory) with the same hostname and
//! the same pet volume boots with it. The store is checked as OVMF's own format between the two pods:
//! the size of the template, a firmware volume, and the variable as a live record.

use crate::support::require_root_for_this_test;
use crate::vm::{field, pet_state as state, stop, Cluster, BOOT, T};

/// Debian's OVMF template the store of `FIRMWARE=uefi` is copied from.
const TEMPLATE: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The test guest's variable (tests/guest/init, option efivar).
const NAME: &str = "KvmTest";

fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    let word = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    usize::try_from(word).expect("fits")
}

/// The data of the live (added, not deleted) variable `name` in an OVMF variable store, or
/// `None`. The store is a firmware volume (`_FVH`) holding an authenticated variable store:
/// a log of records, each `0x55AA`, a state byte, 60 bytes of header with the sizes of the
/// UTF-16 name and the data, then name and data, 4-byte aligned (EDK2's
/// `AUTHENTICATED_VARIABLE_HEADER`). Writing a variable appends a record and marks the old
/// one deleted, so only a record in state `VAR_ADDED` counts.
fn live_variable(store: &[u8], name: &str) -> Option<Vec<u8>> {
    const VAR_ADDED: u8 = 0x3f;
    const HEADER: usize = 60;
    assert_eq!(&store[0x28..0x2c], b"_FVH", "not a firmware volume");
    // The variable store header (GUID, size, format, state, reserved) after the volume's.
    let mut at = u16_at(store, 0x30) + 28;
    let wanted: Vec<u8> = name
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut found = None;
    while at + HEADER <= store.len() && u16_at(store, at) == 0x55aa {
        let (name_size, data_size) = (u32_at(store, at + 36), u32_at(store, at + 40));
        let name_at = at + HEADER;
        let data_at = name_at + name_size;
        if store[at + 2] == VAR_ADDED && store[name_at..data_at] == wanted[..] {
            found = Some(store[data_at..data_at + data_size].to_vec());
        }
        at = (data_at + data_size + 3) & !3;
    }
    found
}

#[test]
fn a_uefi_variable_survives_deleting_the_pod_and_re_creating_it_on_the_same_volume() {
    if !require_root_for_this_test() {
        return;
    }
    // The pet volume: a PersistentVolume that outlives both pods. A pod's volumes are mounted
    // at the same paths in every pod of the StatefulSet, and the pet overlay names its base by
    // path: so the image cache (an emptyDir, new and empty in each pod) keeps its path too.
    let volumes = tempfile::tempdir().expect("volumes");
    let pet = &volumes.path().join("pet");
    let image = volumes.path().join("image");
    std::fs::create_dir(pet).expect("pet volume");
    std::fs::create_dir(&image).expect("image cache");
    let pet_dir = pet.to_string_lossy().into_owned();
    let image_dir = image.to_string_lossy().into_owned();
    let hostname = "vm-nvram";

    let first = Cluster::new("kmnv", hostname);
    let url = first.url_of("guest-uefi.qcow2");
    let env = [
        ("IMG_SOURCE", url.as_str()),
        ("FIRMWARE", "uefi"),
        ("PET_DIR", pet_dir.as_str()),
        ("IMAGE_DIR", image_dir.as_str()),
    ];
    first.user_data("#cloud-config\n# kvmtest.efivar=nvkept\n");
    let mut vm = first.start(&env);
    let efi = vm.wait_for_line("KVMTEST efi ", BOOT);
    assert_eq!(
        field(&efi, "kvmtest"),
        "",
        "a new store has no variable: {efi}"
    );
    vm.wait_for_line("KVMTEST efivar written=nvkept", T);
    vm.wait_for_line("KVMTEST READY", BOOT);
    stop(&mut vm);
    let recorded = state(pet, hostname);

    // The pod is deleted: its processes, namespaces, image cache and runtime directory go.
    let (old_ns, old_dir) = (first.pod.pod_ns.clone(), first.pod.path(""));
    drop(first);
    std::fs::remove_dir_all(&image).expect("delete the emptyDir");
    std::fs::create_dir(&image).expect("the new pod's emptyDir");
    assert!(!old_dir.exists(), "the old pod's volumes are still there");
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&old_ns),
        "the old pod's namespace is still there"
    );

    // What is left is the pet volume, with the guest's variable in OVMF's own format.
    let store = std::fs::read(pet.join(format!("{hostname}.vars"))).expect("the variable store");
    let template = std::fs::read(TEMPLATE).expect("ovmf installed");
    assert_eq!(store.len(), template.len(), "the store is not flash-sized");
    assert_eq!(live_variable(&template, NAME), None, "the template has it");
    assert_eq!(
        live_variable(&store, NAME).as_deref(),
        Some(&b"nvkept"[..]),
        "the guest's variable is not a live record of the store"
    );
    assert_eq!(recorded["firmware"]["firmware"], "uefi", "{recorded}");
    assert_eq!(recorded["firmware"]["machine"], "q35", "{recorded}");
    assert_eq!(
        recorded["firmware"]["vars_template"], TEMPLATE,
        "{recorded}"
    );

    // A new pod, same hostname, same pet volume: the variable is there, the store reused.
    let second = Cluster::new("kmnv", hostname);
    assert_ne!(second.pod.pod_ns, old_ns, "not a new pod");
    let url = second.url_of("guest-uefi.qcow2");
    let env = [
        ("IMG_SOURCE", url.as_str()),
        ("FIRMWARE", "uefi"),
        ("PET_DIR", pet_dir.as_str()),
        ("IMAGE_DIR", image_dir.as_str()),
    ];
    // The same user-data asks for the same value: nothing is written again.
    second.user_data("#cloud-config\n# kvmtest.efivar=nvkept\n");
    let mut vm = second.start(&env);
    let efi = vm.wait_for_line("KVMTEST efi ", BOOT);
    assert_eq!(field(&efi, "kvmtest"), "nvkept", "{efi}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    let out = vm.output();
    assert!(out.contains("UEFI variable store reused"), "{out}");
    assert!(!out.contains("KVMTEST efivar written"), "{out}");
    stop(&mut vm);
    let again = state(pet, hostname);
    assert_eq!(again["firmware"], recorded["firmware"], "{again}");
    assert_eq!(again["instance_id"], recorded["instance_id"], "{again}");
    assert_eq!(again["mac"], recorded["mac"], "{again}");
}

//! Multiqueue virtio-net (issue 24): in NAT mode the NIC gets one queue pair per vCPU (a
//! multiqueue tap), none for one vCPU; a restart with another count remakes the tap.

use crate::vm::{self, field, Cluster, BOOT};

#[test]
fn four_vcpus_give_the_guest_four_nic_queues_and_one_vcpu_one_after_a_restart() {
    let Some(cluster) = Cluster::for_test("mq", "vm-mq") else {
        return;
    };
    let mut vm = cluster.boot(&[("VM_CPUS", "4"), ("NETWORK_MODE", "nat")]);
    let line = vm.wait_for_line("KVMTEST queues", BOOT);
    assert_eq!(
        (field(&line, "rx"), field(&line, "tx")),
        ("4", "4"),
        "{line}"
    );
    // cloud-config user-data: nothing by fw_cfg.
    vm.wait_for_line("KVMTEST ignition none", BOOT);
    vm::stop(&mut vm);

    // The pod's netns keeps the multiqueue tap; one queue needs a single-queue tap.
    let mut vm = cluster.boot(&[("VM_CPUS", "1"), ("NETWORK_MODE", "nat")]);
    let line = vm.wait_for_line("KVMTEST queues", BOOT);
    assert_eq!(
        (field(&line, "rx"), field(&line, "tx")),
        ("1", "1"),
        "{line}"
    );
    vm.wait_for_line("KVMTEST lease ip=", BOOT);
    vm::stop(&mut vm);
}

//! passt's plan and command line, decided without root. The golden command lines live in
//! `tests/golden/passt/`; `UPDATE_GOLDEN=1 cargo test --lib net::passt` rewrites them.

use std::net::Ipv4Addr;
use std::path::Path;

use super::*;
use crate::config::NetworkMode;
use crate::test_support::assert_golden;

fn net(no_vnc: bool, http_port: Option<u16>, dns_mode: DnsMode) -> NetConfig {
    NetConfig {
        slash30: crate::net::Slash30::new(
            Ipv4Addr::new(192, 168, 254, 2),
            Ipv4Addr::new(192, 168, 254, 1),
        )
        .expect("a /30"),
        vm_mac: None,
        no_vnc,
        no_dhcp: false,
        dns_mode,
        http_port,
        ready_port: 22,
        mode: NetworkMode::Passt,
        ipv6: None,
    }
}

/// A Kubernetes pod: containerd's open-files limit, Linux's default ephemeral range.
fn pod(root: bool) -> PodFacts {
    PodFacts {
        ephemeral: 32768..=60999,
        unprivileged_start: 1024,
        open_files: 1_048_576,
        root,
    }
}

fn planned(net: &NetConfig, facts: &PodFacts) -> PasstPlan {
    plan(
        net,
        PathBuf::from("/usr/bin/passt"),
        Path::new("/run/kvm-manager"),
        &crate::net::plan::tests::pod(),
        MacAddr6::new(0x52, 0x54, 0, 0xab, 0xcd, 1),
        facts,
    )
}

fn lines(plan: &PasstPlan) -> String {
    plan.args().iter().map(|a| format!("{a}\n")).collect()
}

#[test]
fn every_port_but_vnc_ours_and_the_ephemeral_range_reaches_the_guest() {
    let plan = planned(&net(false, Some(8080), DnsMode::Forward), &pod(true));
    assert_eq!(
        plan.ports,
        vec![1..=5899, 5901..=8079, 8081..=32767, 61000..=65535]
    );
    assert_eq!(plan.capped_at, None);
    assert_eq!(
        plan.socket,
        PathBuf::from("/run/kvm-manager/passt/passt.sock")
    );
    assert_golden("passt", "default.txt", &lines(&plan));
}

#[test]
fn no_vnc_hands_5900_to_the_guest_and_http_port_0_keeps_no_port() {
    let plan = planned(&net(true, None, DnsMode::Forward), &pod(true));
    assert_eq!(plan.ports, vec![1..=32767, 61000..=65535]);
}

#[test]
fn the_open_files_limit_caps_the_ports_lowest_first() {
    let mut facts = pod(true);
    facts.open_files = 20_000;
    let plan = planned(&net(false, Some(8080), DnsMode::Forward), &facts);
    // (20000 - 1024) / 4 = 4744 ports, 5900 and 8080 skipped.
    assert_eq!(plan.ports, vec![1..=4744]);
    assert_eq!(plan.capped_at, Some(4744));
    facts.open_files = 30_000;
    let plan = planned(&net(false, Some(8080), DnsMode::Forward), &facts);
    assert_eq!(plan.ports, vec![1..=5899, 5901..=7245]);
    assert_eq!(plan.capped_at, Some(7245));
    facts.open_files = 100;
    let plan = planned(&net(false, Some(8080), DnsMode::Forward), &facts);
    assert!(plan.ports.is_empty());
    assert!(
        plan.args().contains(&"none".to_owned()),
        "{:?}",
        plan.args()
    );
}

#[test]
fn the_guest_gets_the_pods_nameservers_and_a_non_root_run_has_no_runas() {
    let plan = planned(&net(false, Some(8080), DnsMode::Passthrough), &pod(false));
    assert!(!plan.forward_ignored);
    assert_eq!(plan.runas, None);
    assert_eq!(plan.privileged_below, Some(1024));
    assert_golden("passt", "passthrough-non-root.txt", &lines(&plan));
    let forward = planned(&net(false, Some(8080), DnsMode::Forward), &pod(false));
    assert!(forward.forward_ignored);
    assert_eq!(forward.args(), plan.args(), "no DNS option either way");
}

#[test]
fn the_gateway_is_never_mapped_to_the_pods_loopback() {
    for root in [true, false] {
        for dns in [DnsMode::Forward, DnsMode::Passthrough] {
            let args = planned(&net(false, Some(8080), dns), &pod(root)).args();
            assert!(args.contains(&"--no-map-gw".to_owned()), "{args:?}");
        }
    }
}

#[test]
fn no_dhcp_turns_passts_dhcp_servers_off() {
    let mut config = net(false, Some(8080), DnsMode::Forward);
    assert!(!planned(&config, &pod(true))
        .args()
        .contains(&"--no-dhcp".to_owned()));
    config.no_dhcp = true;
    let args = planned(&config, &pod(true)).args();
    assert!(args.contains(&"--no-dhcp".to_owned()), "{args:?}");
    assert!(args.contains(&"--no-dhcpv6".to_owned()), "{args:?}");
}

#[test]
fn as_root_low_ports_are_bound_before_passt_becomes_nobody() {
    let mut facts = pod(true);
    facts.unprivileged_start = 1024;
    assert_eq!(
        planned(&net(false, None, DnsMode::Forward), &facts).privileged_below,
        None
    );
    facts.root = false;
    facts.unprivileged_start = 0;
    assert_eq!(
        planned(&net(false, None, DnsMode::Forward), &facts).privileged_below,
        None
    );
}

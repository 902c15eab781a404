//! The plan and its ruleset, decided without root. Golden rulesets live in `tests/golden/net/`;
//! `UPDATE_GOLDEN=1 cargo test --lib net::` rewrites them (review the diff).

use std::net::Ipv4Addr;

use super::*;
use crate::config::DnsMode;
use crate::net::ruleset::ruleset;
use crate::test_support::assert_golden;

fn net() -> NetConfig {
    NetConfig {
        slash30: crate::net::Slash30::new(
            Ipv4Addr::new(192, 168, 254, 2),
            Ipv4Addr::new(192, 168, 254, 1),
        )
        .expect("a /30"),
        vm_mac: None,
        no_vnc: false,
        no_dhcp: false,
        dns_mode: DnsMode::Forward,
        http_port: Some(8080),
        ready_port: 22,
        mode: crate::config::NetworkMode::Auto,
        ipv6: None,
    }
}

/// A typical pod's network (also the LAN's tests use it).
pub(crate) fn pod() -> PodNet {
    PodNet {
        uplink: "eth0".into(),
        uplink_index: 2,
        pod_ip: Ipv4Addr::new(10, 244, 1, 5),
        pod_prefix: 24,
        mtu: 1450,
        gateway: Some(Ipv4Addr::new(10, 244, 1, 1)),
        vhost_net: true,
        ipv6: None,
    }
}

pub(crate) const MAC: MacAddr6 = MacAddr6::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

fn planned(net: &NetConfig) -> NetPlan {
    plan(net, &pod(), MAC).expect("a valid plan")
}

/// Compares `actual` with `tests/golden/net/<name>.nft`.
fn golden(name: &str, actual: &str) {
    assert_golden("net", &format!("{name}.nft"), actual);
}

fn ports(plan: &NetPlan) -> Vec<u16> {
    plan.excluded_tcp_ports.iter().map(|p| p.port).collect()
}

#[test]
fn default_plan_names_addresses_and_mtu() {
    let plan = planned(&net());
    assert_eq!(plan.bridge, "kvmbr0");
    assert_eq!(plan.tap, "kvmtap0");
    assert_eq!(plan.uplink, "eth0");
    assert_eq!(plan.mtu, 1450);
    assert_eq!(plan.slash30.vm(), Ipv4Addr::new(192, 168, 254, 2));
    assert_eq!(plan.slash30.gw(), Ipv4Addr::new(192, 168, 254, 1));
    assert_eq!(plan.pod_ip, Ipv4Addr::new(10, 244, 1, 5));
    assert_eq!(plan.vm_mac, MAC);
    assert!(plan.vhost_net);
    assert_eq!(plan.vm_net().to_string(), "192.168.254.0/30");
    assert_eq!(ports(&plan), [5900, 8080]);
}

#[test]
fn default_ruleset_matches_golden() {
    golden("default", &ruleset(&planned(&net())));
}

#[test]
fn no_vnc_forwards_5900_to_the_vm() {
    let plan = planned(&NetConfig {
        no_vnc: true,
        ..net()
    });
    assert_eq!(ports(&plan), [8080]);
    golden("no_vnc", &ruleset(&plan));
}

#[test]
fn http_port_zero_excludes_only_vnc() {
    let plan = planned(&NetConfig {
        http_port: None,
        ..net()
    });
    assert_eq!(ports(&plan), [5900]);
    assert!(ruleset(&plan).contains("ip daddr 10.244.1.5 tcp dport 5900 return\n"));
    assert!(!ruleset(&plan).contains("8080"));
}

#[test]
fn nothing_excluded_forwards_every_port() {
    let plan = planned(&NetConfig {
        no_vnc: true,
        http_port: None,
        ..net()
    });
    assert!(ports(&plan).is_empty());
    golden("all_ports", &ruleset(&plan));
}

#[test]
fn custom_addresses_and_port_flow_into_the_ruleset() {
    let config = NetConfig {
        slash30: crate::net::Slash30::new(
            Ipv4Addr::new(172, 31, 0, 6),
            Ipv4Addr::new(172, 31, 0, 5),
        )
        .expect("a /30"),
        http_port: Some(9000),
        ..net()
    };
    let pod = PodNet {
        uplink: "net1".into(),
        pod_ip: Ipv4Addr::new(10, 1, 2, 3),
        pod_prefix: 32,
        gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
        ..pod()
    };
    let plan = plan(&config, &pod, MAC).expect("a valid plan");
    golden("custom", &ruleset(&plan));
}

#[test]
fn the_ruleset_replaces_only_our_table() {
    let ruleset = ruleset(&planned(&net()));
    let statements: Vec<&str> = ruleset
        .lines()
        .filter(|l| l.starts_with("table") || l.starts_with("delete") || l.starts_with("flush"))
        .collect();
    assert_eq!(
        statements,
        [
            "table ip kvm_manager",
            "delete table ip kvm_manager",
            "table ip kvm_manager {",
            "table ip6 kvm_manager",
            "delete table ip6 kvm_manager",
        ]
    );
}

#[test]
fn dnat_is_for_every_protocol_not_only_tcp() {
    let ruleset = ruleset(&planned(&net()));
    let dnat: Vec<&str> = ruleset
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("dnat to") && l.contains("10.244.1.5"))
        .collect();
    assert_eq!(
        dnat,
        [
            "ip daddr 10.244.1.5 dnat to 192.168.254.2",
            "ip daddr 10.244.1.5 dnat to 192.168.254.2"
        ]
    );
}

#[test]
fn overlapping_pod_subnet_is_rejected() {
    let pod = PodNet {
        pod_ip: Ipv4Addr::new(192, 168, 0, 10),
        pod_prefix: 16,
        ..pod()
    };
    let err = plan(&net(), &pod, MAC).expect_err("overlap");
    assert!(matches!(err, NetError::Overlap { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("192.168.254.0/30"), "{message}");
    assert!(message.contains("192.168.0.0/16"), "{message}");
}

#[test]
fn pod_ip_inside_the_vm_slash30_is_rejected_even_as_a_slash32() {
    let pod = PodNet {
        pod_ip: Ipv4Addr::new(192, 168, 254, 3),
        pod_prefix: 32,
        ..pod()
    };
    assert!(matches!(
        plan(&net(), &pod, MAC),
        Err(NetError::Overlap { .. })
    ));
}

#[test]
fn gateway_inside_the_vm_slash30_is_rejected() {
    let pod = PodNet {
        pod_ip: Ipv4Addr::new(10, 0, 0, 9),
        pod_prefix: 32,
        gateway: Some(Ipv4Addr::new(192, 168, 254, 1)),
        ..pod()
    };
    assert!(matches!(
        plan(&net(), &pod, MAC),
        Err(NetError::GatewayInVmNet { .. })
    ));
}

#[test]
fn adjacent_subnets_do_not_overlap() {
    let vm = Ipv4Net::new(Ipv4Addr::new(192, 168, 254, 2), 30);
    assert!(!vm.overlaps(Ipv4Net::new(Ipv4Addr::new(192, 168, 254, 4), 30)));
    assert!(!vm.overlaps(Ipv4Net::new(Ipv4Addr::new(192, 168, 253, 255), 32)));
    assert!(vm.overlaps(Ipv4Net::new(Ipv4Addr::new(0, 0, 0, 0), 0)));
    assert!(vm.overlaps(Ipv4Net::new(Ipv4Addr::new(192, 168, 254, 0), 24)));
}

#[test]
fn gateway_mac_is_local_unicast_and_differs_from_the_vm() {
    for mac in [MAC, MacAddr6::new(0x01, 0, 0, 0, 0, 0xff), MacAddr6::nil()] {
        let gw = gateway_mac(mac);
        let b = gw.into_array();
        assert_eq!(b[0] & 0x01, 0, "unicast");
        assert_eq!(b[0] & 0x02, 0x02, "locally administered");
        assert_ne!(gw, mac);
    }
    assert_eq!(planned(&net()).bridge_mac, gateway_mac(MAC));
}

#[test]
fn printed_plan_lists_bridge_tap_exclusions_and_ruleset() {
    let text = crate::net::printout(&planned(&net()));
    for needle in [
        "bridge:     kvmbr0 192.168.254.1/30",
        "tap:        kvmtap0 (vnet_hdr, vhost-net available) mtu 1450",
        "vm:         192.168.254.2 mac 52:54:00:12:34:56",
        "exclusions: tcp 5900 (VNC), tcp 8080 (HTTP)",
        "snat:       192.168.254.0/30 via eth0 -> 10.244.1.5",
        "table ip kvm_manager {",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn the_vm_may_send_only_from_vm_ip_and_forged_sources_are_dropped_and_counted() {
    let plan = planned(&NetConfig {
        slash30: crate::net::Slash30::new(Ipv4Addr::new(10, 9, 8, 2), Ipv4Addr::new(10, 9, 8, 1))
            .expect("a /30"),
        ..net()
    });
    let text = ruleset(&plan);
    let chain: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("chain antispoof"))
        .map(str::trim)
        .take_while(|l| *l != "}")
        .collect();
    assert_eq!(
        chain,
        [
            "chain antispoof {",
            // Before conntrack: a forged flood creates no connection-tracking entries.
            "type filter hook prerouting priority raw; policy accept;",
            "iifname != \"kvmbr0\" return",
            "meta mark 0x4b4d return",
            "ip saddr { 10.9.8.2, 0.0.0.0 } return",
            // At most one a minute wakes the watch that logs it (0x4b4d = 19277).
            "limit rate 1/minute burst 1 packets log group 19277",
            "counter name \"spoofed\" drop",
        ]
    );
    assert!(
        ruleset(&plan).contains("\tcounter spoofed {\n"),
        "{}",
        ruleset(&plan)
    );
}

#[test]
fn without_the_spoof_log_only_the_nflog_rule_is_gone() {
    use crate::net::ruleset::{without_spoof_log, SPOOFED_LOG_GROUP};
    let full = ruleset(&planned(&net()));
    let rule = format!("\t\tlimit rate 1/minute burst 1 packets log group {SPOOFED_LOG_GROUP}\n");
    assert!(full.contains(&rule), "{full}");
    assert_eq!(without_spoof_log(&full), full.replacen(&rule, "", 1));
}
// --- issue 23: the IPv6 half of the plan and the ip6 table ---
fn a6(s: &str) -> std::net::Ipv6Addr {
    s.parse().expect("an IPv6 address")
}

fn dual_pod() -> PodNet {
    PodNet {
        ipv6: Some(crate::net::discover::PodNet6 {
            uplink: "eth0".into(),
            pod_ip: a6("fd00:10:244:1::5"),
            prefix: 64,
        }),
        ..pod()
    }
}

fn net6() -> NetConfig {
    NetConfig {
        ipv6: Some(crate::net::ip6::Ip6Config::new(a6("fd6b:766d::1"), None).expect("valid")),
        ..net()
    }
}

#[test]
fn a_dual_stack_pod_gives_the_vm_its_slaac_address_and_the_ip6_table() {
    let plan = plan(&net6(), &dual_pod(), MAC).expect("a valid plan");
    let v6 = plan.ipv6.as_ref().expect("IPv6 planned");
    assert_eq!(v6.vm, a6("fd6b:766d::5054:ff:fe12:3456"));
    assert_eq!(v6.gw, a6("fd6b:766d::1"));
    assert_eq!(plan.no_ipv6_because, None);
    golden("dual_stack", &ruleset(&plan));
    let text = crate::net::printout(&plan);
    assert!(
        text.contains("ipv6:       bridge fd6b:766d::1/64 vm fd6b:766d::5054:ff:fe12:3456"),
        "{text}"
    );
}

#[test]
fn a_fixed_vm_ip6_and_no_exclusions_flow_into_the_ip6_table() {
    let config = NetConfig {
        ipv6: Some(
            crate::net::ip6::Ip6Config::new(a6("fd00:aa::1"), Some(a6("fd00:aa::2")))
                .expect("valid"),
        ),
        no_vnc: true,
        http_port: None,
        ..net()
    };
    let plan = plan(&config, &dual_pod(), MAC).expect("a valid plan");
    golden("dual_stack_all_ports", &ruleset(&plan));
}

#[test]
fn an_ipv4_only_pod_or_ipv6_off_plans_no_ipv6_and_deletes_the_ip6_table() {
    let v4_only = plan(&net6(), &pod(), MAC).expect("a valid plan");
    assert_eq!(v4_only.ipv6, None);
    assert_eq!(
        v4_only.no_ipv6_because,
        Some("the pod has no global IPv6 address")
    );
    let off = plan(&net(), &dual_pod(), MAC).expect("a valid plan");
    assert_eq!(off.ipv6, None);
    assert_eq!(off.no_ipv6_because, Some("IPV6=off"));
    for plan in [v4_only, off] {
        let text = ruleset(&plan);
        assert!(text.ends_with("table ip6 kvm_manager\ndelete table ip6 kvm_manager\n"));
        assert!(!text.contains("table ip6 kvm_manager {"), "{text}");
    }
}

#[test]
fn a_vm_64_overlapping_the_pods_ipv6_is_refused_naming_vm_gw6_and_ipv6_off() {
    let pod = PodNet {
        ipv6: Some(crate::net::discover::PodNet6 {
            uplink: "eth0".into(),
            pod_ip: a6("fd6b:766d::99"),
            prefix: 48,
        }),
        ..pod()
    };
    let err = plan(&net6(), &pod, MAC).expect_err("overlap");
    let message = err.to_string();
    assert!(matches!(err, NetError::Overlap6 { .. }), "{err:?}");
    assert!(
        message.contains("VM_GW6") && message.contains("IPV6=off"),
        "{message}"
    );
}

#[test]
fn ndp_to_the_pods_ipv6_is_never_sent_to_the_vm() {
    let text = ruleset(&plan(&net6(), &dual_pod(), MAC).expect("a valid plan"));
    let ip6 = &text[text.find("table ip6 kvm_manager {").expect("ip6 table")..];
    let nd = ip6.find("nd-neighbor-solicit").expect("NDP excluded");
    let dnat = ip6.find("dnat to").expect("a dnat");
    assert!(nd < dnat, "{ip6}");
}
// --- end issue 23 ---

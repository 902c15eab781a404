//! Any bytes through the DHCPv6 server's path (issue 23): decode, decide, encode the reply.
#![cfg_attr(fuzzing, no_main)]

use kvm_manager::lan::dhcpv6::policy::{self, Decision, Lease6};

fn lease() -> Lease6 {
    let mac = macaddr::MacAddr6::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
    Lease6 {
        vm: "fd6b:766d::5054:ff:fe12:3456".parse().unwrap_or(std::net::Ipv6Addr::LOCALHOST),
        vm_mac: mac,
        server_duid: policy::duid_ll(mac),
        dns: vec![std::net::Ipv6Addr::LOCALHOST],
        search: ["svc.cluster.local.", "cluster.local."]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
    }
}

fn one(data: &[u8]) {
    let Ok(request) = policy::decode(data) else {
        return;
    };
    if let Decision::Reply(reply) = policy::decide(&lease(), &request) {
        let _ = policy::encode(&reply);
    }
}

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| one(data));

#[cfg(not(fuzzing))]
fn main() {
    use std::io::Read as _;
    let mut data = Vec::new();
    if std::io::stdin().read_to_end(&mut data).is_ok() {
        one(&data);
    }
}

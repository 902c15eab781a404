//! Any bytes through the DHCP server's path: decode, decide, encode the reply.
#![cfg_attr(fuzzing, no_main)]

use std::net::Ipv4Addr;

use kvm_manager::lan::dhcp::{codec, policy, Lease};

fn lease() -> Lease {
    Lease {
        vm_ip: Ipv4Addr::new(192, 168, 254, 2),
        server: Ipv4Addr::new(192, 168, 254, 1),
        // Every fourth input is for our MAC once its first chaddr bytes match this.
        vm_mac: macaddr::MacAddr6::new(0, 0, 0, 0, 0, 0),
        mtu: 1450,
        hostname: Some("vm-0".into()),
        dns: vec![Ipv4Addr::new(192, 168, 254, 1)],
        domain: Some("svc.cluster.local".into()),
        search: [
            "ns.svc.cluster.local.",
            "svc.cluster.local.",
            "cluster.local.",
        ]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect(),
    }
}

fn one(data: &[u8]) {
    let Ok(request) = codec::decode(data) else {
        return;
    };
    let mut lease = lease();
    if let Some(mac) = request.chaddr().get(..6) {
        // Take the client's MAC so the policy gets past the MAC check.
        let mac: [u8; 6] = mac.try_into().unwrap_or_default();
        lease.vm_mac = macaddr::MacAddr6::from(mac);
    }
    if let policy::Decision::Reply { message, .. } = policy::decide(&lease, &request) {
        let budget = codec::reply_budget(&request, lease.mtu);
        let _ = codec::encode(*message, budget);
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

//! Any bytes through the DNS forwarder's path: plan the query, build SERVFAIL, match an answer.
#![cfg_attr(fuzzing, no_main)]

use std::net::Ipv4Addr;

use kvm_manager::lan::dns::query::{self, LocalNames, Plan};

fn one(data: &[u8]) {
    let local = LocalNames::new(
        "vm-0",
        Some("svc.cluster.local"),
        Ipv4Addr::new(192, 168, 254, 2),
    );
    if let Ok(Plan::Forward { query, .. }) = query::plan(data, &local) {
        let _ = query::servfail(&query);
        let _ = query::answers(&query, data);
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

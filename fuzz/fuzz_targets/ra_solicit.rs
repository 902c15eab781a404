//! Any bytes through the router-advertisement sender's receive path (issue 23): parse as a
//! router solicitation and, when it is one, decide where the answer goes.
#![cfg_attr(fuzzing, no_main)]

use std::net::Ipv6Addr;

use kvm_manager::lan::ra::{codec, reply_to};

fn one(data: &[u8]) {
    if codec::decode_rs(data).is_ok() {
        // The first 16 bytes double as the sender's address.
        let from = data
            .get(..16)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(Ipv6Addr::from)
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        let _ = reply_to(from);
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

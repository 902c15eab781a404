//! DHCPv6 (RFC 8415) for the one VM, decided without IO: its address (`VM_IP6`, the SLAAC
//! address by default, so both ways agree) in one IA_NA per request, and the DNS options.
//! The codec is dhcproto's `v6` module; the policy is ours, as for DHCPv4.

use std::net::Ipv6Addr;

use dhcproto::v6::{
    DhcpOption, IAAddr, Message, MessageType, OptionCode, Status, StatusCode, IANA,
};
use dhcproto::{Decodable as _, Decoder, Encodable as _, Name};
use macaddr::MacAddr6;

/// What the server hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    pub vm: Ipv6Addr,
    pub vm_mac: MacAddr6,
    /// Our DUID (DUID-LL of the bridge MAC: stable across restarts).
    pub server_duid: Vec<u8>,
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<Name>,
}

pub const PREFERRED_S: u32 = 14_400;
pub const VALID_S: u32 = 86_400;
const T1_S: u32 = PREFERRED_S / 2;
const T2_S: u32 = PREFERRED_S * 4 / 5;

/// DUID-LL (type 3, hardware type 1, Ethernet) of `mac`.
pub fn duid_ll(mac: MacAddr6) -> Vec<u8> {
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(mac.as_bytes());
    duid
}

/// The Ethernet address inside a DUID-LLT (type 1) or DUID-LL (type 3), if it carries one.
pub fn duid_mac(duid: &[u8]) -> Option<MacAddr6> {
    let mac: &[u8] = match duid {
        [0, 1, 0, 1, _, _, _, _, mac @ ..] | [0, 3, 0, 1, mac @ ..] => mac,
        _ => return None,
    };
    <[u8; 6]>::try_from(mac).ok().map(MacAddr6::from)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Reply(Box<Message>),
    /// Why nothing is sent (a server's message, another client, another server's).
    Ignore(&'static str),
}

/// Any bytes → a message or why not; dhcproto's decoder is kept from taking PID 1 down.
pub fn decode(bytes: &[u8]) -> Result<Message, &'static str> {
    std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)))
        .map_err(|_| "the decoder panicked")?
        .map_err(|_| "not a DHCPv6 message")
}

pub fn encode(message: &Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

pub fn decide(lease: &Lease6, request: &Message) -> Decision {
    use MessageType as T;
    let opts = request.opts();
    let client = match opts.get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(duid)) => Some(duid.clone()),
        _ => None,
    };
    let server = match opts.get(OptionCode::ServerId) {
        Some(DhcpOption::ServerId(duid)) => Some(duid.clone()),
        _ => None,
    };
    let msg_type = request.msg_type();
    let ours = server.as_deref() == Some(lease.server_duid.as_slice());
    // RFC 8415 §16: which messages must, may or must not name a server.
    let server_ok = match msg_type {
        T::Solicit | T::Rebind | T::Confirm => server.is_none(),
        T::Request | T::Renew | T::Release | T::Decline => ours,
        T::InformationRequest => server.is_none() || ours,
        _ => return Decision::Ignore("not a client's message"),
    };
    if !server_ok {
        return Decision::Ignore("meant for another server");
    }
    let Some(client) = client.or_else(|| (msg_type == T::InformationRequest).then(Vec::new)) else {
        return Decision::Ignore("no client identifier");
    };
    if duid_mac(&client).is_some_and(|mac| mac != lease.vm_mac) {
        return Decision::Ignore("a client whose DUID names another MAC than VM_MAC");
    }
    let rapid = msg_type == T::Solicit && opts.get(OptionCode::RapidCommit).is_some();
    let reply_type = if msg_type == T::Solicit && !rapid {
        T::Advertise
    } else {
        T::Reply
    };
    let mut reply = Message::new_with_id(reply_type, request.xid());
    let out = reply.opts_mut();
    if !client.is_empty() {
        out.insert(DhcpOption::ClientId(client));
    }
    out.insert(DhcpOption::ServerId(lease.server_duid.clone()));
    if rapid {
        out.insert(DhcpOption::RapidCommit);
    }
    match msg_type {
        T::Release | T::Decline | T::Confirm => {
            out.insert(DhcpOption::StatusCode(StatusCode {
                status: Status::Success,
                msg: String::new(),
            }));
        }
        T::InformationRequest => {}
        _ => {
            for ia in opts.iter().filter_map(|o| match o {
                DhcpOption::IANA(ia) => Some(ia),
                _ => None,
            }) {
                let mut addr = dhcproto::v6::DhcpOptions::new();
                addr.insert(DhcpOption::IAAddr(IAAddr {
                    addr: lease.vm,
                    preferred_life: PREFERRED_S,
                    valid_life: VALID_S,
                    opts: dhcproto::v6::DhcpOptions::new(),
                }));
                out.insert(DhcpOption::IANA(IANA {
                    id: ia.id,
                    t1: T1_S,
                    t2: T2_S,
                    opts: addr,
                }));
            }
        }
    }
    if !lease.dns.is_empty() {
        out.insert(DhcpOption::DomainNameServers(lease.dns.clone()));
    }
    if !lease.search.is_empty() {
        out.insert(DhcpOption::DomainSearchList(lease.search.clone()));
    }
    Decision::Reply(Box::new(reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::assert_golden;

    const MAC: MacAddr6 = MacAddr6::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

    fn lease() -> Lease6 {
        Lease6 {
            vm: "fd6b:766d::5054:ff:fe12:3456".parse().expect("v6"),
            vm_mac: MAC,
            server_duid: duid_ll(MacAddr6::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x57)),
            dns: vec!["fd6b:766d::1".parse().expect("v6")],
            search: vec!["default.svc.cluster.local.".parse().expect("a name")],
        }
    }

    fn request(msg_type: MessageType, server: Option<Vec<u8>>, rapid: bool) -> Message {
        let mut m = Message::new_with_id(msg_type, [1, 2, 3]);
        let o = m.opts_mut();
        o.insert(DhcpOption::ClientId(duid_ll(MAC)));
        if let Some(server) = server {
            o.insert(DhcpOption::ServerId(server));
        }
        if rapid {
            o.insert(DhcpOption::RapidCommit);
        }
        o.insert(DhcpOption::IANA(IANA {
            id: 7,
            t1: 0,
            t2: 0,
            opts: dhcproto::v6::DhcpOptions::new(),
        }));
        m
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(16)
            .map(|c| {
                c.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
                    + "\n"
            })
            .collect()
    }

    fn reply(decision: Decision) -> Message {
        match decision {
            Decision::Reply(m) => *m,
            Decision::Ignore(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn solicit_request_and_rapid_commit_get_the_vms_address_and_dns_as_golden() {
        let lease = lease();
        let advertise = reply(decide(&lease, &request(MessageType::Solicit, None, false)));
        assert_eq!(advertise.msg_type(), MessageType::Advertise);
        assert_golden(
            "dhcpv6",
            "advertise.hex",
            &hex(&encode(&advertise).expect("encodes")),
        );
        let ours = Some(lease.server_duid.clone());
        let granted = reply(decide(&lease, &request(MessageType::Request, ours, false)));
        assert_eq!(granted.msg_type(), MessageType::Reply);
        assert_golden(
            "dhcpv6",
            "reply.hex",
            &hex(&encode(&granted).expect("encodes")),
        );
        let Some(DhcpOption::IANA(ia)) = granted.opts().get(OptionCode::IANA) else {
            panic!("no IA_NA in {granted:?}");
        };
        assert_eq!(ia.id, 7);
        assert!(matches!(
            ia.opts.get(OptionCode::IAAddr),
            Some(DhcpOption::IAAddr(a)) if a.addr == lease.vm
        ));
        let rapid = reply(decide(&lease, &request(MessageType::Solicit, None, true)));
        assert_eq!(rapid.msg_type(), MessageType::Reply);
        assert!(rapid.opts().get(OptionCode::RapidCommit).is_some());
    }

    #[test]
    fn another_mac_another_server_or_a_servers_message_is_ignored() {
        let lease = lease();
        let mut other = request(MessageType::Solicit, None, false);
        other
            .opts_mut()
            .insert(DhcpOption::ClientId(duid_ll(MacAddr6::nil())));
        let mut m = Message::new_with_id(MessageType::Solicit, [1, 2, 3]);
        m.opts_mut()
            .insert(DhcpOption::ClientId(duid_ll(MacAddr6::nil())));
        assert!(matches!(decide(&lease, &m), Decision::Ignore(_)));
        let theirs = Some(vec![0, 3, 0, 1, 1, 2, 3, 4, 5, 6]);
        assert!(matches!(
            decide(&lease, &request(MessageType::Request, theirs, false)),
            Decision::Ignore(_)
        ));
        assert!(matches!(
            decide(&lease, &request(MessageType::Advertise, None, false)),
            Decision::Ignore(_)
        ));
        let mut anonymous = Message::new_with_id(MessageType::Solicit, [1, 2, 3]);
        anonymous.opts_mut().insert(DhcpOption::RapidCommit);
        assert!(matches!(decide(&lease, &anonymous), Decision::Ignore(_)));
    }

    #[test]
    fn information_requests_get_dns_only() {
        let m = Message::new_with_id(MessageType::InformationRequest, [9, 9, 9]);
        let answer = reply(decide(&lease(), &m));
        assert!(answer.opts().get(OptionCode::IANA).is_none());
        assert!(answer.opts().get(OptionCode::DomainNameServers).is_some());
    }

    #[test]
    fn duids_with_a_mac_name_it() {
        assert_eq!(duid_mac(&duid_ll(MAC)), Some(MAC));
        let llt = [0, 1, 0, 1, 9, 9, 9, 9, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(duid_mac(&llt), Some(MAC));
        assert_eq!(duid_mac(&[0, 2, 0, 0, 0, 9, 1]), None);
        assert_eq!(duid_mac(&[0, 3, 0, 1, 1]), None);
    }

    /// The fuzz target's path (fuzz/fuzz_targets/dhcpv6_packet.rs), bounded, in every
    /// `cargo test`: valid requests with bytes flipped, cut and appended, from a fixed seed.
    #[test]
    fn mutated_requests_never_panic_the_server_path() {
        let lease = lease();
        let seeds: Vec<Vec<u8>> = [
            request(MessageType::Solicit, None, true),
            request(MessageType::Request, Some(lease.server_duid.clone()), false),
            Message::new_with_id(MessageType::InformationRequest, [1, 1, 1]),
        ]
        .iter()
        .map(|m| encode(m).expect("encodes"))
        .collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..=next() % 4 {
                let at = (next() as usize) % bytes.len().max(1);
                match next() % 3 {
                    0 if !bytes.is_empty() => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.extend((0..next() % 8).map(|_| next() as u8)),
                }
            }
            if let Ok(m) = decode(&bytes) {
                if let Decision::Reply(reply) = decide(&lease, &m) {
                    let _ = encode(&reply);
                }
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [&[][..], &[1], &[1, 0, 0, 0, 0, 1, 0, 40], &[3; 64]] {
            if let Ok(m) = decode(bytes) {
                let _ = decide(&lease(), &m);
            }
        }
    }
}

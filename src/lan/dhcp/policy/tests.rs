//! Unit tests: unwrap() is the assertion here.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::str::FromStr as _;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::Name;
use macaddr::MacAddr6;
use proptest::prelude::*;

use super::*;
use crate::lan::dhcp::codec;
use crate::lan::dhcp::lease::Lease;

const VM_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 254, 2);
const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 254, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn lease() -> Lease {
    Lease {
        vm_ip: VM_IP,
        server: GW,
        vm_mac: MacAddr6::from(MAC),
        mtu: 1450,
        hostname: Some("vm-0".into()),
        dns: vec![GW],
        domain: Some("ns.svc.cluster.local".into()),
        search: [
            "ns.svc.cluster.local.",
            "svc.cluster.local.",
            "cluster.local.",
        ]
        .iter()
        .map(|n| Name::from_str(n).unwrap())
        .collect(),
    }
}

fn request(kind: MessageType, mac: [u8; 6]) -> Message {
    let mut m = Message::default();
    m.set_chaddr(&mac).set_xid(0xdead_beef);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn with(mut m: Message, opt: DhcpOption) -> Message {
    m.opts_mut().insert(opt);
    m
}

fn reply_of(d: Decision) -> (Message, Destination, Event) {
    match d {
        Decision::Reply { message, to, event } => (*message, to, event),
        Decision::Silent(e) => panic!("expected a reply, got silence: {e:?}"),
    }
}

/// Where a reply goes when the VM already has its address (renewing, INFORM): its IP, no ARP.
const UNICAST_TO_VM_IP: Destination = Destination::Unicast {
    ip: VM_IP,
    mac: None,
};

#[test]
fn offers_vm_ip_with_pod_mtu_and_all_options_when_no_list_is_sent() {
    let (offer, to, event) = reply_of(decide(&lease(), &request(MessageType::Discover, MAC)));
    assert_eq!(event, Event::Offered);
    assert_eq!(offer.opcode(), dhcproto::v4::Opcode::BootReply);
    assert_eq!(offer.xid(), 0xdead_beef);
    assert_eq!(offer.yiaddr(), VM_IP);
    let o = offer.opts();
    assert_eq!(o.msg_type(), Some(MessageType::Offer));
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1450))
    );
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(GW))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![GW]))
    );
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 252)))
    );
    assert_eq!(
        o.get(OptionCode::BroadcastAddr),
        Some(&DhcpOption::BroadcastAddr(Ipv4Addr::new(192, 168, 254, 3)))
    );
    assert_eq!(
        o.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("vm-0".into()))
    );
    assert!(o.get(OptionCode::AddressLeaseTime).is_some());
    // RFC 3397: the search list only when asked for.
    assert!(o.get(OptionCode::DomainSearch).is_none());
    assert_eq!(
        to,
        Destination::Unicast {
            ip: VM_IP,
            mac: Some(MacAddr6::from(MAC))
        }
    );
}

#[test]
fn honours_the_parameter_request_list() {
    let asked = with(
        request(MessageType::Discover, MAC),
        DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask, OptionCode::DomainSearch]),
    );
    let (offer, _, _) = reply_of(decide(&lease(), &asked));
    let o = offer.opts();
    assert!(o.get(OptionCode::DomainSearch).is_some());
    assert!(o.get(OptionCode::InterfaceMtu).is_none());
    assert!(o.get(OptionCode::Hostname).is_none());
    assert!(
        o.get(OptionCode::Router).is_some(),
        "essentials always go out"
    );
}

#[test]
fn ignores_other_macs() {
    let other = [0x52, 0x54, 0, 0, 0, 1];
    assert_eq!(
        decide(&lease(), &request(MessageType::Discover, other)),
        Decision::Silent(Event::ForeignMac(MacAddr6::from(other)))
    );
}

#[test]
fn acks_selecting_init_reboot_renewing_and_rebinding() {
    let selecting = with(
        with(
            request(MessageType::Request, MAC),
            DhcpOption::ServerIdentifier(GW),
        ),
        DhcpOption::RequestedIpAddress(VM_IP),
    );
    let init_reboot = with(
        request(MessageType::Request, MAC),
        DhcpOption::RequestedIpAddress(VM_IP),
    );
    let mut renewing = request(MessageType::Request, MAC);
    renewing.set_ciaddr(VM_IP);
    for req in [selecting, init_reboot] {
        let (ack, to, event) = reply_of(decide(&lease(), &req));
        assert_eq!(event, Event::Acked);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), VM_IP);
        assert_eq!(ack.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(matches!(to, Destination::Unicast { mac: Some(_), .. }));
    }
    let (ack, to, _) = reply_of(decide(&lease(), &renewing));
    assert_eq!(ack.ciaddr(), VM_IP);
    assert_eq!(to, UNICAST_TO_VM_IP);
}

#[test]
fn naks_a_wrong_address_by_broadcast() {
    let wrong = Ipv4Addr::new(10, 0, 0, 7);
    let req = with(
        request(MessageType::Request, MAC),
        DhcpOption::RequestedIpAddress(wrong),
    );
    let (nak, to, event) = reply_of(decide(&lease(), &req));
    assert_eq!(event, Event::Naked { requested: wrong });
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(to, Destination::Broadcast);
}

#[test]
fn stays_silent_when_the_vm_selected_another_server() {
    let other = Ipv4Addr::new(192, 168, 254, 9);
    let req = with(
        with(
            request(MessageType::Request, MAC),
            DhcpOption::ServerIdentifier(other),
        ),
        DhcpOption::RequestedIpAddress(VM_IP),
    );
    assert_eq!(
        decide(&lease(), &req),
        Decision::Silent(Event::OtherServer(other))
    );
}

#[test]
fn answers_inform_without_address_or_lease_times() {
    let mut req = request(MessageType::Inform, MAC);
    req.set_ciaddr(VM_IP);
    let (ack, to, event) = reply_of(decide(&lease(), &req));
    assert_eq!(event, Event::Informed);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::Renewal).is_none());
    assert_eq!(to, UNICAST_TO_VM_IP);
}

#[test]
fn release_and_decline_are_noted_not_answered() {
    assert_eq!(
        decide(&lease(), &request(MessageType::Release, MAC)),
        Decision::Silent(Event::Released)
    );
    assert_eq!(
        decide(&lease(), &request(MessageType::Decline, MAC)),
        Decision::Silent(Event::Declined)
    );
}

#[test]
fn broadcast_flag_and_relays_choose_the_destination() {
    let mut req = request(MessageType::Discover, MAC);
    req.set_flags(Flags::default().set_broadcast());
    assert_eq!(reply_of(decide(&lease(), &req)).1, Destination::Broadcast);
    let relay = Ipv4Addr::new(10, 1, 1, 1);
    req.set_giaddr(relay);
    let (offer, to, _) = reply_of(decide(&lease(), &req));
    assert_eq!(to, Destination::Relay(relay));
    assert_eq!(offer.giaddr(), relay);
}

#[test]
fn echoes_the_client_identifier() {
    let id = DhcpOption::ClientIdentifier(vec![1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let req = with(request(MessageType::Discover, MAC), id.clone());
    let (offer, _, _) = reply_of(decide(&lease(), &req));
    assert_eq!(offer.opts().get(OptionCode::ClientIdentifier), Some(&id));
}

#[test]
fn short_replies_are_padded_to_300_bytes() {
    let req = with(
        request(MessageType::Discover, MAC),
        DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask]),
    );
    let (offer, _, _) = reply_of(decide(&lease(), &req));
    let (bytes, trimmed) = codec::encode(offer, codec::reply_budget(&req, 1450)).unwrap();
    assert!(trimmed.is_empty());
    assert_eq!(bytes.len(), codec::MIN_REPLY);
    assert_eq!(
        codec::decode(&bytes).unwrap().opts().msg_type(),
        Some(MessageType::Offer)
    );
}

/// Names long enough that option 119 needs more than 255 bytes.
fn long_search_lease() -> Lease {
    let mut lease = lease();
    lease.search = (0..12)
        .map(|i| {
            Name::from_str(&format!("team{i:02}-{}.example.internal.", "x".repeat(30))).unwrap()
        })
        .collect();
    lease
}

fn search_request(max: Option<u16>) -> Message {
    let mut req = with(
        request(MessageType::Discover, MAC),
        DhcpOption::ParameterRequestList(vec![OptionCode::DomainSearch]),
    );
    if let Some(max) = max {
        req = with(req, DhcpOption::MaxMessageSize(max));
    }
    req
}

#[test]
fn a_long_search_list_is_split_into_several_options_and_compressed() {
    let lease = long_search_lease();
    let req = search_request(Some(1500));
    let (offer, _, _) = reply_of(decide(&lease, &req));
    let (bytes, trimmed) = codec::encode(offer, codec::reply_budget(&req, 1500)).unwrap();
    assert!(trimmed.is_empty());
    // Count option 119 instances by walking the options (RFC 3396: split, then concatenate).
    let mut at = 240;
    let (mut parts, mut joined) = (0, Vec::new());
    while at < bytes.len() && bytes[at] != 255 {
        if bytes[at] == 0 {
            at += 1;
            continue;
        }
        let len = usize::from(bytes[at + 1]);
        if bytes[at] == 119 {
            parts += 1;
            joined.extend_from_slice(&bytes[at + 2..at + 2 + len]);
        }
        at += 2 + len;
    }
    assert!(
        parts >= 2,
        "expected RFC 3396 splitting, got {parts} part(s)"
    );
    // Compression: ".example.internal." appears once, the rest point at it.
    let raw: usize = lease.search.iter().map(|n| n.to_ascii().len() + 1).sum();
    assert!(joined.len() < raw, "{} >= {raw}", joined.len());
    let decoded = codec::decode(&bytes).unwrap();
    assert_eq!(
        decoded.opts().get(OptionCode::DomainSearch),
        Some(&DhcpOption::DomainSearch(lease.search.clone()))
    );
}

#[test]
fn the_search_list_is_truncated_to_fit_the_client_maximum() {
    let lease = long_search_lease();
    let req = search_request(None);
    let (offer, _, _) = reply_of(decide(&lease, &req));
    let budget = codec::reply_budget(&req, 1500);
    assert_eq!(budget, 548);
    let (bytes, trimmed) = codec::encode(offer, budget).unwrap();
    assert!(bytes.len() <= budget);
    assert!(trimmed.search_names > 0);
    let decoded = codec::decode(&bytes).unwrap();
    match decoded.opts().get(OptionCode::DomainSearch) {
        Some(DhcpOption::DomainSearch(names)) => assert_eq!(names[..], lease.search[..names.len()]),
        other => panic!("search list dropped entirely: {other:?}"),
    }
}

#[test]
fn a_hardware_address_length_over_16_is_rejected_by_the_codec() {
    let mut bytes = Vec::new();
    dhcproto::Encodable::encode(
        &request(MessageType::Discover, MAC),
        &mut dhcproto::Encoder::new(&mut bytes),
    )
    .unwrap();
    bytes[2] = 200;
    assert!(matches!(
        codec::decode(&bytes),
        Err(codec::CodecError::HardwareLength(200))
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_codec_or_policy(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        if let Ok(request) = codec::decode(&bytes) {
            let _ = request.chaddr();
            let budget = codec::reply_budget(&request, 1450);
            if let Decision::Reply { message, .. } = decide(&lease(), &request) {
                let (reply, _) = codec::encode(*message, budget).unwrap();
                prop_assert!(reply.len() >= codec::MIN_REPLY);
                prop_assert!(reply.len() <= budget.max(codec::MIN_REPLY));
            }
        }
    }

    #[test]
    fn mutated_requests_never_panic(
        flips in proptest::collection::vec((240usize..400, any::<u8>()), 0..20),
        kind in 1u8..=8,
    ) {
        let mut req = with(search_request(Some(576)), DhcpOption::RequestedIpAddress(VM_IP));
        req.opts_mut().insert(DhcpOption::MessageType(MessageType::from(kind)));
        let mut bytes = Vec::new();
        dhcproto::Encodable::encode(&req, &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
        bytes.resize(400, 0);
        for (at, value) in flips { bytes[at] = value; }
        if let Ok(request) = codec::decode(&bytes) {
            if let Decision::Reply { message, .. } = decide(&long_search_lease(), &request) {
                let budget = codec::reply_budget(&request, 1450);
                let (reply, _) = codec::encode(*message, budget).unwrap();
                prop_assert!(reply.len() <= budget.max(codec::MIN_REPLY));
            }
        }
    }
}

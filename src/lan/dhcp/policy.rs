//! The decision: one decoded client message → what (if anything) we answer, and to whom.
//! Pure; the socket layer only carries the result out.
//!
//! RFC 2131 §4.3 for the message types and client states, §4.1 for the destination, RFC 2132
//! for the options, RFC 6842 for echoing the client identifier.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, DhcpOptions, HType, Message, MessageType, Opcode, OptionCode};
use macaddr::MacAddr6;

use super::lease::{Lease, LEASE_SECS, NETMASK, REBIND_SECS, RENEW_SECS};

/// Where a reply goes (RFC 2131 §4.1, "If the 'giaddr' field in a DHCP message...").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:68 on the bridge.
    Broadcast,
    /// `ip`:68. `mac` is set when the client does not have `ip` configured yet, so it cannot
    /// answer ARP: the neighbour entry must be written before sending.
    Unicast { ip: Ipv4Addr, mac: Option<MacAddr6> },
    /// A relay agent: `giaddr`:67.
    Relay(Ipv4Addr),
}

/// What happened, for logs, metrics and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Offered,
    /// The VM holds its lease (REQUEST in any state, answered with ACK).
    Acked,
    Informed,
    Naked {
        requested: Ipv4Addr,
    },
    Released,
    Declined,
    /// A REQUEST that selected another server.
    OtherServer(Ipv4Addr),
    /// A client that is not our VM.
    ForeignMac(MacAddr6),
    /// Well-formed but not for us, or a type a server ignores (OFFER, ACK, BOOTP...).
    Ignored(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Reply {
        message: Box<Message>,
        to: Destination,
        event: Event,
    },
    Silent(Event),
}

/// RFC 2131 §4.3: the server's answer to `request`.
pub fn decide(lease: &Lease, request: &Message) -> Decision {
    if request.opcode() != Opcode::BootRequest {
        return Decision::Silent(Event::Ignored("not a BOOTREQUEST"));
    }
    if request.htype() != HType::Eth || request.hlen() != 6 {
        return Decision::Silent(Event::Ignored("not an Ethernet client"));
    }
    let Some(mac) = client_mac(request) else {
        return Decision::Silent(Event::Ignored("short client hardware address"));
    };
    if mac != lease.vm_mac {
        return Decision::Silent(Event::ForeignMac(mac));
    }
    let opts = request.opts();
    let Some(kind) = opts.msg_type() else {
        return Decision::Silent(Event::Ignored("BOOTP (no DHCP message type)"));
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let requested = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    match kind {
        MessageType::Discover => reply(lease, request, MessageType::Offer, Event::Offered),
        MessageType::Request => {
            // SELECTING (server id set), INIT-REBOOT (requested address, no server id),
            // RENEWING/REBINDING (ciaddr set, neither option).
            let wanted = match (server_id, requested) {
                (Some(id), _) if id != lease.server => {
                    return Decision::Silent(Event::OtherServer(id))
                }
                (_, Some(ip)) => ip,
                (None, None) if !request.ciaddr().is_unspecified() => request.ciaddr(),
                _ => return Decision::Silent(Event::Ignored("REQUEST without an address")),
            };
            if wanted == lease.vm_ip {
                reply(lease, request, MessageType::Ack, Event::Acked)
            } else {
                nak(lease, request, wanted)
            }
        }
        MessageType::Inform if !request.ciaddr().is_unspecified() => {
            reply(lease, request, MessageType::Ack, Event::Informed)
        }
        MessageType::Inform => Decision::Silent(Event::Ignored("INFORM without ciaddr")),
        MessageType::Release => Decision::Silent(Event::Released),
        MessageType::Decline => Decision::Silent(Event::Declined),
        _ => Decision::Silent(Event::Ignored("a message type servers do not answer")),
    }
}

fn client_mac(request: &Message) -> Option<MacAddr6> {
    let bytes: [u8; 6] = request.chaddr().get(..6)?.try_into().ok()?;
    Some(MacAddr6::from(bytes))
}

/// The reply skeleton of RFC 2131 table 3: xid, flags, giaddr and chaddr copied.
fn skeleton(lease: &Lease, request: &Message, kind: MessageType) -> Message {
    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(request.xid())
        .set_flags(request.flags())
        .set_giaddr(request.giaddr())
        .set_chaddr(request.chaddr())
        .set_ciaddr(Ipv4Addr::UNSPECIFIED)
        .set_yiaddr(Ipv4Addr::UNSPECIFIED)
        .set_siaddr(Ipv4Addr::UNSPECIFIED);
    let mut opts = DhcpOptions::new();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(lease.server));
    if let Some(id @ DhcpOption::ClientIdentifier(_)) =
        request.opts().get(OptionCode::ClientIdentifier)
    {
        opts.insert(id.clone());
    }
    reply.set_opts(opts);
    reply
}

fn reply(lease: &Lease, request: &Message, kind: MessageType, event: Event) -> Decision {
    let mut message = skeleton(lease, request, kind);
    let inform = event == Event::Informed;
    if kind == MessageType::Ack {
        // Table 3: ciaddr of an ACK is the request's (0 for SELECTING/INIT-REBOOT).
        message.set_ciaddr(request.ciaddr());
    }
    if !inform {
        message.set_yiaddr(lease.vm_ip);
    }
    let asked = requested_options(request);
    let wants = |code: OptionCode| asked.as_ref().is_none_or(|list| list.contains(&code));
    let opts = message.opts_mut();
    if !inform {
        // §4.3.5: no lease times in an ACK to INFORM.
        opts.insert(DhcpOption::AddressLeaseTime(LEASE_SECS));
        opts.insert(DhcpOption::Renewal(RENEW_SECS));
        opts.insert(DhcpOption::Rebinding(REBIND_SECS));
    }
    // The addressing essentials go out whether asked for or not, like every common server.
    opts.insert(DhcpOption::SubnetMask(NETMASK));
    opts.insert(DhcpOption::Router(vec![lease.server]));
    opts.insert(DhcpOption::BroadcastAddr(lease.broadcast()));
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    // The rest only when asked (or when the client sends no list at all).
    if wants(OptionCode::InterfaceMtu) {
        opts.insert(DhcpOption::InterfaceMtu(lease.mtu));
    }
    if let (Some(name), true) = (&lease.hostname, wants(OptionCode::Hostname)) {
        opts.insert(DhcpOption::Hostname(name.clone()));
    }
    if let (Some(domain), true) = (&lease.domain, wants(OptionCode::DomainName)) {
        opts.insert(DhcpOption::DomainName(domain.clone()));
    }
    // RFC 3397 §2: only to clients that ask for it.
    if !lease.search.is_empty()
        && asked
            .as_ref()
            .is_some_and(|l| l.contains(&OptionCode::DomainSearch))
    {
        opts.insert(DhcpOption::DomainSearch(lease.search.clone()));
    }
    let to = destination(request, &message, false);
    Decision::Reply {
        message: Box::new(message),
        to,
        event,
    }
}

fn nak(lease: &Lease, request: &Message, requested: Ipv4Addr) -> Decision {
    let mut message = skeleton(lease, request, MessageType::Nak);
    message.opts_mut().insert(DhcpOption::Message(format!(
        "this server only leases {} to this client",
        lease.vm_ip
    )));
    let to = destination(request, &message, true);
    Decision::Reply {
        message: Box::new(message),
        to,
        event: Event::Naked { requested },
    }
}

fn requested_options(request: &Message) -> Option<Vec<OptionCode>> {
    match request.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(list)) => Some(list.clone()),
        _ => None,
    }
}

/// RFC 2131 §4.1, fourth paragraph from the end.
fn destination(request: &Message, reply: &Message, nak: bool) -> Destination {
    if !request.giaddr().is_unspecified() {
        return Destination::Relay(request.giaddr());
    }
    if nak {
        return Destination::Broadcast;
    }
    if !request.ciaddr().is_unspecified() {
        return Destination::Unicast {
            ip: request.ciaddr(),
            mac: None,
        };
    }
    if request.flags().broadcast() || reply.yiaddr().is_unspecified() {
        return Destination::Broadcast;
    }
    Destination::Unicast {
        ip: reply.yiaddr(),
        mac: client_mac(request),
    }
}

#[cfg(test)]
mod tests;

//! Bytes ↔ [`Message`] through dhcproto, plus the two size rules dhcproto leaves to us: a
//! reply must fit what the client can take (option 57 and the link MTU), and must be at
//! least 300 bytes (the BOOTP minimum that some firmware clients still insist on).

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use dhcproto::{Decodable as _, Decoder, Encodable as _, Encoder};

/// RFC 951's BOOTP message size; shorter replies are padded with zeros after the END option.
pub const MIN_REPLY: usize = 300;
/// RFC 2131 §2: every client accepts a 576-byte IP datagram.
pub const MIN_DATAGRAM: usize = 576;
/// IPv4 header without options plus the UDP header.
const IP_UDP_HEADERS: usize = 28;
/// The fixed BOOTP header and the magic cookie (RFC 2131 §2).
const FIXED_HEADER: usize = 240;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("shorter than a DHCP header ({0} bytes)")]
    Short(usize),
    #[error("no DHCP magic cookie")]
    Magic,
    #[error("hardware address length {0} is over 16")]
    HardwareLength(u8),
    #[error("option {code} has a bad length ({len})")]
    OptionLength { code: u8, len: usize },
    #[error("options run past the end of the packet")]
    OptionOverrun,
    #[error("the decoder rejected it")]
    Panicked,
    #[error("undecodable")]
    Decode(#[source] dhcproto::error::DecodeError),
    #[error("could not encode the reply")]
    Encode(#[source] dhcproto::error::EncodeError),
}

pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
    if bytes.len() < FIXED_HEADER {
        return Err(CodecError::Short(bytes.len()));
    }
    if bytes[236..240] != [99, 130, 83, 99] {
        return Err(CodecError::Magic);
    }
    // dhcproto slices chaddr by hlen without a bound check (found by fuzz/dhcp_packet).
    if bytes[2] > 16 {
        return Err(CodecError::HardwareLength(bytes[2]));
    }
    check_option_framing(&bytes[FIXED_HEADER..])?;
    // dhcproto asserts (in debug builds) on a few option lengths that check_option_framing
    // already rejects; should a new one slip through, a dropped packet beats a dead PID 1.
    std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)))
        .map_err(|_| CodecError::Panicked)?
        .map_err(CodecError::Decode)
}

/// Walks the option TLVs (RFC 2132 §2) before dhcproto does: every option must fit in the
/// packet, and the options whose length dhcproto takes on trust must have theirs.
fn check_option_framing(options: &[u8]) -> Result<(), CodecError> {
    let mut at = 0;
    while let Some(&code) = options.get(at) {
        match code {
            0 => at += 1,
            255 => return Ok(()),
            _ => {
                let len = usize::from(*options.get(at + 1).ok_or(CodecError::OptionOverrun)?);
                if at + 2 + len > options.len() {
                    return Err(CodecError::OptionOverrun);
                }
                let ok = match code {
                    // Rapid commit; client network interface; FQDN; bulk leasequery times.
                    80 => len == 0,
                    94 => len == 3,
                    81 => len >= 3,
                    152..=155 => len == 4,
                    _ => true,
                };
                if !ok {
                    return Err(CodecError::OptionLength { code, len });
                }
                at += 2 + len;
            }
        }
    }
    Ok(())
}

/// The largest DHCP message (UDP payload) the client of `request` accepts on a link of `mtu`.
pub fn reply_budget(request: &Message, mtu: u16) -> usize {
    let asked = match request.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(size)) => usize::from(*size).max(MIN_DATAGRAM),
        _ => MIN_DATAGRAM,
    };
    asked.min(usize::from(mtu).max(MIN_DATAGRAM)) - IP_UDP_HEADERS
}

/// What had to be left out so the reply fits, for a warning.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trimmed {
    pub search_names: usize,
    pub options: Vec<OptionCode>,
}

impl Trimmed {
    pub fn is_empty(&self) -> bool {
        self.search_names == 0 && self.options.is_empty()
    }
}

/// Encodes `reply` within `budget` bytes, padded to [`MIN_REPLY`]. Trims, in order: search
/// domains from the end of option 119, then the optional extras (119, 15, 12, 26).
pub fn encode(mut reply: Message, budget: usize) -> Result<(Vec<u8>, Trimmed), CodecError> {
    let mut trimmed = Trimmed::default();
    let mut bytes = to_bytes(&reply)?;
    while bytes.len() > budget {
        if !trim_one(&mut reply, &mut trimmed) {
            // The essentials alone are far below 548 bytes; nothing else can be this large.
            break;
        }
        bytes = to_bytes(&reply)?;
    }
    if bytes.len() < MIN_REPLY {
        bytes.resize(MIN_REPLY, 0);
    }
    Ok((bytes, trimmed))
}

fn trim_one(reply: &mut Message, trimmed: &mut Trimmed) -> bool {
    let opts = reply.opts_mut();
    if let Some(DhcpOption::DomainSearch(names)) = opts.get_mut(OptionCode::DomainSearch) {
        if names.len() > 1 {
            names.pop();
            trimmed.search_names += 1;
            return true;
        }
    }
    for code in [
        OptionCode::DomainSearch,
        OptionCode::DomainName,
        OptionCode::Hostname,
        OptionCode::InterfaceMtu,
    ] {
        if opts.remove(code).is_some() {
            trimmed.options.push(code);
            return true;
        }
    }
    false
}

fn to_bytes(message: &Message) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(MIN_REPLY);
    message
        .encode(&mut Encoder::new(&mut bytes))
        .map_err(CodecError::Encode)?;
    Ok(bytes)
}

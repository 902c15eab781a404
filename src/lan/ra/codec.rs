//! Router advertisements out, router solicitations in: the ICMPv6 bodies (RFC 4861 §4.1–4.2,
//! RDNSS and DNSSL of RFC 8106). Pure; the kernel's raw ICMPv6 socket adds the IPv6 header and
//! the checksum.
//!
//! Our own codec, not a crate's: smoltcp 0.14's NDISC knows no RDNSS or DNSSL option and
//! comes with a whole TCP/IP stack; an RA is a fixed header and five options.

use std::net::Ipv6Addr;

use macaddr::MacAddr6;

pub const ROUTER_SOLICITATION: u8 = 133;
pub const ROUTER_ADVERTISEMENT: u8 = 134;

const OPT_SOURCE_LL: u8 = 1;
const OPT_PREFIX: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;
const OPT_DNSSL: u8 = 31;

/// What our RA says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// The bridge's MAC (source link-layer option).
    pub router_mac: MacAddr6,
    /// The /64's network address: on-link and autonomous (SLAAC).
    pub prefix: Ipv6Addr,
    pub mtu: u32,
    /// RDNSS; none: the option is left out.
    pub dns: Vec<Ipv6Addr>,
    /// DNSSL, as dotted names (a trailing dot or none).
    pub search: Vec<String>,
    /// M: addresses from DHCPv6 too; O: other configuration (DNS) from DHCPv6.
    pub managed: bool,
    pub other: bool,
    /// Router lifetime: a default route for this long.
    pub router_lifetime_s: u16,
}

impl Advert {
    pub const PREFIX_VALID_S: u32 = 86_400;
    pub const PREFIX_PREFERRED_S: u32 = 14_400;
    /// RFC 8106 wants at least three advertisement intervals; this is thirty of ours.
    pub const DNS_LIFETIME_S: u32 = 1_800;
}

/// The RA's ICMPv6 body, checksum zero.
pub fn encode(ad: &Advert) -> Vec<u8> {
    let mut out = vec![ROUTER_ADVERTISEMENT, 0, 0, 0, 64];
    out.push(u8::from(ad.managed) << 7 | u8::from(ad.other) << 6);
    out.extend_from_slice(&ad.router_lifetime_s.to_be_bytes());
    out.extend_from_slice(&[0; 8]); // reachable time, retrans timer: unspecified
    out.extend_from_slice(&[OPT_SOURCE_LL, 1]);
    out.extend_from_slice(ad.router_mac.as_bytes());
    out.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
    out.extend_from_slice(&ad.mtu.to_be_bytes());
    out.extend_from_slice(&[OPT_PREFIX, 4, 64, 0x80 | 0x40]);
    out.extend_from_slice(&Advert::PREFIX_VALID_S.to_be_bytes());
    out.extend_from_slice(&Advert::PREFIX_PREFERRED_S.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&ad.prefix.octets());
    if !ad.dns.is_empty() {
        // 8 header octets + 16 per address, in units of 8 octets; at most 127 addresses fit.
        let dns = &ad.dns[..ad.dns.len().min(127)];
        out.extend_from_slice(&[OPT_RDNSS, (1 + 2 * dns.len()) as u8, 0, 0]);
        out.extend_from_slice(&Advert::DNS_LIFETIME_S.to_be_bytes());
        dns.iter().for_each(|a| out.extend_from_slice(&a.octets()));
    }
    let names = dnssl_names(&ad.search);
    if !names.is_empty() {
        let padded = (8 + names.len()).div_ceil(8) * 8;
        if padded / 8 <= usize::from(u8::MAX) {
            out.extend_from_slice(&[OPT_DNSSL, (padded / 8) as u8, 0, 0]);
            out.extend_from_slice(&Advert::DNS_LIFETIME_S.to_be_bytes());
            out.extend_from_slice(&names);
            out.resize(out.len() + padded - 8 - names.len(), 0);
        }
    }
    out
}

/// The search names in DNS wire format (uncompressed); a name that cannot be encoded (a label
/// over 63 bytes, an empty label) is left out.
fn dnssl_names(search: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in search {
        let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
        if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
            continue;
        }
        for label in labels {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    out
}

/// A router solicitation that parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicit {
    pub source_mac: Option<MacAddr6>,
}

/// Why a packet is not a solicitation we answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RsError {
    #[error("not a router solicitation")]
    NotRs,
    #[error("a malformed router solicitation")]
    Malformed,
}

/// Parses an ICMPv6 body as an RS (RFC 4861 §6.1.1: code 0, at least 8 octets, every option
/// of non-zero length and inside the packet).
pub fn decode_rs(packet: &[u8]) -> Result<Solicit, RsError> {
    match packet.first() {
        Some(&ROUTER_SOLICITATION) => {}
        _ => return Err(RsError::NotRs),
    }
    if packet.len() < 8 || packet[1] != 0 {
        return Err(RsError::Malformed);
    }
    let mut source_mac = None;
    let mut rest = &packet[8..];
    while !rest.is_empty() {
        let (kind, len) = match rest {
            [kind, len, ..] => (*kind, usize::from(*len) * 8),
            _ => return Err(RsError::Malformed),
        };
        if len == 0 || len > rest.len() {
            return Err(RsError::Malformed);
        }
        if kind == OPT_SOURCE_LL && len == 8 {
            let mac: [u8; 6] = rest[2..8].try_into().map_err(|_| RsError::Malformed)?;
            source_mac = Some(MacAddr6::from(mac));
        }
        rest = &rest[len..];
    }
    Ok(Solicit { source_mac })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::assert_golden;

    fn advert() -> Advert {
        Advert {
            router_mac: MacAddr6::new(0x52, 0x54, 0x00, 0x12, 0x34, 0x57),
            prefix: "fd6b:766d::".parse().expect("v6"),
            mtu: 1450,
            dns: vec!["fd6b:766d::1".parse().expect("v6")],
            search: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            managed: true,
            other: true,
            router_lifetime_s: 1800,
        }
    }

    /// Sixteen bytes per line, hex: reviewable in a diff.
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

    #[test]
    fn the_advertisement_matches_golden() {
        let bytes = encode(&advert());
        assert_eq!(bytes.len() % 8, 0);
        assert_golden("ra", "default.hex", &hex(&bytes));
    }

    #[test]
    fn without_dns_or_search_their_options_are_left_out() {
        let bytes = encode(&Advert {
            dns: Vec::new(),
            search: Vec::new(),
            managed: false,
            other: false,
            ..advert()
        });
        assert_golden("ra", "no_dns.hex", &hex(&bytes));
        assert_eq!(bytes[5], 0, "no M/O flags");
        assert!(!bytes.chunks(8).skip(2).any(|c| c[0] == OPT_RDNSS));
    }

    #[test]
    fn every_option_is_well_formed_in_units_of_eight_octets() {
        let bytes = encode(&advert());
        let mut rest = &bytes[16..];
        let mut kinds = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[1]) * 8;
            assert!(len > 0 && len <= rest.len(), "{kinds:?}");
            kinds.push(rest[0]);
            rest = &rest[len..];
        }
        assert_eq!(
            kinds,
            [OPT_SOURCE_LL, OPT_MTU, OPT_PREFIX, OPT_RDNSS, OPT_DNSSL]
        );
    }

    /// The fuzz target's path (fuzz/fuzz_targets/ra_solicit.rs), bounded, in every `cargo
    /// test`: a solicitation with options, bytes flipped, cut and appended from a fixed seed.
    #[test]
    fn mutated_solicitations_never_panic_and_parse_only_when_well_formed() {
        let seed = [
            ROUTER_SOLICITATION,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            OPT_SOURCE_LL,
            1,
            0x52,
            0x54,
            0,
            1,
            2,
            3,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut bytes = seed.to_vec();
            for _ in 0..=next() % 4 {
                let at = (next() as usize) % bytes.len().max(1);
                match next() % 3 {
                    0 if !bytes.is_empty() => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.extend((0..next() % 12).map(|_| next() as u8)),
                }
            }
            if decode_rs(&bytes).is_ok() {
                assert!(bytes.len() >= 8 && bytes[0] == ROUTER_SOLICITATION && bytes[1] == 0);
                assert_eq!(
                    (bytes.len() - 8) % 8,
                    0,
                    "options fill the packet: {bytes:?}"
                );
            }
        }
    }

    #[test]
    fn solicitations_parse_and_garbage_is_refused() {
        let mut rs = vec![ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode_rs(&rs), Ok(Solicit { source_mac: None }));
        rs.extend_from_slice(&[OPT_SOURCE_LL, 1, 0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
        assert_eq!(
            decode_rs(&rs),
            Ok(Solicit {
                source_mac: Some(MacAddr6::new(0x52, 0x54, 0, 0xaa, 0xbb, 0xcc))
            })
        );
        assert_eq!(decode_rs(&[]), Err(RsError::NotRs));
        assert_eq!(decode_rs(&[128, 0, 0, 0]), Err(RsError::NotRs));
        assert_eq!(
            decode_rs(&[ROUTER_SOLICITATION, 0, 0]),
            Err(RsError::Malformed)
        );
        assert_eq!(
            decode_rs(&[ROUTER_SOLICITATION, 1, 0, 0, 0, 0, 0, 0]),
            Err(RsError::Malformed)
        );
        // A zero-length option would loop forever; one running past the end is cut.
        let mut zero = vec![ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0, OPT_SOURCE_LL, 0];
        assert_eq!(decode_rs(&zero), Err(RsError::Malformed));
        zero[9] = 2;
        assert_eq!(decode_rs(&zero), Err(RsError::Malformed));
    }
}
